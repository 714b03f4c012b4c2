//! Request ids and W3C trace context (DESIGN §3): what is accepted from a peer, what is
//! generated, and how a `traceparent` is written for the next hop.

use rand::RngCore;

/// 1–128 characters of `[A-Za-z0-9._:-]` (DESIGN §3): safe to log and echo.
pub fn valid_request_id(v: &str) -> bool {
    (1..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[derive(Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: String,
    pub parent_id: String,
    pub flags: u8,
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses a W3C `traceparent`: version 00 exactly 4 fields; a higher version is read by
/// its first four fields (forward compatibility); `ff`, uppercase, all-zero ids rejected.
pub fn parse_traceparent(value: &str) -> Option<TraceParent> {
    let value = value.trim();
    let mut parts = value.split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let parent_id = parts.next()?;
    let flags = parts.next()?;
    let rest: Vec<&str> = parts.collect();
    if !is_lower_hex(version, 2) || version == "ff" {
        return None;
    }
    if version == "00" && !rest.is_empty() {
        return None;
    }
    if version != "00" && value.len() > 55 && value.as_bytes().get(55) != Some(&b'-') {
        return None;
    }
    if !is_lower_hex(trace_id, 32) || trace_id.bytes().all(|b| b == b'0') {
        return None;
    }
    if !is_lower_hex(parent_id, 16) || parent_id.bytes().all(|b| b == b'0') {
        return None;
    }
    if !is_lower_hex(flags, 2) {
        return None;
    }
    Some(TraceParent {
        trace_id: trace_id.to_string(),
        parent_id: parent_id.to_string(),
        flags: u8::from_str_radix(flags, 16).ok()?,
    })
}

impl TraceParent {
    /// The header for the next hop: same trace, `span_id` as the parent, same flags.
    pub fn child(&self, span_id: &str) -> String {
        format!("00-{}-{span_id}-{:02x}", self.trace_id, self.flags)
    }
}

/// A UUIDv4 from the thread-local generator (no system call per request).
pub fn new_request_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let mut buf = uuid::Uuid::encode_buffer();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut buf)
        .to_owned()
}

/// Random lowercase hex of `bytes` bytes (at most 32), never all zeros (W3C forbids zero
/// ids).
pub fn random_hex(bytes: usize) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    let buf = &mut buf[..bytes.min(32)];
    loop {
        rand::rng().fill_bytes(buf);
        if buf.iter().any(|b| *b != 0) {
            break;
        }
    }
    let mut out = String::with_capacity(buf.len() * 2);
    for b in buf.iter() {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_rules() {
        assert_eq!(
            parse_traceparent(TP).unwrap().trace_id,
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(parse_traceparent(&TP.to_uppercase()).is_none());
        assert!(
            parse_traceparent("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_none()
        );
        assert!(
            parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
        assert!(
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01").is_none()
        );
        assert!(
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01").is_none()
        );
        assert!(parse_traceparent(&format!("{TP}-extra")).is_none());
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future")
                .is_some()
        );
    }

    #[test]
    fn request_id_rules() {
        assert!(valid_request_id("abc-123_x.y:z"));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id(&"a".repeat(129)));
        assert!(!valid_request_id("bad id"));
        assert!(!valid_request_id("é"));
        assert_eq!(random_hex(8).len(), 16);
        let id = uuid::Uuid::parse_str(&new_request_id()).unwrap();
        assert_eq!(id.get_version_num(), 4);
        let tp = parse_traceparent(TP).unwrap();
        assert_eq!(
            tp.child("1111111111111111"),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01"
        );
    }
}
