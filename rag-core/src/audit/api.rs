//! `GET /api/v1/admin/audit`: the caller's organization's audit records, oldest first,
//! paged by `after_seq`. Admin scope only.

use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Filter;
use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::extract::{ApiQuery, Auth, Ctx};
use crate::tenancy::Scope;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    action: Option<String>,
    actor: Option<String>,
    target: Option<String>,
    workspace_id: Option<String>,
    request_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    after_seq: Option<i64>,
    limit: Option<usize>,
}

fn check_time(field: &str, v: &Option<String>) -> Result<(), ApiError> {
    match v {
        Some(t) if chrono::DateTime::parse_from_rfc3339(t).is_err() => Err(ApiError::bad_request(
            "invalid_request",
            format!("{field} must be an RFC 3339 timestamp such as 2026-01-31T00:00:00Z"),
        )),
        _ => Ok(()),
    }
}

/// Normalises a client timestamp to the stored form (UTC, `Z`, millisecond precision) so
/// the string comparison on `at` is a time comparison.
fn normalise(v: Option<String>) -> Option<String> {
    v.and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string()
        })
}

pub async fn list(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    ApiQuery(q): ApiQuery<Query>,
) -> Result<axum::Json<Value>, ApiError> {
    let p = auth.require(Scope::Admin)?;
    check_time("since", &q.since)?;
    check_time("until", &q.until)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("limit must be within 1..={MAX_LIMIT}"),
        ));
    }
    let filter = Filter {
        organization_id: Some(p.organization_id.clone()),
        workspace_id: q.workspace_id,
        action: q.action,
        actor: q.actor,
        target: q.target,
        request_id: q.request_id,
        since: normalise(q.since),
        until: normalise(q.until),
        after_seq: q.after_seq,
        limit,
    };
    let records = state.store.read(move |c| super::list(c, &filter)).await?;
    let next = (records.len() == limit)
        .then(|| records.last().map(|r| r.seq))
        .flatten();
    Ok(axum::Json(json!({
        "entries": records,
        "next_after_seq": next,
        "request_id": ctx.request_id,
    })))
}
