//! Fetching pages for URL ingest, with the guards a multi-tenant server needs:
//! scheme check, private-address refusal (checked on the resolved address, which is
//! then pinned so DNS cannot change between check and connect), manual redirects that
//! are re-checked, a size cap while streaming, and a total timeout.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tracing::Instrument;

use crate::config::{UrlIngestConfig, parse_cidr};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid URL {0:?}")]
    InvalidUrl(String),
    #[error("only http and https URLs can be ingested")]
    Scheme,
    #[error("address {0} is private, loopback or link-local and not allow-listed")]
    Forbidden(IpAddr),
    #[error("cannot resolve host {0}")]
    Resolve(String),
    #[error("fetch failed: {0}")]
    Http(String),
    #[error("remote answered HTTP {0}")]
    Status(u16),
    #[error("page is larger than {0} bytes")]
    TooLarge(usize),
    #[error("too many redirects")]
    Redirects,
    #[error("timed out after {0} s")]
    Timeout(u64),
}

impl FetchError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidUrl(_) | Self::Scheme => "invalid_url",
            Self::Forbidden(_) => "forbidden_address",
            Self::TooLarge(_) => "too_large",
            Self::Timeout(_) => "timeout",
            _ => "fetch_failed",
        }
    }
}

pub struct Fetched {
    pub final_url: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

pub struct Fetcher {
    cfg: UrlIngestConfig,
    allow: Vec<minirag_contracts::net::Cidr>,
}

/// Addresses a server-side fetch must not reach by default.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Splits `http(s)://host[:port]/…` into (https?, host, port); no external URL crate needed.
fn split_url(url: &str) -> Result<(bool, String, u16), FetchError> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if url.contains("://") {
        return Err(FetchError::Scheme);
    } else {
        return Err(FetchError::InvalidUrl(url.to_string()));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let default_port = if https { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| FetchError::InvalidUrl(url.into()))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| FetchError::InvalidUrl(url.into()))?,
            None => default_port,
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| FetchError::InvalidUrl(url.into()))?,
            ),
            None => (authority.to_string(), default_port),
        }
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(FetchError::InvalidUrl(url.to_string()));
    }
    Ok((https, host, port))
}

/// Checks a URL's shape without touching the network (used to reject a request early).
pub fn check_syntax(url: &str) -> Result<(), FetchError> {
    if url.len() > 4096 {
        return Err(FetchError::InvalidUrl("URL longer than 4096 bytes".into()));
    }
    split_url(url).map(|_| ())
}

impl Fetcher {
    pub fn new(cfg: &UrlIngestConfig) -> Self {
        let allow = cfg
            .allow_private
            .iter()
            .filter_map(|c| parse_cidr(c).ok())
            .collect();
        Self {
            cfg: cfg.clone(),
            allow,
        }
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        !is_internal(ip) || self.allow.iter().any(|n| n.contains(ip))
    }

    async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, FetchError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| FetchError::Resolve(host.to_string()))?
            .collect();
        // Every address must pass, or a host with one public and one private record
        // could be steered to the private one.
        if let Some(bad) = addrs.iter().find(|a| !self.allowed(a.ip())) {
            return Err(FetchError::Forbidden(bad.ip()));
        }
        addrs
            .first()
            .copied()
            .ok_or_else(|| FetchError::Resolve(host.to_string()))
    }

    pub async fn fetch(&self, url: &str) -> Result<Fetched, FetchError> {
        let secs = self.cfg.timeout_seconds;
        tokio::time::timeout(Duration::from_secs(secs), self.fetch_inner(url))
            .await
            .map_err(|_| FetchError::Timeout(secs))?
    }

    async fn fetch_inner(&self, url: &str) -> Result<Fetched, FetchError> {
        let mut current = url.to_string();
        for _ in 0..=self.cfg.max_redirects {
            let (_, host, port) = split_url(&current)?;
            let bare_host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let addr = self.resolve(&bare_host, port).await?;
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .resolve(&bare_host, addr)
                .user_agent(concat!("minirag-rag-core/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| FetchError::Http(e.to_string()))?;
            let span = crate::obs::trace::client_span("GET", &current);
            let mut resp = client
                .get(&current)
                .headers(span.in_scope(crate::obs::trace::outbound_headers))
                .send()
                .instrument(span.clone())
                .await
                .map_err(|e| {
                    crate::obs::trace::client_failed(&span, "transport");
                    FetchError::Http(e.without_url().to_string())
                })?;
            crate::obs::trace::client_status(&span, resp.status().as_u16());
            let status = resp.status();
            if status.is_redirection() {
                let loc = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or(FetchError::Status(status.as_u16()))?;
                current = resp
                    .url()
                    .join(loc)
                    .map_err(|_| FetchError::InvalidUrl(loc.to_string()))?
                    .to_string();
                continue;
            }
            if !status.is_success() {
                return Err(FetchError::Status(status.as_u16()));
            }
            if resp
                .content_length()
                .is_some_and(|n| n > self.cfg.max_bytes as u64)
            {
                return Err(FetchError::TooLarge(self.cfg.max_bytes));
            }
            let content_type = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("text/plain")
                .to_string();
            let mut body = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| FetchError::Http(e.without_url().to_string()))?
            {
                if body.len() + chunk.len() > self.cfg.max_bytes {
                    return Err(FetchError::TooLarge(self.cfg.max_bytes));
                }
                body.extend_from_slice(&chunk);
            }
            return Ok(Fetched {
                final_url: current,
                content_type,
                body,
            });
        }
        Err(FetchError::Redirects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.169.254",
            "::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "100.64.0.1",
            "0.0.0.0",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn url_shapes() {
        assert_eq!(
            split_url("http://a.example:8080/x").unwrap(),
            (false, "a.example".into(), 8080)
        );
        assert_eq!(
            split_url("https://[::1]/").unwrap(),
            (true, "::1".into(), 443)
        );
        assert!(matches!(split_url("ftp://x/"), Err(FetchError::Scheme)));
        assert!(matches!(
            split_url("file:///etc/passwd"),
            Err(FetchError::Scheme)
        ));
        assert!(matches!(
            split_url("not a url"),
            Err(FetchError::InvalidUrl(_))
        ));
    }
}
