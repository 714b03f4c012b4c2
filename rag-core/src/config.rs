//! Service configuration: YAML file (strict keys) + environment overrides + CLI flags.
//!
//! Precedence, lowest first: built-in defaults, the YAML file, environment variables,
//! command-line flags. Every knob is documented in `config/rag-core.yaml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] minirag_contracts::yaml::YamlError),
    #[error("environment variable {name}: {message}")]
    Env { name: &'static str, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// Names the variable only: the value may be a real secret that merely looks like an
    /// example, and this message reaches terminals and CI logs.
    #[error(
        "{name} holds a placeholder value (changeme, replace-me, <...>, ...); set a real secret or unset it \
         (for a throwaway local setup only: security.allow_placeholder_secrets: true or RAG_CORE_ALLOW_PLACEHOLDER_SECRETS=true)"
    )]
    PlaceholderSecret { name: &'static str },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub logging: LoggingConfig,
    pub limits: LimitsConfig,
    pub ingest: IngestConfig,
    pub retrieval: RetrievalConfig,
    pub answer: AnswerConfig,
    pub openai: OpenAiConfig,
    pub tenancy: TenancyConfig,
    pub store: StoreConfig,
    pub healthchecks: HealthchecksConfig,
    pub jobs: crate::jobs::JobsConfig,
    pub lifecycle: crate::lifecycle::LifecycleConfig,
    pub backup: crate::backup::BackupConfig,
    pub security: SecurityConfig,
    pub cors: crate::api::cors::CorsConfig,
    pub billing: crate::billing::BillingConfig,
    /// Seconds to wait for in-flight requests after SIGTERM before exiting anyway.
    pub shutdown_grace_seconds: u64,
    /// On an empty store, `serve` creates a first organization and prints its admin key
    /// to the terminal (never to the log file). Turn off where terminals are logged.
    pub bootstrap_on_empty: bool,
    /// Not read from YAML: secrets only come from the environment.
    #[serde(skip)]
    pub internal_token: Option<String>,
    /// Secrets (variable names) that hold a placeholder and were let through by
    /// `security.allow_placeholder_secrets`; `serve` logs a warning for each.
    #[serde(skip)]
    pub placeholder_secrets_allowed: Vec<&'static str>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            data_dir: PathBuf::from("data"),
            logging: LoggingConfig::default(),
            limits: LimitsConfig::default(),
            ingest: IngestConfig::default(),
            retrieval: RetrievalConfig::default(),
            answer: AnswerConfig::default(),
            openai: OpenAiConfig::default(),
            tenancy: TenancyConfig::default(),
            store: StoreConfig::default(),
            healthchecks: HealthchecksConfig::default(),
            jobs: crate::jobs::JobsConfig::default(),
            lifecycle: crate::lifecycle::LifecycleConfig::default(),
            backup: crate::backup::BackupConfig::default(),
            security: SecurityConfig::default(),
            cors: crate::api::cors::CorsConfig::default(),
            billing: crate::billing::BillingConfig::default(),
            shutdown_grace_seconds: 25,
            bootstrap_on_empty: true,
            internal_token: None,
            placeholder_secrets_allowed: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Start even when a secret holds a placeholder value (a warning is logged per
    /// secret). For throwaway local setups only; env `RAG_CORE_ALLOW_PLACEHOLDER_SECRETS`.
    pub allow_placeholder_secrets: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// Directory of `rag.log`; relative paths are under `data_dir`. Default: `<data_dir>/logs`.
    pub dir: Option<PathBuf>,
    pub file_name: String,
    pub stdout: bool,
    pub level: LogLevel,
    pub rotation_max_bytes: u64,
    pub rotation_backups: u32,
    pub retention_days: u32,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            dir: None,
            file_name: "rag.log".into(),
            stdout: true,
            level: LogLevel::Info,
            rotation_max_bytes: 10 * 1024 * 1024,
            rotation_backups: 5,
            retention_days: 14,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body accepted on any route (bytes); larger → 413.
    pub max_request_bytes: usize,
    /// Largest single uploaded file or text document (bytes); larger → 413.
    pub max_document_bytes: usize,
    /// Most files in one multipart upload, or documents/URLs in one JSON request.
    pub max_documents_per_request: usize,
    /// Requests served at once; past it new requests get 503 `overloaded` with
    /// Retry-After (health, readiness and metrics are never shed).
    pub max_concurrent_requests: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: 64 * 1024 * 1024,
            max_document_bytes: 16 * 1024 * 1024,
            max_documents_per_request: 500,
            max_concurrent_requests: 256,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    pub chunk_size: usize,
    pub chunk_overlap: usize,
    pub url: UrlIngestConfig,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            chunk_size: 1200,
            chunk_overlap: 150,
            url: UrlIngestConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UrlIngestConfig {
    pub timeout_seconds: u64,
    pub max_bytes: usize,
    pub max_redirects: usize,
    /// Networks (CIDR) that may be fetched although private, loopback or link-local.
    pub allow_private: Vec<String>,
}

impl Default for UrlIngestConfig {
    fn default() -> Self {
        Self {
            timeout_seconds: 15,
            max_bytes: 10 * 1024 * 1024,
            max_redirects: 5,
            allow_private: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EmbedderKind {
    Hashing,
    Openai,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrievalConfig {
    pub embedder: EmbedderKind,
    /// Dimensions of the feature-hashing embedder.
    pub hashing_dimensions: usize,
    /// Candidates taken from each retriever (BM25 and vectors) before fusion.
    pub candidates: usize,
    /// Reciprocal-rank-fusion constant.
    pub rrf_k: f64,
    /// Share of the question's content words a passage must contain to count as relevant.
    pub min_term_coverage: f64,
    /// Cosine similarity at which a passage counts as relevant without word overlap.
    pub min_cosine: f32,
    /// Upper bound on `k` in search/ask requests.
    pub max_k: usize,
}

impl Default for RetrievalConfig {
    fn default() -> Self {
        Self {
            embedder: EmbedderKind::Hashing,
            hashing_dimensions: 256,
            candidates: 50,
            rrf_k: 60.0,
            min_term_coverage: 0.5,
            min_cosine: 0.6,
            max_k: 20,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AnswerMode {
    Extractive,
    Openai,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnswerConfig {
    pub mode: AnswerMode,
    /// Sentences quoted in an extractive answer.
    pub max_sentences: usize,
}

impl Default for AnswerConfig {
    fn default() -> Self {
        Self {
            mode: AnswerMode::Extractive,
            max_sentences: 3,
        }
    }
}

/// Dead-man's-switch pings (healthchecks.io style): `<url>` while healthy, `<url>/fail`
/// when the database is not readable.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthchecksConfig {
    /// Ping URL; env `HEALTHCHECKS_PING_URL`. Unset = no pings.
    pub ping_url: Option<String>,
    pub interval_seconds: u64,
    pub timeout_seconds: u64,
}

impl Default for HealthchecksConfig {
    fn default() -> Self {
        Self {
            ping_url: None,
            interval_seconds: 60,
            timeout_seconds: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiConfig {
    /// OpenAI-compatible base URL (OpenAI, Ollama, vLLM, TEI); env `OPENAI_BASE_URL`.
    pub base_url: String,
    pub embedding_model: String,
    pub chat_model: String,
    pub timeout_seconds: u64,
    /// Not read from YAML: env `OPENAI_API_KEY`.
    #[serde(skip)]
    pub api_key: Option<String>,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.openai.com/v1".into(),
            embedding_model: "text-embedding-3-small".into(),
            chat_model: "gpt-4o-mini".into(),
            timeout_seconds: 30,
            api_key: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenancyConfig {
    /// Chunk limit given to new workspaces, by plan.
    pub chunk_limit_free: i64,
    pub chunk_limit_pro: i64,
    pub chunk_limit_enterprise: i64,
    /// Days of trial for organizations created through the API.
    pub trial_days: i64,
}

impl Default for TenancyConfig {
    fn default() -> Self {
        Self {
            chunk_limit_free: 200_000,
            chunk_limit_pro: 2_000_000,
            chunk_limit_enterprise: 20_000_000,
            trial_days: 14,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    Full,
    Normal,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `full`: a 2xx ingest survives power loss; `normal`: survives process crashes only.
    pub synchronous: SyncMode,
    /// SQLite page cache per connection, KiB.
    pub cache_kib: i64,
    /// Read connections kept open (writes use one dedicated connection).
    pub readers: usize,
    /// Most chunk vectors held in memory for brute-force search, all workspaces together.
    pub vector_cache_max_chunks: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            synchronous: SyncMode::Full,
            cache_kib: 16 * 1024,
            readers: 4,
            vector_cache_max_chunks: 2_000_000,
        }
    }
}

/// Values that ship in examples and must never be used as real secrets.
const PLACEHOLDERS: &[&str] = &[
    "changeme",
    "change-me",
    "replace-me",
    "replaceme",
    "your-api-key",
    "sk-...",
    "xxx",
    "todo",
    "placeholder",
];

fn is_placeholder(value: &str) -> bool {
    let v = value.trim().to_ascii_lowercase();
    v.is_empty()
        || PLACEHOLDERS.contains(&v.as_str())
        || v.starts_with("<")
        || v.contains("changeme")
}

/// What [`check_secret`] concluded about a secret's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretCheck {
    /// Does not look like an example value.
    Real,
    /// A placeholder let through because the opt-out is on; the caller should log
    /// `security.placeholder_secret_allowed` (see [`Config::admit_secret`]).
    PlaceholderAllowed,
}

/// The check every secret goes through, wherever it was read from (env, `*_FILE`, YAML).
/// `name` is what the operator set (e.g. `STRIPE_API_KEY` or `billing.webhook_secret`);
/// `allow` is `security.allow_placeholder_secrets`. The error never carries the value.
pub fn check_secret(
    name: &'static str,
    value: &str,
    allow: bool,
) -> Result<SecretCheck, ConfigError> {
    match (is_placeholder(value), allow) {
        (false, _) => Ok(SecretCheck::Real),
        (true, true) => Ok(SecretCheck::PlaceholderAllowed),
        (true, false) => Err(ConfigError::PlaceholderSecret { name }),
    }
}

/// Reads a secret from `name`, or else from the file named by `file_name` (Kubernetes
/// and Docker secrets arrive as files). Returns the variable it came from, so messages
/// name what the operator actually set. Surrounding whitespace of a file is trimmed.
pub fn read_secret(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    file_name: &'static str,
) -> Result<Option<(&'static str, String)>, ConfigError> {
    match (get(name), get(file_name)) {
        (Some(v), _) => Ok(Some((name, v))),
        (None, Some(file)) => {
            let v = std::fs::read_to_string(&file).map_err(|e| ConfigError::Env {
                name: file_name,
                message: format!("cannot read {file}: {e}"),
            })?;
            Ok(Some((file_name, v.trim().to_string())))
        }
        (None, None) => Ok(None),
    }
}

fn parse_bool(name: &'static str, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(ConfigError::Env {
            name,
            message: format!("expected true or false, got {v:?}"),
        }),
    }
}

impl Config {
    /// Loads the file (if any) then applies environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut cfg = match path {
            Some(p) => Self::from_file(p)?,
            None => Config::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Ok(minirag_contracts::yaml::from_file(path)?)
    }

    /// Parses YAML; the error names line, column and the offending key.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        minirag_contracts::yaml::from_str(text)
    }

    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(name: &'static str, v: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            v.trim().parse().map_err(|e: T::Err| ConfigError::Env {
                name,
                message: format!("{e} (value {v:?})"),
            })
        }
        // First: every secret check below depends on it.
        if let Some(v) = get("RAG_CORE_ALLOW_PLACEHOLDER_SECRETS") {
            self.security.allow_placeholder_secrets =
                parse_bool("RAG_CORE_ALLOW_PLACEHOLDER_SECRETS", &v)?;
        }
        if let Some(v) = get("RAG_CORE_LISTEN") {
            self.listen = parse("RAG_CORE_LISTEN", &v)?;
        }
        if let Some(v) = get("RAG_CORE_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("LOG_ROTATION_MAX_BYTES") {
            self.logging.rotation_max_bytes = parse("LOG_ROTATION_MAX_BYTES", &v)?;
        }
        if let Some(v) = get("LOG_ROTATION_BACKUPS") {
            self.logging.rotation_backups = parse("LOG_ROTATION_BACKUPS", &v)?;
        }
        if let Some(v) = get("LOG_RETENTION_DAYS") {
            self.logging.retention_days = parse("LOG_RETENTION_DAYS", &v)?;
        }
        if let Some(v) = get("HEALTHCHECKS_PING_URL") {
            self.healthchecks.ping_url = Some(v);
        }
        if let Some(v) = get("BACKGROUND_JOBS_ENABLED") {
            self.jobs.enabled = match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" | "" => false,
                _ => {
                    return Err(ConfigError::Env {
                        name: "BACKGROUND_JOBS_ENABLED",
                        message: format!("expected true or false, got {v:?}"),
                    });
                }
            };
        }
        if let Some(v) = get("OPENAI_BASE_URL") {
            self.openai.base_url = v;
        }
        if let Some((name, v)) = read_secret(&get, "OPENAI_API_KEY", "OPENAI_API_KEY_FILE")? {
            self.admit_secret(name, &v)?;
            self.openai.api_key = Some(v);
        }
        if let Some((name, v)) = read_secret(
            &get,
            "MINIRAG_INTERNAL_TOKEN",
            "MINIRAG_INTERNAL_TOKEN_FILE",
        )? {
            self.admit_secret(name, &v)?;
            // The length floor holds even with the opt-out: a short token is guessable
            // whatever it looks like, and the agent must hold the same one.
            if v.len() < 16 {
                return Err(ConfigError::Env {
                    name,
                    message: "must be a real secret of at least 16 characters".into(),
                });
            }
            self.internal_token = Some(v);
        }
        crate::billing::config::apply_env(self, &get)?;
        Ok(())
    }

    /// [`check_secret`] under this config's opt-out; remembers a placeholder it let
    /// through so [`Config::warn_placeholder_secrets`] can name it once logging is up.
    pub fn admit_secret(&mut self, name: &'static str, value: &str) -> Result<(), ConfigError> {
        let check = check_secret(name, value, self.security.allow_placeholder_secrets)?;
        if check == SecretCheck::PlaceholderAllowed
            && !self.placeholder_secrets_allowed.contains(&name)
        {
            self.placeholder_secrets_allowed.push(name);
        }
        Ok(())
    }

    /// One warning per secret let through with a placeholder value; names, never values.
    /// Called by `serve` after the logger is installed (config loads before it).
    pub fn warn_placeholder_secrets(&self) {
        for name in &self.placeholder_secrets_allowed {
            tracing::warn!(
                event = "security.placeholder_secret_allowed",
                variable = *name,
                "{name} holds a placeholder value; starting anyway because security.allow_placeholder_secrets is on (never in production)"
            );
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.ingest.chunk_size < 100 {
            return bad("ingest.chunk_size must be at least 100 characters");
        }
        if self.ingest.chunk_overlap >= self.ingest.chunk_size / 2 {
            return bad("ingest.chunk_overlap must be less than half of ingest.chunk_size");
        }
        if !(16..=4096).contains(&self.retrieval.hashing_dimensions) {
            return bad("retrieval.hashing_dimensions must be within 16..=4096");
        }
        if self.retrieval.candidates == 0 || self.retrieval.max_k == 0 {
            return bad("retrieval.candidates and retrieval.max_k must be positive");
        }
        if self.logging.rotation_max_bytes < 1024 {
            return bad("logging.rotation_max_bytes must be at least 1024");
        }
        self.jobs.validate().map_err(ConfigError::Invalid)?;
        self.lifecycle.validate().map_err(ConfigError::Invalid)?;
        self.backup.validate().map_err(ConfigError::Invalid)?;
        if self.store.readers == 0 {
            return bad("store.readers must be at least 1");
        }
        if let Some(url) = &self.healthchecks.ping_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return bad(
                "healthchecks.ping_url (HEALTHCHECKS_PING_URL) must be an http:// or https:// URL",
            );
        }
        if self.healthchecks.interval_seconds == 0 || self.healthchecks.timeout_seconds == 0 {
            return bad("healthchecks.interval_seconds and timeout_seconds must be positive");
        }
        let needs_openai = self.retrieval.embedder == EmbedderKind::Openai
            || self.answer.mode == AnswerMode::Openai;
        if needs_openai
            && self.openai.api_key.is_none()
            && self.openai.base_url.contains("api.openai.com")
        {
            return bad(
                "OpenAI embedder or answers need OPENAI_API_KEY (or a local OPENAI_BASE_URL)",
            );
        }
        for net in &self.ingest.url.allow_private {
            parse_cidr(net).map_err(ConfigError::Invalid)?;
        }
        self.cors.validate().map_err(ConfigError::Invalid)?;
        self.billing.validate().map_err(ConfigError::Invalid)?;
        Ok(())
    }

    pub fn log_dir(&self) -> PathBuf {
        match &self.logging.dir {
            Some(d) if d.is_absolute() => d.clone(),
            Some(d) => self.data_dir.join(d),
            None => self.data_dir.join("logs"),
        }
    }
}

/// Parses an allow-list entry (`10.0.0.0/8`, `127.0.0.1`, `::1/128`).
pub fn parse_cidr(s: &str) -> Result<minirag_contracts::net::Cidr, String> {
    minirag_contracts::net::Cidr::parse(s).map_err(|e| format!("ingest.url.allow_private: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err =
            Config::from_yaml("listen: 127.0.0.1:8000\ningest:\n  chunk_sise: 10\n").unwrap_err();
        assert!(err.contains("chunk_sise"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn env_overrides_file_and_rejects_placeholders() {
        let mut cfg = Config::from_yaml("logging:\n  rotation_backups: 2\n").unwrap();
        cfg.apply_env(|k| (k == "LOG_ROTATION_BACKUPS").then(|| "7".to_string()))
            .unwrap();
        assert_eq!(cfg.logging.rotation_backups, 7);
        let err = cfg
            .apply_env(|k| (k == "OPENAI_API_KEY").then(|| "changeme".to_string()))
            .unwrap_err();
        assert!(err.to_string().contains("placeholder"));
        let err = cfg
            .apply_env(|k| (k == "LOG_ROTATION_MAX_BYTES").then(|| "ten".to_string()))
            .unwrap_err();
        assert!(err.to_string().contains("LOG_ROTATION_MAX_BYTES"));
    }

    #[test]
    fn shipped_example_sets_every_knob_to_its_default() {
        let example = include_str!("../../config/rag-core.yaml");
        let parsed = Config::from_yaml(example).expect("config/rag-core.yaml parses");
        assert_eq!(format!("{parsed:?}"), format!("{:?}", Config::default()));
        let keys = example
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && l.contains(':'))
            .count();
        assert!(
            keys >= 40,
            "the example should list every knob, found {keys}"
        );
    }

    #[test]
    fn cidr_parsing() {
        assert!(
            parse_cidr("127.0.0.0/8")
                .unwrap()
                .contains("127.9.9.9".parse().unwrap())
        );
        assert!(parse_cidr("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        let e = parse_cidr("nope").unwrap_err();
        assert!(e.starts_with("ingest.url.allow_private:"), "{e}");
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn placeholder_secrets_are_refused_by_name_never_by_value() {
        for value in ["changeme", "  CHANGEME ", "<your key>", "sk-...", "xxx", ""] {
            let err = Config::default()
                .apply_env(env(&[("OPENAI_API_KEY", value)]))
                .unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("OPENAI_API_KEY"), "{msg}");
            assert!(msg.contains("RAG_CORE_ALLOW_PLACEHOLDER_SECRETS"), "{msg}");
            // "changeme" is among the examples the message lists; the others must not appear.
            if !value.trim().is_empty() && !value.to_ascii_lowercase().contains("changeme") {
                assert!(!msg.contains(value.trim()), "value echoed: {msg}");
            }
        }
        let err = Config::default()
            .apply_env(env(&[(
                "MINIRAG_INTERNAL_TOKEN",
                "changeme-changeme-changeme",
            )]))
            .unwrap_err();
        assert!(err.to_string().contains("MINIRAG_INTERNAL_TOKEN"), "{err}");
        assert!(!err.to_string().contains("changeme-changeme"), "{err}");
        let mut cfg = Config::default();
        cfg.apply_env(env(&[("OPENAI_API_KEY", "sk-live-0123456789abcdef")]))
            .unwrap();
        assert!(cfg.placeholder_secrets_allowed.is_empty());
    }

    #[test]
    fn check_secret_is_the_one_rule_for_every_secret() {
        assert_eq!(
            check_secret("STRIPE_API_KEY", "sk_live_51Habc", false).unwrap(),
            SecretCheck::Real
        );
        let e = check_secret("STRIPE_WEBHOOK_SECRET", "<whsec_from_dashboard>", false).unwrap_err();
        assert!(
            e.to_string().starts_with("STRIPE_WEBHOOK_SECRET holds"),
            "{e}"
        );
        assert!(!e.to_string().contains("whsec"), "{e}");
        assert_eq!(
            check_secret("STRIPE_WEBHOOK_SECRET", "replace-me", true).unwrap(),
            SecretCheck::PlaceholderAllowed
        );
    }

    #[test]
    fn opt_out_downgrades_the_refusal_and_remembers_the_name() {
        let mut cfg = Config::default();
        cfg.apply_env(env(&[
            ("RAG_CORE_ALLOW_PLACEHOLDER_SECRETS", "true"),
            ("OPENAI_API_KEY", "changeme"),
        ]))
        .unwrap();
        assert_eq!(cfg.openai.api_key.as_deref(), Some("changeme"));
        assert_eq!(cfg.placeholder_secrets_allowed, vec!["OPENAI_API_KEY"]);

        // The same switch from the YAML file.
        let mut cfg = Config::from_yaml("security:\n  allow_placeholder_secrets: true\n").unwrap();
        cfg.apply_env(env(&[("OPENAI_API_KEY", "changeme")]))
            .unwrap();
        assert_eq!(cfg.placeholder_secrets_allowed, vec!["OPENAI_API_KEY"]);
        // ... and the environment wins over the file.
        let mut cfg = Config::from_yaml("security:\n  allow_placeholder_secrets: true\n").unwrap();
        assert!(
            cfg.apply_env(env(&[
                ("RAG_CORE_ALLOW_PLACEHOLDER_SECRETS", "false"),
                ("OPENAI_API_KEY", "changeme"),
            ]))
            .is_err()
        );

        // The internal token's length floor is not part of the opt-out.
        let mut cfg = Config::default();
        let err = cfg
            .apply_env(env(&[
                ("RAG_CORE_ALLOW_PLACEHOLDER_SECRETS", "1"),
                ("MINIRAG_INTERNAL_TOKEN", "changeme"),
            ]))
            .unwrap_err();
        assert!(err.to_string().contains("16 characters"), "{err}");

        let err = Config::default()
            .apply_env(env(&[("RAG_CORE_ALLOW_PLACEHOLDER_SECRETS", "maybe")]))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("RAG_CORE_ALLOW_PLACEHOLDER_SECRETS")
        );
    }

    #[test]
    fn secrets_from_files_are_checked_too() {
        let dir = std::env::temp_dir().join(format!("rag-core-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("openai");
        std::fs::write(&file, "changeme\n").unwrap();
        let path = file.to_string_lossy().to_string();
        let err = Config::default()
            .apply_env(env(&[("OPENAI_API_KEY_FILE", &path)]))
            .unwrap_err();
        assert!(err.to_string().contains("OPENAI_API_KEY_FILE"), "{err}");
        std::fs::write(&file, "sk-proj-real-looking-key\n").unwrap();
        let mut cfg = Config::default();
        cfg.apply_env(env(&[("OPENAI_API_KEY_FILE", &path)]))
            .unwrap();
        assert_eq!(
            cfg.openai.api_key.as_deref(),
            Some("sk-proj-real-looking-key")
        );
        // The variable itself wins over the file.
        let mut cfg = Config::default();
        cfg.apply_env(env(&[
            ("OPENAI_API_KEY", "sk-from-env-0123456789"),
            ("OPENAI_API_KEY_FILE", "/nonexistent"),
        ]))
        .unwrap();
        assert_eq!(
            cfg.openai.api_key.as_deref(),
            Some("sk-from-env-0123456789")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn secrets_are_never_read_from_yaml() {
        // A key pasted into the file is an error, not silently used or ignored.
        let err = Config::from_yaml("openai:\n  api_key: sk-real\n").unwrap_err();
        assert!(err.contains("api_key"), "{err}");
        assert!(Config::from_yaml("internal_token: abcdefabcdefabcdef\n").is_err());
    }

    #[test]
    fn cors_is_validated_with_the_rest() {
        let cfg = Config::from_yaml("cors:\n  allowed_origins: ['*']\n  allow_credentials: true\n")
            .unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("cors.allow_credentials"), "{err}");
        let cfg =
            Config::from_yaml("cors:\n  allowed_origins: [https://app.example.com/]\n").unwrap();
        assert!(cfg.validate().is_err());
        assert!(Config::from_yaml("cors:\n  allow_origin: ['*']\n").is_err());
    }
}
