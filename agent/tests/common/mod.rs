//! Harness: a real upstream HTTP server in the test process (it echoes what it received,
//! streams SSE, answers slowly, upgrades) and the real `minirag-agent` binary in front.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

pub type TestBody = BoxBody<Bytes, Infallible>;

/// Requests the upstream saw: (path, headers as JSON).
pub type Seen = Arc<Mutex<Vec<(String, Value)>>>;

fn headers_json(h: &http::HeaderMap) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in h {
        m.insert(
            k.as_str().to_string(),
            Value::from(v.to_str().unwrap_or("<binary>")),
        );
    }
    Value::Object(m)
}

async fn upstream_handle(
    seen: Seen,
    mut req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_string();
    let headers = headers_json(req.headers());
    seen.lock().unwrap().push((path.clone(), headers.clone()));
    let full = |s: String| Full::new(Bytes::from(s)).boxed();
    Ok(match path.as_str() {
        // A fake OpenAI-compatible chat endpoint (rag-core's answer.mode: openai).
        p if p.ends_with("/chat/completions") => {
            let mut r = Response::new(full(
                json!({"choices": [{"message": {"content": "It is blue [1]."}}]}).to_string(),
            ));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Response::new(full("slow done".into()))
        }
        "/sse" => {
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(4);
            tokio::spawn(async move {
                for i in 0..3 {
                    let _ = tx
                        .send_data(Bytes::from(format!("data: event {i}\n\n")))
                        .await;
                    tokio::time::sleep(Duration::from_millis(700)).await;
                }
            });
            let mut r = Response::new(body.boxed());
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            r
        }
        "/upgrade" => {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let mut io = TokioIo::new(up);
                    let (mut r, mut w) = tokio::io::split(&mut io);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            let mut r = Response::new(full(String::new()));
            *r.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut().insert("upgrade", "echo".parse().unwrap());
            r.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            r
        }
        _ => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().len())
                .unwrap_or(0);
            let mut r = Response::new(full(
                json!({"path": path, "headers": headers, "body_bytes": body}).to_string(),
            ));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r
        }
    })
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Seen,
}

pub async fn start_upstream() -> Upstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let s = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req| upstream_handle(Arc::clone(&s), req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream { addr, seen }
}

pub struct Agent {
    pub child: Child,
    pub base: String,
    pub admin: String,
    pub dir: PathBuf,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(
        format!(
            "agent-test-{tag}-{}-{:?}",
            std::process::id(),
            std::time::Instant::now()
        )
        .replace([' ', '{', '}', ':', ','], ""),
    );
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Agent {
    pub fn start(upstream: &str, yaml: &str) -> Self {
        Self::start_env(upstream, yaml, &[])
    }

    pub fn start_env(upstream: &str, yaml: &str, env: &[(&str, &str)]) -> Self {
        let dir = temp_dir("agent");
        let cfg = dir.join("agent.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_minirag-agent"))
            .args([
                "run",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--upstream",
                upstream,
                "--config",
            ])
            .arg(&cfg)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agent");
        let stderr = child.stderr.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(l);
                }
            });
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let err_lines = Arc::new(Mutex::new(Vec::new()));
        let err_sink = Arc::clone(&err_lines);
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                err_sink.lock().unwrap().push(l.clone());
                if let Ok(v) = serde_json::from_str::<Value>(&l)
                    && v["event"] == "agent.started"
                {
                    let _ = tx.send((
                        v["listen"].as_str().unwrap().to_string(),
                        v["admin_listen"].as_str().unwrap().to_string(),
                    ));
                }
            }
        });
        let (listen, admin) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("agent did not start");
        Self {
            child,
            base: format!("http://{listen}"),
            admin: format!("http://{admin}"),
            dir,
            stdout: lines,
            stderr: err_lines,
        }
    }

    pub fn url(&self, p: &str) -> String {
        format!("{}{p}", self.base)
    }

    pub fn access_lines(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn sigterm(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub const TOKEN: &str = "agent-test-internal-token-0123456789";

/// The workspace's rag-core binary (built on demand when only this crate is tested).
pub fn rag_core_bin() -> PathBuf {
    let target = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let bin = target.join("rag-core");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "rag-core", "--bin", "rag-core"])
            .status()
            .unwrap();
        assert!(status.success(), "building rag-core failed");
    }
    bin
}

pub struct RagCore {
    pub child: Child,
    pub base: String,
    pub key: String,
    pub workspace_id: String,
    /// rag-core's JSON log lines (stdout), as they arrive.
    pub logs: Arc<Mutex<Vec<Value>>>,
}

impl Drop for RagCore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_rag_core() -> RagCore {
    start_rag_core_with("", &[])
}

/// rag-core with extra YAML (appended to the test config) and environment.
pub fn start_rag_core_with(extra_yaml: &str, env: &[(&str, &str)]) -> RagCore {
    let bin = rag_core_bin();
    let dir = temp_dir("ragcore");
    // A tiny chunk quota so the storage check at the edge can be reached.
    let cfg = dir.join("rag-core.yaml");
    std::fs::write(
        &cfg,
        format!("tenancy:\n  chunk_limit_free: 2\n{extra_yaml}"),
    )
    .unwrap();
    let out = Command::new(&bin)
        .args(["admin", "bootstrap", "--json", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&dir)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bootstrap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let boot: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut child = Command::new(&bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&dir)
        .env("MINIRAG_INTERNAL_TOKEN", TOKEN)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&logs);
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                if v["event"] == "server.started" {
                    let _ = tx.send(v["listen"].as_str().unwrap().to_string());
                }
                sink.lock().unwrap().push(v);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("rag-core started");
    RagCore {
        child,
        base: format!("http://{addr}"),
        key: boot["api_key"].as_str().unwrap().to_string(),
        workspace_id: boot["workspace_id"].as_str().unwrap().to_string(),
        logs,
    }
}

/// The agent's admin `/metrics` page.
pub async fn scrape(c: &reqwest::Client, agent: &Agent) -> String {
    c.get(format!("{}/metrics", agent.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// An external program on PATH (promtool, amtool, kubectl, …). Outside CI a missing one
/// skips the test with a note; in CI (`CI=true`, where `.ci/run` installs it) it fails.
pub fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let in_ci =
            matches!(std::env::var("CI").as_deref(), Ok(v) if !v.is_empty() && v != "false");
        assert!(!in_ci, "{name} is not on PATH in CI (.ci/run installs it)");
        eprintln!("skipped: {name} not on PATH");
    }
    found
}
