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

/// How a failed upstream call is reported (status, error code, metric label).
pub fn classify_error(
    e: &hyper_util::client::legacy::Error,
) -> (http::StatusCode, &'static str, &'static str) {
    if e.is_connect() {
        // The connector reports its connect timeout as an io::Error of kind TimedOut.
        let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
        while let Some(s) = source {
            if s.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            {
                return (
                    http::StatusCode::GATEWAY_TIMEOUT,
                    "upstream_connect_timeout",
                    "connect_timeout",
                );
            }
            source = s.source();
        }
        return (
            http::StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
            "connect",
        );
    }
    (http::StatusCode::BAD_GATEWAY, "upstream_error", "protocol")
}
