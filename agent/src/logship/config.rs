//! The `logship:` section of the agent config (also the whole input of `minirag-agent
//! ship`). Every knob is documented in `config/agent.yaml` and `config/ship.yaml`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogshipConfig {
    /// Off by default in `run` (a proxy-only sidecar); `up` and `ship` turn it on.
    pub enabled: bool,
    /// Checkpoints live here (`checkpoints.json`); it must be writable.
    pub data_dir: PathBuf,
    /// Glob patterns of files to tail. The agent's own access log file is added when
    /// `access_log.file` is set.
    pub paths: Vec<String>,
    /// Glob patterns never tailed (e.g. the file sink's own output).
    pub exclude: Vec<String>,
    /// Where to start in files found at the very first start (no checkpoint file yet).
    /// Files that appear later are always read from their beginning.
    pub read_from: ReadFrom,
    pub discover_interval_ms: u64,
    /// How often idle files are polled for new data (inotify wakes the reader sooner).
    pub poll_interval_ms: u64,
    /// Bytes read from a file per read call; one chunk of records is at most this big.
    pub read_chunk_bytes: usize,
    /// Longer lines are cut to this many bytes and marked `log.truncated: true`.
    pub max_line_bytes: usize,
    /// A last line without a newline is shipped (marked `log.partial: true`) after this.
    pub partial_line_timeout_ms: u64,
    /// A file that left the globs (deleted, rotated away) is read to its end first; if
    /// the sinks cannot take it within this bound the rest is dropped and counted.
    pub rotate_wait_seconds: u64,
    /// Files held open at once; more are picked up as slots free.
    pub max_open_files: usize,
    /// Checkpoints are written at most this often (after acknowledgements).
    pub checkpoint_interval_ms: u64,
    /// Read `*.gz` files matched by the globs (whole, once; they never grow).
    pub read_gzip: bool,
    /// Top-level fields whose values are replaced by "[REDACTED]" (exact names,
    /// case-insensitive).
    pub redact: Vec<String>,
    /// Static fields added to every record (beside host and Kubernetes metadata).
    pub fields: BTreeMap<String, String>,
    pub retention: RetentionConfig,
    pub sinks: Vec<SinkConfig>,
}

impl Default for LogshipConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            data_dir: PathBuf::from("data/agent"),
            paths: vec!["data/logs/rag.log*".into()],
            exclude: Vec::new(),
            read_from: ReadFrom::Beginning,
            discover_interval_ms: 1000,
            poll_interval_ms: 250,
            read_chunk_bytes: 256 * 1024,
            max_line_bytes: 256 * 1024,
            partial_line_timeout_ms: 5000,
            rotate_wait_seconds: 300,
            max_open_files: 256,
            checkpoint_interval_ms: 200,
            read_gzip: false,
            redact: [
                "authorization",
                "cookie",
                "set_cookie",
                "api_key",
                "password",
                "secret",
                "token",
            ]
            .map(String::from)
            .to_vec(),
            fields: BTreeMap::new(),
            retention: RetentionConfig::default(),
            sinks: vec![SinkConfig::File(FileSinkConfig::default())],
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReadFrom {
    Beginning,
    End,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Rotated files (`*.N`, `*.gz`) older than this are deleted; 0 = never.
    /// `LOG_RETENTION_DAYS` overrides it.
    pub days: u32,
    /// Delete only files whose every line the sinks acknowledged.
    pub only_shipped: bool,
    pub interval_seconds: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            days: 14,
            only_shipped: true,
            interval_seconds: 3600,
        }
    }
}

/// One destination. Each has its own batching, buffer and retries.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    File(FileSinkConfig),
    Stdout(StdoutSinkConfig),
    Http(HttpSinkConfig),
    Otlp(OtlpSinkConfig),
    Loki(LokiSinkConfig),
    Elasticsearch(ElasticsearchSinkConfig),
}

impl SinkConfig {
    pub fn name(&self) -> String {
        let (kind, name) = match self {
            Self::File(c) => ("file", &c.name),
            Self::Stdout(c) => ("stdout", &c.name),
            Self::Http(c) => ("http", &c.name),
            Self::Otlp(c) => ("otlp", &c.name),
            Self::Loki(c) => ("loki", &c.name),
            Self::Elasticsearch(c) => ("elasticsearch", &c.name),
        };
        name.clone().unwrap_or_else(|| kind.to_string())
    }

    pub fn batch(&self) -> &BatchConfig {
        match self {
            Self::File(c) => &c.batch,
            Self::Stdout(c) => &c.batch,
            Self::Http(c) => &c.batch,
            Self::Otlp(c) => &c.batch,
            Self::Loki(c) => &c.batch,
            Self::Elasticsearch(c) => &c.batch,
        }
    }

