//! The `jobs:` section of the configuration.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Ingest, dedupe and rebuild answer 202 and run on the worker pool; env
    /// `BACKGROUND_JOBS_ENABLED`. Off: they run inside the request as before.
    pub enabled: bool,
    /// Jobs run at the same time by this process.
    pub concurrency: usize,
    /// A running job's lease; a crashed worker's jobs are taken over once it expires.
    pub lease_seconds: u64,
    /// How often an idle worker looks for due jobs (new submissions wake it at once).
    pub poll_interval_ms: u64,
    /// Most jobs waiting (queued or failed-and-retrying) at once; past it submissions
    /// get 503 so the table cannot grow without bound.
    pub max_pending: u64,
    /// Documents (or URLs) stored per batch inside an ingest job; progress and the resume
    /// point advance per batch.
    pub ingest_batch_size: usize,
    /// Finished jobs (succeeded, cancelled, dead-lettered) older than this are removed by
    /// the `retention` job.
    pub retention_days: u32,
    /// Retry policy per job type; types not listed use `default_retry`.
    pub default_retry: RetryConfig,
    pub retry: BTreeMap<String, RetryConfig>,
    pub schedules: Vec<ScheduleConfig>,
    /// Test-only fault injection; keep disabled in production.
    pub testing: TestingConfig,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            concurrency: 2,
            lease_seconds: 30,
            poll_interval_ms: 500,
            max_pending: 100_000,
            ingest_batch_size: 50,
            retention_days: 7,
            default_retry: RetryConfig::default(),
            retry: BTreeMap::new(),
            schedules: Vec::new(),
            testing: TestingConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in total, the first included; then the job is dead-lettered.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubled for each further one.
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Share of the delay drawn at random (0..=1) so retries of many jobs spread out.
    pub jitter: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff_ms: 1000,
            max_backoff_ms: 300_000,
            jitter: 0.2,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Unique name; part of the idempotency key of every run.
    pub name: String,
    /// `reindex` or `retention`.
    pub job: String,
    /// Interval: a number with unit s, m, h or d (`30s`, `15m`, `1h`, `1d`). Runs are
    /// aligned to multiples of the interval since the Unix epoch (UTC).
    pub every: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestingConfig {
    /// Accepts `POST /api/v1/jobs` with `{"name": "test", ...}` (sleeps, fails on demand).
    pub enabled: bool,
    /// Sleep between ingest batches, to make a long ingest observable (kill tests).
    pub ingest_batch_delay_ms: u64,
}

impl JobsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.concurrency == 0 || self.concurrency > 256 {
            return Err("jobs.concurrency must be within 1..=256".into());
        }
        if self.lease_seconds < 2 {
            return Err("jobs.lease_seconds must be at least 2".into());
        }
        if self.ingest_batch_size == 0 {
            return Err("jobs.ingest_batch_size must be positive".into());
        }
        for (name, r) in std::iter::once(("default", &self.default_retry))
            .chain(self.retry.iter().map(|(k, v)| (k.as_str(), v)))
        {
            if r.max_attempts == 0 || !(0.0..=1.0).contains(&r.jitter) {
                return Err(format!(
                    "jobs retry policy {name}: max_attempts must be positive and jitter within 0..=1"
                ));
            }
        }
        for name in self.retry.keys() {
            if super::JobKind::parse(name).is_none() {
                return Err(format!("jobs.retry: unknown job type {name:?}"));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.schedules {
            if !seen.insert(s.name.as_str()) {
                return Err(format!("jobs.schedules: duplicate name {:?}", s.name));
            }
            if !matches!(s.job.as_str(), "reindex" | "retention") {
                return Err(format!(
                    "jobs.schedules.{}: job must be reindex or retention",
                    s.name
                ));
            }
            super::schedule::parse_every(&s.every)
                .map_err(|e| format!("jobs.schedules.{}: {e}", s.name))?;
        }
        Ok(())
    }

    pub fn retry_for(&self, kind: &str) -> RetryConfig {
        self.retry.get(kind).copied().unwrap_or(self.default_retry)
    }
}
