//! The upstream hop: a pooled HTTP/1.1 client to rag-core with a bounded connect time.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// rag-core's address, parsed once.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `host:port`, used as the authority of forwarded requests.
    pub authority: http::uri::Authority,
}

impl Upstream {
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err("only http:// upstreams are supported (the hop is pod-local)".into());
        }
        let authority = uri.authority().cloned().ok_or("upstream has no host")?;
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err("upstream must not have a path".into());
        }
        Ok(Self { authority })
    }

    pub fn uri_for(&self, path_and_query: &str) -> Result<http::Uri, http::Error> {
        http::Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }
}

pub type UpstreamClient = Client<HttpConnector, ProxyBody>;

/// Idle upstream connections kept per pool (hyper's and the HTTP/1.1 fast path's), and
/// how long one may sit unused.
pub const POOL_MAX_IDLE: usize = 256;
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub fn client(connect_timeout: Duration) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE)
        .build(connector)
}

/// How a failed upstream call is answered (status, error code, message) and counted (the
/// `kind` label of the upstream-error metric). Both HTTP stacks use these.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamFailure {
    pub status: http::StatusCode,
    pub code: &'static str,
    pub message: &'static str,
    pub kind: &'static str,
}

impl UpstreamFailure {
    /// As the `(status, code, message)` the request path answers with.
    pub fn refusal(self) -> (http::StatusCode, &'static str, &'static str) {
        (self.status, self.code, self.message)
    }
}

pub const CONNECT_TIMEOUT: UpstreamFailure = UpstreamFailure {
    status: http::StatusCode::GATEWAY_TIMEOUT,
    code: "upstream_connect_timeout",
    message: "the upstream did not accept the connection in time",
    kind: "connect_timeout",
};
pub const CONNECT_REFUSED: UpstreamFailure = UpstreamFailure {
    status: http::StatusCode::BAD_GATEWAY,
    code: "upstream_unavailable",
    message: "the upstream refused the connection or is down",
    kind: "connect",
};
pub const BROKEN: UpstreamFailure = UpstreamFailure {
    status: http::StatusCode::BAD_GATEWAY,
    code: "upstream_error",
    message: "the upstream connection failed",
    kind: "protocol",
};
pub const RESPONSE_TIMEOUT: UpstreamFailure = UpstreamFailure {
    status: http::StatusCode::GATEWAY_TIMEOUT,
    code: "upstream_timeout",
    message: "the upstream did not answer in time",
    kind: "response_timeout",
};

/// Which of the failures above a hyper client error is.
pub fn classify_error(e: &hyper_util::client::legacy::Error) -> UpstreamFailure {
    if e.is_connect() {
        // The connector reports its connect timeout as an io::Error of kind TimedOut.
        let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
        while let Some(s) = source {
            if s.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            {
                return CONNECT_TIMEOUT;
            }
            source = s.source();
        }
        return CONNECT_REFUSED;
    }
    BROKEN
}
