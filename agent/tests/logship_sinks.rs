//! The network sinks end to end: the real `minirag-agent ship` tails a log file and
//! ships it to a scripted HTTP server in the test, which records every request (path,
//! headers, body) and answers as each test scripts (errors, retries, partial success).
//! Each test checks the wire format one backend expects and how its answers are
//! classified (retried once, not retried, counted as rejected).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------
// The log file

const TRACE_1: &str = "0af7651916cd43dd8448eb211c80319c";
const SPAN_1: &str = "b7ad6b7169203331";
const TRACE_2: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN_2: &str = "00f067aa0ba902b7";
const TRACE_3: &str = "5b8efff798038103d269b633813fc60c";
const SPAN_3: &str = "eee19b7ec3c1b174";

/// 2026-11-28T10:00:00.123Z, 10:00:01.000Z and 10:00:02.500Z in ns.
const T1: u64 = 1_795_860_000_123_000_000;
const T2: u64 = 1_795_860_001_000_000_000;
const T3: u64 = 1_795_860_002_500_000_000;

const PLAIN: &str = "panic: plain text from a crashing process";

/// Three records in the log schema (DESIGN §4.1) and one plain-text line.
fn lines() -> Vec<String> {
    vec![
        json!({
            "timestamp": "2026-11-28T10:00:00.123Z", "level": "INFO", "logger": "rag.api",
            "message": "request done", "event": "http.request", "request_id": "req-1",
            "trace_id": TRACE_1, "span_id": SPAN_1, "user_id": "u-1",
            "workspace_id": "w-1", "organization_id": "o-1",
            "status": 200, "duration_ms": 12.5, "cached": false, "tags": {"a": 1},
        })
        .to_string(),
        json!({
            "timestamp": "2026-11-28T10:00:01.000Z", "level": "WARN", "logger": "rag.api",
            "message": "slow query", "event": "query.slow", "request_id": "req-2",
            "trace_id": TRACE_2, "span_id": SPAN_2, "user_id": null,
        })
        .to_string(),
        json!({
            "timestamp": "2026-11-28T10:00:02.500Z", "level": "ERROR", "logger": "rag.worker",
            "message": "boom", "event": "job.failed", "request_id": "req-3",
            "trace_id": TRACE_3, "span_id": SPAN_3,
        })
        .to_string(),
        PLAIN.to_string(),
    ]
}

/// Appends `lines` to `<dir>/logs/app.log` in one write (so the shipper reads them as
/// one chunk, hence one batch).
fn append(dir: &Path, lines: &[String]) {
    let mut text = String::new();
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("logs/app.log"))
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

// ---------------------------------------------------------------------------------
// A scripted HTTP server

#[derive(Debug, Clone)]
struct Req {
    path: String,
    query: String,
    headers: HashMap<String, String>,
    /// Gunzipped when the request said `Content-Encoding: gzip`.
    body: Vec<u8>,
    at: Instant,
}

impl Req {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn reply(status: u16) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: Vec::new(),
    }
}

impl Reply {
    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
    fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
    fn json(self, v: Value) -> Self {
        self.header("content-type", "application/json")
            .body(v.to_string())
    }
    fn protobuf(self, m: &impl Message) -> Self {
        self.header("content-type", "application/x-protobuf")
            .body(m.encode_to_vec())
    }
}

/// Answers request number `n` (from 0).
type Script = dyn Fn(usize, &Req) -> Reply + Send + Sync;

struct Server {
    addr: SocketAddr,
    reqs: Arc<Mutex<Vec<Req>>>,
}

