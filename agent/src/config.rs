//! Agent configuration: YAML (strict keys) < environment < command-line flags.
//! Every knob is documented in `config/agent.yaml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] minirag_contracts::yaml::YamlError),
    #[error("environment variable {name}: {message}")]
    Env { name: &'static str, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// rag-core's base URL (http only: the hop is pod-local).
    pub upstream: String,
    /// TLS on the proxy listener; unset = plain HTTP (h2c by prior knowledge).
    pub tls: Option<TlsConfig>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub request_id: RequestIdConfig,
    pub routes: Routes,
    pub path_guard: PathGuard,
    pub access_log: AccessLogConfig,
    pub security_headers: SecurityHeaders,
    pub lifecycle: Lifecycle,
    pub identity: IdentityConfig,
    pub quotas: QuotasConfig,
    /// Log tailing and shipping (off by default in `run`; see config/agent.yaml).
    pub logship: crate::logship::LogshipConfig,
    /// Local alert-rule evaluation (off by default in `run`; see docs/rules.md).
    pub rules: crate::rules::RulesConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
            upstream: "http://127.0.0.1:8000".into(),
            tls: None,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            request_id: RequestIdConfig::default(),
            routes: Routes::default(),
            path_guard: PathGuard::default(),
            access_log: AccessLogConfig::default(),
            security_headers: SecurityHeaders::default(),
            lifecycle: Lifecycle::default(),
            identity: IdentityConfig::default(),
            quotas: QuotasConfig::default(),
            logship: crate::logship::LogshipConfig::default(),
            rules: crate::rules::RulesConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// How often the two files are checked for a rotation.
    #[serde(default = "default_reload_ms")]
    pub reload_interval_ms: u64,
}

