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
    pub client_addr: String,
    pub user_agent: Option<&'a str>,
    pub protocol: &'a str,
    pub outcome: &'static str,
    pub error: Option<&'a str>,
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
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
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
        buf.extend_from_slice(&line);
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
    use super::pieces;

    #[test]
    fn batches_split_only_at_line_ends() {
        let batch = b"aaaa\nbbbbbbbb\ncc\n";
        let got: Vec<&[u8]> = pieces(batch, 6).collect();
        assert_eq!(got, vec![&b"aaaa\n"[..], &b"bbbbbbbb\n"[..], &b"cc\n"[..]]);
        let got: Vec<&[u8]> = pieces(batch, 100).collect();
        assert_eq!(got.len(), 1);
    }
}
