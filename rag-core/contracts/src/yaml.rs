//! Strict YAML config files, loaded the same way by both programs: unknown keys are
//! errors (the types use `deny_unknown_fields`), and every error names the file, the
//! line and column, and the key.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// Parses YAML text; an empty document is the type's default.
pub fn from_str<T: DeserializeOwned + Default>(text: &str) -> Result<T, String> {
    if text.trim().is_empty() {
        return Ok(T::default());
    }
    serde_yaml::from_str::<T>(text).map_err(|e| match e.location() {
        Some(loc) => format!("line {}, column {}: {e}", loc.line(), loc.column()),
        None => e.to_string(),
    })
}

pub fn from_file<T: DeserializeOwned + Default>(path: &Path) -> Result<T, YamlError> {
    let text = std::fs::read_to_string(path).map_err(|source| YamlError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    from_str(&text).map_err(|message| YamlError::Parse {
        path: path.to_path_buf(),
        message,
    })
}
