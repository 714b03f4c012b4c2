//! Operations: log schema, request/trace id continuation, rotation, durability across
//! kill -9, metrics, health and graceful shutdown.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use serde_json::{Value, json};

fn schema_validator() -> (boon::Schemas, boon::SchemaIndex) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/log-record.schema.json"
    );
    let text = std::fs::read_to_string(path).expect("docs/log-record.schema.json");
    let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler
        .add_resource("urn:minirag:log-record", schema)
        .expect("add schema");
    let idx = compiler
        .compile("urn:minirag:log-record", &mut schemas)
        .expect("compile schema");
    (schemas, idx)
}

fn assert_valid(schemas: &boon::Schemas, idx: boon::SchemaIndex, line: &Value) {
    if let Err(e) = schemas.validate(line, idx) {
        panic!("log line does not match docs/log-record.schema.json: {e}\n{line}");
    }
}

#[test]
fn the_schema_examples_are_valid_records() {
    let (schemas, idx) = schema_validator();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/log-record.schema.json"
    );
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let examples = schema["examples"].as_array().expect("schema has examples");
    assert!(examples.len() >= 2);
    for e in examples {
        assert_valid(&schemas, idx, e);
    }
    // And the schema is not vacuous: an example without its required keys fails.
    let mut broken = examples[0].clone();
    broken.as_object_mut().unwrap().remove("request_id");
    assert!(schemas.validate(&broken, idx).is_err());
}

