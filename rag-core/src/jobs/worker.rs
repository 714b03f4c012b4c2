//! The worker pool: claims due jobs, keeps their leases alive, runs the handler and
//! records the outcome (retry with backoff, dead letter, cancel).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::metrics::{NameLabels, NameStatusLabels};
use super::queue::{Finish, Job, Lease};
use super::{JobKind, Jobs, Origin, handlers, now_ms, retry, schedule};
use crate::api::AppState;

/// Why a handler stopped without a result.
#[derive(Debug)]
pub(crate) enum JobError {
    Cancelled,
    /// Another worker owns the job now; this attempt's outcome must not be recorded.
    LeaseLost,
    Failed {
        message: String,
        /// Retrying cannot help (bad payload, quota): straight to the dead letter.
        permanent: bool,
    },
}

impl JobError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::Failed {
            message: message.into(),
            permanent: false,
        }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Failed {
            message: message.into(),
            permanent: true,
        }
    }
}

/// What a running handler may use to report progress and notice cancellation.
pub(crate) struct JobCtx {
    jobs: Arc<Jobs>,
    id: String,
    cancel: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
    /// The resume point saved by an earlier attempt, if any.
    pub checkpoint: Option<Value>,
}

impl JobCtx {
    pub fn check(&self) -> Result<(), JobError> {
        if self.lost.load(Ordering::Relaxed) {
            Err(JobError::LeaseLost)
        } else if self.cancel.load(Ordering::Relaxed) {
            Err(JobError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Saves progress (and the resume point) and answers whether to go on.
    pub async fn progress(
        &self,
        done: i64,
        total: i64,
        checkpoint: Option<Value>,
    ) -> Result<(), JobError> {
        let id = self.id.clone();
        let owner = self.jobs.owner.clone();
        let lease = self
            .jobs
            .call(move |q| q.progress(&id, &owner, done, total, checkpoint.as_ref(), now_ms()))
            .await
            .map_err(|e| JobError::retryable(format!("progress update failed: {e}")))?;
        self.apply(lease);
        self.check()
    }

    fn apply(&self, lease: Lease) {
        match lease {
            Lease::Held { cancel_requested } => {
                if cancel_requested {
                    self.cancel.store(true, Ordering::Relaxed);
                }
            }
            Lease::Lost => self.lost.store(true, Ordering::Relaxed),
        }
    }
}

/// An outcome waiting for the recorder, and where to say whether it was recorded.
struct Record {
    id: String,
    finish: Finish,
    reply: oneshot::Sender<Result<bool, String>>,
}

pub(super) fn start(state: AppState) {
    let jobs = Arc::clone(&state.jobs);
    let (tx, rx) = mpsc::channel(jobs.cfg.concurrency * 2);
    tokio::spawn(recorder(Arc::clone(&jobs), rx));
    tokio::spawn(dispatcher(state, tx));
    tokio::spawn(scheduler(Arc::clone(&jobs)));
    tokio::spawn(depth_refresher(jobs));
}

/// Claims as many due jobs as there are free worker slots, in one transaction, and runs
/// each on its own task. With `synchronous: full` every commit is an fsync, so claiming
/// (and recording, see [`recorder`]) in batches is what keeps short jobs fast.
async fn dispatcher(state: AppState, records: mpsc::Sender<Record>) {
    let jobs = Arc::clone(&state.jobs);
    let lease_ms = (jobs.cfg.lease_seconds * 1000) as i64;
    let poll = Duration::from_millis(jobs.cfg.poll_interval_ms.max(10));
    let slots = Arc::new(Semaphore::new(jobs.cfg.concurrency));
    loop {
        // Created before the claim: a submission between claim and wait still wakes us.
        let notified = jobs.wake.notified();
        let Ok(first) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        if jobs.stopping.load(Ordering::SeqCst) {
            return;
        }
        // Only this task takes permits, so the count can only grow until we take them.
        let free = 1 + slots.available_permits();
        let owner = jobs.owner.clone();
        match jobs
            .call(move |q| q.claim(&owner, lease_ms, now_ms(), free))
            .await
        {
            Ok(claimed) if !claimed.is_empty() => {
                let mut permit = Some(first);
                for job in claimed {
                    let p = match permit.take() {
                        Some(p) => p,
                        None => match Arc::clone(&slots).try_acquire_owned() {
                            Ok(p) => p,
                            // Cannot happen (see above); the job's lease expires and it
                            // is claimed again.
                            Err(_) => break,
                        },
                    };
                    let (state, records) = (state.clone(), records.clone());
                    tokio::spawn(async move {
                        run_one(&state, job, &records).await;
                        drop(p);
                    });
                }
            }
            Ok(_) => {
                drop(first);
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(poll) => {}
                }
            }
            Err(e) => {
                drop(first);
                tracing::error!(event = "job.claim_failed", error = %e, "cannot claim jobs");
                tokio::time::sleep(poll).await;
            }
        }
    }
}

/// Group commit: outcomes that arrive together are written in one transaction.
async fn recorder(jobs: Arc<Jobs>, mut rx: mpsc::Receiver<Record>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let items: Vec<(String, Finish)> = batch
            .iter()
            .map(|r| (r.id.clone(), r.finish.clone()))
            .collect();
        let owner = jobs.owner.clone();
        match jobs.call(move |q| q.finish(&owner, &items, now_ms())).await {
            Ok(done) => {
                for (r, ok) in batch.into_iter().zip(done) {
                    let _ = r.reply.send(Ok(ok));
                }
            }
            Err(e) => {
                for r in batch {
                    let _ = r.reply.send(Err(e.to_string()));
                }
            }
        }
    }
}

async fn run_one(state: &AppState, job: Job, records: &mpsc::Sender<Record>) {
    let jobs = Arc::clone(&state.jobs);
    let started = Instant::now();
    let span = tracing::info_span!(
        "job.run",
        otel.kind = "consumer",
        job.id = %job.id,
        job.name = %job.name,
        job.attempt = job.attempts,
        request_id = job.request_id.as_deref(),
        job.submitted_trace_id = job.trace_id.as_deref(),
    );
    if let Some(link) = submitter_link(&job) {
        span.add_link(link);
    }
    tracing::info!(
        event = "job.started",
        job_id = %job.id,
        job_name = %job.name,
        attempt = job.attempts,
        max_attempts = job.max_attempts,
        request_id = job.request_id.as_deref(),
        trace_id = job.trace_id.as_deref(),
        "job started"
    );
    let cancel = Arc::new(AtomicBool::new(job.cancel_requested));
    let lost = Arc::new(AtomicBool::new(false));
    let ctx = JobCtx {
        jobs: Arc::clone(&jobs),
        id: job.id.clone(),
        cancel: Arc::clone(&cancel),
        lost: Arc::clone(&lost),
        checkpoint: job
            .checkpoint
            .as_deref()
            .and_then(|c| serde_json::from_str(c).ok()),
    };
    let heartbeat = tokio::spawn(heartbeat(Arc::clone(&jobs), job.id.clone(), cancel, lost));
    // A panicking handler must fail the job, not the worker: run it on its own task.
    let outcome = {
        let state = state.clone();
        let job = job.clone();
        let handle = tokio::spawn(
            async move {
                ctx.check()?;
                handlers::run(&state, &job, &ctx).await
            }
            .instrument(span),
        );
        match handle.await {
            Ok(r) => r,
            Err(e) => Err(JobError::retryable(format!("job handler panicked: {e}"))),
        }
    };
    heartbeat.abort();

    let elapsed = started.elapsed();
    let (finish, status) = match outcome {
        Ok(result) => (Finish::Succeeded(result), "succeeded"),
        Err(JobError::Cancelled) => (Finish::Cancelled, "cancelled"),
        Err(JobError::LeaseLost) => {
            tracing::warn!(event = "job.lease_lost", job_id = %job.id, job_name = %job.name, request_id = job.request_id.as_deref(), "lease taken over by another worker; outcome discarded");
            return;
        }
        Err(JobError::Failed { message, permanent }) => {
            tracing::warn!(event = "job.failed", job_id = %job.id, job_name = %job.name, attempt = job.attempts, error = %message, request_id = job.request_id.as_deref(), trace_id = job.trace_id.as_deref(), "job attempt failed");
            if !permanent && job.attempts < job.max_attempts {
                let policy = jobs.cfg.retry_for(&job.name);
                let delay = retry::backoff(&policy, job.attempts, rand::random::<f64>());
                tracing::info!(event = "job.retrying", job_id = %job.id, job_name = %job.name, attempt = job.attempts, retry_in_ms = delay.as_millis() as u64, request_id = job.request_id.as_deref(), trace_id = job.trace_id.as_deref(), "job will be retried");
                (
                    Finish::Retry {
                        run_at_ms: now_ms() + delay.as_millis() as i64,
                        error: message,
                    },
                    "failed",
                )
            } else {
                tracing::error!(event = "job.dead_lettered", job_id = %job.id, job_name = %job.name, attempts = job.attempts, error = %message, request_id = job.request_id.as_deref(), trace_id = job.trace_id.as_deref(), "job moved to the dead letter");
                (Finish::DeadLetter(message), "dead_lettered")
            }
        }
    };
    let (reply, answer) = oneshot::channel();
    let sent = records
        .send(Record {
            id: job.id.clone(),
            finish,
            reply,
        })
        .await;
    let recorded = match sent {
        Ok(()) => answer
            .await
            .unwrap_or_else(|_| Err("the recorder stopped".into())),
        Err(_) => Err("the recorder stopped".into()),
    };
    match recorded {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(event = "job.lease_lost", job_id = %job.id, job_name = %job.name, "lease expired before the outcome was recorded; another worker will run it");
            return;
        }
        Err(e) => {
            tracing::error!(event = "job.finish_failed", job_id = %job.id, error = %e, "cannot record the job outcome; the lease will expire and the job run again");
            return;
        }
    }
    match status {
        "succeeded" => {
            tracing::info!(event = "job.succeeded", job_id = %job.id, job_name = %job.name, attempt = job.attempts, duration_ms = elapsed.as_millis() as u64, request_id = job.request_id.as_deref(), trace_id = job.trace_id.as_deref(), "job succeeded")
        }
        "cancelled" => {
            tracing::info!(event = "job.cancelled", job_id = %job.id, job_name = %job.name, request_id = job.request_id.as_deref(), trace_id = job.trace_id.as_deref(), "job cancelled")
        }
        _ => {}
    }
    jobs.metrics
        .jobs
        .completed
        .get_or_create(&super::metrics::NameStatusLabels {
            name: job.name.clone(),
            status: status.to_string(),
        })
        .inc();
    jobs.metrics
        .jobs
        .duration
        .get_or_create(&NameLabels {
            name: job.name.clone(),
        })
        .observe(elapsed.as_secs_f64());
}

