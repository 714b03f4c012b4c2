//! OTLP/HTTP (`http/protobuf`) export of span batches: [`TraceEncoder`] writes the
//! request body, [`OtlpHttpExporter`] sends it.
//!
//! What opentelemetry-otlp's HTTP exporter did, at a fraction of its cost per span (no
//! `opentelemetry_proto` structs in between, buffers reused across batches):
//!
//! - endpoint: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as is, else
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`, else `http://localhost:4318/v1/traces`;
//! - headers from `OTEL_EXPORTER_OTLP_TRACES_HEADERS` (else `OTEL_EXPORTER_OTLP_HEADERS`),
//!   `key=value` pairs with percent-decoded values; a `User-Agent` naming the exporter;
//! - gzip when `OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION=gzip`;
//! - `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT` bounds the whole export, retries included;
//! - retries as the OTLP specification allows: 429, 502, 503 and 504, and failures
//!   without a response, with exponential backoff and jitter, honouring `Retry-After`
//!   on 429 and 503; every other status fails the batch at once.

mod encode;

use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

pub use encode::TraceEncoder;

use crate::settings::{Lookup, clean};

const DEFAULT_ENDPOINT: &str = "http://localhost:4318";
const TRACES_PATH: &str = "/v1/traces";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const USER_AGENT: &str = concat!(
    "OTel-OTLP-Exporter-Rust/",
    env!("CARGO_PKG_VERSION"),
    " (minirag-otel)"
);

/// Retries after the first attempt, and their backoff (the specification leaves the
/// numbers open; these are opentelemetry-otlp's).
const MAX_RETRIES: u32 = 3;
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_millis(1600);
const MAX_JITTER_MS: u64 = 100;
/// The longest `Retry-After` honoured; the export timeout still bounds the wait.
const MAX_THROTTLE: Duration = Duration::from_secs(30);
/// At most this much of a success response is read (for its partial-success counts).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// gzip level: spans compress well at the fastest level, and the export thread shares
/// the CPU with the requests.
const GZIP_LEVEL: flate2::Compression = flate2::Compression::fast();

/// Where and how `http/protobuf` batches are sent, from the `OTEL_EXPORTER_OTLP_*`
/// environment.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    pub endpoint: reqwest::Url,
    /// Extra request headers (`OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`).
    pub headers: HeaderMap,
    pub gzip: bool,
    /// Bounds each export, retries included.
    pub timeout: Duration,
}

impl HttpTarget {
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(&crate::settings::process_env)
    }

    /// The same rules over any variable source (tests pass a map). An endpoint that is
    /// not an `http://` or `https://` URL is an error naming the variable.
    pub fn from_lookup(env: Lookup) -> Result<Self, String> {
        let var = |name: &str| clean(env(name));
        let (name, endpoint) = if let Some(e) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", e)
        } else if let Some(e) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            ("OTEL_EXPORTER_OTLP_ENDPOINT", join_signal_path(&e))
        } else {
            ("default endpoint", join_signal_path(DEFAULT_ENDPOINT))
        };
        let endpoint = reqwest::Url::parse(&endpoint)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| format!("{name}={endpoint:?}: expected an http:// or https:// URL"))?;

        let mut headers = HeaderMap::new();
        if let Some(list) =
            var("OTEL_EXPORTER_OTLP_TRACES_HEADERS").or_else(|| var("OTEL_EXPORTER_OTLP_HEADERS"))
        {
            for (k, v) in parse_headers(&list) {
                headers.insert(k, v);
            }
        }

        // The first of the two variables that names a known value decides; anything else
        // is ignored (as opentelemetry-otlp does).
        let mut gzip = false;
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ] {
            match var(name).map(|v| v.to_ascii_lowercase()).as_deref() {
                Some("gzip") => {
                    gzip = true;
                    break;
                }
                Some("none") => break,
                _ => {}
            }
        }

        let timeout = [
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ]
        .iter()
        .find_map(|k| {
            var(k)
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|ms| *ms > 0)
        })
        .map_or(DEFAULT_TIMEOUT, Duration::from_millis);

        Ok(Self {
            endpoint,
            headers,
            gzip,
            timeout,
        })
    }
}

/// The generic endpoint is a base URL: the signal's path goes after it, with one slash.
fn join_signal_path(base: &str) -> String {
    match base.strip_suffix('/') {
        Some(b) => format!("{b}{TRACES_PATH}"),
        None => format!("{base}{TRACES_PATH}"),
    }
}

