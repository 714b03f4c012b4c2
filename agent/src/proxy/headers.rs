//! Header hygiene in both directions.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::SecurityHeaders;

/// Hop-by-hop headers (RFC 9110 §7.6.1) are about one connection and never forwarded.
/// Names built at compile time: removing by `&str` would hash a parsed name per call.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Identity the agent or rag-core asserts; a client sending them is trying to spoof.
const CLIENT_FORBIDDEN: [HeaderName; 1] = [HeaderName::from_static("x-internal-token")];
const CLIENT_FORBIDDEN_PREFIX: &str = "x-minirag-";

/// Whether a raw field name is hop-by-hop (for heads handled as bytes).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|n| n.as_str().as_bytes().eq_ignore_ascii_case(name))
}

pub fn is_upgrade(h: &HeaderMap) -> bool {
    h.get(header::UPGRADE).is_some()
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Removes hop-by-hop headers, including any the Connection header names. For an
/// upgrade, `Connection: upgrade` and `Upgrade` are kept: they are the point.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = if !h.contains_key(header::CONNECTION) {
        Vec::new()
    } else {
        h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| !(keep_upgrade && n == header::UPGRADE))
            .collect()
    };
    for n in named {
        h.remove(n);
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::UPGRADE);
    }
}

pub fn strip_client_identity(h: &mut HeaderMap) {
    for n in &CLIENT_FORBIDDEN {
        h.remove(n);
    }
    let spoofed: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with(CLIENT_FORBIDDEN_PREFIX))
        .cloned()
        .collect();
    for n in spoofed {
        h.remove(n);
    }
}

/// Pre-validated header values, built once per config.
#[derive(Debug, Clone)]
pub struct SecurityHeaderSet {
    always: Vec<(HeaderName, HeaderValue)>,
    hsts: Option<HeaderValue>,
    api_cache_control: Option<HeaderValue>,
}

impl SecurityHeaderSet {
    pub fn new(cfg: &SecurityHeaders) -> Result<Self, String> {
        let value = |name: &str, v: &str| {
            HeaderValue::from_str(v)
                .map_err(|_| format!("security_headers.{name}: invalid header value"))
        };
        if !cfg.enabled {
            return Ok(Self {
                always: Vec::new(),
                hsts: None,
                api_cache_control: None,
            });
        }
        let mut always = vec![(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        )];
        for (name, header_name, v) in [
            (
                "content_security_policy",
                header::CONTENT_SECURITY_POLICY,
                &cfg.content_security_policy,
            ),
            ("frame_options", header::X_FRAME_OPTIONS, &cfg.frame_options),
            (
                "referrer_policy",
                header::REFERRER_POLICY,
                &cfg.referrer_policy,
            ),
            (
                "permissions_policy",
                HeaderName::from_static("permissions-policy"),
                &cfg.permissions_policy,
            ),
        ] {
            if !v.is_empty() {
                always.push((header_name, value(name, v)?));
            }
        }
        let opt = |name: &str, v: &str| {
            if v.is_empty() {
                Ok(None)
            } else {
                value(name, v).map(Some)
            }
        };
        Ok(Self {
            always,
            hsts: opt("strict_transport_security", &cfg.strict_transport_security)?,
            api_cache_control: opt("api_cache_control", &cfg.api_cache_control)?,
        })
    }

    /// Each header that applies to a response (HSTS only over TLS, the API cache
    /// policy only on API routes). They are defaults: an upstream's own value wins.
    pub fn for_each(&self, tls: bool, api: bool, mut f: impl FnMut(&HeaderName, &HeaderValue)) {
        for (k, v) in &self.always {
            f(k, v);
        }
        if tls && let Some(v) = &self.hsts {
            f(&header::STRICT_TRANSPORT_SECURITY, v);
        }
        if api && let Some(v) = &self.api_cache_control {
            f(&header::CACHE_CONTROL, v);
        }
    }
}
