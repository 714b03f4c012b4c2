//! `minirag-agent rules run` end to end: a `/metrics` page served by the test (values the
//! test changes), the real binary scraping and evaluating it, and what comes out: the
//! Prometheus-shaped API, self-metrics, webhook notifications, and a REAL Alertmanager
//! (`prometheus-alertmanager`; outside CI a missing binary skips with a printed reason,
//! with `CI=true` it fails).

mod common;

use common::tool;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

/// A page the test rewrites, and the status it is served with.
#[derive(Clone)]
struct Page {
    body: Arc<Mutex<String>>,
    status: Arc<Mutex<u16>>,
    /// Bodies POSTed to the server (webhook deliveries).
    posted: Arc<Mutex<Vec<Value>>>,
    addr: SocketAddr,
}

impl Page {
    fn set(&self, body: &str) {
        *self.body.lock().unwrap() = body.to_string();
    }
    fn fail(&self, status: u16) {
        *self.status.lock().unwrap() = status;
    }
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

async fn page_handle(p: Page, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() == http::Method::POST {
        let b = req.into_body().collect().await.unwrap().to_bytes();
        p.posted
            .lock()
            .unwrap()
            .push(serde_json::from_slice(&b).unwrap_or(Value::Null));
        return Ok(Response::new(Full::new(Bytes::new())));
    }
    let mut r = Response::new(Full::new(Bytes::from(p.body.lock().unwrap().clone())));
    *r.status_mut() = http::StatusCode::from_u16(*p.status.lock().unwrap()).unwrap();
    r.headers_mut().insert(
        "content-type",
        "text/plain; version=0.0.4; charset=utf-8".parse().unwrap(),
    );
    Ok(r)
}

async fn start_page(body: &str) -> Page {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = Page {
        body: Arc::new(Mutex::new(body.to_string())),
        status: Arc::new(Mutex::new(200)),
        posted: Arc::default(),
        addr: listener.local_addr().unwrap(),
    };
    let pc = p.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let pc = pc.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| page_handle(pc.clone(), req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "rules-runtime-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const RULES: &str = r#"groups:
  - name: quick
    interval: 1s
    rules:
      - alert: MHigh
        expr: m > 3
        for: 0s
        labels:
          severity: page
        annotations:
          summary: "m is {{ $value }} on {{ $labels.a }}"
      - record: m:sum
        expr: sum(m)
"#;

struct Agent {
    _child: Reaped,
    admin: String,
    stderr: PathBuf,
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn start_agent(dir: &std::path::Path, rules: &str, extra: &[String]) -> Agent {
    let rules_file = dir.join("rules.yml");
    std::fs::write(&rules_file, rules).unwrap();
    let port = free_port();
    let stderr = dir.join("agent.stderr");
    let child = Command::new(env!("CARGO_BIN_EXE_minirag-agent"))
        .args(["rules", "run", "--rules"])
        .arg(&rules_file)
        .args(["--admin-listen", &format!("127.0.0.1:{port}")])
        .args(["--scrape-interval", "200ms", "--eval-interval", "1s"])
        .args(extra)
        .env_remove("MINIRAG_AGENT_CONFIG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let agent = Agent {
        _child: Reaped(child),
        admin: format!("http://127.0.0.1:{port}"),
        stderr,
    };
    let c = client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = c.get(format!("{}/healthz", agent.admin)).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agent did not start: {}",
            std::fs::read_to_string(&agent.stderr).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent
}

async fn get_json(c: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = c.get(url).send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// Polls `f` every 100 ms until it returns Some, or fails after `secs` with `what`.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn query(c: &reqwest::Client, admin: &str, q: &str) -> Value {
    let url =
        reqwest::Url::parse_with_params(&format!("{admin}/api/v1/query"), &[("query", q)]).unwrap();
    let (s, v) = get_json(c, url.as_str()).await;
    assert_eq!(s, 200, "{q}: {v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_rules_and_alerts_apis_and_self_metrics() {
    let page = start_page("m{a=\"1\"} 5\nm{a=\"2\"} 1\n").await;
    let dir = temp_dir("api");
    let a = start_agent(&dir, RULES, &["--scrape".into(), page.url("/metrics")]).await;
    let c = client();

    let alert = eventually(15, "MHigh firing in /api/v1/alerts", || async {
        let (_, v) = get_json(&c, &format!("{}/api/v1/alerts", a.admin)).await;
        v["data"]["alerts"]
            .as_array()
            .and_then(|l| l.iter().find(|x| x["state"] == "firing").cloned())
    })
    .await;
    assert_eq!(alert["labels"]["alertname"], "MHigh");
    assert_eq!(alert["labels"]["a"], "1");
    assert_eq!(alert["labels"]["job"], "scrape");
    assert_eq!(alert["labels"]["instance"], page.addr.to_string());
    assert_eq!(alert["annotations"]["summary"], "m is 5 on 1");
    assert_eq!(alert["value"], "5e+00");

    // The recorded series, evaluated by the engine through the query API.
    let v = eventually(10, "m:sum recorded", || async {
        let v = query(&c, &a.admin, "m:sum").await;
        (v["data"]["result"].as_array().map(Vec::len) == Some(1)).then_some(v)
    })
    .await;
    assert_eq!(v["status"], "success");
    assert_eq!(v["data"]["resultType"], "vector");
    assert_eq!(v["data"]["result"][0]["value"][1], "6");
    assert!(v["data"]["result"][0]["value"][0].is_number());

    let v = query(&c, &a.admin, "1 + 1").await;
    assert_eq!(v["data"]["resultType"], "scalar");
    assert_eq!(v["data"]["result"][1], "2");
    let v = query(&c, &a.admin, "\"hello\"").await;
    assert_eq!(v["data"]["resultType"], "string");
    assert_eq!(v["data"]["result"][1], "hello");
    let v = query(&c, &a.admin, "m{a=\"1\"}[10s]").await;
    assert_eq!(v["data"]["resultType"], "matrix");
    assert!(
        !v["data"]["result"][0]["values"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(v["data"]["result"][0]["values"][0][1], "5");
    let v = query(&c, &a.admin, "up").await;
    assert_eq!(v["data"]["result"][0]["value"][1], "1");
    assert_eq!(v["data"]["result"][0]["metric"]["job"], "scrape");

    // A range query over the last few seconds, unix-seconds times and a bare-seconds step.
    // Rounded up: the first scrape may be less than a second old, and a range ending
    // on the whole second before it would see nothing.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    let (s, v) = get_json(
        &c,
        &format!(
            "{}/api/v1/query_range?query=m&start={}&end={now}&step=1",
            a.admin,
            now - 3
        ),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["resultType"], "matrix");
    // The agent started a moment ago: the first steps may predate its data.
    let series = v["data"]["result"].as_array().unwrap();
    assert_eq!(series.len(), 2, "{v}");
    let points = series[0]["values"].as_array().unwrap();
    assert!((1..=4).contains(&points.len()), "{v}");
    assert!(points.iter().all(|p| p[1] == "5" && p[0].is_u64()), "{v}");
    let (s, v) = get_json(
        &c,
        &format!(
            "{}/api/v1/query_range?query=m&start=10&end=5&step=1",
            a.admin
        ),
    )
    .await;
    assert_eq!((s, v["errorType"].as_str()), (400, Some("bad_data")));

    // POST form and an explicit time (RFC 3339): far in the past there is nothing.
    let r = c
        .post(format!("{}/api/v1/query", a.admin))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("query=m&time=2001-01-01T00%3A00%3A00Z")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"]["result"], serde_json::json!([]));

    // Errors in Prometheus's shape.
    for bad in ["sum(", "m[5m] +", ""] {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", a.admin),
            &[("query", bad)],
        )
        .unwrap();
        let (s, v) = get_json(&c, url.as_str()).await;
        assert_eq!(s, 400, "{bad:?}: {v}");
        assert_eq!(v["status"], "error");
        assert_eq!(v["errorType"], "bad_data");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let (s, v) = get_json(
        &c,
        &format!("{}/api/v1/query?query=up&time=yesterday", a.admin),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(v["errorType"], "bad_data");

    // /api/v1/rules: groups with their rules, and the type filter.
    let (s, v) = get_json(&c, &format!("{}/api/v1/rules", a.admin)).await;
    assert_eq!(s, 200);
    let g = &v["data"]["groups"][0];
    assert_eq!(g["name"], "quick");
    assert!(g["file"].as_str().unwrap().ends_with("rules.yml"));
    assert_eq!(g["interval"], 1.0);
    assert_eq!(g["rules"].as_array().unwrap().len(), 2);
    let alerting = &g["rules"][0];
    assert_eq!(alerting["type"], "alerting");
    assert_eq!(alerting["name"], "MHigh");
    assert_eq!(alerting["query"], "m > 3");
    assert_eq!(alerting["state"], "firing");
    assert_eq!(alerting["health"], "ok");
    assert_eq!(alerting["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(g["rules"][1]["type"], "recording");
    assert!(g["lastEvaluation"].as_str().unwrap().ends_with('Z'));
    let (_, v) = get_json(&c, &format!("{}/api/v1/rules?type=record", a.admin)).await;
    let rules = v["data"]["groups"][0]["rules"].as_array().unwrap().clone();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["name"], "m:sum");
    let (s, _) = get_json(&c, &format!("{}/api/v1/rules?type=bogus", a.admin)).await;
    assert_eq!(s, 400);

    // Self-metrics, including the gauge the benchmark reads.
    let m = c
        .get(format!("{}/metrics", a.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = m
        .lines()
        .find(|l| l.starts_with("minirag_agent_rule_group_last_duration_seconds{"))
        .unwrap_or_else(|| panic!("no duration gauge in\n{m}"));
    assert!(
        line.contains("rule_group=\"") && line.contains(";quick\""),
        "{line}"
    );
    let secs: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(secs > 0.0 && secs < 1.0, "{line}");
    for name in [
        "minirag_agent_rule_group_iterations_total{",
        "minirag_agent_rule_group_iterations_missed_total{",
        "minirag_agent_rule_evaluation_failures_total{",
        "minirag_agent_rules_store_series ",
        "minirag_agent_rules_store_series_refused_total ",
        "minirag_agent_rules_scrape_duration_seconds{target=",
        "minirag_agent_alerts{",
    ] {
        assert!(m.contains(name), "{name} missing from\n{m}");
    }
    // The firing alert was logged once, in the shared log schema.
    let log = std::fs::read_to_string(&a.stderr).unwrap();
    let firing: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "alert.firing")
        .collect();
    assert_eq!(firing.len(), 1, "{log}");
    assert_eq!(firing[0]["alertname"], "MHigh");
    assert!(firing[0]["timestamp"].is_string() && firing[0]["request_id"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_scrape_writes_up_zero_and_stale_markers() {
    let page = start_page("m{a=\"1\"} 5\ngone 1\n").await;
    let dir = temp_dir("stale");
    let a = start_agent(&dir, RULES, &["--scrape".into(), page.url("/metrics")]).await;
    let c = client();
    eventually(10, "gone scraped", || async {
        let v = query(&c, &a.admin, "gone").await;
        (v["data"]["result"].as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;
    // A series that leaves a successful scrape is stale at once (not after 5m lookback).
    page.set("m{a=\"1\"} 5\n");
    eventually(10, "gone to go stale", || async {
        let v = query(&c, &a.admin, "gone").await;
        (v["data"]["result"].as_array().map(Vec::len) == Some(0)).then_some(())
    })
    .await;
    assert_eq!(
        query(&c, &a.admin, "m").await["data"]["result"][0]["value"][1],
        "5"
    );
    // The target fails: up 0 and every series it had goes stale.
    page.fail(500);
    eventually(10, "up 0", || async {
        let v = query(&c, &a.admin, "up").await;
        (v["data"]["result"][0]["value"][1] == "0").then_some(())
    })
    .await;
    eventually(10, "m to go stale", || async {
        let v = query(&c, &a.admin, "m").await;
        (v["data"]["result"].as_array().map(Vec::len) == Some(0)).then_some(())
    })
    .await;
    let v = query(&c, &a.admin, "scrape_samples_scraped").await;
    assert_eq!(v["data"]["result"][0]["value"][1], "0");
    let m = c
        .get(format!("{}/metrics", a.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.lines()
            .any(|l| l.starts_with("minirag_agent_rules_scrape_up{") && l.ends_with(" 0.0")),
        "{m}"
    );
    // Recovery.
    page.fail(200);
    eventually(10, "up 1 again", || async {
        let v = query(&c, &a.admin, "up").await;
        (v["data"]["result"][0]["value"][1] == "1").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_gets_alertmanager_webhook_json_for_firing_and_resolved() {
    let page = start_page("m{a=\"1\"} 5\n").await;
    let dir = temp_dir("webhook");
    let a = start_agent(
        &dir,
        RULES,
        &[
            "--scrape".into(),
            page.url("/metrics"),
            "--webhook".into(),
            page.url("/hook"),
        ],
    )
    .await;
    let firing = eventually(15, "a firing webhook", || async {
        page.posted
            .lock()
            .unwrap()
            .iter()
            .find(|v| v["status"] == "firing")
            .cloned()
    })
    .await;
    assert_eq!(firing["version"], "4");
    assert_eq!(firing["receiver"], "minirag-agent");
    assert!(firing["groupKey"].is_string());
    assert_eq!(firing["commonLabels"]["alertname"], "MHigh");
    assert_eq!(firing["commonLabels"]["severity"], "page");
    assert_eq!(firing["commonAnnotations"]["summary"], "m is 5 on 1");
    assert_eq!(firing["externalURL"], a.admin);
    assert!(firing["groupLabels"].is_object());
    let alert = &firing["alerts"][0];
    assert_eq!(alert["status"], "firing");
    assert_eq!(alert["labels"]["a"], "1");
    assert!(alert["startsAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(alert["endsAt"], "0001-01-01T00:00:00Z");
    assert!(
        alert["generatorURL"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/graph?g0.expr=", a.admin))
    );
    assert_eq!(alert["fingerprint"].as_str().unwrap().len(), 16);

    page.set("m{a=\"1\"} 1\n");
    let resolved = eventually(15, "a resolved webhook", || async {
        page.posted
            .lock()
            .unwrap()
            .iter()
            .find(|v| v["status"] == "resolved")
            .cloned()
    })
    .await;
    assert_eq!(resolved["alerts"][0]["status"], "resolved");
    assert_ne!(resolved["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    let log = std::fs::read_to_string(&a.stderr).unwrap();
    assert!(log.contains("\"event\":\"alert.resolved\""), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_alertmanager_sees_the_alert_fire_and_resolve() {
    let Some(bin) = tool("prometheus-alertmanager") else {
        return;
    };
    let dir = temp_dir("am");
    std::fs::write(
        dir.join("am.yml"),
        "route:\n  receiver: blackhole\n  group_wait: 1s\n  group_interval: 1s\nreceivers:\n  - name: blackhole\n",
    )
    .unwrap();
    let port = free_port();
    let _am = Reaped(
        Command::new(bin)
            .arg(format!("--config.file={}", dir.join("am.yml").display()))
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let am = format!("http://127.0.0.1:{port}");
    let c = client();
    eventually(20, "alertmanager ready", || async {
        c.get(format!("{am}/-/ready"))
            .send()
            .await
            .ok()
            .filter(|r| r.status() == 200)
            .map(|_| ())
    })
    .await;

    let page = start_page("m{a=\"1\"} 5\n").await;
    let _a = start_agent(
        &dir,
        RULES,
        &[
            "--scrape".into(),
            page.url("/metrics"),
            "--alertmanager".into(),
            am.clone(),
        ],
    )
    .await;
    let seen = eventually(20, "the alert in Alertmanager", || async {
        let (_, v) = get_json(&c, &format!("{am}/api/v2/alerts")).await;
        v.as_array().and_then(|l| {
            l.iter()
                .find(|x| x["labels"]["alertname"] == "MHigh")
                .cloned()
        })
    })
    .await;
    assert_eq!(seen["status"]["state"], "active");
    assert_eq!(seen["labels"]["severity"], "page");
    assert_eq!(seen["labels"]["a"], "1");
    assert_eq!(seen["annotations"]["summary"], "m is 5 on 1");
    assert!(
        seen["generatorURL"]
            .as_str()
            .unwrap()
            .contains("/graph?g0.expr=")
    );

    // The condition stops: the agent sends the alert with endsAt = resolution time and
    // Alertmanager drops it from its active alerts.
    page.set("m{a=\"1\"} 1\n");
    eventually(20, "the alert resolved in Alertmanager", || async {
        let (_, v) = get_json(&c, &format!("{am}/api/v2/alerts")).await;
        let list = v.as_array()?;
        let now = utc_now();
        // Gone, or kept with endsAt in the past (state no longer active): resolved.
        let still_active = list.iter().any(|x| {
            x["labels"]["alertname"] == "MHigh"
                && x["status"]["state"] == "active"
                && x["endsAt"]
                    .as_str()
                    .and_then(|e| e.get(..19))
                    .is_some_and(|e| e > now.as_str())
        });
        (!still_active).then_some(())
    })
    .await;
}

/// UTC now as `YYYY-MM-DDTHH:MM:SS`, comparable as a string with Alertmanager's times.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn run_fail(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_minirag-agent"))
        .args(args)
        .env_remove("MINIRAG_AGENT_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn configuration_errors_fail_before_serving() {
    let dir = temp_dir("cfg");
    let rules = dir.join("rules.yml");
    std::fs::write(&rules, RULES).unwrap();
    let r = rules.to_str().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());

    // Without --rules the default alerts/*.yaml is relative to the working directory.
    let out = Command::new(env!("CARGO_BIN_EXE_minirag-agent"))
        .args(["rules", "run", "--admin-listen", &admin])
        .current_dir(&dir)
        .env_remove("MINIRAG_AGENT_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("alerts/*.yaml") && e.contains("matches no file"),
        "{e}"
    );
    let e = run_fail(&[
        "rules",
        "run",
        "--rules",
        "/nonexistent/*.yml",
        "--admin-listen",
        &admin,
    ]);
    assert!(e.contains("matches no file"), "{e}");
    let e = run_fail(&[
        "rules",
        "run",
        "--rules",
        r,
        "--alertmanager",
        "ftp://x",
        "--admin-listen",
        &admin,
    ]);
    assert!(e.contains("alertmanagers") && e.contains("ftp://x"), "{e}");
    let e = run_fail(&[
        "rules",
        "run",
        "--rules",
        r,
        "--scrape",
        "not a url",
        "--admin-listen",
        &admin,
    ]);
    assert!(e.contains("targets[0].url"), "{e}");
    let e = run_fail(&["rules", "run", "--rules", r, "--scrape-interval", "1x"]);
    assert!(e.contains("1x"), "{e}");

    let bad_rules = dir.join("bad.yml");
    std::fs::write(
        &bad_rules,
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: sum(\n",
    )
    .unwrap();
    let e = run_fail(&[
        "rules",
        "run",
        "--rules",
        bad_rules.to_str().unwrap(),
        "--admin-listen",
        &admin,
    ]);
    assert!(e.contains("bad.yml"), "{e}");

    // A typo in the rules section of agent.yaml names the file, line and key.
    let cfg = dir.join("agent.yaml");
    std::fs::write(
        &cfg,
        format!("rules:\n  rule_files: [{r}]\n  evaluation_intervall: 1s\n"),
    )
    .unwrap();
    let e = run_fail(&["rules", "run", "--config", cfg.to_str().unwrap()]);
    assert!(
        e.contains("evaluation_intervall") && e.contains("line 3"),
        "{e}"
    );
    std::fs::write(&cfg, "rules:\n  store:\n    max_series: 0\n").unwrap();
    let e = run_fail(&["config", "check", cfg.to_str().unwrap()]);
    assert!(e.contains("max_series"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_rules_enabled_scrapes_itself_and_rag_core_and_serves_the_api() {
    // The test page plays rag-core: it answers /metrics (and every other path).
    let rag = start_page("rag_up 1\n").await;
    let dir = temp_dir("run");
    std::fs::write(dir.join("rules.yml"), RULES).unwrap();
    let (listen, admin) = (free_port(), free_port());
    std::fs::write(
        dir.join("agent.yaml"),
        format!(
            "listen: 127.0.0.1:{listen}\nadmin_listen: 127.0.0.1:{admin}\nupstream: http://{}\naccess_log: {{stdout: false}}\nrules:\n  enabled: true\n  rule_files: [{}]\n  scrape: {{interval: 200ms}}\n",
            rag.addr,
            dir.join("rules.yml").display()
        ),
    )
    .unwrap();
    let _child = Reaped(
        Command::new(env!("CARGO_BIN_EXE_minirag-agent"))
            .args(["run", "--config"])
            .arg(dir.join("agent.yaml"))
            .env_remove("MINIRAG_AGENT_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{admin}");
    let c = client();
    let jobs = eventually(20, "both targets up", || async {
        let r = c
            .get(format!("{}/api/v1/query?query=up", base))
            .send()
            .await
            .ok()?;
        let v: Value = r.json().await.ok()?;
        let mut jobs: Vec<(String, String)> = v["data"]["result"]
            .as_array()?
            .iter()
            .map(|s| {
                (
                    s["metric"]["job"].as_str().unwrap_or("").to_string(),
                    s["value"][1].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        jobs.sort();
        (jobs.len() == 2).then_some(jobs)
    })
    .await;
    assert_eq!(
        jobs,
        [
            ("minirag-agent".to_string(), "1".to_string()),
            ("rag-core".to_string(), "1".to_string())
        ]
    );
    // The agent's own registry was scraped in-process, self-metrics included.
    let v = query(&c, &base, "minirag_agent_rule_group_rules").await;
    assert_eq!(v["data"]["result"][0]["value"][1], "2");
    assert_eq!(
        v["data"]["result"][0]["metric"]["instance"],
        format!("127.0.0.1:{admin}")
    );
    let v = query(&c, &base, "rag_up").await;
    assert_eq!(v["data"]["result"][0]["metric"]["job"], "rag-core");
    let (s, v) = get_json(&c, &format!("{}/api/v1/rules", base)).await;
    assert_eq!(s, 200);
    assert_eq!(v["data"]["groups"][0]["name"], "quick");
}