/// `key=value,key2=value2`; values are percent-decoded (left as written when that
/// fails); pairs without a key or a value, or not valid in HTTP, are skipped.
fn parse_headers(list: &str) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
    list.split_terminator(',').filter_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || v.is_empty() {
            return None;
        }
        let value = percent_decode(v).unwrap_or_else(|| v.as_bytes().to_vec());
        Some((
            HeaderName::from_bytes(k.as_bytes()).ok()?,
            HeaderValue::from_bytes(&value).ok()?,
        ))
    })
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = (bytes.next()? as char).to_digit(16)?;
            let lo = (bytes.next()? as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
        } else {
            out.push(b);
        }
    }
    Some(out)
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("the receiver answered HTTP {status}")]
    Status {
        status: u16,
        /// From `Retry-After`, on 429 and 503.
        retry_after: Option<Duration>,
    },
    #[error("no answer within the export timeout")]
    Timeout,
    #[error("cannot reach the receiver: {0}")]
    Transport(reqwest::Error),
    #[error("cannot compress the batch: {0}")]
    Compress(std::io::Error),
    #[error("{0}")]
    Sdk(#[from] opentelemetry_sdk::error::OTelSdkError),
}

enum Retry {
    No,
    Backoff,
    After(Duration),
}

impl ExportError {
    /// The OTLP/HTTP specification's retryable failures.
    fn retry(&self) -> Retry {
        match self {
            ExportError::Status {
                status: 429 | 503,
                retry_after: Some(d),
            } => Retry::After(*d),
            ExportError::Status {
                status: 429 | 502 | 503 | 504,
                ..
            } => Retry::Backoff,
            // No response at all (refused, reset): the receiver may be restarting.
            ExportError::Timeout | ExportError::Transport(_) => Retry::Backoff,
            _ => Retry::No,
        }
    }
}

/// A batch the receiver took; it may still have rejected some spans (partial success).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub rejected_spans: u64,
}

/// The `http/protobuf` exporter. Owned by the export thread; its buffers are reused from
/// one batch to the next.
#[derive(Debug)]
pub struct OtlpHttpExporter {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    gzip: bool,
    timeout: Duration,
    encoder: TraceEncoder,
    /// The encoded request, and (with gzip) the compressed one.
    proto: Vec<u8>,
    compressed: Vec<u8>,
}

