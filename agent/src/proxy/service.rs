//! The request path, outermost first (DESIGN §3): ids → trace context → path guard →
//! limits → forward → response headers → metrics and access line when the body ends.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::body::{BodyEnd, CountingBody, OnEnd, RecordBody};
use super::errors::json_error;
use super::forward::{self, ProxyBody, Upstream, UpstreamClient};
use super::headers::{self, SecurityHeaderSet};
use super::routes::{Pattern, RouteClass, RouteTable, ingest_source};
use crate::access_log::{AccessLog, AccessRecord};
use crate::config::AgentConfig;
use crate::identity::{Identity, Outcome, Principal};
use crate::metrics::{
    AskLabels, ClassLabels, HttpLabels, IngestLabels, IngestLatencyLabels, Metrics, OutcomeLabels,
    TraceLabel, UpstreamErrorLabels, outcome,
};
use crate::quota::events::QuotaEvents;
use crate::quota::limiter::Budget;
use crate::quota::{Backend, Decision, MAX_BUDGETS, Metric, Policy, Scope};
use crate::telemetry::RequestIds;
use crate::telemetry::spans::{self, RequestSpan, UpstreamCall};

// Header names set on every request or response, built at compile time: naming them as
// `&str` would parse and validate the name again for each request.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// What lives for the whole process: the upstream connection pool, the metrics, the
/// identity cache and the quota budgets (a config reload must not reset budgets).
pub struct Proxy {
    /// hyper's pool: HTTP/2, TLS and upgraded connections, and identity lookups.
    pub client: UpstreamClient,
    /// The HTTP/1.1 fast path's own keep-alive connections.
    pub pool: super::h1::Pool,
    pub metrics: Arc<Metrics>,
    pub identity: Option<Identity>,
    pub limiter: Backend,
    pub quota_events: QuotaEvents,
    pub concurrency: crate::quota::concurrency::Concurrency,
    /// Span export; `None` when tracing is off (ids and traceparent still flow).
    pub tracing: Option<minirag_otel::Pipeline>,
    dynamic: RwLock<Arc<Dynamic>>,
}

/// Everything built from one config file; a reload swaps it whole. Requests already in
/// flight finish with the snapshot they started with.
pub struct Dynamic {
    pub cfg: AgentConfig,
    pub routes: RouteTable,
    pub anonymous: Vec<Pattern>,
    pub security: SecurityHeaderSet,
    pub upstream: Upstream,
    pub access_log: AccessLog,
    pub inflight: Arc<Semaphore>,
    pub policy: Option<Policy>,
}

impl Dynamic {
    pub fn build(cfg: AgentConfig, metrics: &Arc<Metrics>) -> Result<Self, String> {
        let log = AccessLog::start(&cfg.access_log, Arc::clone(metrics))
            .map_err(|e| format!("access log: {e}"))?;
        Self::with_log(cfg, log)
    }

    /// Same as [`Dynamic::build`] but keeps the running access-log writer.
    pub fn rebuild_keeping_log(cfg: AgentConfig, current: &Dynamic) -> Result<Self, String> {
        Self::with_log(cfg, current.access_log.clone())
    }

    fn with_log(cfg: AgentConfig, access_log: AccessLog) -> Result<Self, String> {
        let policy = match &cfg.quotas.policy_file {
            Some(p) => Some(Policy::load(p)?),
            None => None,
        };
        Ok(Self {
            routes: RouteTable::new(&cfg),
            anonymous: cfg
                .identity
                .anonymous
                .iter()
                .filter_map(|p| Pattern::parse(p).ok())
                .collect(),
            security: SecurityHeaderSet::new(&cfg.security_headers)?,
            upstream: Upstream::parse(&cfg.upstream)?,
            access_log,
            inflight: Arc::new(Semaphore::new(cfg.limits.max_concurrent_requests)),
            policy,
            cfg,
        })
    }
}

impl Proxy {
    pub fn new(
        client: UpstreamClient,
        metrics: Arc<Metrics>,
        identity: Option<Identity>,
        tracing: Option<minirag_otel::Pipeline>,
        dynamic: Dynamic,
    ) -> Result<Self, String> {
        Ok(Self {
            tracing,
            limiter: Backend::new(&dynamic.cfg.quotas, Arc::clone(&metrics))?,
            quota_events: QuotaEvents::new(dynamic.cfg.quotas.max_tracked_budgets),
            concurrency: Default::default(),
            pool: super::h1::Pool::new(forward::POOL_MAX_IDLE, forward::POOL_IDLE_TIMEOUT),
            client,
            metrics,
            identity,
            dynamic: RwLock::new(Arc::new(dynamic)),
        })
    }

