//! `/api/v1/jobs*`, `/api/v1/dedupe`, `/api/v1/rebuild`, and the 202 answer of queued
//! ingest. Jobs are scoped like sources: a key sees its workspace's jobs, an admin key
//! every job of its organization. System jobs (schedules) are not shown.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::queue::{Job, ListFilter, QueueError, STATUSES};
use super::{JobKind, Origin, handlers, now_ms};
use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, ApiQuery, Auth, Ctx};
use crate::obs::context::RequestContext;
use crate::tenancy::{Principal, Scope};

const MAX_IDEMPOTENCY_KEY: usize = 200;

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Full(n) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_full",
                format!("the job queue is full ({n} jobs waiting); try again later"),
            ),
            QueueError::Store(s) => s.into(),
        }
    }
}

fn visible(job: &Job, p: &Principal) -> bool {
    job.organization_id == p.organization_id
        && (p.has(Scope::Admin) || job.workspace_id == p.workspace_id)
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| {
            ApiError::bad_request("invalid_idempotency_key", "Idempotency-Key must be ASCII")
        })?
        .trim();
    if v.is_empty() || v.len() > MAX_IDEMPOTENCY_KEY {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters"),
        ));
    }
    Ok(Some(v.to_string()))
}

/// Queues `kind` for the caller's workspace: 202 `{job_id, status, request_id}` (200 with
/// the existing job when the Idempotency-Key was used before).
pub(crate) async fn accepted(
    state: &AppState,
    p: &Principal,
    ctx: &RequestContext,
    headers: &HeaderMap,
    kind: JobKind,
    payload: Value,
) -> Result<Response, ApiError> {
    let origin = Origin {
        organization_id: p.organization_id.clone(),
        workspace_id: p.workspace_id.clone(),
        ws_seq: p.workspace_seq,
        request_id: Some(ctx.request_id.clone()),
        trace_id: Some(ctx.trace_id.clone()),
        span_id: Some(ctx.span_id.clone()),
        idempotency_key: idempotency_key(headers)?,
    };
    let (job, created) = state.jobs.submit(kind, origin, payload).await?;
    match kind {
        JobKind::Dedupe => {
            tracing::info!(event = "chunks.dedupe.queued", job_id = %job.id, "dedupe queued")
        }
        JobKind::RebuildIndex => {
            tracing::info!(event = "index.rebuild.queued", job_id = %job.id, "rebuild queued")
        }
        _ => {}
    }
    let status = if created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        axum::Json(json!({
            "job_id": job.id,
            "status": job.status,
            "duplicate": !created,
            "request_id": ctx.request_id,
        })),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    #[serde(alias = "type")]
    name: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let p = auth.require(Scope::Read)?.clone();
    if let Some(s) = &q.status
        && !STATUSES.contains(&s.as_str())
    {
        return Err(ApiError::bad_request(
            "invalid_status",
            format!("status must be one of {}", STATUSES.join(", ")),
        ));
    }
    if let Some(n) = &q.name
        && JobKind::parse(n).is_none()
    {
        return Err(ApiError::bad_request(
            "invalid_type",
            format!("unknown job type {n:?}"),
        ));
    }
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let before_seq = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            c.parse::<i64>()
                .map_err(|_| ApiError::bad_request("invalid_cursor", "cursor is not valid"))?,
        ),
    };
    let filter = ListFilter {
        organization_id: Some(p.organization_id.clone()),
        workspace_id: (!p.has(Scope::Admin)).then(|| p.workspace_id.clone()),
        status: q.status,
        name: q.name,
        before_seq,
        limit: limit + 1,
    };
    let mut rows = state.jobs.call(move |queue| queue.list(&filter)).await?;
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|(seq, _)| seq.to_string())
    } else {
        None
    };
    Ok(axum::Json(json!({
        "jobs": rows.iter().map(|(_, j)| j.to_json()).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
        "request_id": ctx.request_id,
    })))
}

async fn find(state: &AppState, p: &Principal, id: String) -> Result<Job, ApiError> {
    let not_found = || ApiError::not_found("no such job");
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(not_found());
    }
    let job = state.jobs.call(move |q| q.get(&id)).await?;
    match job {
        Some((_, j)) if visible(&j, p) => Ok(j),
        _ => Err(not_found()),
    }
}

