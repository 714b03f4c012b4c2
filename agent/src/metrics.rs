//! The agent's metrics: the shared RED metrics of DESIGN §4.2 for ask and ingest, and
//! `minirag_agent_*` self-metrics for every route class.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::proxy::routes::RouteClass;

/// The exemplar on latency buckets: the trace of a sampled request (OpenMetrics).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceLabel {
    pub trace_id: String,
}

/// A latency histogram whose buckets remember one recent sampled trace each.
pub type Latency = HistogramWithExemplars<TraceLabel>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AskLabels {
    pub outcome: &'static str,
    pub status_code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngestLabels {
    pub source: &'static str,
    pub outcome: &'static str,
    pub status_code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngestLatencyLabels {
    pub source: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub class: &'static str,
    /// A known method name or "OTHER", so clients cannot grow the label set.
    pub method: &'static str,
    pub status_code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuotaLabels {
    pub workspace_id: String,
    pub metric: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub class: &'static str,
    pub kind: &'static str,
}

pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

pub const OUTCOMES: [&str; 4] = ["success", "client_error", "server_error", "cancelled"];

/// success < 400 ≤ client_error < 500 ≤ server_error; cancelled = the client left first.
pub fn outcome(status: u16, client_gone: bool) -> &'static str {
    if client_gone {
        "cancelled"
    } else if status < 400 {
        "success"
    } else if status < 500 {
        "client_error"
    } else {
        "server_error"
    }
}

fn slo_buckets() -> impl Iterator<Item = f64> {
    // Includes the 3 s ask SLO edge so burn-rate rules can count "fast enough" exactly.
    [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 3.0, 5.0, 10.0, 30.0,
    ]
    .into_iter()
}

pub struct Metrics {
    registry: Registry,
    pub ask_requests: Family<AskLabels, Counter>,
    pub ask_latency: Family<OutcomeLabels, Latency>,
    pub ingest_operations: Family<IngestLabels, Counter>,
    pub ingest_latency: Family<IngestLatencyLabels, Latency>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<ClassLabels, Latency>,
    pub in_flight: Family<ClassLabels, Gauge>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub shed: Counter,
    pub access_log_dropped: Counter,
    pub ready: Gauge,
    pub quota_exceeded_total: Family<QuotaLabels, Counter>,
    pub quota_backend_errors: Counter,
    pub quota_backend_up: Gauge,
    pub quota_usage: Family<QuotaLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub quota_ratio: Family<QuotaLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// workspace_id values already used as labels (bounded by `max_workspace_labels`).
    quota_label_set: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Metrics {
    /// `otlp`: the span export counters, when tracing is on (zeros otherwise).
    pub fn new(otlp: Option<Arc<minirag_otel::ExportStats>>) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(OtlpCollector(otlp)));
        let ask_requests = Family::<AskLabels, Counter>::default();
        let ask_latency =
            Family::<OutcomeLabels, Latency>::new_with_constructor(|| Latency::new(slo_buckets()));
        let ingest_operations = Family::<IngestLabels, Counter>::default();
        let ingest_latency = Family::<IngestLatencyLabels, Latency>::new_with_constructor(|| {
            Latency::new(slo_buckets())
        });
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_duration =
            Family::<ClassLabels, Latency>::new_with_constructor(|| Latency::new(slo_buckets()));
        let in_flight = Family::<ClassLabels, Gauge>::default();
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        let shed = Counter::default();
        let access_log_dropped = Counter::default();
        let ready = Gauge::default();
        let quota_exceeded_total = Family::<QuotaLabels, Counter>::default();
        let quota_backend_errors = Counter::default();
        let quota_backend_up = Gauge::default();
        quota_backend_up.set(1);
        let quota_usage =
            Family::<QuotaLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let quota_ratio =
            Family::<QuotaLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "ask_requests",
            "Ask requests through the agent by outcome and status",
            ask_requests.clone(),
        );
        registry.register(
            "ask_request_latency_seconds",
            "Ask latency until the response body ended",
            ask_latency.clone(),
        );
        registry.register(
            "ingest_operations",
            "Ingest requests through the agent",
            ingest_operations.clone(),
        );
        registry.register(
            "ingest_operation_latency_seconds",
            "Ingest latency until the response body ended",
            ingest_latency.clone(),
        );
        registry.register(
            "minirag_agent_http_requests",
            "Requests handled by the proxy",
            http_requests.clone(),
        );
        registry.register(
            "minirag_agent_http_request_duration_seconds",
            "Proxy request duration until the response body ended",
            http_duration.clone(),
        );
        registry.register(
            "minirag_agent_http_requests_in_flight",
            "Requests being proxied now",
            in_flight.clone(),
        );
        registry.register("minirag_agent_upstream_errors", "Failed upstream calls by kind (connect, connect_timeout, response_timeout, protocol, body_idle)", upstream_errors.clone());
        registry.register(
            "minirag_agent_http_shed_requests",
            "Requests refused with 503 because the concurrency limit was reached",
            shed.clone(),
        );
        registry.register(
            "minirag_agent_access_log_dropped_lines",
            "Access-log lines dropped because the writer queue was full",
            access_log_dropped.clone(),
        );
        registry.register(
            "quota_exceeded",
            "Requests refused with 429 by a rate quota, by workspace (overflow: other) and metric",
            quota_exceeded_total.clone(),
        );
        registry.register(
            "minirag_agent_quota_backend_errors",
            "Quota checks that failed because the shared (Redis) backend did not answer",
            quota_backend_errors.clone(),
        );
        registry.register(
            "minirag_agent_quota_backend_up",
            "1 while the quota backend answers (always 1 for the memory backend)",
            quota_backend_up.clone(),
        );
        registry.register(
            "workspace_quota_usage",
            "Used part of a workspace quota at its last request (requests in the window, or chunks)",
            quota_usage.clone(),
        );
        registry.register(
            "workspace_quota_ratio",
            "Used share of a workspace quota at its last request (0..1)",
            quota_ratio.clone(),
        );
        registry.register(
            "minirag_agent_ready",
            "1 while the agent reports ready",
            ready.clone(),
        );

        // Known label sets start at zero so increase() alerts work from the first scrape.
        for o in OUTCOMES {
            let _ = ask_latency.get_or_create(&OutcomeLabels { outcome: o });
            for source in ["files", "text", "urls"] {
                let _ = ingest_latency.get_or_create(&IngestLatencyLabels { source, outcome: o });
            }
        }
        for (o, s) in [
            ("success", 200),
            ("client_error", 429),
            ("server_error", 502),
            ("server_error", 504),
        ] {
            let _ = ask_requests.get_or_create(&AskLabels {
                outcome: o,
                status_code: s,
            });
        }
        for c in RouteClass::ALL {
            let _ = http_duration.get_or_create(&ClassLabels { class: c.as_str() });
            let _ = in_flight.get_or_create(&ClassLabels { class: c.as_str() });
            for kind in [
                "connect",
                "connect_timeout",
                "response_timeout",
                "protocol",
                "body_idle",
            ] {
                let _ = upstream_errors.get_or_create(&UpstreamErrorLabels {
                    class: c.as_str(),
                    kind,
                });
            }
        }
        Self {
            registry,
            ask_requests,
            ask_latency,
            ingest_operations,
            ingest_latency,
            http_requests,
            http_duration,
            in_flight,
            upstream_errors,
            shed,
            access_log_dropped,
            ready,
            quota_exceeded_total,
            quota_backend_errors,
            quota_backend_up,
            quota_usage,
            quota_ratio,
            quota_label_set: std::sync::Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Counts a refusal; past `cap` distinct workspaces the label becomes `other`, so a
    /// flood of tenants cannot blow up the series count.
    pub fn quota_exceeded(&self, workspace_id: &str, metric: &'static str, cap: usize) {
        let workspace_id = self.workspace_label(workspace_id, cap);
        self.quota_exceeded_total
            .get_or_create(&QuotaLabels {
                workspace_id,
                metric,
            })
            .inc();
    }

    pub fn quota_level(
        &self,
        workspace_id: &str,
        metric: &'static str,
        used: f64,
        ratio: f64,
        cap: usize,
    ) {
        let labels = QuotaLabels {
            workspace_id: self.workspace_label(workspace_id, cap),
            metric,
        };
        self.quota_usage.get_or_create(&labels).set(used);
        self.quota_ratio.get_or_create(&labels).set(ratio);
    }

    fn workspace_label(&self, workspace_id: &str, cap: usize) -> String {
        match self.quota_label_set.lock() {
            Ok(mut set) => {
                if set.contains(workspace_id) || set.len() < cap {
                    set.insert(workspace_id.to_string());
                    workspace_id.to_string()
                } else {
                    "other".to_string()
                }
            }
            Err(_) => "other".to_string(),
        }
    }

    /// Adds a collector encoded at scrape time (e.g. the log shipper's counters).
    pub fn with_collector(mut self, c: Box<dyn Collector>) -> Self {
        self.registry.register_collector(c);
        self
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(None)
    }
}

/// `minirag_agent_otlp_spans_{exported,dropped,failed}_total`, read from the export
/// pipeline at scrape time.
#[derive(Debug)]
struct OtlpCollector(Option<Arc<minirag_otel::ExportStats>>);

impl Collector for OtlpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let read = |f: fn(&minirag_otel::ExportStats) -> u64| self.0.as_deref().map_or(0, f);
        let rows: [(&str, &str, u64); 3] = [
            (
                "minirag_agent_otlp_spans_exported",
                "Spans the OTLP receiver accepted",
                read(|s| s.exported.load(Relaxed)),
            ),
            (
                "minirag_agent_otlp_spans_dropped",
                "Spans dropped because the export queue was full (receiver slow, down or hanging)",
                read(|s| s.dropped.load(Relaxed)),
            ),
            (
                "minirag_agent_otlp_spans_failed",
                "Spans in export batches that failed after the exporter's retries or timed out",
                read(|s| s.failed.load(Relaxed)),
            ),
        ];
        for (name, help, value) in rows {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}
