//! `http.access` lines (DESIGN §4.1 schema) written off the request path. The request path
//! appends a finished line to a shared in-memory buffer (bounded by `buffer_bytes`); one
//! writer thread swaps the buffer out and writes it when 64 KiB have gathered or every
//! `flush_interval_ms`. One wake-up per batch instead of per line is what keeps the log
//! nearly free under load; a full buffer drops the line and counts it — the proxy never
//! waits on a disk.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use minirag_contracts::rotate::RotatingFile;
use serde::Serialize;

use crate::config::AccessLogConfig;
use crate::metrics::Metrics;

const WAKE_AT_BYTES: usize = 64 * 1024;

/// One access record. Identity fields stay null until the identity issue fills them.
#[derive(Serialize)]
pub struct AccessRecord<'a> {
    pub timestamp: String,
    pub level: &'static str,
    pub logger: &'static str,
    pub message: &'static str,
    pub event: &'static str,
    pub request_id: &'a str,
    pub trace_id: &'a str,
    pub span_id: &'a str,
    pub parent_span_id: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub workspace_id: Option<&'a str>,
    pub organization_id: Option<&'a str>,
    pub route: &'static str,
    pub method: &'a str,
    pub path: &'a str,
    pub status_code: u16,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub client_addr: std::net::SocketAddr,
    pub user_agent: Option<&'a str>,
    pub protocol: &'a str,
    pub outcome: &'static str,
    pub error: Option<&'a str>,
}

thread_local! {
    /// Per-thread scratch for encoding a line before it is appended under the lock.
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl AccessRecord<'_> {
    /// The record as one JSON object, byte for byte what `serde_json` writes for the
    /// derived `Serialize` (tested), without its per-field machinery: this runs once per
    /// proxied request.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        key(out, "timestamp", true);
        string(out, &self.timestamp);
        key(out, "level", false);
        string(out, self.level);
        key(out, "logger", false);
        string(out, self.logger);
        key(out, "message", false);
        string(out, self.message);
        key(out, "event", false);
        string(out, self.event);
        key(out, "request_id", false);
        string(out, self.request_id);
        key(out, "trace_id", false);
        string(out, self.trace_id);
        key(out, "span_id", false);
        string(out, self.span_id);
        key(out, "parent_span_id", false);
        opt_string(out, self.parent_span_id);
        key(out, "user_id", false);
        opt_string(out, self.user_id);
        key(out, "workspace_id", false);
        opt_string(out, self.workspace_id);
        key(out, "organization_id", false);
        opt_string(out, self.organization_id);
        key(out, "route", false);
        string(out, self.route);
        key(out, "method", false);
        string(out, self.method);
        key(out, "path", false);
        string(out, self.path);
        key(out, "status_code", false);
        integer(out, u64::from(self.status_code));
        key(out, "duration_ms", false);
        float(out, self.duration_ms);
        key(out, "upstream_ms", false);
        match self.upstream_ms {
            Some(v) => float(out, v),
            None => out.extend_from_slice(b"null"),
        }
        key(out, "bytes_in", false);
        integer(out, self.bytes_in);
        key(out, "bytes_out", false);
        integer(out, self.bytes_out);
        key(out, "client_addr", false);
        out.push(b'"');
        write_socket_addr(out, self.client_addr);
        out.push(b'"');
        key(out, "user_agent", false);
        opt_string(out, self.user_agent);
        key(out, "protocol", false);
        string(out, self.protocol);
        key(out, "outcome", false);
        string(out, self.outcome);
        key(out, "error", false);
        opt_string(out, self.error);
        out.push(b'}');
    }
}