    /// The config snapshot for a new request or connection.
    pub fn current(&self) -> Arc<Dynamic> {
        match self.dynamic.read() {
            Ok(d) => Arc::clone(&d),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    pub fn replace(&self, next: Dynamic) {
        let next = Arc::new(next);
        match self.dynamic.write() {
            Ok(mut d) => *d = next,
            Err(p) => *p.into_inner() = next,
        }
    }
}

/// Per-connection facts.
#[derive(Clone, Copy)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub tls: bool,
}

/// Recorded once, when the response body ends (or the client goes away).
pub(super) struct Completion {
    pub(super) proxy: Arc<Proxy>,
    dynamic: Arc<Dynamic>,
    pub(super) ids: RequestIds,
    pub(super) class: RouteClass,
    method: http::Method,
    pub(super) path: String,
    pub(super) status: u16,
    started: Instant,
    pub(super) upstream_ms: Option<f64>,
    /// When the upstream call started, its status and failure kind (for the CLIENT span).
    pub(super) upstream_started: Option<Instant>,
    pub(super) upstream_status: Option<u16>,
    pub(super) upstream_error: Option<&'static str>,
    /// Host the client addressed; kept only for sampled requests (span attribute).
    server_address: Option<String>,
    pub(super) bytes_in: Arc<AtomicU64>,
    conn: ConnInfo,
    user_agent: Option<String>,
    protocol: &'static str,
    pub(super) error: Option<&'static str>,
    _permit: Option<OwnedSemaphorePermit>,
    /// The workspace's `concurrent_requests` slot, held until the body ends.
    _slot: Option<crate::quota::concurrency::Slot>,
    recorded: bool,
    principal: Option<Arc<Principal>>,
    /// The tightest quota budget of this request, for RateLimit headers (and 429s).
    quota: Option<QuotaState>,
    /// Fields added to the agent's own error body (quota: metric, limit, remaining, …).
    error_extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone)]
struct QuotaState {
    metric: Metric,
    limit: u64,
    remaining: u64,
    reset_seconds: u64,
    retry_after_seconds: Option<u64>,
}