/// The submitting request's span, as a link: the job runs in its own trace (it may run
/// long after the request ended, in another process), linked back to the request.
fn submitter_link(job: &Job) -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let trace_id = TraceId::from_hex(job.trace_id.as_deref()?).ok()?;
    let span_id = SpanId::from_hex(job.span_id.as_deref()?).ok()?;
    let cx = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    cx.is_valid().then_some(cx)
}

async fn heartbeat(jobs: Arc<Jobs>, id: String, cancel: Arc<AtomicBool>, lost: Arc<AtomicBool>) {
    let lease_ms = (jobs.cfg.lease_seconds * 1000) as i64;
    let every = Duration::from_millis((lease_ms / 3).max(200) as u64);
    loop {
        tokio::time::sleep(every).await;
        let (i, owner) = (id.clone(), jobs.owner.clone());
        match jobs
            .call(move |q| q.heartbeat(&i, &owner, now_ms() + lease_ms))
            .await
        {
            Ok(Lease::Held { cancel_requested }) => {
                if cancel_requested {
                    cancel.store(true, Ordering::Relaxed);
                }
            }
            Ok(Lease::Lost) => {
                lost.store(true, Ordering::Relaxed);
                return;
            }
            // A failed heartbeat is retried at the next tick; the lease has slack for it.
            Err(e) => {
                tracing::warn!(event = "job.heartbeat_failed", job_id = %id, error = %e, "heartbeat failed")
            }
        }
    }
}