fn key(out: &mut Vec<u8>, name: &str, first: bool) {
    if !first {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn string(out: &mut Vec<u8>, s: &str) {
    // Almost every value needs no escaping; the rare one goes through serde_json.
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn integer(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(decimal(n, &mut [0; 20]));
}

/// `n` in decimal, written into the end of `digits` (20 is room for any u64); the slice
/// holding it. No formatting machinery: this runs several times per request.
pub fn decimal(n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &digits[i..]
}

/// `SocketAddr`'s display form; IPv4 without the formatting machinery (the common case).
pub fn write_socket_addr(out: &mut Vec<u8>, addr: std::net::SocketAddr) {
    match addr {
        std::net::SocketAddr::V4(a) => {
            write_ipv4(out, *a.ip());
            out.push(b':');
            integer(out, u64::from(a.port()));
        }
        std::net::SocketAddr::V6(a) => {
            use std::io::Write;
            let _ = write!(out, "{a}");
        }
    }
}

pub fn write_ipv4(out: &mut Vec<u8>, ip: std::net::Ipv4Addr) {
    for (i, octet) in ip.octets().iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        integer(out, u64::from(*octet));
    }
}

/// An IP address as text (for `X-Forwarded-For`), IPv4 without `fmt`.
pub fn ip_string(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut out = Vec::with_capacity(15);
            write_ipv4(&mut out, v4);
            String::from_utf8(out).unwrap_or_default()
        }
        std::net::IpAddr::V6(v6) => v6.to_string(),
    }
}

/// Decimal digits of `n`, appended.
pub fn write_integer(out: &mut Vec<u8>, n: u64) {
    integer(out, n);
}

fn float(out: &mut Vec<u8>, v: f64) {
    let _ = serde_json::to_writer(&mut *out, &v);
}

struct Shared {
    buf: Mutex<Vec<u8>>,
    wake: Condvar,
    closed: AtomicBool,
}

/// Dropped with the last clone of the log: the writer flushes what is left and exits
/// (a config reload that changes the access log starts a new writer).
struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.wake.notify_one();
    }
}

#[derive(Clone)]
pub struct AccessLog {
    shared: Option<Arc<Shared>>,
    _close: Option<Arc<CloseOnDrop>>,
    max_bytes: usize,
    metrics: Arc<Metrics>,
}

impl AccessLog {
    pub fn start(cfg: &AccessLogConfig, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        if !cfg.enabled || (!cfg.stdout && cfg.file.is_none()) {
            return Ok(Self {
                shared: None,
                _close: None,
                max_bytes: 0,
                metrics,
            });
        }
        let file = match &cfg.file {
            Some(p) => Some(RotatingFile::open(
                p,
                cfg.rotation_max_bytes,
                cfg.rotation_backups,
                0,
            )?),
            None => None,
        };
        let shared = Arc::new(Shared {
            buf: Mutex::new(Vec::with_capacity(WAKE_AT_BYTES * 2)),
            wake: Condvar::new(),
            closed: AtomicBool::new(false),
        });
        let writer_shared = Arc::clone(&shared);
        let stdout = cfg.stdout;
        let interval = Duration::from_millis(cfg.flush_interval_ms);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(&writer_shared, stdout, file, interval))?;
        Ok(Self {
            _close: Some(Arc::new(CloseOnDrop(Arc::clone(&shared)))),
            shared: Some(shared),
            max_bytes: cfg.buffer_bytes,
            metrics,
        })
    }

    pub fn enabled(&self) -> bool {
        self.shared.is_some()
    }

    pub fn write(&self, record: &AccessRecord<'_>) {
        let Some(shared) = &self.shared else { return };
        LINE.with_borrow_mut(|line| {
            line.clear();
            record.encode(line);
            line.push(b'\n');
            self.append(shared, line);
        });
    }

    fn append(&self, shared: &Shared, line: &[u8]) {
        let mut buf = match shared.buf.lock() {
            Ok(b) => b,
            Err(p) => p.into_inner(),
        };
        if buf.len() + line.len() > self.max_bytes {
            drop(buf);
            self.metrics.access_log_dropped.inc();
            return;
        }
        let before = buf.len();
        buf.extend_from_slice(line);
        let crossed = before < WAKE_AT_BYTES && buf.len() >= WAKE_AT_BYTES;
        drop(buf);
        if crossed {
            shared.wake.notify_one();
        }
    }
}