impl QuotaState {
    /// RateLimit-Policy, RateLimit and (on refusals) Retry-After, written on the stack:
    /// these go out on every response under a quota.
    fn headers(&self, mut f: impl FnMut(&HeaderName, AddedValue<'_>)) {
        let mut v = StackValue::new();
        v.number(self.limit);
        v.push(b";w=");
        v.number(self.metric.window().as_secs());
        f(&RATELIMIT_POLICY, AddedValue::Bytes(v.as_bytes()));
        v.clear();
        v.push(b"limit=");
        v.number(self.limit);
        v.push(b", remaining=");
        v.number(self.remaining);
        v.push(b", reset=");
        v.number(self.reset_seconds);
        f(&RATELIMIT, AddedValue::Bytes(v.as_bytes()));
        if let Some(r) = self.retry_after_seconds {
            v.clear();
            v.number(r);
            f(&header::RETRY_AFTER, AddedValue::Bytes(v.as_bytes()));
        }
    }
}

/// A header value built on the stack: ASCII text and decimal numbers only, so it is
/// always a valid field value. Room for the longest RateLimit value (three u64s).
struct StackValue {
    buf: [u8; 96],
    len: usize,
}

impl StackValue {
    fn new() -> Self {
        Self {
            buf: [0; 96],
            len: 0,
        }
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    fn push(&mut self, b: &[u8]) {
        // Callers write at most 86 bytes; anything past the end is cut, never a panic.
        let end = (self.len + b.len()).min(self.buf.len());
        let n = end - self.len;
        self.buf[self.len..end].copy_from_slice(&b[..n]);
        self.len = end;
    }

    fn number(&mut self, n: u64) {
        self.push(crate::access_log::decimal(n, &mut [0; 20]));
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl OnEnd for Completion {
    fn on_end(mut self: Box<Self>, end: BodyEnd, bytes_out: u64) {
        self.record(end, bytes_out);
    }
}

/// A client that leaves before the response headers exist drops the handler future and
/// with it this record: it is still counted (status 499, nginx's "client closed").
impl Drop for Completion {
    fn drop(&mut self) {
        if !self.recorded {
            if self.status == 0 {
                self.status = 499;
            }
            self.record(BodyEnd::ClientGone, 0);
        }
    }
}

impl Completion {
    pub(super) fn record(&mut self, end: BodyEnd, bytes_out: u64) {
        self.recorded = true;
        let m = &self.proxy.metrics;
        let secs = self.started.elapsed().as_secs_f64();
        let client_gone = end == BodyEnd::ClientGone;
        let out = outcome(self.status, client_gone);
        let class = self.class.as_str();
        if end == BodyEnd::IdleTimeout {
            m.upstream_errors
                .get_or_create(&UpstreamErrorLabels {
                    class,
                    kind: "body_idle",
                })
                .inc();
        }
        m.in_flight.get_or_create(&ClassLabels { class }).dec();
        let traced = self.ids.sampled && self.proxy.tracing.is_some();
        let exemplar = || {
            traced.then(|| TraceLabel {
                trace_id: self.ids.trace_id.clone(),
            })
        };
        m.http_requests
            .get_or_create(&HttpLabels {
                class,
                method: crate::metrics::method_label(&self.method),
                status_code: self.status,
            })
            .inc();
        m.http_duration
            .get_or_create(&ClassLabels { class })
            .observe(secs, exemplar(), None);
        match self.class {
            RouteClass::Ask => {
                m.ask_requests
                    .get_or_create(&AskLabels {
                        outcome: out,
                        status_code: self.status,
                    })
                    .inc();
                m.ask_latency
                    .get_or_create(&OutcomeLabels { outcome: out })
                    .observe(secs, exemplar(), None);
            }
            RouteClass::Ingest => {
                let source = ingest_source(&self.path);
                m.ingest_operations
                    .get_or_create(&IngestLabels {
                        source,
                        outcome: out,
                        status_code: self.status,
                    })
                    .inc();
                m.ingest_latency
                    .get_or_create(&IngestLatencyLabels {
                        source,
                        outcome: out,
                    })
                    .observe(secs, exemplar(), None);
            }
            _ => {}
        }
        let error = match end {
            BodyEnd::IdleTimeout => Some("upstream_body_idle_timeout"),
            BodyEnd::Failed => Some("upstream_body_error"),
            BodyEnd::ClientGone => Some("client_gone"),
            BodyEnd::Complete => self.error,
        };
        let log = &self.dynamic.access_log;
        if log.enabled() {
            log.write(&AccessRecord {
                timestamp: minirag_contracts::timestamp_now(),
                level: if self.status >= 500 { "ERROR" } else { "INFO" },
                logger: "minirag_agent.access",
                message: "request proxied",
                event: "http.access",
                request_id: &self.ids.request_id,
                trace_id: &self.ids.trace_id,
                span_id: &self.ids.span_id,
                parent_span_id: self.ids.parent_span_id.as_deref(),
                user_id: self.principal.as_ref().map(|p| p.user_id.as_str()),
                workspace_id: self.principal.as_ref().map(|p| p.workspace_id.as_str()),
                organization_id: self.principal.as_ref().map(|p| p.organization_id.as_str()),
                route: class,
                method: self.method.as_str(),
                path: &self.path,
                status_code: self.status,
                duration_ms: (secs * 1e6).round() / 1e3,
                upstream_ms: self.upstream_ms,
                bytes_in: self.bytes_in.load(Ordering::Relaxed),
                bytes_out,
                client_addr: self.conn.remote,
                user_agent: self.user_agent.as_deref(),
                protocol: self.protocol,
                outcome: out,
                error,
            });
        }
        // Last: the span export takes (moves) the strings the access line borrowed.
        if traced && let Some(pipeline) = self.proxy.tracing.clone() {
            self.export_spans(&pipeline, secs, error, end);
        }
    }
}

impl Completion {
    /// Hands the request's spans to the export thread. Only owned fields move into the
    /// closure here; building the attributes (formatting, allocation) happens there.
    fn export_spans(
        &mut self,
        pipeline: &minirag_otel::Pipeline,
        secs: f64,
        error: Option<&'static str>,
        end: BodyEnd,
    ) {
        let now = SystemTime::now();
        let start = now
            .checked_sub(Duration::from_secs_f64(secs))
            .unwrap_or(now);
        let upstream_error = match end {
            BodyEnd::IdleTimeout => Some("upstream_body_idle_timeout"),
            BodyEnd::Failed => Some("upstream_body_error"),
            _ => self.upstream_error,
        };
        let upstream = self.upstream_started.map(|t| {
            (
                now.checked_sub(t.elapsed()).unwrap_or(now),
                self.upstream_status,
                upstream_error,
            )
        });
        let ids = RequestIds {
            request_id: std::mem::take(&mut self.ids.request_id),
            trace_id: std::mem::take(&mut self.ids.trace_id),
            span_id: std::mem::take(&mut self.ids.span_id),
            parent_span_id: self.ids.parent_span_id.take(),
            flags: self.ids.flags,
            tracestate: None,
            sampled: true,
            client_span_id: std::mem::take(&mut self.ids.client_span_id),
        };
        let dynamic = Arc::clone(&self.dynamic);
        let method = self.method.clone();
        let path = std::mem::take(&mut self.path);
        let class = self.class;
        let status = self.status;
        let server_address = self.server_address.take();
        let conn = self.conn;
        let protocol = self.protocol;
        let user_agent = self.user_agent.take();
        let principal = self.principal.clone();
        let spans = if upstream.is_some() { 2 } else { 1 };
        pipeline.export_deferred(
            spans,
            Box::new(move |out| {
                let up = &dynamic.upstream.authority;
                let route = dynamic
                    .routes
                    .template(&method, &path)
                    .unwrap_or(class.as_str());
                // Built before `path` moves into the span (its owned fields are moved on
                // into the attributes instead of copied).
                let upstream = upstream.map(|(start, status, error_type)| UpstreamCall {
                    start,
                    status,
                    error_type,
                    url_full: format!("http://{up}{path}"),
                    server_address: up.host(),
                    server_port: up.port_u16().unwrap_or(80),
                });
                spans::build(
                    RequestSpan {
                        ids,
                        method: &method,
                        route,
                        path,
                        scheme: if conn.tls { "https" } else { "http" },
                        status,
                        server_address,
                        client: conn.remote,
                        protocol_version: match protocol {
                            "HTTP/2" => "2",
                            "HTTP/1.0" => "1.0",
                            _ => "1.1",
                        },
                        user_agent,
                        error_type: error,
                        principal: principal.as_deref(),
                        start,
                        end: now,
                        upstream,
                    },
                    out,
                );
            }),
        );
    }
}

fn protocol_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

fn full(resp: Response<Full<Bytes>>) -> Response<ProxyBody> {
    resp.map(|b| b.map_err(|never| match never {}).boxed())
}

/// What both HTTP stacks know about a request before its body is touched.
pub(super) struct RequestFacts<'a> {
    pub method: &'a http::Method,
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
    /// The authority of an absolute-form target (HTTP/2 `:authority`), if any.
    pub uri_host: Option<&'a str>,
    pub protocol: &'static str,
}

/// A request past its edge checks (or refused by one): the config snapshot it runs with,
/// its ids, and the record written when its response ends.
pub(super) struct Begun {
    pub dynamic: Arc<Dynamic>,
    /// Also holds the request's ids (`done.ids`).
    pub done: Completion,
    pub admitted: Result<(), Refusal>,
}

/// The steps every request takes before its upstream call, whichever HTTP stack carries
/// it (DESIGN §3 steps 1–6): ids and trace context, route class and the in-flight gauge,
/// the path guard, load shedding, identity and quotas, and the declared body size.
pub(super) async fn begin(
    proxy: &Arc<Proxy>,
    conn: ConnInfo,
    req: RequestFacts<'_>,
    memo: Option<&mut Option<crate::identity::Memo>>,
) -> Begun {
    let started = Instant::now();
    let dynamic = proxy.current();
    let ids = RequestIds::from_headers(
        req.headers,
        dynamic.cfg.request_id.trust_incoming,
        proxy.tracing.as_ref(),
    );
    let class = dynamic.routes.classify(req.method, req.path);
    let sampled = ids.sampled;
    proxy
        .metrics
        .in_flight
        .get_or_create(&ClassLabels {
            class: class.as_str(),
        })
        .inc();
    let mut done = Completion {
        proxy: Arc::clone(proxy),
        dynamic: Arc::clone(&dynamic),
        ids,
        class,
        method: req.method.clone(),
        path: req.path.to_owned(),
        status: 0,
        started,
        upstream_ms: None,
        upstream_started: None,
        upstream_status: None,
        upstream_error: None,
        server_address: if sampled {
            req.headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .or(req.uri_host)
                .map(|h| h.split(':').next().unwrap_or(h).to_owned())
        } else {
            None
        },
        bytes_in: Arc::new(AtomicU64::new(0)),
        conn,
        user_agent: req
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        protocol: req.protocol,
        error: None,
        _permit: None,
        _slot: None,
        recorded: false,
        principal: None,
        quota: None,
        error_extra: serde_json::Map::new(),
    };
    let admitted = edge_checks(proxy, &dynamic, &req, &mut done, memo).await;
    Begun {
        dynamic,
        done,
        admitted,
    }
}

async fn edge_checks(
    proxy: &Arc<Proxy>,
    dynamic: &Dynamic,
    req: &RequestFacts<'_>,
    done: &mut Completion,
    memo: Option<&mut Option<crate::identity::Memo>>,
) -> Result<(), Refusal> {
    if dynamic.routes.is_blocked(req.method, req.path) {
        return Err((StatusCode::NOT_FOUND, "not_found", "no such route"));
    }
    let permit = match Arc::clone(&dynamic.inflight).try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            proxy.metrics.shed.inc();
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the proxy is at its concurrency limit; retry shortly",
            ));
        }
    };
    done._permit = Some(permit);
    admit(proxy, dynamic, req, done, memo).await?;
    if declared_length(req.headers).is_some_and(|n| n > dynamic.cfg.limits.max_body_bytes) {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body is larger than the proxy allows",
        ));
    }
    Ok(())
}

