//! CORS for browsers calling the API from another origin (`cors:` in the config).
//!
//! Off by default: with no `allowed_origins` no response carries a CORS header, so only
//! same-origin pages (or non-browser clients) can read answers. When on, only the listed
//! origins are ever named in `Access-Control-Allow-Origin`; the request's `Origin` is never
//! echoed on its own authority, because echoing it would let any site read responses
//! (and, with credentials, act as the user).
//!
//! The layer sits inside the request layer, so a preflight gets a request id, security
//! headers, an access-log line and, when refused, the usual `{error, message, request_id}`
//! body. Preflights are answered here, before any handler runs, so they never need an API
//! key (browsers do not send credentials on them).

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::ApiError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`, `http://localhost:3000`) or `*`.
    /// Empty = no CORS headers at all (same-origin only).
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Vec<String>,
    pub allowed_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    /// Lets the browser send cookies / HTTP auth; never together with `*`.
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer.
    pub max_age_seconds: u64,
}

impl Default for CorsConfig {
    fn default() -> Self {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Self {
            allowed_origins: Vec::new(),
            allowed_methods: owned(&["GET", "POST", "PUT", "PATCH", "DELETE"]),
            allowed_headers: owned(&[
                "authorization",
                "content-type",
                "x-api-key",
                "x-request-id",
                "traceparent",
                "tracestate",
            ]),
            expose_headers: owned(&[
                "x-request-id",
                "retry-after",
                "ratelimit",
                "ratelimit-policy",
            ]),
            allow_credentials: false,
            max_age_seconds: 600,
        }
    }
}

impl CorsConfig {
    /// Checks every entry; the message names the key and the bad entry.
    pub fn validate(&self) -> Result<(), String> {
        CorsPolicy::from_config(self).map(|_| ())
    }
}

#[derive(Debug, Clone)]
enum Origins {
    /// CORS off: no headers, preflights refused.
    None,
    /// `*`: any origin, answered with the literal `*` (never with the caller's origin).
    Any,
    /// Canonical (lowercase, default port dropped) origins.
    List(HashSet<String>),
}

/// The validated configuration with its header values prepared once.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    origins: Origins,
    methods: Vec<Method>,
    headers: HashSet<HeaderName>,
    allow_methods: HeaderValue,
    allow_headers: HeaderValue,
    expose_headers: Option<HeaderValue>,
    max_age: HeaderValue,
    credentials: bool,
}

/// `Access-Control-Request-Headers` lists longer than this are refused rather than
/// parsed: no browser sends hundreds of custom headers.
const MAX_REQUESTED_HEADERS: usize = 64;

impl CorsPolicy {
    pub fn from_config(cfg: &CorsConfig) -> Result<Self, String> {
        let origins = if cfg.allowed_origins.is_empty() {
            Origins::None
        } else if cfg.allowed_origins.iter().any(|o| o.trim() == "*") {
            if cfg.allowed_origins.len() > 1 {
                return Err(
                    "cors.allowed_origins: \"*\" allows every origin; list it alone".to_string(),
                );
            }
            if cfg.allow_credentials {
                return Err(
                    "cors.allow_credentials cannot be true when cors.allowed_origins is \"*\": \
                     list the exact origins that may send credentials"
                        .to_string(),
                );
            }
            Origins::Any
        } else {
            let mut set = HashSet::new();
            for o in &cfg.allowed_origins {
                set.insert(canonical_origin(o).map_err(|e| format!("cors.allowed_origins: {e}"))?);
            }
            Origins::List(set)
        };

        let mut methods = Vec::new();
        for m in &cfg.allowed_methods {
            let m = m.trim().to_ascii_uppercase();
            if m == "*" || m.is_empty() {
                return Err("cors.allowed_methods: list methods by name (GET, POST, …)".into());
            }
            let method = Method::from_bytes(m.as_bytes())
                .map_err(|_| format!("cors.allowed_methods: {m:?} is not an HTTP method"))?;
            if !methods.contains(&method) {
                methods.push(method);
            }
        }
        let header_list = |key: &str, list: &[String]| -> Result<Vec<HeaderName>, String> {
            let mut out: Vec<HeaderName> = Vec::new();
            for h in list {
                let h = h.trim().to_ascii_lowercase();
                // `*` would mean "any header" only without credentials, and hides what
                // the API really accepts; names are clearer and always correct.
                if h == "*" || h.is_empty() {
                    return Err(format!("cors.{key}: list header names, not {h:?}"));
                }
                let name = HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("cors.{key}: {h:?} is not a header name"))?;
                if !out.contains(&name) {
                    out.push(name);
                }
            }
            Ok(out)
        };
        let headers = header_list("allowed_headers", &cfg.allowed_headers)?;
        let expose = header_list("expose_headers", &cfg.expose_headers)?;

