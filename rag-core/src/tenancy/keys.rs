//! API key format and hashing.
//!
//! A key is `mrk_<prefix>_<secret>`: the prefix (12 hex) finds the row by an indexed
//! lookup, the SHA-256 of the whole key is what is stored, and the key itself is shown
//! exactly once, at creation.

use sha2::{Digest, Sha256};

use crate::obs::context::random_hex;

pub struct NewKey {
    pub key: String,
    pub prefix: String,
    pub hash: String,
}

pub fn generate() -> NewKey {
    let prefix = random_hex(6);
    let key = format!("mrk_{prefix}_{}", random_hex(24));
    let hash = hash_key(&key);
    NewKey { key, prefix, hash }
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The lookup prefix of a well-formed key, or None (no database lookup for junk).
pub fn prefix_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("mrk_")?;
    let (prefix, secret) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(prefix, 12) && hex(secret, 48)).then_some(prefix)
}

/// Compares two equal-length hex digests without an early exit.
pub fn digest_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_hash() {
        let k = generate();
        assert_eq!(prefix_of(&k.key), Some(k.prefix.as_str()));
        assert!(digest_eq(&hash_key(&k.key), &k.hash));
        assert!(prefix_of("mrk_short_x").is_none());
        assert!(prefix_of("Bearer something").is_none());
    }
}
