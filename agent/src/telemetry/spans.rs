//! The spans the agent exports per request (stable HTTP semantic conventions): a SERVER
//! span for the whole exchange, ended when the response body ends, and a CLIENT span for
//! the upstream call whose id rag-core receives as its parent.
//!
//! They are built as finished `SpanData` on the export thread rather than through a live
//! SDK span: the request path already owns every id and timestamp, so its only cost is
//! moving those into one queued closure (a non-blocking push).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::SystemTime;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, StringValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::RequestIds;
use crate::identity::Principal;

/// The upstream leg, when one was attempted.
pub struct UpstreamCall<'a> {
    pub start: SystemTime,
    pub status: Option<u16>,
    pub error_type: Option<&'static str>,
    pub url_full: String,
    pub server_address: &'a str,
    pub server_port: u16,
}

/// One request's span fields. What the request owned is moved in (and on into the span
/// attributes), so building the spans allocates only what has to be formatted.
pub struct RequestSpan<'a> {
    pub ids: RequestIds,
    pub method: &'a http::Method,
    /// The configured route template (or the route class): never the raw path.
    pub route: &'a str,
    pub path: String,
    pub scheme: &'static str,
    pub status: u16,
    pub server_address: Option<String>,
    pub client: SocketAddr,
    pub protocol_version: &'static str,
    pub user_agent: Option<String>,
    pub error_type: Option<&'static str>,
    pub principal: Option<&'a Principal>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub upstream: Option<UpstreamCall<'a>>,
}

/// The agent's scope. Its name and version are static and it has no attributes, so the
/// clone for each span allocates nothing.
fn scope() -> InstrumentationScope {
    static SCOPE: OnceLock<InstrumentationScope> = OnceLock::new();
    SCOPE
        .get_or_init(|| {
            InstrumentationScope::builder("minirag-agent")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build()
        })
        .clone()
}

fn span_id(hex: &str) -> SpanId {
    SpanId::from_hex(hex).unwrap_or(SpanId::INVALID)
}

/// The method, borrowed from a static string when it is a standard one.
fn method_name(method: &http::Method) -> Cow<'static, str> {
    const KNOWN: [(http::Method, &str); 9] = [
        (http::Method::GET, "GET"),
        (http::Method::POST, "POST"),
        (http::Method::PUT, "PUT"),
        (http::Method::DELETE, "DELETE"),
        (http::Method::PATCH, "PATCH"),
        (http::Method::HEAD, "HEAD"),
        (http::Method::OPTIONS, "OPTIONS"),
        (http::Method::CONNECT, "CONNECT"),
        (http::Method::TRACE, "TRACE"),
    ];
    match KNOWN.iter().find(|(m, _)| m == method) {
        Some((_, name)) => Cow::Borrowed(name),
        None => Cow::Owned(method.as_str().to_owned()),
    }
}

