//! Identity from a JWT (`Authorization: Bearer <jwt>`): HS256, RS256 or ES256, keys from a
//! JWKS file, `exp` required and `nbf`/`iss`/`aud` checked, claims mapped to the principal.
//! The agent verifies; it never issues tokens.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::Value;

use super::{Principal, Usage};
use crate::config::JwtConfig;

#[derive(Debug, Clone)]
enum Key {
    Hs256(ring::hmac::Key),
    Rs256 { n: Vec<u8>, e: Vec<u8> },
    Es256(Vec<u8>),
}

#[derive(Debug, Clone)]
struct NamedKey {
    kid: Option<String>,
    key: Key,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    crv: Option<String>,
    k: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

fn b64(field: &str, v: &Option<String>) -> Result<Vec<u8>, String> {
    let s = v.as_deref().ok_or_else(|| format!("JWK lacks {field}"))?;
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| format!("JWK {field}: {e}"))
}

pub struct JwtVerifier {
    cfg: JwtConfig,
    keys: Vec<NamedKey>,
    /// Verified tokens (by SHA-256 digest) until their `exp`, so a client reusing one
    /// token costs one hash lookup instead of a signature check. Bounded like the
    /// introspection cache.
    verified: Mutex<VerifiedTokens>,
}

/// Token digest → (principal, `exp`).
type VerifiedTokens = crate::FastMap<[u8; 32], (Arc<Principal>, i64)>;

const VERIFIED_MAX: usize = 10_000;

#[derive(Debug, PartialEq)]
pub enum JwtError {
    Malformed,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuerOrAudience,
    MissingClaim(String),
}

impl JwtVerifier {
    pub fn load(cfg: &JwtConfig) -> Result<Self, String> {
        let text = std::fs::read_to_string(&cfg.jwks_file)
            .map_err(|e| format!("{}: {e}", cfg.jwks_file.display()))?;
        Self::from_jwks(cfg, &text).map_err(|e| format!("{}: {e}", cfg.jwks_file.display()))
    }

    pub fn from_jwks(cfg: &JwtConfig, text: &str) -> Result<Self, String> {
        let jwks: Jwks =
            serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        for k in jwks.keys {
            let key = match (k.kty.as_str(), k.crv.as_deref()) {
                ("oct", _) => Key::Hs256(ring::hmac::Key::new(
                    ring::hmac::HMAC_SHA256,
                    &b64("k", &k.k)?,
                )),
                ("RSA", _) => Key::Rs256 {
                    n: b64("n", &k.n)?,
                    e: b64("e", &k.e)?,
                },
                ("EC", Some("P-256")) => {
                    let mut point = vec![0x04];
                    point.extend(b64("x", &k.x)?);
                    point.extend(b64("y", &k.y)?);
                    Key::Es256(point)
                }
                (kty, crv) => {
                    return Err(format!(
                        "unsupported key type {kty} {crv:?} (HS256 oct, RS256 RSA, ES256 EC P-256)"
                    ));
                }
            };
            keys.push(NamedKey { kid: k.kid, key });
        }
        if keys.is_empty() {
            return Err("the JWKS has no keys".into());
        }
        Ok(Self {
            cfg: cfg.clone(),
            keys,
            verified: Mutex::new(crate::FastMap::default()),
        })
    }

    /// [`verify`](Self::verify) with a cache of verified tokens; None for any failure.
    /// [`Self::verify_cached`], with the instant the token stops being accepted (never later
    /// than the cache's own check would allow).
    pub fn verify_cached_until(&self, token: &str) -> Option<(Arc<Principal>, Instant)> {
        let (principal, exp) = self.verify_cached_exp(token)?;
        let left = u64::try_from(exp + self.cfg.leeway_seconds as i64 - unix_now()).unwrap_or(0);
        Some((principal, Instant::now() + Duration::from_secs(left)))
    }

    pub fn verify_cached(&self, token: &str) -> Option<Arc<Principal>> {
        self.verify_cached_exp(token).map(|(p, _)| p)
    }