async fn scheduler(jobs: Arc<Jobs>) {
    let schedules: Vec<(String, JobKind, Duration)> = jobs
        .cfg
        .schedules
        .iter()
        .filter_map(|s| {
            Some((
                s.name.clone(),
                JobKind::parse(&s.job)?,
                schedule::parse_every(&s.every).ok()?,
            ))
        })
        .collect();
    if schedules.is_empty() {
        return;
    }
    let mut last: Vec<Option<i64>> = vec![None; schedules.len()];
    loop {
        let now = now_ms();
        for (i, (name, kind, every)) in schedules.iter().enumerate() {
            let slot = schedule::slot(now, *every);
            if last[i] == Some(slot) {
                continue;
            }
            let origin = Origin {
                idempotency_key: Some(format!("schedule:{name}:{slot}")),
                ..Origin::default()
            };
            match jobs
                .submit(*kind, origin, serde_json::json!({"schedule": name}))
                .await
            {
                Ok(_) => last[i] = Some(slot),
                Err(e) => {
                    tracing::warn!(event = "job.schedule_failed", schedule = %name, error = %e, "scheduled job not submitted; retrying")
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn depth_refresher(jobs: Arc<Jobs>) {
    let mut seen: std::collections::HashSet<(String, String)> = Default::default();
    loop {
        match jobs.call(|q| q.counts()).await {
            Ok(counts) => {
                let mut dead = 0;
                let mut now_seen = std::collections::HashSet::new();
                for (name, status, n) in counts {
                    if status == "dead_lettered" {
                        dead += n;
                    }
                    jobs.metrics
                        .jobs
                        .depth
                        .get_or_create(&NameStatusLabels {
                            name: name.clone(),
                            status: status.clone(),
                        })
                        .set(n);
                    now_seen.insert((name, status));
                }
                // Combinations that emptied read 0 rather than keeping their last value.
                for (name, status) in seen.difference(&now_seen) {
                    jobs.metrics
                        .jobs
                        .depth
                        .get_or_create(&NameStatusLabels {
                            name: name.clone(),
                            status: status.clone(),
                        })
                        .set(0);
                }
                seen.extend(now_seen);
                jobs.metrics.jobs.dead_lettered.set(dead);
            }
            Err(e) => {
                tracing::warn!(event = "job.depth_failed", error = %e, "cannot count jobs")
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
