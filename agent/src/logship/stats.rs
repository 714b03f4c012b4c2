//! `minirag_agent_logship_*`: counters kept as atomics on the hot path and encoded at
//! scrape time, with the per-file lag read from the checkpoint tracker.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::logship::checkpoint::Tracker;

/// Why lines or bytes did not reach a sink. Every loss has one of these names.
pub const DROP_REASONS: [&str; 3] = ["rejected", "rotated_unread", "deleted_unread"];

#[derive(Default)]
pub struct ReaderStats {
    pub lines_read: AtomicU64,
    pub bytes_read: AtomicU64,
    pub lines_truncated: AtomicU64,
    pub partial_flushes: AtomicU64,
    pub invalid_utf8: AtomicU64,
    pub files_truncated: AtomicU64,
    pub files_opened: AtomicU64,
    pub files_released: AtomicU64,
    /// Unread bytes of files let go after `rotate_wait_seconds` (and when deleted).
    pub bytes_dropped_rotated: AtomicU64,
    pub bytes_dropped_deleted: AtomicU64,
    pub read_errors: AtomicU64,
    pub checkpoint_writes: AtomicU64,
    pub checkpoint_errors: AtomicU64,
}

#[derive(Default)]
pub struct SinkStats {
    pub name: String,
    pub lines_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub lines_acked: AtomicU64,
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub lines_rejected: AtomicU64,
    pub buffer_bytes: AtomicU64,
    pub buffer_limit: AtomicU64,
    /// Undelivered bytes in the disk buffer (when enabled).
    pub disk_bytes: AtomicU64,
    /// Records dropped by a full disk buffer with `when_full: drop_newest`.
    pub lines_dropped_full: AtomicU64,
}

impl SinkStats {
    pub fn new(name: String, limit: usize) -> Self {
        let s = Self {
            name,
            ..Self::default()
        };
        s.buffer_limit.store(limit as u64, Relaxed);
        s
    }
}

pub struct Stats {
    pub reader: ReaderStats,
    pub sinks: Vec<Arc<SinkStats>>,
    pub tracker: Arc<Tracker>,
}

