//! Background jobs: a durable queue in the store, a worker pool with leases and
//! heartbeats, per-type retry policies, dead letters, cancellation, progress and
//! interval schedules. See `docs/jobs.md`.

pub mod api;
pub mod bench;
pub mod bulk;
pub mod config;
mod handlers;
pub mod metrics;
pub mod queue;
pub mod retry;
pub mod schedule;
mod worker;

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::Notify;

pub use config::JobsConfig;
pub use queue::{Job, JobQueue, NewJob, QueueError, SqliteQueue};
// For handlers that live beside their feature (lifecycle).
pub(crate) use worker::{JobCtx, JobError};

use crate::obs::metrics::Metrics;
use metrics::NameLabels;

/// The job types. `test` exists only when `jobs.testing.enabled` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    IngestText,
    IngestFiles,
    IngestUrls,
    Embed,
    Dedupe,
    RebuildIndex,
    Reindex,
    Retention,
    ExportWorkspace,
    DeleteWorkspace,
    DeleteUserData,
    Test,
}

impl JobKind {
    pub const ALL: [JobKind; 12] = [
        Self::IngestText,
        Self::IngestFiles,
        Self::IngestUrls,
        Self::Embed,
        Self::Dedupe,
        Self::RebuildIndex,
        Self::Reindex,
        Self::Retention,
        Self::ExportWorkspace,
        Self::DeleteWorkspace,
        Self::DeleteUserData,
        Self::Test,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::IngestText => "ingest_text",
            Self::IngestFiles => "ingest_files",
            Self::IngestUrls => "ingest_urls",
            Self::Embed => "embed",
            Self::Dedupe => "dedupe",
            Self::RebuildIndex => "rebuild_index",
            Self::Reindex => "reindex",
            Self::Retention => "retention",
            Self::ExportWorkspace => "export_workspace",
            Self::DeleteWorkspace => "delete_workspace",
            Self::DeleteUserData => "delete_user_data",
            Self::Test => "test",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The queue plus what submitters need; shared by the API and the worker pool.
pub struct Jobs {
    queue: Arc<dyn JobQueue>,
    cfg: JobsConfig,
    metrics: Arc<Metrics>,
    wake: Notify,
    /// This process's lease owner id.
    owner: String,
    /// Set at shutdown: claim nothing more.
    stopping: std::sync::atomic::AtomicBool,
}

/// Who submits a job and why (for scoping and log correlation).
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub organization_id: String,
    pub workspace_id: String,
    pub ws_seq: i64,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub idempotency_key: Option<String>,
}

impl Jobs {
    pub fn new(queue: Arc<dyn JobQueue>, cfg: JobsConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            queue,
            cfg,
            metrics,
            wake: Notify::new(),
            owner: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
            stopping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    pub fn config(&self) -> &JobsConfig {
        &self.cfg
    }

    /// Runs a blocking queue call off the async workers.
    pub async fn call<T, F>(self: &Arc<Self>, f: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn JobQueue) -> Result<T, QueueError> + Send + 'static,
    {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(me.queue.as_ref()))
            .await
            .map_err(|e| QueueError::Store(crate::store::StoreError::Task(e.to_string())))?
    }

    /// Submits one job; the same idempotency key in the same workspace returns the
    /// existing job (`created == false`).
    pub async fn submit(
        self: &Arc<Self>,
        kind: JobKind,
        origin: Origin,
        payload: Value,
    ) -> Result<(Job, bool), QueueError> {
        let mut out = self.submit_many(kind, origin, vec![payload]).await?;
        out.pop()
            .ok_or_else(|| QueueError::Store(crate::store::StoreError::Task("no job".into())))
    }

    pub async fn submit_many(
        self: &Arc<Self>,
        kind: JobKind,
        origin: Origin,
        payloads: Vec<Value>,
    ) -> Result<Vec<(Job, bool)>, QueueError> {
        let max_attempts = self.cfg.retry_for(kind.as_str()).max_attempts;
        let news: Vec<NewJob> = payloads
            .into_iter()
            .map(|payload| NewJob {
                name: kind.as_str().to_string(),
                organization_id: origin.organization_id.clone(),
                workspace_id: origin.workspace_id.clone(),
                ws_seq: origin.ws_seq,
                payload,
                max_attempts,
                idempotency_key: origin.idempotency_key.clone(),
                request_id: origin.request_id.clone(),
                trace_id: origin.trace_id.clone(),
                span_id: origin.span_id.clone(),
            })
            .collect();
        let out = self.call(move |q| q.submit(news, now_ms())).await?;
        let mut created = 0u64;
        for (job, new) in &out {
            if *new {
                created += 1;
                tracing::info!(
                    event = "job.submitted",
                    job_id = %job.id,
                    job_name = %job.name,
                    workspace_id = (!job.workspace_id.is_empty()).then_some(job.workspace_id.as_str()),
                    request_id = job.request_id.as_deref(),
                    trace_id = job.trace_id.as_deref(),
                    "job queued"
                );
            }
        }
        if created > 0 {
            self.metrics
                .jobs
                .submitted
                .get_or_create(&NameLabels {
                    name: kind.as_str().to_string(),
                })
                .inc_by(created);
            self.wake.notify_waiters();
        }
        Ok(out)
    }

    /// On shutdown: this process's running jobs go back to the queue at once instead of
    /// waiting for their leases to expire. Their handlers see the lost lease at their
    /// next step and stop without recording an outcome.
    pub async fn release(self: &Arc<Self>) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let owner = self.owner.clone();
        match self.call(move |q| q.release(&owner, now_ms())).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                event = "job.released",
                jobs = n,
                "running jobs handed back to the queue"
            ),
            Err(e) => tracing::warn!(
                event = "job.release_failed",
                error = %e,
                "running jobs will be taken over when their leases expire"
            ),
        }
    }

    /// Starts the worker pool, the scheduler and the queue-depth refresher.
    pub fn start(state: crate::api::AppState) {
        worker::start(state);
    }
}
