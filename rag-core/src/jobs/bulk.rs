//! `rag-core ingest PATH...`: bulk ingest of files and folders.
//!
//! Unchanged files are skipped by a per-workspace manifest of file hashes (path →
//! SHA-256 of the bytes), so re-running on the same folder only sends what changed;
//! a changed file whose extracted text is already stored is still skipped by the
//! store's content hash. Files go in batches, through the job queue when jobs are
//! enabled (this process runs workers too, so no server is needed), else directly.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{OptionalExtension, params};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{JobKind, Jobs, Origin, now_ms};
use crate::api::AppState;
use crate::api::ingest::{Slot, file_slots, store_slots};
use crate::ingest::Format;

pub const SCHEMA: &str = r#"
CREATE TABLE ingest_manifest (
    ws INTEGER NOT NULL,
    path TEXT NOT NULL,
    file_hash TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (ws, path)
);
"#;

#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Queue(#[from] super::QueueError),
    #[error("{0}")]
    Workspace(String),
    #[error("cannot read {path}: {source}")]
    Walk {
        path: String,
        source: std::io::Error,
    },
}

pub struct BulkOptions {
    pub workspace: Option<String>,
    pub paths: Vec<PathBuf>,
    /// Files per batch (one store transaction, or one job).
    pub batch_files: usize,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub files: usize,
    pub ingested: usize,
    pub unchanged: usize,
    pub duplicate: usize,
    pub chunks: u64,
    pub bytes: u64,
    pub failed: Vec<(String, String)>,
    pub jobs: Vec<String>,
}

struct Target {
    ws_seq: i64,
    workspace_id: String,
    organization_id: String,
}

async fn resolve_workspace(state: &AppState, id: Option<String>) -> Result<Target, BulkError> {
    let rows: Vec<(i64, String, String)> = state
        .store
        .read(move |c| {
            let mut stmt = c.prepare(
                "SELECT seq, id, organization_id FROM workspaces WHERE (?1 IS NULL OR id = ?1) LIMIT 2",
            )?;
            let rows = stmt
                .query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await?;
    match rows.as_slice() {
        [(seq, id, org)] => Ok(Target {
            ws_seq: *seq,
            workspace_id: id.clone(),
            organization_id: org.clone(),
        }),
        [] => Err(BulkError::Workspace(
            "no such workspace (run `rag-core admin bootstrap` first, or check --workspace)".into(),
        )),
        _ => Err(BulkError::Workspace(
            "the store has several workspaces; choose one with --workspace".into(),
        )),
    }
}

/// Files under `paths`, sorted; hidden entries and symlinks are skipped (no loops).
fn walk(paths: &[PathBuf]) -> Result<Vec<(PathBuf, u64)>, BulkError> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = paths.iter().rev().cloned().collect();
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).map_err(|source| BulkError::Walk {
            path: p.display().to_string(),
            source,
        })?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&p)
                .map_err(|source| BulkError::Walk {
                    path: p.display().to_string(),
                    source,
                })?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|e| {
                    !e.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with('.'))
                })
                .collect();
            entries.sort();
            stack.extend(entries.into_iter().rev());
        } else if meta.is_file() {
            out.push((p, meta.len()));
        }
    }
    Ok(out)
}

/// Progress on stderr: a redrawn line on a terminal, a plain line every 5 s otherwise.
struct Progress {
    total_files: usize,
    total_bytes: u64,
    files: usize,
    bytes: u64,
    chunks: u64,
    started: Instant,
    last: Option<Instant>,
    tty: bool,
}

impl Progress {
    fn line(&self) -> String {
        let el = self.started.elapsed().as_secs_f64();
        let eta = if self.bytes > 0 && self.bytes < self.total_bytes {
            let rest = el * (self.total_bytes - self.bytes) as f64 / self.bytes as f64;
            format!("{:.0}s", rest)
        } else {
            "-".into()
        };
        format!(
            "files {}/{}  bytes {}/{}  chunks {}  elapsed {:.0}s  ETA {eta}",
            self.files, self.total_files, self.bytes, self.total_bytes, self.chunks, el
        )
    }

