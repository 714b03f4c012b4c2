//! Cost per span of turning a batch into an OTLP/HTTP request body, old path against new:
//!
//! - old: opentelemetry-proto's conversion (`group_spans_by_resource_and_scope`) and prost,
//!   as opentelemetry-otlp's HTTP exporter did it, gzip at flate2's default level;
//! - new: `minirag_otel::otlp_http::TraceEncoder` into a reused buffer, gzip at the
//!   level the exporter uses (fast), and at the default level for comparison.
//!
//! The spans look like the agent's (a SERVER and a CLIENT span per request, same
//! attributes), in batches of 512 (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`). Dropping the batch
//! is counted in both paths, as the export thread pays it. No network involved.
//!
//! ```sh
//! cargo run --release -p minirag-otel --example encode_cost [-- SPANS]
//! ```

use std::borrow::Cow;
use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use prost::Message;

use minirag_otel::otlp_http::TraceEncoder;

// The agent's allocator: allocation is a large part of both paths.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 512;

/// One request's two spans, with the agent's attributes.
fn request_spans(i: u64, scope: &InstrumentationScope, out: &mut Vec<SpanData>) {
    let now = SystemTime::now();
    let trace_id = TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0000_0000 + u128::from(i));
    let server_id = SpanId::from(0x00f0_67aa_0000_0000 + 2 * i);
    let client_id = SpanId::from(0x00f0_67aa_0000_0001 + 2 * i);
    let cx = |id| SpanContext::new(trace_id, id, TraceFlags::SAMPLED, false, TraceState::NONE);
    let request_id = format!("0b7e5f5c-3b0a-4c53-9f4e-{i:012x}");
    let server_attrs = vec![
        KeyValue::new("http.request.method", "POST".to_string()),
        KeyValue::new("http.route", "/api/v1/ask".to_string()),
        KeyValue::new("url.path", "/api/v1/ask".to_string()),
        KeyValue::new("url.scheme", "http"),
        KeyValue::new("http.response.status_code", 200),
        KeyValue::new("server.address", "127.0.0.1".to_string()),
        KeyValue::new("client.address", "127.0.0.1".to_string()),
        KeyValue::new("client.port", 40_000 + (i % 20_000) as i64),
        KeyValue::new("network.protocol.version", "1.1"),
        KeyValue::new("user_agent.original", "wrk/4.2.0".to_string()),
        KeyValue::new("minirag.request_id", request_id.clone()),
    ];
    let client_attrs = vec![
        KeyValue::new("http.request.method", "POST".to_string()),
        KeyValue::new("server.address", "127.0.0.1".to_string()),
        KeyValue::new("server.port", 18_082),
        KeyValue::new("url.full", "http://127.0.0.1:18082/api/v1/ask".to_string()),
        KeyValue::new("network.protocol.version", "1.1"),
        KeyValue::new("minirag.request_id", request_id),
        KeyValue::new("http.response.status_code", 200),
    ];
    let span = |cx, parent, kind, name: Cow<'static, str>, attributes| SpanData {
        span_context: cx,
        parent_span_id: parent,
        parent_span_is_remote: false,
        span_kind: kind,
        name,
        start_time: now - Duration::from_micros(900),
        end_time: now,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: scope.clone(),
    };
    out.push(span(
        cx(client_id),
        server_id,
        SpanKind::Client,
        "POST".to_string().into(),
        client_attrs,
    ));
    out.push(span(
        cx(server_id),
        SpanId::INVALID,
        SpanKind::Server,
        format!("{} {}", "POST", "/api/v1/ask").into(),
        server_attrs,
    ));
}

fn gzip(body: &[u8], out: Vec<u8>, level: flate2::Compression) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(out, level);
    gz.write_all(body).expect("writing to a Vec");
    gz.finish().expect("writing to a Vec")
}

#[derive(Default)]
struct Tally {
    time: Duration,
    bytes: usize,
}

fn main() {
    let total: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let resource = Resource::builder()
        .with_service_name("minirag-agent")
        .with_attributes([KeyValue::new("service.version", "0.1.0")])
        .build();
    let resource_attrs = ResourceAttributesWithSchema::from(&resource);
    let scope = InstrumentationScope::builder("minirag-agent")
        .with_version("0.1.0")
        .build();
    let mut encoder = TraceEncoder::new(&resource);
    let (mut buf, mut gz_buf) = (Vec::new(), Vec::new());

    let names = [
        "build SpanData (agent-like)",
        "drop SpanData",
        "old: proto structs + prost",
        "old: + gzip (default level)",
        "new: TraceEncoder",
        "new: + gzip (fast, as sent)",
        "new: + gzip (default level)",
    ];
    let mut tally: Vec<Tally> = names.iter().map(|_| Tally::default()).collect();
    let mut spans_done = 0;
    let mut request = 0u64;
    // The first rounds warm up caches and the allocator; they are not counted.
    let warmup = 20 * BATCH;
    while spans_done < total + warmup {
        let counted = spans_done >= warmup;
        let t = Instant::now();
        let mut batch = Vec::with_capacity(BATCH);
        while batch.len() < BATCH {
            request_spans(request, &scope, &mut batch);
            request += 1;
        }
        let build = t.elapsed();
        let copies: Vec<Vec<SpanData>> = (0..6).map(|_| batch.clone()).collect();
        let mut copies = copies.into_iter();
        let mut run = |i: usize, f: &mut dyn FnMut(Vec<SpanData>) -> usize| {
            let b = copies.next().expect("a copy per run");
            let t = Instant::now();
            let bytes = black_box(f(b));
            if counted {
                tally[i].time += t.elapsed();
                tally[i].bytes += bytes;
            }
        };
        run(1, &mut |b| {
            drop(b);
            0
        });
        run(2, &mut |b| {
            let req = ExportTraceServiceRequest {
                resource_spans: group_spans_by_resource_and_scope(b, &resource_attrs),
            };
            req.encode_to_vec().len()
        });
        run(3, &mut |b| {
            let req = ExportTraceServiceRequest {
                resource_spans: group_spans_by_resource_and_scope(b, &resource_attrs),
            };
            gzip(
                &req.encode_to_vec(),
                Vec::new(),
                flate2::Compression::default(),
            )
            .len()
        });
        run(4, &mut |b| {
            encoder.encode(&b, &mut buf);
            drop(b);
            buf.len()
        });
        run(5, &mut |b| {
            encoder.encode(&b, &mut buf);
            drop(b);
            let mut out = std::mem::take(&mut gz_buf);
            out.clear();
            gz_buf = gzip(&buf, out, flate2::Compression::fast());
            gz_buf.len()
        });
        run(6, &mut |b| {
            encoder.encode(&b, &mut buf);
            drop(b);
            let mut out = std::mem::take(&mut gz_buf);
            out.clear();
            gz_buf = gzip(&buf, out, flate2::Compression::default());
            gz_buf.len()
        });
        if counted {
            tally[0].time += build;
        }
        drop(batch);
        spans_done += BATCH;
    }
    let n = (spans_done - warmup) as f64;
    println!("{n} spans in batches of {BATCH}");
    println!("{:<30} {:>10} {:>12}", "", "µs/span", "bytes/span");
    for (name, t) in names.iter().zip(&tally) {
        let bytes = if t.bytes == 0 {
            String::from("-")
        } else {
            format!("{:.0}", t.bytes as f64 / n)
        };
        println!(
            "{name:<30} {:>10.3} {bytes:>12}",
            t.time.as_secs_f64() * 1e6 / n
        );
    }
}
