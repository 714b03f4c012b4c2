//! The contracts between rag-core and minirag-agent (DESIGN §4) that are code rather than
//! documents: request-id rules, W3C trace context, the log timestamp format, and the
//! rotation scheme the log shipper expects. Both programs depend on this one definition.

pub mod ids;
pub mod rotate;

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-28T16:32:37.123Z` (log `timestamp`).
pub fn timestamp_now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}
