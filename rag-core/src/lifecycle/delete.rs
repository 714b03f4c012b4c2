//! Deleting a workspace and a user's data: the request-time step (one transaction that
//! makes the data unreachable and records the request) and the jobs that remove the
//! content in batches.
//!
//! What becomes unreachable at once, in the request's transaction: the workspace's (or
//! the user's) API keys, queued jobs and the document bytes held in job payloads. What is
//! removed batch by batch afterwards: sources, chunks, their FTS rows (trigger
//! `chunks_ad`, with FTS5 secure-delete on) and vectors (stored in the chunk rows; the
//! in-memory copy is dropped too).

use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

use super::{origin_from, parse_payload, securely};
use crate::api::AppState;
use crate::audit::{self, Origin, Record};
use crate::jobs::{Job, JobCtx, JobError};
use crate::store::StoreError;
use crate::store::documents::{self, RemovedSource};
use crate::tenancy::{self, Role};

/// Candidate sources read per batch before [`pick`] trims them to the chunk budget.
pub(crate) const CANDIDATES: i64 = 1000;
/// Job types whose payload carries document text or bytes.
const INGEST_JOBS: &str = "('ingest_text','ingest_files','ingest_urls')";

/// The leading sources whose chunks add up to at most `budget`; always at least one, as
/// a single source is bounded by `limits.max_document_bytes`.
pub(crate) fn pick(rows: &[(String, i64)], budget: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut used = 0usize;
    for (id, chunks) in rows {
        let n = (*chunks).max(0) as usize;
        if !out.is_empty() && used + n > budget {
            break;
        }
        used += n;
        out.push(id.clone());
    }
    out
}

fn store_err(e: StoreError) -> JobError {
    JobError::retryable(e.to_string())
}

/// Drops a workspace's cached vectors (the next search, if any, reloads from the store).
pub(crate) async fn drop_cached_vectors(state: &AppState, ws: i64) {
    let slot = state.searcher.index.slot(ws);
    let mut guard = slot.write().await;
    if let Some(v) = guard.take() {
        state.searcher.index.release(v.len());
    }
}

// ---------------------------------------------------------------------------------------
// Workspace deletion
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
pub(crate) enum MarkOutcome {
    NotFound,
    /// Refused: an organization keeps at least one workspace.
    LastWorkspace,
    Marked {
        seq: i64,
        /// None when the workspace was already being deleted (a repeated request).
        record: Option<Box<Record>>,
        sources: i64,
        chunks: i64,
        keys_revoked: usize,
        jobs_cancelled: usize,
    },
}

