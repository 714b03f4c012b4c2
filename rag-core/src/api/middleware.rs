//! The request layer: ids and span in, error rendering, security headers, metrics and
//! the access line out. One place reads top to bottom for every request.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::error::{ApiError, PendingError};
use super::state::AppState;
use crate::obs::context::RequestContext;
use crate::obs::metrics::{HttpLabels, RouteLabels, TraceLabel};

/// Filled by the route layer once routing has matched, read by the outer layer.
#[derive(Clone, Default)]
pub struct RouteSlot(Arc<OnceLock<String>>);

pub async fn record_route(req: Request, next: Next) -> Response {
    remember_route(&req);
    next.run(req).await
}

/// Fills the route slot from the matched path. Also called by layers that answer before
/// the route layer runs (CORS preflights), so their metrics name the route too.
pub(super) fn remember_route(req: &Request) {
    if let (Some(slot), Some(path)) = (
        req.extensions().get::<RouteSlot>(),
        req.extensions().get::<MatchedPath>(),
    ) {
        let _ = slot.0.set(path.as_str().to_string());
    }
}

fn header_str<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

pub async fn request_layer(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let request_id = header_str(&req, "x-request-id");
    // Probes and scrapes are never shed: an overloaded server is still alive and ready.
    let exempt = matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics");
    // The SERVER span; dotted fields are span attributes (semantic conventions) and stay
    // out of log lines, the snake_case ones are log-schema fields.
    let span = tracing::info_span!(
        "request",
        otel.name = %method,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        url.path = %path,
        url.scheme = "http",
        user_agent.original = header_str(&req, "user-agent").unwrap_or(""),
        minirag.request_id = tracing::field::Empty,
        request_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        user_id = tracing::field::Empty,
        workspace_id = tracing::field::Empty,
        organization_id = tracing::field::Empty,
    );
    // Probes would flood the tracing backend with one-span traces: not exported.
    let span = if exempt { tracing::Span::none() } else { span };
    crate::obs::trace::continue_trace(&span, req.headers());
    let ctx = RequestContext::from_headers(request_id, header_str(&req, "traceparent"))
        .with_span_ids(crate::obs::trace::ids(&span));
    span.record("request_id", ctx.request_id.as_str());
    span.record("minirag.request_id", ctx.request_id.as_str());
    span.record("trace_id", ctx.trace_id.as_str());
    span.record("span_id", ctx.span_id.as_str());
    let slot = RouteSlot::default();
    req.extensions_mut().insert(slot.clone());
    req.extensions_mut().insert(ctx.clone());

    let permit = if exempt {
        None
    } else {
        Some(state.inflight.try_acquire())
    };
    let mut resp = match permit {
        Some(Err(_)) => {
            let mut r = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "too many concurrent requests; retry shortly",
            )
            .with("retry_after_seconds", 1)
            .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        Some(Ok(_permit)) => {
            crate::obs::context::with_request_id(
                ctx.request_id.clone(),
                next.run(req).instrument(span.clone()),
            )
            .await
        }
        None => {
            crate::obs::context::with_request_id(
                ctx.request_id.clone(),
                next.run(req).instrument(span.clone()),
            )
            .await
        }
    };

    // Render errors in the one shape, with this request's id.
    let pending = resp.extensions_mut().remove::<PendingError>().map(|p| p.0);
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let error = match pending {
        Some(e) => Some(e),
        None if resp.status().as_u16() >= 400 && !is_json => {
            Some(ApiError::from_status(resp.status()))
        }
        None => None,
    };
    if let Some(err) = error {
        let status = err.status;
        let mut headers = std::mem::take(resp.headers_mut());
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::CONTENT_TYPE);
        resp = (status, axum::Json(err.body(&ctx.request_id))).into_response();
        for (k, v) in headers.iter() {
            resp.headers_mut().entry(k).or_insert(v.clone());
        }
    }

    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        headers.insert(HeaderName::from_static("x-request-id"), v);
    }
    set_security_headers(headers, path.starts_with("/api/"));

    let status = resp.status().as_u16();
    let route = slot
        .0
        .get()
        .cloned()
        .unwrap_or_else(|| "unmatched".to_string());
    let elapsed = started.elapsed();
    crate::obs::trace::name_span(&span, format!("{method} {route}"));
    span.record("http.route", route.as_str());
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "error");
    }
    let exemplar = crate::obs::trace::sampled(&span).then(|| TraceLabel {
        trace_id: ctx.trace_id.clone(),
    });
    state
        .metrics
        .http_requests
        .get_or_create(&HttpLabels {
            route: route.clone(),
            method: method.clone(),
            status_code: status,
        })
        .inc();
    state
        .metrics
        .http_duration
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(elapsed.as_secs_f64(), exemplar, None);

    let duration_ms = (elapsed.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
    span.in_scope(|| {
        if matches!(route.as_str(), "/healthz" | "/readyz" | "/metrics") {
            tracing::debug!(
                event = "http.access",
                method,
                route,
                path,
                status_code = status,
                duration_ms,
                "request served"
            );
        } else if status >= 500 {
            tracing::error!(
                event = "http.access",
                method,
                route,
                path,
                status_code = status,
                duration_ms,
                "request failed"
            );
        } else {
            tracing::info!(
                event = "http.access",
                method,
                route,
                path,
                status_code = status,
                duration_ms,
                "request served"
            );
        }
    });
    resp
}

fn set_security_headers(h: &mut axum::http::HeaderMap, api: bool) {
    let defaults: [(&str, &str); 5] = [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        (
            "content-security-policy",
            "default-src 'none'; frame-ancestors 'none'",
        ),
        (
            "permissions-policy",
            "camera=(), microphone=(), geolocation=()",
        ),
    ];
    for (k, v) in defaults {
        h.entry(HeaderName::from_static(k))
            .or_insert(HeaderValue::from_static(v));
    }
    if api {
        h.entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
    }
}