impl OtlpHttpExporter {
    pub fn new(target: HttpTarget, resource: &Resource) -> Result<Self, reqwest::Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::USER_AGENT,
            HeaderValue::from_static(USER_AGENT),
        );
        headers.extend(target.headers);
        // The body's own headers are not the user's to change.
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        if target.gzip {
            headers.insert(
                reqwest::header::CONTENT_ENCODING,
                HeaderValue::from_static("gzip"),
            );
        } else {
            headers.remove(reqwest::header::CONTENT_ENCODING);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .build()?;
        Ok(Self {
            client,
            endpoint: target.endpoint,
            gzip: target.gzip,
            timeout: target.timeout,
            encoder: TraceEncoder::new(resource),
            proto: Vec::new(),
            compressed: Vec::new(),
        })
    }

    pub fn set_resource(&mut self, resource: &Resource) {
        self.encoder.set_resource(resource);
    }

    /// Encodes and sends one batch, retrying what may be retried within the timeout.
    pub async fn export(&mut self, spans: &[SpanData]) -> Result<Accepted, ExportError> {
        self.encoder.encode(spans, &mut self.proto);
        let body = if self.gzip {
            let mut out = std::mem::take(&mut self.compressed);
            out.clear();
            let mut gz = flate2::write::GzEncoder::new(out, GZIP_LEVEL);
            gz.write_all(&self.proto).map_err(ExportError::Compress)?;
            Bytes::from(gz.finish().map_err(ExportError::Compress)?)
        } else {
            Bytes::from(std::mem::take(&mut self.proto))
        };
        let result = self.send(&body, spans.len() as u64).await;
        // The HTTP client is done with the body: keep its memory for the next batch.
        if let Ok(buf) = body.try_into_mut() {
            let buf = Vec::from(buf);
            if self.gzip {
                self.compressed = buf;
            } else {
                self.proto = buf;
            }
        }
        result
    }

    async fn send(&self, body: &Bytes, spans: u64) -> Result<Accepted, ExportError> {
        let start = Instant::now();
        let mut retries = 0;
        let mut backoff = INITIAL_BACKOFF;
        let mut cap = MAX_BACKOFF;
        loop {
            let remaining = self.timeout.saturating_sub(start.elapsed());
            if remaining.is_zero() {
                return Err(ExportError::Timeout);
            }
            let err = match self.attempt(body.clone(), remaining).await {
                Ok(mut accepted) => {
                    accepted.rejected_spans = accepted.rejected_spans.min(spans);
                    return Ok(accepted);
                }
                Err(e) => e,
            };
            let after = match err.retry() {
                Retry::No => return Err(err),
                _ if retries == MAX_RETRIES => return Err(err),
                Retry::Backoff => None,
                Retry::After(d) => Some(d.min(MAX_THROTTLE)),
            };
            retries += 1;
            if let Some(after) = after {
                // The server's delay seeds the backoff; it may exceed the usual cap.
                if after > cap {
                    cap = MAX_THROTTLE;
                }
                backoff = backoff.max(after);
            }
            let wait = (backoff + jitter()).min(cap);
            if wait >= self.timeout.saturating_sub(start.elapsed()) {
                return Err(err);
            }
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(cap);
        }
    }

    async fn attempt(&self, body: Bytes, timeout: Duration) -> Result<Accepted, ExportError> {
        let response = self
            .client
            .post(self.endpoint.clone())
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = match status.as_u16() {
                429 | 503 => response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(parse_retry_after),
                _ => None,
            };
            return Err(ExportError::Status {
                status: status.as_u16(),
                retry_after,
            });
        }
        // Only a protobuf answer can carry a partial success (a receiver that answers
        // text or JSON is taken as accepting everything).
        let protobuf = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                let v = v.trim_start();
                ["application/x-protobuf", "application/protobuf"]
                    .iter()
                    .any(|p| v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p))
            });
        // Reading the (small) body also returns the connection to the pool. A body that
        // fails or is cut short leaves the batch accepted: the status said so.
        let mut response = response;
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_RESPONSE_BYTES {
                break;
            }
        }
        let rejected = if protobuf && body.len() <= MAX_RESPONSE_BYTES {
            rejected_spans(&body).unwrap_or(0)
        } else {
            0
        };
        Ok(Accepted {
            rejected_spans: rejected,
        })
    }
}

fn transport(e: reqwest::Error) -> ExportError {
    if e.is_timeout() {
        ExportError::Timeout
    } else {
        ExportError::Transport(e)
    }
}

/// Up to 100 ms, so that exporters retrying together spread out.
fn jitter() -> Duration {
    use std::hash::{BuildHasher, RandomState};
    // Each RandomState has fresh keys: hashing a constant gives a new number each time.
    let r = RandomState::new().hash_one(0u8);
    Duration::from_millis(r % (MAX_JITTER_MS + 1))
}

/// `Retry-After`: delay seconds or an HTTP date.
fn parse_retry_after(v: &HeaderValue) -> Option<Duration> {
    let v = v.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(MAX_THROTTLE.as_secs())));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// `ExportTraceServiceResponse.partial_success.rejected_spans`; `None` when the body is
/// not a valid message. A negative count is taken as none.
fn rejected_spans(body: &[u8]) -> Option<u64> {
    let mut rejected = 0;
    let mut outer = Reader(body);
    while let Some((field, wire_type)) = outer.key()? {
        if field == 1 && wire_type == 2 {
            let mut inner = Reader(outer.len_delimited()?);
            while let Some((field, wire_type)) = inner.key()? {
                if field == 1 && wire_type == 0 {
                    rejected = u64::try_from(inner.varint()? as i64).unwrap_or(0);
                } else {
                    inner.skip(wire_type)?;
                }
            }
        } else {
            outer.skip(wire_type)?;
        }
    }
    Some(rejected)
}

/// Just enough of a protobuf reader for the response (peer data: never panics).
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// `Some(None)` at the end, `None` when malformed.
    fn key(&mut self) -> Option<Option<(u64, u8)>> {
        if self.0.is_empty() {
            return Some(None);
        }
        let k = self.varint()?;
        Some(Some((k >> 3, (k & 7) as u8)))
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.0.split_first()?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn len_delimited(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        self.take(n)
    }

    fn skip(&mut self, wire_type: u8) -> Option<()> {
        match wire_type {
            0 => self.varint().map(drop),
            1 => self.take(8).map(drop),
            2 => self.len_delimited().map(drop),
            5 => self.take(4).map(drop),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
