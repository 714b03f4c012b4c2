use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use prost::Message;

use super::*;
use crate::settings::BatchSettings;
use crate::{AnyExporter, BoundedBatchProcessor};

// ---------------------------------------------------------------------------------------
// Spans

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms)
}

fn context(trace: u128, span: u64, flags: TraceFlags, state: TraceState) -> SpanContext {
    SpanContext::new(
        TraceId::from(trace),
        SpanId::from(span),
        flags,
        false,
        state,
    )
}

fn span(i: u64, scope: &InstrumentationScope) -> SpanData {
    SpanData {
        span_context: context(
            0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736 + u128::from(i),
            0x00f0_67aa_0ba9_02b7 + i,
            TraceFlags::SAMPLED,
            TraceState::default(),
        ),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: Cow::Owned(format!("span {i}")),
        start_time: at(i),
        end_time: at(i + 3),
        attributes: vec![
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.response.status_code", 200),
        ],
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: scope.clone(),
    }
}

fn every_value_type() -> Vec<KeyValue> {
    vec![
        KeyValue::new("s", "text"),
        KeyValue::new("s.owned", String::from("owned ✓")),
        KeyValue::new("s.empty", ""),
        KeyValue::new("b.true", true),
        KeyValue::new("b.false", false),
        KeyValue::new("i.zero", 0),
        KeyValue::new("i.neg", -42),
        KeyValue::new("i.max", i64::MAX),
        KeyValue::new("i.min", i64::MIN),
        KeyValue::new("f", 1.5),
        KeyValue::new("f.zero", 0.0),
        KeyValue::new("f.neg", -1e300),
        KeyValue::new("a.b", Value::Array(Array::Bool(vec![true, false]))),
        KeyValue::new("a.i", Value::Array(Array::I64(vec![0, -1, 300]))),
        KeyValue::new("a.f", Value::Array(Array::F64(vec![0.0, 2.5]))),
        KeyValue::new(
            "a.s",
            Value::Array(Array::String(vec![
                StringValue::from("x"),
                StringValue::from(""),
                StringValue::from("z".repeat(200)),
            ])),
        ),
        KeyValue::new("a.empty", Value::Array(Array::I64(vec![]))),
        KeyValue::new("", "empty key"),
        KeyValue::new("long", "L".repeat(20_000)),
    ]
}

/// A batch with everything the encoder must get right.
fn varied_batch() -> (Resource, Vec<SpanData>) {
    let resource = Resource::builder_empty()
        .with_schema_url(
            [
                KeyValue::new("service.name", "svc"),
                KeyValue::new("service.version", "1.2.3"),
                KeyValue::new("host.cores", 2),
            ],
            "https://opentelemetry.io/schemas/1.30.0",
        )
        .build();
    let agent = InstrumentationScope::builder("minirag-agent")
        .with_version("0.1.0")
        .build();
    let bridge = InstrumentationScope::builder("rag-core").build();
    let fancy = InstrumentationScope::builder("fancy")
        .with_version("9")
        .with_schema_url("https://example.com/schema")
        .with_attributes([KeyValue::new("scope.attr", "x"), KeyValue::new("n", 1)])
        .build();

    let mut spans = Vec::new();
    // Plain root.
    spans.push(span(0, &agent));
    // Remote parent, trace state, server kind, error status with message.
    let mut s = span(1, &agent);
    s.parent_span_id = SpanId::from(0xabc);
    s.parent_span_is_remote = true;
    s.span_kind = SpanKind::Server;
    s.span_context = context(
        7,
        8,
        TraceFlags::SAMPLED,
        TraceState::from_key_value([("vendor", "v1"), ("other", "x-1")]).unwrap(),
    );
    s.status = Status::error("upstream_timeout");
    s.attributes = every_value_type();
    spans.push(s);
    // Another scope: local parent, client kind, Ok status, events and links.
    let mut s = span(2, &bridge);
    s.parent_span_id = SpanId::from(0x1);
    s.span_kind = SpanKind::Client;
    s.status = Status::Ok;
    s.events.events = vec![
        Event::new("log", at(5), vec![KeyValue::new("level", "ERROR")], 2),
        Event::new("", UNIX_EPOCH, vec![], 0),
    ];
    s.events.dropped_count = 3;
    s.links.links = vec![
        Link::new(
            SpanContext::new(
                TraceId::from(99),
                SpanId::from(98),
                TraceFlags::default(),
                true,
                TraceState::from_key_value([("k", "v")]).unwrap(),
            ),
            vec![KeyValue::new("link.attr", 1.0)],
            1,
        ),
        Link::with_context(context(1, 2, TraceFlags::SAMPLED, TraceState::default())),
    ];
    s.links.dropped_count = 4;
    s.dropped_attributes_count = 5;
    spans.push(s);
    // Back to the first scope (grouping keeps first-appearance order).
    let mut s = span(3, &agent);
    s.span_kind = SpanKind::Producer;
    s.name = Cow::Borrowed("");
    s.attributes.clear();
    spans.push(s);
    // A scope with attributes and a schema url; an unsampled context; odd times.
    let mut s = span(4, &fancy);
    s.span_kind = SpanKind::Consumer;
    s.span_context = context(5, 6, TraceFlags::default(), TraceState::default());
    s.start_time = UNIX_EPOCH;
    s.end_time = UNIX_EPOCH - Duration::from_secs(1);
    spans.push(s);
    spans.push(span(5, &bridge));
    // The same scope as `fancy`, built separately with its attributes in another order.
    let fancy_again = InstrumentationScope::builder("fancy")
        .with_version("9")
        .with_schema_url("https://example.com/schema")
        .with_attributes([KeyValue::new("n", 1), KeyValue::new("scope.attr", "x")])
        .build();
    spans.push(span(6, &fancy_again));
    (resource, spans)
}

