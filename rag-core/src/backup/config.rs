//! The `backup:` section of the configuration (scheduled backups; `backup create` uses
//! `dir` and `key_file` too).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// `serve` writes a backup every `interval` and keeps the newest `keep`.
    pub enabled: bool,
    /// A number with unit s, m, h or d; runs are aligned to multiples of it since the Unix
    /// epoch (UTC), as job schedules are.
    pub interval: String,
    /// Where backups go; a relative path is under `data_dir`. Default `<data_dir>/backups`.
    pub dir: Option<PathBuf>,
    /// Newest `rag-*.mrbak` files kept in `dir` after each scheduled backup.
    pub keep: usize,
    /// File holding the key (64 hex characters or base64 of 32 bytes). The environment
    /// (`RAG_CORE_BACKUP_KEY`, `RAG_CORE_BACKUP_KEY_FILE`) takes precedence.
    pub key_file: Option<PathBuf>,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            interval: "1d".into(),
            dir: None,
            keep: 7,
            key_file: None,
        }
    }
}

impl BackupConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.interval_duration()?;
        if self.keep == 0 {
            return Err("backup.keep must be at least 1".into());
        }
        Ok(())
    }

    pub fn interval_duration(&self) -> Result<Duration, String> {
        crate::jobs::schedule::parse_every(&self.interval)
            .map_err(|e| format!("backup.interval: {e}"))
    }

    pub fn dir(&self, data_dir: &Path) -> PathBuf {
        match &self.dir {
            Some(d) if d.is_absolute() => d.clone(),
            Some(d) => data_dir.join(d),
            None => data_dir.join("backups"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let c = BackupConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.interval_duration(), Ok(Duration::from_secs(86_400)));
        assert_eq!(c.dir(Path::new("/d")), PathBuf::from("/d/backups"));
        let rel = BackupConfig {
            dir: Some("b".into()),
            ..BackupConfig::default()
        };
        assert_eq!(rel.dir(Path::new("/d")), PathBuf::from("/d/b"));
        let bad = BackupConfig {
            interval: "1w".into(),
            ..BackupConfig::default()
        };
        assert!(bad.validate().unwrap_err().starts_with("backup.interval:"));
        let none = BackupConfig {
            keep: 0,
            ..BackupConfig::default()
        };
        assert!(none.validate().unwrap_err().contains("backup.keep"));
    }
}
