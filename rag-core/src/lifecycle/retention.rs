//! The lifecycle sweep, run by the scheduled `retention` job: content retention per
//! workspace, expired exports (and leftover export files), rotated log files.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rusqlite::params;
use serde_json::{Value, json};

use super::delete::{self, CANDIDATES, pick};
use super::{export, securely, time_from_now};
use crate::api::AppState;
use crate::audit::{self, Actor};
use crate::jobs::JobError;
use crate::store::documents;

/// Work files of an export nobody knows about (yet) are left alone this long: the export
/// may have been created after the sweep read the table.
const UNKNOWN_GRACE: Duration = Duration::from_secs(3600);
/// Expired export rows are kept this long for the record, then removed.
const EXPIRED_ROWS_KEPT_DAYS: i64 = 30;

fn store_err(e: crate::store::StoreError) -> JobError {
    JobError::retryable(e.to_string())
}

/// Runs every part; a failing part fails the job (it is retried), after the others ran.
pub(crate) async fn sweep(state: &AppState) -> Result<Value, JobError> {
    let content = content_retention(state).await;
    let erasures = finish_erasures(state).await;
    let exports = expire_exports(state).await;
    let logs = prune_logs(state).await;
    let content = content?;
    let erasures = erasures?;
    let (expired, files) = exports?;
    Ok(json!({
        "retention": content,
        "user_erasures_finished": erasures,
        "exports_expired": expired,
        "export_files_removed": files,
        "log_files_removed": logs,
    }))
}

/// Deletes the sources of users whose data was deleted when the job that should have
/// done it could not be queued or was cancelled (see `delete::orphaned_uploaders`).
async fn finish_erasures(state: &AppState) -> Result<usize, JobError> {
    let pending = state
        .store
        .read(delete::orphaned_uploaders)
        .await
        .map_err(store_err)?;
    let origin = audit::Origin::new(Actor::system("lifecycle"), None);
    for (org, user) in &pending {
        delete::delete_user_sources(state, org, user, &origin, None).await?;
    }
    Ok(pending.len())
}