    fn tick(&mut self, force: bool) {
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if !force && self.last.is_some_and(|l| l.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[2K{}", self.line())
        } else {
            writeln!(err, "progress: {}", self.line())
        };
        let _ = err.flush();
    }

    fn finish(&mut self) {
        self.tick(true);
        if self.tty {
            let _ = writeln!(std::io::stderr());
        }
    }
}

pub async fn run(state: &AppState, opts: BulkOptions) -> Result<Summary, BulkError> {
    let target = resolve_workspace(state, opts.workspace.clone()).await?;
    let files = walk(&opts.paths)?;
    let mut sum = Summary {
        files: files.len(),
        ..Summary::default()
    };
    let mut progress = Progress {
        total_files: files.len(),
        total_bytes: files.iter().map(|(_, n)| n).sum(),
        files: 0,
        bytes: 0,
        chunks: 0,
        started: Instant::now(),
        last: None,
        tty: std::io::stderr().is_terminal(),
    };
    if state.jobs.enabled() {
        Jobs::start(state.clone());
    }
    let max_bytes = state.cfg.limits.max_document_bytes as u64;
    for batch in files.chunks(opts.batch_files.max(1)) {
        // Read, hash and check the manifest; what is left is parsed one by one so a bad
        // file fails alone, with its reason.
        let mut ready: Vec<Ready> = Vec::new();
        let queued = state.jobs.enabled();
        for (path, len) in batch {
            let name = path.display().to_string();
            progress.files += 1;
            progress.bytes += len;
            if *len > max_bytes {
                sum.failed.push((
                    name,
                    format!("larger than limits.max_document_bytes ({max_bytes})"),
                ));
                continue;
            }
            let data = match std::fs::read(path) {
                Ok(d) => d,
                Err(e) => {
                    sum.failed.push((name, e.to_string()));
                    continue;
                }
            };
            sum.bytes += data.len() as u64;
            let hash = hex::encode(Sha256::digest(&data));
            let (ws, key, h) = (target.ws_seq, manifest_key(path), hash.clone());
            let known: Option<String> = state
                .store
                .read(move |c| {
                    Ok(c.query_row(
                        "SELECT file_hash FROM ingest_manifest WHERE ws = ?1 AND path = ?2",
                        params![ws, key],
                        |r| r.get(0),
                    )
                    .optional()?)
                })
                .await?;
            if known.as_deref() == Some(h.as_str()) {
                sum.unchanged += 1;
                continue;
            }
            let format = match Format::from_file_name(&name) {
                Ok(f) => f,
                Err(e) => {
                    sum.failed.push((name, e.to_string()));
                    continue;
                }
            };
            // Direct mode stores this parse; queued mode only validates here, the job
            // parses again from the bytes it carries.
            let (input, keep) = if queued {
                (data.clone(), data)
            } else {
                (data, Vec::new())
            };
            let slot = match file_slots(state, vec![(name.clone(), format, input)]).await {
                Ok(mut s) => s.pop(),
                Err(e) => {
                    sum.failed.push((name, e.message));
                    continue;
                }
            };
            ready.push(Ready {
                name,
                hash,
                format,
                data: keep,
                slot,
            });
        }
        if !ready.is_empty() {
            let stored = if queued {
                through_queue(state, &target, &ready, &mut progress, &mut sum).await?
            } else {
                directly(state, &target, ready, &mut sum).await?
            };
            record(state, target.ws_seq, stored).await?;
        }
        progress.chunks = sum.chunks;
        progress.tick(false);
    }
    progress.finish();
    Ok(sum)
}

struct Ready {
    name: String,
    hash: String,
    format: Format,
    /// The bytes (queued mode only).
    data: Vec<u8>,
    /// The parsed document (direct mode stores it).
    slot: Option<Slot>,
}

fn manifest_key(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// Returns (manifest key, hash) of the files now in the store.
async fn directly(
    state: &AppState,
    target: &Target,
    ready: Vec<Ready>,
    sum: &mut Summary,
) -> Result<Vec<(String, String)>, BulkError> {
    let mut slots = Vec::with_capacity(ready.len());
    let mut names = Vec::with_capacity(ready.len());
    for r in ready {
        if let Some(slot) = r.slot {
            slots.push(slot);
            names.push((r.name, r.hash));
        }
    }
    let results = match store_slots(
        state,
        target.ws_seq,
        &target.workspace_id,
        None,
        "file",
        slots,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            for (n, _) in names {
                sum.failed.push((n, e.message.clone()));
            }
            return Ok(Vec::new());
        }
    };
    let mut stored = Vec::new();
    for ((name, hash), r) in names.iter().zip(results) {
        match r["status"].as_str() {
            Some("ingested") => {
                sum.ingested += 1;
                sum.chunks += r["chunks"].as_u64().unwrap_or(0);
            }
            Some("skipped") => sum.duplicate += 1,
            _ => {
                sum.failed.push((
                    name.clone(),
                    r["error"]["message"]
                        .as_str()
                        .unwrap_or("failed")
                        .to_string(),
                ));
                continue;
            }
        }
        stored.push((manifest_key(Path::new(name)), hash.clone()));
    }
    Ok(stored)
}

async fn through_queue(
    state: &AppState,
    target: &Target,
    ready: &[Ready],
    progress: &mut Progress,
    sum: &mut Summary,
) -> Result<Vec<(String, String)>, BulkError> {
    let documents: Vec<Value> = ready
        .iter()
        .map(|r| json!({"name": r.name, "media_type": r.format.media_type(), "data_hex": hex::encode(&r.data)}))
        .collect();
    let origin = Origin {
        organization_id: target.organization_id.clone(),
        workspace_id: target.workspace_id.clone(),
        ws_seq: target.ws_seq,
        request_id: Some(format!("cli-ingest-{}", now_ms())),
        ..Origin::default()
    };
    let (job, _) = state
        .jobs
        .submit(
            JobKind::IngestFiles,
            origin,
            json!({"documents": documents}),
        )
        .await?;
    sum.jobs.push(job.id.clone());
    let chunks_before = sum.chunks;
    let job = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let id = job.id.clone();
        let Some((_, j)) = state.jobs.call(move |q| q.get(&id)).await? else {
            return Err(BulkError::Workspace("the ingest job disappeared".into()));
        };
        if let Some(cp) = j
            .checkpoint
            .as_deref()
            .and_then(|c| serde_json::from_str::<Value>(c).ok())
        {
            progress.chunks = chunks_before + cp["chunks"].as_u64().unwrap_or(0);
        }
        progress.tick(false);
        if j.is_finished() {
            break j;
        }
    };
    if job.status != "succeeded" {
        let why = job.error.unwrap_or_else(|| job.status.clone());
        for r in ready {
            sum.failed
                .push((r.name.clone(), format!("job {}: {why}", job.id)));
        }
        return Ok(Vec::new());
    }
    let r: Value = job
        .result
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default();
    sum.ingested += r["ingested"].as_u64().unwrap_or(0) as usize;
    sum.duplicate += r["skipped"].as_u64().unwrap_or(0) as usize;
    sum.chunks += r["chunks"].as_u64().unwrap_or(0);
    let failed: Vec<String> = r["failures"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f["uri"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for f in r["failures"].as_array().into_iter().flatten() {
        sum.failed.push((
            f["uri"].as_str().unwrap_or("?").to_string(),
            f["error"]["message"]
                .as_str()
                .unwrap_or("failed")
                .to_string(),
        ));
    }
    Ok(ready
        .iter()
        .filter(|r| !failed.contains(&r.name))
        .map(|r| (manifest_key(Path::new(&r.name)), r.hash.clone()))
        .collect())
}

async fn record(state: &AppState, ws: i64, stored: Vec<(String, String)>) -> Result<(), BulkError> {
    if stored.is_empty() {
        return Ok(());
    }
    state
        .store
        .write(move |c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO ingest_manifest (ws, path, file_hash, updated_ms) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (ws, path) DO UPDATE SET file_hash = excluded.file_hash, updated_ms = excluded.updated_ms",
                )?;
                for (path, hash) in &stored {
                    stmt.execute(params![ws, path, hash, now_ms()])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
    Ok(())
}