        let join = |items: Vec<&str>| {
            // Built only from validated tokens, so the value is always legal.
            HeaderValue::from_str(&items.join(", ")).map_err(|e| format!("cors: {e}"))
        };
        Ok(Self {
            allow_methods: join(methods.iter().map(Method::as_str).collect())?,
            allow_headers: join(headers.iter().map(HeaderName::as_str).collect())?,
            expose_headers: if expose.is_empty() {
                None
            } else {
                Some(join(expose.iter().map(HeaderName::as_str).collect())?)
            },
            max_age: HeaderValue::from(cfg.max_age_seconds),
            credentials: cfg.allow_credentials,
            origins,
            methods,
            headers: headers.into_iter().collect(),
        })
    }

    /// CORS off, for when the configuration cannot be used (it was validated at startup,
    /// so this only guards against a programming error): fail closed.
    pub fn disabled() -> Self {
        Self {
            origins: Origins::None,
            methods: Vec::new(),
            headers: HashSet::new(),
            allow_methods: HeaderValue::from_static(""),
            allow_headers: HeaderValue::from_static(""),
            expose_headers: None,
            max_age: HeaderValue::from_static("0"),
            credentials: false,
        }
    }

    fn enabled(&self) -> bool {
        !matches!(self.origins, Origins::None)
    }

    /// The `Access-Control-Allow-Origin` value for this request's origin, if allowed.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        match &self.origins {
            Origins::None => None,
            Origins::Any => Some(HeaderValue::from_static("*")),
            Origins::List(set) => {
                let o = origin.to_str().ok()?.to_ascii_lowercase();
                // Answer with our configured spelling, not the caller's bytes.
                set.get(&o).and_then(|c| HeaderValue::from_str(c).ok())
            }
        }
    }

    fn method_allowed(&self, requested: &HeaderValue) -> bool {
        requested
            .to_str()
            .ok()
            .and_then(|m| Method::from_bytes(m.trim().as_bytes()).ok())
            .is_some_and(|m| self.methods.contains(&m))
    }

    /// The first requested header that is not allowed, if any.
    fn header_refused(&self, requested: Option<&HeaderValue>) -> Option<String> {
        let v = requested?;
        let Ok(list) = v.to_str() else {
            return Some("(unreadable header list)".into());
        };
        let names: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if names.len() > MAX_REQUESTED_HEADERS {
            return Some("(too many headers)".into());
        }
        names.into_iter().find_map(|n| {
            let ok = HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
                .is_ok_and(|h| self.headers.contains(&h));
            // Bounded: the name goes into the error message.
            (!ok).then(|| n.chars().take(64).collect())
        })
    }
}