/// Deletes sources older than their workspace's retention (`retention_days`, else
/// `lifecycle.default_retention_days`), by `created_at`, in batches; each batch is
/// recorded as `retention.applied` in its own transaction.
async fn content_retention(state: &AppState) -> Result<Vec<Value>, JobError> {
    let default = state.cfg.lifecycle.default_retention_days.map(i64::from);
    let workspaces: Vec<(i64, String, String, Option<i64>)> = state
        .store
        .read(move |c| {
            let mut stmt = c.prepare(
                "SELECT seq, id, organization_id, retention_days FROM workspaces \
                 WHERE deleting_at IS NULL AND (retention_days IS NOT NULL OR ?1 IS NOT NULL) ORDER BY seq",
            )?;
            Ok(stmt
                .query_map([default], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<_>>()?)
        })
        .await
        .map_err(store_err)?;
    let budget = state.cfg.lifecycle.delete_batch_size;
    let mut applied = Vec::new();
    for (ws, ws_id, org, days) in workspaces {
        let Some(days) = days.or(default) else {
            continue;
        };
        let cutoff = time_from_now(-chrono::Duration::days(days));
        // Most runs find nothing: ask a reader first, not the single writer.
        let cut = cutoff.clone();
        let due = state
            .store
            .read(move |c| {
                Ok(c.query_row(
                    "SELECT EXISTS (SELECT 1 FROM sources WHERE ws = ?1 AND created_at < ?2)",
                    params![ws, cut],
                    |r| r.get::<_, bool>(0),
                )?)
            })
            .await
            .map_err(store_err)?;
        if !due {
            continue;
        }
        let (mut sources, mut chunks) = (0usize, 0usize);
        loop {
            let (w, o, cut) = (ws_id.clone(), org.clone(), cutoff.clone());
            let batch = state
                .store
                .write(move |c| {
                    securely(c, |c| {
                        let tx = c.transaction()?;
                        let rows: Vec<(String, i64)> = {
                            let mut stmt = tx.prepare_cached(
                                "SELECT id, chunk_count FROM sources WHERE ws = ?1 AND created_at < ?2 \
                                 ORDER BY created_at LIMIT ?3",
                            )?;
                            stmt.query_map(params![ws, cut, CANDIDATES], |r| Ok((r.get(0)?, r.get(1)?)))?
                                .collect::<rusqlite::Result<_>>()?
                        };
                        if rows.is_empty() {
                            return Ok(None);
                        }
                        let d = documents::delete_sources_in(&tx, ws, &pick(&rows, budget))?;
                        let rec = audit::append(
                            &tx,
                            audit::Event::new("retention.applied", Actor::system("retention"))
                                .organization(&o)
                                .workspace(&w)
                                .target(w.clone())
                                .after(json!({
                                    "retention_days": days,
                                    "cutoff": cut,
                                    "sources": d.removed.len(),
                                    "chunks": d.chunk_ids.len(),
                                    "source_ids": d.source_ids,
                                })),
                        )?;
                        tx.commit()?;
                        Ok(Some((d, rec)))
                    })
                })
                .await
                .map_err(store_err)?;
            let Some((d, rec)) = batch else { break };
            rec.log();
            state.searcher.remove_vectors(ws, &d.chunk_ids).await;
            state.metrics.chunk_records.dec_by(d.chunk_ids.len() as i64);
            sources += d.removed.len();
            chunks += d.chunk_ids.len();
        }
        if sources > 0 {
            tracing::info!(event = "retention.completed", workspace_id = %ws_id, organization_id = %org, retention_days = days, sources, chunks, "old content deleted");
            applied.push(json!({
                "workspace_id": ws_id, "retention_days": days,
                "sources_deleted": sources, "chunks_deleted": chunks,
            }));
        }
    }
    Ok(applied)
}

/// Marks exports past `expires_at` expired (removing their files), then removes export
/// files no export still needs: leftovers of failed, cancelled or deleted exports.
/// Returns (exports expired now, leftover files removed).
async fn expire_exports(state: &AppState) -> Result<(usize, usize), JobError> {
    let (expired, live): (Vec<String>, HashMap<String, String>) = state
        .store
        .write(|c| {
            let now = crate::tenancy::now();
            let tx = c.transaction()?;
            let expired: Vec<String> = {
                let mut stmt = tx.prepare(
                    "UPDATE exports SET status = 'expired' WHERE status != 'expired' AND expires_at < ?1 RETURNING id",
                )?;
                stmt.query_map([&now], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?
            };
            tx.execute(
                "DELETE FROM exports WHERE status = 'expired' AND expires_at < ?1",
                [time_from_now(-chrono::Duration::days(EXPIRED_ROWS_KEPT_DAYS))],
            )?;
            // Every row (expired ones are purged after a while, so this stays small).
            let live: HashMap<String, String> = {
                let mut stmt = tx.prepare("SELECT id, status FROM exports")?;
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?
            };
            tx.commit()?;
            Ok((expired, live))
        })
        .await
        .map_err(store_err)?;
    let dir = export::exports_dir(&state.cfg);
    for id in &expired {
        export::remove_files(&dir, id);
        tracing::info!(event = "export.expired", export_id = %id, "export expired; file removed");
    }
    let removed = tokio::task::spawn_blocking(move || remove_unowned_export_files(&dir, &live))
        .await
        .map_err(|e| JobError::retryable(e.to_string()))?;
    Ok((expired.len(), removed))
}

fn remove_unowned_export_files(dir: &Path, live: &HashMap<String, String>) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some((id, finished)) = name.to_str().and_then(export::owner_of) else {
            continue;
        };
        let keep = match live.get(id).map(String::as_str) {
            Some("queued" | "running") => true,
            Some(_) => finished,
            None => e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_none_or(|age| age < UNKNOWN_GRACE),
        };
        if !keep {
            let path = e.path();
            let gone = std::fs::remove_file(&path)
                .or_else(|_| std::fs::remove_dir_all(&path))
                .is_ok();
            removed += usize::from(gone);
        }
    }
    removed
}

