//! Job metrics (DESIGN §4.2), registered into rag-core's registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabels {
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameStatusLabels {
    pub name: String,
    pub status: String,
}

pub struct JobMetrics {
    pub submitted: Family<NameLabels, Counter>,
    pub completed: Family<NameStatusLabels, Counter>,
    pub duration: Family<NameLabels, Histogram>,
    /// Jobs in the store by type and state (refreshed from the table every few seconds).
    pub depth: Family<NameStatusLabels, Gauge>,
    pub dead_lettered: Gauge,
}

fn buckets() -> impl Iterator<Item = f64> {
    [0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0].into_iter()
}

impl JobMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            submitted: Family::default(),
            completed: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(buckets())),
            depth: Family::default(),
            dead_lettered: Gauge::default(),
        };
        registry.register(
            "background_jobs_submitted",
            "Background jobs submitted, by job type (idempotent repeats not counted)",
            m.submitted.clone(),
        );
        registry.register(
            "background_jobs_completed",
            "Background job attempts ended, by job type and status (succeeded, failed, cancelled, dead_lettered)",
            m.completed.clone(),
        );
        registry.register(
            "background_job_duration_seconds",
            "Duration of one background job attempt, by job type",
            m.duration.clone(),
        );
        registry.register(
            "background_jobs_queue_depth",
            "Jobs in the queue table by type and state",
            m.depth.clone(),
        );
        registry.register(
            "background_jobs_dead_lettered",
            "Jobs currently in the dead-letter state",
            m.dead_lettered.clone(),
        );
        m
    }
}