pub(super) fn declared_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// The agent's own answer to a refused or failed request.
pub(super) fn refusal_response(done: &mut Completion, r: Refusal) -> Response<Bytes> {
    let (status, code, message) = r;
    done.error = Some(code);
    let extra = std::mem::take(&mut done.error_extra);
    json_error(status, code, message, &done.ids.request_id, extra)
}

/// How the agent sets one of its response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Added {
    /// Whatever the upstream sent under this name is dropped.
    Replace,
    /// Only when the upstream sent none.
    IfAbsent,
}

/// The value of a header the agent adds: one from config (shared, cloned cheaply into a
/// header map), or one written for this response (valid field-value bytes: ASCII digits
/// and text, or a request id that passed `valid_request_id`).
pub(super) enum AddedValue<'a> {
    Shared(&'a HeaderValue),
    Bytes(&'a [u8]),
}

impl AddedValue<'_> {
    pub(super) fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Shared(v) => v.as_bytes(),
            Self::Bytes(b) => b,
        }
    }

    fn to_header_value(&self) -> Option<HeaderValue> {
        match self {
            Self::Shared(v) => Some((*v).clone()),
            Self::Bytes(b) => HeaderValue::from_bytes(b).ok(),
        }
    }
}

/// The headers the agent adds to every response it sends: RateLimit and the request id
/// (replacing the upstream's) and the configured security headers (filling in what the
/// upstream left out). Both HTTP stacks apply this one list; the HTTP/1.1 fast path
/// copies the bytes into its output without building header values.
pub(super) fn added_headers(
    done: &Completion,
    dynamic: &Dynamic,
    mut f: impl FnMut(Added, &HeaderName, AddedValue<'_>),
) {
    if let Some(q) = &done.quota {
        q.headers(|n, v| f(Added::Replace, n, v));
    }
    f(
        Added::Replace,
        &X_REQUEST_ID,
        AddedValue::Bytes(done.ids.request_id.as_bytes()),
    );
    dynamic
        .security
        .for_each(done.conn.tls, done.path.starts_with("/api/"), |n, v| {
            f(Added::IfAbsent, n, AddedValue::Shared(v))
        });
}

/// [`added_headers`] applied to a header map.
pub(super) fn response_headers(done: &Completion, dynamic: &Dynamic, h: &mut http::HeaderMap) {
    added_headers(done, dynamic, |mode, name, value| {
        let Some(value) = value.to_header_value() else {
            return;
        };
        match mode {
            Added::Replace => {
                h.insert(name.clone(), value);
            }
            Added::IfAbsent => {
                h.entry(name.clone()).or_insert(value);
            }
        }
    });
}

/// Rewrites a client's request headers for the upstream hop: hop-by-hop and identity
/// headers out, the request id, trace context and `X-Forwarded-*` in, `Host` removed
/// (the upstream's authority is set by the caller).
pub(super) fn upstream_headers(
    dynamic: &Dynamic,
    ids: &RequestIds,
    conn: ConnInfo,
    h: &mut http::HeaderMap,
    original_host: Option<HeaderValue>,
    upgrade: bool,
) {
    headers::strip_hop_by_hop(h, upgrade);
    headers::strip_client_identity(h);
    if dynamic.cfg.identity.provider == crate::config::IdentityProvider::TrustedHeaders {
        // Custom names too: what the gateway asserted was for us, not for rag-core.
        let t = &dynamic.cfg.identity.trusted_headers;
        for name in [
            &t.user_id,
            &t.workspace_id,
            &t.organization_id,
            &t.plan,
            &t.billing_status,
        ] {
            h.remove(name.as_str());
        }
    }
    if let Ok(v) = HeaderValue::from_str(&ids.request_id) {
        h.insert(X_REQUEST_ID, v);
    }
    if let Ok(v) = HeaderValue::from_str(&ids.upstream_traceparent()) {
        h.insert(TRACEPARENT, v);
    }
    h.remove(&TRACESTATE);
    if let Some(ts) = &ids.tracestate {
        h.insert(TRACESTATE, ts.clone());
    }
    let client_ip = crate::access_log::ip_string(conn.remote.ip());
    let xff = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {client_ip}"),
        None => client_ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert(X_FORWARDED_FOR, v);
    }
    h.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    if let Some(host) = original_host {
        h.insert(X_FORWARDED_HOST, host);
    }
    h.remove(header::HOST);
}

