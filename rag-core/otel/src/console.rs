//! Local-work exporter: one JSON line per finished span on stderr, so `OTEL_ENABLED=true`
//! without a collector still shows what would be sent.

use std::io::Write;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

#[derive(Debug, Default)]
pub struct ConsoleExporter {
    service_name: String,
}

impl SpanExporter for ConsoleExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut out = Vec::with_capacity(batch.len() * 256);
        for span in &batch {
            let attrs: serde_json::Map<String, serde_json::Value> = span
                .attributes
                .iter()
                .map(|kv| (kv.key.to_string(), kv.value.to_string().into()))
                .collect();
            let parent = span.parent_span_id;
            let line = serde_json::json!({
                "event": "otel.span",
                "service.name": self.service_name,
                "name": span.name,
                "kind": format!("{:?}", span.span_kind),
                "trace_id": span.span_context.trace_id().to_string(),
                "span_id": span.span_context.span_id().to_string(),
                "parent_span_id": (parent != opentelemetry::trace::SpanId::INVALID).then(|| parent.to_string()),
                "duration_ms": span.end_time.duration_since(span.start_time).map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0),
                "status": format!("{:?}", span.status),
                "attributes": attrs,
            });
            out.extend_from_slice(line.to_string().as_bytes());
            out.push(b'\n');
        }
        // Best effort: a closed stderr must not fail the pipeline.
        let _ = std::io::stderr().lock().write_all(&out);
        Ok(())
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        if let Some(v) = resource.get(&opentelemetry::Key::from_static_str("service.name")) {
            self.service_name = v.to_string();
        }
    }
}