/// What opentelemetry-otlp sent: opentelemetry-proto's conversion, encoded by prost.
fn sdk_request(resource: &Resource, spans: Vec<SpanData>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: group_spans_by_resource_and_scope(
            spans,
            &ResourceAttributesWithSchema::from(resource),
        ),
    }
}

/// Equal bytes, reported by the first difference (the buffers can be megabytes).
fn same_bytes(got: &[u8], want: &[u8]) {
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        let around = |b: &[u8]| b[i.saturating_sub(8)..(i + 8).min(b.len())].to_vec();
        panic!(
            "first difference at byte {i}: got {:?}, want {:?}",
            around(got),
            around(want)
        );
    }
    assert_eq!(got.len(), want.len(), "lengths");
}

fn ours(resource: &Resource, spans: &[SpanData]) -> Vec<u8> {
    let mut out = Vec::new();
    TraceEncoder::new(resource).encode(spans, &mut out);
    out
}

#[test]
fn encodes_what_the_sdk_conversion_encodes() {
    let (resource, spans) = varied_batch();
    let bytes = ours(&resource, &spans);
    let decoded = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
    let expected = sdk_request(&resource, spans.clone());

    // Field by field first, for a readable failure.
    assert_eq!(decoded.resource_spans.len(), 1);
    let (got, want) = (&decoded.resource_spans[0], &expected.resource_spans[0]);
    assert_eq!(got.resource, want.resource);
    assert_eq!(got.schema_url, want.schema_url);
    let scope_names: Vec<_> = got
        .scope_spans
        .iter()
        .map(|s| s.scope.as_ref().unwrap().name.as_str())
        .collect();
    assert_eq!(scope_names, ["minirag-agent", "rag-core", "fancy"]);
    assert_eq!(got.scope_spans.len(), want.scope_spans.len());
    for (g, w) in got.scope_spans.iter().zip(&want.scope_spans) {
        assert_eq!(g.scope, w.scope);
        assert_eq!(g.schema_url, w.schema_url);
        assert_eq!(g.spans.len(), w.spans.len());
        for (gs, ws) in g.spans.iter().zip(&w.spans) {
            assert_eq!(gs.trace_id, ws.trace_id);
            assert_eq!(gs.span_id, ws.span_id);
            assert_eq!(gs.trace_state, ws.trace_state);
            assert_eq!(gs.parent_span_id, ws.parent_span_id);
            assert_eq!(gs.flags, ws.flags);
            assert_eq!(gs.name, ws.name);
            assert_eq!(gs.kind, ws.kind);
            assert_eq!(gs.start_time_unix_nano, ws.start_time_unix_nano);
            assert_eq!(gs.end_time_unix_nano, ws.end_time_unix_nano);
            assert_eq!(gs.attributes, ws.attributes);
            assert_eq!(gs.dropped_attributes_count, ws.dropped_attributes_count);
            assert_eq!(gs.events, ws.events);
            assert_eq!(gs.dropped_events_count, ws.dropped_events_count);
            assert_eq!(gs.links, ws.links);
            assert_eq!(gs.dropped_links_count, ws.dropped_links_count);
            assert_eq!(gs.status, ws.status);
        }
    }
    assert_eq!(decoded, expected);
    // Same field order and canonical lengths as prost: the very same bytes.
    same_bytes(&bytes, &expected.encode_to_vec());

    // Spot checks against the proto's own meaning, not only the SDK's.
    let server = &got.scope_spans[0].spans[1];
    assert_eq!(server.trace_state, "vendor=v1,other=x-1");
    assert_eq!(server.flags, 0x301, "sampled, has-is-remote, is-remote");
    assert_eq!(server.kind, 2);
    let status = server.status.as_ref().unwrap();
    assert_eq!(
        (status.code, status.message.as_str()),
        (2, "upstream_timeout")
    );
    assert_eq!(got.scope_spans[0].spans[0].flags, 0x101);
    assert!(got.scope_spans[0].spans[0].parent_span_id.is_empty());
    assert_eq!(got.scope_spans[1].spans[0].events.len(), 2);
    assert_eq!(
        got.scope_spans[2].spans.len(),
        2,
        "equal scopes are one group"
    );
}