impl Server {
    async fn start(script: impl Fn(usize, &Req) -> Reply + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reqs: Arc<Mutex<Vec<Req>>> = Arc::default();
        let script: Arc<Script> = Arc::new(script);
        let r = Arc::clone(&reqs);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (r, script) = (Arc::clone(&r), Arc::clone(&script));
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        handle(Arc::clone(&r), Arc::clone(&script), req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, reqs }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<Req> {
        self.reqs.lock().unwrap().clone()
    }

    /// Waits (polling) until at least `n` requests arrived; fails with the shipper's
    /// log after 8 s.
    async fn wait_for(&self, n: usize, ship: &Shipper) -> Vec<Req> {
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            let reqs = self.requests();
            if reqs.len() >= n {
                return reqs;
            }
            if Instant::now() > deadline {
                panic!(
                    "expected {n} requests, got {}; shipper log:\n{}",
                    reqs.len(),
                    ship.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asserts that no request beyond the first `n` arrives within `quiet`.
    async fn assert_no_more(&self, n: usize, quiet: Duration, ship: &Shipper) {
        tokio::time::sleep(quiet).await;
        let got = self.requests().len();
        assert_eq!(
            got,
            n,
            "expected no request after the first {n}; shipper log:\n{}",
            ship.log()
        );
    }
}

async fn handle(
    reqs: Arc<Mutex<Vec<Req>>>,
    script: Arc<Script>,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let headers: HashMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                v.to_str().unwrap_or("<binary>").to_string(),
            )
        })
        .collect();
    let raw = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let body = if headers.get("content-encoding").map(String::as_str) == Some("gzip") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .expect("a gzip body");
        out
    } else {
        raw
    };
    let r = Req {
        path,
        query,
        headers,
        body,
        at: Instant::now(),
    };
    let answer = {
        let mut reqs = reqs.lock().unwrap();
        let answer = script(reqs.len(), &r);
        reqs.push(r);
        answer
    };
    let mut resp = http::Response::new(Full::new(Bytes::from(answer.body)));
    *resp.status_mut() = http::StatusCode::from_u16(answer.status).unwrap();
    for (k, v) in answer.headers {
        resp.headers_mut().insert(k, v.parse().unwrap());
    }
    Ok(resp)
}

// ---------------------------------------------------------------------------------
// The shipper

/// A running `minirag-agent ship`; killed (and its directory removed) on drop.
struct Shipper {
    child: Child,
    dir: PathBuf,
    stderr: Arc<Mutex<Vec<String>>>,
}

static DIRS: AtomicU64 = AtomicU64::new(0);

/// A fresh directory with an empty `logs/`.
fn test_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "logship-sinks-{tag}-{}-{}",
        std::process::id(),
        DIRS.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("logs")).unwrap();
    d
}

/// One sink entry of `logship.sinks` (YAML), fast batching and retries.
fn sink_yaml(kind: &str, endpoint: &str, extra: &[&str]) -> String {
    let mut s = format!(
        "    - type: {kind}\n      endpoint: \"{endpoint}\"\n      batch: {{timeout_ms: 50}}\n      retry: {{initial_backoff_ms: 20, max_backoff_ms: 200}}\n"
    );
    for e in extra {
        s.push_str("      ");
        s.push_str(e);
        s.push('\n');
    }
    s
}

impl Shipper {
    /// Starts `ship --config` with only a `logship:` section; `env` adds variables (host
    /// and Kubernetes enrichment come from HOSTNAME, POD_NAME, POD_NAMESPACE).
    fn start(dir: &Path, sink: &str, env: &[(&str, &str)]) -> Self {
        let cfg = dir.join("agent.yaml");
        std::fs::write(
            &cfg,
            format!(
                "logship:\n  enabled: true\n  data_dir: \"{}\"\n  paths: [\"{}/*.log\"]\n  sinks:\n{sink}",
                dir.join("state").display(),
                dir.join("logs").display(),
            ),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_minirag-agent"));
        cmd.args(["ship", "--admin-listen", "127.0.0.1:0", "--config"])
            .arg(&cfg)
            .env("HOSTNAME", "test-host");
        for var in [
            "POD_NAME",
            "POD_NAMESPACE",
            "NODE_NAME",
            "POD_IP",
            "OTEL_SERVICE_NAME",
            "MINIRAG_AGENT_CONFIG",
        ] {
            cmd.env_remove(var);
        }
        let mut child = cmd
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn minirag-agent ship");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for l in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(l);
            }
        });
        Self {
            child,
            dir: dir.to_path_buf(),
            stderr,
        }
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// The shipper's own log events named `event`.
    fn events(&self, event: &str) -> Vec<Value> {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == event)
            .collect()
    }

    /// Waits until the driver logged a "refused for good" line containing `text`.
    async fn wait_rejected(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let found = self
                .events("logship.records_rejected")
                .iter()
                .any(|e| e["message"].as_str().is_some_and(|m| m.contains(text)));
            if found {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "no logship.records_rejected event containing {text:?}; log:\n{}",
            self.log()
        );
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---------------------------------------------------------------------------------
// OTLP

fn decode_otlp(r: &Req) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest::decode(&r.body[..]).expect("an ExportLogsServiceRequest")
}

