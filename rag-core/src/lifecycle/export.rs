//! Workspace export: a `.tar.gz` with `manifest.json`, `sources.ndjson`, `chunks.ndjson`
//! and `audit.ndjson`, written by the `export_workspace` job to
//! `<data_dir>/exports/<export_id>.tar.gz`.
//!
//! The job reads the workspace in one read transaction on a connection of its own, so the
//! archive is a consistent snapshot and the reader pool serving searches is untouched.
//! Rows are streamed: each member is written line by line to a spool file (tar needs a
//! member's size before its bytes), then the spool files are copied into the archive.
//! Memory stays at a few buffers whatever the workspace's size; disk needs room for the
//! uncompressed members plus the archive while it is being made.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use minirag_contracts::tar::TarWriter;

/// Members are plain data files, readable by whoever extracts the archive.
const MEMBER_MODE: u32 = 0o644;
use super::{LifecycleError, origin_from, parse_payload, plausible_id};
use crate::api::AppState;
use crate::audit;
use crate::config::Config;
use crate::jobs::{Job, JobCtx, JobError};
use crate::store::StoreError;

/// `manifest.json` → `format`.
pub const FORMAT: &str = "minirag-workspace-export";
/// Bumped when a member's shape changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;
pub const MEDIA_TYPE: &str = "application/gzip";
/// Rows between checks of the cancel flag and progress updates in the writer thread.
const CHECK_EVERY: i64 = 512;
/// Audit records read per query while writing `audit.ndjson`.
const AUDIT_PAGE: usize = 1000;

pub fn exports_dir(cfg: &Config) -> PathBuf {
    cfg.data_dir.join("exports")
}

pub fn file_name(export_id: &str) -> String {
    format!("{export_id}.tar.gz")
}

// Work files carry the attempt number, so an attempt that lost its lease (a stalled
// process) never writes into, or cleans up, the files of the attempt that took over.
fn part_path(dir: &Path, export_id: &str, attempt: u32) -> PathBuf {
    dir.join(format!("{export_id}.{attempt}.tar.gz.part"))
}

fn spool_dir(dir: &Path, export_id: &str, attempt: u32) -> PathBuf {
    dir.join(format!(".spool-{export_id}.{attempt}"))
}

/// The export id a file or directory in the exports directory belongs to, and whether
/// it is the finished archive; None for anything that is not ours.
pub(crate) fn owner_of(entry: &str) -> Option<(&str, bool)> {
    let (id, finished) = if let Some(rest) = entry.strip_prefix(".spool-") {
        (rest.split_once('.')?.0, false)
    } else if let Some(rest) = entry.strip_suffix(".tar.gz.part") {
        (rest.rsplit_once('.')?.0, false)
    } else {
        (entry.strip_suffix(".tar.gz")?, true)
    };
    plausible_id(id, "exp").then_some((id, finished))
}

fn remove_entry(path: &Path) {
    let _ = std::fs::remove_file(path).or_else(|_| std::fs::remove_dir_all(path));
}

/// Removes an export's archive and every leftover of making it (best effort: the
/// retention sweep removes whatever is left).
pub fn remove_files(dir: &Path, export_id: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if name
            .to_str()
            .and_then(owner_of)
            .is_some_and(|(id, _)| id == export_id)
        {
            remove_entry(&e.path());
        }
    }
}

/// An `exports` row.
#[derive(Debug, Clone, Serialize)]
pub struct ExportRow {
    pub export_id: String,
    pub organization_id: String,
    pub workspace_id: String,
    pub job_id: Option<String>,
    pub status: String,
    pub include_embeddings: bool,
    pub file_name: Option<String>,
    pub bytes: Option<i64>,
    pub sha256: Option<String>,
    pub counts: Option<Value>,
    pub error: Option<String>,
    pub requested_by: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub expires_at: String,
}

const EXPORT_COLUMNS: &str = "id, organization_id, workspace_id, job_id, status, include_embeddings, \
    file_name, bytes, sha256, counts, error, requested_by, created_at, finished_at, expires_at";

