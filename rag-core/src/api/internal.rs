//! `/internal/v1/*`: for the agent only, behind `MINIRAG_INTERNAL_TOKEN`
//! (header `X-Internal-Token`). The agent never exposes these paths to clients.

use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{Auth, Ctx};
use super::state::AppState;
use crate::tenancy::keys::digest_eq;

fn check_token(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.cfg.internal_token else {
        return Err(ApiError::forbidden(
            "the internal API is disabled: MINIRAG_INTERNAL_TOKEN is not set",
        ));
    };
    let presented = headers
        .get("x-internal-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Compare digests so timing says nothing about the token.
    let (a, b) = (
        crate::tenancy::keys::hash_key(presented),
        crate::tenancy::keys::hash_key(expected),
    );
    if digest_eq(&a, &b) {
        Ok(())
    } else {
        Err(ApiError::forbidden("missing or wrong X-Internal-Token"))
    }
}

/// Checks the internal token before the key, so an outsider cannot probe keys here.
pub async fn principal(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    headers: HeaderMap,
    auth: Result<Auth, ApiError>,
) -> Result<axum::Json<Value>, ApiError> {
    check_token(&state, &headers)?;
    let p = auth?.0;
    // The effective status (an ended trial reads `expired`), so the agent's early 402
    // agrees with the guard's; `billing_blocked_reason` says why, null when not blocked.
    let (blocked_reason, billing_status) =
        crate::billing::principal_billing(&p, chrono::Utc::now());
    Ok(axum::Json(json!({
        "user_id": p.user_id,
        "workspace_id": p.workspace_id,
        "organization_id": p.organization_id,
        "role": p.role,
        "plan": p.plan,
        "billing_status": billing_status,
        "billing_blocked_reason": blocked_reason,
        "scopes": p.scopes,
        "usage": {"chunk_total": p.chunk_total, "chunk_limit": p.chunk_limit},
        "request_id": ctx.request_id,
    })))
}
