//! Request identity at the edge: request id and W3C trace context (DESIGN §3 steps 2–3),
//! the sampling decision, and the spans exported for each request (`spans`).

pub mod spans;

use http::HeaderMap;
use minirag_contracts::ids::{
    TraceParent, new_request_id, parse_traceparent, random_hex, valid_request_id,
};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
};

#[derive(Debug, Clone)]
pub struct RequestIds {
    pub request_id: String,
    pub trace_id: String,
    /// The agent's own server span.
    pub span_id: String,
    /// The client's span when the trace was continued.
    pub parent_span_id: Option<String>,
    pub flags: u8,
    /// Forwarded only with a valid traceparent (W3C: drop it when restarting the trace).
    pub tracestate: Option<http::HeaderValue>,
    /// Spans are exported for this request (tracing on and the sampler said yes).
    pub sampled: bool,
    /// The agent's CLIENT span for the upstream call when spans are exported: it is the
    /// parent rag-core sees. Empty otherwise (then the server span is the parent).
    pub client_span_id: String,
}

impl RequestIds {
    pub fn from_headers(
        headers: &HeaderMap,
        trust_request_id: bool,
        tracing: Option<&minirag_otel::Pipeline>,
    ) -> Self {
        let mut ids = Self::parse(headers, trust_request_id);
        if let Some(pipeline) = tracing {
            ids.sample(pipeline);
        }
        ids
    }

    /// Asks the configured sampler (parent-based by default: a parent's sampled flag is
    /// always honoured) and sets the flag sent upstream to its verdict.
    fn sample(&mut self, pipeline: &minirag_otel::Pipeline) {
        let trace_id = TraceId::from_hex(&self.trace_id).unwrap_or(TraceId::INVALID);
        let parent = self.parent_span_id.as_deref().map(|p| {
            let sc = SpanContext::new(
                trace_id,
                SpanId::from_hex(p).unwrap_or(SpanId::INVALID),
                TraceFlags::new(self.flags),
                true,
                TraceState::default(),
            );
            opentelemetry::Context::new().with_remote_span_context(sc)
        });
        self.sampled = pipeline.should_sample(parent.as_ref(), trace_id, "", &SpanKind::Server);
        if self.sampled {
            self.flags |= 0x01;
            self.client_span_id = random_hex(8);
        } else {
            self.flags &= !0x01;
        }
    }

    fn parse(headers: &HeaderMap, trust_request_id: bool) -> Self {
        let request_id = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| trust_request_id && valid_request_id(v))
            .map(str::to_owned)
            .unwrap_or_else(new_request_id);
        // More than one traceparent header is invalid: restart rather than guess.
        let mut tps = headers.get_all("traceparent").iter();
        let parsed = match (tps.next(), tps.next()) {
            (Some(v), None) => v.to_str().ok().and_then(parse_traceparent),
            _ => None,
        };
        let span_id = random_hex(8);
        match parsed {
            Some(TraceParent {
                trace_id,
                parent_id,
                flags,
            }) => Self {
                request_id,
                trace_id,
                span_id,
                parent_span_id: Some(parent_id),
                flags,
                tracestate: headers.get("tracestate").cloned(),
                sampled: false,
                client_span_id: String::new(),
            },
            None => Self {
                request_id,
                trace_id: random_hex(16),
                span_id,
                parent_span_id: None,
                flags: 0x01,
                tracestate: None,
                sampled: false,
                client_span_id: String::new(),
            },
        }
    }

    /// The `traceparent` for upstream: same trace, the agent's (client) span as parent.
    pub fn upstream_traceparent(&self) -> String {
        let parent = if self.client_span_id.is_empty() {
            &self.span_id
        } else {
            &self.client_span_id
        };
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut tp = String::with_capacity(55);
        tp.push_str("00-");
        tp.push_str(&self.trace_id);
        tp.push('-');
        tp.push_str(parent);
        tp.push('-');
        tp.push(HEX[usize::from(self.flags >> 4)] as char);
        tp.push(HEX[usize::from(self.flags & 0x0f)] as char);
        tp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn continue_or_restart() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ids = RequestIds::from_headers(
            &headers(&[
                ("traceparent", tp),
                ("tracestate", "a=b"),
                ("x-request-id", "r1"),
            ]),
            true,
            None,
        );
        assert_eq!(ids.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ids.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(ids.request_id, "r1");
        assert!(
            ids.upstream_traceparent()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        assert!(!ids.upstream_traceparent().contains("00f067aa0ba902b7"));
        assert!(ids.tracestate.is_some());

        let ids = RequestIds::from_headers(
            &headers(&[("traceparent", "garbage"), ("tracestate", "a=b")]),
            true,
            None,
        );
        assert!(ids.parent_span_id.is_none());
        assert!(ids.tracestate.is_none());
        let ids = RequestIds::from_headers(
            &headers(&[("traceparent", tp), ("traceparent", tp)]),
            true,
            None,
        );
        assert!(
            ids.parent_span_id.is_none(),
            "two traceparents restart the trace"
        );
        let ids = RequestIds::from_headers(&headers(&[("x-request-id", "r1")]), false, None);
        assert_ne!(
            ids.request_id, "r1",
            "trust_incoming: false always generates"
        );
    }
}
