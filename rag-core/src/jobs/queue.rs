//! Durable job queue: the [`JobQueue`] interface and its SQLite implementation.
//!
//! Every state change is one conditional UPDATE, so a worker whose lease was taken over
//! (it stalled past `lease_seconds`) cannot overwrite the new owner's outcome.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::{Value, json};

use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the job queue is full ({0} jobs waiting)")]
    Full(u64),
}

impl From<rusqlite::Error> for QueueError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(StoreError::Sqlite(e))
    }
}

pub const STATUSES: [&str; 6] = [
    "queued",
    "running",
    "succeeded",
    "failed",
    "dead_lettered",
    "cancelled",
];

/// A job as stored. `payload`, `checkpoint` and `result` are JSON text.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub name: String,
    pub organization_id: String,
    pub workspace_id: String,
    pub ws_seq: i64,
    pub status: String,
    pub payload: String,
    pub attempts: u32,
    pub max_attempts: u32,
    pub run_at_ms: i64,
    pub progress_done: i64,
    pub progress_total: i64,
    pub checkpoint: Option<String>,
    pub cancel_requested: bool,
    pub error: Option<String>,
    pub result: Option<String>,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    /// The submitting request's span, for the job span's link.
    pub span_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
}

fn rfc3339(ms: i64) -> Value {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

impl Job {
    /// The API representation (DESIGN §4: job status document).
    pub fn to_json(&self) -> Value {
        let parse = |s: &Option<String>| {
            s.as_deref()
                .and_then(|t| serde_json::from_str::<Value>(t).ok())
                .unwrap_or(Value::Null)
        };
        json!({
            "job_id": self.id,
            "name": self.name,
            "status": self.status,
            "workspace_id": if self.workspace_id.is_empty() { Value::Null } else { Value::String(self.workspace_id.clone()) },
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "progress": {"done": self.progress_done, "total": self.progress_total},
            "cancel_requested": self.cancel_requested,
            "error": self.error,
            "result": parse(&self.result),
            "idempotency_key": self.idempotency_key,
            "request_id": self.request_id,
            "next_attempt_at": if self.status == "failed" || self.status == "queued" { rfc3339(self.run_at_ms) } else { Value::Null },
            "created_at": rfc3339(self.created_ms),
            "updated_at": rfc3339(self.updated_ms),
            "started_at": self.started_ms.map(rfc3339),
            "finished_at": self.finished_ms.map(rfc3339),
        })
    }

    pub fn is_finished(&self) -> bool {
        matches!(
            self.status.as_str(),
            "succeeded" | "dead_lettered" | "cancelled"
        )
    }
}

/// What a submitter asks for.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub name: String,
    pub organization_id: String,
    /// Empty for system jobs (schedules).
    pub workspace_id: String,
    pub ws_seq: i64,
    pub payload: Value,
    pub max_attempts: u32,
    pub idempotency_key: Option<String>,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Finish {
    Succeeded(Value),
    /// Back to the queue, due at `run_at_ms`.
    Retry {
        run_at_ms: i64,
        error: String,
    },
    DeadLetter(String),
    Cancelled,
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// None = all organizations (never exposed to the API).
    pub organization_id: Option<String>,
    /// None = every workspace of the organization (admins).
    pub workspace_id: Option<String>,
    pub status: Option<String>,
    pub name: Option<String>,
    /// Keyset pagination: jobs created before this one.
    pub before_seq: Option<i64>,
    pub limit: usize,
}

/// Heartbeat answer for a job still owned by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    Held { cancel_requested: bool },
    Lost,
}

