//! The 32-byte backup key: where it is read from, which encodings are accepted, and how
//! it stays out of every message (errors name the setting, never the value).

use std::fmt;
use std::io::{Read, Write};
use std::path::Path;

use base64::Engine as _;

pub const ENV_KEY: &str = "RAG_CORE_BACKUP_KEY";
pub const ENV_KEY_FILE: &str = "RAG_CORE_BACKUP_KEY_FILE";
pub const FLAG_KEY_FILE: &str = "--key-file";
pub const CONFIG_KEY_FILE: &str = "backup.key_file";

/// A key file is a line of text; anything bigger is the wrong file (say, a backup).
const MAX_KEY_FILE_BYTES: u64 = 4096;
/// A random 32-byte key has about 30 distinct byte values; fewer than this means a
/// pattern (all zeros, a short string repeated) typed in by hand.
const MIN_DISTINCT_BYTES: usize = 16;

const GENERATE_HINT: &str = "generate one with `rag-core backup keygen`";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no backup key: pass --key-file FILE, or set RAG_CORE_BACKUP_KEY_FILE, RAG_CORE_BACKUP_KEY or backup.key_file ({GENERATE_HINT})"
    )]
    Missing,
    #[error("{setting}: cannot read the key file {path}: {error}")]
    Read {
        setting: &'static str,
        path: String,
        error: std::io::Error,
    },
    #[error("{setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
    #[error("cannot write the key file {path}: {error}")]
    Write { path: String, error: std::io::Error },
    #[error("the system random number generator failed")]
    Random,
}

/// Never printed: `Debug` shows the fingerprint only, and there is no `Display`.
pub struct BackupKey([u8; 32]);

impl fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackupKey(fingerprint {})", self.fingerprint_hex())
    }
}

impl Drop for BackupKey {
    fn drop(&mut self) {
        // Best effort without `unsafe`: black_box keeps the stores from being optimised away.
        self.0 = [0u8; 32];
        std::hint::black_box(&self.0);
    }
}

