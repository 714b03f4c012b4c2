//! HTTP side of the data lifecycle, under `/api/v1/admin/` (admin scope; the caller's
//! organization only, other organizations' ids answer 404):
//!
//! * `POST workspaces/{id}/export` → 202, `GET exports/{id}`, `GET exports/{id}/download`
//! * `DELETE workspaces/{id}` → 202 (a `delete_workspace` job)
//! * `GET|PUT workspaces/{id}/retention`
//! * `DELETE users/{id}/data` → 202 (a `delete_user_data` job) or 200

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, ReadBuf};

use super::delete::{self, EraseOutcome, MarkOutcome};
use super::export::{self, ExportRow};
use super::{actor_json, plausible_id};
use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, ApiQuery, Auth, Ctx};
use crate::audit::{self, Origin};
use crate::jobs::{Job, JobKind};
use crate::obs::context::RequestContext;
use crate::tenancy::{Principal, Scope};

fn no_workspace(id: &str) -> ApiError {
    ApiError::not_found(format!("no workspace {id:?} in this organization"))
        .with("workspace_id", id)
}

fn no_export(id: &str) -> ApiError {
    ApiError::not_found(format!("no export {id:?} in this organization")).with("export_id", id)
}

fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, code, message)
}

/// Queues a lifecycle job for `workspace` (which may differ from the caller's own).
async fn submit(
    state: &AppState,
    ctx: &RequestContext,
    kind: JobKind,
    organization_id: &str,
    workspace: (&str, i64),
    payload: Value,
    idempotency_key: Option<String>,
) -> Result<(Job, bool), ApiError> {
    let origin = crate::jobs::Origin {
        organization_id: organization_id.to_string(),
        workspace_id: workspace.0.to_string(),
        ws_seq: workspace.1,
        request_id: Some(ctx.request_id.clone()),
        trace_id: Some(ctx.trace_id.clone()),
        span_id: Some(ctx.span_id.clone()),
        idempotency_key,
    };
    Ok(state.jobs.submit(kind, origin, payload).await?)
}

fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

// ---------------------------------------------------------------------------------------
// Export
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    #[serde(default)]
    include_embeddings: bool,
}

/// `POST /api/v1/admin/workspaces/{id}/export[?include_embeddings=true]`: 202
/// `{job_id, export_id, workspace_id, status, expires_at, request_id}`. Always through the
/// job queue (its workers run also with `jobs.enabled: false`): an export can take long.
pub async fn export_workspace(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> Result<Response, ApiError> {
    let p = auth.require(Scope::Admin)?.clone();
    if !plausible_id(&id, "ws") {
        return Err(no_workspace(&id));
    }
    let ttl = state.cfg.lifecycle.export_ttl_hours;
    let (org, ws, by) = (p.organization_id.clone(), id.clone(), p.user_id.clone());
    let include = q.include_embeddings;
    let (row, seq) = state
        .store
        .write(move |c| export::create(c, &org, &ws, include, &by, ttl))
        .await?
        .ok_or_else(|| no_workspace(&id))?;
    let payload = with(
        json!({"export_id": row.export_id}),
        actor_json(&Origin::api(&p, &ctx.request_id)),
    );
    let submitted = submit(
        &state,
        &ctx,
        JobKind::ExportWorkspace,
        &p.organization_id,
        (&id, seq),
        payload,
        None,
    )
    .await;
    let export_id = row.export_id.clone();
    let job = match submitted {
        Ok((job, _)) => job,
        Err(e) => {
            let eid = export_id.clone();
            let _ = state
                .store
                .write(move |c| {
                    c.execute(
                        "UPDATE exports SET status = 'failed', error = 'could not be queued' WHERE id = ?1",
                        [eid],
                    )?;
                    Ok(())
                })
                .await;
            return Err(e);
        }
    };
    let (eid, jid) = (export_id.clone(), job.id.clone());
    state
        .store
        .write(move |c| export::set_job(c, &eid, &jid))
        .await?;
    tracing::info!(event = "export.queued", export_id = %export_id, job_id = %job.id, target_workspace_id = %id, "workspace export queued");
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "job_id": job.id,
            "export_id": export_id,
            "workspace_id": id,
            "status": "queued",
            "include_embeddings": include,
            "expires_at": row.expires_at,
            "status_url": format!("/api/v1/admin/exports/{export_id}"),
            "request_id": ctx.request_id,
        })),
    )
        .into_response())
}