    /// The principal of a valid token and its `exp` (unix seconds).
    fn verify_cached_exp(&self, token: &str) -> Option<(Arc<Principal>, i64)> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = unix_now();
        if let Ok(map) = self.verified.lock()
            && let Some((p, exp)) = map.get(&digest)
            && now <= *exp + self.cfg.leeway_seconds as i64
        {
            return Some((Arc::clone(p), *exp));
        }
        let principal = Arc::new(self.verify(token).ok()?);
        let exp = token_exp(token).unwrap_or(now);
        if let Ok(mut map) = self.verified.lock() {
            if map.len() >= VERIFIED_MAX {
                map.retain(|_, (_, e)| now <= *e);
                if map.len() >= VERIFIED_MAX {
                    map.clear();
                }
            }
            map.insert(digest, (Arc::clone(&principal), exp));
        }
        Some((principal, exp))
    }

    pub fn verify(&self, token: &str) -> Result<Principal, JwtError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header: Value = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(JwtError::Malformed)?;
        let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| JwtError::Malformed)?;
        let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
        let alg = header["alg"].as_str().ok_or(JwtError::Malformed)?;
        let kid = header["kid"].as_str();
        // The key decides the algorithm: a token cannot pick `none` or switch RS256 to HS256.
        let candidates = self
            .keys
            .iter()
            .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
            .filter(|k| {
                matches!(
                    (&k.key, alg),
                    (Key::Hs256(_), "HS256")
                        | (Key::Rs256 { .. }, "RS256")
                        | (Key::Es256(_), "ES256")
                )
            });
        let mut any = false;
        let mut ok = false;
        for k in candidates {
            any = true;
            ok = match &k.key {
                Key::Hs256(key) => ring::hmac::verify(key, signed, &sig).is_ok(),
                Key::Rs256 { n, e } => signature::RsaPublicKeyComponents { n, e }
                    .verify(&signature::RSA_PKCS1_2048_8192_SHA256, signed, &sig)
                    .is_ok(),
                Key::Es256(point) => {
                    UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                        .verify(signed, &sig)
                        .is_ok()
                }
            };
            if ok {
                break;
            }
        }
        if !any {
            return Err(JwtError::UnknownKey);
        }
        if !ok {
            return Err(JwtError::BadSignature);
        }
        let claims: Value = URL_SAFE_NO_PAD
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(JwtError::Malformed)?;
        self.check_times(&claims)?;
        if let Some(iss) = &self.cfg.issuer
            && claims["iss"].as_str() != Some(iss)
        {
            return Err(JwtError::WrongIssuerOrAudience);
        }
        if let Some(aud) = &self.cfg.audience {
            let matches = match &claims["aud"] {
                Value::String(a) => a == aud,
                Value::Array(list) => list.iter().any(|a| a.as_str() == Some(aud)),
                _ => false,
            };
            if !matches {
                return Err(JwtError::WrongIssuerOrAudience);
            }
        }
        let c = &self.cfg.claims;
        let get = |name: &str| claims[name].as_str().map(str::to_owned);
        let need = |name: &str| get(name).ok_or_else(|| JwtError::MissingClaim(name.to_string()));
        Ok(Principal {
            user_id: need(&c.user_id)?,
            workspace_id: need(&c.workspace_id)?,
            organization_id: need(&c.organization_id)?,
            plan: get(&c.plan).unwrap_or_else(|| self.cfg.default_plan.clone()),
            billing_status: get(&c.billing_status).unwrap_or_else(|| "active".into()),
            scopes: Vec::new(),
            // Storage usage is only known to rag-core; the edge skips that check.
            usage: Usage {
                chunk_total: 0,
                chunk_limit: 0,
            },
        })
    }

    fn check_times(&self, claims: &Value) -> Result<(), JwtError> {
        let now = unix_now();
        let leeway = self.cfg.leeway_seconds as i64;
        let exp = claims["exp"]
            .as_i64()
            .ok_or(JwtError::MissingClaim("exp".into()))?;
        if now > exp + leeway {
            return Err(JwtError::Expired);
        }
        if let Some(nbf) = claims["nbf"].as_i64()
            && now + leeway < nbf
        {
            return Err(JwtError::NotYetValid);
        }
        Ok(())
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `exp` of a token already verified.
fn token_exp(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims["exp"].as_i64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{EcdsaKeyPair, KeyPair};

    fn cfg() -> JwtConfig {
        JwtConfig::default()
    }

    fn enc(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn claims(exp_offset: i64) -> Value {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        serde_json::json!({"sub": "usr_1", "workspace_id": "ws_1", "organization_id": "org_1", "plan": "pro", "exp": now + exp_offset})
    }

    fn hs256(secret: &[u8], c: &Value) -> String {
        let input = format!(
            "{}.{}",
            enc(&serde_json::json!({"alg": "HS256", "typ": "JWT"})),
            enc(c)
        );
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
            input.as_bytes(),
        );
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    #[test]
    fn hs256_valid_expired_tampered_and_alg_confusion() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let jwks =
            serde_json::json!({"keys": [{"kty": "oct", "k": URL_SAFE_NO_PAD.encode(secret)}]})
                .to_string();
        let v = JwtVerifier::from_jwks(&cfg(), &jwks).unwrap();
        let p = v.verify(&hs256(secret, &claims(60))).unwrap();
        assert_eq!(
            (p.workspace_id.as_str(), p.plan.as_str(), p.user_id.as_str()),
            ("ws_1", "pro", "usr_1")
        );
        assert_eq!(
            v.verify(&hs256(secret, &claims(-120))).unwrap_err(),
            JwtError::Expired
        );
        assert_eq!(
            v.verify(&hs256(b"another-secret-another-secret!!!", &claims(60)))
                .unwrap_err(),
            JwtError::BadSignature
        );
        let none = format!(
            "{}.{}.",
            enc(&serde_json::json!({"alg": "none"})),
            enc(&claims(60))
        );
        assert_eq!(v.verify(&none).unwrap_err(), JwtError::UnknownKey);
        assert_eq!(
            v.verify("not.a.jwt.at-all").unwrap_err(),
            JwtError::Malformed
        );
        let mut c = claims(60);
        c.as_object_mut().unwrap().remove("workspace_id");
        assert_eq!(
            v.verify(&hs256(secret, &c)).unwrap_err(),
            JwtError::MissingClaim("workspace_id".into())
        );
    }

    #[test]
    fn rs256_from_an_openssl_key() {
        // PKCS#1 DER, which ring reads with `from_der`.
        let out = std::process::Command::new("sh")
            .args(["-c", "openssl genrsa 2048 2>/dev/null | openssl rsa -traditional -outform DER 2>/dev/null"])
            .output();
        let Some(out) = out
            .ok()
            .filter(|o| o.status.success() && !o.stdout.is_empty())
        else {
            assert!(
                std::env::var_os("CI").is_none(),
                "openssl is needed for this test in CI"
            );
            eprintln!("skipping: openssl is not installed");
            return;
        };
        let pair = signature::RsaKeyPair::from_der(&out.stdout).unwrap();
        let comps: signature::RsaPublicKeyComponents<Vec<u8>> = pair.public().into();
        let (n, e) = (comps.n, comps.e);
        let jwks = serde_json::json!({"keys": [{"kty": "RSA", "n": URL_SAFE_NO_PAD.encode(&n), "e": URL_SAFE_NO_PAD.encode(&e)}]}).to_string();
        let v = JwtVerifier::from_jwks(&cfg(), &jwks).unwrap();
        let input = format!(
            "{}.{}",
            enc(&serde_json::json!({"alg": "RS256"})),
            enc(&claims(60))
        );
        let mut sig = vec![0; pair.public().modulus_len()];
        pair.sign(
            &signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            input.as_bytes(),
            &mut sig,
        )
        .unwrap();
        let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig));
        assert_eq!(v.verify(&token).unwrap().workspace_id, "ws_1");
        // The same token relabelled HS256 must not verify against anything.
        let relabelled = format!(
            "{}.{}.{}",
            enc(&serde_json::json!({"alg": "HS256"})),
            enc(&claims(60)),
            URL_SAFE_NO_PAD.encode(&sig)
        );
        assert_eq!(v.verify(&relabelled).unwrap_err(), JwtError::UnknownKey);
    }

    #[test]
    fn es256_from_a_generated_key() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        let point = pair.public_key().as_ref();
        let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])}]})
        .to_string();
        let v = JwtVerifier::from_jwks(&cfg(), &jwks).unwrap();
        let input = format!(
            "{}.{}",
            enc(&serde_json::json!({"alg": "ES256", "kid": "k1"})),
            enc(&claims(60))
        );
        let sig = pair.sign(&rng, input.as_bytes()).unwrap();
        let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
        assert_eq!(v.verify(&token).unwrap().organization_id, "org_1");
        let other_kid = format!(
            "{}.{}.{}",
            enc(&serde_json::json!({"alg": "ES256", "kid": "k2"})),
            enc(&claims(60)),
            URL_SAFE_NO_PAD.encode(sig.as_ref())
        );
        assert_eq!(v.verify(&other_kid).unwrap_err(), JwtError::UnknownKey);
    }
}
