//! rag-core's spans: `tracing` spans bridged to OpenTelemetry, one SERVER span per request
//! continued from the caller's `traceparent`, child spans per stage, and the one helper
//! every outbound call uses to carry `X-Request-ID` + `traceparent` (+ `tracestate`).
//!
//! The bridge is installed even when export is off (a provider without processors), so
//! ids in log lines and outbound headers always come from the same span tree; export only
//! decides whether finished spans leave the process.

use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
/// Spans leave the process (a pipeline is configured): only then may an exemplar point
/// at a trace id.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Builds the tracer provider (exporting through `pipeline` when tracing is on) and the
/// `tracing` layer that feeds it.
pub fn layer<S>(
    pipeline: Option<&minirag_otel::Pipeline>,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let mut builder = SdkTracerProvider::builder();
    if let Some(p) = pipeline {
        EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
        builder = builder
            .with_resource(p.resource().clone())
            .with_span_processor(p.processor());
    }
    let provider = builder.build();
    let tracer = provider.tracer("rag-core");
    let _ = PROVIDER.set(provider);
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_target(false)
}

/// Names the SERVER span once the route is known (after routing; the bridge has already
/// started the span, so its name is updated in place).
pub fn name_span(span: &tracing::Span, name: String) {
    span.context().span().update_name(name);
}

struct HeaderExtractor<'a>(&'a axum::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        // W3C: several traceparent headers are invalid; the propagator then starts fresh.
        let mut all = self.0.get_all(key).iter();
        match (all.next(), all.next()) {
            (Some(v), None) => v.to_str().ok(),
            _ => None,
        }
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Makes `span` the child of the caller's span when `traceparent` is valid; otherwise it
/// stays a new root. Never fails the request.
pub fn continue_trace(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// (trace_id, span_id) of `span`, when the bridge is installed.
pub fn ids(span: &tracing::Span) -> Option<(String, String)> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// Whether `span` is exported (so an exemplar may point at it).
pub fn sampled(span: &tracing::Span) -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
        && span.context().span().span_context().is_sampled()
}

struct HeaderInjector<'a>(&'a mut reqwest::header::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            reqwest::header::HeaderName::from_bytes(key.as_bytes()),
            reqwest::header::HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// The headers every outbound call carries: the request id of the request being served
/// (if any) and the W3C trace context of the current span (the call's CLIENT span).
pub fn outbound_headers() -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    if let Some(id) = super::context::current_request_id()
        && let Ok(v) = reqwest::header::HeaderValue::from_str(&id)
    {
        h.insert("x-request-id", v);
    }
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut h));
    h
}

/// A CLIENT span for one outbound HTTP call (semantic conventions; the query string is
/// left out of `url.full` so secrets in it never reach the tracing backend).
pub fn client_span(method: &'static str, url: &str) -> tracing::Span {
    // No query, fragment or user:password@ in the attribute: they may hold secrets.
    let (without_query, host) = match reqwest::Url::parse(url) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            let _ = u.set_username("");
            let _ = u.set_password(None);
            let host = u.host_str().unwrap_or_default().to_owned();
            (u.to_string(), host)
        }
        Err(_) => (
            url.split(['?', '#']).next().unwrap_or(url).to_owned(),
            String::new(),
        ),
    };
    tracing::info_span!(
        "outbound",
        otel.name = method,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        url.full = %without_query,
        server.address = %host,
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

pub fn client_status(span: &tracing::Span, status: u16) {
    span.record("http.response.status_code", status);
    if status >= 400 {
        span.record("error.type", status.to_string().as_str());
        span.record("otel.status_code", "error");
    }
}

pub fn client_failed(span: &tracing::Span, kind: &str) {
    span.record("error.type", kind);
    span.record("otel.status_code", "error");
}

/// Sends what is queued; called on shutdown (waits at most 5 s).
pub fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        let _ = p.force_flush();
    }
}

/// `spawn_blocking` that keeps the caller's span current on the blocking thread, so
/// spans opened there (parse, chunk, SQLite) are children of the request.
pub fn spawn_blocking_in_span<T, F>(f: F) -> tokio::task::JoinHandle<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
}
