//! Deletes rotated log files (`*.N`, `*.N.gz`) older than `retention.days`; by default
//! only files the sinks have fully acknowledged.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::logship::checkpoint::Tracker;
use crate::logship::config::RetentionConfig;

/// `rag.log.3`, `access.log.1.gz`: names a numbered rotation produced.
pub fn is_rotated(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let name = name.strip_suffix(".gz").unwrap_or(name);
    name.rsplit_once('.').is_some_and(|(stem, n)| {
        !stem.is_empty() && !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())
    })
}

pub async fn run(cfg: RetentionConfig, patterns: Vec<String>, tracker: Arc<Tracker>) {
    let every = Duration::from_secs(cfg.interval_seconds.max(1));
    loop {
        let cfg = cfg.clone();
        let patterns = patterns.clone();
        let tracker = Arc::clone(&tracker);
        let _ = tokio::task::spawn_blocking(move || {
            sweep(&cfg, &patterns, &tracker, SystemTime::now())
        })
        .await;
        tokio::time::sleep(every).await;
    }
}

/// One pass; returns the files deleted.
pub fn sweep(
    cfg: &RetentionConfig,
    patterns: &[String],
    tracker: &Tracker,
    now: SystemTime,
) -> Vec<std::path::PathBuf> {
    let mut deleted = Vec::new();
    if cfg.days == 0 {
        return deleted;
    }
    let max_age = Duration::from_secs(u64::from(cfg.days) * 86_400);
    for p in patterns {
        let Ok(paths) = glob::glob(p) else { continue };
        for path in paths.flatten() {
            if !is_rotated(&path) {
                continue;
            }
            let Ok(md) = std::fs::metadata(&path) else {
                continue;
            };
            let old = md
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > max_age);
            if !old {
                continue;
            }
            // Unknown to the tracker = never opened yet (e.g. over max_open_files):
            // not shipped.
            let shipped = tracker
                .shipped(md.dev(), md.ino(), md.len())
                .unwrap_or(false);
            if cfg.only_shipped && !shipped {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    crate::log::info(
                        "logship.retention_deleted",
                        &format!(
                            "deleted {} (older than {} days{})",
                            path.display(),
                            cfg.days,
                            if shipped { ", fully shipped" } else { "" }
                        ),
                    );
                    deleted.push(path);
                }
                Err(e) => crate::log::warn(
                    "logship.retention_failed",
                    &format!("cannot delete {}: {e}", path.display()),
                ),
            }
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::is_rotated;
    use std::path::Path;

    #[test]
    fn rotated_names() {
        for yes in ["rag.log.1", "/x/rag.log.12", "access.log.3.gz"] {
            assert!(is_rotated(Path::new(yes)), "{yes}");
        }
        for no in [
            "rag.log",
            "/x/access.log",
            "rag.log.gz",
            "x.gz",
            "rag.log.1a",
        ] {
            assert!(!is_rotated(Path::new(no)), "{no}");
        }
    }
}