fn records(req: &ExportLogsServiceRequest) -> Vec<LogRecord> {
    req.resource_logs
        .iter()
        .flat_map(|rl| &rl.scope_logs)
        .flat_map(|sl| sl.log_records.clone())
        .collect()
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    let v = attrs.iter().find(|kv| kv.key == key)?;
    Some(match v.value.as_ref()?.value.as_ref()? {
        Any::StringValue(s) => s.clone(),
        Any::IntValue(i) => format!("int:{i}"),
        Any::DoubleValue(d) => format!("double:{d}"),
        Any::BoolValue(b) => format!("bool:{b}"),
        other => format!("{other:?}"),
    })
}

fn body_text(r: &LogRecord) -> String {
    match r.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        other => panic!("body is not a string: {other:?}"),
    }
}

fn otlp_ok() -> Reply {
    reply(200).protobuf(&ExportLogsServiceResponse::default())
}

/// Protobuf, gzip, configured headers, and the full record → LogRecord mapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_protobuf_wire_format() {
    let server = Server::start(|_, _| otlp_ok()).await;
    let dir = test_dir("otlp-proto");
    append(&dir, &lines());
    let ship = Shipper::start(
        &dir,
        &sink_yaml(
            "otlp",
            &server.url("/v1/logs"),
            &[
                "compression: gzip",
                "headers: {Authorization: \"Bearer otlp-secret\"}",
            ],
        ),
        &[
            ("POD_NAME", "pod-1"),
            ("POD_NAMESPACE", "ns-1"),
            ("OTEL_SERVICE_NAME", "svc-test"),
        ],
    );
    let reqs = server.wait_for(1, &ship).await;
    let r = &reqs[0];
    assert_eq!(r.path, "/v1/logs");
    assert_eq!(r.header("content-type"), "application/x-protobuf");
    assert_eq!(r.header("content-encoding"), "gzip");
    assert_eq!(r.header("authorization"), "Bearer otlp-secret");

    let export = decode_otlp(r);
    assert_eq!(
        export.resource_logs.len(),
        1,
        "one origin, one ResourceLogs"
    );
    let rl = &export.resource_logs[0];
    let res = &rl.resource.as_ref().unwrap().attributes;
    assert_eq!(attr(res, "service.name").as_deref(), Some("svc-test"));
    assert_eq!(attr(res, "host.name").as_deref(), Some("test-host"));
    assert_eq!(attr(res, "k8s.pod.name").as_deref(), Some("pod-1"));
    assert_eq!(attr(res, "k8s.namespace.name").as_deref(), Some("ns-1"));
    assert_eq!(rl.scope_logs.len(), 1);
    let scope = rl.scope_logs[0].scope.as_ref().unwrap();
    assert_eq!(scope.name, "minirag-agent.logship");

    let recs = records(&export);
    assert_eq!(recs.len(), 4);
    let bodies: Vec<String> = recs.iter().map(body_text).collect();
    assert_eq!(bodies, ["request done", "slow query", "boom", PLAIN]);
    let sev: Vec<(i32, &str)> = recs
        .iter()
        .map(|r| (r.severity_number, r.severity_text.as_str()))
        .collect();
    assert_eq!(sev, [(9, "INFO"), (13, "WARN"), (17, "ERROR"), (0, "")]);
    let times: Vec<u64> = recs.iter().map(|r| r.time_unix_nano).collect();
    assert_eq!(times, [T1, T2, T3, 0]);
    let (before, after) = (now_ns() - 60_000_000_000, now_ns());
    for r in &recs {
        assert!(
            (before..=after).contains(&r.observed_time_unix_nano),
            "observed time is now"
        );
    }
    let ids: Vec<(String, String)> = recs
        .iter()
        .map(|r| (hex(&r.trace_id), hex(&r.span_id)))
        .collect();
    assert_eq!(
        ids,
        [
            (TRACE_1.into(), SPAN_1.into()),
            (TRACE_2.into(), SPAN_2.into()),
            (TRACE_3.into(), SPAN_3.into()),
            (String::new(), String::new()),
        ]
    );
    assert_eq!(recs[0].trace_id.len(), 16);
    assert_eq!(recs[0].span_id.len(), 8);

    let a = &recs[0].attributes;
    assert_eq!(recs[0].event_name, "http.request");
    assert_eq!(attr(a, "event.name").as_deref(), Some("http.request"));
    assert_eq!(attr(a, "logger").as_deref(), Some("rag.api"));
    assert_eq!(attr(a, "request_id").as_deref(), Some("req-1"));
    assert_eq!(attr(a, "user_id").as_deref(), Some("u-1"));
    assert_eq!(attr(a, "workspace_id").as_deref(), Some("w-1"));
    assert_eq!(attr(a, "organization_id").as_deref(), Some("o-1"));
    assert_eq!(attr(a, "status").as_deref(), Some("int:200"));
    assert_eq!(attr(a, "duration_ms").as_deref(), Some("double:12.5"));
    assert_eq!(attr(a, "cached").as_deref(), Some("bool:false"));
    assert_eq!(attr(a, "tags").as_deref(), Some(r#"{"a":1}"#));
    assert_eq!(
        attr(a, "log.file.path"),
        Some(dir.join("logs/app.log").display().to_string())
    );
    // Typed fields and resource fields are not repeated as attributes; nulls are dropped.
    for k in [
        "message",
        "level",
        "timestamp",
        "trace_id",
        "span_id",
        "event",
        "host.name",
        "k8s.pod.name",
        "service.name",
    ] {
        assert_eq!(attr(a, k), None, "{k} is not an attribute");
    }
    assert_eq!(attr(&recs[1].attributes, "user_id"), None);
    // The plain line: only the enrichment.
    assert_eq!(
        attr(&recs[3].attributes, "log.file.path"),
        attr(a, "log.file.path")
    );
    assert!(recs[3].event_name.is_empty());

    server
        .assert_no_more(1, Duration::from_millis(300), &ship)
        .await;
}

/// 503 with Retry-After: the same records again after the wait, then nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_retries_503_then_delivers_once() {
    let server = Server::start(|n, _| {
        if n == 0 {
            reply(503).header("retry-after", "1").body("busy")
        } else {
            otlp_ok()
        }
    })
    .await;
    let dir = test_dir("otlp-503");
    append(&dir, &lines());
    let ship = Shipper::start(
        &dir,
        &sink_yaml(
            "otlp",
            &server.url("/v1/logs"),
            &["headers: {Authorization: \"Bearer never-logged-secret\"}"],
        ),
        &[],
    );
    let reqs = server.wait_for(2, &ship).await;
    let waited = reqs[1].at - reqs[0].at;
    assert!(
        waited >= Duration::from_millis(900),
        "Retry-After: 1 honoured, waited {waited:?}"
    );
    let strip = |r: &Req| {
        let mut recs = records(&decode_otlp(r));
        for rec in &mut recs {
            rec.observed_time_unix_nano = 0;
        }
        recs
    };
    assert_eq!(strip(&reqs[0]).len(), 4);
    assert_eq!(strip(&reqs[0]), strip(&reqs[1]), "the same batch again");
    server
        .assert_no_more(2, Duration::from_millis(700), &ship)
        .await;
    assert!(!ship.events("logship.sink_retrying").is_empty());
    assert!(
        !ship.log().contains("never-logged-secret"),
        "header values never reach the log"
    );
}

