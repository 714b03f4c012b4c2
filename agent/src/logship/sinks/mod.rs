//! Sinks: each destination gets its own bounded queue, batching, retries and
//! acknowledgements. A sink only says how to deliver one batch and how the peer's
//! answer is classified; the driver here does everything else the same way for all.

pub mod disk_buffer;
pub mod elasticsearch;
pub mod file;
pub mod http;
pub mod loki;
pub mod otlp;
pub mod stdout;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::logship::chunk::Chunk;
use crate::logship::config::{BatchConfig, RetryConfig, SinkConfig};
use crate::logship::stats::SinkStats;

/// The peer's verdict on one batch.
#[derive(Debug)]
pub enum SinkError {
    /// Try again later (429, 5xx, timeout, connection refused or reset).
    Retry {
        reason: String,
        /// The peer's `Retry-After`, honoured up to [`MAX_RETRY_AFTER`].
        after: Option<Duration>,
    },
    /// The body was too large: the driver splits the batch if it can.
    TooLarge,
    /// Refused for good (e.g. 400): retrying cannot help. Counted as dropped.
    Rejected { reason: String },
}

/// Outcome of a delivered batch.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Records the peer refused individually and for good (partial success).
    pub rejected: u64,
}

pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// One destination's wire format and transport.
pub trait Sink: Send + Sync + 'static {
    /// Delivers `batch` (whole chunks, in order) once; the driver retries.
    fn deliver(
        &self,
        batch: &[Arc<Chunk>],
    ) -> impl Future<Output = Result<Delivered, SinkError>> + Send;
}

pub struct SinkHandle {
    pub name: String,
    pub tx: mpsc::Sender<Arc<Chunk>>,
    pub stats: Arc<SinkStats>,
    pub task: JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("sink {name}: {message}")]
    Invalid { name: String, message: String },
}

/// Builds the sink `cfg` describes and starts its driver.
pub fn spawn(
    cfg: &SinkConfig,
    read_chunk_bytes: usize,
    data_dir: &std::path::Path,
) -> Result<SinkHandle, BuildError> {
    let name = cfg.name();
    let invalid = |message: String| BuildError::Invalid {
        name: name.clone(),
        message,
    };
    let stats = Arc::new(SinkStats::new(name.clone(), cfg.buffer().max_bytes));
    // The queue bound in chunks: each chunk holds at most read_chunk_bytes of input.
    let capacity = (cfg.buffer().max_bytes / read_chunk_bytes.max(1)).max(1);
    let (tx, rx) = mpsc::channel(capacity);
    let batch = cfg.batch().clone();
    let retry = cfg.retry();
    let st = Arc::clone(&stats);
    let disk = match cfg.disk_buffer() {
        Some(d) => {
            let dir = d
                .path
                .clone()
                .unwrap_or_else(|| data_dir.join("buffer").join(&name));
            disk_buffer::prepare(&dir)
                .map_err(|e| invalid(format!("disk buffer {}: {e}", dir.display())))?;
            Some((d.clone(), dir))
        }
        None => None,
    };
    let start = Start {
        rx,
        batch,
        retry,
        stats: st,
        disk,
    };
    let task = match cfg {
        SinkConfig::File(c) => {
            let s = file::FileSink::open(c).map_err(|e| invalid(e.to_string()))?;
            start.spawn(s)
        }
        SinkConfig::Stdout(_) => start.spawn(stdout::StdoutSink),
        SinkConfig::Http(c) => {
            let s = http::HttpSink::new(c).map_err(invalid)?;
            start.spawn(s)
        }
        SinkConfig::Otlp(c) => {
            let s = otlp::OtlpSink::new(c).map_err(invalid)?;
            start.spawn(s)
        }
        SinkConfig::Loki(c) => {
            let s = loki::LokiSink::new(c).map_err(invalid)?;
            start.spawn(s)
        }
        SinkConfig::Elasticsearch(c) => {
            let s = elasticsearch::ElasticsearchSink::new(c).map_err(invalid)?;
            start.spawn(s)
        }
    };
    Ok(SinkHandle {
        name,
        tx,
        stats,
        task,
    })
}

/// What a sink task needs, whichever way it runs.
struct Start {
    rx: mpsc::Receiver<Arc<Chunk>>,
    batch: BatchConfig,
    retry: RetryConfig,
    stats: Arc<SinkStats>,
    disk: Option<(crate::logship::config::DiskBufferConfig, std::path::PathBuf)>,
}

