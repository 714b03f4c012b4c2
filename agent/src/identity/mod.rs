//! Who is calling, decided at the edge (DESIGN §3 step 5). Provider `jwt` verifies a
//! bearer JWT locally (see `jwt.rs`). Provider `introspect` asks
//! rag-core's `/internal/v1/principal` once per key and caches the answer: positive
//! answers for `cache_ttl_seconds`, unknown keys for `negative_cache_ttl_seconds`, many
//! concurrent misses for one key share one lookup, and the cache never holds more than
//! `cache_max_entries`. Keys are held only as SHA-256 digests.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Empty};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

pub mod jwt;
pub mod trusted;

use crate::config::IdentityConfig;
use crate::proxy::forward::{Upstream, UpstreamClient};

#[derive(Debug, Clone, Deserialize)]
pub struct Usage {
    pub chunk_total: i64,
    pub chunk_limit: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Principal {
    pub user_id: String,
    pub workspace_id: String,
    pub organization_id: String,
    pub plan: String,
    pub billing_status: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub usage: Usage,
}

#[derive(Debug, Clone)]
enum Lookup {
    Found(Arc<Principal>),
    Unknown,
    /// rag-core unreachable or answered oddly: not cached, the next request retries.
    Failed(String),
}

/// The configured provider.
pub enum Identity {
    Introspect(Box<Introspector>),
    Jwt(jwt::JwtVerifier),
    TrustedHeaders(trusted::TrustedHeaders),
}

impl Identity {
    pub async fn resolve(
        &self,
        headers: &HeaderMap,
        peer: std::net::IpAddr,
        client: &UpstreamClient,
        upstream: &Upstream,
    ) -> Outcome {
        match self {
            Self::TrustedHeaders(t) => t.resolve(headers, peer),
            Self::Introspect(i) => i.resolve(headers, client, upstream).await,
            Self::Jwt(v) => match presented_key(headers) {
                Some(t) => match v.verify_cached(t) {
                    Some(p) => Outcome::Principal(p),
                    None => Outcome::Unauthenticated,
                },
                None => Outcome::Unauthenticated,
            },
        }
    }
}

/// A connection's last resolved key. Clients keep one key for a keep-alive connection, so
/// the next request presenting the same key skips the shared cache (digest, lock, lookup).
/// It never outlives the cache entry or token it came from.
pub struct Memo {
    key: String,
    principal: Arc<Principal>,
    until: Instant,
}

impl Identity {
    /// [`Identity::resolve`] through a connection's memo; `now` is when the request arrived.
    pub async fn resolve_memo(
        &self,
        headers: &HeaderMap,
        peer: std::net::IpAddr,
        client: &UpstreamClient,
        upstream: &Upstream,
        memo: &mut Option<Memo>,
        now: Instant,
    ) -> Outcome {
        if let Self::TrustedHeaders(t) = self {
            // Cheap already, and decided by the peer address as much as by headers.
            return t.resolve(headers, peer);
        }
        if let Some(m) = memo.as_ref()
            && now < m.until
            && presents(headers, &m.key)
        {
            return Outcome::Principal(Arc::clone(&m.principal));
        }
        let Some(key) = presented_key(headers) else {
            *memo = None;
            return Outcome::Unauthenticated;
        };
        let (outcome, until) = match self {
            Self::Introspect(i) => i.resolve_key(key, client, upstream).await,
            Self::Jwt(v) => match v.verify_cached_until(key) {
                Some((p, until)) => (Outcome::Principal(p), Some(until)),
                None => (Outcome::Unauthenticated, None),
            },
            Self::TrustedHeaders(t) => (t.resolve(headers, peer), None),
        };
        *memo = match (&outcome, until) {
            (Outcome::Principal(p), Some(until)) => Some(Memo {
                key: key.to_owned(),
                principal: Arc::clone(p),
                until,
            }),
            _ => None,
        };
        outcome
    }
}

pub enum Outcome {
    Principal(Arc<Principal>),
    /// No key, or a key rag-core does not know (401 before any quota is spent).
    Unauthenticated,
    Unavailable(String),
}

struct Entry {
    cell: Arc<OnceCell<Lookup>>,
    created: Instant,
}

pub struct Introspector {
    cfg: IdentityConfig,
    token: String,
    cache: Mutex<crate::FastMap<[u8; 32], Entry>>,
}

// A constant name: looking up by `&str` would parse the name on every request.
const X_API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");

/// Whether the request presents exactly `key` (a key [`presented_key`] returned before).
/// Compares raw bytes, so the common keep-alive case skips `to_str`'s scan of a long
/// token: bytes equal to a valid key are valid themselves.
fn presents(h: &HeaderMap, key: &str) -> bool {
    let raw = match h.get(&X_API_KEY) {
        Some(v) => v.as_bytes().trim_ascii(),
        None => match h.get(http::header::AUTHORIZATION) {
            Some(v) => {
                let auth = v.as_bytes().trim_ascii();
                match auth.split_at_checked(7) {
                    Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"bearer ") => {
                        token.trim_ascii()
                    }
                    _ => return false,
                }
            }
            None => return false,
        },
    };
    raw == key.as_bytes()
}