/// 400 is final: one request for the batch, counted as rejected; later lines still go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_400_is_not_retried_and_shipping_goes_on() {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Status {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
    }
    let server = Server::start(|n, _| {
        if n == 0 {
            reply(400).protobuf(&Status {
                code: 3,
                message: "bad log data".into(),
            })
        } else {
            otlp_ok()
        }
    })
    .await;
    let dir = test_dir("otlp-400");
    append(&dir, &lines());
    let ship = Shipper::start(&dir, &sink_yaml("otlp", &server.url("/v1/logs"), &[]), &[]);
    server.wait_for(1, &ship).await;
    ship.wait_rejected("bad log data").await;
    server
        .assert_no_more(1, Duration::from_secs(1), &ship)
        .await;

    append(
        &dir,
        &[json!({"level": "INFO", "message": "after the 400"}).to_string()],
    );
    let reqs = server.wait_for(2, &ship).await;
    let recs = records(&decode_otlp(&reqs[1]));
    assert_eq!(
        recs.iter().map(body_text).collect::<Vec<_>>(),
        ["after the 400"]
    );
    server
        .assert_no_more(2, Duration::from_millis(300), &ship)
        .await;
}

/// A 200 with partial_success: the rejected count is reported, nothing is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_partial_success_is_not_retried() {
    let server = Server::start(|_, _| {
        reply(200).protobuf(&ExportLogsServiceResponse {
            partial_success: Some(ExportLogsPartialSuccess {
                rejected_log_records: 2,
                error_message: "two records too old".into(),
            }),
        })
    })
    .await;
    let dir = test_dir("otlp-partial");
    append(&dir, &lines());
    let ship = Shipper::start(&dir, &sink_yaml("otlp", &server.url("/v1/logs"), &[]), &[]);
    server.wait_for(1, &ship).await;
    ship.wait_rejected("2 of 4").await;
    server
        .assert_no_more(1, Duration::from_secs(1), &ship)
        .await;
}