/// The hyper service: HTTP/2, TLS, upgrades and whatever the HTTP/1.1 fast path
/// (`super::h1`) hands over.
pub async fn handle(
    proxy: Arc<Proxy>,
    conn: ConnInfo,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let Begun {
        dynamic,
        mut done,
        admitted,
    } = {
        let path = req.uri().path().to_owned();
        begin(
            &proxy,
            conn,
            RequestFacts {
                method: req.method(),
                path: &path,
                headers: req.headers(),
                uri_host: req.uri().host(),
                protocol: protocol_name(req.version()),
            },
            None,
        )
        .await
    };
    let result = match admitted {
        Ok(()) => forward_request(&proxy, &dynamic, conn, req, &mut done).await,
        Err(r) => Err(r),
    };
    let resp = match result {
        Ok(r) => r,
        Err(r) => full(refusal_response(&mut done, r).map(Full::new)),
    };
    let (mut parts, body) = resp.into_parts();
    response_headers(&done, &dynamic, &mut parts.headers);
    done.status = parts.status.as_u16();
    let idle = Duration::from_millis(dynamic.cfg.timeouts.body_idle_ms);
    let body = RecordBody::new(body, idle, Box::new(done)).boxed();
    Ok(Response::from_parts(parts, body))
}

pub(super) type Refusal = (StatusCode, &'static str, &'static str);

