//! `/api/v1/sources`: list, show, chunks, preview, delete, batch delete.

use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Auth, Ctx};
use super::state::AppState;
use crate::audit;
use crate::store::documents;
use crate::tenancy::{Principal, Scope};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    offset: Option<i64>,
}

impl Page {
    fn bounds(&self, default: i64, max: i64) -> Result<(i64, i64), ApiError> {
        let limit = self.limit.unwrap_or(default);
        let offset = self.offset.unwrap_or(0);
        if !(1..=max).contains(&limit) || offset < 0 {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("limit must be 1..={max} and offset ≥ 0"),
            ));
        }
        Ok((limit, offset))
    }
}

fn unknown_source(id: &str) -> ApiError {
    ApiError::not_found(format!("no source {id:?} in this workspace")).with("source_id", id)
}

pub async fn list(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<axum::Json<Value>, ApiError> {
    let ws = auth.require(Scope::Read)?.workspace_seq;
    let (limit, offset) = page.bounds(100, 1000)?;
    let (sources, total) = state
        .store
        .read(move |c| documents::list_sources(c, ws, limit, offset))
        .await?;
    Ok(axum::Json(
        json!({"sources": sources, "total": total, "limit": limit, "offset": offset, "request_id": ctx.request_id}),
    ))
}

pub async fn show(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let ws = auth.require(Scope::Read)?.workspace_seq;
    let lookup = id.clone();
    let source = state
        .store
        .read(move |c| documents::get_source(c, ws, &lookup))
        .await?
        .ok_or_else(|| unknown_source(&id))?;
    let mut v = serde_json::to_value(source).map_err(|_| ApiError::internal())?;
    v["request_id"] = json!(ctx.request_id);
    Ok(axum::Json(v))
}

pub async fn chunks(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    Path(id): Path<String>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<axum::Json<Value>, ApiError> {
    let ws = auth.require(Scope::Read)?.workspace_seq;
    let (limit, offset) = page.bounds(100, 1000)?;
    let lookup = id.clone();
    let chunks = state
        .store
        .read(move |c| documents::source_chunks(c, ws, &lookup, limit, offset))
        .await?
        .ok_or_else(|| unknown_source(&id))?;
    Ok(axum::Json(
        json!({"source_id": id, "chunks": chunks, "request_id": ctx.request_id}),
    ))
}

pub async fn preview(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let ws = auth.require(Scope::Read)?.workspace_seq;
    let lookup = id.clone();
    let (source, chunks) = state
        .store
        .read(move |c| {
            let s = documents::get_source(c, ws, &lookup)?;
            let ch = documents::source_chunks(c, ws, &lookup, 3, 0)?;
            Ok((s, ch))
        })
        .await?;
    let source = source.ok_or_else(|| unknown_source(&id))?;
    let first = chunks.unwrap_or_default();
    let text: String = first
        .iter()
        .map(|c| c.text.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    Ok(axum::Json(json!({
        "source_id": source.source_id,
        "title": source.title,
        "media_type": source.media_type,
        "chunks": source.chunks,
        "preview": crate::answer::snippet(&text, 1000),
        "request_id": ctx.request_id,
    })))
}

/// Deletes the sources and records one `source.deleted` per source (id, title, kind,
/// chunk count; never text) in the same transaction.
async fn delete_ids(
    state: &AppState,
    p: &Principal,
    request_id: &str,
    ids: Vec<String>,
) -> Result<(Vec<String>, Vec<String>), ApiError> {
    let ws = p.workspace_seq;
    let origin = audit::Origin::api(p, request_id);
    let (org, ws_id) = (p.organization_id.clone(), p.workspace_id.clone());
    let (d, records) = state
        .store
        .write(move |c| {
            crate::lifecycle::securely(c, |c| {
                let tx = c.transaction()?;
                let d = documents::delete_sources_in(&tx, ws, &ids)?;
                let mut records = Vec::with_capacity(d.removed.len());
                for s in &d.removed {
                    records.push(audit::append(
                        &tx,
                        origin
                            .event("source.deleted")
                            .organization(&org)
                            .workspace(&ws_id)
                            .target(s.source_id.clone())
                            .before(json!({"title": s.title, "kind": s.kind, "chunks": s.chunks})),
                    )?);
                }
                tx.commit()?;
                Ok((d, records))
            })
        })
        .await?;
    for r in &records {
        r.log();
    }
    state.searcher.remove_vectors(ws, &d.chunk_ids).await;
    state.metrics.chunk_records.dec_by(d.chunk_ids.len() as i64);
    for id in &d.source_ids {
        tracing::info!(event = "source.deleted", source_id = %id, "source deleted");
    }
    Ok((d.source_ids, d.not_found))
}

pub async fn delete(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let p = auth.require(Scope::Write)?;
    let (deleted, _) = delete_ids(&state, p, &ctx.request_id, vec![id.clone()]).await?;
    if deleted.is_empty() {
        return Err(unknown_source(&id));
    }
    Ok(axum::Json(
        json!({"deleted": deleted, "request_id": ctx.request_id}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchDelete {
    source_ids: Vec<String>,
}

pub async fn batch_delete(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    ApiJson(body): ApiJson<BatchDelete>,
) -> Result<axum::Json<Value>, ApiError> {
    let p = auth.require(Scope::Write)?;
    if body.source_ids.is_empty() || body.source_ids.len() > 1000 {
        return Err(ApiError::unprocessable(
            "invalid_request",
            "source_ids must hold 1 to 1000 ids",
        ));
    }
    let (deleted, not_found) = delete_ids(&state, p, &ctx.request_id, body.source_ids).await?;
    Ok(axum::Json(
        json!({"deleted": deleted, "not_found": not_found, "request_id": ctx.request_id}),
    ))
}
