//! Traces end to end: agent → rag-core → a fake OpenAI-compatible server, exported over
//! OTLP/HTTP to a local receiver that decodes the protobuf.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::{Value, json};

#[derive(Debug, Clone)]
struct Got {
    service: String,
    span: Span,
}

impl Got {
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    fn parent(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    fn attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Any::StringValue(s) => Some(s.clone()),
                Any::IntValue(i) => Some(i.to_string()),
                Any::BoolValue(b) => Some(b.to_string()),
                Any::DoubleValue(d) => Some(d.to_string()),
                _ => None,
            })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A local OTLP/HTTP receiver (`POST /v1/traces`, protobuf).
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Got>>>,
}

async fn start_receiver() -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spans: Arc<Mutex<Vec<Got>>> = Arc::default();
    let sink = Arc::clone(&spans);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let sink = Arc::clone(&sink);
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let sink = Arc::clone(&sink);
                    async move {
                        assert_eq!(req.uri().path(), "/v1/traces");
                        assert_eq!(
                            req.headers()["content-type"].to_str().unwrap(),
                            "application/x-protobuf"
                        );
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let decoded = ExportTraceServiceRequest::decode(body).unwrap();
                        for rs in decoded.resource_spans {
                            let service = rs
                                .resource
                                .as_ref()
                                .and_then(|r| {
                                    r.attributes.iter().find(|kv| kv.key == "service.name")
                                })
                                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                                    Any::StringValue(s) => Some(s.clone()),
                                    _ => None,
                                })
                                .unwrap_or_default();
                            for ss in rs.scope_spans {
                                for span in ss.spans {
                                    sink.lock().unwrap().push(Got {
                                        service: service.clone(),
                                        span,
                                    });
                                }
                            }
                        }
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
                    }
                });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Receiver { addr, spans }
}