#[test]
fn reuses_its_buffer_and_handles_edge_sizes() {
    let (resource, _) = varied_batch();
    let scope = InstrumentationScope::builder("s").build();
    let mut encoder = TraceEncoder::new(&resource);
    let mut out = Vec::new();

    encoder.encode(&[], &mut out);
    assert!(out.is_empty());
    assert_eq!(
        ExportTraceServiceRequest::decode(out.as_slice()).unwrap(),
        ExportTraceServiceRequest::default()
    );

    // A request over 2 MiB (a four-byte length) and one tiny span, back to back.
    let mut big = span(1, &scope);
    big.attributes = vec![KeyValue::new("blob", "b".repeat(3 << 20))];
    for batch in [
        vec![big],
        vec![span(2, &scope)],
        (0..1000).map(|i| span(i, &scope)).collect(),
    ] {
        encoder.encode(&batch, &mut out);
        same_bytes(&out, &sdk_request(&resource, batch).encode_to_vec());
    }

    // An empty resource is still present.
    let empty = Resource::builder_empty().build();
    let batch = vec![span(1, &scope)];
    let bytes = ours(&empty, &batch);
    same_bytes(&bytes, &sdk_request(&empty, batch).encode_to_vec());
}

#[test]
fn reads_partial_success() {
    let body = ExportTraceServiceResponse {
        partial_success: Some(ExportTracePartialSuccess {
            rejected_spans: 3,
            error_message: "too old".into(),
        }),
    }
    .encode_to_vec();
    assert_eq!(rejected_spans(&body), Some(3));
    assert_eq!(rejected_spans(&[]), Some(0));
    let negative = ExportTraceServiceResponse {
        partial_success: Some(ExportTracePartialSuccess {
            rejected_spans: -1,
            error_message: String::new(),
        }),
    }
    .encode_to_vec();
    assert_eq!(rejected_spans(&negative), Some(0));
    // Garbage from the peer: no panic, no count.
    assert_eq!(rejected_spans(&[0x0a, 0xff]), None);
    assert_eq!(rejected_spans(&[0xff; 11]), None);
    assert_eq!(rejected_spans(&[0x0f]), None);
}

// ---------------------------------------------------------------------------------------
// Settings

fn target(pairs: &[(&str, &str)]) -> Result<HttpTarget, String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    HttpTarget::from_lookup(&move |k| map.get(k).cloned())
}