/// `encoding: json`: the OTLP/JSON mapping, and its partial_success answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_json_encoding() {
    let server = Server::start(|_, _| {
        reply(200).json(json!({"partialSuccess": {"rejectedLogRecords": "1", "errorMessage": "x"}}))
    })
    .await;
    let dir = test_dir("otlp-json");
    append(&dir, &lines());
    let ship = Shipper::start(
        &dir,
        &sink_yaml("otlp", &server.url("/v1/logs"), &["encoding: json"]),
        &[],
    );
    let reqs = server.wait_for(1, &ship).await;
    let r = &reqs[0];
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.header("content-encoding"), "");
    let v: Value = serde_json::from_slice(&r.body).expect("a JSON body");
    let res = &v["resourceLogs"][0]["resource"]["attributes"];
    let res_attr = |k: &str| {
        res.as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == k)
            .map(|a| a["value"]["stringValue"].clone())
    };
    assert_eq!(res_attr("service.name"), Some(json!("minirag")));
    assert_eq!(res_attr("host.name"), Some(json!("test-host")));
    let scope = &v["resourceLogs"][0]["scopeLogs"][0];
    assert_eq!(scope["scope"]["name"], "minirag-agent.logship");
    let recs = scope["logRecords"].as_array().unwrap();
    let bodies: Vec<&str> = recs
        .iter()
        .map(|r| r["body"]["stringValue"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["request done", "slow query", "boom", PLAIN]);
    let first = &recs[0];
    assert_eq!(first["traceId"], TRACE_1);
    assert_eq!(first["spanId"], SPAN_1);
    assert_eq!(first["timeUnixNano"], T1.to_string());
    assert!(first["observedTimeUnixNano"].is_string());
    assert_eq!(first["severityNumber"], 9);
    assert_eq!(first["severityText"], "INFO");
    assert_eq!(first["eventName"], "http.request");
    let status = first["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == "status")
        .unwrap();
    assert_eq!(status["value"]["intValue"], "200", "64-bit ints as strings");
    let plain = &recs[3];
    assert!(plain.get("traceId").is_none() && plain.get("timeUnixNano").is_none());
    ship.wait_rejected("1 of 4").await;
    server
        .assert_no_more(1, Duration::from_secs(1), &ship)
        .await;
}

// ---------------------------------------------------------------------------------
// Loki

/// Push JSON, gzip, tenant header, static and capped labels, ns timestamps; a 429 is
/// retried with the same streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loki_push_format_labels_and_retry() {
    let server = Server::start(|n, _| if n == 0 { reply(429) } else { reply(204) }).await;
    let dir = test_dir("loki");
    append(&dir, &lines());
    let ship = Shipper::start(
        &dir,
        &sink_yaml(
            "loki",
            &server.url("/loki/api/v1/push"),
            &[
                "compression: gzip",
                "tenant_id: tenant-a",
                "labels: {job: minirag-test, app.kind: api}",
                "label_fields: [level, k8s.namespace.name]",
                "max_label_values: 1",
            ],
        ),
        &[("POD_NAMESPACE", "ns-1")],
    );
    let reqs = server.wait_for(2, &ship).await;
    let r = &reqs[0];
    assert_eq!(r.path, "/loki/api/v1/push");
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.header("content-encoding"), "gzip");
    assert_eq!(r.header("x-scope-orgid"), "tenant-a");

    // (labels, [(ts, line)]) per stream.
    type Streams = Vec<(Value, Vec<(String, Value)>)>;
    let streams = |r: &Req| -> Streams {
        let v: Value = serde_json::from_slice(&r.body).expect("a JSON body");
        v["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let values = s["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|pair| {
                        let pair = pair.as_array().unwrap();
                        assert_eq!(pair.len(), 2);
                        let line: Value = serde_json::from_str(pair[1].as_str().unwrap())
                            .expect("the line is the record JSON");
                        (pair[0].as_str().expect("ns as a string").to_string(), line)
                    })
                    .collect();
                (s["stream"].clone(), values)
            })
            .collect()
    };
    let got = streams(r);
    let base = json!({"job": "minirag-test", "app_kind": "api", "k8s_namespace_name": "ns-1"});
    let with_level = |level: &str| {
        let mut l = base.clone();
        l["level"] = json!(level);
        l
    };
    let find = |labels: &Value| {
        got.iter()
            .find(|(l, _)| l == labels)
            .unwrap_or_else(|| panic!("no stream {labels}; got {got:?}"))
            .1
            .clone()
    };
    assert_eq!(got.len(), 3, "{got:?}");
    // INFO took the single slot for `level`; WARN and ERROR became "other".
    let info = find(&with_level("INFO"));
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].0, T1.to_string());
    assert_eq!(info[0].1["message"], "request done");
    assert_eq!(info[0].1["trace_id"], TRACE_1);
    assert_eq!(info[0].1["host.name"], "test-host");
    let other = find(&with_level("other"));
    assert_eq!(
        other.iter().map(|(ts, _)| ts.clone()).collect::<Vec<_>>(),
        [T2.to_string(), T3.to_string()]
    );
    assert_eq!(other[0].1["level"], "WARN");
    assert_eq!(other[1].1["level"], "ERROR");
    // No level: no level label; no timestamp: now.
    let plain = find(&base);
    assert_eq!(plain[0].1["message"], PLAIN);
    let ts: u64 = plain[0].0.parse().unwrap();
    assert!(
        now_ns() - ts < 60_000_000_000,
        "a line without timestamp is now"
    );

    // The retry after the 429 carries the same streams and lines.
    let lines_of = |s: &Streams| {
        let mut v: Vec<(String, String)> = s
            .iter()
            .flat_map(|(l, vals)| {
                vals.iter()
                    .map(move |(_, line)| (l.to_string(), line.to_string()))
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(lines_of(&got), lines_of(&streams(&reqs[1])));
    server
        .assert_no_more(2, Duration::from_millis(700), &ship)
        .await;
}

// ---------------------------------------------------------------------------------
// Elasticsearch

/// `(action, document)` pairs of a bulk body.
fn bulk_pairs(r: &Req) -> Vec<(Value, Value)> {
    let text = std::str::from_utf8(&r.body).unwrap();
    assert!(text.ends_with('\n'), "NDJSON ends with a newline");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len() % 2, 0);
    lines
        .chunks(2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect()
}

/// A bulk answer with one item per action in `r`, statuses from `statuses` (cycled).
fn bulk_answer(r: &Req, statuses: &[u16]) -> Reply {
    let n = bulk_pairs(r).len();
    let items: Vec<Value> = (0..n)
        .map(|i| {
            let status = statuses[i % statuses.len()];
            let mut item = json!({"_index": ".ds-logs-test", "status": status});
            if !(200..300).contains(&status) {
                item["error"] = json!({"type": format!("e{status}"), "reason": "scripted"});
            }
            json!({ "create": item })
        })
        .collect();
    let errors = statuses.iter().any(|s| !(200..300).contains(s));
    reply(200).json(json!({"took": 1, "errors": errors, "items": items}))
}

fn ids(r: &Req) -> Vec<String> {
    bulk_pairs(r)
        .iter()
        .map(|(a, _)| a["create"]["_id"].as_str().unwrap().to_string())
        .collect()
}

/// Bulk NDJSON with `create`, deterministic ids and `@timestamp`; one item 429 makes the
/// whole batch go again with the same ids, and the 409s of the retry count as success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_bulk_format_and_item_retry() {
    let server = Server::start(|n, r| match n {
        0 => bulk_answer(r, &[201, 429, 201, 201]),
        1 => bulk_answer(r, &[409, 201, 409, 409]),
        _ => bulk_answer(r, &[201]),
    })
    .await;
    let dir = test_dir("es-retry");
    append(&dir, &lines());
    let ship = Shipper::start(
        &dir,
        &sink_yaml(
            "elasticsearch",
            &server.url("/"),
            &["data_stream: logs-test-default"],
        ),
        &[],
    );
    let reqs = server.wait_for(2, &ship).await;
    let r = &reqs[0];
    assert_eq!(r.path, "/_bulk");
    assert_eq!(r.header("content-type"), "application/x-ndjson");
    assert!(r.query.contains("filter_path="), "{}", r.query);
    let pairs = bulk_pairs(r);
    assert_eq!(pairs.len(), 4);
    for (action, _) in &pairs {
        assert_eq!(action.as_object().unwrap().len(), 1, "one action: {action}");
        assert_eq!(action["create"]["_index"], "logs-test-default");
        assert!(!action["create"]["_id"].as_str().unwrap().is_empty());
    }
    let first_ids = ids(r);
    let mut unique = first_ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 4, "one id per line: {first_ids:?}");
    let docs: Vec<&Value> = pairs.iter().map(|(_, d)| d).collect();
    assert_eq!(docs[0]["@timestamp"], "2026-11-28T10:00:00.123Z");
    assert_eq!(docs[0]["message"], "request done");
    assert_eq!(docs[0]["trace_id"], TRACE_1);
    assert_eq!(docs[0]["status"], 200);
    assert_eq!(docs[0]["host.name"], "test-host");
    assert_eq!(docs[2]["@timestamp"], "2026-11-28T10:00:02.500Z");
    assert_eq!(docs[3]["message"], PLAIN);
    let ts = docs[3]["@timestamp"].as_str().unwrap();
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "RFC 3339 now: {ts}"
    );

    assert_eq!(ids(&reqs[1]), first_ids, "the retry carries the same ids");
    assert_eq!(bulk_pairs(&reqs[1]).len(), 4, "the whole batch again");
    server
        .assert_no_more(2, Duration::from_millis(700), &ship)
        .await;
    assert!(ship.events("logship.records_rejected").is_empty());
}

