//! What each job type does. Handlers are restartable: they save a resume point with
//! their progress, and a repeated step has no second effect (ingest skips content it
//! already stored; dedupe and re-embedding find nothing left to do).

use std::time::Duration;

use rusqlite::params;
use serde_json::{Value, json};

use super::JobKind;
use super::queue::Job;
use super::worker::{JobCtx, JobError};
use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::ingest::{file_slots, store_slots, text_slots, url_slots};
use crate::ingest::Format;
use crate::retrieval::vectors::{dequantize_to_blob, quantize};
use crate::store::StoreError;

/// Failures listed in an ingest job's result; the counts stay exact past it.
const MAX_LISTED_FAILURES: usize = 100;
/// Chunks re-embedded per transaction.
const EMBED_BATCH: usize = 256;

pub(super) async fn run(state: &AppState, job: &Job, ctx: &JobCtx) -> Result<Value, JobError> {
    let Some(kind) = JobKind::parse(&job.name) else {
        return Err(JobError::permanent(format!(
            "unknown job type {:?}",
            job.name
        )));
    };
    match kind {
        JobKind::IngestText | JobKind::IngestFiles | JobKind::IngestUrls => {
            ingest(state, job, ctx, kind).await
        }
        JobKind::Embed => reembed(state, job.ws_seq, Some(ctx)).await,
        JobKind::RebuildIndex => rebuild_index(state, job.ws_seq, Some(ctx)).await,
        JobKind::Dedupe => dedupe(state, job.ws_seq).await,
        JobKind::Reindex => reindex(state).await,
        JobKind::Retention => retention(state).await,
        JobKind::ExportWorkspace => crate::lifecycle::export::run_job(state, job, ctx).await,
        JobKind::DeleteWorkspace => crate::lifecycle::delete::workspace_job(state, job, ctx).await,
        JobKind::DeleteUserData => crate::lifecycle::delete::user_data_job(state, job, ctx).await,
        JobKind::Test => test_job(state, job, ctx).await,
    }
}

fn store_err(e: StoreError) -> JobError {
    JobError::retryable(e.to_string())
}

/// Client errors (bad document, quota) will not heal by retrying.
fn api_err(e: ApiError) -> JobError {
    let msg = format!("{}: {}", e.code, e.message);
    if e.status.is_client_error() {
        JobError::permanent(msg)
    } else {
        JobError::retryable(msg)
    }
}