async fn forward_request(
    proxy: &Arc<Proxy>,
    dynamic: &Dynamic,
    conn: ConnInfo,
    mut req: Request<Incoming>,
    done: &mut Completion,
) -> Result<Response<ProxyBody>, Refusal> {
    let class = done.class.as_str();
    let max_body = dynamic.cfg.limits.max_body_bytes;
    let bytes_in = Arc::clone(&done.bytes_in);
    let upgrade = headers::is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let uri = dynamic.upstream.uri_for(&path_and_query).map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            "bad_request",
            "request target is not a valid path",
        )
    })?;

    // Build the upstream request from the client's, owning its body.
    let (mut parts, body) = req.into_parts();
    let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    upstream_headers(
        dynamic,
        &done.ids,
        conn,
        &mut parts.headers,
        original_host,
        upgrade,
    );
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    let body = Limited::new(CountingBody::new(body, bytes_in), max_body as usize)
        .map_err(|e| -> forward::BoxError { e })
        .boxed();
    let upstream_req = Request::from_parts(parts, body);

    let upstream_started = Instant::now();
    done.upstream_started = Some(upstream_started);
    let timeout = Duration::from_millis(dynamic.cfg.timeouts.response_headers_ms);
    let result = tokio::time::timeout(timeout, proxy.client.request(upstream_req)).await;
    done.upstream_ms = Some((upstream_started.elapsed().as_secs_f64() * 1e6).round() / 1e3);
    let count = |kind: &'static str| {
        proxy
            .metrics
            .upstream_errors
            .get_or_create(&UpstreamErrorLabels { class, kind })
            .inc();
    };
    let mut resp = match result {
        Err(_) => {
            let f = forward::RESPONSE_TIMEOUT;
            count(f.kind);
            done.upstream_error = Some(f.kind);
            return Err(f.refusal());
        }
        Ok(Err(e)) => {
            if is_body_limit(&e) {
                return Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "request body is larger than the proxy allows",
                ));
            }
            let f = forward::classify_error(&e);
            count(f.kind);
            done.upstream_error = Some(f.kind);
            return Err(f.refusal());
        }
        Ok(Ok(r)) => r,
    };
    done.upstream_status = Some(resp.status().as_u16());

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                if let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await) {
                    let _ = tokio::io::copy_bidirectional(
                        &mut TokioIo::new(client),
                        &mut TokioIo::new(upstream),
                    )
                    .await;
                }
            });
        }
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(
            parts,
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed(),
        ));
    }
    headers::strip_hop_by_hop(resp.headers_mut(), false);
    Ok(resp.map(|b| b.map_err(|e| -> forward::BoxError { Box::new(e) }).boxed()))
}