impl Start {
    fn spawn<S: Sink>(self, sink: S) -> JoinHandle<()> {
        match self.disk {
            Some((cfg, dir)) => tokio::spawn(
                disk_buffer::DiskBuffered {
                    sink,
                    cfg,
                    dir,
                    batch: self.batch,
                    retry: self.retry,
                    stats: self.stats,
                }
                .run(self.rx),
            ),
            None => tokio::spawn(drive(sink, self.rx, self.batch, self.retry, self.stats)),
        }
    }
}

/// Gathers chunks into batches, delivers each until the peer takes it (or refuses it
/// for good), then acknowledges its chunks. Ends when the queue closes and is empty.
async fn drive<S: Sink>(
    sink: S,
    mut rx: mpsc::Receiver<Arc<Chunk>>,
    batch_cfg: BatchConfig,
    retry: RetryConfig,
    stats: Arc<SinkStats>,
) {
    let timeout = Duration::from_millis(batch_cfg.timeout_ms);
    while let Some(first) = rx.recv().await {
        let mut events = first.len();
        let mut bytes = first.data.len();
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + timeout;
        while events < batch_cfg.max_events && bytes < batch_cfg.max_bytes {
            let next = match rx.try_recv() {
                Ok(c) => Some(c),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    tokio::time::timeout_at(deadline, rx.recv())
                        .await
                        .unwrap_or_default()
                }
            };
            let Some(c) = next else { break };
            events += c.len();
            bytes += c.data.len();
            batch.push(c);
        }
        deliver(&sink, &batch, &retry, &stats).await;
        for c in &batch {
            stats.buffer_bytes.fetch_sub(c.data.len() as u64, Relaxed);
            c.ack();
        }
    }
}