#[test]
fn endpoint_rules() {
    let url = |pairs: &[(&str, &str)]| target(pairs).unwrap().endpoint.to_string();
    assert_eq!(url(&[]), "http://localhost:4318/v1/traces");
    assert_eq!(
        url(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]),
        "http://c:4318/v1/traces"
    );
    assert_eq!(
        url(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318/")]),
        "https://c:4318/v1/traces",
        "no double slash"
    );
    assert_eq!(
        url(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c/otlp")]),
        "http://c/otlp/v1/traces"
    );
    assert_eq!(
        url(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4318/custom"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        ]),
        "http://t:4318/custom",
        "the per-signal endpoint is used as is"
    );
    for bad in ["localhost:4318", "ftp://c/x", "not a url", "http://"] {
        let e = target(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", bad)]).unwrap_err();
        assert!(e.contains("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), "{e}");
    }
}

#[test]
fn headers_compression_and_timeout() {
    let t = target(&[(
        "OTEL_EXPORTER_OTLP_HEADERS",
        "api-key=s%C3%A9cret%2C1 , X-Tenant = acme,bad name=1,=nokey,novalue=,broken=%zz,,",
    )])
    .unwrap();
    assert_eq!(t.headers["api-key"].as_bytes(), "sécret,1".as_bytes());
    assert_eq!(t.headers["x-tenant"], "acme");
    assert_eq!(t.headers["broken"], "%zz", "undecodable: as written");
    assert_eq!(t.headers.len(), 3);
    let t = target(&[
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "a=1"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "b=2"),
    ])
    .unwrap();
    assert_eq!(
        t.headers.len(),
        1,
        "the per-signal list replaces the generic one"
    );
    assert_eq!(t.headers["a"], "1");

    let gzip = |pairs: &[(&str, &str)]| target(pairs).unwrap().gzip;
    assert!(!gzip(&[]));
    assert!(gzip(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "GZIP")]));
    assert!(!gzip(&[
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
    ]));
    assert!(gzip(&[
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zstd"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
    ]));
    assert!(!gzip(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli")]));

    let timeout = |pairs: &[(&str, &str)]| target(pairs).unwrap().timeout;
    assert_eq!(timeout(&[]), Duration::from_secs(10));
    assert_eq!(
        timeout(&[
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "abc"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
        ]),
        Duration::from_millis(500)
    );
    assert_eq!(
        timeout(&[("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "0")]),
        Duration::from_secs(10)
    );
}

#[test]
fn retry_after_values() {
    let v = |s: &str| parse_retry_after(&HeaderValue::from_str(s).unwrap());
    assert_eq!(v("2"), Some(Duration::from_secs(2)));
    assert_eq!(v("86400"), Some(MAX_THROTTLE));
    assert_eq!(v("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
    let later = SystemTime::now() + Duration::from_secs(120);
    let d = v(&httpdate::fmt_http_date(later)).unwrap();
    assert!(
        d > Duration::from_secs(100) && d <= Duration::from_secs(120),
        "{d:?}"
    );
    assert_eq!(v("soon"), None);
}

// ---------------------------------------------------------------------------------------
// Sender, against a local receiver

#[derive(Clone)]
enum Reply {
    Status(u16, &'static [(&'static str, &'static str)]),
    Body(Vec<u8>, &'static str),
    Hang,
}

#[derive(Debug)]
struct Got {
    path: String,
    headers: http::HeaderMap,
    /// Decompressed when the request said gzip.
    body: Vec<u8>,
    at: Instant,
}

struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
}

impl Receiver {
    /// Answers with `replies` in order, then 200 with an empty body.
    fn start(replies: Vec<Reply>) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let got: Arc<Mutex<Vec<Got>>> = Arc::default();
        let sink = Arc::clone(&got);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let replies = Arc::new(Mutex::new(replies.into_iter()));
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (sink, replies) = (Arc::clone(&sink), Arc::clone(&replies));
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let (sink, replies) = (Arc::clone(&sink), Arc::clone(&replies));
                            async move {
                                let at = Instant::now();
                                let (parts, body) = req.into_parts();
                                let raw = body.collect().await.unwrap().to_bytes();
                                let body = if parts.headers.get("content-encoding")
                                    == Some(&HeaderValue::from_static("gzip"))
                                {
                                    let mut out = Vec::new();
                                    flate2::read::GzDecoder::new(&raw[..])
                                        .read_to_end(&mut out)
                                        .unwrap();
                                    out
                                } else {
                                    raw.to_vec()
                                };
                                sink.lock().unwrap().push(Got {
                                    path: parts.uri.path().to_string(),
                                    headers: parts.headers,
                                    body,
                                    at,
                                });
                                let reply = replies.lock().unwrap().next();
                                let mut response = http::Response::new(Full::new(Bytes::new()));
                                match reply {
                                    None => {}
                                    Some(Reply::Hang) => std::future::pending::<()>().await,
                                    Some(Reply::Body(b, content_type)) => {
                                        *response.body_mut() = Full::new(Bytes::from(b));
                                        response.headers_mut().insert(
                                            "content-type",
                                            HeaderValue::from_static(content_type),
                                        );
                                    }
                                    Some(Reply::Status(code, headers)) => {
                                        *response.status_mut() =
                                            http::StatusCode::from_u16(code).unwrap();
                                        for (k, v) in headers {
                                            response
                                                .headers_mut()
                                                .insert(*k, HeaderValue::from_static(v));
                                        }
                                    }
                                }
                                Ok::<_, Infallible>(response)
                            }
                        },
                    );
                    tokio::spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        });
        Self {
            addr: rx.recv().unwrap(),
            got,
        }
    }

    fn requests(&self) -> usize {
        self.got.lock().unwrap().len()
    }
}

fn resource() -> Resource {
    Resource::builder_empty()
        .with_attributes([KeyValue::new("service.name", "test")])
        .build()
}

fn spans(n: u64) -> Vec<SpanData> {
    let scope = InstrumentationScope::builder("t").build();
    (0..n).map(|i| span(i, &scope)).collect()
}

/// A processor exporting over OTLP/HTTP with `env` as the environment.
fn processor(env: &[(&str, &str)]) -> BoundedBatchProcessor {
    let target = target(env).unwrap();
    BoundedBatchProcessor::start(
        move || {
            Ok(AnyExporter::OtlpHttp(Box::new(
                OtlpHttpExporter::new(target, &resource()).unwrap(),
            )))
        },
        BatchSettings {
            max_queue_size: 64,
            max_export_batch_size: 64,
            schedule_delay: Duration::from_secs(60),
            export_timeout: Duration::from_secs(30),
        },
    )
    .unwrap()
}

/// Pushes `n` spans, flushes, and returns (exported, failed) and how long the flush took.
fn export_through(p: &BoundedBatchProcessor, n: u64) -> ((u64, u64), Duration) {
    for s in spans(n) {
        p.push(s);
    }
    let started = Instant::now();
    assert!(p.flush(Duration::from_secs(20)), "flush finished");
    let elapsed = started.elapsed();
    let stats = p.stats();
    (
        (
            stats.exported.load(Ordering::Relaxed),
            stats.failed.load(Ordering::Relaxed),
        ),
        elapsed,
    )
}

#[test]
fn gzip_body_and_headers_reach_the_receiver() {
    let rx = Receiver::start(vec![]);
    let endpoint = format!("http://{}", rx.addr);
    let p = processor(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        (
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "authorization=Bearer%20t0ken,x-tenant=acme,content-type=text/plain",
        ),
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
    ]);
    assert_eq!(export_through(&p, 5).0, (5, 0));
    // A second batch goes the same way (buffers reused).
    assert_eq!(export_through(&p, 3).0, (8, 0));
    let got = rx.got.lock().unwrap();
    assert_eq!(got.len(), 2);
    let first = &got[0];
    assert_eq!(first.path, "/v1/traces");
    assert_eq!(first.headers["content-type"], "application/x-protobuf");
    assert_eq!(first.headers["content-encoding"], "gzip");
    assert_eq!(first.headers["authorization"], "Bearer t0ken");
    assert_eq!(first.headers["x-tenant"], "acme");
    let ua = first.headers["user-agent"].to_str().unwrap();
    assert!(ua.starts_with("OTel-OTLP-Exporter-Rust/"), "{ua}");
    let decoded = ExportTraceServiceRequest::decode(first.body.as_slice()).unwrap();
    assert_eq!(decoded, sdk_request(&resource(), spans(5)));
    let second = ExportTraceServiceRequest::decode(got[1].body.as_slice()).unwrap();
    assert_eq!(second, sdk_request(&resource(), spans(3)));
    drop(got);
    assert!(p.shutdown(Duration::from_secs(5)));
}

#[test]
fn uncompressed_by_default() {
    let rx = Receiver::start(vec![]);
    let endpoint = format!("http://{}/custom/path", rx.addr);
    let p = processor(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint)]);
    assert_eq!(export_through(&p, 2).0, (2, 0));
    let got = rx.got.lock().unwrap();
    assert_eq!(got[0].path, "/custom/path");
    assert!(got[0].headers.get("content-encoding").is_none());
    let decoded = ExportTraceServiceRequest::decode(got[0].body.as_slice()).unwrap();
    assert_eq!(decoded, sdk_request(&resource(), spans(2)));
}

#[test]
fn a_503_then_200_is_retried_and_counted_once() {
    let rx = Receiver::start(vec![Reply::Status(503, &[])]);
    let endpoint = format!("http://{}", rx.addr);
    let p = processor(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]);
    assert_eq!(export_through(&p, 4).0, (4, 0));
    let got = rx.got.lock().unwrap();
    assert_eq!(got.len(), 2, "one retry");
    let gap = got[1].at - got[0].at;
    assert!(gap >= INITIAL_BACKOFF, "backed off: {gap:?}");
    assert_eq!(got[0].body, got[1].body, "the same request again");
}

#[test]
fn retryable_statuses_give_up_after_three_retries() {
    let rx = Receiver::start(vec![
        Reply::Status(502, &[]),
        Reply::Status(504, &[]),
        Reply::Status(429, &[]),
        Reply::Status(503, &[]),
    ]);
    let endpoint = format!("http://{}", rx.addr);
    let p = processor(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]);
    assert_eq!(export_through(&p, 3).0, (0, 3));
    assert_eq!(rx.requests(), 4, "the first attempt and three retries");
}

