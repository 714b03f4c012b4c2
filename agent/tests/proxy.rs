//! The proxy end to end: real agent binary, real upstream server, real HTTP clients.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn last_seen(u: &Upstream) -> Value {
    u.seen
        .lock()
        .unwrap()
        .last()
        .map(|s| s.1.clone())
        .expect("upstream saw a request")
}

#[tokio::test]
async fn request_ids_are_kept_only_when_valid_and_echoed_everywhere() {
    let up = start_upstream().await;
    let agent = Agent::start(&format!("http://{}", up.addr), "");
    let c = client();
    let cases = [
        ("good-id_1.2:3", true),
        ("has space", false),
        ("<script>alert(1)</script>", false),
        (&*"a".repeat(129), false),
        (&*"b".repeat(128), true),
    ];
    for (id, kept) in cases {
        let r = c
            .get(agent.url("/api/v1/sources"))
            .header("x-request-id", id)
            .send()
            .await
            .unwrap();
        let echoed = r.headers()["x-request-id"].to_str().unwrap().to_string();
        let seen = last_seen(&up)["x-request-id"].as_str().unwrap().to_string();
        assert_eq!(echoed, seen, "upstream and client see the same id");
        if kept {
            assert_eq!(echoed, id);
        } else {
            assert_ne!(echoed, id);
            assert_eq!(echoed.len(), 36, "replaced by a UUIDv4");
        }
    }
    // The agent's own errors carry the id too.
    let r = c
        .get(agent.url("/internal/v1/principal"))
        .header("x-request-id", "mine-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-request-id"], "mine-1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["request_id"], "mine-1");
    assert_eq!(v["error"], "not_found");
}

#[tokio::test]
async fn trace_context_is_continued_or_restarted() {
    let up = start_upstream().await;
    let agent = Agent::start(&format!("http://{}", up.addr), "");
    let c = client();
    // Valid: same trace, our span as the parent, tracestate kept.
    c.get(agent.url("/x"))
        .header("traceparent", TP)
        .header("tracestate", "vendor=1")
        .send()
        .await
        .unwrap();
    let h = last_seen(&up);
    let tp = h["traceparent"].as_str().unwrap();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "upstream's parent is the agent's span"
    );
    assert_eq!(parts[2].len(), 16);
    assert_eq!(parts[3], "01");
    assert_eq!(h["tracestate"], "vendor=1");
    // A future version is read by its first four fields.
    c.get(agent.url("/x"))
        .header(
            "traceparent",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever",
        )
        .send()
        .await
        .unwrap();
    assert!(
        last_seen(&up)["traceparent"]
            .as_str()
            .unwrap()
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    );
    // Invalid ones restart the trace and drop tracestate; the request still succeeds.
    for bad in [
        TP.to_uppercase(),
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01".into(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01".into(),
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01".into(),
        format!("{TP}-extra"),
        "garbage".into(),
    ] {
        let r = c
            .get(agent.url("/x"))
            .header("traceparent", &bad)
            .header("tracestate", "vendor=1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{bad}");
        let h = last_seen(&up);
        let tp = h["traceparent"].as_str().unwrap();
        assert!(
            !tp.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
            "{bad} must restart: {tp}"
        );
        assert_eq!(tp.len(), 55);
        assert!(h.get("tracestate").is_none(), "{bad}: tracestate dropped");
    }
    // No header at all: a fresh root.
    c.get(agent.url("/x")).send().await.unwrap();
    assert_eq!(last_seen(&up)["traceparent"].as_str().unwrap().len(), 55);
}