/// Delivers a batch, retrying forever on retryable errors (the queue behind it fills
/// and the reader waits: backpressure), splitting it on "too large".
pub(crate) async fn deliver<S: Sink>(
    sink: &S,
    batch: &[Arc<Chunk>],
    retry: &RetryConfig,
    stats: &SinkStats,
) {
    let records: u64 = batch.iter().map(|c| c.len() as u64).sum();
    let bytes: u64 = batch.iter().map(|c| c.data.len() as u64).sum();
    let per_request = Duration::from_millis(retry.timeout_ms.max(1));
    let mut attempt: u32 = 0;
    let mut logged = false;
    loop {
        stats.requests.fetch_add(1, Relaxed);
        stats.lines_sent.fetch_add(records, Relaxed);
        stats.bytes_sent.fetch_add(bytes, Relaxed);
        let result = match tokio::time::timeout(per_request, sink.deliver(batch)).await {
            Ok(r) => r,
            Err(_) => Err(SinkError::Retry {
                reason: format!("no answer within {} ms", retry.timeout_ms),
                after: None,
            }),
        };
        match result {
            Ok(d) => {
                stats
                    .lines_acked
                    .fetch_add(records.saturating_sub(d.rejected), Relaxed);
                if d.rejected > 0 {
                    stats.lines_rejected.fetch_add(d.rejected, Relaxed);
                    crate::log::warn(
                        "logship.records_rejected",
                        &format!(
                            "sink {}: the peer refused {} of {records} records for good",
                            stats.name, d.rejected
                        ),
                    );
                }
                if logged {
                    crate::log::info(
                        "logship.sink_recovered",
                        &format!(
                            "sink {}: delivering again after {attempt} retries",
                            stats.name
                        ),
                    );
                }
                return;
            }
            Err(SinkError::TooLarge) if batch.len() > 1 => {
                let (a, b) = batch.split_at(batch.len() / 2);
                Box::pin(deliver(sink, a, retry, stats)).await;
                Box::pin(deliver(sink, b, retry, stats)).await;
                return;
            }
            Err(SinkError::TooLarge) => {
                stats.lines_rejected.fetch_add(records, Relaxed);
                crate::log::error(
                    "logship.records_rejected",
                    &format!(
                        "sink {}: one chunk of {records} records is too large for the peer; dropped (lower read_chunk_bytes)",
                        stats.name
                    ),
                );
                return;
            }
            Err(SinkError::Rejected { reason }) => {
                stats.lines_rejected.fetch_add(records, Relaxed);
                crate::log::error(
                    "logship.records_rejected",
                    &format!(
                        "sink {}: {records} records refused for good: {reason}",
                        stats.name
                    ),
                );
                return;
            }
            Err(SinkError::Retry { reason, after }) => {
                stats.retries.fetch_add(1, Relaxed);
                if !logged {
                    logged = true;
                    crate::log::warn(
                        "logship.sink_retrying",
                        &format!(
                            "sink {}: {reason}; retrying with backoff (reading waits when the buffer is full)",
                            stats.name
                        ),
                    );
                }
                let wait = after
                    .map(|a| a.min(MAX_RETRY_AFTER))
                    .unwrap_or_else(|| backoff(retry, attempt));
                attempt = attempt.saturating_add(1);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Full jitter: uniform in [0, min(cap, initial·2^attempt)], at least 1 ms.
pub fn backoff(retry: &RetryConfig, attempt: u32) -> Duration {
    let ceiling = retry
        .initial_backoff_ms
        .saturating_mul(1u64 << attempt.min(20))
        .min(retry.max_backoff_ms)
        .max(1);
    Duration::from_millis(rand::random_range(1..=ceiling))
}

/// Shared HTTP plumbing for the network sinks.
pub mod net {
    use std::time::Duration;

    use super::SinkError;

    /// Where a network sink POSTs: the client, URL, configured headers and compression
    /// every network sink shares.
    pub struct Endpoint {
        client: reqwest::Client,
        url: String,
        headers: reqwest::header::HeaderMap,
        gzip: bool,
    }

    impl Endpoint {
        pub fn new(
            url: String,
            headers: reqwest::header::HeaderMap,
            compression: crate::logship::config::Compression,
        ) -> Result<Self, String> {
            Ok(Self {
                client: client()?,
                url,
                headers,
                gzip: compression == crate::logship::config::Compression::Gzip,
            })
        }

        /// One POST of `body` (gzipped when configured). Only transport failures are
        /// errors here; each sink classifies the answer itself.
        pub async fn post(
            &self,
            content_type: &'static str,
            mut body: Vec<u8>,
        ) -> Result<reqwest::Response, SinkError> {
            let mut req = self
                .client
                .post(&self.url)
                .headers(self.headers.clone())
                .header(reqwest::header::CONTENT_TYPE, content_type);
            if self.gzip {
                body = gzip(&body);
                req = req.header(reqwest::header::CONTENT_ENCODING, "gzip");
            }
            req.body(body).send().await.map_err(transport)
        }
    }

    pub fn client() -> Result<reqwest::Client, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))
    }

    pub fn headers(
        configured: &std::collections::BTreeMap<String, String>,
    ) -> Result<reqwest::header::HeaderMap, String> {
        let mut map = reqwest::header::HeaderMap::new();
        for (k, v) in configured {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("header name {k:?} is not valid"))?;
            let mut value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|_| format!("header {k}: value is not a valid header value"))?;
            value.set_sensitive(true);
            map.insert(name, value);
        }
        Ok(map)
    }

    pub fn gzip(body: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(
            Vec::with_capacity(body.len() / 4),
            flate2::Compression::fast(),
        );
        // Writing into a Vec cannot fail.
        let _ = enc.write_all(body);
        enc.finish().unwrap_or_default()
    }

    /// `Retry-After` as seconds (the HTTP-date form is treated as absent).
    pub fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
        resp.headers()
            .get(reqwest::header::RETRY_AFTER)?
            .to_str()
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
    }

    /// Transport failures are always worth another try.
    pub fn transport(e: reqwest::Error) -> SinkError {
        let kind = if e.is_timeout() {
            "timeout"
        } else if e.is_connect() {
            "connection failed"
        } else {
            "transport error"
        };
        SinkError::Retry {
            reason: format!("{kind}: {}", without_url(&e)),
            after: None,
        }
    }

    /// The error text without the URL (it may carry credentials in userinfo).
    fn without_url(e: &reqwest::Error) -> String {
        let mut s = e.to_string();
        if let Some(u) = e.url() {
            s = s.replace(u.as_str(), "<sink url>");
        }
        s
    }

    /// The generic classification: 2xx ok; 408, 429 and 5xx retried; 413 split; other
    /// 4xx refused for good.
    pub async fn classify(resp: reqwest::Response) -> Result<reqwest::Response, SinkError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let after = retry_after(&resp);
        let body = resp.text().await.unwrap_or_default();
        let snippet: String = body.chars().take(200).collect();
        match status.as_u16() {
            413 => Err(SinkError::TooLarge),
            408 | 429 | 500..=599 => Err(SinkError::Retry {
                reason: format!("HTTP {status}: {snippet}"),
                after,
            }),
            _ => Err(SinkError::Rejected {
                reason: format!("HTTP {status}: {snippet}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_under_the_cap() {
        let r = RetryConfig {
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            timeout_ms: 1000,
        };
        for attempt in 0..40 {
            let d = backoff(&r, attempt);
            assert!(d >= Duration::from_millis(1) && d <= Duration::from_millis(1000));
        }
        assert!(backoff(&r, 0) <= Duration::from_millis(100));
    }
}