#[test]
fn retry_after_is_honoured() {
    let rx = Receiver::start(vec![Reply::Status(429, &[("retry-after", "1")])]);
    let endpoint = format!("http://{}", rx.addr);
    let p = processor(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]);
    assert_eq!(export_through(&p, 1).0, (1, 0));
    let got = rx.got.lock().unwrap();
    assert_eq!(got.len(), 2);
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_secs(1), "waited as asked: {gap:?}");
}

#[test]
fn a_retry_after_beyond_the_timeout_fails_at_once() {
    let rx = Receiver::start(vec![Reply::Status(503, &[("retry-after", "5")])]);
    let endpoint = format!("http://{}", rx.addr);
    let p = processor(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
    ]);
    let (counts, elapsed) = export_through(&p, 2);
    assert_eq!(counts, (0, 2));
    assert_eq!(rx.requests(), 1);
    assert!(elapsed < Duration::from_millis(900), "{elapsed:?}");
}

#[test]
fn a_400_is_not_retried() {
    let rx = Receiver::start(vec![Reply::Status(400, &[]), Reply::Status(200, &[])]);
    let endpoint = format!("http://{}", rx.addr);
    let p = processor(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]);
    assert_eq!(export_through(&p, 3).0, (0, 3));
    assert_eq!(rx.requests(), 1);
    // The next batch is sent normally.
    assert_eq!(export_through(&p, 2).0, (2, 3));
}