#[tokio::test]
async fn log_lines_follow_the_schema_and_carry_request_and_trace_ids() {
    let dir = temp_dir("logs");
    let a = bootstrap(&dir);
    let s = Server::start(&dir);
    let c = client();
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = c
        .post(s.url("/api/v1/ingest/text"))
        .bearer_auth(&a.api_key)
        .header("x-request-id", "req-abc.123:x")
        .header("traceparent", tp)
        .json(&json!({"documents": [{"title": "Owls", "text": "Owls hunt at night and sleep in the day."}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-abc.123:x");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["request_id"], "req-abc.123:x");
    // An invalid id is replaced; an invalid traceparent starts a new trace.
    let resp = c
        .post(s.url("/api/v1/ask"))
        .bearer_auth(&a.api_key)
        .header("x-request-id", "bad id with spaces")
        .header(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )
        .json(&json!({"question": "When do owls hunt?"}))
        .send()
        .await
        .unwrap();
    let new_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(new_id, "bad id with spaces");
    assert_eq!(new_id.len(), 36);
    let _ = c.get(s.url("/api/v1/sources")).send().await.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));

    let (schemas, idx) = schema_validator();
    let stdout = s.log_lines();
    let file: Vec<Value> = std::fs::read_to_string(dir.join("logs/rag.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every file line is JSON"))
        .collect();
    assert!(file.len() >= 5, "{file:?}");
    for line in stdout.iter().chain(&file) {
        assert_valid(&schemas, idx, line);
    }
    let of_req: Vec<&Value> = file
        .iter()
        .filter(|l| l["request_id"] == "req-abc.123:x")
        .collect();
    assert!(of_req.iter().any(|l| l["event"] == "ingest.text.completed"));
    assert!(
        of_req
            .iter()
            .any(|l| l["event"] == "http.access" && l["status_code"] == 200)
    );
    for l in &of_req {
        assert_eq!(l["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(l["workspace_id"], a.workspace_id.as_str());
        assert_eq!(l["organization_id"], a.organization_id.as_str());
        assert!(l["user_id"].is_string());
        assert_ne!(l["span_id"], "00f067aa0ba902b7", "our span is a new one");
    }
    let asked: Vec<&Value> = file
        .iter()
        .filter(|l| l["request_id"] == new_id.as_str())
        .collect();
    assert!(asked.iter().any(|l| l["event"] == "ask.completed"));
    assert!(
        asked
            .iter()
            .all(|l| l["trace_id"] != "00000000000000000000000000000000"
                && l["trace_id"].as_str().unwrap().len() == 32)
    );
    // Secrets never reach the log.
    let raw = std::fs::read_to_string(dir.join("logs/rag.log")).unwrap();
    assert!(!raw.contains(&a.api_key));
    assert!(!raw.contains(INTERNAL_TOKEN));
}

#[tokio::test]
async fn log_file_rotates_at_the_configured_size() {
    let dir = temp_dir("rotation");
    let a = bootstrap(&dir);
    let opts = Options {
        config_yaml: None,
        env: vec![
            ("LOG_ROTATION_MAX_BYTES".into(), "4096".into()),
            ("LOG_ROTATION_BACKUPS".into(), "2".into()),
        ],
    };
    let s = Server::start_with(&dir, opts);
    let c = client();
    for i in 0..60 {
        let _ = json(
            c.get(s.url("/api/v1/sources"))
                .bearer_auth(&a.api_key)
                .header("x-request-id", format!("rot-{i}")),
        )
        .await;
    }
    let logs = dir.join("logs");
    for name in ["rag.log", "rag.log.1", "rag.log.2"] {
        let p = logs.join(name);
        let len = std::fs::metadata(&p)
            .unwrap_or_else(|_| panic!("{name} missing"))
            .len();
        assert!(len <= 4096, "{name} is {len} bytes");
        for line in std::fs::read_to_string(&p).unwrap().lines() {
            serde_json::from_str::<Value>(line).expect("rotation never splits a line");
        }
    }
    assert!(!logs.join("rag.log.3").exists(), "only 2 backups are kept");
}

#[tokio::test]
async fn acknowledged_ingest_survives_kill_9() {
    let dir = temp_dir("durability");
    let a = bootstrap(&dir);
    let s = Server::start(&dir);
    let c = client();
    let (st, v) = ingest_text(
        &c,
        &s,
        &a.api_key,
        json!([{"title": "Durable", "text": "The vault door opens with a brass key."}]),
    )
    .await;
    assert_eq!(st, 200);
    let id = v["documents"][0]["source_id"].as_str().unwrap().to_string();
    s.kill9();
    let s = Server::start(&dir);
    let (st, v) = json(
        c.get(s.url(&format!("/api/v1/sources/{id}")))
            .bearer_auth(&a.api_key),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (_, a2) = ask(
        &c,
        &s,
        &a.api_key,
        json!({"question": "What opens the vault door?"}),
    )
    .await;
    assert_eq!(a2["citations"][0]["source_id"], id.as_str());
}

#[tokio::test]
async fn health_metrics_openapi_and_graceful_shutdown() {
    let dir = temp_dir("ops");
    let a = bootstrap(&dir);
    let s = Server::start(&dir);
    let c = client();
    let (st, _) = json(c.get(s.url("/healthz"))).await;
    assert_eq!(st, 200);
    let (st, v) = json(c.get(s.url("/readyz"))).await;
    assert_eq!((st, v["status"].as_str().unwrap()), (200, "ready"));
    let (st, v) = json(c.get(s.url("/openapi.json"))).await;
    assert_eq!(st, 200);
    assert!(v["paths"]["/api/v1/ask"].is_object());
    let _ = ingest_text(
        &c,
        &s,
        &a.api_key,
        json!([{"text": "Metrics count this chunk."}]),
    )
    .await;
    let _ = ask(
        &c,
        &s,
        &a.api_key,
        json!({"question": "What do metrics count?"}),
    )
    .await;
    let resp = c.get(s.url("/metrics")).send().await.unwrap();
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let m = resp.text().await.unwrap();
    for needle in [
        "ingest_processed_chunks_total{source=\"text\"} 1",
        "ingest_processed_chunks_total{source=\"file\"} 0",
        "chunk_records_total 1",
        "external_request_errors_total{service=\"openai\",operation=\"chat\"} 0",
        "embedding_queue_depth 0",
        "rag_core_http_requests_total{route=\"/api/v1/ask\",method=\"POST\",status_code=\"200\"} 1",
        "rag_core_stage_duration_seconds_bucket{le=\"3.0\",stage=\"retrieve\"}",
        "# EOF",
    ] {
        assert!(m.contains(needle), "missing {needle}\n{m}");
    }
    assert!(s.terminate(), "SIGTERM must exit 0");
}

#[test]
fn bootstrap_refuses_a_non_empty_store_and_bad_config_is_named() {
    let dir = temp_dir("cli");
    bootstrap(&dir);
    let out = std::process::Command::new(bin())
        .args(["admin", "bootstrap", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already has organizations"));
    let cfg = dir.join("bad.yaml");
    std::fs::write(&cfg, "listen: 127.0.0.1:0\ningest:\n  chunk_sise: 10\n").unwrap();
    let out = std::process::Command::new(bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("line 3") && err.contains("chunk_sise"),
        "{err}"
    );
    let out = std::process::Command::new(bin())
        .args(["serve", "--data-dir"])
        .arg(&dir)
        .env("OPENAI_API_KEY", "changeme")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("placeholder"));
}

/// A minimal HTTP/1.1 server answering each request with the next status from `script`
/// (then 200), recording request lines and headers.
async fn ping_receiver(script: Vec<u16>) -> (String, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut script = script.into_iter();
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = vec![0u8; 8192];
            let mut n = 0;
            while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
            }
            log.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).to_lowercase());
            let status = script.next().unwrap_or(200);
            let _ = s
                .write_all(
                    format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                    )
                    .as_bytes(),
                )
                .await;
        }
    });
    (format!("http://{addr}/ping/abc"), seen)
}