/// The export as the API shows it: the row, with the job's view where the row cannot
/// know (a job cancelled or dead-lettered before it could say so) and expiry applied.
fn export_view(row: &ExportRow, job: Option<&Job>) -> Value {
    let now = crate::tenancy::now();
    let mut status = row.status.clone();
    let mut error = row.error.clone();
    if matches!(status.as_str(), "queued" | "running")
        && let Some(j) = job
    {
        match j.status.as_str() {
            "cancelled" => status = "cancelled".into(),
            "dead_lettered" => {
                status = "failed".into();
                error = j.error.clone();
            }
            _ => {}
        }
    }
    if status == "ready" && row.expires_at.as_str() <= now.as_str() {
        status = "expired".into();
    }
    let ready = status == "ready";
    json!({
        "export_id": row.export_id,
        "workspace_id": row.workspace_id,
        "status": status,
        "job_id": row.job_id,
        "progress": job.map(|j| json!({"done": j.progress_done, "total": j.progress_total})),
        "format": "tar+gzip",
        "format_version": export::FORMAT_VERSION,
        "include_embeddings": row.include_embeddings,
        "bytes": row.bytes,
        "sha256": row.sha256,
        "counts": row.counts,
        "error": error,
        "requested_by": row.requested_by,
        "created_at": row.created_at,
        "finished_at": row.finished_at,
        "expires_at": row.expires_at,
        "download_url": ready.then(|| format!("/api/v1/admin/exports/{}/download", row.export_id)),
    })
}

async fn find_export(state: &AppState, p: &Principal, id: &str) -> Result<ExportRow, ApiError> {
    if !plausible_id(id, "exp") {
        return Err(no_export(id));
    }
    let (org, eid) = (p.organization_id.clone(), id.to_string());
    state
        .store
        .read(move |c| export::get(c, &org, &eid))
        .await?
        .ok_or_else(|| no_export(id))
}

/// `GET /api/v1/admin/exports/{id}`.
pub async fn show_export(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let p = auth.require(Scope::Admin)?.clone();
    let row = find_export(&state, &p, &id).await?;
    let job = match row.job_id.clone() {
        // Jobs are purged after `jobs.retention_days`; the row alone then tells.
        Some(jid) => state.jobs.call(move |q| q.get(&jid)).await?.map(|(_, j)| j),
        None => None,
    };
    let mut v = export_view(&row, job.as_ref());
    v["request_id"] = json!(ctx.request_id);
    Ok(axum::Json(v))
}

/// Streams a file's bytes without holding more than one buffer of it.
struct FileBody {
    file: tokio::fs::File,
    buf: Vec<u8>,
    remaining: u64,
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = this
            .buf
            .len()
            .min(usize::try_from(this.remaining).unwrap_or(usize::MAX));
        let mut rb = ReadBuf::new(&mut this.buf[..want]);
        match Pin::new(&mut this.file).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    // The file shrank under us: end the body short rather than hang.
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "export file ended early",
                    ))));
                }
                this.remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(rb.filled())))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

fn gone(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "export_expired",
        format!("export {id} has expired and its file was deleted; request a new export"),
    )
    .with("export_id", id)
}

/// `GET /api/v1/admin/exports/{id}/download`: the archive, streamed, with its length and
/// SHA-256 (`X-Checksum-SHA256`). Recorded as `export.downloaded`.
pub async fn download_export(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let p = auth.require(Scope::Admin)?.clone();
    let row = find_export(&state, &p, &id).await?;
    let now = crate::tenancy::now();
    match row.status.as_str() {
        "ready" if row.expires_at.as_str() > now.as_str() => {}
        "ready" | "expired" => return Err(gone(&id)),
        "queued" | "running" => {
            return Err(conflict(
                "export_not_ready",
                format!("export {id} is still being written; poll GET /api/v1/admin/exports/{id}"),
            )
            .with("status", row.status));
        }
        other => {
            return Err(conflict(
                "export_failed",
                format!("export {id} ended {other}; request a new one"),
            )
            .with("status", other));
        }
    }
    let path = export::exports_dir(&state.cfg).join(export::file_name(&row.export_id));
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(gone(&id)),
        Err(e) => {
            tracing::error!(event = "export.open_failed", export_id = %id, error = %e, "cannot open the export file");
            return Err(ApiError::internal());
        }
    };
    let len = file
        .metadata()
        .await
        .map_err(|_| ApiError::internal())?
        .len();
    let origin = Origin::api(&p, &ctx.request_id);
    let (org, ws, eid, sha) = (
        p.organization_id.clone(),
        row.workspace_id.clone(),
        row.export_id.clone(),
        row.sha256.clone(),
    );
    state
        .store
        .write(move |c| {
            audit::append_now(
                c,
                origin
                    .event("export.downloaded")
                    .organization(&org)
                    .workspace(&ws)
                    .target(eid)
                    .after(json!({"bytes": len, "sha256": sha})),
            )
        })
        .await?;
    let mut resp = Response::new(Body::new(FileBody {
        file,
        buf: vec![0; 64 * 1024],
        remaining: len,
    }));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(export::MEDIA_TYPE),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    // Both ids are `<kind>_<hex>`, safe inside the quoted file name.
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}-{}.tar.gz\"",
        row.workspace_id, row.export_id
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(sha) = row
        .sha256
        .as_deref()
        .and_then(|s| HeaderValue::from_str(s).ok())
    {
        h.insert("x-checksum-sha256", sha);
    }
    Ok(resp)
}