#[derive(Debug)]
pub struct LogshipCollector(pub Arc<Stats>);

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("logship::Stats")
    }
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(&[(&str, &str)], u64)],
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(0u64);
    let mut family = enc.encode_descriptor(name, help, None, c.metric_type())?;
    if let [(labels, v)] = rows
        && labels.is_empty()
    {
        // No label set: `name_total 3`, not `name_total{} 3`.
        return ConstCounter::new(*v).encode(family);
    }
    for (labels, v) in rows {
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ConstCounter::new(*v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Vec<(String, String)>, f64)],
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(0.0f64);
    let mut family = enc.encode_descriptor(name, help, None, g.metric_type())?;
    if let [(labels, v)] = rows
        && labels.is_empty()
    {
        return ConstGauge::new(*v).encode(family);
    }
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for LogshipCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let r = &s.reader;
        let none: &[(&str, &str)] = &[];
        counter(
            &mut enc,
            "minirag_agent_logship_lines_read",
            "Lines read from tailed files",
            &[(none, r.lines_read.load(Relaxed))],
        )?;
        counter(
            &mut enc,
            "minirag_agent_logship_bytes_read",
            "Bytes read from tailed files",
            &[(none, r.bytes_read.load(Relaxed))],
        )?;
        counter(
            &mut enc,
            "minirag_agent_logship_lines_truncated",
            "Lines longer than max_line_bytes, shipped cut and marked log.truncated",
            &[(none, r.lines_truncated.load(Relaxed))],
        )?;
        counter(
            &mut enc,
            "minirag_agent_logship_partial_lines_flushed",
            "Last lines without a newline shipped after partial_line_timeout_ms",
            &[(none, r.partial_flushes.load(Relaxed))],
        )?;
        counter(
            &mut enc,
            "minirag_agent_logship_invalid_utf8_lines",
            "Lines with invalid UTF-8, shipped with replacement characters",
            &[(none, r.invalid_utf8.load(Relaxed))],
        )?;
        counter(
            &mut enc,
            "minirag_agent_logship_files_truncated",
            "Files found shorter than the read offset (copytruncate or truncation)",
            &[(none, r.files_truncated.load(Relaxed))],
        )?;
        counter(
            &mut enc,
            "minirag_agent_logship_files_opened",
            "Files started being followed",
            &[(none, r.files_opened.load(Relaxed))],
        )?;
        counter(
            &mut enc,
            "minirag_agent_logship_files_released",
            "Files let go (read to the end after leaving the globs, or after rotate_wait_seconds)",
            &[(none, r.files_released.load(Relaxed))],
        )?;
        counter(
            &mut enc,
            "minirag_agent_logship_read_errors",
            "Errors reading tailed files",
            &[(none, r.read_errors.load(Relaxed))],
        )?;
        counter(
            &mut enc,
            "minirag_agent_logship_checkpoint_writes",
            "Checkpoint files written",
            &[(none, r.checkpoint_writes.load(Relaxed))],
        )?;
        counter(
            &mut enc,
            "minirag_agent_logship_checkpoint_errors",
            "Checkpoint writes that failed (progress is kept in memory and retried)",
            &[(none, r.checkpoint_errors.load(Relaxed))],
        )?;
        counter(
            &mut enc,
            "minirag_agent_logship_dropped_bytes",
            "Bytes never shipped, by reason (unread when a file was let go)",
            &[
                (
                    &[("reason", "rotated_unread")],
                    r.bytes_dropped_rotated.load(Relaxed),
                ),
                (
                    &[("reason", "deleted_unread")],
                    r.bytes_dropped_deleted.load(Relaxed),
                ),
            ],
        )?;
        let per_sink = |f: fn(&SinkStats) -> &AtomicU64| -> Vec<(Vec<(String, String)>, u64)> {
            s.sinks
                .iter()
                .map(|k| {
                    (
                        vec![("sink".to_string(), k.name.clone())],
                        f(k).load(Relaxed),
                    )
                })
                .collect()
        };
        for (name, help, f) in [
            (
                "minirag_agent_logship_lines_sent",
                "Records sent to the sink (retries included)",
                (|k: &SinkStats| &k.lines_sent) as fn(&SinkStats) -> &AtomicU64,
            ),
            (
                "minirag_agent_logship_bytes_sent",
                "Record bytes sent to the sink (before compression, retries included)",
                |k| &k.bytes_sent,
            ),
            (
                "minirag_agent_logship_lines_acked",
                "Records the sink acknowledged",
                |k| &k.lines_acked,
            ),
            ("minirag_agent_logship_requests", "Delivery attempts", |k| {
                &k.requests
            }),
            (
                "minirag_agent_logship_retries",
                "Delivery attempts that failed and were retried",
                |k| &k.retries,
            ),
        ] {
            let rows = per_sink(f);
            let c = ConstCounter::new(0u64);
            let mut family = enc.encode_descriptor(name, help, None, c.metric_type())?;
            for (labels, v) in rows {
                ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let c = ConstCounter::new(0u64);
            let mut family = enc.encode_descriptor(
                "minirag_agent_logship_dropped_lines",
                "Records never delivered, by sink and reason (rejected: refused by the peer for good, e.g. HTTP 400)",
                None,
                c.metric_type(),
            )?;
            for k in &s.sinks {
                let labels = vec![
                    ("sink".to_string(), k.name.clone()),
                    ("reason".to_string(), "rejected".to_string()),
                ];
                ConstCounter::new(k.lines_rejected.load(Relaxed))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        let buffer: Vec<_> = s
            .sinks
            .iter()
            .map(|k| {
                (
                    vec![("sink".to_string(), k.name.clone())],
                    k.buffer_bytes.load(Relaxed) as f64,
                )
            })
            .collect();
        gauge(
            &mut enc,
            "minirag_agent_logship_buffer_bytes",
            "Record bytes held for the sink (read, not yet acknowledged)",
            &buffer,
        )?;
        let limit: Vec<_> = s
            .sinks
            .iter()
            .map(|k| {
                (
                    vec![("sink".to_string(), k.name.clone())],
                    k.buffer_limit.load(Relaxed) as f64,
                )
            })
            .collect();
        gauge(
            &mut enc,
            "minirag_agent_logship_buffer_limit_bytes",
            "buffer.max_bytes of the sink",
            &limit,
        )?;
        let disk: Vec<_> = s
            .sinks
            .iter()
            .map(|k| {
                (
                    vec![("sink".to_string(), k.name.clone())],
                    k.disk_bytes.load(Relaxed) as f64,
                )
            })
            .collect();
        gauge(
            &mut enc,
            "minirag_agent_logship_disk_buffer_bytes",
            "Undelivered bytes in the sink's disk buffer (0 without one)",
            &disk,
        )?;
        let lags: Vec<_> = s
            .tracker
            .lags()
            .into_iter()
            .map(|l| {
                (
                    vec![("file".to_string(), l.path.display().to_string())],
                    l.bytes as f64,
                )
            })
            .collect();
        gauge(
            &mut enc,
            "minirag_agent_logship_lag_bytes",
            "Bytes of each followed file not yet acknowledged by every sink",
            &lags,
        )?;
        gauge(
            &mut enc,
            "minirag_agent_logship_oldest_unacked_age_seconds",
            "Age of the oldest chunk some sink has not acknowledged (0 when all are)",
            &[(Vec::new(), s.tracker.oldest_unacked_seconds())],
        )?;
        Ok(())
    }
}