/// Builds the request's spans (on the export thread) into `out`.
pub fn build(r: RequestSpan<'_>, out: &mut Vec<SpanData>) {
    let trace_id = TraceId::from_hex(&r.ids.trace_id).unwrap_or(TraceId::INVALID);
    let server_id = span_id(&r.ids.span_id);
    let context =
        |id: SpanId| SpanContext::new(trace_id, id, TraceFlags::SAMPLED, false, TraceState::NONE);
    let method = method_name(r.method);
    let mut name = String::with_capacity(method.len() + 1 + r.route.len());
    name.push_str(&method);
    name.push(' ');
    name.push_str(r.route);
    let request_id = r.ids.request_id;

    if let Some(up) = r.upstream
        && !r.ids.client_span_id.is_empty()
    {
        let mut attrs = Vec::with_capacity(8);
        attrs.push(KeyValue::new(
            "http.request.method",
            StringValue::from(method.clone()),
        ));
        attrs.push(KeyValue::new(
            "server.address",
            up.server_address.to_owned(),
        ));
        attrs.push(KeyValue::new("server.port", i64::from(up.server_port)));
        attrs.push(KeyValue::new("url.full", up.url_full));
        attrs.push(KeyValue::new("network.protocol.version", "1.1"));
        attrs.push(KeyValue::new("minirag.request_id", request_id.clone()));
        if let Some(s) = up.status {
            attrs.push(KeyValue::new("http.response.status_code", i64::from(s)));
        }
        // Client spans count 4xx as errors too (the call did not do what was asked).
        let error: Option<Cow<'static, str>> = match (up.error_type, up.status) {
            (Some(e), _) => Some(e.into()),
            (None, Some(s)) if s >= 400 => Some(s.to_string().into()),
            _ => None,
        };
        let status = match error {
            Some(e) => {
                attrs.push(KeyValue::new("error.type", StringValue::from(e.clone())));
                Status::error(e)
            }
            None => Status::Unset,
        };
        out.push(SpanData {
            span_context: context(span_id(&r.ids.client_span_id)),
            parent_span_id: server_id,
            parent_span_is_remote: false,
            span_kind: SpanKind::Client,
            name: method.clone(),
            start_time: up.start,
            end_time: r.end,
            attributes: attrs,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: scope(),
        });
    }

    let mut attrs = Vec::with_capacity(16);
    attrs.push(KeyValue::new(
        "http.request.method",
        StringValue::from(method),
    ));
    attrs.push(KeyValue::new("http.route", r.route.to_owned()));
    attrs.push(KeyValue::new("url.path", r.path));
    attrs.push(KeyValue::new("url.scheme", r.scheme));
    attrs.push(KeyValue::new(
        "http.response.status_code",
        i64::from(r.status),
    ));
    if let Some(host) = r.server_address {
        attrs.push(KeyValue::new("server.address", host));
    }
    attrs.push(KeyValue::new("client.address", r.client.ip().to_string()));
    attrs.push(KeyValue::new("client.port", i64::from(r.client.port())));
    attrs.push(KeyValue::new(
        "network.protocol.version",
        r.protocol_version,
    ));
    if let Some(ua) = r.user_agent {
        attrs.push(KeyValue::new("user_agent.original", ua));
    }
    attrs.push(KeyValue::new("minirag.request_id", request_id));
    if let Some(p) = r.principal {
        attrs.push(KeyValue::new(
            "minirag.workspace_id",
            p.workspace_id.clone(),
        ));
        attrs.push(KeyValue::new(
            "minirag.organization_id",
            p.organization_id.clone(),
        ));
        attrs.push(KeyValue::new("minirag.user_id", p.user_id.clone()));
    }
    // Semantic conventions: server spans are errors for 5xx only (4xx is the client's).
    let server_error: Option<Cow<'static, str>> = match r.error_type {
        Some(e) => Some(e.into()),
        None if r.status >= 500 => Some(r.status.to_string().into()),
        None => None,
    };
    let status = match server_error {
        Some(e) => {
            attrs.push(KeyValue::new("error.type", StringValue::from(e.clone())));
            if r.status >= 500 || r.status == 0 {
                Status::error(e)
            } else {
                Status::Unset
            }
        }
        None => Status::Unset,
    };

    let parent = r.ids.parent_span_id.as_deref().map(span_id);
    out.push(SpanData {
        span_context: context(server_id),
        parent_span_id: parent.unwrap_or(SpanId::INVALID),
        parent_span_is_remote: parent.is_some(),
        span_kind: SpanKind::Server,
        name: name.into(),
        start_time: r.start,
        end_time: r.end,
        attributes: attrs,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope(),
    });
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use opentelemetry::Value;

    use super::*;

    fn ids(i: u64, parent: bool, client: bool) -> RequestIds {
        RequestIds {
            request_id: format!("0b7e5f5c-3b0a-4c53-9f4e-{i:012x}"),
            trace_id: format!("4bf92f3577b34da6a3ce929d{i:08x}"),
            span_id: format!("00f067aa{i:08x}"),
            parent_span_id: parent.then(|| "b7ad6b7169203331".to_string()),
            flags: 1,
            tracestate: None,
            sampled: true,
            client_span_id: if client {
                format!("10f067aa{i:08x}")
            } else {
                String::new()
            },
        }
    }

    fn request<'a>(
        i: u64,
        method: &'a http::Method,
        status: u16,
        upstream: Option<UpstreamCall<'a>>,
    ) -> RequestSpan<'a> {
        let end = SystemTime::now();
        RequestSpan {
            ids: ids(i, i.is_multiple_of(2), upstream.is_some()),
            method,
            route: "/api/v1/ask",
            path: "/api/v1/ask".to_string(),
            scheme: "http",
            status,
            server_address: Some("edge.example".to_string()),
            client: SocketAddr::from(([10, 0, 0, 7], 40_000 + (i % 20_000) as u16)),
            protocol_version: "1.1",
            user_agent: Some("wrk/4.2.0".to_string()),
            error_type: None,
            principal: None,
            start: end - Duration::from_micros(900),
            end,
            upstream,
        }
    }

    fn upstream(status: Option<u16>, error_type: Option<&'static str>) -> UpstreamCall<'static> {
        UpstreamCall {
            start: SystemTime::now(),
            status,
            error_type,
            url_full: "http://127.0.0.1:8000/api/v1/ask".to_string(),
            server_address: "127.0.0.1",
            server_port: 8000,
        }
    }

    fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn server_and_client_spans() {
        let post = http::Method::POST;
        let mut out = Vec::new();
        build(
            request(2, &post, 200, Some(upstream(Some(200), None))),
            &mut out,
        );
        let [client, server] = &out[..] else {
            panic!("two spans: {out:?}")
        };
        assert_eq!(server.name, "POST /api/v1/ask");
        assert_eq!(server.span_kind, SpanKind::Server);
        assert_eq!(server.parent_span_id, span_id("b7ad6b7169203331"));
        assert!(server.parent_span_is_remote);
        assert_eq!(server.status, Status::Unset);
        assert_eq!(attr(server, "url.path"), Some(&Value::from("/api/v1/ask")));
        assert_eq!(
            attr(server, "client.address"),
            Some(&Value::from("10.0.0.7"))
        );
        assert_eq!(attr(server, "client.port"), Some(&Value::I64(40_002)));
        assert_eq!(
            attr(server, "server.address"),
            Some(&Value::from("edge.example"))
        );
        assert_eq!(
            attr(server, "user_agent.original"),
            Some(&Value::from("wrk/4.2.0"))
        );
        assert!(attr(server, "error.type").is_none());
        assert_eq!(client.name, "POST");
        assert_eq!(client.span_kind, SpanKind::Client);
        assert_eq!(client.parent_span_id, server.span_context.span_id());
        assert_eq!(
            client.span_context.trace_id(),
            server.span_context.trace_id()
        );
        assert_eq!(
            attr(client, "minirag.request_id"),
            attr(server, "minirag.request_id")
        );
        assert_eq!(
            attr(client, "http.response.status_code"),
            Some(&Value::I64(200))
        );
        assert!(matches!(
            (&server.name, &client.name),
            (Cow::Owned(_), Cow::Borrowed(_))
        ));
    }

    #[test]
    fn error_status_by_kind() {
        let get = http::Method::GET;
        let mut out = Vec::new();
        // 4xx from upstream: the CLIENT span is an error, the SERVER span is not.
        build(
            request(1, &get, 404, Some(upstream(Some(404), None))),
            &mut out,
        );
        assert_eq!(out[0].status, Status::error("404"));
        assert_eq!(attr(&out[0], "error.type"), Some(&Value::from("404")));
        assert_eq!(out[1].status, Status::Unset);
        assert!(attr(&out[1], "error.type").is_none());
        assert!(!out[1].parent_span_is_remote, "odd requests have no parent");
        out.clear();
        // A transport failure: both spans name it; the server answered 502.
        let mut r = request(3, &get, 502, Some(upstream(None, Some("connect"))));
        r.error_type = Some("upstream_unavailable");
        build(r, &mut out);
        assert_eq!(out[0].status, Status::error("connect"));
        assert_eq!(out[1].status, Status::error("upstream_unavailable"));
        out.clear();
        // A 5xx without a named cause is named by its status; no upstream leg, one span.
        let odd = http::Method::from_bytes(b"PURGE").unwrap();
        build(request(5, &odd, 503, None), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].name, "PURGE /api/v1/ask");
        assert_eq!(out[0].status, Status::error("503"));
        assert_eq!(
            attr(&out[0], "http.request.method"),
            Some(&Value::from("PURGE"))
        );
    }

    /// What building and encoding the agent's spans costs on the export thread:
    /// `cargo test --release -p minirag-agent --lib telemetry::spans -- --ignored --nocapture`
    #[test]
    #[ignore = "timing; run in release"]
    fn cost_per_span() {
        let post = http::Method::POST;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("minirag-agent")
            .build();
        let mut encoder = minirag_otel::otlp_http::TraceEncoder::new(&resource);
        let (mut build_time, mut encode_time) = (Duration::ZERO, Duration::ZERO);
        let mut batch = Vec::with_capacity(512);
        let mut body = Vec::new();
        let mut spans = 0;
        for round in 0..220u64 {
            // The request's own fields exist before the export thread sees them.
            let requests: Vec<_> = (0..256)
                .map(|i| request(round * 256 + i, &post, 200, Some(upstream(Some(200), None))))
                .collect();
            let t = Instant::now();
            for r in requests {
                build(r, &mut batch);
            }
            let built = t.elapsed();
            let t = Instant::now();
            encoder.encode(&batch, &mut body);
            batch.clear();
            let encoded = t.elapsed();
            // The first rounds warm up.
            if round >= 20 {
                build_time += built;
                encode_time += encoded;
                spans += 512;
            }
        }
        let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(spans);
        println!(
            "{spans} spans: build {:.3} µs/span, encode + drop {:.3} µs/span",
            per(build_time),
            per(encode_time)
        );
    }
}