/// The queue's storage. Blocking calls; the worker runs them on the blocking pool. A
/// PostgreSQL implementation would use `FOR UPDATE SKIP LOCKED` for `claim`.
pub trait JobQueue: Send + Sync + 'static {
    /// Inserts the jobs (one transaction); an idempotency key already used in the
    /// workspace returns the existing job and `false`.
    fn submit(&self, jobs: Vec<NewJob>, now_ms: i64) -> Result<Vec<(Job, bool)>, QueueError>;
    /// Takes up to `max` due jobs in one transaction: queued, failed-and-due, or running
    /// with an expired lease (a crashed or stalled worker's).
    fn claim(
        &self,
        owner: &str,
        lease_ms: i64,
        now_ms: i64,
        max: usize,
    ) -> Result<Vec<Job>, QueueError>;
    fn heartbeat(&self, id: &str, owner: &str, lease_until_ms: i64) -> Result<Lease, QueueError>;
    fn progress(
        &self,
        id: &str,
        owner: &str,
        done: i64,
        total: i64,
        checkpoint: Option<&Value>,
        now_ms: i64,
    ) -> Result<Lease, QueueError>;
    /// Records outcomes (one transaction); per job, false when `owner` no longer holds
    /// its lease and the outcome was dropped.
    fn finish(
        &self,
        owner: &str,
        outcomes: &[(String, Finish)],
        now_ms: i64,
    ) -> Result<Vec<bool>, QueueError>;
    fn get(&self, id: &str) -> Result<Option<(i64, Job)>, QueueError>;
    fn list(&self, f: &ListFilter) -> Result<Vec<(i64, Job)>, QueueError>;
    /// Queued/failed jobs end now; running ones get a cancel request their worker sees
    /// at its next heartbeat or progress step.
    fn cancel(&self, id: &str, now_ms: i64) -> Result<Option<Job>, QueueError>;
    /// A dead-lettered job goes back to the queue with `extra_attempts` more attempts
    /// (attempt numbers keep counting, so logs stay unambiguous).
    fn retry(&self, id: &str, extra_attempts: u32, now_ms: i64) -> Result<Option<Job>, QueueError>;
    /// Hands `owner`'s running jobs back to the queue (clean shutdown): due now, the
    /// interrupted attempt not counted. Returns how many.
    fn release(&self, owner: &str, now_ms: i64) -> Result<usize, QueueError>;
    /// (name, status, count) for every non-empty combination.
    fn counts(&self) -> Result<Vec<(String, String, i64)>, QueueError>;
    /// Removes finished jobs last updated before `before_ms`.
    fn purge_finished(&self, before_ms: i64) -> Result<usize, QueueError>;
}

pub struct SqliteQueue {
    store: Arc<Store>,
    max_pending: u64,
}

impl SqliteQueue {
    pub fn new(store: Arc<Store>, max_pending: u64) -> Self {
        Self { store, max_pending }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        let mut out = None;
        self.store.write_blocking(|c| {
            out = Some(f(c));
            Ok(())
        })?;
        out.unwrap_or_else(|| Err(QueueError::Store(StoreError::Task("no result".into()))))
    }
}

const COLS: &str = "seq, id, name, organization_id, workspace_id, ws, status, payload, attempts, \
    max_attempts, run_at, progress_done, progress_total, checkpoint, cancel_requested, error, \
    result, request_id, trace_id, idempotency_key, created_ms, updated_ms, started_ms, finished_ms, span_id";

fn row(r: &Row<'_>) -> rusqlite::Result<(i64, Job)> {
    Ok((
        r.get(0)?,
        Job {
            id: r.get(1)?,
            name: r.get(2)?,
            organization_id: r.get(3)?,
            workspace_id: r.get(4)?,
            ws_seq: r.get(5)?,
            status: r.get(6)?,
            payload: r.get(7)?,
            attempts: r.get(8)?,
            max_attempts: r.get(9)?,
            run_at_ms: r.get(10)?,
            progress_done: r.get(11)?,
            progress_total: r.get(12)?,
            checkpoint: r.get(13)?,
            cancel_requested: r.get::<_, i64>(14)? != 0,
            error: r.get(15)?,
            result: r.get(16)?,
            request_id: r.get(17)?,
            trace_id: r.get(18)?,
            idempotency_key: r.get(19)?,
            created_ms: r.get(20)?,
            updated_ms: r.get(21)?,
            started_ms: r.get(22)?,
            finished_ms: r.get(23)?,
            span_id: r.get(24)?,
        },
    ))
}

fn get_by_id(c: &Connection, id: &str) -> rusqlite::Result<Option<(i64, Job)>> {
    c.query_row(&format!("SELECT {COLS} FROM jobs WHERE id = ?1"), [id], row)
        .optional()
}