fn export_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ExportRow> {
    let counts: Option<String> = r.get(9)?;
    Ok(ExportRow {
        export_id: r.get(0)?,
        organization_id: r.get(1)?,
        workspace_id: r.get(2)?,
        job_id: r.get(3)?,
        status: r.get(4)?,
        include_embeddings: r.get::<_, i64>(5)? != 0,
        file_name: r.get(6)?,
        bytes: r.get(7)?,
        sha256: r.get(8)?,
        counts: counts.and_then(|c| serde_json::from_str(&c).ok()),
        error: r.get(10)?,
        requested_by: r.get(11)?,
        created_at: r.get(12)?,
        finished_at: r.get(13)?,
        expires_at: r.get(14)?,
    })
}

/// The organization's export by id; another organization's answers None.
pub fn get(
    conn: &Connection,
    organization_id: &str,
    export_id: &str,
) -> Result<Option<ExportRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {EXPORT_COLUMNS} FROM exports WHERE id = ?1 AND organization_id = ?2"),
            params![export_id, organization_id],
            export_row,
        )
        .optional()?)
}

/// Records a new export of the workspace (status `queued`); None when the workspace is
/// not the organization's or is being deleted. Returns the row and the workspace's seq.
pub fn create(
    conn: &Connection,
    organization_id: &str,
    workspace_id: &str,
    include_embeddings: bool,
    requested_by: &str,
    ttl_hours: u64,
) -> Result<Option<(ExportRow, i64)>, StoreError> {
    let seq: Option<i64> = conn
        .query_row(
            "SELECT seq FROM workspaces WHERE id = ?1 AND organization_id = ?2 AND deleting_at IS NULL",
            params![workspace_id, organization_id],
            |r| r.get(0),
        )
        .optional()?;
    let Some(seq) = seq else { return Ok(None) };
    let id = crate::tenancy::new_id("exp");
    let created = crate::tenancy::now();
    let expires = super::time_from_now(chrono::Duration::hours(ttl_hours as i64));
    conn.execute(
        "INSERT INTO exports (id, organization_id, workspace_id, status, include_embeddings, requested_by, created_at, expires_at) \
         VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7)",
        params![id, organization_id, workspace_id, include_embeddings, requested_by, created, expires],
    )?;
    Ok(get(conn, organization_id, &id)?.map(|r| (r, seq)))
}

pub fn set_job(conn: &Connection, export_id: &str, job_id: &str) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE exports SET job_id = ?2 WHERE id = ?1",
        params![export_id, job_id],
    )?;
    Ok(())
}

