//! Trace export for both programs (DESIGN §4.3 environment variables, tracing issue).
//!
//! The OpenTelemetry SDK gives the data model, samplers and the gRPC exporter; what this
//! crate adds is the policy both programs share: the `OTEL_*` switches, a batch processor
//! whose queue is bounded and never blocks the caller (a full queue drops and counts), an
//! OTLP/HTTP exporter that encodes `SpanData` straight to protobuf (the default
//! `http/protobuf` protocol, see `otlp_http`), and a console exporter for local work when
//! no endpoint is set.

mod console;
pub mod otlp_http;
mod processor;
mod settings;

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::SpanKind;
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample, SpanData, SpanExporter};

pub use console::ConsoleExporter;
pub use otlp_http::ExportError;
pub use processor::{BoundedBatchProcessor, DeferredSpans, ExportStats};
pub use settings::{ExporterKind, Settings};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Settings(String),
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
    #[error("cannot start the span export thread: {0}")]
    Thread(std::io::Error),
}

/// The exporters a pipeline can drive.
#[derive(Debug)]
pub enum AnyExporter {
    /// `http/protobuf`: our own encoder and sender.
    OtlpHttp(Box<otlp_http::OtlpHttpExporter>),
    /// `grpc`: opentelemetry-otlp's tonic exporter.
    OtlpGrpc(Box<opentelemetry_otlp::SpanExporter>),
    Console(ConsoleExporter),
}

impl AnyExporter {
    /// Exports `batch` and leaves it empty (keeping its capacity where the exporter
    /// allows). `Ok` carries the spans the receiver rejected in a partial success.
    pub async fn export(&mut self, batch: &mut Vec<SpanData>) -> Result<u64, ExportError> {
        let result = match self {
            AnyExporter::OtlpHttp(e) => e.export(batch).await.map(|a| a.rejected_spans),
            AnyExporter::OtlpGrpc(e) => e
                .export(std::mem::take(batch))
                .await
                .map(|()| 0)
                .map_err(ExportError::from),
            AnyExporter::Console(e) => e
                .export(std::mem::take(batch))
                .await
                .map(|()| 0)
                .map_err(ExportError::from),
        };
        batch.clear();
        result
    }

    pub fn shutdown(&mut self, timeout: Duration) {
        match self {
            AnyExporter::OtlpHttp(_) => {}
            AnyExporter::OtlpGrpc(e) => {
                let _ = e.shutdown_with_timeout(timeout);
            }
            AnyExporter::Console(e) => {
                let _ = e.shutdown_with_timeout(timeout);
            }
        }
    }

    pub fn set_resource(&mut self, resource: &Resource) {
        match self {
            AnyExporter::OtlpHttp(e) => e.set_resource(resource),
            AnyExporter::OtlpGrpc(e) => e.set_resource(resource),
            AnyExporter::Console(e) => e.set_resource(resource),
        }
    }
}

/// A running export pipeline: sampler, resource and the bounded processor.
#[derive(Debug, Clone)]
pub struct Pipeline {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: Settings,
    sampler: Box<dyn ShouldSample>,
    resource: Resource,
    processor: BoundedBatchProcessor,
}

impl Pipeline {
    /// Reads the `OTEL_*` environment; `Ok(None)` when tracing is off.
    pub fn from_env(default_service_name: &str) -> Result<Option<Self>, Error> {
        let settings = Settings::from_env(default_service_name).map_err(Error::Settings)?;
        if !settings.enabled {
            return Ok(None);
        }
        Self::start(settings).map(Some)
    }

    pub fn start(settings: Settings) -> Result<Self, Error> {
        let mut builder = Resource::builder();
        if !settings.service_name_from_env {
            builder = builder.with_service_name(settings.service_name.clone());
        }
        let resource = builder
            .with_attributes([KeyValue::new(
                "service.version",
                settings.service_version.clone(),
            )])
            .build();
        let kind = settings.exporter;
        let for_exporter = resource.clone();
        let processor = BoundedBatchProcessor::start(
            move || {
                let mut exporter = match kind {
                    ExporterKind::Console => AnyExporter::Console(ConsoleExporter::default()),
                    ExporterKind::Otlp => settings::otlp_exporter(&for_exporter)?,
                };
                exporter.set_resource(&for_exporter);
                Ok(exporter)
            },
            settings.batch.clone(),
        )?;
        // The SDK's own reading of OTEL_TRACES_SAMPLER / _ARG (default parentbased_always_on).
        let sampler = opentelemetry_sdk::trace::Config::default().sampler;
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                sampler,
                resource,
                processor,
            }),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub fn resource(&self) -> &Resource {
        &self.inner.resource
    }

    pub fn stats(&self) -> Arc<ExportStats> {
        self.inner.processor.stats()
    }

    pub fn processor(&self) -> BoundedBatchProcessor {
        self.inner.processor.clone()
    }

    /// The configured sampler's verdict for a new local root or a child of `parent`.
    pub fn should_sample(
        &self,
        parent: Option<&Context>,
        trace_id: opentelemetry::trace::TraceId,
        name: &str,
        kind: &SpanKind,
    ) -> bool {
        let r = self
            .inner
            .sampler
            .should_sample(parent, trace_id, name, kind, &[], &[]);
        matches!(r.decision, SamplingDecision::RecordAndSample)
    }

    /// Queues one finished span; never blocks (a full queue drops and counts).
    pub fn export(&self, span: SpanData) {
        self.inner.processor.push(span);
    }

    /// Queues `spans` spans that `build` creates on the export thread (never blocks).
    pub fn export_deferred(&self, spans: usize, build: DeferredSpans) {
        self.inner.processor.push_deferred(spans, build);
    }

    /// Flushes what is queued, waiting at most `timeout`.
    pub fn shutdown(&self, timeout: Duration) {
        self.inner.processor.shutdown(timeout);
    }
}
