//! `http.access` lines (DESIGN §4.1 schema) written off the request path: the proxy hands
//! a finished line to a bounded queue; one writer thread owns stdout and the rotating
//! file. A full queue drops the line and counts it — the proxy never waits on a disk.

use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use minirag_contracts::rotate::RotatingFile;
use serde::Serialize;

use crate::config::AccessLogConfig;
use crate::metrics::Metrics;

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

pub struct AccessLog {
    tx: Option<SyncSender<Vec<u8>>>,
    metrics: Arc<Metrics>,
}

impl AccessLog {
    pub fn start(cfg: &AccessLogConfig, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        if !cfg.enabled || (!cfg.stdout && cfg.file.is_none()) {
            return Ok(Self { tx: None, metrics });
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
        let (tx, rx) = std::sync::mpsc::sync_channel(cfg.queue_capacity);
        let stdout = cfg.stdout;
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(rx, stdout, file))?;
        Ok(Self {
            tx: Some(tx),
            metrics,
        })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn write(&self, record: &AccessRecord<'_>) {
        let Some(tx) = &self.tx else { return };
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.access_log_dropped.inc();
            }
        }
    }
}

fn writer(rx: Receiver<Vec<u8>>, stdout: bool, mut file: Option<RotatingFile>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());
    while let Ok(first) = rx.recv() {
        let mut line = Some(first);
        // Drain what is queued, then flush once: one syscall for a burst of lines.
        while let Some(l) = line.take() {
            if stdout {
                let _ = out.write_all(&l);
            }
            if let Some(f) = file.as_mut()
                && let Err(e) = f.write_line(&l)
            {
                let _ = writeln!(
                    std::io::stderr(),
                    "minirag-agent: cannot write access log: {e}"
                );
            }
            line = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}