fn default_reload_ms() -> u64 {
    5_000
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// A client must send its whole request head within this time, or is disconnected.
    pub header_read_timeout_ms: u64,
    /// Most request headers accepted (HTTP/1.1); more → 431.
    pub max_headers: usize,
    /// Largest request head in bytes (HTTP/1.1 read buffer); larger → 431.
    pub max_header_bytes: usize,
    /// Largest request body; a larger Content-Length → 413.
    pub max_body_bytes: u64,
    /// Requests proxied at once; past it new requests get 503 (load shedding).
    pub max_concurrent_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            max_body_bytes: 64 * 1024 * 1024,
            max_concurrent_requests: 4096,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub connect_ms: u64,
    /// From request sent to upstream response headers; over it → 504.
    pub response_headers_ms: u64,
    /// Longest silence inside a streaming response body before it is cut (on the HTTP/1.1
    /// fast path, inside a request body too).
    pub body_idle_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect_ms: 2_000,
            response_headers_ms: 60_000,
            body_idle_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestIdConfig {
    /// Keep a valid client `X-Request-ID`; false = always generate.
    pub trust_incoming: bool,
}

impl Default for RequestIdConfig {
    fn default() -> Self {
        Self {
            trust_incoming: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Routes {
    /// Patterns `[METHOD ]/path` where a trailing `*` matches any rest of the path.
    pub ask: Vec<String>,
    pub ingest: Vec<String>,
    pub admin: Vec<String>,
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            ask: vec!["POST /ask".into(), "POST /api/v1/ask".into()],
            ingest: vec!["/api/v1/ingest/*".into(), "/api/ingest_*".into()],
            admin: vec!["/api/v1/admin/*".into()],
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathGuard {
    /// Upstream paths never reachable through the proxy (404), same pattern syntax.
    pub blocked: Vec<String>,
}

impl Default for PathGuard {
    fn default() -> Self {
        Self {
            blocked: vec!["/metrics".into(), "/internal/*".into()],
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    pub enabled: bool,
    pub stdout: bool,
    /// File path; unset = no file.
    pub file: Option<PathBuf>,
    pub rotation_max_bytes: u64,
    pub rotation_backups: u32,
    /// Bytes of finished lines held in memory for the writer thread; when full, lines
    /// are dropped and counted in `minirag_agent_access_log_dropped_lines_total`.
    pub buffer_bytes: usize,
    /// The writer wakes when 64 KiB are buffered or after this many milliseconds.
    pub flush_interval_ms: u64,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            stdout: true,
            file: None,
            rotation_max_bytes: 10 * 1024 * 1024,
            rotation_backups: 5,
            buffer_bytes: 8 * 1024 * 1024,
            flush_interval_ms: 200,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityHeaders {
    pub enabled: bool,
    pub content_security_policy: String,
    /// Sent only on TLS connections.
    pub strict_transport_security: String,
    pub frame_options: String,
    pub referrer_policy: String,
    pub permissions_policy: String,
    /// Cache-Control for API routes (`/api/`), unless the upstream set one.
    pub api_cache_control: String,
}

impl Default for SecurityHeaders {
    fn default() -> Self {
        Self {
            enabled: true,
            content_security_policy: "default-src 'none'; frame-ancestors 'none'".into(),
            strict_transport_security: "max-age=31536000; includeSubDomains".into(),
            frame_options: "DENY".into(),
            referrer_policy: "no-referrer".into(),
            permissions_policy: "camera=(), microphone=(), geolocation=()".into(),
            api_cache_control: "no-store".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lifecycle {
    /// After SIGTERM, keep serving (readiness failing) this long so endpoints update.
    pub drain_delay_seconds: u64,
    /// Then stop accepting and give in-flight requests this long to finish.
    pub grace_seconds: u64,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            drain_delay_seconds: 5,
            grace_seconds: 25,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IdentityProvider {
    /// No identity at the edge: rag-core authenticates; no quotas can apply.
    None,
    /// Ask rag-core's `/internal/v1/principal` (needs `MINIRAG_INTERNAL_TOKEN`).
    Introspect,
    /// Verify a JWT bearer token against `identity.jwt.jwks_file`.
    Jwt,
    /// Believe identity headers set by a peer in `identity.trusted_headers.sources` (an
    /// auth gateway in front of the agent); anyone else gets 401.
    #[serde(rename = "trusted_headers")]
    TrustedHeaders,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// JWKS document with the accepted keys: `oct` (HS256), `RSA` (RS256), `EC` P-256 (ES256).
    pub jwks_file: PathBuf,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required member of `aud`, if set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_seconds: u64,
    /// Plan when the token names none.
    pub default_plan: String,
    pub claims: ClaimNames,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            jwks_file: PathBuf::new(),
            issuer: None,
            audience: None,
            leeway_seconds: 30,
            default_plan: "free".into(),
            claims: ClaimNames::default(),
        }
    }
}

/// Which claim carries each part of the principal.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimNames {
    pub user_id: String,
    pub workspace_id: String,
    pub organization_id: String,
    pub plan: String,
    pub billing_status: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        Self {
            user_id: "sub".into(),
            workspace_id: "workspace_id".into(),
            organization_id: "organization_id".into(),
            plan: "plan".into(),
            billing_status: "billing_status".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    pub provider: IdentityProvider,
    pub introspect_path: String,
    /// How long a known key's principal is reused; also the longest a revoked key keeps
    /// working at the edge.
    pub cache_ttl_seconds: u64,
    /// How long an unknown key is remembered as unknown.
    pub negative_cache_ttl_seconds: u64,
    /// Most keys cached at once.
    pub cache_max_entries: usize,
    /// Budget of one principal lookup.
    pub timeout_ms: u64,
    /// Paths served without a key (same pattern syntax as routes).
    pub anonymous: Vec<String>,
    /// For `provider: jwt`.
    pub jwt: JwtConfig,
    /// For `provider: trusted_headers`.
    pub trusted_headers: TrustedHeadersConfig,
}

/// Header names and trusted peers for `provider: trusted_headers`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustedHeadersConfig {
    /// Peers (CIDR or single address) whose identity headers are believed.
    pub sources: Vec<String>,
    pub user_id: String,
    pub workspace_id: String,
    pub organization_id: String,
    pub plan: String,
    pub billing_status: String,
    /// Plan when the plan header is absent.
    pub default_plan: String,
}

impl Default for TrustedHeadersConfig {
    fn default() -> Self {
        Self {
            sources: Vec::new(),
            user_id: "x-minirag-user-id".into(),
            workspace_id: "x-minirag-workspace-id".into(),
            organization_id: "x-minirag-organization-id".into(),
            plan: "x-minirag-plan".into(),
            billing_status: "x-minirag-billing-status".into(),
            default_plan: "free".into(),
        }
    }
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            provider: IdentityProvider::None,
            introspect_path: "/internal/v1/principal".into(),
            cache_ttl_seconds: 30,
            negative_cache_ttl_seconds: 5,
            cache_max_entries: 10_000,
            timeout_ms: 2_000,
            // The Stripe webhook carries no API key: rag-core authenticates it by its
            // signature.
            anonymous: vec![
                "/healthz".into(),
                "/readyz".into(),
                "/openapi.json".into(),
                "/api/v1/billing/stripe/webhook".into(),
            ],
            jwt: JwtConfig::default(),
            trusted_headers: TrustedHeadersConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QuotaBackend {
    /// Budgets in this process (one replica).
    Memory,
    /// Budgets in Redis, shared by every agent replica pointing at it.
    Redis,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnBackendError {
    /// Let requests through uncounted while Redis is unreachable (fail open).
    Allow,
    /// Refuse with 503 `quota_backend_unavailable` (fail closed).
    Deny,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotasConfig {
    /// Quota policy (see `config/quotas.yaml`); unset = no rate quotas. Flag `--quotas`.
    pub policy_file: Option<PathBuf>,
    pub backend: QuotaBackend,
    /// `redis://host:port/db`; a password belongs in env `MINIRAG_AGENT_REDIS_URL`, which
    /// overrides this.
    pub redis_url: Option<String>,
    /// Budget of one Redis round trip.
    pub redis_timeout_ms: u64,
    /// Prefix of the budget keys in Redis.
    pub redis_key_prefix: String,
    /// Checks waiting for Redis (batched, one script call in flight). When full, a request
    /// waits for room within its `2 × redis_timeout_ms`.
    pub redis_max_pending: usize,
    pub on_backend_error: OnBackendError,
    /// Distinct `workspace_id` label values on quota metrics; beyond it, `other`.
    pub max_workspace_labels: usize,
    /// Most (workspace, metric) budgets held in memory.
    pub max_tracked_budgets: usize,
}

impl Default for QuotasConfig {
    fn default() -> Self {
        Self {
            policy_file: None,
            backend: QuotaBackend::Memory,
            redis_url: None,
            redis_timeout_ms: 100,
            redis_key_prefix: "minirag:quota:".into(),
            redis_max_pending: 4096,
            on_backend_error: OnBackendError::Allow,
            max_workspace_labels: 1000,
            max_tracked_budgets: 100_000,
        }
    }
}

impl AgentConfig {
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut cfg = match path {
            Some(p) => Self::from_file(p)?,
            None => Self::default(),
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
        if let Some(v) = get("MINIRAG_AGENT_LISTEN") {
            self.listen = v.parse().map_err(|e| ConfigError::Env {
                name: "MINIRAG_AGENT_LISTEN",
                message: format!("{e}"),
            })?;
        }
        if let Some(v) = get("MINIRAG_AGENT_ADMIN_LISTEN") {
            self.admin_listen = v.parse().map_err(|e| ConfigError::Env {
                name: "MINIRAG_AGENT_ADMIN_LISTEN",
                message: format!("{e}"),
            })?;
        }
        if let Some(v) = get("MINIRAG_AGENT_UPSTREAM") {
            self.upstream = v;
        }
        if let Some(v) = get("MINIRAG_AGENT_REDIS_URL") {
            self.quotas.redis_url = Some(v);
        }
        self.logship
            .apply_env(&get)
            .map_err(|message| ConfigError::Env {
                name: "LOG_RETENTION_DAYS",
                message,
            })?;
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        self.logship.validate().map_err(ConfigError::Invalid)?;
        self.rules.validate().map_err(ConfigError::Invalid)?;
        if crate::proxy::forward::Upstream::parse(&self.upstream).is_err() {
            return bad(format!(
                "upstream {:?} must be http://host:port",
                self.upstream
            ));
        }
        for (name, list) in [
            ("routes.ask", &self.routes.ask),
            ("routes.ingest", &self.routes.ingest),
            ("routes.admin", &self.routes.admin),
            ("path_guard.blocked", &self.path_guard.blocked),
        ] {
            for p in list {
                crate::proxy::routes::Pattern::parse(p)
                    .map_err(|e| ConfigError::Invalid(format!("{name}: {e}")))?;
            }
        }
        if self.limits.max_concurrent_requests == 0 {
            return bad("limits.max_concurrent_requests must be positive".into());
        }
        if self.access_log.buffer_bytes < 65_536 || self.access_log.flush_interval_ms == 0 {
            return bad(
                "access_log.buffer_bytes must be at least 65536 and flush_interval_ms positive"
                    .into(),
            );
        }
        for p in &self.identity.anonymous {
            crate::proxy::routes::Pattern::parse(p)
                .map_err(|e| ConfigError::Invalid(format!("identity.anonymous: {e}")))?;
        }
        if self.quotas.backend == QuotaBackend::Redis
            && !self
                .quotas
                .redis_url
                .as_deref()
                .is_some_and(|u| u.starts_with("redis://") || u.starts_with("rediss://"))
        {
            return bad("quotas.backend redis needs quotas.redis_url (or MINIRAG_AGENT_REDIS_URL) as redis://host:port".into());
        }
        if self.identity.provider == IdentityProvider::Jwt
            && self.identity.jwt.jwks_file.as_os_str().is_empty()
        {
            return bad("identity.provider jwt needs identity.jwt.jwks_file".into());
        }
        if self.identity.provider == IdentityProvider::TrustedHeaders {
            let t = &self.identity.trusted_headers;
            if t.sources.is_empty() {
                return bad("identity.provider trusted_headers needs identity.trusted_headers.sources (the peers allowed to assert identity)".into());
            }
            for s in &t.sources {
                minirag_contracts::net::Cidr::parse(s).map_err(|e| {
                    ConfigError::Invalid(format!("identity.trusted_headers.sources: {e}"))
                })?;
            }
            for (key, name) in [
                ("user_id", &t.user_id),
                ("workspace_id", &t.workspace_id),
                ("organization_id", &t.organization_id),
                ("plan", &t.plan),
                ("billing_status", &t.billing_status),
            ] {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return bad(format!(
                        "identity.trusted_headers.{key}: {name:?} is not a header name"
                    ));
                }
            }
        }
        if self.quotas.policy_file.is_some() && self.identity.provider == IdentityProvider::None {
            return bad(
                "quotas.policy_file needs identity.provider introspect, jwt or trusted_headers (quotas are per workspace)"
                    .into(),
            );
        }
        if self.access_log.rotation_max_bytes < 1024 {
            return bad("access_log.rotation_max_bytes must be at least 1024".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let e = AgentConfig::from_yaml("timeouts:\n  conect_ms: 5\n").unwrap_err();
        assert!(e.contains("conect_ms") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn shipped_example_sets_every_knob_to_its_default() {
        let example = include_str!("../../config/agent.yaml");
        let parsed = AgentConfig::from_yaml(example).expect("config/agent.yaml parses");
        assert_eq!(
            format!("{parsed:?}"),
            format!("{:?}", AgentConfig::default())
        );
    }
}