/// Items 409 (already there) and 400 (mapping error) are not retried; the 400 counts as
/// rejected, later lines get new ids; gzip bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_item_400_and_409_are_not_retried() {
    let server = Server::start(|n, r| match n {
        0 => bulk_answer(r, &[409, 400, 201, 201]),
        _ => bulk_answer(r, &[201]),
    })
    .await;
    let dir = test_dir("es-400");
    append(&dir, &lines());
    let ship = Shipper::start(
        &dir,
        &sink_yaml("elasticsearch", &server.url(""), &["compression: gzip"]),
        &[],
    );
    let reqs = server.wait_for(1, &ship).await;
    assert_eq!(reqs[0].header("content-encoding"), "gzip");
    let first = bulk_pairs(&reqs[0]);
    assert_eq!(first.len(), 4);
    assert_eq!(first[0].0["create"]["_index"], "logs-minirag-default");
    ship.wait_rejected("1 of 4").await;
    server
        .assert_no_more(1, Duration::from_secs(1), &ship)
        .await;

    append(&dir, &[lines()[0].clone()]);
    let reqs = server.wait_for(2, &ship).await;
    let second = ids(&reqs[1]);
    assert_eq!(second.len(), 1);
    assert!(
        !ids(&reqs[0]).contains(&second[0]),
        "the same text at another offset is another document"
    );
    server
        .assert_no_more(2, Duration::from_millis(300), &ship)
        .await;
}
