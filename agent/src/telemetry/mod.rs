//! Request identity at the edge: request id and W3C trace context (DESIGN §3 steps 2–3).
//! Span export over OTLP builds on these ids (tracing issue).

use http::HeaderMap;
use minirag_contracts::ids::{
    TraceParent, new_request_id, parse_traceparent, random_hex, valid_request_id,
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
}

impl RequestIds {
    pub fn from_headers(headers: &HeaderMap, trust_request_id: bool) -> Self {
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
            },
            None => Self {
                request_id,
                trace_id: random_hex(16),
                span_id,
                parent_span_id: None,
                flags: 0x01,
                tracestate: None,
            },
        }
    }

    /// The `traceparent` for upstream: same trace, the agent's span as parent.
    pub fn upstream_traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags)
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
        );
        assert!(ids.parent_span_id.is_none());
        assert!(ids.tracestate.is_none());
        let ids =
            RequestIds::from_headers(&headers(&[("traceparent", tp), ("traceparent", tp)]), true);
        assert!(
            ids.parent_span_id.is_none(),
            "two traceparents restart the trace"
        );
        let ids = RequestIds::from_headers(&headers(&[("x-request-id", "r1")]), false);
        assert_ne!(
            ids.request_id, "r1",
            "trust_incoming: false always generates"
        );
    }
}