/// Splits a batch at line ends into pieces no larger than `max` (so rotation, which
/// happens between writes, never splits a line).
fn pieces(batch: &[u8], max: usize) -> impl Iterator<Item = &[u8]> {
    let mut rest = batch;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = if rest.len() <= max {
            rest.len()
        } else {
            rest[..max].iter().rposition(|b| *b == b'\n').map_or_else(
                || {
                    rest.iter()
                        .position(|b| *b == b'\n')
                        .map_or(rest.len(), |p| p + 1)
                },
                |p| p + 1,
            )
        };
        let (piece, tail) = rest.split_at(cut);
        rest = tail;
        Some(piece)
    })
}

fn writer(shared: &Shared, stdout: bool, mut file: Option<RotatingFile>, interval: Duration) {
    let mut out = std::io::stdout();
    let mut batch = Vec::with_capacity(WAKE_AT_BYTES * 2);
    loop {
        {
            let mut buf = match shared.buf.lock() {
                Ok(b) => b,
                Err(p) => p.into_inner(),
            };
            if buf.len() < WAKE_AT_BYTES {
                buf = match shared.wake.wait_timeout(buf, interval) {
                    Ok((b, _)) => b,
                    Err(p) => p.into_inner().0,
                };
            }
            std::mem::swap(&mut *buf, &mut batch);
        }
        if batch.is_empty() {
            if shared.closed.load(Ordering::Acquire) {
                return;
            }
            continue;
        }
        if stdout {
            let _ = out.write_all(&batch);
            let _ = out.flush();
        }
        if let Some(f) = file.as_mut() {
            for piece in pieces(&batch, WAKE_AT_BYTES) {
                if let Err(e) = f.write_line(piece) {
                    let _ = writeln!(
                        std::io::stderr(),
                        "minirag-agent: cannot write access log: {e}"
                    );
                }
            }
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::{AccessRecord, pieces};

    #[test]
    fn hand_encoding_matches_serde_json() {
        let ua = "curl/8 \"quoted\" \\ tab\t and \u{1} ünïcode";
        let mut record = AccessRecord {
            timestamp: "2026-12-06T01:02:03.456Z".into(),
            level: "INFO",
            logger: "minirag_agent.access",
            message: "request proxied",
            event: "http.access",
            request_id: "req-1",
            trace_id: "0af7651916cd43dd8448eb211c80319c",
            span_id: "b7ad6b7169203331",
            parent_span_id: Some("00f067aa0ba902b7"),
            user_id: None,
            workspace_id: Some("ws_1"),
            organization_id: None,
            route: "ask",
            method: "POST",
            path: "/api/v1/ask",
            status_code: 200,
            duration_ms: 1.234,
            upstream_ms: Some(0.5),
            bytes_in: 0,
            bytes_out: 18_446_744_073_709_551_615,
            client_addr: "127.0.0.1:4000".parse().unwrap(),
            user_agent: Some(ua),
            protocol: "HTTP/1.1",
            outcome: "success",
            error: None,
        };
        for (duration, upstream) in [
            (1.234, Some(0.5)),
            (2.0, None),
            (0.0, Some(1e-7)),
            (123456.789, Some(3.0)),
        ] {
            record.duration_ms = duration;
            record.upstream_ms = upstream;
            let mut ours = Vec::new();
            record.encode(&mut ours);
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(&record).unwrap()
            );
        }
        for addr in ["[2001:db8::1]:443", "0.0.0.0:0", "255.255.255.255:65535"] {
            record.client_addr = addr.parse().unwrap();
            let mut ours = Vec::new();
            record.encode(&mut ours);
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(&record).unwrap()
            );
        }
        assert_eq!(
            super::ip_string("10.0.255.1".parse().unwrap()),
            "10.0.255.1"
        );
        assert_eq!(super::ip_string("::1".parse().unwrap()), "::1");
        for n in [0, 7, 10, 65_535, 18_446_744_073_709_551_615] {
            let mut out = Vec::new();
            super::write_integer(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn batches_split_only_at_line_ends() {
        let batch = b"aaaa\nbbbbbbbb\ncc\n";
        let got: Vec<&[u8]> = pieces(batch, 6).collect();
        assert_eq!(got, vec![&b"aaaa\n"[..], &b"bbbbbbbb\n"[..], &b"cc\n"[..]]);
        let got: Vec<&[u8]> = pieces(batch, 100).collect();
        assert_eq!(got.len(), 1);
    }
}