fn is_body_limit(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Identity, then quotas (DESIGN §3 steps 5–6). Unknown keys are refused before any
/// budget is spent; a refused request spends nothing either.
async fn admit(
    proxy: &Proxy,
    dynamic: &Dynamic,
    req: &RequestFacts<'_>,
    done: &mut Completion,
    memo: Option<&mut Option<crate::identity::Memo>>,
) -> Result<(), Refusal> {
    let Some(identity) = &proxy.identity else {
        return Ok(());
    };
    if dynamic
        .anonymous
        .iter()
        .any(|p| p.matches(req.method, req.path))
    {
        return Ok(());
    }
    let peer = done.conn.remote.ip();
    let outcome = match memo {
        Some(memo) => {
            identity
                .resolve_memo(
                    req.headers,
                    peer,
                    &proxy.client,
                    &dynamic.upstream,
                    memo,
                    done.started,
                )
                .await
        }
        None => {
            identity
                .resolve(req.headers, peer, &proxy.client, &dynamic.upstream)
                .await
        }
    };
    let principal = match outcome {
        Outcome::Principal(p) => p,
        Outcome::Unauthenticated => {
            return Err((
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid API key is required (Authorization: Bearer <key> or X-API-Key)",
            ));
        }
        Outcome::Unavailable(why) => {
            crate::log::warn("identity.unavailable", &why);
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "identity_unavailable",
                "the caller's identity cannot be checked right now; retry shortly",
            ));
        }
    };
    done.principal = Some(Arc::clone(&principal));
    let Some(policy) = &dynamic.policy else {
        return Ok(());
    };
    let cap = dynamic.cfg.quotas.max_workspace_labels;
    let ws = principal.workspace_id.as_str();
    if done.class == RouteClass::Ingest {
        // Early refusals for ingest; rag-core remains the final judge of both.
        if policy
            .billing_blocked_statuses
            .iter()
            .any(|s| s == &principal.billing_status)
        {
            crate::log::warn_with(
                "billing.blocked",
                "ingest refused: the organization's billing status blocks it",
                serde_json::json!({"workspace_id": ws, "organization_id": principal.organization_id, "billing_status": principal.billing_status}),
            );
            return Err((
                StatusCode::PAYMENT_REQUIRED,
                "billing_blocked",
                "ingest is blocked by the organization's billing status",
            ));
        }
        let usage = &principal.usage;
        if usage.chunk_limit > 0 {
            let ratio = usage.chunk_total as f64 / usage.chunk_limit as f64;
            proxy
                .metrics
                .quota_level(ws, "chunk_storage", usage.chunk_total as f64, ratio, cap);
            if usage.chunk_total >= usage.chunk_limit {
                proxy.metrics.quota_exceeded(ws, "chunk_storage", cap);
                log_exceeded(proxy, ws, "chunk_storage", usage.chunk_limit as u64);
                done.error_extra = quota_fields("chunk_storage", usage.chunk_limit as u64, None);
                return Err((
                    StatusCode::FORBIDDEN,
                    "quota_exceeded",
                    "this workspace has no chunk storage left",
                ));
            }
        }
    }
    let org = &principal.organization_id;
    let limits = policy.resolve(&principal.plan, org, ws);
    if let Some(limit) = limits.concurrency() {
        match proxy.concurrency.try_acquire(ws, limit) {
            Ok((slot, _)) => done._slot = Some(slot),
            Err(_) => {
                proxy.metrics.quota_exceeded(ws, "concurrent_requests", cap);
                log_exceeded(proxy, ws, "concurrent_requests", limit);
                done.error_extra = quota_fields("concurrent_requests", limit, Some(1));
                done.quota = None;
                return Err((
                    StatusCode::TOO_MANY_REQUESTS,
                    "quota_exceeded",
                    "this workspace has too many requests in flight; retry when one finishes",
                ));
            }
        }
    }
    // Byte budgets spend the declared body size; without one it cannot be checked first.
    let declared_bytes = declared_length(req.headers);
    // Organization totals are keyed apart from workspace ids; built once, only if used.
    let org_key = limits
        .has_organization_totals()
        .then(|| format!("org:{org}"));
    // On the stack: this runs for every request under a quota.
    let mut budgets: smallvec::SmallVec<[Budget; MAX_BUDGETS]> = smallvec::SmallVec::new();
    for m in Metric::for_class(done.class) {
        let ws_limit = limits.limit(*m);
        let org_limit = limits.organization_total(*m);
        let cost = if m.counts_bytes() && (ws_limit.is_some() || org_limit.is_some()) {
            match declared_bytes {
                Some(n) => n,
                None => {
                    return Err((
                        StatusCode::LENGTH_REQUIRED,
                        "length_required",
                        "ingest under a byte quota needs a Content-Length",
                    ));
                }
            }
        } else {
            1
        };
        if let Some(limit) = ws_limit {
            budgets.push(Budget {
                key: Cow::Borrowed(ws),
                scope: Scope::Workspace,
                metric: *m,
                limit,
                cost,
            });
        }
        if let (Some(limit), Some(key)) = (org_limit, org_key.as_deref()) {
            budgets.push(Budget {
                key: Cow::Borrowed(key),
                scope: Scope::Organization,
                metric: *m,
                limit,
                cost,
            });
        }
    }
    if budgets.is_empty() {
        return Ok(());
    }
    match proxy.limiter.check(&budgets, done.started).await {
        Decision::Allowed { tightest } => {
            if let Some((b, remaining, reset_seconds)) = tightest {
                let used = b.limit.saturating_sub(remaining);
                let ratio = used as f64 / b.limit as f64;
                let (gauge_due, crossed) = proxy.quota_events.observe(
                    ws,
                    b.metric.name(),
                    ratio,
                    policy.threshold_ratio,
                    done.started,
                );
                if gauge_due {
                    proxy
                        .metrics
                        .quota_level(ws, b.metric.name(), used as f64, ratio, cap);
                }
                if crossed {
                    crate::log::warn_with(
                        "quota.threshold",
                        "workspace quota usage crossed the threshold",
                        serde_json::json!({"workspace_id": ws, "organization_id": principal.organization_id, "metric": b.metric.name(), "ratio": ratio, "quota_context": {"limit": b.limit, "remaining": remaining}}),
                    );
                }
                done.quota = Some(QuotaState {
                    metric: b.metric,
                    limit: b.limit,
                    remaining,
                    reset_seconds,
                    retry_after_seconds: None,
                });
            }
            Ok(())
        }
        Decision::BackendDown => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "quota_backend_unavailable",
            "quotas cannot be checked right now; retry shortly",
        )),
        Decision::Refused {
            budget,
            retry_after,
        } => {
            let retry = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            proxy.metrics.quota_exceeded(ws, budget.metric.name(), cap);
            proxy
                .metrics
                .quota_level(ws, budget.metric.name(), budget.limit as f64, 1.0, cap);
            log_exceeded(proxy, ws, budget.metric.name(), budget.limit);
            done.error_extra = quota_fields(budget.metric.name(), budget.limit, Some(retry));
            done.error_extra
                .insert("scope".into(), budget.scope.name().into());
            done.quota = Some(QuotaState {
                metric: budget.metric,
                limit: budget.limit,
                remaining: 0,
                reset_seconds: retry,
                retry_after_seconds: Some(retry),
            });
            Err((
                StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                match budget.scope {
                    Scope::Workspace => {
                        "this workspace has used its quota; retry after the indicated time"
                    }
                    Scope::Organization => {
                        "this organization has used its quota across its workspaces; retry after the indicated time"
                    }
                },
            ))
        }
    }
}