async fn prune_logs(state: &AppState) -> usize {
    let dir = state.cfg.log_dir();
    let active = state.cfg.logging.file_name.clone();
    let days = state.cfg.logging.retention_days;
    let out = tokio::task::spawn_blocking(move || {
        prune_rotated_logs(&dir, &active, days, SystemTime::now())
    })
    .await;
    match out {
        Ok(Ok(removed)) => {
            for name in &removed {
                tracing::info!(event = "log.retention.removed", file = %name, "rotated log file past retention removed");
            }
            removed.len()
        }
        Ok(Err(e)) => {
            tracing::warn!(event = "log.retention.failed", error = %e, "cannot prune rotated log files");
            0
        }
        Err(e) => {
            tracing::warn!(event = "log.retention.failed", error = %e, "cannot prune rotated log files");
            0
        }
    }
}

/// Removes rotated copies of `active` in `dir` (`<active>.<n>`, as the rotation writes
/// them) last modified more than `retention_days` ago. The active file and anything
/// else in the directory are never touched; 0 days keeps everything (as the rotation
/// itself treats it). Returns the names removed.
pub fn prune_rotated_logs(
    dir: &Path,
    active: &str,
    retention_days: u32,
    now: SystemTime,
) -> std::io::Result<Vec<String>> {
    if retention_days == 0 {
        return Ok(Vec::new());
    }
    let retention = Duration::from_secs(u64::from(retention_days) * 86_400);
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let rotated = name
            .strip_prefix(active)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !rotated || !e.file_type()?.is_file() {
            continue;
        }
        let old = e
            .metadata()?
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > retention);
        if old {
            std::fs::remove_file(e.path())?;
            removed.push(name.to_string());
        }
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_rotated_copies_go() {
        let dir = std::env::temp_dir().join(format!("logret-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let old = SystemTime::now() - Duration::from_secs(30 * 86_400);
        for name in [
            "rag.log",
            "rag.log.1",
            "rag.log.2",
            "rag.log.x",
            "other.log.1",
            "rag.log.3.gz",
        ] {
            let f = std::fs::File::create(dir.join(name)).unwrap();
            if name != "rag.log.1" {
                f.set_modified(old).unwrap();
            }
        }
        let removed = prune_rotated_logs(&dir, "rag.log", 14, SystemTime::now()).unwrap();
        assert_eq!(removed, vec!["rag.log.2"]);
        for kept in [
            "rag.log",
            "rag.log.1",
            "rag.log.x",
            "other.log.1",
            "rag.log.3.gz",
        ] {
            assert!(dir.join(kept).exists(), "{kept}");
        }
        assert!(
            prune_rotated_logs(&dir, "rag.log", 0, SystemTime::now())
                .unwrap()
                .is_empty()
        );
        assert!(
            prune_rotated_logs(&dir.join("missing"), "rag.log", 1, SystemTime::now())
                .unwrap()
                .is_empty()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn export_files_are_attributed() {
        assert_eq!(
            export::owner_of("exp_00ff.tar.gz"),
            Some(("exp_00ff", true))
        );
        assert_eq!(
            export::owner_of("exp_00ff.3.tar.gz.part"),
            Some(("exp_00ff", false))
        );
        assert_eq!(
            export::owner_of(".spool-exp_00ff.1"),
            Some(("exp_00ff", false))
        );
        assert_eq!(export::owner_of("notes.txt"), None);
        assert_eq!(export::owner_of("../x.tar.gz"), None);
    }
}