fn lease_state(c: &Connection, id: &str, owner: &str) -> rusqlite::Result<Lease> {
    let v: Option<i64> = c
        .query_row(
            "SELECT cancel_requested FROM jobs WHERE id = ?1 AND status = 'running' AND lease_owner = ?2",
            params![id, owner],
            |r| r.get(0),
        )
        .optional()?;
    Ok(match v {
        Some(c) => Lease::Held {
            cancel_requested: c != 0,
        },
        None => Lease::Lost,
    })
}

impl JobQueue for SqliteQueue {
    fn submit(&self, jobs: Vec<NewJob>, now_ms: i64) -> Result<Vec<(Job, bool)>, QueueError> {
        let max_pending = self.max_pending;
        self.with(move |c| {
            let tx = c.transaction()?;
            let pending: i64 = tx.query_row(
                "SELECT COUNT(*) FROM jobs WHERE status IN ('queued','failed')",
                [],
                |r| r.get(0),
            )?;
            let mut pending = pending as u64;
            let mut out = Vec::with_capacity(jobs.len());
            {
                let mut existing = tx.prepare_cached(&format!(
                    "SELECT {COLS} FROM jobs WHERE workspace_id = ?1 AND idempotency_key = ?2"
                ))?;
                let mut insert = tx.prepare_cached(
                    "INSERT INTO jobs (id, name, organization_id, workspace_id, ws, status, payload, \
                     max_attempts, run_at, idempotency_key, request_id, trace_id, span_id, created_ms, updated_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?8, ?8)",
                )?;
                for j in jobs {
                    if let Some(key) = &j.idempotency_key
                        && let Some((_, job)) = existing
                            .query_row(params![j.workspace_id, key], row)
                            .optional()?
                    {
                        out.push((job, false));
                        continue;
                    }
                    // Only new jobs count against the bound: a repeated key is answered.
                    if pending >= max_pending {
                        return Err(QueueError::Full(pending));
                    }
                    pending += 1;
                    let id = uuid::Uuid::new_v4().to_string();
                    insert.execute(params![
                        id,
                        j.name,
                        j.organization_id,
                        j.workspace_id,
                        j.ws_seq,
                        j.payload.to_string(),
                        j.max_attempts,
                        now_ms,
                        j.idempotency_key,
                        j.request_id,
                        j.trace_id,
                        j.span_id,
                    ])?;
                    out.push((
                        Job {
                            id,
                            name: j.name,
                            organization_id: j.organization_id,
                            workspace_id: j.workspace_id,
                            ws_seq: j.ws_seq,
                            status: "queued".into(),
                            payload: j.payload.to_string(),
                            attempts: 0,
                            max_attempts: j.max_attempts,
                            run_at_ms: now_ms,
                            progress_done: 0,
                            progress_total: 0,
                            checkpoint: None,
                            cancel_requested: false,
                            error: None,
                            result: None,
                            request_id: j.request_id,
                            trace_id: j.trace_id,
                            span_id: j.span_id,
                            idempotency_key: j.idempotency_key,
                            created_ms: now_ms,
                            updated_ms: now_ms,
                            started_ms: None,
                            finished_ms: None,
                        },
                        true,
                    ));
                }
            }
            tx.commit()?;
            Ok(out)
        })
    }