/// Lowercases scheme and host and drops a default port, which is how browsers
/// serialize the `Origin` header; anything that is not a bare origin is refused.
fn canonical_origin(raw: &str) -> Result<String, String> {
    let o = raw.trim().to_ascii_lowercase();
    let Some((scheme, rest)) = o.split_once("://") else {
        return Err(format!(
            "{raw:?} is not an origin (expected scheme://host[:port], e.g. https://app.example.com)"
        ));
    };
    let default_port = match scheme {
        "https" => "443",
        "http" => "80",
        _ => return Err(format!("{raw:?}: only http and https origins are allowed")),
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', '*', ' ']) {
        return Err(format!(
            "{raw:?} is not a bare origin: no path, query, user or wildcard (e.g. https://app.example.com)"
        ));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{raw:?}: unclosed [ in IPv6 host"))?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{raw:?}: bad IPv6 address"));
        }
        match after {
            "" => (format!("[{addr}]"), None),
            p => match p.strip_prefix(':') {
                Some(p) => (format!("[{addr}]"), Some(p)),
                None => return Err(format!("{raw:?}: unexpected text after the host")),
            },
        }
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    let plain_host = |h: &str| {
        h.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    };
    if host.is_empty() || (!host.starts_with('[') && !plain_host(&host)) {
        return Err(format!(
            "{raw:?}: bad host (internationalized names go in punycode, xn--…)"
        ));
    }
    match port {
        None => Ok(format!("{scheme}://{host}")),
        Some(p) if p == default_port => Ok(format!("{scheme}://{host}")),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(format!("{scheme}://{host}:{n}")),
            _ => Err(format!("{raw:?}: bad port")),
        },
    }
}

/// Adds `value` to `Vary` unless an existing `Vary` already names it (or is `*`).
fn add_vary(h: &mut HeaderMap, value: &'static str) {
    let present = h.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .map(str::trim)
                .any(|t| t == "*" || t.eq_ignore_ascii_case(value))
        })
    });
    if !present {
        h.append(header::VARY, HeaderValue::from_static(value));
    }
}

/// The middleware. Routed with `from_fn_with_state(Arc<CorsPolicy>, handle)`.
pub async fn handle(State(policy): State<Arc<CorsPolicy>>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let preflight = req.method() == Method::OPTIONS
        && origin.is_some()
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        super::middleware::remember_route(&req);
        return answer_preflight(&policy, req.headers(), origin.as_ref());
    }
    let mut resp = next.run(req).await;
    if !policy.enabled() {
        return resp;
    }
    let h = resp.headers_mut();
    // Caches must key on Origin even when this caller's origin got no CORS headers,
    // or a shared cache could hand an allowed origin's response to another one.
    add_vary(h, "origin");
    if let Some(allowed) = origin.as_ref().and_then(|o| policy.allow_origin(o)) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        if policy.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &policy.expose_headers {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
    resp
}