/// The request-time step of deleting a workspace, in one transaction: mark it, revoke its
/// keys, cancel its waiting jobs and blank the document bytes in its ingest jobs, record
/// `workspace.delete_requested`. Repeating it on a marked workspace changes nothing.
pub(crate) fn mark_workspace(
    conn: &mut Connection,
    organization_id: &str,
    workspace_id: &str,
    origin: &Origin,
) -> Result<MarkOutcome, StoreError> {
    let tx = conn.transaction()?;
    let row: Option<(i64, String, Option<String>, i64)> = tx
        .query_row(
            "SELECT seq, name, deleting_at, chunk_count FROM workspaces \
             WHERE id = ?1 AND organization_id = ?2",
            params![workspace_id, organization_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let Some((seq, name, deleting, chunks)) = row else {
        return Ok(MarkOutcome::NotFound);
    };
    let sources: i64 = tx.query_row("SELECT COUNT(*) FROM sources WHERE ws = ?1", [seq], |r| {
        r.get(0)
    })?;
    if deleting.is_some() {
        return Ok(MarkOutcome::Marked {
            seq,
            record: None,
            sources,
            chunks,
            keys_revoked: 0,
            jobs_cancelled: 0,
        });
    }
    let others: i64 = tx.query_row(
        "SELECT COUNT(*) FROM workspaces WHERE organization_id = ?1 AND id != ?2 AND deleting_at IS NULL",
        params![organization_id, workspace_id],
        |r| r.get(0),
    )?;
    if others == 0 {
        return Ok(MarkOutcome::LastWorkspace);
    }
    let now = tenancy::now();
    let now_ms = chrono::Utc::now().timestamp_millis();
    tx.execute(
        "UPDATE workspaces SET deleting_at = ?2 WHERE seq = ?1",
        params![seq, now],
    )?;
    let keys_revoked = tx.execute(
        "UPDATE api_keys SET revoked_at = ?2 WHERE workspace_id = ?1 AND revoked_at IS NULL",
        params![workspace_id, now],
    )?;
    let jobs_cancelled = stop_jobs(
        &tx,
        "workspace_id = ?1 AND organization_id = ?2",
        workspace_id,
        organization_id,
        now_ms,
    )?;
    let record = audit::append(
        &tx,
        origin
            .event("workspace.delete_requested")
            .organization(organization_id)
            .workspace(workspace_id)
            .target(workspace_id)
            .before(json!({"name": name, "sources": sources, "chunks": chunks}))
            .after(json!({"keys_revoked": keys_revoked, "jobs_cancelled": jobs_cancelled})),
    )?;
    tx.commit()?;
    Ok(MarkOutcome::Marked {
        seq,
        record: Some(Box::new(record)),
        sources,
        chunks,
        keys_revoked,
        jobs_cancelled,
    })
}

/// Cancels the selected jobs that wait, asks running ones to stop, and blanks the
/// payload, resume point and result of the selected ingest jobs (they hold document text
/// or bytes, and failure lists with titles). `filter` is a fixed SQL condition on `jobs`
/// using `?1` (`value`) and `?2` (the organization). The rows stay so job ids keep
/// answering.
fn stop_jobs(
    tx: &Connection,
    filter: &str,
    value: &str,
    organization_id: &str,
    now_ms: i64,
) -> Result<usize, StoreError> {
    let cancelled = tx.execute(
        &format!(
            "UPDATE jobs SET status = 'cancelled', updated_ms = ?3, finished_ms = ?3 \
             WHERE {filter} AND status IN ('queued','failed')"
        ),
        params![value, organization_id, now_ms],
    )?;
    tx.execute(
        &format!(
            "UPDATE jobs SET cancel_requested = 1, updated_ms = ?3 WHERE {filter} AND status = 'running'"
        ),
        params![value, organization_id, now_ms],
    )?;
    tx.execute(
        &format!(
            "UPDATE jobs SET payload = '{{}}', checkpoint = NULL, result = NULL \
             WHERE {filter} AND name IN {INGEST_JOBS}"
        ),
        params![value, organization_id],
    )?;
    Ok(cancelled)
}

/// Waits (bounded) until no other job of the workspace runs: they were asked to stop,
/// and one still storing a batch must finish before the last sweep. `Waited` means
/// sweep again; `TimedOut` means go on regardless (and do not wait again).
#[derive(Debug, PartialEq, Eq)]
enum Wait {
    Idle,
    Waited,
    TimedOut,
}

async fn wait_for_running(
    state: &AppState,
    ctx: &JobCtx,
    workspace_id: &str,
    own_id: &str,
) -> Result<Wait, JobError> {
    let bound = Duration::from_secs((state.jobs.config().lease_seconds * 3).max(10));
    let deadline = Instant::now() + bound;
    let mut waited = false;
    loop {
        let (ws, me) = (workspace_id.to_string(), own_id.to_string());
        let running: i64 = state
            .store
            .read(move |c| {
                Ok(c.query_row(
                    "SELECT COUNT(*) FROM jobs WHERE workspace_id = ?1 AND status = 'running' AND id != ?2",
                    params![ws, me],
                    |r| r.get(0),
                )?)
            })
            .await
            .map_err(store_err)?;
        if running == 0 {
            return Ok(if waited { Wait::Waited } else { Wait::Idle });
        }
        if Instant::now() >= deadline {
            // A stale lease of a dead process; the row goes with the workspace and the
            // foreign key stops anything it might still try to store.
            tracing::warn!(
                event = "workspace.delete.jobs_still_running",
                workspace_id,
                running,
                "jobs of a deleted workspace still marked running; going on"
            );
            return Ok(Wait::TimedOut);
        }
        waited = true;
        ctx.check()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `delete_workspace` job: removes the sources and chunks in batches, then (once no
/// other job of the workspace runs) its keys, jobs, ingest manifest, exports and the
/// workspace row itself, recording `workspace.deleted` with the counts.
pub(crate) async fn workspace_job(
    state: &AppState,
    job: &Job,
    ctx: &JobCtx,
) -> Result<Value, JobError> {
    let payload = parse_payload(job)?;
    let origin = origin_from(&payload);
    let (ws, ws_id, org) = (
        job.ws_seq,
        job.workspace_id.clone(),
        job.organization_id.clone(),
    );
    let (id, o) = (ws_id.clone(), org.clone());
    let state_row: Option<(Option<String>, i64, i64)> = state
        .store
        .read(move |c| {
            Ok(c.query_row(
                "SELECT deleting_at, chunk_count, (SELECT COUNT(*) FROM sources WHERE ws = w.seq) \
                 FROM workspaces w WHERE seq = ?1 AND id = ?2 AND organization_id = ?3",
                params![ws, id, o],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
        })
        .await
        .map_err(store_err)?;
    let (chunks_left, sources_left) = match state_row {
        // An earlier attempt finished before its outcome was recorded.
        None => return Ok(json!({"workspace_id": ws_id, "status": "deleted"})),
        Some((None, ..)) => {
            return Err(JobError::permanent(
                "the workspace is not marked for deletion",
            ));
        }
        Some((Some(_), chunks, sources)) => (chunks, sources),
    };
    let cp = ctx.checkpoint.clone().unwrap_or_else(|| json!({}));
    let mut sources_removed = cp["sources"].as_i64().unwrap_or(0);
    let mut chunks_removed = cp["chunks"].as_i64().unwrap_or(0);
    let total = sources_removed + chunks_removed + sources_left + chunks_left;
    drop_cached_vectors(state, ws).await;
    let budget = state.cfg.lifecycle.delete_batch_size;
    let mut timed_out = false;
    loop {
        ctx.check()?;
        let d = state
            .store
            .write(move |c| {
                securely(c, |c| {
                    let tx = c.transaction()?;
                    let rows: Vec<(String, i64)> = {
                        let mut stmt = tx.prepare_cached(
                            "SELECT id, chunk_count FROM sources WHERE ws = ?1 ORDER BY seq LIMIT ?2",
                        )?;
                        stmt.query_map(params![ws, CANDIDATES], |r| Ok((r.get(0)?, r.get(1)?)))?
                            .collect::<rusqlite::Result<_>>()?
                    };
                    let d = documents::delete_sources_in(&tx, ws, &pick(&rows, budget))?;
                    tx.commit()?;
                    Ok(d)
                })
            })
            .await
            .map_err(store_err)?;
        if !d.removed.is_empty() {
            sources_removed += d.removed.len() as i64;
            chunks_removed += d.chunk_ids.len() as i64;
            state.metrics.chunk_records.dec_by(d.chunk_ids.len() as i64);
            ctx.progress(
                sources_removed + chunks_removed,
                total,
                Some(json!({"sources": sources_removed, "chunks": chunks_removed})),
            )
            .await?;
            continue;
        }
        if !timed_out {
            match wait_for_running(state, ctx, &ws_id, &job.id).await? {
                // They may have stored a last batch: sweep again.
                Wait::Waited => continue,
                Wait::TimedOut => timed_out = true,
                Wait::Idle => {}
            }
        }
        let counts = json!({"sources": sources_removed, "chunks": chunks_removed});
        let (o, id, own, origin) = (org.clone(), ws_id.clone(), job.id.clone(), origin.clone());
        let finished = state
            .store
            .write(move |c| finish_workspace(c, ws, &o, &id, &own, &origin, counts))
            .await
            .map_err(store_err)?;
        let Some((record, exports, summary)) = finished else {
            continue;
        };
        record.log();
        let dir = super::export::exports_dir(&state.cfg);
        for export_id in &exports {
            super::export::remove_files(&dir, export_id);
        }
        drop_cached_vectors(state, ws).await;
        tracing::info!(event = "workspace.delete.completed", workspace_id = %ws_id, sources = sources_removed, chunks = chunks_removed, "workspace deleted");
        return Ok(summary);
    }
}

type Finished = Option<(Record, Vec<String>, Value)>;

/// The last step, in one transaction: only when no source is left (a late insert sends
/// the job round again). Returns the record, the export ids whose files to remove, and
/// the job's result.
fn finish_workspace(
    c: &mut Connection,
    ws: i64,
    organization_id: &str,
    workspace_id: &str,
    own_job: &str,
    origin: &Origin,
    counts: Value,
) -> Result<Finished, StoreError> {
    securely(c, |c| {
        let tx = c.transaction()?;
        let left: i64 = tx.query_row("SELECT COUNT(*) FROM sources WHERE ws = ?1", [ws], |r| {
            r.get(0)
        })?;
        if left > 0 {
            return Ok(None);
        }
        // Chunks cannot outlive their source (foreign key), but a store edited by hand
        // must not keep this job going round for ever.
        tx.execute("DELETE FROM chunks WHERE ws = ?1", [ws])?;
        let name: String =
            tx.query_row("SELECT name FROM workspaces WHERE seq = ?1", [ws], |r| {
                r.get(0)
            })?;
        let exports: Vec<String> = {
            let mut stmt = tx.prepare("SELECT id FROM exports WHERE workspace_id = ?1")?;
            stmt.query_map([workspace_id], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        tx.execute(
            "DELETE FROM exports WHERE workspace_id = ?1",
            [workspace_id],
        )?;
        let keys = tx.execute(
            "DELETE FROM api_keys WHERE workspace_id = ?1",
            [workspace_id],
        )?;
        // The workspace's other jobs go too (results and errors can name documents); the
        // seq of a deleted workspace may be handed out again, so nothing may refer to it.
        let jobs = tx.execute(
            "DELETE FROM jobs WHERE workspace_id = ?1 AND id != ?2",
            params![workspace_id, own_job],
        )?;
        let manifest = tx.execute("DELETE FROM ingest_manifest WHERE ws = ?1", [ws])?;
        tx.execute("DELETE FROM workspaces WHERE seq = ?1", [ws])?;
        let mut after = counts;
        after["keys_removed"] = json!(keys);
        after["jobs_removed"] = json!(jobs);
        after["exports_removed"] = json!(exports.len());
        after["manifest_entries_removed"] = json!(manifest);
        let record = audit::append(
            &tx,
            origin
                .event("workspace.deleted")
                .organization(organization_id)
                .workspace(workspace_id)
                .target(workspace_id)
                .before(json!({"name": name}))
                .after(after.clone()),
        )?;
        tx.commit()?;
        after["workspace_id"] = json!(workspace_id);
        after["status"] = json!("deleted");
        Ok(Some((record, exports, after)))
    })
}

// ---------------------------------------------------------------------------------------
// A user's data
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
pub(crate) enum EraseOutcome {
    NotFound,
    OwnerOnly,
    LastOwner,
    Erased {
        record: Box<Record>,
        keys_removed: usize,
        jobs_cancelled: usize,
        /// Sources left for the job to delete (0 with `keep_sources`).
        sources: i64,
        chunks: i64,
    },
}

/// The request-time step of deleting a user's data, in one transaction: their API keys
/// and user record go, their queued ingest jobs are cancelled and every ingest job they
/// submitted loses its document bytes; their sources are counted for the job, or (with
/// `keep_sources`) kept but no longer attributed to them. Records `user.deleted`.
pub(crate) fn erase_user(
    conn: &mut Connection,
    organization_id: &str,
    user_id: &str,
    caller_role: Role,
    keep_sources: bool,
    origin: &Origin,
) -> Result<EraseOutcome, StoreError> {
    let tx = conn.transaction()?;
    let Some(role) = tenancy::user_role(&tx, user_id, organization_id)? else {
        return Ok(EraseOutcome::NotFound);
    };
    if role == Role::Owner {
        if caller_role != Role::Owner {
            return Ok(EraseOutcome::OwnerOnly);
        }
        if tenancy::count_owners(&tx, organization_id)? <= 1 {
            return Ok(EraseOutcome::LastOwner);
        }
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    let keys_removed = tx.execute("DELETE FROM api_keys WHERE user_id = ?1", [user_id])?;
    // Ingest jobs name their submitter in the payload (`ingested_by`).
    let jobs_cancelled = stop_jobs(
        &tx,
        // CASE: json_extract raises on text that is not JSON, and AND does not promise order.
        "organization_id = ?2 AND CASE WHEN json_valid(payload) THEN json_extract(payload, '$.ingested_by') END = ?1",
        user_id,
        organization_id,
        now_ms,
    )?;
    let (sources, chunks): (i64, i64) = tx.query_row(
        "SELECT COUNT(*), COALESCE(SUM(chunk_count), 0) FROM sources \
         WHERE ingested_by = ?1 AND ws IN (SELECT seq FROM workspaces WHERE organization_id = ?2)",
        params![user_id, organization_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if keep_sources {
        tx.execute(
            "UPDATE sources SET ingested_by = NULL \
             WHERE ingested_by = ?1 AND ws IN (SELECT seq FROM workspaces WHERE organization_id = ?2)",
            params![user_id, organization_id],
        )?;
    }
    tx.execute(
        "DELETE FROM users WHERE id = ?1 AND organization_id = ?2",
        params![user_id, organization_id],
    )?;
    let record = audit::append(
        &tx,
        origin
            .event("user.deleted")
            .organization(organization_id)
            .target(user_id)
            .before(json!({"role": role.as_str(), "sources": sources, "chunks": chunks}))
            .after(json!({
                "keys_removed": keys_removed,
                "jobs_cancelled": jobs_cancelled,
                "sources": if keep_sources { "kept" } else { "deleting" },
            })),
    )?;
    tx.commit()?;
    Ok(EraseOutcome::Erased {
        record: Box::new(record),
        keys_removed,
        jobs_cancelled,
        sources: if keep_sources { 0 } else { sources },
        chunks: if keep_sources { 0 } else { chunks },
    })
}

/// One batch of a user's sources, all in one workspace, deleted and recorded
/// (`user.sources_deleted`) in one transaction.
struct UserBatch {
    ws: i64,
    chunk_ids: Vec<i64>,
    removed: Vec<RemovedSource>,
    record: Option<Record>,
}

fn delete_user_batch(
    c: &mut Connection,
    organization_id: &str,
    user_id: &str,
    budget: usize,
    origin: &Origin,
) -> Result<UserBatch, StoreError> {
    securely(c, |c| {
        let tx = c.transaction()?;
        let rows: Vec<(i64, String, String, i64)> = {
            let mut stmt = tx.prepare_cached(
                "SELECT s.ws, w.id, s.id, s.chunk_count FROM sources s JOIN workspaces w ON w.seq = s.ws \
                 WHERE s.ingested_by = ?1 AND w.organization_id = ?2 ORDER BY s.ws, s.seq LIMIT ?3",
            )?;
            stmt.query_map(params![user_id, organization_id, CANDIDATES], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<rusqlite::Result<_>>()?
        };
        let Some((ws, ws_id)) = rows.first().map(|r| (r.0, r.1.clone())) else {
            return Ok(UserBatch {
                ws: 0,
                chunk_ids: Vec::new(),
                removed: Vec::new(),
                record: None,
            });
        };
        let same: Vec<(String, i64)> = rows
            .iter()
            .filter(|r| r.0 == ws)
            .map(|r| (r.2.clone(), r.3))
            .collect();
        let d = documents::delete_sources_in(&tx, ws, &pick(&same, budget))?;
        let record = audit::append(
            &tx,
            origin
                .event("user.sources_deleted")
                .organization(organization_id)
                .workspace(&ws_id)
                .target(user_id)
                .after(json!({
                    "sources": d.removed.len(),
                    "chunks": d.chunk_ids.len(),
                    "source_ids": d.source_ids,
                })),
        )?;
        tx.commit()?;
        Ok(UserBatch {
            ws,
            chunk_ids: d.chunk_ids,
            removed: d.removed,
            record: Some(record),
        })
    })
}

/// The `delete_user_data` job: deletes the sources the user ingested, in every workspace
/// of the organization, batch by batch.
pub(crate) async fn user_data_job(
    state: &AppState,
    job: &Job,
    ctx: &JobCtx,
) -> Result<Value, JobError> {
    let payload = parse_payload(job)?;
    let origin = origin_from(&payload);
    let Some(user_id) = payload["user_id"].as_str().map(str::to_owned) else {
        return Err(JobError::permanent("payload has no user_id"));
    };
    let total = payload["sources"].as_i64().unwrap_or(0) + payload["chunks"].as_i64().unwrap_or(0);
    let (sources, chunks) = delete_user_sources(
        state,
        &job.organization_id,
        &user_id,
        &origin,
        Some((ctx, total)),
    )
    .await?;
    Ok(json!({"user_id": user_id, "sources_deleted": sources, "chunks_deleted": chunks}))
}

/// Deletes, batch by batch, the sources of the organization that `user_id` ingested.
/// With a job context it reports progress and resumes from the job's checkpoint.
pub(crate) async fn delete_user_sources(
    state: &AppState,
    organization_id: &str,
    user_id: &str,
    origin: &Origin,
    job: Option<(&JobCtx, i64)>,
) -> Result<(i64, i64), JobError> {
    let cp = job
        .and_then(|(ctx, _)| ctx.checkpoint.clone())
        .unwrap_or_else(|| json!({}));
    let mut sources = cp["sources"].as_i64().unwrap_or(0);
    let mut chunks = cp["chunks"].as_i64().unwrap_or(0);
    let budget = state.cfg.lifecycle.delete_batch_size;
    let (org, user_id) = (organization_id.to_string(), user_id.to_string());
    loop {
        if let Some((ctx, _)) = job {
            ctx.check()?;
        }
        let (o, u, orig) = (org.clone(), user_id.clone(), origin.clone());
        let b = state
            .store
            .write(move |c| delete_user_batch(c, &o, &u, budget, &orig))
            .await
            .map_err(store_err)?;
        let Some(record) = b.record else { break };
        record.log();
        state.searcher.remove_vectors(b.ws, &b.chunk_ids).await;
        state.metrics.chunk_records.dec_by(b.chunk_ids.len() as i64);
        sources += b.removed.len() as i64;
        chunks += b.chunk_ids.len() as i64;
        if let Some((ctx, total)) = job {
            ctx.progress(
                sources + chunks,
                total.max(sources + chunks),
                Some(json!({"sources": sources, "chunks": chunks})),
            )
            .await?;
        }
    }
    tracing::info!(event = "user.data.deleted", user_id = %user_id, sources, chunks, "user's documents deleted");
    Ok((sources, chunks))
}

/// Users whose data was deleted but whose sources are still there: the job for it could
/// not be queued, or it was cancelled, or an ingest of theirs stored a last batch after
/// it. A source naming a user that no longer exists is always pending deletion (keeping
/// them detaches them first), so the sweep finishes it. Returns (organization, user).
pub(crate) fn orphaned_uploaders(c: &Connection) -> Result<Vec<(String, String)>, StoreError> {
    // One index seek per distinct uploader (`sources_ingested_by`), not a scan of every
    // source: uploaders are users, and there are few of them.
    let mut next = c.prepare_cached(
        "SELECT ingested_by FROM sources WHERE ingested_by > ?1 ORDER BY ingested_by LIMIT 1",
    )?;
    let mut exists = c.prepare_cached("SELECT 1 FROM users WHERE id = ?1")?;
    let mut org = c.prepare_cached(
        "SELECT w.organization_id FROM sources s JOIN workspaces w ON w.seq = s.ws \
         WHERE s.ingested_by = ?1 AND w.deleting_at IS NULL LIMIT 1",
    )?;
    let mut out = Vec::new();
    let mut after = String::new();
    while let Some(user) = next
        .query_row([&after], |r| r.get::<_, String>(0))
        .optional()?
    {
        if exists.query_row([&user], |_| Ok(())).optional()?.is_none()
            && let Some(o) = org.query_row([&user], |r| r.get(0)).optional()?
        {
            out.push((o, user.clone()));
        }
        after = user;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_the_chunk_budget_but_never_stall() {
        let rows: Vec<(String, i64)> = [("a", 3), ("b", 4), ("c", 5)]
            .iter()
            .map(|(id, n)| (id.to_string(), *n))
            .collect();
        assert_eq!(pick(&rows, 7), vec!["a", "b"]);
        assert_eq!(pick(&rows, 100), vec!["a", "b", "c"]);
        // A source bigger than the budget still goes, alone.
        assert_eq!(pick(&rows, 1), vec!["a"]);
        assert!(pick(&[], 10).is_empty());
    }

    #[test]
    fn sources_of_erased_users_are_found() {
        let dir = std::env::temp_dir().join(format!("orphans-{}", uuid::Uuid::new_v4()));
        let store =
            crate::store::Store::open(&dir, &crate::config::StoreConfig::default()).unwrap();
        store
            .write_blocking(|c| {
                let origin = Origin::new(crate::audit::Actor::cli("test"), None);
                let b = tenancy::bootstrap_org(c, "o", "a@example.test", "free", 100, 14, &origin)?;
                let ws: i64 = c.query_row(
                    "SELECT seq FROM workspaces WHERE id = ?1",
                    [&b.workspace_id],
                    |r| r.get(0),
                )?;
                for (i, by) in [(1, Some(b.user_id.as_str())), (2, Some("usr_gone")), (3, None)] {
                    c.execute(
                        "INSERT INTO sources (id, ws, kind, title, media_type, content_hash, bytes, chunk_count, created_at, ingested_by) \
                         VALUES (?1, ?2, 'text', 't', 'text/plain', ?1, 1, 0, 'x', ?3)",
                        params![format!("src_{i}"), ws, by],
                    )?;
                }
                assert_eq!(
                    orphaned_uploaders(c)?,
                    vec![(b.organization_id.clone(), "usr_gone".to_string())]
                );
                Ok(())
            })
            .unwrap();
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }
}