    pub fn buffer(&self) -> &BufferConfig {
        match self {
            Self::File(c) => &c.buffer,
            Self::Stdout(c) => &c.buffer,
            Self::Http(c) => &c.buffer,
            Self::Otlp(c) => &c.buffer,
            Self::Loki(c) => &c.buffer,
            Self::Elasticsearch(c) => &c.buffer,
        }
    }

    pub fn disk_buffer(&self) -> Option<&DiskBufferConfig> {
        let d = match self {
            Self::File(_) | Self::Stdout(_) => return None,
            Self::Http(c) => &c.disk_buffer,
            Self::Otlp(c) => &c.disk_buffer,
            Self::Loki(c) => &c.disk_buffer,
            Self::Elasticsearch(c) => &c.disk_buffer,
        };
        d.enabled.then_some(d)
    }

    pub fn retry(&self) -> RetryConfig {
        match self {
            Self::File(_) | Self::Stdout(_) => RetryConfig::default(),
            Self::Http(c) => c.retry.clone(),
            Self::Otlp(c) => c.retry.clone(),
            Self::Loki(c) => c.retry.clone(),
            Self::Elasticsearch(c) => c.retry.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// A batch closes at the first chunk that reaches either bound, or after timeout_ms.
    pub max_events: usize,
    pub max_bytes: usize,
    pub timeout_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_events: 10_000,
            max_bytes: 1024 * 1024,
            timeout_ms: 200,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Memory held for this sink (records read, not yet acknowledged). When full the
    /// reader waits: backpressure, never drops.
    pub max_bytes: usize,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            max_bytes: 2 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Exponential backoff with full jitter: a random wait in [0, min(cap, initial·2^n)].
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Per request.
    pub timeout_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff_ms: 100,
            max_backoff_ms: 30_000,
            timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FileSinkConfig {
    pub name: Option<String>,
    /// NDJSON output, rotated like the logs it ships.
    pub path: PathBuf,
    pub rotation_max_bytes: u64,
    pub rotation_backups: u32,
    /// fsync before acknowledging (durable but slower).
    pub fsync: bool,
    pub batch: BatchConfig,
    pub buffer: BufferConfig,
}

impl Default for FileSinkConfig {
    fn default() -> Self {
        Self {
            name: None,
            path: PathBuf::from("data/shipped/logs.ndjson"),
            rotation_max_bytes: 10 * 1024 * 1024,
            rotation_backups: 5,
            fsync: false,
            batch: BatchConfig::default(),
            buffer: BufferConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StdoutSinkConfig {
    pub name: Option<String>,
    pub batch: BatchConfig,
    pub buffer: BufferConfig,
}

/// A disk buffer between the reader and a network sink, for outages longer than the
/// log files last. Records are acknowledged (checkpoints advance) once fsynced here.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DiskBufferConfig {
    pub enabled: bool,
    /// Default: `<logship.data_dir>/buffer/<sink name>`.
    pub path: Option<PathBuf>,
    /// Undelivered bytes kept on disk at most.
    pub max_bytes: u64,
    /// At max_bytes: `block` (reading waits; the log files become the buffer again) or
    /// `drop_newest` (new records are dropped and counted as reason="buffer_full").
    pub when_full: WhenFull,
}

impl Default for DiskBufferConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            path: None,
            max_bytes: 256 * 1024 * 1024,
            when_full: WhenFull::Block,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    Block,
    DropNewest,
}

/// Knobs every network sink shares, borrowed from the sink's own config.
pub struct NetworkCommon<'a> {
    pub name: &'a Option<String>,
    /// Extra request headers (e.g. Authorization); values are never logged.
    pub headers: &'a BTreeMap<String, String>,
    pub compression: Compression,
    pub batch: &'a BatchConfig,
    pub buffer: &'a BufferConfig,
    pub retry: &'a RetryConfig,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    None,
    Gzip,
}

/// A network sink's config: its own keys plus the shared ones (serde's `flatten` cannot
/// be combined with `deny_unknown_fields`, so the shared keys are spelled out here).
macro_rules! network_sink {
    ($(#[$meta:meta])* $ty:ident { $($(#[$fmeta:meta])* $field:ident : $fty:ty = $default:expr,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
        #[serde(deny_unknown_fields, default)]
        pub struct $ty {
            pub name: Option<String>,
            $($(#[$fmeta])* pub $field: $fty,)*
            /// Extra request headers (e.g. Authorization); values are never logged.
            pub headers: BTreeMap<String, String>,
            pub compression: Compression,
            pub batch: BatchConfig,
            pub buffer: BufferConfig,
            pub retry: RetryConfig,
            pub disk_buffer: DiskBufferConfig,
        }

        impl Default for $ty {
            fn default() -> Self {
                Self {
                    name: None,
                    $($field: $default,)*
                    headers: BTreeMap::new(),
                    compression: Compression::None,
                    batch: BatchConfig::default(),
                    buffer: BufferConfig::default(),
                    retry: RetryConfig::default(),
                    disk_buffer: DiskBufferConfig::default(),
                }
            }
        }

        impl $ty {
            pub fn common(&self) -> NetworkCommon<'_> {
                NetworkCommon {
                    name: &self.name,
                    headers: &self.headers,
                    compression: self.compression,
                    batch: &self.batch,
                    buffer: &self.buffer,
                    retry: &self.retry,
                }
            }
        }
    };
}

network_sink!(
    /// NDJSON over HTTP POST (one record per line).
    HttpSinkConfig {
        url: String = String::new(),
    }
);

network_sink!(
    /// OTLP/HTTP logs.
    OtlpSinkConfig {
        /// Full logs URL, e.g. http://collector:4318/v1/logs.
        endpoint: String = String::new(),
        encoding: OtlpEncoding = OtlpEncoding::Protobuf,
    }
);

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OtlpEncoding {
    #[default]
    Protobuf,
    Json,
}

network_sink!(
    /// Loki push API (JSON).
    LokiSinkConfig {
        /// Push URL, e.g. http://loki:3100/loki/api/v1/push.
        endpoint: String = String::new(),
        /// Static stream labels.
        labels: BTreeMap<String, String> = BTreeMap::new(),
        /// Record fields promoted to stream labels (e.g. level); each is capped below.
        label_fields: Vec<String> = Vec::new(),
        /// Distinct values per label field; further values become "other".
        max_label_values: usize = 50,
        /// X-Scope-OrgID for multi-tenant Loki.
        tenant_id: Option<String> = None,
    }
);

network_sink!(
    /// Elasticsearch / OpenSearch `_bulk` into a data stream.
    ElasticsearchSinkConfig {
        /// Base URL, e.g. http://elasticsearch:9200.
        endpoint: String = String::new(),
        /// Data stream (or index) written with `create`.
        data_stream: String = "logs-minirag-default".into(),
    }
);

impl LogshipConfig {
    /// Checks values a YAML schema cannot; errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.paths.is_empty() {
            return Err("logship.paths: at least one glob pattern is needed".into());
        }
        for p in self.paths.iter().chain(&self.exclude) {
            glob::Pattern::new(p).map_err(|e| format!("logship.paths: bad pattern {p:?}: {e}"))?;
        }
        if self.sinks.is_empty() {
            return Err("logship.sinks: at least one sink is needed".into());
        }
        if self.read_chunk_bytes < 4096 || self.read_chunk_bytes > 16 * 1024 * 1024 {
            return Err("logship.read_chunk_bytes: must be 4096..=16777216".into());
        }
        if self.max_line_bytes < 256 {
            return Err("logship.max_line_bytes: must be at least 256".into());
        }
        if self.max_open_files == 0 {
            return Err("logship.max_open_files: must be at least 1".into());
        }
        let mut names = std::collections::HashSet::new();
        for s in &self.sinks {
            let name = s.name();
            if !names.insert(name.clone()) {
                return Err(format!(
                    "logship.sinks: two sinks are named {name:?}; give each a distinct `name`"
                ));
            }
            if s.buffer().max_bytes < self.read_chunk_bytes {
                return Err(format!(
                    "logship.sinks[{name}].buffer.max_bytes must be at least read_chunk_bytes ({})",
                    self.read_chunk_bytes
                ));
            }
            if s.batch().max_events == 0 || s.batch().max_bytes == 0 {
                return Err(format!(
                    "logship.sinks[{name}].batch: max_events and max_bytes must be positive"
                ));
            }
            let url = match s {
                SinkConfig::Http(c) => Some(&c.url),
                SinkConfig::Otlp(c) => Some(&c.endpoint),
                SinkConfig::Loki(c) => Some(&c.endpoint),
                SinkConfig::Elasticsearch(c) => Some(&c.endpoint),
                _ => None,
            };
            if let Some(url) = url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(format!(
                    "logship.sinks[{name}]: {url:?} is not an http:// or https:// URL"
                ));
            }
            if let SinkConfig::Loki(c) = s
                && c.label_fields.len() > 8
            {
                return Err(format!(
                    "logship.sinks[{name}].label_fields: at most 8 (stream cardinality)"
                ));
            }
        }
        Ok(())
    }

    /// `LOG_RETENTION_DAYS` overrides `retention.days`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        if let Some(v) = get("LOG_RETENTION_DAYS") {
            self.retention.days = v
                .trim()
                .parse()
                .map_err(|e| format!("LOG_RETENTION_DAYS={v:?}: {e}"))?;
        }
        Ok(())
    }
}