#[test]
fn a_hanging_receiver_costs_one_timeout() {
    let rx = Receiver::start(vec![Reply::Hang, Reply::Hang, Reply::Hang, Reply::Hang]);
    let endpoint = format!("http://{}", rx.addr);
    let p = processor(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "300"),
    ]);
    let (counts, elapsed) = export_through(&p, 5);
    assert_eq!(counts, (0, 5));
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(800),
        "{elapsed:?}"
    );
    assert_eq!(rx.requests(), 1, "no time left for a retry");
}

#[test]
fn a_missing_receiver_is_retried_within_the_timeout() {
    // A port that was just free: connections are refused.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let endpoint = format!("http://{addr}");
    let p = processor(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
    ]);
    let (counts, elapsed) = export_through(&p, 2);
    assert_eq!(counts, (0, 2));
    // Three backoffs (100, 200, 400 ms plus jitter) happened, within the timeout.
    assert!(
        elapsed >= Duration::from_millis(700) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
}

#[test]
fn rejected_spans_of_a_partial_success_count_as_failed() {
    let body = ExportTraceServiceResponse {
        partial_success: Some(ExportTracePartialSuccess {
            rejected_spans: 2,
            error_message: "too old".into(),
        }),
    }
    .encode_to_vec();
    let rx = Receiver::start(vec![
        Reply::Body(body.clone(), "application/x-protobuf"),
        Reply::Body(body, "text/plain"),
    ]);
    let endpoint = format!("http://{}", rx.addr);
    let p = processor(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]);
    assert_eq!(export_through(&p, 5).0, (3, 2));
    assert_eq!(rx.requests(), 1, "partial success is not retried");
    // Not a protobuf answer: not read as one.
    assert_eq!(export_through(&p, 5).0, (8, 2));
}
