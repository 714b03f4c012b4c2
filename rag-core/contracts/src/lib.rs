//! The contracts between rag-core and minirag-agent (DESIGN §4) that are code rather than
//! documents: request-id rules, W3C trace context, the log timestamp format, the
//! rotation scheme the log shipper expects, how config files are read, and the tar
//! format both programs write. Both programs depend on this one definition.

pub mod ids;
pub mod net;
pub mod rotate;
pub mod tar;
pub mod yaml;

use std::cell::RefCell;

thread_local! {
    /// The last formatted millisecond on this thread: at proxy rates many log lines share
    /// one, and formatting a date is far dearer than comparing an integer.
    static LAST: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-28T16:32:37.123Z` (log `timestamp`).
pub fn timestamp_now() -> String {
    let now = chrono::Utc::now();
    let ms = now.timestamp_millis();
    LAST.with(|cell| {
        let mut last = cell.borrow_mut();
        if last.0 != ms {
            *last = (ms, now.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
        }
        last.1.clone()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamp_shape() {
        let t = super::timestamp_now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T' && t.as_bytes()[19] == b'.');
        let later = super::timestamp_now();
        assert!(later >= t);
    }
}
