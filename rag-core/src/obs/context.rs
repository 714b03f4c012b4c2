//! Per-request identity in rag-core: continues the request id and trace the agent (or any
//! client) sent, so rag-core's log lines join the agent's; starts fresh ids otherwise.

pub use minirag_contracts::ids::{parse_traceparent, random_hex, valid_request_id};

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Runs `f` with `request_id` visible to outbound calls made on its task.
pub async fn with_request_id<F: std::future::Future>(request_id: String, f: F) -> F::Output {
    REQUEST_ID.scope(request_id, f).await
}

/// The id of the request the current task serves, if any (for outbound headers).
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(|v| v.clone()).ok()
}

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

    /// Adopts the ids of the request's SERVER span (rag-core's own span, child of the
    /// caller's), so logs, responses and outbound calls name the same span.
    pub fn with_span_ids(mut self, ids: Option<(String, String)>) -> Self {
        if let Some((trace_id, span_id)) = ids {
            self.trace_id = trace_id;
            self.span_id = span_id;
        }
        self
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