fn quota_fields(
    metric: &str,
    limit: u64,
    retry_after: Option<u64>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("metric".into(), metric.into());
    m.insert("limit".into(), limit.into());
    m.insert("remaining".into(), 0.into());
    m.insert("retry_after_seconds".into(), retry_after.into());
    m
}

fn log_exceeded(proxy: &Proxy, ws: &str, metric: &'static str, limit: u64) {
    if proxy
        .quota_events
        .should_log_exceeded(ws, metric, std::time::Instant::now())
    {
        crate::log::warn_with(
            "quota.exceeded",
            "workspace quota exceeded (logged at most every 10 s per workspace and metric)",
            serde_json::json!({"workspace_id": ws, "metric": metric, "quota_context": {"limit": limit}}),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(q: &QuotaState) -> Vec<(String, String)> {
        let mut out = Vec::new();
        q.headers(|n, v| {
            out.push((
                n.as_str().to_owned(),
                String::from_utf8(v.as_bytes().to_vec()).unwrap(),
            ))
        });
        out
    }

    #[test]
    fn ratelimit_headers_fit_the_largest_numbers() {
        let q = QuotaState {
            metric: Metric::RequestsPerDay,
            limit: u64::MAX,
            remaining: u64::MAX,
            reset_seconds: u64::MAX,
            retry_after_seconds: Some(u64::MAX),
        };
        let m = u64::MAX;
        assert_eq!(
            written(&q),
            [
                ("ratelimit-policy".into(), format!("{m};w=86400")),
                (
                    "ratelimit".into(),
                    format!("limit={m}, remaining={m}, reset={m}")
                ),
                ("retry-after".into(), m.to_string()),
            ]
        );
        let q = QuotaState {
            metric: Metric::RequestsPerMinute,
            limit: 5,
            remaining: 0,
            reset_seconds: 12,
            retry_after_seconds: None,
        };
        assert_eq!(
            written(&q),
            [
                ("ratelimit-policy".into(), "5;w=60".into()),
                ("ratelimit".into(), "limit=5, remaining=0, reset=12".into()),
            ]
        );
    }
}