pub async fn show(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let p = auth.require(Scope::Read)?.clone();
    let job = find(&state, &p, id).await?;
    let mut v = job.to_json();
    v["request_id"] = json!(ctx.request_id);
    v["submitted_request_id"] = json!(job.request_id);
    Ok(axum::Json(v))
}

pub async fn cancel(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let p = auth.require(Scope::Write)?.clone();
    let job = find(&state, &p, id).await?;
    if job.is_finished() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "job_finished",
            format!("the job has already ended ({})", job.status),
        )
        .with("status", job.status));
    }
    let id = job.id.clone();
    let job = state
        .jobs
        .call(move |q| q.cancel(&id, now_ms()))
        .await?
        .ok_or_else(|| ApiError::not_found("no such job"))?;
    tracing::info!(event = "job.cancel_requested", job_id = %job.id, job_name = %job.name, status = %job.status, "job cancellation requested");
    let mut v = job.to_json();
    v["request_id"] = json!(ctx.request_id);
    Ok(axum::Json(v))
}

pub async fn retry(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let p = auth.require(Scope::Write)?.clone();
    let job = find(&state, &p, id).await?;
    if job.status != "dead_lettered" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_dead_lettered",
            format!(
                "only dead-lettered jobs can be retried; this one is {}",
                job.status
            ),
        )
        .with("status", job.status));
    }
    let id = job.id.clone();
    let extra = state.jobs.config().retry_for(&job.name).max_attempts;
    let job = state
        .jobs
        .call(move |q| q.retry(&id, extra, now_ms()))
        .await?
        .ok_or_else(|| ApiError::not_found("no such job"))?;
    state.jobs.wake.notify_waiters();
    tracing::info!(event = "job.retry_requested", job_id = %job.id, job_name = %job.name, "dead-lettered job queued again");
    let mut v = job.to_json();
    v["request_id"] = json!(ctx.request_id);
    Ok(axum::Json(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    name: String,
    #[serde(default)]
    payload: Option<Value>,
}

/// `POST /api/v1/jobs`: `embed` (re-embed the workspace), or `test` when enabled.
pub async fn submit(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SubmitBody>,
) -> Result<Response, ApiError> {
    let p = auth.require(Scope::Write)?.clone();
    if matches!(
        JobKind::parse(&body.name),
        Some(JobKind::IngestText | JobKind::IngestFiles | JobKind::IngestUrls)
    ) {
        // Ingest submitted as a job is still ingest: the billing guard applies here too.
        crate::billing::guard(&p)?;
    }
    let kind = match JobKind::parse(&body.name) {
        Some(JobKind::Embed) => JobKind::Embed,
        Some(JobKind::Test) if state.jobs.config().testing.enabled => JobKind::Test,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_type",
                format!("jobs of type {:?} cannot be submitted here", body.name),
            ));
        }
    };
    let payload = body.payload.unwrap_or_else(|| json!({}));
    accepted(&state, &p, &ctx, &headers, kind, payload).await
}

async fn maintenance(
    state: AppState,
    ctx: RequestContext,
    auth: Auth,
    headers: HeaderMap,
    kind: JobKind,
) -> Result<Response, ApiError> {
    let p = auth.require(Scope::Write)?.clone();
    if state.jobs.enabled() {
        return accepted(&state, &p, &ctx, &headers, kind, json!({})).await;
    }
    let result = match kind {
        JobKind::Dedupe => handlers::dedupe(&state, p.workspace_seq).await,
        _ => handlers::rebuild_index(&state, p.workspace_seq, None).await,
    };
    let result = result.map_err(|e| {
        tracing::error!(event = "maintenance.failed", job_name = kind.as_str(), error = ?e, "maintenance failed");
        ApiError::internal()
    })?;
    Ok(
        axum::Json(json!({"status": "succeeded", "result": result, "request_id": ctx.request_id}))
            .into_response(),
    )
}

/// `POST /api/v1/dedupe`: removes repeated chunks of the caller's workspace.
pub async fn dedupe(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    maintenance(state, ctx, auth, headers, JobKind::Dedupe).await
}

/// `POST /api/v1/rebuild`: re-embeds stale chunks and reloads the workspace's vectors.
pub async fn rebuild(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    maintenance(state, ctx, auth, headers, JobKind::RebuildIndex).await
}