    fn claim(
        &self,
        owner: &str,
        lease_ms: i64,
        now_ms: i64,
        max: usize,
    ) -> Result<Vec<Job>, QueueError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let mut out = Vec::new();
            while out.len() < max {
                match claim_one(&tx, owner, lease_ms, now_ms)? {
                    Some(j) => out.push(j),
                    None => break,
                }
            }
            tx.commit()?;
            Ok(out)
        })
    }

    fn heartbeat(&self, id: &str, owner: &str, lease_until_ms: i64) -> Result<Lease, QueueError> {
        self.with(|c| {
            c.execute(
                "UPDATE jobs SET lease_expires = ?3 WHERE id = ?1 AND status = 'running' AND lease_owner = ?2",
                params![id, owner, lease_until_ms],
            )?;
            Ok(lease_state(c, id, owner)?)
        })
    }

    fn progress(
        &self,
        id: &str,
        owner: &str,
        done: i64,
        total: i64,
        checkpoint: Option<&Value>,
        now_ms: i64,
    ) -> Result<Lease, QueueError> {
        let checkpoint = checkpoint.map(Value::to_string);
        self.with(|c| {
            c.execute(
                "UPDATE jobs SET progress_done = ?3, progress_total = ?4, \
                 checkpoint = COALESCE(?5, checkpoint), updated_ms = ?6 \
                 WHERE id = ?1 AND status = 'running' AND lease_owner = ?2",
                params![id, owner, done, total, checkpoint, now_ms],
            )?;
            Ok(lease_state(c, id, owner)?)
        })
    }

    fn finish(
        &self,
        owner: &str,
        outcomes: &[(String, Finish)],
        now_ms: i64,
    ) -> Result<Vec<bool>, QueueError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let mut out = Vec::with_capacity(outcomes.len());
            for (id, f) in outcomes {
                out.push(finish_one(&tx, id, owner, f, now_ms)?);
            }
            tx.commit()?;
            Ok(out)
        })
    }

    fn get(&self, id: &str) -> Result<Option<(i64, Job)>, QueueError> {
        self.with(|c| Ok(get_by_id(c, id)?))
    }

    fn list(&self, f: &ListFilter) -> Result<Vec<(i64, Job)>, QueueError> {
        self.with(|c| {
            let mut sql = format!("SELECT {COLS} FROM jobs WHERE 1=1");
            let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
            let mut add = |clause: &str, v: Box<dyn rusqlite::ToSql>| {
                args.push(v);
                sql.push_str(&format!(" AND {clause} ?{}", args.len()));
            };
            if let Some(o) = &f.organization_id {
                add("organization_id =", Box::new(o.clone()));
            }
            if let Some(w) = &f.workspace_id {
                add("workspace_id =", Box::new(w.clone()));
            }
            if let Some(s) = &f.status {
                add("status =", Box::new(s.clone()));
            }
            if let Some(n) = &f.name {
                add("name =", Box::new(n.clone()));
            }
            if let Some(b) = f.before_seq {
                add("seq <", Box::new(b));
            }
            sql.push_str(&format!(" ORDER BY seq DESC LIMIT {}", f.limit.min(1000)));
            let mut stmt = c.prepare(&sql)?;
            let rows = stmt
                .query_map(
                    rusqlite::params_from_iter(args.iter().map(|b| b.as_ref())),
                    row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn cancel(&self, id: &str, now_ms: i64) -> Result<Option<Job>, QueueError> {
        self.with(|c| {
            c.execute(
                "UPDATE jobs SET status = 'cancelled', updated_ms = ?2, finished_ms = ?2 \
                 WHERE id = ?1 AND status IN ('queued','failed')",
                params![id, now_ms],
            )?;
            c.execute(
                "UPDATE jobs SET cancel_requested = 1, updated_ms = ?2 WHERE id = ?1 AND status = 'running'",
                params![id, now_ms],
            )?;
            Ok(get_by_id(c, id)?.map(|(_, j)| j))
        })
    }

    fn retry(&self, id: &str, extra_attempts: u32, now_ms: i64) -> Result<Option<Job>, QueueError> {
        self.with(|c| {
            c.execute(
                "UPDATE jobs SET status = 'queued', max_attempts = attempts + ?3, run_at = ?2, \
                 updated_ms = ?2, finished_ms = NULL, cancel_requested = 0 \
                 WHERE id = ?1 AND status = 'dead_lettered'",
                params![id, now_ms, extra_attempts],
            )?;
            Ok(get_by_id(c, id)?.map(|(_, j)| j))
        })
    }

    fn release(&self, owner: &str, now_ms: i64) -> Result<usize, QueueError> {
        self.with(|c| {
            Ok(c.execute(
                "UPDATE jobs SET status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'queued' END, \
                 finished_ms = CASE WHEN cancel_requested = 1 THEN ?2 ELSE NULL END, \
                 attempts = MAX(0, attempts - 1), run_at = ?2, lease_owner = NULL, updated_ms = ?2 \
                 WHERE status = 'running' AND lease_owner = ?1",
                params![owner, now_ms],
            )?)
        })
    }

    fn counts(&self) -> Result<Vec<(String, String, i64)>, QueueError> {
        self.with(|c| {
            let mut stmt =
                c.prepare_cached("SELECT name, status, COUNT(*) FROM jobs GROUP BY name, status")?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn purge_finished(&self, before_ms: i64) -> Result<usize, QueueError> {
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM jobs WHERE status IN ('succeeded','cancelled','dead_lettered') AND updated_ms < ?1",
                [before_ms],
            )?)
        })
    }
}

fn finish_one(
    c: &Connection,
    id: &str,
    owner: &str,
    f: &Finish,
    now_ms: i64,
) -> rusqlite::Result<bool> {
    {
        let n = match f {
            Finish::Succeeded(result) => c.prepare_cached(
                "UPDATE jobs SET status = 'succeeded', result = ?3, error = NULL, lease_owner = NULL, \
                 updated_ms = ?4, finished_ms = ?4 WHERE id = ?1 AND status = 'running' AND lease_owner = ?2",
            )?
            .execute(params![id, owner, result.to_string(), now_ms],
            )?,
            Finish::Retry { run_at_ms, error } => c.prepare_cached(
                "UPDATE jobs SET status = 'failed', run_at = ?3, error = ?4, lease_owner = NULL, \
                 updated_ms = ?5 WHERE id = ?1 AND status = 'running' AND lease_owner = ?2",
            )?
            .execute(params![id, owner, run_at_ms, error, now_ms],
            )?,
            Finish::DeadLetter(error) => c.prepare_cached(
                "UPDATE jobs SET status = 'dead_lettered', error = ?3, lease_owner = NULL, \
                 updated_ms = ?4, finished_ms = ?4 WHERE id = ?1 AND status = 'running' AND lease_owner = ?2",
            )?
            .execute(params![id, owner, error, now_ms],
            )?,
            Finish::Cancelled => c.prepare_cached(
                "UPDATE jobs SET status = 'cancelled', lease_owner = NULL, updated_ms = ?3, \
                 finished_ms = ?3 WHERE id = ?1 AND status = 'running' AND lease_owner = ?2",
            )?
            .execute(params![id, owner, now_ms],
            )?,
        };
        Ok(n == 1)
    }
}

fn claim_one(
    c: &Connection,
    owner: &str,
    lease_ms: i64,
    now_ms: i64,
) -> rusqlite::Result<Option<Job>> {
    // One probe per state, each an index seek on (status, run_at): an IN list or an OR
    // would sort every due row on each claim.
    let mut due: Option<(i64, i64)> = None;
    for status in ["queued", "failed"] {
        let next: Option<(i64, i64)> = c
            .prepare_cached(
                "SELECT run_at, seq FROM jobs WHERE status = ?1 AND run_at <= ?2 ORDER BY run_at LIMIT 1",
            )?
            .query_row(params![status, now_ms], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some(n) = next
            && due.is_none_or(|d| n < d)
        {
            due = Some(n);
        }
    }
    let seq = match due {
        Some((_, seq)) => seq,
        None => {
            let expired: Option<i64> = c
                .prepare_cached(
                    "SELECT seq FROM jobs WHERE status = 'running' AND lease_expires < ?1 \
                     ORDER BY lease_expires LIMIT 1",
                )?
                .query_row([now_ms], |r| r.get(0))
                .optional()?;
            match expired {
                Some(s) => s,
                None => return Ok(None),
            }
        }
    };
    let job = c
        .prepare_cached(&format!(
            "UPDATE jobs SET status = 'running', lease_owner = ?2, lease_expires = ?3, \
             attempts = attempts + 1, started_ms = COALESCE(started_ms, ?4), updated_ms = ?4 \
             WHERE seq = ?1 RETURNING {COLS}"
        ))?
        .query_row(params![seq, owner, now_ms + lease_ms, now_ms], row)
        .optional()?;
    Ok(job.map(|(_, j)| j))
}

/// Schema of the `jobs` table (a migration in `store::schema`).
pub const SCHEMA: &str = r#"
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    organization_id TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    ws INTEGER NOT NULL,
    status TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    run_at INTEGER NOT NULL,
    lease_owner TEXT,
    lease_expires INTEGER,
    progress_done INTEGER NOT NULL DEFAULT 0,
    progress_total INTEGER NOT NULL DEFAULT 0,
    checkpoint TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    result TEXT,
    request_id TEXT,
    trace_id TEXT,
    idempotency_key TEXT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    started_ms INTEGER,
    finished_ms INTEGER,
    span_id TEXT
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs(workspace_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_due ON jobs(status, run_at);
CREATE INDEX jobs_lease ON jobs(status, lease_expires);
CREATE INDEX jobs_org ON jobs(organization_id, workspace_id, seq);
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;

    fn queue(tag: &str) -> (SqliteQueue, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "rag-core-queue-{tag}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let store = Store::open(&dir, &StoreConfig::default()).unwrap();
        (SqliteQueue::new(store, 3), dir)
    }

    fn new_job(key: Option<&str>) -> NewJob {
        NewJob {
            name: "test".into(),
            organization_id: "org".into(),
            workspace_id: "ws".into(),
            ws_seq: 1,
            payload: json!({}),
            max_attempts: 3,
            idempotency_key: key.map(str::to_owned),
            request_id: None,
            trace_id: None,
            span_id: None,
        }
    }

    #[test]
    fn a_stalled_owner_cannot_record_after_a_takeover() {
        let (q, dir) = queue("lease");
        let job = q.submit(vec![new_job(None)], 1_000).unwrap().remove(0).0;
        let a = q.claim("a", 100, 1_000, 10).unwrap();
        assert_eq!(a.len(), 1);
        // Lease still fresh: nothing to claim.
        assert!(q.claim("b", 100, 1_050, 10).unwrap().is_empty());
        // Expired: b takes it over, as attempt 2.
        let b = q.claim("b", 100, 1_200, 10).unwrap();
        assert_eq!((b.len(), b[0].attempts), (1, 2));
        assert_eq!(q.heartbeat(&job.id, "a", 5_000).unwrap(), Lease::Lost);
        let done = [(job.id.clone(), Finish::Succeeded(json!({"by": "a"})))];
        assert_eq!(q.finish("a", &done, 1_300).unwrap(), vec![false]);
        let done = [(job.id.clone(), Finish::Succeeded(json!({"by": "b"})))];
        assert_eq!(q.finish("b", &done, 1_300).unwrap(), vec![true]);
        let (_, j) = q.get(&job.id).unwrap().unwrap();
        assert_eq!(j.status, "succeeded");
        assert_eq!(j.result.as_deref(), Some(r#"{"by":"b"}"#));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn retries_wait_for_their_time_and_the_queue_is_bounded() {
        let (q, dir) = queue("bound");
        let job = q.submit(vec![new_job(None)], 0).unwrap().remove(0).0;
        q.claim("a", 1_000, 0, 1).unwrap();
        let retry = [(
            job.id.clone(),
            Finish::Retry {
                run_at_ms: 500,
                error: "boom".into(),
            },
        )];
        assert_eq!(q.finish("a", &retry, 10).unwrap(), vec![true]);
        assert!(q.claim("a", 1_000, 499, 1).unwrap().is_empty());
        assert_eq!(q.claim("a", 1_000, 500, 1).unwrap().len(), 1);
        // max_pending = 3 waiting jobs (the running one does not count). A full queue
        // refuses new jobs, whole batches at once, but still answers a repeated key.
        q.submit(vec![new_job(Some("k")), new_job(None)], 600)
            .unwrap();
        assert!(matches!(
            q.submit(vec![new_job(None), new_job(None)], 600),
            Err(QueueError::Full(3))
        ));
        q.submit(vec![new_job(None)], 600).unwrap();
        let again = q.submit(vec![new_job(Some("k"))], 600).unwrap();
        assert!(!again[0].1, "existing job returned");
        assert!(matches!(
            q.submit(vec![new_job(None)], 600),
            Err(QueueError::Full(3))
        ));
        assert_eq!(
            q.list(&ListFilter {
                limit: 100,
                ..ListFilter::default()
            })
            .unwrap()
            .len(),
            4
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