fn set_status(
    conn: &Connection,
    export_id: &str,
    status: &str,
    error: Option<&str>,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE exports SET status = ?2, error = ?3, finished_at = CASE WHEN ?2 IN ('failed','cancelled') THEN ?4 ELSE finished_at END \
         WHERE id = ?1 AND status IN ('queued','running')",
        params![export_id, status, error, crate::tenancy::now()],
    )?;
    Ok(())
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
    fn digest(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// One NDJSON member being spooled.
struct Member {
    name: &'static str,
    path: PathBuf,
    out: Hashing<BufWriter<File>>,
    records: i64,
}

impl Member {
    fn create(dir: &Path, name: &'static str) -> Result<Self, LifecycleError> {
        let path = dir.join(name);
        let file = File::create(&path).map_err(|source| LifecycleError::Io {
            what: "cannot create",
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            name,
            path,
            out: Hashing::new(BufWriter::with_capacity(1 << 16, file)),
            records: 0,
        })
    }

    fn line(&mut self, v: &Value) -> Result<(), LifecycleError> {
        let io_err = |source| LifecycleError::Io {
            what: "cannot write",
            path: self.path.display().to_string(),
            source,
        };
        serde_json::to_writer(&mut self.out, v).map_err(|e| io_err(io::Error::other(e)))?;
        self.out.write_all(b"\n").map_err(io_err)?;
        self.records += 1;
        Ok(())
    }

    fn close(mut self) -> Result<Spooled, LifecycleError> {
        self.out.flush().map_err(|source| LifecycleError::Io {
            what: "cannot write",
            path: self.path.display().to_string(),
            source,
        })?;
        Ok(Spooled {
            name: self.name,
            sha256: self.out.digest(),
            bytes: self.out.bytes,
            records: self.records,
            path: self.path,
        })
    }
}

struct Spooled {
    name: &'static str,
    path: PathBuf,
    bytes: u64,
    sha256: String,
    records: i64,
}

/// What the writer thread needs; everything owned so it can move there.
struct Inputs {
    db: PathBuf,
    export_id: String,
    organization_id: String,
    workspace_id: String,
    ws: i64,
    include_embeddings: bool,
    spool: PathBuf,
    part: PathBuf,
}

/// Shared between the writer thread and the job: rows written, rows in total, and the
/// stop flag raised on cancellation or a lost lease.
#[derive(Default)]
struct Progress {
    done: AtomicI64,
    total: AtomicI64,
    stop: AtomicBool,
}

impl Progress {
    /// Counts a row; every [`CHECK_EVERY`] rows (`n` is the member's count) a raised stop
    /// flag ends the writer. The job reports the real reason (cancel, lost lease).
    fn tick(&self, n: i64) -> Result<(), LifecycleError> {
        self.done.fetch_add(1, Ordering::Relaxed);
        if n % CHECK_EVERY == 0 && self.stop.load(Ordering::Relaxed) {
            return Err(LifecycleError::Invalid("export stopped".into()));
        }
        Ok(())
    }
}

/// What the archive holds, for the row, the audit record and the job's result.
struct Written {
    bytes: u64,
    sha256: String,
    counts: Value,
}

fn io_at(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LifecycleError + use<> {
    let path = path.display().to_string();
    move |source| LifecycleError::Io { what, path, source }
}

/// The writer thread: snapshot → spool files → tar.gz at `part`.
fn write_archive(inp: &Inputs, progress: &Progress) -> Result<Written, LifecycleError> {
    let conn = Connection::open_with_flags(
        &inp.db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // One read transaction: every member sees the same state of the workspace.
    conn.execute_batch("BEGIN")?;
    let ws = conn
        .query_row(
            "SELECT w.name, w.created_at, w.chunk_limit, w.retention_days, o.name \
             FROM workspaces w JOIN organizations o ON o.id = w.organization_id \
             WHERE w.seq = ?1 AND w.id = ?2 AND w.organization_id = ?3 AND w.deleting_at IS NULL",
            params![inp.ws, inp.workspace_id, inp.organization_id],
            |r| {
                Ok(json!({
                    "workspace": {
                        "id": inp.workspace_id, "name": r.get::<_, String>(0)?,
                        "created_at": r.get::<_, String>(1)?, "chunk_limit": r.get::<_, i64>(2)?,
                        "retention_days": r.get::<_, Option<i64>>(3)?,
                    },
                    "organization": {"id": inp.organization_id, "name": r.get::<_, String>(4)?},
                }))
            },
        )
        .optional()?
        .ok_or_else(|| {
            LifecycleError::Invalid("the workspace no longer exists or is being deleted".into())
        })?;
    let (sources, chunks, audits): (i64, i64, i64) = conn.query_row(
        "SELECT (SELECT COUNT(*) FROM sources WHERE ws = ?1), (SELECT COUNT(*) FROM chunks WHERE ws = ?1), \
                (SELECT COUNT(*) FROM audit_log WHERE workspace_id = ?2 AND organization_id = ?3)",
        params![inp.ws, inp.workspace_id, inp.organization_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    progress
        .total
        .store(sources + chunks + audits, Ordering::Relaxed);
    std::fs::create_dir_all(&inp.spool).map_err(io_at("cannot create", &inp.spool))?;

    let mut m = Member::create(&inp.spool, "sources.ndjson")?;
    {
        let mut stmt = conn.prepare(
            "SELECT id, kind, title, uri, media_type, content_hash, bytes, chunk_count, metadata, created_at, ingested_by \
             FROM sources WHERE ws = ?1 ORDER BY seq",
        )?;
        let mut rows = stmt.query([inp.ws])?;
        while let Some(r) = rows.next()? {
            let metadata: String = r.get(8)?;
            m.line(&json!({
                "source_id": r.get::<_, String>(0)?,
                "kind": r.get::<_, String>(1)?,
                "title": r.get::<_, String>(2)?,
                "uri": r.get::<_, Option<String>>(3)?,
                "media_type": r.get::<_, String>(4)?,
                "content_hash": r.get::<_, String>(5)?,
                "bytes": r.get::<_, i64>(6)?,
                "chunks": r.get::<_, i64>(7)?,
                "metadata": serde_json::from_str::<Value>(&metadata).unwrap_or(Value::Null),
                "created_at": r.get::<_, String>(9)?,
                "ingested_by": r.get::<_, Option<String>>(10)?,
            }))?;
            progress.tick(m.records)?;
        }
    }
    let sources_member = m.close()?;

    let mut m = Member::create(&inp.spool, "chunks.ndjson")?;
    {
        // Both sides carry the workspace: a chunk is exported only if it and its source
        // belong to this workspace.
        let mut stmt = conn.prepare(
            "SELECT s.id, c.chunk_index, c.section, c.body, c.embedder, c.embedding \
             FROM chunks c JOIN sources s ON s.seq = c.source_seq \
             WHERE c.ws = ?1 AND s.ws = ?1 ORDER BY c.id",
        )?;
        let mut rows = stmt.query([inp.ws])?;
        let b64 = base64::engine::general_purpose::STANDARD;
        while let Some(r) = rows.next()? {
            let mut line = json!({
                "source_id": r.get::<_, String>(0)?,
                "chunk_index": r.get::<_, i64>(1)?,
                "section": r.get::<_, Option<String>>(2)?,
                "text": r.get::<_, String>(3)?,
            });
            if inp.include_embeddings {
                line["embedder"] = json!(r.get::<_, String>(4)?);
                let blob = r.get_ref(5)?.as_blob().unwrap_or_default();
                line["embedding_i8"] = json!(b64.encode(blob));
            }
            m.line(&line)?;
            progress.tick(m.records)?;
        }
    }
    let chunks_member = m.close()?;

    let mut m = Member::create(&inp.spool, "audit.ndjson")?;
    let mut after = None;
    loop {
        let page = audit::list(
            &conn,
            &audit::Filter {
                organization_id: Some(inp.organization_id.clone()),
                workspace_id: Some(inp.workspace_id.clone()),
                after_seq: after,
                limit: AUDIT_PAGE,
                ..Default::default()
            },
        )?;
        for rec in &page {
            m.line(
                &serde_json::to_value(rec).map_err(|e| LifecycleError::Invalid(e.to_string()))?,
            )?;
            progress.tick(m.records)?;
        }
        if page.len() < AUDIT_PAGE {
            break;
        }
        after = page.last().map(|r| r.seq);
    }
    let audit_member = m.close()?;
    conn.execute_batch("COMMIT")?;
    drop(conn);

    let members = [sources_member, chunks_member, audit_member];
    let counts = json!({
        "sources": members[0].records,
        "chunks": members[1].records,
        "audit_records": members[2].records,
    });
    let mut manifest = ws;
    manifest["format"] = json!(FORMAT);
    manifest["format_version"] = json!(FORMAT_VERSION);
    manifest["export_id"] = json!(inp.export_id);
    manifest["created_at"] = json!(crate::tenancy::now());
    manifest["generator"] = json!(format!("rag-core {}", env!("CARGO_PKG_VERSION")));
    manifest["counts"] = counts.clone();
    manifest["embeddings"] = if inp.include_embeddings {
        json!({"included": true, "field": "embedding_i8", "encoding": "base64 of the signed 8-bit components, scaled so the largest magnitude is 127 (compare by cosine)"})
    } else {
        json!({"included": false})
    };
    manifest["original_documents"] = json!(
        "not included: rag-core keeps the extracted text as chunks (chunks.ndjson, overlapping by ingest.chunk_overlap characters), not the uploaded files"
    );
    manifest["members"] = members
        .iter()
        .map(
            |m| json!({"name": m.name, "bytes": m.bytes, "sha256": m.sha256, "records": m.records}),
        )
        .collect();
    let manifest =
        serde_json::to_vec_pretty(&manifest).map_err(|e| LifecycleError::Invalid(e.to_string()))?;

    let file = File::create(&inp.part).map_err(io_at("cannot create", &inp.part))?;
    let hashing = Hashing::new(BufWriter::with_capacity(1 << 16, file));
    let gz = flate2::write::GzEncoder::new(hashing, flate2::Compression::new(6));
    let mtime = chrono::Utc::now().timestamp().max(0) as u64;
    let mut tar = TarWriter::new(gz);
    let write_err = io_at("cannot write", &inp.part);
    let result = (|| -> io::Result<Hashing<BufWriter<File>>> {
        tar.append(
            "manifest.json",
            manifest.len() as u64,
            mtime,
            MEMBER_MODE,
            &mut &manifest[..],
        )?;
        for m in &members {
            if progress.stop.load(Ordering::Relaxed) {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "export stopped"));
            }
            let mut f = BufReader::with_capacity(1 << 16, File::open(&m.path)?);
            tar.append(m.name, m.bytes, mtime, MEMBER_MODE, &mut f)?;
        }
        let mut out = tar.finish()?.finish()?;
        out.flush()?;
        Ok(out)
    })();
    let out = result.map_err(write_err)?;
    out.inner
        .get_ref()
        .sync_all()
        .map_err(io_at("cannot sync", &inp.part))?;
    Ok(Written {
        bytes: out.bytes,
        sha256: out.digest(),
        counts,
    })
}

/// The `export_workspace` job.
pub(crate) async fn run_job(state: &AppState, job: &Job, ctx: &JobCtx) -> Result<Value, JobError> {
    let payload = parse_payload(job)?;
    let export_id = payload["export_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !plausible_id(&export_id, "exp") {
        return Err(JobError::permanent("payload has no valid export_id"));
    }
    let origin = origin_from(&payload);
    let (org, id) = (job.organization_id.clone(), export_id.clone());
    let row = state
        .store
        .write(move |c| {
            let row = get(c, &org, &id)?;
            if row
                .as_ref()
                .is_some_and(|r| r.status == "queued" || r.status == "running")
            {
                set_status(c, &id, "running", None)?;
            }
            Ok(row)
        })
        .await
        .map_err(|e| JobError::retryable(e.to_string()))?
        .ok_or_else(|| JobError::permanent("no such export"))?;
    if !matches!(row.status.as_str(), "queued" | "running") {
        // Made by an earlier attempt whose outcome was not recorded, or given up on.
        return Ok(json!({"export_id": export_id, "status": row.status}));
    }
    let dir = exports_dir(&state.cfg);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| JobError::retryable(format!("cannot create {}: {e}", dir.display())))?;
    let attempt = job.attempts;
    let inputs = Inputs {
        // The store's file (see `Store::open`).
        db: state.cfg.data_dir.join("rag.db"),
        export_id: export_id.clone(),
        organization_id: job.organization_id.clone(),
        workspace_id: row.workspace_id.clone(),
        ws: job.ws_seq,
        include_embeddings: row.include_embeddings,
        spool: spool_dir(&dir, &export_id, attempt),
        part: part_path(&dir, &export_id, attempt),
    };
    let progress = Arc::new(Progress::default());
    let started = std::time::Instant::now();
    let mut handle = {
        let progress = Arc::clone(&progress);
        crate::obs::trace::spawn_blocking_in_span(move || {
            let out = write_archive(&inputs, &progress);
            let _ = std::fs::remove_dir_all(&inputs.spool);
            out
        })
    };
    let outcome = loop {
        tokio::select! {
            r = &mut handle => break r.map_err(|e| JobError::retryable(format!("export task failed: {e}"))),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                let (done, total) = (progress.done.load(Ordering::Relaxed), progress.total.load(Ordering::Relaxed));
                if let Err(e) = ctx.progress(done, total.max(done), None).await {
                    progress.stop.store(true, Ordering::Relaxed);
                    let _ = (&mut handle).await;
                    break Err(e);
                }
            }
        }
    };
    let part = part_path(&dir, &export_id, attempt);
    let written = match outcome {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => return Err(give_up(state, job, &part, &export_id, e.into()).await),
        Err(e) => return Err(give_up(state, job, &part, &export_id, e).await),
    };
    // Still ours? A stalled attempt whose lease was taken over must not publish.
    let done = progress.done.load(Ordering::Relaxed);
    if let Err(e) = ctx.progress(done, done, None).await {
        return Err(give_up(state, job, &part, &export_id, e).await);
    }
    let final_path = dir.join(file_name(&export_id));
    tokio::fs::rename(&part, &final_path)
        .await
        .map_err(|e| JobError::retryable(format!("cannot rename the export: {e}")))?;
    let (org, ws_id, id) = (
        job.organization_id.clone(),
        row.workspace_id.clone(),
        export_id.clone(),
    );
    let (bytes, sha, counts) = (
        written.bytes,
        written.sha256.clone(),
        written.counts.clone(),
    );
    let include = row.include_embeddings;
    let rec = state
        .store
        .write(move |c| {
            let tx = c.transaction()?;
            // Only while the export is still wanted: its workspace may have been deleted,
            // or the export expired, while the archive was being written.
            let n = tx.execute(
                "UPDATE exports SET status = 'ready', file_name = ?2, bytes = ?3, sha256 = ?4, counts = ?5, \
                 finished_at = ?6, error = NULL WHERE id = ?1 AND status IN ('queued','running')",
                params![id, file_name(&id), bytes as i64, sha, counts.to_string(), crate::tenancy::now()],
            )?;
            if n == 0 {
                return Ok(None);
            }
            let rec = audit::append(
                &tx,
                origin
                    .event("workspace.exported")
                    .organization(&org)
                    .workspace(&ws_id)
                    .target(id.clone())
                    .after(json!({
                        "export_id": id, "format": FORMAT, "format_version": FORMAT_VERSION,
                        "bytes": bytes, "sha256": sha, "counts": counts,
                        "include_embeddings": include,
                    })),
            )?;
            tx.commit()?;
            Ok(Some(rec))
        })
        .await
        .map_err(|e| JobError::retryable(e.to_string()))?;
    let Some(rec) = rec else {
        let _ = tokio::fs::remove_file(&final_path).await;
        tracing::warn!(event = "export.discarded", export_id = %export_id, "export no longer wanted (workspace deleted or export expired); archive removed");
        return Ok(json!({"export_id": export_id, "status": "discarded"}));
    };
    rec.log();
    tracing::info!(
        event = "export.completed",
        export_id = %export_id,
        workspace_id = %row.workspace_id,
        bytes = written.bytes,
        duration_ms = started.elapsed().as_millis() as u64,
        "workspace export written"
    );
    Ok(json!({
        "export_id": export_id,
        "status": "ready",
        "bytes": written.bytes,
        "sha256": written.sha256,
        "counts": written.counts,
    }))
}

/// Cleans up this attempt's archive after it failed or stopped (the spool is gone
/// already); the export is marked failed (or cancelled) when no attempt follows. Returns
/// the error to end the attempt with.
async fn give_up(
    state: &AppState,
    job: &Job,
    part: &Path,
    export_id: &str,
    e: JobError,
) -> JobError {
    let _ = std::fs::remove_file(part);
    let status = match &e {
        JobError::Cancelled => Some(("cancelled", None)),
        JobError::Failed { message, permanent }
            if *permanent || job.attempts >= job.max_attempts =>
        {
            Some(("failed", Some(message.clone())))
        }
        _ => None,
    };
    if let Some((status, message)) = status {
        let id = export_id.to_string();
        if let Err(err) = state
            .store
            .write(move |c| set_status(c, &id, status, message.as_deref()))
            .await
        {
            tracing::warn!(event = "export.status_failed", export_id, error = %err, "cannot record the export's end");
        }
    }
    tracing::warn!(event = "export.failed", export_id, error = ?e, "workspace export attempt ended without an archive");
    e
}