#[tokio::test]
async fn healthcheck_pings_report_success_and_count_failures() {
    let (url, seen) = ping_receiver(vec![500, 500]).await;
    let dir = temp_dir("pings");
    let _a = bootstrap(&dir);
    let s = Server::start_with(
        &dir,
        Options {
            config_yaml: Some(
                "healthchecks:\n  interval_seconds: 1\n  timeout_seconds: 2\n".into(),
            ),
            env: vec![("HEALTHCHECKS_PING_URL".into(), url)],
        },
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let lines = s.log_lines();
        let failed = lines
            .iter()
            .filter(|l| l["event"] == "healthcheck.ping_failed")
            .count();
        let sent = lines
            .iter()
            .filter(|l| l["event"] == "healthcheck.ping_sent")
            .count();
        if failed >= 2 && sent >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pings: {failed} failed, {sent} sent"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let reqs = seen.lock().unwrap().clone();
    assert!(
        reqs.iter().all(|r| r.starts_with("get /ping/abc http/1.1")),
        "{reqs:?}"
    );
    assert!(
        reqs.iter().all(|r| r.contains("\r\ntraceparent: 00-")),
        "pings carry trace context: {reqs:?}"
    );
    let page = client()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failed: f64 = page
        .lines()
        .find(|l| l.starts_with("healthcheck_ping_failed_total "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("healthcheck_ping_failed_total on /metrics");
    assert!(failed >= 2.0, "{failed}");
}

/// Every route the router serves is in docs/openapi.json and the document names no route
/// that does not exist, so the published contract cannot drift from the code.
#[test]
fn openapi_documents_exactly_the_routes_served() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let router = std::fs::read_to_string(root.join("src/api/mod.rs")).unwrap();
    let mut served = std::collections::BTreeSet::new();
    for part in router.split(".route(").skip(1) {
        let path = part.trim_start().trim_start_matches('"');
        if let Some(end) = path.find('"') {
            served.insert(path[..end].to_string());
        }
    }
    assert!(served.len() > 20, "router parse found {served:?}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("../docs/openapi.json")).unwrap())
            .unwrap();
    let documented: std::collections::BTreeSet<String> =
        doc["paths"].as_object().unwrap().keys().cloned().collect();
    let missing: Vec<_> = served.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&served).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "undocumented routes: {missing:?}; documented but not served: {stale:?}"
    );
}