// ---------------------------------------------------------------------------------------
// Deletion
// ---------------------------------------------------------------------------------------

/// `DELETE /api/v1/admin/workspaces/{id}`: 202 with the `delete_workspace` job. The
/// workspace's keys stop working and its content stops being searchable at once; the
/// job removes it in batches. Refused (409) for the caller's own workspace and for the
/// organization's last one. Repeating the request returns the same job.
pub async fn delete_workspace(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let p = auth.require(Scope::Admin)?.clone();
    if !plausible_id(&id, "ws") {
        return Err(no_workspace(&id));
    }
    if id == p.workspace_id {
        return Err(conflict(
            "own_workspace",
            "the key's own workspace cannot be deleted with that key; use an admin key of another workspace",
        ));
    }
    let origin = Origin::api(&p, &ctx.request_id);
    let (org, ws) = (p.organization_id.clone(), id.clone());
    let o = origin.clone();
    // Securely: blanking job payloads overwrites document bytes in place.
    let outcome = state
        .store
        .write(move |c| super::securely(c, |c| delete::mark_workspace(c, &org, &ws, &o)))
        .await?;
    let (seq, sources, chunks, keys_revoked, jobs_cancelled) = match outcome {
        MarkOutcome::NotFound => return Err(no_workspace(&id)),
        MarkOutcome::LastWorkspace => {
            return Err(conflict(
                "last_workspace",
                "an organization keeps at least one workspace",
            ));
        }
        MarkOutcome::Marked {
            seq,
            record,
            sources,
            chunks,
            keys_revoked,
            jobs_cancelled,
        } => {
            if let Some(r) = record {
                r.log();
            }
            (seq, sources, chunks, keys_revoked, jobs_cancelled)
        }
    };
    delete::drop_cached_vectors(&state, seq).await;
    let payload = with(json!({"workspace_id": id}), actor_json(&origin));
    // One deletion job per workspace: a repeated request gets the same job back.
    let (job, created) = submit(
        &state,
        &ctx,
        JobKind::DeleteWorkspace,
        &p.organization_id,
        (&id, seq),
        payload,
        Some("lifecycle:delete-workspace".into()),
    )
    .await?;
    Ok((
        if created {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        },
        axum::Json(json!({
            "job_id": job.id,
            "workspace_id": id,
            "status": "deleting",
            "job_status": job.status,
            "sources": sources,
            "chunks": chunks,
            "keys_revoked": keys_revoked,
            "jobs_cancelled": jobs_cancelled,
            "request_id": ctx.request_id,
        })),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserDataQuery {
    /// Keep the documents the user ingested (no longer attributed to them).
    #[serde(default)]
    keep_sources: bool,
}

/// `DELETE /api/v1/admin/users/{id}/data[?keep_sources=true]`: removes the user record
/// and their API keys at once, the document bytes in the ingest jobs they submitted, and
/// (unless kept) the sources they ingested, by a `delete_user_data` job (202). 200 when
/// nothing is left for a job. See docs/data-lifecycle.md for what "a user's data" is.
pub async fn delete_user_data(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    Path(user_id): Path<String>,
    ApiQuery(q): ApiQuery<UserDataQuery>,
) -> Result<Response, ApiError> {
    let p = auth.require(Scope::Admin)?.clone();
    let not_found = || {
        ApiError::not_found(format!("no user {user_id:?} in this organization"))
            .with("user_id", user_id.as_str())
    };
    if !plausible_id(&user_id, "usr") {
        return Err(not_found());
    }
    if user_id == p.user_id {
        return Err(conflict(
            "own_user",
            "a user's data cannot be deleted with their own key; ask another admin",
        ));
    }
    let origin = Origin::api(&p, &ctx.request_id);
    let (org, uid, o, role, keep) = (
        p.organization_id.clone(),
        user_id.clone(),
        origin.clone(),
        p.role,
        q.keep_sources,
    );
    let outcome = state
        .store
        .write(move |c| super::securely(c, |c| delete::erase_user(c, &org, &uid, role, keep, &o)))
        .await?;
    let (keys_removed, jobs_cancelled, sources, chunks) = match outcome {
        EraseOutcome::NotFound => return Err(not_found()),
        EraseOutcome::OwnerOnly => {
            return Err(ApiError::forbidden(
                "only an owner can delete an owner's data",
            ));
        }
        EraseOutcome::LastOwner => {
            return Err(conflict(
                "last_owner",
                "an organization keeps at least one owner",
            ));
        }
        EraseOutcome::Erased {
            record,
            keys_removed,
            jobs_cancelled,
            sources,
            chunks,
        } => {
            record.log();
            (keys_removed, jobs_cancelled, sources, chunks)
        }
    };
    let mut body = json!({
        "user_id": user_id,
        "keys_removed": keys_removed,
        "jobs_cancelled": jobs_cancelled,
        "sources": sources,
        "chunks": chunks,
        "sources_kept": q.keep_sources,
        "request_id": ctx.request_id,
    });
    if sources == 0 {
        body["status"] = json!("deleted");
        return Ok((StatusCode::OK, axum::Json(body)).into_response());
    }
    let payload = with(
        json!({"user_id": user_id, "sources": sources, "chunks": chunks}),
        actor_json(&origin),
    );
    // The job is shown to the organization's admins; it runs under the caller's workspace
    // only for that visibility. Should queuing fail, the lifecycle sweep finishes the
    // deletion (sources naming a user that no longer exists).
    let (job, _) = submit(
        &state,
        &ctx,
        JobKind::DeleteUserData,
        &p.organization_id,
        (&p.workspace_id, p.workspace_seq),
        payload,
        None,
    )
    .await?;
    body["status"] = json!("deleting");
    body["job_id"] = json!(job.id);
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

// ---------------------------------------------------------------------------------------
// Retention policy
// ---------------------------------------------------------------------------------------

fn retention_view(state: &AppState, id: &str, days: Option<i64>) -> Value {
    let default = state.cfg.lifecycle.default_retention_days;
    json!({
        "workspace_id": id,
        "retention_days": days,
        "default_retention_days": default,
        "effective_retention_days": days.or(default.map(i64::from)),
    })
}

/// `GET /api/v1/admin/workspaces/{id}/retention`.
pub async fn get_retention(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let p = auth.require(Scope::Admin)?.clone();
    if !plausible_id(&id, "ws") {
        return Err(no_workspace(&id));
    }
    let (org, ws) = (p.organization_id.clone(), id.clone());
    let days: Option<Option<i64>> = state
        .store
        .read(move |c| {
            use rusqlite::OptionalExtension;
            Ok(c.query_row(
                "SELECT retention_days FROM workspaces WHERE id = ?1 AND organization_id = ?2 AND deleting_at IS NULL",
                [&ws, &org],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await?;
    let days = days.ok_or_else(|| no_workspace(&id))?;
    let mut v = retention_view(&state, &id, days);
    v["request_id"] = json!(ctx.request_id);
    Ok(axum::Json(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionBody {
    /// Days to keep sources (by their `created_at`); null removes the workspace's own
    /// policy, so `lifecycle.default_retention_days` applies.
    days: Option<u32>,
}

/// `PUT /api/v1/admin/workspaces/{id}/retention` `{"days": N | null}`; recorded as
/// `workspace.retention_changed`. Applied by the next run of the `retention` job.
pub async fn set_retention(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RetentionBody>,
) -> Result<axum::Json<Value>, ApiError> {
    let p = auth.require(Scope::Admin)?.clone();
    if !plausible_id(&id, "ws") {
        return Err(no_workspace(&id));
    }
    if let Some(d) = body.days
        && !(1..=36_500).contains(&d)
    {
        return Err(ApiError::unprocessable(
            "invalid_request",
            "days must be within 1..=36500, or null for the configured default",
        ));
    }
    let origin = Origin::api(&p, &ctx.request_id);
    let (org, ws, days) = (
        p.organization_id.clone(),
        id.clone(),
        body.days.map(i64::from),
    );
    let changed = state
        .store
        .write(move |c| {
            use rusqlite::OptionalExtension;
            let tx = c.transaction()?;
            let before: Option<Option<i64>> = tx
                .query_row(
                    "SELECT retention_days FROM workspaces WHERE id = ?1 AND organization_id = ?2 AND deleting_at IS NULL",
                    [&ws, &org],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(before) = before else {
                return Ok(None);
            };
            tx.execute(
                "UPDATE workspaces SET retention_days = ?2 WHERE id = ?1",
                rusqlite::params![ws, days],
            )?;
            let rec = audit::append(
                &tx,
                origin
                    .event("workspace.retention_changed")
                    .organization(&org)
                    .workspace(&ws)
                    .target(ws.clone())
                    .before(json!({"retention_days": before}))
                    .after(json!({"retention_days": days})),
            )?;
            tx.commit()?;
            Ok(Some(rec))
        })
        .await?;
    let rec = changed.ok_or_else(|| no_workspace(&id))?;
    rec.log();
    let mut v = retention_view(&state, &id, days);
    v["request_id"] = json!(ctx.request_id);
    Ok(axum::Json(v))
}
