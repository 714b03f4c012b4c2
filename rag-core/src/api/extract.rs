//! Extractors whose rejections use our error shape, and the caller's identity.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::state::AppState;
use crate::obs::context::RequestContext;
use crate::tenancy::{Principal, Scope, resolve_key};

pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Self(v))
    }
}

pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(v) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(v))
    }
}

/// The request's ids (set by the request layer).
pub struct Ctx(pub RequestContext);

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<RequestContext>()
                .cloned()
                .unwrap_or_else(RequestContext::detached),
        ))
    }
}

/// The API key presented by the client: `Authorization: Bearer` or `X-API-Key`.
pub fn presented_key(parts: &Parts) -> Option<String> {
    if let Some(v) = parts.headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_string());
    }
    let auth = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = auth.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// An authenticated caller. Records its ids on the request span so every later log line
/// of the request names user, workspace and organization.
pub struct Auth(pub Principal);

impl Auth {
    pub fn require(&self, scope: Scope) -> Result<&Principal, ApiError> {
        if self.0.has(scope) {
            Ok(&self.0)
        } else {
            Err(
                ApiError::forbidden(format!("this API key lacks the {:?} scope", scope.as_str()))
                    .with("required_scope", scope.as_str()),
            )
        }
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let unauthorized = || {
            ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid API key is required (Authorization: Bearer <key> or X-API-Key)",
            )
        };
        let key = presented_key(parts).ok_or_else(unauthorized)?;
        let principal = state
            .store
            .read(move |conn| resolve_key(conn, &key))
            .await?
            .ok_or_else(unauthorized)?;
        let span = tracing::Span::current();
        span.record("user_id", principal.user_id.as_str());
        span.record("workspace_id", principal.workspace_id.as_str());
        span.record("organization_id", principal.organization_id.as_str());
        Ok(Self(principal))
    }
}
