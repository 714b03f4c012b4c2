//! Data lifecycle: workspace export, deletion of sources, workspaces and a user's data,
//! and retention (per-workspace content retention, rotated log files, expired exports).
//! See `docs/data-lifecycle.md`.
//!
//! Long operations (export, deleting a workspace or a user's documents) run as jobs on the
//! worker pool, which runs whether or not `jobs.enabled` is set, so the HTTP side only
//! validates, records the request and answers 202. Deletions work in batches of
//! `lifecycle.delete_batch_size` chunks, each its own short transaction, so the single
//! writer connection is never held for long.

pub mod api;
pub mod config;
pub mod delete;
pub mod export;
pub mod retention;

pub use config::LifecycleConfig;

use rusqlite::Connection;

use crate::store::StoreError;

/// Migration v6: retention policy and deletion mark on workspaces, the uploader of each
/// source, and the exports table.
///
/// `sources.ingested_by` is filled for sources ingested from now on (API and queued
/// ingest); older sources, and those ingested with `rag-core ingest`, have NULL there and
/// cannot be attributed to a user.
pub const SCHEMA: &str = r#"
ALTER TABLE workspaces ADD COLUMN retention_days INTEGER CHECK (retention_days IS NULL OR retention_days > 0);
ALTER TABLE workspaces ADD COLUMN deleting_at TEXT;
ALTER TABLE sources ADD COLUMN ingested_by TEXT;
CREATE INDEX sources_ingested_by ON sources(ingested_by) WHERE ingested_by IS NOT NULL;
CREATE INDEX sources_ws_created ON sources(ws, created_at);
CREATE TABLE exports (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    job_id TEXT,
    status TEXT NOT NULL CHECK (status IN ('queued','running','ready','failed','cancelled','expired')),
    include_embeddings INTEGER NOT NULL DEFAULT 0,
    file_name TEXT,
    bytes INTEGER,
    sha256 TEXT,
    counts TEXT,
    error TEXT,
    requested_by TEXT,
    created_at TEXT NOT NULL,
    finished_at TEXT,
    expires_at TEXT NOT NULL
);
CREATE INDEX exports_org ON exports(organization_id, created_at);
CREATE INDEX exports_workspace ON exports(workspace_id);
CREATE INDEX exports_expiry ON exports(status, expires_at);
"#;

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl From<rusqlite::Error> for LifecycleError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(StoreError::Sqlite(e))
    }
}

impl From<LifecycleError> for crate::jobs::JobError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::Invalid(m) => Self::permanent(m),
            other => Self::retryable(other.to_string()),
        }
    }
}

/// Runs `f` with SQLite's `secure_delete` on, so pages freed by a deletion are zeroed
/// instead of keeping the deleted text in the file's free space; restored afterwards so
/// other writes on the shared writer connection keep their cost.
pub fn securely<T>(
    conn: &mut Connection,
    f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let before: i64 = conn.query_row("PRAGMA secure_delete", [], |r| r.get(0))?;
    conn.execute_batch("PRAGMA secure_delete = ON")?;
    let out = f(conn);
    // Best effort: a failure here leaves the safer setting on.
    let _ = conn.execute_batch(&format!("PRAGMA secure_delete = {}", before.clamp(0, 2)));
    out
}

/// Who asked, carried in a job's payload so the audit records the job writes name them.
pub(crate) fn actor_json(origin: &crate::audit::Origin) -> serde_json::Value {
    serde_json::json!({
        "actor": origin.actor.name,
        "actor_key_id": origin.actor.key_id,
        "request_id": origin.request_id,
    })
}

pub(crate) fn origin_from(payload: &serde_json::Value) -> crate::audit::Origin {
    crate::audit::Origin::new(
        crate::audit::Actor {
            name: payload["actor"]
                .as_str()
                .unwrap_or("system:lifecycle")
                .to_string(),
            key_id: payload["actor_key_id"].as_str().map(str::to_owned),
        },
        payload["request_id"].as_str(),
    )
}

pub(crate) fn parse_payload(
    job: &crate::jobs::Job,
) -> Result<serde_json::Value, crate::jobs::JobError> {
    serde_json::from_str(&job.payload)
        .map_err(|e| crate::jobs::JobError::permanent(format!("malformed payload: {e}")))
}

/// The stored timestamp form (UTC, milliseconds, `Z`), `offset` from now: string order is
/// time order, which the retention and expiry queries rely on.
pub(crate) fn time_from_now(offset: chrono::Duration) -> String {
    (chrono::Utc::now() + offset)
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Ids we mint are `<kind>_<hex>`; anything else never reaches the store or a path.
pub(crate) fn plausible_id(id: &str, kind: &str) -> bool {
    id.strip_prefix(kind)
        .and_then(|r| r.strip_prefix('_'))
        .is_some_and(|r| !r.is_empty() && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_hexdigit()))
}