/// The key a client presented: `Authorization: Bearer` or `X-API-Key`.
pub fn presented_key(h: &HeaderMap) -> Option<&str> {
    if let Some(v) = h.get(&X_API_KEY).and_then(|v| v.to_str().ok()) {
        return Some(v.trim()).filter(|v| !v.is_empty());
    }
    let auth = h.get(http::header::AUTHORIZATION)?.to_str().ok()?.trim();
    // By position, not a char search: the scheme and its space are 7 ASCII bytes.
    let (scheme, token) = (auth.get(..7)?, auth.get(7..)?);
    scheme
        .eq_ignore_ascii_case("bearer ")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl Introspector {
    pub fn new(cfg: IdentityConfig, token: String) -> Self {
        Self {
            cfg,
            token,
            cache: Mutex::new(crate::FastMap::default()),
        }
    }

    fn ttl(&self, l: &Lookup) -> Duration {
        match l {
            Lookup::Found(_) => Duration::from_secs(self.cfg.cache_ttl_seconds),
            _ => Duration::from_secs(self.cfg.negative_cache_ttl_seconds),
        }
    }

    /// The cache cell for a key digest and when it was created (its TTL counts from then).
    fn cell_for(&self, digest: [u8; 32]) -> (Arc<OnceCell<Lookup>>, Instant) {
        let mut cache = match self.cache.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        let now = Instant::now();
        if let Some(e) = cache.get(&digest) {
            let fresh = match e.cell.get() {
                Some(l) => now.duration_since(e.created) < self.ttl(l),
                None => true, // a lookup is under way: join it
            };
            if fresh {
                return (Arc::clone(&e.cell), e.created);
            }
        }
        if cache.len() >= self.cfg.cache_max_entries {
            cache.retain(|_, e| {
                e.cell
                    .get()
                    .is_none_or(|l| now.duration_since(e.created) < self.ttl(l))
            });
            if cache.len() >= self.cfg.cache_max_entries {
                // Still full of live entries: drop half rather than grow.
                let drop: Vec<[u8; 32]> = cache.keys().take(cache.len() / 2 + 1).copied().collect();
                for k in drop {
                    cache.remove(&k);
                }
            }
        }
        let cell = Arc::new(OnceCell::new());
        cache.insert(
            digest,
            Entry {
                cell: Arc::clone(&cell),
                created: now,
            },
        );
        (cell, now)
    }

    fn forget(&self, digest: &[u8; 32]) {
        if let Ok(mut c) = self.cache.lock() {
            c.remove(digest);
        }
    }

    pub fn cached_entries(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    pub async fn resolve(
        &self,
        headers: &HeaderMap,
        client: &UpstreamClient,
        upstream: &Upstream,
    ) -> Outcome {
        let Some(key) = presented_key(headers) else {
            return Outcome::Unauthenticated;
        };
        self.resolve_key(key, client, upstream).await.0
    }

    /// The outcome for one key, and until when a found principal stays cached.
    async fn resolve_key(
        &self,
        key: &str,
        client: &UpstreamClient,
        upstream: &Upstream,
    ) -> (Outcome, Option<Instant>) {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let (cell, created) = self.cell_for(digest);
        let lookup = cell
            .get_or_init(|| self.lookup(key, client, upstream))
            .await
            .clone();
        match lookup {
            Lookup::Found(p) => (
                Outcome::Principal(p),
                Some(created + Duration::from_secs(self.cfg.cache_ttl_seconds)),
            ),
            Lookup::Unknown => (Outcome::Unauthenticated, None),
            Lookup::Failed(why) => {
                self.forget(&digest);
                (Outcome::Unavailable(why), None)
            }
        }
    }

    async fn lookup(&self, key: &str, client: &UpstreamClient, upstream: &Upstream) -> Lookup {
        let Ok(uri) = upstream.uri_for(&self.cfg.introspect_path) else {
            return Lookup::Failed("bad introspect path".into());
        };
        let req = http::Request::get(uri)
            .header("x-api-key", key)
            .header("x-internal-token", &self.token)
            .header("x-request-id", minirag_contracts::ids::new_request_id())
            .body(
                Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed(),
            );
        let Ok(req) = req else { return Lookup::Unknown };
        let timeout = Duration::from_millis(self.cfg.timeout_ms);
        let resp = match tokio::time::timeout(timeout, client.request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Lookup::Failed(format!("principal lookup failed: {e}")),
            Err(_) => return Lookup::Failed("principal lookup timed out".into()),
        };
        let status = resp.status();
        let Ok(body) = tokio::time::timeout(timeout, resp.into_body().collect()).await else {
            return Lookup::Failed("principal lookup body timed out".into());
        };
        let Ok(body) = body else {
            return Lookup::Failed("principal lookup body failed".into());
        };
        match status.as_u16() {
            200 => match serde_json::from_slice::<Principal>(&body.to_bytes()) {
                Ok(p) => Lookup::Found(Arc::new(p)),
                Err(e) => Lookup::Failed(format!("principal response unreadable: {e}")),
            },
            401 => Lookup::Unknown,
            403 => Lookup::Failed(
                "rag-core refused the internal token (check MINIRAG_INTERNAL_TOKEN)".into(),
            ),
            s => Lookup::Failed(format!("principal lookup answered HTTP {s}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_either_header() {
        let mut h = HeaderMap::new();
        assert!(presented_key(&h).is_none());
        h.insert("authorization", "Bearer  mrk_x ".parse().unwrap());
        assert_eq!(presented_key(&h), Some("mrk_x"));
        h.insert("x-api-key", "mrk_y".parse().unwrap());
        assert_eq!(presented_key(&h), Some("mrk_y"));
        let mut h = HeaderMap::new();
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert!(presented_key(&h).is_none());
        let mut with_x_api_key = h.clone();
        with_x_api_key.insert("x-api-key", " tok ".parse().unwrap());
        assert!(presents(&with_x_api_key, "tok"));
        for (auth, key) in [
            ("BEARER tok", Some("tok")),
            ("bearer\ttok", None),
            ("Bearertok", None),
            ("Bearer ", None),
            ("Bearer", None),
            ("  Bearer tok  ", Some("tok")),
        ] {
            h.insert("authorization", auth.parse().unwrap());
            assert_eq!(presented_key(&h), key, "{auth:?}");
            // The memo's raw comparison agrees with the parse.
            assert_eq!(presents(&h, "tok"), key == Some("tok"), "{auth:?}");
            assert!(!presents(&h, "other"));
        }
    }
}