async fn ingest(
    state: &AppState,
    job: &Job,
    ctx: &JobCtx,
    kind: JobKind,
) -> Result<Value, JobError> {
    let mut payload: Value = serde_json::from_str(&job.payload)
        .map_err(|e| JobError::permanent(format!("malformed payload: {e}")))?;
    let docs = match payload.get_mut("documents").map(Value::take) {
        Some(Value::Array(d)) => d,
        _ => return Err(JobError::permanent("payload has no documents")),
    };
    let total = docs.len();
    // Who submitted the documents (absent in jobs queued by `rag-core ingest`).
    let ingested_by = payload
        .get("ingested_by")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let cp = ctx.checkpoint.clone().unwrap_or_else(|| json!({}));
    let count = |k: &str| cp.get(k).and_then(Value::as_u64).unwrap_or(0);
    let mut next = (count("next") as usize).min(total);
    let (mut ingested, mut skipped, mut failed, mut chunks) = (
        count("ingested"),
        count("skipped"),
        count("failed"),
        count("chunks"),
    );
    let mut failures: Vec<Value> = cp
        .get("failures")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let source = match kind {
        JobKind::IngestText => "text",
        JobKind::IngestUrls => "url",
        _ => "file",
    };
    let batch = state.jobs.config().ingest_batch_size;
    let delay = state.jobs.config().testing.ingest_batch_delay_ms;
    ctx.progress(next as i64, total as i64, None).await?;
    while next < total {
        ctx.check()?;
        let end = (next + batch).min(total);
        let part = &docs[next..end];
        let slots = match kind {
            JobKind::IngestText => {
                let inputs = part
                    .iter()
                    .map(|d| {
                        (
                            d["title"]
                                .as_str()
                                .unwrap_or("Untitled document")
                                .to_string(),
                            d["text"].as_str().unwrap_or_default().to_string(),
                            d.get("metadata").cloned().unwrap_or_else(|| json!({})),
                        )
                    })
                    .collect();
                text_slots(state, inputs, next).await.map_err(api_err)?
            }
            JobKind::IngestFiles => {
                let mut files = Vec::with_capacity(part.len());
                for d in part {
                    let name = d["name"].as_str().unwrap_or("upload").to_string();
                    let format = Format::from_content_type(d["media_type"].as_str().unwrap_or(""))
                        .map_err(|e| JobError::permanent(format!("{name}: {e}")))?;
                    let data = hex::decode(d["data_hex"].as_str().unwrap_or(""))
                        .map_err(|e| JobError::permanent(format!("{name}: bad payload: {e}")))?;
                    files.push((name, format, data));
                }
                file_slots(state, files).await.map_err(api_err)?
            }
            _ => {
                let items = part
                    .iter()
                    .map(|d| {
                        (
                            d["url"].as_str().unwrap_or_default().to_string(),
                            d["title"].as_str().map(str::to_owned),
                        )
                    })
                    .collect();
                url_slots(state, items).await
            }
        };
        let results = store_slots(
            state,
            job.ws_seq,
            &job.workspace_id,
            ingested_by.as_deref(),
            source,
            slots,
        )
        .await
        .map_err(api_err)?;
        for r in results {
            match r["status"].as_str() {
                Some("ingested") => {
                    ingested += 1;
                    chunks += r["chunks"].as_u64().unwrap_or(0);
                }
                Some("skipped") => skipped += 1,
                _ => {
                    failed += 1;
                    if failures.len() < MAX_LISTED_FAILURES {
                        failures.push(
                            json!({"title": r["title"], "uri": r["uri"], "error": r["error"]}),
                        );
                    }
                }
            }
        }
        next = end;
        let summary = json!({
            "next": next, "ingested": ingested, "skipped": skipped, "failed": failed,
            "chunks": chunks, "failures": failures,
        });
        ctx.progress(next as i64, total as i64, Some(summary))
            .await?;
        if delay > 0 && next < total {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
    }
    Ok(json!({
        "documents": total, "ingested": ingested, "skipped": skipped, "failed": failed,
        "chunks": chunks, "failures": failures,
    }))
}

/// Removes chunks whose text repeats an earlier chunk of the same workspace.
pub(crate) async fn dedupe(state: &AppState, ws: i64) -> Result<Value, JobError> {
    let removed: Vec<i64> = state
        .store
        .write(move |c| {
            let tx = c.transaction()?;
            let gone: Vec<(i64, i64)> = {
                let mut stmt = tx.prepare(
                    "SELECT id, source_seq FROM chunks WHERE ws = ?1 AND id NOT IN \
                     (SELECT MIN(id) FROM chunks WHERE ws = ?1 GROUP BY body)",
                )?;
                stmt.query_map([ws], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?
            };
            for (id, source) in &gone {
                tx.execute("DELETE FROM chunks WHERE id = ?1", [id])?;
                tx.execute(
                    "UPDATE sources SET chunk_count = MAX(0, chunk_count - 1) WHERE seq = ?1",
                    [source],
                )?;
            }
            tx.execute(
                "UPDATE workspaces SET chunk_count = MAX(0, chunk_count - ?1) WHERE seq = ?2",
                params![gone.len() as i64, ws],
            )?;
            tx.commit()?;
            Ok(gone.into_iter().map(|(id, _)| id).collect())
        })
        .await
        .map_err(store_err)?;
    state.searcher.remove_vectors(ws, &removed).await;
    state.metrics.chunk_records.dec_by(removed.len() as i64);
    tracing::info!(
        event = "chunks.dedupe.completed",
        removed = removed.len(),
        "duplicate chunks removed"
    );
    Ok(json!({"removed_chunks": removed.len()}))
}

/// Re-embeds the workspace's chunks stored under another embedder than the current one.
pub(crate) async fn reembed(
    state: &AppState,
    ws: i64,
    ctx: Option<&JobCtx>,
) -> Result<Value, JobError> {
    let name = state.embedder.name();
    let n = name.clone();
    let total: i64 = state
        .store
        .read(move |c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM chunks WHERE ws = ?1 AND embedder != ?2",
                params![ws, n],
                |r| r.get(0),
            )?)
        })
        .await
        .map_err(store_err)?;
    let mut done = 0i64;
    loop {
        if let Some(ctx) = ctx {
            ctx.progress(done, total, None).await?;
        }
        let n = name.clone();
        let batch: Vec<(i64, String)> = state
            .store
            .read(move |c| {
                let mut stmt = c.prepare(
                    "SELECT id, body FROM chunks WHERE ws = ?1 AND embedder != ?2 ORDER BY id LIMIT ?3",
                )?;
                let rows = stmt
                    .query_map(params![ws, n, EMBED_BATCH as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            })
            .await
            .map_err(store_err)?;
        if batch.is_empty() {
            break;
        }
        let texts: Vec<String> = batch.iter().map(|(_, b)| b.clone()).collect();
        state
            .metrics
            .embedding_queue_depth
            .inc_by(texts.len() as i64);
        let vectors = state.embedder.embed(&texts).await;
        state
            .metrics
            .embedding_queue_depth
            .dec_by(texts.len() as i64);
        let vectors = vectors.map_err(|e| {
            state.metrics.external_error("openai", "embeddings");
            JobError::retryable(format!("embedding failed: {e}"))
        })?;
        let rows: Vec<(i64, Vec<u8>)> = batch
            .iter()
            .zip(&vectors)
            .map(|((id, _), v)| (*id, dequantize_to_blob(&quantize(v))))
            .collect();
        let count = rows.len() as i64;
        let n = name.clone();
        state
            .store
            .write(move |c| {
                let tx = c.transaction()?;
                for (id, blob) in &rows {
                    tx.execute(
                        "UPDATE chunks SET embedding = ?2, embedder = ?3 WHERE id = ?1",
                        params![id, blob, n],
                    )?;
                }
                tx.commit()?;
                Ok(())
            })
            .await
            .map_err(store_err)?;
        done += count;
    }
    Ok(json!({"reembedded_chunks": done, "embedder": name}))
}

/// Re-embeds stale chunks, then drops the workspace's cached vectors so the next search
/// loads them afresh from the store.
pub(crate) async fn rebuild_index(
    state: &AppState,
    ws: i64,
    ctx: Option<&JobCtx>,
) -> Result<Value, JobError> {
    let mut out = reembed(state, ws, ctx).await?;
    let slot = state.searcher.index.slot(ws);
    let mut guard = slot.write().await;
    if let Some(v) = guard.take() {
        state.searcher.index.release(v.len());
    }
    drop(guard);
    out["vector_cache_reset"] = json!(true);
    tracing::info!(event = "index.rebuild.completed", reembedded = %out["reembedded_chunks"], "index rebuilt");
    Ok(out)
}

/// Scheduled: merges the full-text index's segments (all workspaces).
async fn reindex(state: &AppState) -> Result<Value, JobError> {
    state
        .store
        .write(|c| {
            c.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('optimize')", [])?;
            Ok(())
        })
        .await
        .map_err(store_err)?;
    Ok(json!({"fts": "optimized"}))
}

/// Scheduled: deletes finished jobs older than `jobs.retention_days`, then the data
/// lifecycle sweep (content retention, expired exports, rotated logs).
async fn retention(state: &AppState) -> Result<Value, JobError> {
    let days = state.jobs.config().retention_days as i64;
    let before = super::now_ms() - days * 86_400_000;
    let removed = state
        .jobs
        .call(move |q| q.purge_finished(before))
        .await
        .map_err(|e| JobError::retryable(e.to_string()))?;
    let mut out = crate::lifecycle::retention::sweep(state).await?;
    out["removed_jobs"] = json!(removed);
    Ok(out)
}

/// Test-only (`jobs.testing.enabled`): sleeps `steps` × `step_ms` reporting progress and
/// fails its first `fail_attempts` attempts (`fail_permanently` skips the retries).
async fn test_job(state: &AppState, job: &Job, ctx: &JobCtx) -> Result<Value, JobError> {
    if !state.jobs.config().testing.enabled {
        return Err(JobError::permanent("test jobs are disabled"));
    }
    let p: Value = serde_json::from_str(&job.payload).unwrap_or_default();
    let steps = p["steps"].as_u64().unwrap_or(1).min(10_000) as i64;
    let step_ms = p["step_ms"].as_u64().unwrap_or(0).min(60_000);
    let fail_attempts = p["fail_attempts"].as_u64().unwrap_or(0);
    let started = super::now_ms();
    for i in 0..steps {
        if step_ms > 0 {
            tokio::time::sleep(Duration::from_millis(step_ms)).await;
            ctx.progress(i + 1, steps, None).await?;
        }
    }
    if u64::from(job.attempts) <= fail_attempts {
        let msg = format!("injected failure on attempt {}", job.attempts);
        return Err(if p["fail_permanently"].as_bool() == Some(true) {
            JobError::permanent(msg)
        } else {
            JobError::retryable(msg)
        });
    }
    Ok(json!({"started_ms": started, "finished_ms": super::now_ms(), "attempt": job.attempts}))
}