impl Receiver {
    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn wait_for(&self, what: &str, f: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let spans = self.spans.lock().unwrap().clone();
            if f(&spans) {
                return spans;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

const FAST_EXPORT: [(&str, &str); 1] = [("OTEL_BSP_SCHEDULE_DELAY", "50")];

#[tokio::test]
async fn one_ask_is_one_trace_across_agent_rag_core_and_the_model_api() {
    let receiver = start_receiver().await;
    let model = start_upstream().await;
    let endpoint = receiver.endpoint();
    let model_url = format!("http://{}/v1", model.addr);
    let rag = start_rag_core_with(
        "answer:\n  mode: openai\n",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "rag-core-under-test"),
            ("OPENAI_BASE_URL", &model_url),
            FAST_EXPORT[0],
        ],
    );
    let agent = Agent::start_env(
        &rag.base,
        "identity:\n  provider: introspect\n",
        &[
            ("MINIRAG_INTERNAL_TOKEN", TOKEN),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "edge-under-test"),
            FAST_EXPORT[0],
        ],
    );
    let c = client();
    let r = c
        .post(agent.url("/api/v1/ingest/text"))
        .bearer_auth(&rag.key)
        .json(&json!({"documents": [{"title": "sky", "text": "The sky is blue because of Rayleigh scattering."}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rid = "trace-test-ask-1";
    let r = c
        .post(agent.url("/api/v1/ask"))
        .bearer_auth(&rag.key)
        .header("x-request-id", rid)
        .header("user-agent", "trace-test/1")
        .json(&json!({"question": "why is the sky blue"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["mode"], "generated", "the fake model answered: {body}");

    // The whole trace: agent SERVER + CLIENT, rag-core SERVER + stages + outbound CLIENT.
    let spans = receiver
        .wait_for("the ask trace", |s| {
            let Some(edge) = s.iter().find(|g| {
                g.service == "edge-under-test"
                    && g.attr("minirag.request_id").as_deref() == Some(rid)
                    && g.span.kind == SpanKind::Server as i32
            }) else {
                return false;
            };
            let t = edge.trace_id();
            let names: Vec<&str> = s
                .iter()
                .filter(|g| g.trace_id() == t)
                .map(|g| g.span.name.as_str())
                .collect();
            names.contains(&"POST /api/v1/ask") && names.contains(&"answer_generation")
        })
        .await;
    let edge = spans
        .iter()
        .find(|g| {
            g.service == "edge-under-test"
                && g.attr("minirag.request_id").as_deref() == Some(rid)
                && g.span.kind == SpanKind::Server as i32
        })
        .unwrap();
    let trace = edge.trace_id();
    let in_trace: Vec<&Got> = spans.iter().filter(|g| g.trace_id() == trace).collect();
    let by_name = |service: &str, name: &str| -> &Got {
        in_trace
            .iter()
            .find(|g| g.service == service && g.span.name == name)
            .unwrap_or_else(|| panic!("no {service} span {name:?} in {in_trace:#?}"))
    };

    // Agent SERVER span: name from the route template, semantic-convention attributes.
    assert_eq!(edge.span.name, "POST /api/v1/ask");
    assert!(edge.span.parent_span_id.is_empty(), "a new root");
    for (k, v) in [
        ("http.request.method", Some("POST")),
        ("url.path", Some("/api/v1/ask")),
        ("url.scheme", Some("http")),
        ("http.response.status_code", Some("200")),
        ("network.protocol.version", Some("1.1")),
        ("user_agent.original", Some("trace-test/1")),
        ("client.address", Some("127.0.0.1")),
        ("minirag.workspace_id", Some(rag.workspace_id.as_str())),
        ("server.address", None),
        ("minirag.organization_id", None),
    ] {
        let got = edge.attr(k);
        assert!(got.is_some(), "agent span lacks {k}");
        if let Some(v) = v {
            assert_eq!(got.as_deref(), Some(v), "{k}");
        }
    }
    assert!(edge.attr("error.type").is_none());

    // Parent/child links down the path.
    let edge_client = in_trace
        .iter()
        .find(|g| g.service == "edge-under-test" && g.span.kind == SpanKind::Client as i32)
        .unwrap();
    assert_eq!(edge_client.parent(), edge.span_id());
    let core = by_name("rag-core-under-test", "POST /api/v1/ask");
    assert_eq!(core.span.kind, SpanKind::Server as i32);
    assert_eq!(
        core.parent(),
        edge_client.span_id(),
        "rag-core continues the agent's trace"
    );
    assert_eq!(core.attr("http.route").as_deref(), Some("/api/v1/ask"));
    for stage in [
        "embed",
        "fts_search",
        "vector_search",
        "fusion",
        "answer_generation",
    ] {
        assert_eq!(
            by_name("rag-core-under-test", stage).parent(),
            core.span_id(),
            "{stage} is a child of rag-core's request span"
        );
    }
    let fts = by_name("rag-core-under-test", "fts_search");
    let sqlite = in_trace
        .iter()
        .find(|g| g.span.name == "sqlite.read" && g.parent() == fts.span_id())
        .expect("the FTS query's SQLite span");
    assert_eq!(sqlite.attr("db.system.name").as_deref(), Some("sqlite"));
    let answer = by_name("rag-core-under-test", "answer_generation");
    let outbound = in_trace
        .iter()
        .find(|g| g.service == "rag-core-under-test" && g.span.kind == SpanKind::Client as i32)
        .expect("the model call's CLIENT span");
    assert_eq!(outbound.parent(), answer.span_id());
    assert_eq!(
        outbound.attr("http.response.status_code").as_deref(),
        Some("200")
    );

    // The fake model saw the same trace, with rag-core's CLIENT span as parent, and the id.
    let seen = model.seen.lock().unwrap().clone();
    let (_, h) = seen
        .iter()
        .find(|(p, _)| p.ends_with("/chat/completions"))
        .expect("rag-core called the model API");
    assert_eq!(
        h["traceparent"].as_str().unwrap(),
        format!("00-{trace}-{}-01", outbound.span_id())
    );
    assert_eq!(h["x-request-id"], rid);

    // rag-core's log lines for this request carry the trace, and the span they were in.
    let logs = rag.logs.lock().unwrap().clone();
    let mine: Vec<&Value> = logs.iter().filter(|l| l["request_id"] == rid).collect();
    assert!(!mine.is_empty());
    for l in &mine {
        assert_eq!(l["trace_id"], trace.as_str(), "{l}");
    }
    assert!(
        mine.iter().any(|l| l["span_id"] == core.span_id().as_str()),
        "the access line names rag-core's request span"
    );

    // Exemplars: the latency buckets point at this trace, in both programs.
    let page = scrape(&c, &agent).await;
    assert!(
        page.lines()
            .any(|l| l.starts_with("ask_request_latency_seconds_bucket")
                && l.contains(&format!("# {{trace_id=\"{trace}\"}}"))),
        "agent exemplar for {trace}"
    );
    assert!(page.contains("minirag_agent_otlp_spans_exported_total"));
    let core_page = c
        .get(format!("{}/metrics", rag.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        core_page.contains(&format!("trace_id=\"{trace}\"")),
        "rag-core exemplar for {trace}"
    );
}

/// Accepts connections and never answers: the worst receiver.
async fn start_hanging_receiver() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    addr
}

fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not on the page"))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_hanging_or_missing_receiver_costs_requests_nothing() {
    let upstream = start_upstream().await;
    let up = format!("http://{}", upstream.addr);
    let hanging = start_hanging_receiver().await;
    // A port with nothing listening: bind, note the port, close.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let c = client();
    for (label, addr) in [("hanging", hanging), ("down", down)] {
        let endpoint = format!("http://{addr}");
        let agent = Agent::start_env(
            &up,
            "",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "16"),
                ("OTEL_BSP_SCHEDULE_DELAY", "20"),
            ],
        );
        let mut slowest = Duration::ZERO;
        for batch in 0..40 {
            let mut tasks = Vec::new();
            for i in 0..10 {
                let c = c.clone();
                let url = agent.url(&format!("/t/{batch}/{i}"));
                tasks.push(tokio::spawn(async move {
                    let t = Instant::now();
                    let r = c.get(url).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    t.elapsed()
                }));
            }
            for t in tasks {
                slowest = slowest.max(t.await.unwrap());
            }
        }
        assert!(
            slowest < Duration::from_millis(1000),
            "{label}: slowest request took {slowest:?}"
        );
        let page = scrape(&c, &agent).await;
        let dropped = metric(&page, "minirag_agent_otlp_spans_dropped_total");
        let failed = metric(&page, "minirag_agent_otlp_spans_failed_total");
        let exported = metric(&page, "minirag_agent_otlp_spans_exported_total");
        assert_eq!(exported, 0.0, "{label}");
        if label == "hanging" {
            // 400 requests × 2 spans; the queue holds 64 and one batch is stuck in flight.
            assert!(dropped >= 600.0, "{label}: dropped {dropped}");
        } else {
            assert!(
                dropped + failed >= 100.0,
                "{label}: dropped {dropped} failed {failed}"
            );
        }
        let rss = rss_kib(agent.child.id());
        assert!(rss < 96 * 1024, "{label}: RSS {rss} KiB");
    }
}

#[tokio::test]
async fn ratio_sampling_keeps_about_one_in_ten_and_always_follows_the_parent() {
    let receiver = start_receiver().await;
    let upstream = start_upstream().await;
    let endpoint = receiver.endpoint();
    let agent = Agent::start_env(
        &format!("http://{}", upstream.addr),
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
            FAST_EXPORT[0],
        ],
    );
    let c = client();
    let n = 600;
    for i in 0..n {
        let r = c
            .get(agent.url(&format!("/root/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let sampled_upstream = upstream
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, h)| {
            p.starts_with("/root/") && h["traceparent"].as_str().unwrap().ends_with("-01")
        })
        .count();
    // Expected 60; the bounds are more than four standard deviations wide.
    assert!(
        (25..=110).contains(&sampled_upstream),
        "{sampled_upstream} of {n} sampled"
    );
    let spans = receiver
        .wait_for("the sampled roots", |s| {
            s.iter()
                .filter(|g| g.span.kind == SpanKind::Server as i32)
                .count()
                >= sampled_upstream
        })
        .await;
    assert_eq!(
        spans
            .iter()
            .filter(|g| g.span.kind == SpanKind::Server as i32)
            .count(),
        sampled_upstream,
        "exactly the sampled requests are exported"
    );

    // A parent's decision always wins over the ratio.
    for (flag, tag) in [("01", "yes"), ("00", "no")] {
        for i in 0..30 {
            let tp = format!("00-{:032x}-{:016x}-{flag}", 0xabc000 + i, 0x77 + i);
            let r = c
                .get(agent.url(&format!("/parent-{tag}/{i}")))
                .header("traceparent", tp)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        let seen = upstream.seen.lock().unwrap().clone();
        let flags: Vec<&str> = seen
            .iter()
            .filter(|(p, _)| p.starts_with(&format!("/parent-{tag}/")))
            .map(|(_, h)| &h["traceparent"].as_str().unwrap()[53..])
            .collect();
        assert_eq!(flags.len(), 30);
        assert!(flags.iter().all(|f| *f == flag), "{tag}: {flags:?}");
    }
    let spans = receiver
        .wait_for("the 30 parent-sampled requests", |s| {
            s.iter()
                .filter(|g| {
                    g.attr("url.path")
                        .is_some_and(|p| p.starts_with("/parent-yes/"))
                })
                .count()
                == 30
        })
        .await;
    assert!(
        !spans.iter().any(|g| g
            .attr("url.path")
            .is_some_and(|p| p.starts_with("/parent-no/"))),
        "unsampled parents are never exported"
    );
    for g in spans.iter().filter(|g| {
        g.attr("url.path")
            .is_some_and(|p| p.starts_with("/parent-yes/"))
    }) {
        assert!(
            g.trace_id().starts_with("00000000"),
            "continued the caller's trace"
        );
        assert!(!g.span.parent_span_id.is_empty());
    }
}
