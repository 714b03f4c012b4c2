//! Scheduled backups inside `serve` (`backup.enabled`): one backup per interval slot,
//! aligned to the epoch like job schedules, then retention. A store whose newest backup is
//! older than one interval (or that has none) is backed up right after startup, so
//! restarts around the slot boundary never skip a day.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{BackupError, BackupKey, Target};
use crate::api::AppState;

/// After a failure, try again this soon (or at the next slot, if sooner) instead of
/// waiting a whole interval without a backup.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("backup.enabled is true, but {0}")]
    Key(#[source] super::KeyError),
    #[error("{0}")]
    Config(String),
}

/// Starts the backup task when `backup.enabled`; a missing or unusable key is an error
/// here, at startup, rather than a failure at the first slot hours later.
pub fn start(state: &AppState) -> Result<(), ScheduleError> {
    let cfg = &state.cfg.backup;
    if !cfg.enabled {
        return Ok(());
    }
    let key = super::key::resolve(None, cfg.key_file.as_deref(), |k| std::env::var(k).ok())
        .map_err(ScheduleError::Key)?;
    let every = cfg.interval_duration().map_err(ScheduleError::Config)?;
    let dir = cfg.dir(&state.cfg.data_dir);
    let newest = newest_ms(&dir);
    if let Some(ms) = newest {
        state.metrics.backup.last_success.set(ms / 1000);
    }
    tracing::info!(
        event = "backup.scheduled",
        dir = %dir.display(),
        interval = %cfg.interval,
        keep = cfg.keep,
        key_fingerprint = %key.fingerprint_hex(),
        "scheduled backups every {} into {}",
        cfg.interval,
        dir.display()
    );
    let first = match newest {
        Some(ms) if now_ms().saturating_sub(ms) < every.as_millis() as i64 => {
            next_slot(now_ms(), every)
        }
        _ => now_ms(),
    };
    tokio::spawn(run(
        state.clone(),
        Arc::new(key),
        dir,
        every,
        cfg.keep,
        first,
    ));
    Ok(())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Start of the slot after the one `now_ms` is in.
fn next_slot(now_ms: i64, every: Duration) -> i64 {
    let every_ms = every.as_millis().max(1) as i64;
    (crate::jobs::schedule::slot(now_ms, every) + 1).saturating_mul(every_ms)
}

fn newest_ms(dir: &std::path::Path) -> Option<i64> {
    super::list(dir)
        .ok()?
        .first()
        .map(|(at, _)| at.timestamp_millis())
}

async fn run(
    state: AppState,
    key: Arc<BackupKey>,
    dir: PathBuf,
    every: Duration,
    keep: usize,
    mut due_ms: i64,
) {
    loop {
        let wait = due_ms.saturating_sub(now_ms()).max(0) as u64;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        if state.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        let started = std::time::Instant::now();
        let data_dir = state.cfg.data_dir.clone();
        let (k, d) = (Arc::clone(&key), dir.clone());
        // Snapshot and encryption are blocking file work: off the async workers.
        let outcome = tokio::task::spawn_blocking(move || {
            let created = super::create(&data_dir, &Target::Dir(d.clone()), &k)?;
            let pruned = super::prune(&d, keep);
            Ok::<_, BackupError>((created, pruned))
        })
        .await
        .map_err(|e| BackupError::Task(e.to_string()))
        .and_then(|r| r);
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        let now = now_ms();
        match outcome {
            Ok((created, pruned)) => {
                state
                    .metrics
                    .backup
                    .last_success
                    .set(chrono::Utc::now().timestamp());
                let pruned = match pruned {
                    Ok(removed) => {
                        for p in &removed {
                            tracing::info!(event = "backup.pruned", path = %p.display(), keep, "old backup removed");
                        }
                        removed.len()
                    }
                    Err(e) => {
                        tracing::warn!(event = "backup.prune_failed", dir = %dir.display(), error = %e, "old backups could not be removed");
                        0
                    }
                };
                tracing::info!(
                    event = "backup.completed",
                    path = %created.path.display(),
                    bytes = created.bytes,
                    database_bytes = created.database_bytes,
                    schema_version = created.schema_version,
                    pruned,
                    duration_ms,
                    "backup written to {}",
                    created.path.display()
                );
                due_ms = next_slot(now, every);
            }
            Err(e) => {
                state.metrics.backup.failures.inc();
                tracing::error!(
                    event = "backup.failed",
                    dir = %dir.display(),
                    error = %e,
                    duration_ms,
                    "scheduled backup failed"
                );
                let retry = now.saturating_add(RETRY_AFTER_FAILURE.as_millis() as i64);
                due_ms = next_slot(now, every).min(retry);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_slot_is_the_following_boundary() {
        let day = Duration::from_secs(86_400);
        assert_eq!(next_slot(0, day), 86_400_000);
        assert_eq!(next_slot(86_399_999, day), 86_400_000);
        assert_eq!(next_slot(86_400_000, day), 172_800_000);
    }
}
