//! rag-core's Prometheus metrics (names from DESIGN §4.2), OpenMetrics text on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DocumentLabels {
    pub source: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExternalLabels {
    pub service: &'static str,
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuotaLabels {
    pub workspace_id: String,
    pub metric: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub method: String,
    pub status_code: u16,
}

/// Exemplar labels: the trace of a sampled request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceLabel {
    pub trace_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: &'static str,
}

pub const SOURCES: [&str; 3] = ["file", "text", "url"];
/// `parse` covers extraction and chunking (and, for URL ingest, the fetch).
pub const STAGES: [&str; 4] = ["parse", "embed", "index_write", "retrieve"];

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 3.0, 5.0, 10.0, 30.0,
    ]
    .into_iter()
}

pub struct Metrics {
    registry: Registry,
    pub ingest_processed_chunks: Family<SourceLabels, Counter>,
    pub ingest_documents: Family<DocumentLabels, Counter>,
    pub chunk_records: Gauge,
    pub external_request_errors: Family<ExternalLabels, Counter>,
    pub embedding_queue_depth: Gauge,
    pub quota_exceeded: Family<QuotaLabels, Counter>,
    pub http_requests: Family<HttpLabels, Counter>,
    /// Buckets carry the trace id of a sampled request as an OpenMetrics exemplar.
    pub http_duration: Family<RouteLabels, HistogramWithExemplars<TraceLabel>>,
    pub stage_duration: Family<StageLabels, Histogram>,
    pub healthcheck_ping_failed: Counter,
    pub jobs: crate::jobs::metrics::JobMetrics,
    pub backup: crate::backup::metrics::BackupMetrics,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let ingest_processed_chunks = Family::<SourceLabels, Counter>::default();
        let ingest_documents = Family::<DocumentLabels, Counter>::default();
        let chunk_records = Gauge::default();
        let external_request_errors = Family::<ExternalLabels, Counter>::default();
        let embedding_queue_depth = Gauge::default();
        let quota_exceeded = Family::<QuotaLabels, Counter>::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_duration =
            Family::<RouteLabels, HistogramWithExemplars<TraceLabel>>::new_with_constructor(|| {
                HistogramWithExemplars::new(latency_buckets())
            });
        let stage_duration = Family::<StageLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });

        registry.register(
            "ingest_processed_chunks",
            "Chunks written to the index, by ingest source",
            ingest_processed_chunks.clone(),
        );
        registry.register(
            "rag_core_ingest_documents",
            "Documents handled by ingest, by source and outcome (ingested, skipped, failed)",
            ingest_documents.clone(),
        );
        registry.register(
            "chunk_records_total",
            "Chunks currently stored, all workspaces",
            chunk_records.clone(),
        );
        registry.register(
            "external_request_errors",
            "Failed calls to external services (embeddings, chat, URL fetch, Stripe)",
            external_request_errors.clone(),
        );
        registry.register(
            "embedding_queue_depth",
            "Chunks waiting to be embedded",
            embedding_queue_depth.clone(),
        );
        registry.register(
            "quota_exceeded",
            "Requests refused by a storage quota",
            quota_exceeded.clone(),
        );
        registry.register(
            "rag_core_http_requests",
            "HTTP requests served by rag-core, by matched route, method and status",
            http_requests.clone(),
        );
        registry.register(
            "rag_core_http_request_duration_seconds",
            "HTTP request duration by matched route",
            http_duration.clone(),
        );
        let healthcheck_ping_failed = Counter::default();
        registry.register(
            "healthcheck_ping_failed",
            "Healthcheck pings (HEALTHCHECKS_PING_URL) that did not reach the service or were refused",
            healthcheck_ping_failed.clone(),
        );
        registry.register(
            "rag_core_stage_duration_seconds",
            "Time spent in internal pipeline stages",
            stage_duration.clone(),
        );

        let jobs = crate::jobs::metrics::JobMetrics::register(&mut registry);
        let backup = crate::backup::metrics::BackupMetrics::register(&mut registry);

        // Known label sets start at zero so increase() works from the first scrape.
        for source in SOURCES {
            let _ = ingest_processed_chunks.get_or_create(&SourceLabels { source });
            for outcome in ["ingested", "skipped", "failed"] {
                let _ = ingest_documents.get_or_create(&DocumentLabels { source, outcome });
            }
        }
        for (service, operation) in [
            ("openai", "embeddings"),
            ("openai", "chat"),
            ("url_fetch", "get"),
            ("stripe", "checkout.create"),
            ("stripe", "portal.create"),
        ] {
            let _ = external_request_errors.get_or_create(&ExternalLabels { service, operation });
        }
        for stage in STAGES {
            let _ = stage_duration.get_or_create(&StageLabels { stage });
        }

        Self {
            registry,
            ingest_processed_chunks,
            ingest_documents,
            chunk_records,
            external_request_errors,
            embedding_queue_depth,
            quota_exceeded,
            http_requests,
            http_duration,
            stage_duration,
            healthcheck_ping_failed,
            jobs,
            backup,
        }
    }

    pub fn observe_stage(&self, stage: &'static str, started: std::time::Instant) {
        self.stage_duration
            .get_or_create(&StageLabels { stage })
            .observe(started.elapsed().as_secs_f64());
    }

    pub fn external_error(&self, service: &'static str, operation: &'static str) {
        self.external_request_errors
            .get_or_create(&ExternalLabels { service, operation })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail for lack of space; an error here would be a bug
        // in a metric's label encoding, and an empty page is the safe answer.
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
