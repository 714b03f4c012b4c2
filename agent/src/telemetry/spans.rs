//! The spans the agent exports per request (stable HTTP semantic conventions): a SERVER
//! span for the whole exchange, ended when the response body ends, and a CLIENT span for
//! the upstream call whose id rag-core receives as its parent.
//!
//! They are built as finished `SpanData` on the export thread rather than through a live
//! SDK span: the request path already owns every id and timestamp, so its only cost is
//! moving those into one queued closure (a non-blocking push).

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::SystemTime;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::RequestIds;
use crate::identity::Principal;

/// The upstream leg, when one was attempted.
pub struct UpstreamCall<'a> {
    pub start: SystemTime,
    pub status: Option<u16>,
    pub error_type: Option<&'a str>,
    pub url_full: String,
    pub server_address: &'a str,
    pub server_port: u16,
}

pub struct RequestSpan<'a> {
    pub ids: &'a RequestIds,
    pub method: &'a str,
    /// The configured route template (or the route class): never the raw path.
    pub route: &'a str,
    pub path: &'a str,
    pub scheme: &'static str,
    pub status: u16,
    pub server_address: Option<&'a str>,
    pub client: SocketAddr,
    pub protocol_version: &'static str,
    pub user_agent: Option<&'a str>,
    pub error_type: Option<&'a str>,
    pub principal: Option<&'a Principal>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub upstream: Option<UpstreamCall<'a>>,
}

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

/// Builds the request's spans (on the export thread) into `out`.
pub fn build(r: RequestSpan<'_>, out: &mut Vec<SpanData>) {
    let trace_id = TraceId::from_hex(&r.ids.trace_id).unwrap_or(TraceId::INVALID);
    let server_id = span_id(&r.ids.span_id);
    let context = |id: SpanId| {
        SpanContext::new(
            trace_id,
            id,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        )
    };

    let mut attrs = Vec::with_capacity(16);
    attrs.push(KeyValue::new("http.request.method", r.method.to_string()));
    attrs.push(KeyValue::new("http.route", r.route.to_string()));
    attrs.push(KeyValue::new("url.path", r.path.to_string()));
    attrs.push(KeyValue::new("url.scheme", r.scheme));
    attrs.push(KeyValue::new(
        "http.response.status_code",
        i64::from(r.status),
    ));
    if let Some(host) = r.server_address {
        attrs.push(KeyValue::new("server.address", host.to_string()));
    }
    attrs.push(KeyValue::new("client.address", r.client.ip().to_string()));
    attrs.push(KeyValue::new("client.port", i64::from(r.client.port())));
    attrs.push(KeyValue::new(
        "network.protocol.version",
        r.protocol_version,
    ));
    if let Some(ua) = r.user_agent {
        attrs.push(KeyValue::new("user_agent.original", ua.to_string()));
    }
    attrs.push(KeyValue::new(
        "minirag.request_id",
        r.ids.request_id.clone(),
    ));
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
    let server_error = r
        .error_type
        .map(str::to_string)
        .or_else(|| (r.status >= 500).then(|| r.status.to_string()));
    let status = match &server_error {
        Some(e) if r.status >= 500 || r.status == 0 => {
            attrs.push(KeyValue::new("error.type", e.clone()));
            Status::error(e.clone())
        }
        Some(e) => {
            attrs.push(KeyValue::new("error.type", e.clone()));
            Status::Unset
        }
        None => Status::Unset,
    };

    let parent = r.ids.parent_span_id.as_deref().map(span_id);
    let server = SpanData {
        span_context: context(server_id),
        parent_span_id: parent.unwrap_or(SpanId::INVALID),
        parent_span_is_remote: parent.is_some(),
        span_kind: SpanKind::Server,
        name: format!("{} {}", r.method, r.route).into(),
        start_time: r.start,
        end_time: r.end,
        attributes: attrs,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope(),
    };

    if let Some(up) = r.upstream
        && !r.ids.client_span_id.is_empty()
    {
        let mut attrs = vec![
            KeyValue::new("http.request.method", r.method.to_string()),
            KeyValue::new("server.address", up.server_address.to_string()),
            KeyValue::new("server.port", i64::from(up.server_port)),
            KeyValue::new("url.full", up.url_full),
            KeyValue::new("network.protocol.version", "1.1"),
            KeyValue::new("minirag.request_id", r.ids.request_id.clone()),
        ];
        let error = up
            .error_type
            .map(str::to_string)
            .or_else(|| up.status.filter(|s| *s >= 400).map(|s| s.to_string()));
        if let Some(s) = up.status {
            attrs.push(KeyValue::new("http.response.status_code", i64::from(s)));
        }
        // Client spans count 4xx as errors too (the call did not do what was asked).
        let status = match error {
            Some(e) => {
                attrs.push(KeyValue::new("error.type", e.clone()));
                Status::error(e)
            }
            None => Status::Unset,
        };
        out.push(SpanData {
            span_context: context(span_id(&r.ids.client_span_id)),
            parent_span_id: server_id,
            parent_span_is_remote: false,
            span_kind: SpanKind::Client,
            name: r.method.to_string().into(),
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
    out.push(server);
}
