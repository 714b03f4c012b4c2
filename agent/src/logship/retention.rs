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

/// What the sweep needs to know about the shipper's sources.
#[derive(Clone)]
pub struct Scope {
    pub patterns: Vec<String>,
    /// Never touched (not ours).
    pub exclude: Vec<glob::Pattern>,
    /// When false, `*.gz` files are not shipped at all, so "shipped" cannot gate them:
    /// age alone decides.
    pub read_gzip: bool,
}

pub async fn run(cfg: RetentionConfig, scope: Scope, tracker: Arc<Tracker>) {
    let every = Duration::from_secs(cfg.interval_seconds.max(1));
    loop {
        let cfg = cfg.clone();
        let scope = scope.clone();
        let tracker = Arc::clone(&tracker);
        let _ =
            tokio::task::spawn_blocking(move || sweep(&cfg, &scope, &tracker, SystemTime::now()))
                .await;
        tokio::time::sleep(every).await;
    }
}

/// One pass; returns the files deleted.
pub fn sweep(
    cfg: &RetentionConfig,
    scope: &Scope,
    tracker: &Tracker,
    now: SystemTime,
) -> Vec<std::path::PathBuf> {
    let mut deleted = Vec::new();
    if cfg.days == 0 {
        return deleted;
    }
    let max_age = Duration::from_secs(u64::from(cfg.days) * 86_400);
    for p in &scope.patterns {
        let Ok(paths) = glob::glob(p) else { continue };
        for path in paths.flatten() {
            if !is_rotated(&path) || scope.exclude.iter().any(|e| e.matches_path(&path)) {
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
            let not_shipped_by_design =
                !scope.read_gzip && path.extension().is_some_and(|e| e == "gz");
            let shipped = not_shipped_by_design
                || tracker
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

#[cfg(test)]
mod sweep_tests {
    use super::*;
    use crate::logship::checkpoint::FileIdentity;
    use std::time::{Duration, SystemTime};

    #[test]
    fn deletes_only_old_rotated_shipped_files() {
        let dir = std::env::temp_dir().join(format!("retention-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let old = SystemTime::now() - Duration::from_secs(20 * 86_400);
        let mk = |name: &str, age: SystemTime| {
            let p = dir.join(name);
            std::fs::write(&p, b"line\n").unwrap();
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(age)
                .unwrap();
            p
        };
        let live = mk("rag.log", old);
        let shipped = mk("rag.log.1", old);
        let unshipped = mk("rag.log.2", old);
        let young = mk("rag.log.3", SystemTime::now());
        let gz = mk("rag.log.4.gz", old);
        let tracker = Tracker::default();
        let md = std::fs::metadata(&shipped).unwrap();
        use std::os::unix::fs::MetadataExt;
        let id = FileIdentity {
            dev: md.dev(),
            ino: md.ino(),
            fp_len: 5,
            fp: 0,
        };
        let k = tracker.register(id, shipped.clone(), 0, 5);
        let seq = tracker.begin(k, 5, 1);
        tracker.ack(k, seq);
        let md2 = std::fs::metadata(&unshipped).unwrap();
        let id2 = FileIdentity {
            dev: md2.dev(),
            ino: md2.ino(),
            fp_len: 5,
            fp: 0,
        };
        tracker.register(id2, unshipped.clone(), 2, 5);
        let scope = Scope {
            patterns: vec![format!("{}/rag.log*", dir.display())],
            exclude: Vec::new(),
            read_gzip: false,
        };
        let cfg = RetentionConfig {
            days: 14,
            only_shipped: true,
            interval_seconds: 1,
        };
        let mut gone = sweep(&cfg, &scope, &tracker, SystemTime::now());
        gone.sort();
        assert_eq!(gone, vec![shipped.clone(), gz.clone()]);
        assert!(live.exists() && unshipped.exists() && young.exists());
        let cfg = RetentionConfig {
            only_shipped: false,
            ..cfg
        };
        let gone = sweep(&cfg, &scope, &tracker, SystemTime::now());
        assert_eq!(gone, vec![unshipped]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
