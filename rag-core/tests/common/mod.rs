//! Test harness: runs the real `rag-core` binary on an ephemeral 127.0.0.1 port with a
//! private data directory, and talks to it over HTTP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const INTERNAL_TOKEN: &str = "test-internal-token-0123456789";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_rag-core")
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "rag-core-test-{tag}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

pub struct Bootstrap {
    pub organization_id: String,
    pub workspace_id: String,
    pub api_key: String,
}

/// `rag-core admin bootstrap --json` on the data dir.
pub fn bootstrap(data_dir: &Path) -> Bootstrap {
    let out = Command::new(bin())
        .args(["admin", "bootstrap", "--json", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("run bootstrap");
    assert!(
        out.status.success(),
        "bootstrap failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("bootstrap JSON");
    Bootstrap {
        organization_id: v["organization_id"].as_str().unwrap().to_string(),
        workspace_id: v["workspace_id"].as_str().unwrap().to_string(),
        api_key: v["api_key"].as_str().unwrap().to_string(),
    }
}

pub struct Server {
    pub child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    pub stdout: Arc<Mutex<Vec<String>>>,
}

pub struct Options {
    pub config_yaml: Option<String>,
    pub env: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            config_yaml: None,
            env: vec![("MINIRAG_INTERNAL_TOKEN".into(), INTERNAL_TOKEN.into())],
        }
    }
}

impl Server {
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, Options::default())
    }

    pub fn start_with(data_dir: &Path, opts: Options) -> Self {
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir);
        if let Some(yaml) = &opts.config_yaml {
            let path = data_dir.join("test-config.yaml");
            std::fs::create_dir_all(data_dir).unwrap();
            std::fs::write(&path, yaml).unwrap();
            cmd.arg("--config").arg(path);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        cmd.env_remove("RAG_CORE_LISTEN")
            .env_remove("RAG_CORE_DATA_DIR");
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rag-core");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<Value>(&line)
                        && v["event"] == "server.started"
                    {
                        let _ = tx.send(v["listen"].as_str().unwrap_or_default().to_string());
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || for _ in BufReader::new(stderr).lines() {});
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "rag-core did not start; stdout: {:?}",
                    lines.lock().unwrap()
                );
            }
        };
        Self {
            child,
            base: format!("http://{addr}"),
            data_dir: data_dir.to_path_buf(),
            stdout: lines,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn log_lines(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for exit; returns whether it exited successfully.
    pub fn terminate(mut self) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Sends and returns (status, JSON body). Every response must be JSON with a request id.
pub async fn json(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let rid = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    let text = resp.text().await.unwrap();
    let v: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON body ({status}): {text}"));
    assert!(rid.is_some(), "missing X-Request-ID");
    if status >= 400 {
        assert!(
            v["error"].is_string() && v["message"].is_string(),
            "error shape: {v}"
        );
        assert_eq!(
            v["request_id"].as_str(),
            rid.as_deref(),
            "error body must carry the request id"
        );
    }
    (status, v)
}

pub async fn ingest_text(c: &reqwest::Client, s: &Server, key: &str, docs: Value) -> (u16, Value) {
    json(
        c.post(s.url("/api/v1/ingest/text"))
            .bearer_auth(key)
            .json(&serde_json::json!({"documents": docs})),
    )
    .await
}

pub async fn ask(c: &reqwest::Client, s: &Server, key: &str, body: Value) -> (u16, Value) {
    json(c.post(s.url("/api/v1/ask")).bearer_auth(key).json(&body)).await
}

pub async fn upload(
    c: &reqwest::Client,
    s: &Server,
    key: &str,
    files: Vec<(&str, Vec<u8>)>,
) -> (u16, Value) {
    let mut form = reqwest::multipart::Form::new();
    for (name, data) in files {
        form = form.part(
            "file",
            reqwest::multipart::Part::bytes(data).file_name(name.to_string()),
        );
    }
    json(
        c.post(s.url("/api/v1/ingest/files"))
            .bearer_auth(key)
            .multipart(form),
    )
    .await
}

/// A real, minimal PDF 1.4 (one page per entry, Helvetica text), with a correct xref.
pub fn make_pdf(pages: &[&str]) -> Vec<u8> {
    let n = pages.len();
    // Objects: 1 catalog, 2 pages, 3 font, then per page: page obj, content obj.
    let mut objects: Vec<String> = Vec::new();
    objects.push("<< /Type /Catalog /Pages 2 0 R >>".into());
    let kids: Vec<String> = (0..n).map(|i| format!("{} 0 R", 4 + i * 2)).collect();
    objects.push(format!(
        "<< /Type /Pages /Kids [{}] /Count {n} >>",
        kids.join(" ")
    ));
    objects.push(
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".into(),
    );
    for (i, text) in pages.iter().enumerate() {
        let content_id = 5 + i * 2;
        objects.push(format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> /Contents {content_id} 0 R >>"
        ));
        let escaped = text
            .replace('\\', "\\\\")
            .replace('(', "\\(")
            .replace(')', "\\)");
        let stream = format!("BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET");
        objects.push(format!(
            "<< /Length {} >>\nstream\n{stream}\nendstream",
            stream.len()
        ));
    }
    pdf_from_objects(&objects)
}

/// A PDF file of numbered objects (object 1 is the catalog) with a correct xref table.
pub fn pdf_from_objects(objects: &[String]) -> Vec<u8> {
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, obj) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{obj}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for o in offsets {
        out.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

/// Every line must match the shared log schema (docs/log-record.schema.json, DESIGN §4.1);
/// an empty set fails, so a test cannot pass by looking at nothing.
pub fn assert_log_schema<'a>(lines: impl IntoIterator<Item = &'a Value>) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/log-record.schema.json"
    );
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler
        .add_resource("urn:minirag:log-record", schema)
        .unwrap();
    let idx = compiler
        .compile("urn:minirag:log-record", &mut schemas)
        .unwrap();
    let mut seen = 0;
    for l in lines {
        seen += 1;
        if let Err(e) = schemas.validate(l, idx) {
            panic!("log line does not match the schema: {e}\n{l}");
        }
    }
    assert!(seen > 0, "no log lines to check");
}

/// The server's `/metrics` text.
pub async fn scrape(c: &reqwest::Client, s: &Server) -> String {
    c.get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one series, named exactly as exposed (`name{labels}`); an exemplar after
/// the value is ignored.
pub fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
