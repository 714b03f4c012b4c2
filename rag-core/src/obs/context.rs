//! Per-request identity in rag-core: continues the request id and trace the agent (or any
//! client) sent, so rag-core's log lines join the agent's; starts fresh ids otherwise.

pub use minirag_contracts::ids::{parse_traceparent, random_hex, valid_request_id};

/// What a handler knows about the request it serves.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub trace_id: String,
    pub span_id: String,
}

impl RequestContext {
    pub fn from_headers(request_id: Option<&str>, traceparent: Option<&str>) -> Self {
        let request_id = request_id
            .filter(|v| valid_request_id(v))
            .map(str::to_owned)
            .unwrap_or_else(minirag_contracts::ids::new_request_id);
        let trace_id = traceparent
            .and_then(parse_traceparent)
            .map(|tp| tp.trace_id)
            .unwrap_or_else(|| random_hex(16));
        Self {
            request_id,
            trace_id,
            span_id: random_hex(8),
        }
    }

    /// A context for work that does not come from a request (startup, background).
    pub fn detached() -> Self {
        Self::from_headers(None, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_headers_get_fresh_ids() {
        let ctx = RequestContext::from_headers(Some("<script>"), Some("garbage"));
        assert_ne!(ctx.request_id, "<script>");
        assert_eq!(ctx.trace_id.len(), 32);
        assert_eq!(ctx.span_id.len(), 16);
        let kept = RequestContext::from_headers(
            Some("abc-1"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert_eq!(kept.request_id, "abc-1");
        assert_eq!(kept.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