fn answer_preflight(
    policy: &CorsPolicy,
    headers: &HeaderMap,
    origin: Option<&HeaderValue>,
) -> Response {
    let refuse = |code: &'static str, message: String| {
        let mut r = ApiError::new(StatusCode::FORBIDDEN, code, message).into_response();
        if policy.enabled() {
            add_vary(r.headers_mut(), "origin");
        }
        r
    };
    let Some(allowed) = origin.and_then(|o| policy.allow_origin(o)) else {
        // The origin is deliberately not echoed: it is the caller's text.
        let why = if policy.enabled() {
            "this origin is not in cors.allowed_origins"
        } else {
            "cross-origin requests are not enabled on this server (cors.allowed_origins is empty)"
        };
        return refuse("cors_origin_not_allowed", why.to_string());
    };
    let method_ok = headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .is_some_and(|m| policy.method_allowed(m));
    if !method_ok {
        return refuse(
            "cors_method_not_allowed",
            format!(
                "the requested method is not in cors.allowed_methods ({})",
                policy.allow_methods.to_str().unwrap_or_default()
            ),
        );
    }
    if let Some(name) = policy.header_refused(headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS)) {
        return refuse(
            "cors_header_not_allowed",
            format!("request header {name:?} is not in cors.allowed_headers"),
        );
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
    if policy.credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        policy.allow_methods.clone(),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        policy.allow_headers.clone(),
    );
    h.insert(header::ACCESS_CONTROL_MAX_AGE, policy.max_age.clone());
    add_vary(h, "origin");
    add_vary(h, "access-control-request-method");
    add_vary(h, "access-control-request-headers");
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(origins: &[&str]) -> CorsConfig {
        CorsConfig {
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            ..CorsConfig::default()
        }
    }

    #[test]
    fn origins_are_canonicalised_like_browsers_send_them() {
        assert_eq!(
            canonical_origin("HTTPS://App.Example.com:443").unwrap(),
            "https://app.example.com"
        );
        assert_eq!(
            canonical_origin("http://localhost:3000").unwrap(),
            "http://localhost:3000"
        );
        assert_eq!(canonical_origin("http://[::1]:80").unwrap(), "http://[::1]");
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://*.example.com",
            "ftp://example.com",
            "null",
            "https://user@example.com",
            "https://example.com:0",
            "https://example.com:99999",
            "https://",
            "https://exa mple.com",
        ] {
            assert!(canonical_origin(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn wildcard_with_credentials_is_refused() {
        let mut c = cfg(&["*"]);
        assert!(c.validate().is_ok());
        c.allow_credentials = true;
        let e = c.validate().unwrap_err();
        assert!(e.contains("allow_credentials"), "{e}");
        assert!(cfg(&["*", "https://a.example"]).validate().is_err());
    }

    #[test]
    fn bad_lists_name_the_key() {
        let mut c = cfg(&["https://a.example"]);
        c.allowed_methods = vec!["G E T".into()];
        assert!(c.validate().unwrap_err().contains("cors.allowed_methods"));
        let mut c = cfg(&["https://a.example"]);
        c.allowed_headers = vec!["*".into()];
        assert!(c.validate().unwrap_err().contains("cors.allowed_headers"));
        let mut c = cfg(&["https://a.example"]);
        c.expose_headers = vec!["bad header".into()];
        assert!(c.validate().unwrap_err().contains("cors.expose_headers"));
    }

    #[test]
    fn only_listed_origins_are_named() {
        let p = CorsPolicy::from_config(&cfg(&["https://app.example.com"])).unwrap();
        let hv = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(
            p.allow_origin(&hv("https://app.example.com")).unwrap(),
            "https://app.example.com"
        );
        assert!(p.allow_origin(&hv("https://evil.example.com")).is_none());
        assert!(
            p.allow_origin(&hv("https://app.example.com.evil.test"))
                .is_none()
        );
        assert!(p.allow_origin(&hv("null")).is_none());
        let any = CorsPolicy::from_config(&cfg(&["*"])).unwrap();
        assert_eq!(any.allow_origin(&hv("https://x.test")).unwrap(), "*");
        let off = CorsPolicy::from_config(&cfg(&[])).unwrap();
        assert!(!off.enabled());
        assert!(off.allow_origin(&hv("https://x.test")).is_none());
    }

    #[test]
    fn requested_methods_and_headers_are_checked() {
        let p = CorsPolicy::from_config(&cfg(&["https://a.example"])).unwrap();
        assert!(p.method_allowed(&HeaderValue::from_static("POST")));
        assert!(p.method_allowed(&HeaderValue::from_static("PUT")));
        assert!(!p.method_allowed(&HeaderValue::from_static("TRACE")));
        assert_eq!(
            p.header_refused(Some(&HeaderValue::from_static(
                "Authorization, content-type,traceparent"
            ))),
            None
        );
        assert_eq!(
            p.header_refused(Some(&HeaderValue::from_static("content-type, x-evil"))),
            Some("x-evil".to_string())
        );
        assert_eq!(p.header_refused(None), None);
    }

    #[test]
    fn vary_is_added_once() {
        let mut h = HeaderMap::new();
        h.insert(
            header::VARY,
            HeaderValue::from_static("Accept-Encoding, Origin"),
        );
        add_vary(&mut h, "origin");
        assert_eq!(h.get_all(header::VARY).iter().count(), 1);
        add_vary(&mut h, "access-control-request-method");
        assert_eq!(h.get_all(header::VARY).iter().count(), 2);
    }
}