#[tokio::test]
async fn path_guard_and_spoofed_identity_headers() {
    let up = start_upstream().await;
    let agent = Agent::start(&format!("http://{}", up.addr), "");
    let c = client();
    let before = up.seen.lock().unwrap().len();
    for p in [
        "/metrics",
        "/internal/v1/principal",
        "//metrics",
        "/api/../internal/v1/principal",
        "/%2e%2e/metrics",
    ] {
        let r = c.get(agent.url(p)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{p}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "not_found");
    }
    assert_eq!(
        up.seen.lock().unwrap().len(),
        before,
        "guarded paths never reach the upstream"
    );
    c.get(agent.url("/api/v1/sources"))
        .header("x-internal-token", "stolen")
        .header("x-minirag-workspace-id", "ws_other")
        .header("connection", "x-custom")
        .header("x-custom", "hop")
        .send()
        .await
        .unwrap();
    let h = last_seen(&up);
    assert!(h.get("x-internal-token").is_none());
    assert!(h.get("x-minirag-workspace-id").is_none());
    assert!(
        h.get("x-custom").is_none(),
        "headers named by Connection are hop-by-hop"
    );
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn metrics_and_access_log_are_recorded_per_route_class() {
    let up = start_upstream().await;
    let agent = Agent::start(&format!("http://{}", up.addr), "");
    let c = client();
    for _ in 0..3 {
        let r = c
            .post(agent.url("/api/v1/ask"))
            .bearer_auth("mrk_secretkey")
            .header("cookie", "session=topsecret")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        assert_eq!(r.headers()["cache-control"], "no-store");
        assert!(
            r.headers().get("strict-transport-security").is_none(),
            "HSTS only over TLS"
        );
        r.bytes().await.unwrap();
    }
    let r = c
        .post(agent.url("/api/v1/ingest/files"))
        .header("x-api-key", "mrk_otherkey")
        .body("x".repeat(1000))
        .send()
        .await
        .unwrap();
    r.bytes().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = scrape(&c, &agent).await;
    for needle in [
        "ask_requests_total{outcome=\"success\",status_code=\"200\"} 3",
        "ask_request_latency_seconds_count{outcome=\"success\"} 3",
        "ask_request_latency_seconds_bucket{le=\"3.0\",outcome=\"success\"} 3",
        "ingest_operations_total{source=\"files\",outcome=\"success\",status_code=\"200\"} 1",
        "minirag_agent_http_requests_total{class=\"ask\",method=\"POST\",status_code=\"200\"} 3",
        "minirag_agent_http_requests_in_flight{class=\"ask\"} 0",
        "minirag_agent_upstream_errors_total{class=\"ask\",kind=\"connect\"} 0",
        "# EOF",
    ] {
        assert!(m.contains(needle), "missing {needle}\n{m}");
    }
    let lines = agent.access_lines();
    let asks: Vec<&Value> = lines.iter().filter(|l| l["route"] == "ask").collect();
    assert_eq!(asks.len(), 3, "{lines:?}");
    let l = asks[0];
    for key in [
        "timestamp",
        "level",
        "logger",
        "message",
        "event",
        "request_id",
        "trace_id",
        "span_id",
        "user_id",
        "workspace_id",
        "organization_id",
        "method",
        "path",
        "status_code",
        "duration_ms",
        "upstream_ms",
        "bytes_in",
        "bytes_out",
        "client_addr",
        "user_agent",
        "protocol",
    ] {
        assert!(l.get(key).is_some(), "access line lacks {key}: {l}");
    }
    assert_eq!(l["event"], "http.access");
    assert_eq!(l["status_code"], 200);
    assert_eq!(l["protocol"], "HTTP/1.1");
    let ingest = lines.iter().find(|l| l["route"] == "ingest").unwrap();
    assert_eq!(ingest["bytes_in"], 1000);
    assert!(ingest["bytes_out"].as_u64().unwrap() > 0);
    let all = agent.stdout.lock().unwrap().join("\n");
    for secret in ["mrk_secretkey", "topsecret", "mrk_otherkey"] {
        assert!(!all.contains(secret), "access log leaked {secret}");
    }
}

#[tokio::test]
async fn server_sent_events_stream_event_by_event() {
    let up = start_upstream().await;
    let agent = Agent::start(&format!("http://{}", up.addr), "");
    let c = client();
    let started = Instant::now();
    let mut r = c.get(agent.url("/sse")).send().await.unwrap();
    let first = r.chunk().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert!(String::from_utf8_lossy(&first).contains("event 0"));
    let mut rest = Vec::new();
    while let Some(c) = r.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    let total = started.elapsed();
    assert!(String::from_utf8_lossy(&rest).contains("event 2"));
    // The upstream takes ≥ 1.4 s in all; the first event must not wait for that.
    assert!(total >= Duration::from_millis(1400));
    assert!(
        first_at < Duration::from_millis(700),
        "first event after {first_at:?}"
    );
}

#[tokio::test]
async fn http2_prior_knowledge_and_upgrades_pass_through() {
    let up = start_upstream().await;
    let agent = Agent::start(&format!("http://{}", up.addr), "");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(agent.url("/api/v1/sources")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        agent
            .access_lines()
            .iter()
            .any(|l| l["protocol"] == "HTTP/2")
    );

    // Raw HTTP/1.1 upgrade: after 101 the bytes flow both ways through the agent.
    let addr = agent.base.trim_start_matches("http://").to_string();
    let echoed = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(
            b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        s.write_all(b"ping through the tunnel").unwrap();
        let mut got = Vec::new();
        while got.len() < 23 {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(got).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(echoed, "ping through the tunnel");
}

#[tokio::test]
async fn upstream_down_slow_and_limits_answer_json_errors() {
    let up = start_upstream().await;
    let yaml = "timeouts:\n  response_headers_ms: 500\nlimits:\n  max_body_bytes: 1000\n  max_headers: 30\n  header_read_timeout_ms: 700\n";
    let agent = Agent::start(&format!("http://{}", up.addr), yaml);
    let c = client();
    let r = c.get(agent.url("/slow")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "upstream_timeout");
    assert!(v["request_id"].is_string());

    let r = c
        .post(agent.url("/api/v1/ingest/text"))
        .body("x".repeat(1001))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = c
        .post(agent.url("/api/v1/ingest/text"))
        .body("x".repeat(1000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let mut req = c.get(agent.url("/x"));
    for i in 0..40 {
        req = req.header(format!("x-h{i}"), "v");
    }
    assert_eq!(req.send().await.unwrap().status(), 431);

    // A client that never finishes its head is disconnected at the header timeout.
    let addr = agent.base.trim_start_matches("http://").to_string();
    let cut_after = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf);
        t.elapsed()
    })
    .await
    .unwrap();
    assert!(
        cut_after < Duration::from_secs(5),
        "cut after {cut_after:?}"
    );

    // Upstream down: 502 JSON.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let agent2 = Agent::start(&format!("http://{dead_addr}"), "");
    let r = c.get(agent2.url("/api/v1/sources")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "upstream_unavailable");
    let ready = c
        .get(format!("{}/readyz", agent2.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "not ready while the upstream is down");
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let up = start_upstream().await;
    let mut agent = Agent::start(
        &format!("http://{}", up.addr),
        "lifecycle:\n  drain_delay_seconds: 1\n  grace_seconds: 10\n",
    );
    let c = client();
    assert_eq!(
        c.get(format!("{}/readyz", agent.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let inflight: Vec<_> = (0..5)
        .map(|_| tokio::spawn(c.get(agent.url("/slow")).send()))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    agent.sigterm();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        c.get(format!("{}/readyz", agent.admin))
            .send()
            .await
            .unwrap()
            .status(),
        503,
        "readiness fails once shutdown starts"
    );
    // Still serving during the drain delay.
    assert_eq!(c.get(agent.url("/x")).send().await.unwrap().status(), 200);
    for f in inflight {
        let r = f.await.unwrap().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "slow done");
    }
    let status = tokio::task::spawn_blocking(move || agent.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

#[tokio::test]
async fn client_leaving_early_is_recorded_and_connect_timeouts_answer_504() {
    let up = start_upstream().await;
    let agent = Agent::start(&format!("http://{}", up.addr), "");
    let c = client();
    let gone = tokio::spawn(
        c.get(agent.url("/slow"))
            .header("x-request-id", "leaver-1")
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    gone.abort();
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let m = scrape(&c, &agent).await;
    assert!(
        m.contains("minirag_agent_http_requests_in_flight{class=\"other\"} 0"),
        "{m}"
    );
    let line = agent
        .access_lines()
        .into_iter()
        .find(|l| l["request_id"] == "leaver-1")
        .expect("access line for the leaver");
    assert_eq!(line["status_code"], 499);
    assert_eq!(line["outcome"], "cancelled");

    // An upstream whose accept queue is full never completes the handshake.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(1).unwrap();
    let full_addr = full.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(full_addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let agent2 = Agent::start(
        &format!("http://{full_addr}"),
        "timeouts:\n  connect_ms: 300\n",
    );
    let started = std::time::Instant::now();
    let r = c.get(agent2.url("/x")).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "upstream_connect_timeout", "{v}");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(full);
}

#[tokio::test]
async fn a_single_threaded_runtime_serves_concurrent_and_slow_requests() {
    let up = start_upstream().await;
    let agent = Agent::start_env(
        &format!("http://{}", up.addr),
        "",
        &[("MINIRAG_AGENT_WORKER_THREADS", "1")],
    );
    let c = client();
    // A slow upstream answer must not hold up the others on the one thread.
    let slow = tokio::spawn(c.get(agent.url("/slow")).send());
    let started = Instant::now();
    let fast: Vec<_> = (0..20)
        .map(|i| tokio::spawn(c.get(agent.url(&format!("/n/{i}"))).send()))
        .collect();
    for f in fast {
        assert_eq!(f.await.unwrap().unwrap().status(), 200);
    }
    assert!(started.elapsed() < Duration::from_millis(1000));
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_minirag-agent"))
        .args(["run", "--worker-threads", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("worker-threads"));
}