impl BackupKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn generate() -> Result<Self, KeyError> {
        let mut k = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
            .map_err(|_| KeyError::Random)?;
        Ok(Self(k))
    }

    /// 64 hex digits or base64 (standard or URL-safe, padded or not) of 32 bytes, with
    /// surrounding whitespace ignored.
    pub fn parse(text: &str, setting: &'static str) -> Result<Self, KeyError> {
        let invalid = |reason: String| KeyError::Invalid { setting, reason };
        let t = text.trim();
        if t.is_empty() {
            return Err(invalid(format!("is empty; {GENERATE_HINT}")));
        }
        let decoded = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t).ok()
        } else {
            [
                &base64::engine::general_purpose::STANDARD,
                &base64::engine::general_purpose::STANDARD_NO_PAD,
                &base64::engine::general_purpose::URL_SAFE,
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ]
            .into_iter()
            .find_map(|e| e.decode(t).ok())
        };
        let Some(bytes) = decoded.and_then(|d| <[u8; 32]>::try_from(d).ok()) else {
            // Only text that is not a key is inspected for example values: a random base64
            // key may well contain "todo" or "xxx" by chance.
            if looks_like_placeholder(t) {
                return Err(invalid(format!(
                    "holds a placeholder value, not a key; {GENERATE_HINT}"
                )));
            }
            return Err(invalid(format!(
                "must be 64 hex characters or base64 of 32 bytes (found {} characters); {GENERATE_HINT}",
                t.chars().count()
            )));
        };
        let mut seen = [false; 256];
        for b in bytes {
            seen[usize::from(b)] = true;
        }
        if seen.iter().filter(|s| **s).count() < MIN_DISTINCT_BYTES {
            return Err(invalid(format!(
                "is not a random key (a repeated pattern such as all zeros); {GENERATE_HINT}"
            )));
        }
        Ok(Self(bytes))
    }

    pub fn read_file(path: &Path, setting: &'static str) -> Result<Self, KeyError> {
        let read_err = |error| KeyError::Read {
            setting,
            path: path.display().to_string(),
            error,
        };
        let mut raw = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_KEY_FILE_BYTES + 1).read_to_end(&mut raw))
            .map_err(read_err)?;
        if raw.len() as u64 > MAX_KEY_FILE_BYTES {
            return Err(KeyError::Invalid {
                setting,
                reason: format!(
                    "{} is larger than a key file can be ({MAX_KEY_FILE_BYTES} bytes); is it the right file?",
                    path.display()
                ),
            });
        }
        let text = String::from_utf8(raw).map_err(|_| KeyError::Invalid {
            setting,
            reason: format!("{} is not a text file; {GENERATE_HINT}", path.display()),
        })?;
        Self::parse(&text, setting)
    }

    pub fn fingerprint_hex(&self) -> String {
        hex::encode(super::format::key_fingerprint(self))
    }

    /// For `backup keygen` only.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Writes a new key file readable by its owner only; never overwrites one.
    pub fn write_new_file(&self, path: &Path) -> Result<(), KeyError> {
        let write_err = |error| KeyError::Write {
            path: path.display().to_string(),
            error,
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(path).map_err(write_err)?;
        f.write_all(format!("{}\n", self.to_hex()).as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(write_err)
    }
}

fn looks_like_placeholder(t: &str) -> bool {
    let v = t.to_ascii_lowercase();
    v.starts_with('<')
        || v.starts_with("${")
        || [
            "change",
            "replace",
            "placeholder",
            "example",
            "your",
            "todo",
            "xxx",
            "secret",
            "...",
        ]
        .iter()
        .any(|p| v.contains(p))
}

/// Finds the key: `--key-file`, then `RAG_CORE_BACKUP_KEY`, then `RAG_CORE_BACKUP_KEY_FILE`,
/// then `backup.key_file` (the usual order: flag, environment, file; a value before a file,
/// as for the other secrets).
pub fn resolve(
    flag: Option<&Path>,
    config_key_file: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<BackupKey, KeyError> {
    if let Some(p) = flag {
        return BackupKey::read_file(p, FLAG_KEY_FILE);
    }
    if let Some(v) = env(ENV_KEY) {
        return BackupKey::parse(&v, ENV_KEY);
    }
    if let Some(p) = env(ENV_KEY_FILE) {
        return BackupKey::read_file(Path::new(&p), ENV_KEY_FILE);
    }
    if let Some(p) = config_key_file {
        return BackupKey::read_file(p, CONFIG_KEY_FILE);
    }
    Err(KeyError::Missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "8f1c2a9b3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";

    #[test]
    fn hex_and_every_base64_flavour_give_the_same_key() {
        let k = BackupKey::parse(&format!("  {HEX}\n"), ENV_KEY).unwrap();
        let raw = hex::decode(HEX).unwrap();
        for e in [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            let b = BackupKey::parse(&e.encode(&raw), ENV_KEY).unwrap();
            assert_eq!(b.bytes(), k.bytes());
        }
        assert_eq!(
            BackupKey::parse(&HEX.to_uppercase(), ENV_KEY)
                .unwrap()
                .bytes(),
            k.bytes()
        );
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        let short = &HEX[..40];
        let cases = [
            ("", "is empty"),
            ("changeme", "placeholder"),
            ("<your backup key>", "placeholder"),
            (short, "64 hex characters or base64 of 32 bytes"),
            (&"00".repeat(32), "not a random key"),
            (&"0123456789abcdef".repeat(4), "not a random key"),
            (&format!("{HEX}00"), "64 hex characters"),
        ];
        for (text, want) in cases {
            let err = BackupKey::parse(text, ENV_KEY).unwrap_err().to_string();
            assert!(err.starts_with("RAG_CORE_BACKUP_KEY: "), "{err}");
            assert!(err.contains(want), "{text:?}: {err}");
            if text.len() > 8 {
                assert!(!err.contains(text), "{err}");
            }
        }
    }

    #[test]
    fn debug_shows_only_the_fingerprint() {
        let k = BackupKey::parse(HEX, ENV_KEY).unwrap();
        let d = format!("{k:?}");
        assert!(!d.contains(HEX) && !d.contains(&HEX[..16]), "{d}");
        assert!(d.contains(&k.fingerprint_hex()));
    }

    #[test]
    fn resolution_order_and_missing_key() {
        let dir = std::env::temp_dir().join(format!("rag-core-key-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("k");
        let other = BackupKey::generate().unwrap();
        other.write_new_file(&file).unwrap();
        assert!(other.write_new_file(&file).is_err(), "never overwrites");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let env_key = |k: &str| (k == ENV_KEY).then(|| HEX.to_string());
        let no_env = |_: &str| None;
        // Flag beats the environment, which beats the config file.
        let k = resolve(Some(&file), None, env_key).unwrap();
        assert_eq!(k.bytes(), other.bytes());
        let k = resolve(None, Some(&file), env_key).unwrap();
        assert_eq!(k.to_hex(), HEX);
        let k = resolve(None, Some(&file), no_env).unwrap();
        assert_eq!(k.bytes(), other.bytes());
        assert!(matches!(
            resolve(None, None, no_env),
            Err(KeyError::Missing)
        ));
        let err = resolve(None, Some(&dir.join("absent")), no_env).unwrap_err();
        assert!(
            err.to_string().starts_with("backup.key_file: cannot read"),
            "{err}"
        );
        let big = dir.join("big");
        std::fs::write(&big, vec![b'a'; 5000]).unwrap();
        let err = resolve(Some(&big), None, no_env).unwrap_err();
        assert!(err.to_string().contains("larger than a key file"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
