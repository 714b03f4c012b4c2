//! The log shipper end to end: the real `minirag-agent ship` binary tails real files
//! and ships to an HTTP sink in this process that checks and counts every line.
//! The fault test kills the shipper with SIGKILL while files rotate (rename and
//! copytruncate) and the sink fails at random, then checks every line arrived.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

/// How the sink answers the next request.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    Ok,
    Status(u16),
    /// Random failures: 429, 503, 500, slow (past the client's timeout), reset.
    Flaky,
}

#[derive(Default)]
struct SinkState {
    records: Vec<Value>,
    requests: u64,
    failures: u64,
    slow: u64,
    max_batch: usize,
}

#[derive(Clone)]
struct Sink {
    addr: SocketAddr,
    state: Arc<Mutex<SinkState>>,
    behaviour: Arc<Mutex<Behaviour>>,
}

impl Sink {
    fn url(&self) -> String {
        format!("http://{}/ingest", self.addr)
    }
    fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }
    fn records(&self) -> Vec<Value> {
        self.state.lock().unwrap().records.clone()
    }
    fn count(&self) -> usize {
        self.state.lock().unwrap().records.len()
    }
}

async fn handle(
    sink: Sink,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let gzip = req
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v == "gzip");
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let body = if gzip {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut out)?;
        Bytes::from(out)
    } else {
        body
    };
    let behaviour = *sink.behaviour.lock().unwrap();
    let answer = match behaviour {
        Behaviour::Ok => 200,
        Behaviour::Status(s) => s,
        Behaviour::Flaky => match rand::random_range(0..100) {
            0..60 => 200,
            60..70 => 429,
            70..80 => 503,
            80..88 => 500,
            88..94 => 1, // slow
            _ => 0,      // reset
        },
    };
    {
        let mut st = sink.state.lock().unwrap();
        st.requests += 1;
        if answer != 200 {
            st.failures += 1;
        }
    }
    let record = |sink: &Sink| {
        let mut st = sink.state.lock().unwrap();
        let mut n = 0;
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_slice(line).unwrap_or_else(|e| {
                panic!(
                    "sink got a line that is not JSON ({e}): {}",
                    String::from_utf8_lossy(line)
                )
            });
            st.records.push(v);
            n += 1;
        }
        st.max_batch = st.max_batch.max(n);
    };
    match answer {
        200 => {
            record(&sink);
            Ok(Response::new(Full::new(Bytes::new())))
        }
        1 => {
            // The peer took it but answers after the client gave up: a duplicate source.
            sink.state.lock().unwrap().slow += 1;
            record(&sink);
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Ok(Response::new(Full::new(Bytes::new())))
        }
        0 => Err(std::io::Error::other("reset")),
        s => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"{\"error\":\"try later\"}")));
            *r.status_mut() = StatusCode::from_u16(s).unwrap();
            if s == 429 {
                r.headers_mut().insert("retry-after", "0".parse().unwrap());
            }
            Ok(r)
        }
    }
}

async fn start_sink(b: Behaviour) -> Sink {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink = Sink {
        addr: listener.local_addr().unwrap(),
        state: Arc::default(),
        behaviour: Arc::new(Mutex::new(b)),
    };
    let s = sink.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(s.clone(), req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    sink
}

struct Shipper {
    child: Child,
    config: PathBuf,
}

impl Shipper {
    fn start(config: &Path) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_minirag-agent"))
            .args(["ship", "--config"])
            .arg(config)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::null())
            // Kept beside the config: the shipper's own story when a test fails.
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(config.with_extension("stderr.log"))
                    .expect("stderr log"),
            )
            .spawn()
            .expect("start minirag-agent ship");
        Self {
            child,
            config: config.to_path_buf(),
        }
    }
    fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
    fn restart(&mut self) {
        self.kill9();
        *self = Self::start(&self.config.clone());
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn write_config(dir: &Path, sink: &Sink, extra: &str) -> PathBuf {
    let cfg = dir.join("ship.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"admin_listen: 127.0.0.1:0
logship:
  enabled: true
  data_dir: {state}
  paths: ["{logs}/*.log*"]
  discover_interval_ms: 100
  poll_interval_ms: 20
  checkpoint_interval_ms: 50
  read_chunk_bytes: 16384
{extra}
  sinks:
    - type: http
      url: {url}
      batch: {{max_events: 500, max_bytes: 32768, timeout_ms: 50}}
      buffer: {{max_bytes: 65536}}
      retry: {{initial_backoff_ms: 10, max_backoff_ms: 200, timeout_ms: 1000}}
"#,
            state = dir.join("state").display(),
            logs = dir.join("logs").display(),
            url = sink.url(),
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    cfg
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn payload(n: u64) -> String {
    // Deterministic per line, so a corrupted or mixed-up line is caught.
    format!(
        "{:016x}",
        n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xDEAD_BEEF
    )
}

fn line(n: u64) -> String {
    format!(
        "{{\"timestamp\":\"2026-11-28T10:00:00.000Z\",\"level\":\"INFO\",\"logger\":\"fault\",\"message\":\"line {n}\",\"event\":\"test.line\",\"request_id\":null,\"trace_id\":null,\"span_id\":null,\"user_id\":null,\"workspace_id\":null,\"organization_id\":null,\"n\":{n},\"payload\":\"{}\"}}\n",
        payload(n)
    )
}

fn append(path: &Path, text: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text).unwrap();
}

/// Line numbers seen, checking each payload.
fn numbers(records: &[Value]) -> HashMap<u64, usize> {
    let mut seen = HashMap::new();
    for r in records {
        let Some(n) = r["n"].as_u64() else { continue };
        assert_eq!(r["payload"], payload(n), "payload of line {n} damaged: {r}");
        assert_eq!(r["message"], format!("line {n}"));
        *seen.entry(n).or_insert(0) += 1;
    }
    seen
}

/// A writer emitting numbered lines into `app.log`, rotating at `max` bytes with 5
/// backups, alternating rename and copytruncate rotations. Rotation deletes the oldest
/// backup whether or not it was shipped, so the rate and size leave the shipper a window
/// of a few seconds (600 lines/s, 128 KiB files: ~4 s) to survive a kill, a restart and
/// a slow sink; a shipper dead for longer than that loses lines on any machine.
fn writer(
    dir: PathBuf,
    rate_per_s: u64,
    max: u64,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    deleted: Arc<Mutex<Vec<(u64, u64)>>>,
) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        let log = dir.join("app.log");
        let backup = |n: u32| dir.join(format!("app.log.{n}"));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut size = file.metadata().unwrap().len();
        let (mut renames, mut copies) = (0u64, 0u64);
        let started = Instant::now();
        let mut n = 0u64;
        // First line number in app.log and in each backup, to know what a deletion loses.
        let mut firsts: Vec<u64> = vec![0; 6];
        while !stop.load(Ordering::Relaxed) {
            // Pace by wall clock so the rate holds whatever the scheduler does.
            let due = started.elapsed().as_millis() as u64 * rate_per_s / 1000;
            while n < due {
                let l = line(n);
                if size + l.len() as u64 > max {
                    if std::fs::remove_file(backup(5)).is_ok() {
                        deleted.lock().unwrap().push((firsts[5], firsts[4]));
                    }
                    firsts.rotate_right(1);
                    firsts[0] = n;
                    for i in (1..5).rev() {
                        let _ = std::fs::rename(backup(i), backup(i + 1));
                    }
                    if (renames + copies) % 2 == 0 {
                        std::fs::rename(&log, backup(1)).unwrap();
                        file = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&log)
                            .unwrap();
                        renames += 1;
                    } else {
                        std::fs::copy(&log, backup(1)).unwrap();
                        file.set_len(0).unwrap();
                        copies += 1;
                    }
                    size = 0;
                }
                file.write_all(l.as_bytes()).unwrap();
                size += l.len() as u64;
                n += 1;
                written.store(n, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (renames, copies)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_rotation_and_a_failing_sink_lose_nothing() {
    let dir = common::temp_dir("logship-fault");
    let sink = start_sink(Behaviour::Flaky).await;
    let cfg = write_config(&dir, &sink, "");
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let deleted = Arc::new(Mutex::new(Vec::new()));
    let w = writer(
        dir.join("logs"),
        600,
        128 * 1024,
        Arc::clone(&stop),
        Arc::clone(&written),
        Arc::clone(&deleted),
    );
    let mut shipper = Shipper::start(&cfg);
    let mut restarts = 0;
    let kill_phase = Instant::now();
    while restarts < 12 {
        let pause = rand::random_range(300..1300);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        shipper.restart();
        restarts += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let (renames, copies) = w.join().unwrap();
    let total = written.load(Ordering::Relaxed);
    sink.set(Behaviour::Ok);
    let waited = Instant::now();
    while (numbers(&sink.records()).len() as u64) < total
        && waited.elapsed() < Duration::from_secs(90)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = numbers(&sink.records());
    let missing: Vec<u64> = (0..total).filter(|n| !seen.contains_key(n)).collect();
    if !missing.is_empty() {
        // What arrived, in arrival order, for a post-mortem.
        let mut dump = String::new();
        for r in sink.records() {
            dump.push_str(&format!("{} {}\n", r["n"], r["log.file.path"]));
        }
        std::fs::write(dir.join("received.txt"), dump).unwrap();
    }
    let deleted = deleted.lock().unwrap().clone();
    let in_deleted = missing
        .iter()
        .filter(|n| deleted.iter().any(|(a, b)| a <= *n && *n < b))
        .count();
    assert!(
        missing.is_empty(),
        "lost {} of {total} lines ({in_deleted} of them in files rotation deleted: {deleted:?}), first {:?}, last {:?} ({restarts} restarts, {renames} renames, {copies} copytruncates; state in {})",
        missing.len(),
        &missing[..missing.len().min(10)],
        missing.last(),
        dir.display()
    );
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    let st = sink.state.lock().unwrap();
    // In flight at a kill: the sink's buffer (64 KiB) + a batch being sent (32 KiB) +
    // what was acknowledged within one checkpoint interval (≤ another batch), in lines
    // of at least 300 bytes as shipped; each slow answer may repeat one batch.
    let per_kill = (64 * 1024 + 2 * 32 * 1024 + 16 * 1024) / 300;
    let bound = restarts * per_kill + st.slow as usize * st.max_batch;
    println!(
        "fault test: {total} lines over {:.1}s, {restarts} SIGKILL restarts, {renames} rename + {copies} copytruncate rotations, {} requests ({} failed, {} slow), {} records received, {duplicates} duplicates (bound {bound})",
        kill_phase.elapsed().as_secs_f64(),
        st.requests,
        st.failures,
        st.slow,
        st.records.len()
    );
    assert!(
        renames >= 3 && copies >= 3,
        "rotations: {renames} rename, {copies} copytruncate"
    );
    assert!(st.failures > 10, "the sink should have failed often");
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates > bound {bound}"
    );
}

async fn ship_and_collect(
    tag: &str,
    extra: &str,
    prepare: impl FnOnce(&Path),
) -> (Sink, Shipper, PathBuf) {
    let dir = common::temp_dir(tag);
    let sink = start_sink(Behaviour::Ok).await;
    let cfg = write_config(&dir, &sink, extra);
    prepare(&dir.join("logs"));
    let shipper = Shipper::start(&cfg);
    (sink, shipper, dir)
}

#[tokio::test]
async fn huge_lines_invalid_utf8_and_partial_lines() {
    let (sink, _shipper, dir) = ship_and_collect(
        "logship-lines",
        "  max_line_bytes: 4096\n  partial_line_timeout_ms: 300",
        |logs| {
            let mut text = line(0).into_bytes();
            text.extend(std::iter::repeat_n(b'x', 100_000));
            text.push(b'\n');
            text.extend_from_slice(b"plain \xff\xfe text\n");
            text.extend_from_slice(line(1).as_bytes());
            text.extend_from_slice(b"{\"no\":\"newline yet\"}");
            std::fs::write(logs.join("a.log"), text).unwrap();
        },
    )
    .await;
    wait_for("5 records", Duration::from_secs(10), || sink.count() >= 5).await;
    let r = sink.records();
    assert_eq!(r.len(), 5, "{r:?}");
    assert_eq!(r[0]["n"], 0);
    assert_eq!(r[1]["log.truncated"], true);
    assert_eq!(r[1]["message"].as_str().unwrap().len(), 4096);
    assert_eq!(r[2]["log.invalid_utf8"], true);
    assert!(r[2]["message"].as_str().unwrap().starts_with("plain "));
    assert_eq!(r[3]["n"], 1);
    assert_eq!(r[4]["no"], "newline yet");
    assert_eq!(r[4]["log.partial"], true);
    for rec in &r {
        assert!(rec["host.name"].is_string());
        assert_eq!(
            rec["log.file.path"],
            dir.join("logs/a.log").display().to_string()
        );
    }
    // The rest of a partial line arrives as its own record once its newline comes.
    append(&dir.join("logs/a.log"), b"\n{\"after\":1}\n");
    wait_for("the next line", Duration::from_secs(10), || {
        sink.count() >= 6
    })
    .await;
    assert_eq!(sink.records()[5]["after"], 1);
}

#[tokio::test]
async fn truncation_inode_reuse_and_restart_resume() {
    let (sink, mut shipper, dir) = ship_and_collect("logship-truncate", "", |logs| {
        let text: String = (0..50).map(line).collect();
        std::fs::write(logs.join("a.log"), text).unwrap();
    })
    .await;
    let log = dir.join("logs/a.log");
    wait_for("50 lines", Duration::from_secs(10), || sink.count() >= 50).await;

    // Truncated in place and rewritten shorter: detected by size.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&log, (100..103).map(line).collect::<String>().as_bytes());
    wait_for("lines after truncation", Duration::from_secs(10), || {
        numbers(&sink.records()).contains_key(&102)
    })
    .await;

    // Rewritten longer than before while the shipper is down, same inode: the head
    // differs, so the checkpoint offset must not be applied to the new content.
    shipper.kill9();
    let ino_before = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&log).unwrap());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&log, (200..300).map(line).collect::<String>().as_bytes());
    // And a deleted file replaced by a new one (the inode may well be reused).
    let other = dir.join("logs/b.log");
    append(&other, (400..410).map(line).collect::<String>().as_bytes());
    shipper = Shipper::start(&shipper.config.clone());
    wait_for("b.log shipped", Duration::from_secs(10), || {
        numbers(&sink.records()).contains_key(&409)
    })
    .await;
    shipper.kill9();
    let b_ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&other).unwrap());
    std::fs::remove_file(&other).unwrap();
    append(&other, (500..520).map(line).collect::<String>().as_bytes());
    let reused = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&other).unwrap()) == b_ino;
    shipper = Shipper::start(&shipper.config.clone());
    wait_for("every line", Duration::from_secs(15), || {
        let s = numbers(&sink.records());
        (200..300).chain(500..520).all(|n| s.contains_key(&n))
    })
    .await;
    let s = numbers(&sink.records());
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&log).unwrap()),
        ino_before
    );
    println!("inode of the deleted b.log reused by the new one: {reused}");
    for n in (0..50)
        .chain(100..103)
        .chain(200..300)
        .chain(400..410)
        .chain(500..520)
    {
        assert!(s.contains_key(&n), "line {n} missing");
    }
    drop(shipper);
}

#[tokio::test]
async fn a_deleted_unread_file_is_still_shipped() {
    let dir = common::temp_dir("logship-deleted");
    let sink = start_sink(Behaviour::Status(503)).await;
    let cfg = write_config(&dir, &sink, "");
    let log = dir.join("logs/a.log");
    // Big enough that most of it is still unread while the sink refuses.
    append(&log, (0..3000).map(line).collect::<String>().as_bytes());
    let _shipper = Shipper::start(&cfg);
    wait_for("first attempts", Duration::from_secs(10), || {
        sink.state.lock().unwrap().requests >= 2
    })
    .await;
    std::fs::remove_file(&log).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    sink.set(Behaviour::Ok);
    wait_for(
        "every line of the deleted file",
        Duration::from_secs(20),
        || numbers(&sink.records()).len() >= 3000,
    )
    .await;
}

#[test]
fn an_unwritable_checkpoint_directory_is_a_clear_error() {
    let dir = common::temp_dir("logship-ckpt");
    std::fs::write(dir.join("not-a-dir"), b"x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_minirag-agent"))
        .args(["ship", "--file"])
        .arg(dir.join("*.log"))
        .args(["--to", "-", "--state-dir"])
        .arg(dir.join("not-a-dir/state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("checkpoint directory") && err.contains("not-a-dir/state"),
        "{err}"
    );
}

#[test]
fn logs_sample_finds_a_request_across_live_rotated_and_gzipped_files() {
    let dir = common::temp_dir("logship-sample");
    let rec = |ts: &str, id: &str, msg: &str| {
        format!(
            "{{\"timestamp\":\"{ts}\",\"level\":\"INFO\",\"message\":\"{msg}\",\"request_id\":\"{id}\"}}\n"
        )
    };
    std::fs::write(
        dir.join("rag.log"),
        rec("2026-11-28T10:00:03.000Z", "req-1", "third")
            + &rec("2026-11-28T10:00:04.000Z", "req-2", "other"),
    )
    .unwrap();
    std::fs::write(
        dir.join("rag.log.1"),
        rec("2026-11-28T10:00:01.000Z", "req-1", "first") + "not json req-1\n",
    )
    .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(rec("2026-11-28T10:00:02.000Z", "req-1", "second").as_bytes())
        .unwrap();
    std::fs::write(dir.join("access.log.2.gz"), gz.finish().unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_minirag-agent"))
        .args(["logs", "sample", "req-1", "--path"])
        .arg(dir.join("*.log*"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let msgs: Vec<&str> = lines
        .iter()
        .map(|v| v["message"].as_str().unwrap())
        .collect();
    assert_eq!(msgs, ["first", "second", "third"]);
    let bad = Command::new(env!("CARGO_BIN_EXE_minirag-agent"))
        .args(["logs", "sample", "bad id!", "--path"])
        .arg(dir.join("*.log*"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a request id"));
}

#[tokio::test]
async fn the_sidecar_ships_its_access_log_and_reports_metrics() {
    let upstream = common::start_upstream().await;
    let sink = start_sink(Behaviour::Ok).await;
    let dir = common::temp_dir("logship-run");
    let yaml = format!(
        r#"access_log:
  stdout: false
  file: {dir}/logs/access.log
  flush_interval_ms: 50
logship:
  enabled: true
  data_dir: {dir}/state
  paths: ["{dir}/logs/rag.log*"]
  discover_interval_ms: 100
  checkpoint_interval_ms: 50
  sinks:
    - type: http
      url: {url}
      compression: gzip
      batch: {{timeout_ms: 50}}
"#,
        dir = dir.display(),
        url = sink.url()
    );
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    append(&dir.join("logs/rag.log"), line(7).as_bytes());
    let agent = common::Agent::start(&format!("http://{}", upstream.addr), &yaml);
    let c = common::client();
    for _ in 0..3 {
        let r = c
            .get(agent.url("/api/v1/hello"))
            .header("x-request-id", "ship-me-1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    wait_for(
        "3 access lines and the rag.log line",
        Duration::from_secs(15),
        || {
            let r = sink.records();
            r.iter().filter(|v| v["request_id"] == "ship-me-1").count() >= 3
                && r.iter().any(|v| v["n"] == 7)
        },
    )
    .await;
    let access = sink
        .records()
        .into_iter()
        .find(|v| v["request_id"] == "ship-me-1")
        .unwrap();
    assert_eq!(access["event"], "http.access");
    assert!(
        access["log.file.path"]
            .as_str()
            .unwrap()
            .ends_with("access.log")
    );
    let metrics = common::scrape(&c, &agent).await;
    for m in [
        "minirag_agent_logship_lines_read_total",
        "minirag_agent_logship_lines_acked_total{sink=\"http\"}",
        "minirag_agent_logship_dropped_lines_total{sink=\"http\",reason=\"rejected\"} 0",
        "minirag_agent_logship_buffer_limit_bytes{sink=\"http\"}",
        "minirag_agent_logship_lag_bytes{file=",
        "minirag_agent_logship_oldest_unacked_age_seconds",
    ] {
        assert!(metrics.contains(m), "{m} missing from\n{metrics}");
    }
    let acked: f64 = metrics
        .lines()
        .find(|l| l.starts_with("minirag_agent_logship_lines_acked_total{sink=\"http\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(acked >= 4.0, "acked {acked}");
}

#[tokio::test]
async fn a_400_is_not_retried_and_is_counted() {
    let (sink, _shipper, dir) = ship_and_collect("logship-400", "", |logs| {
        append(&logs.join("a.log"), line(1).as_bytes());
    })
    .await;
    sink.set(Behaviour::Status(400));
    let _ = dir;
    wait_for("one attempt", Duration::from_secs(10), || {
        sink.state.lock().unwrap().requests >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        sink.state.lock().unwrap().requests,
        1,
        "a 400 must not be retried"
    );
    sink.set(Behaviour::Ok);
    append(&dir.join("logs/a.log"), line(2).as_bytes());
    wait_for("the next line", Duration::from_secs(10), || {
        numbers(&sink.records()).contains_key(&2)
    })
    .await;
    assert!(!numbers(&sink.records()).contains_key(&1));
}

#[tokio::test]
async fn gzip_rotated_files_are_read_and_not_shipped_twice() {
    let (sink, _shipper, dir) = ship_and_collect("logship-gzip", "  read_gzip: true", |logs| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all((0..20).map(line).collect::<String>().as_bytes())
            .unwrap();
        std::fs::write(logs.join("old.log.3.gz"), gz.finish().unwrap()).unwrap();
        std::fs::write(
            logs.join("app.log.1"),
            (100..120).map(line).collect::<String>(),
        )
        .unwrap();
    })
    .await;
    wait_for("40 lines", Duration::from_secs(10), || {
        numbers(&sink.records()).len() >= 40
    })
    .await;
    // app.log.1 compressed into app.log.2.gz (a new inode with the same content): it
    // must be recognised by its decompressed head and not shipped again.
    let logs = dir.join("logs");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&std::fs::read(logs.join("app.log.1")).unwrap())
        .unwrap();
    std::fs::write(logs.join("app.log.2.gz"), gz.finish().unwrap()).unwrap();
    std::fs::remove_file(logs.join("app.log.1")).unwrap();
    append(&logs.join("app.log"), line(200).as_bytes());
    wait_for("the new line", Duration::from_secs(10), || {
        numbers(&sink.records()).contains_key(&200)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = numbers(&sink.records());
    for n in (0..20).chain(100..120) {
        assert_eq!(seen.get(&n), Some(&1), "line {n}");
    }
}

/// True when the checkpoint file says every byte of every log file in `logs` was
/// acknowledged (and no deleted file is still pending).
fn all_acknowledged(state: &Path, logs: &Path) -> bool {
    let Ok(text) = std::fs::read(state.join("checkpoints.json")) else {
        return false;
    };
    let Ok(v) = serde_json::from_slice::<Value>(&text) else {
        return false;
    };
    let entries = v["files"].as_array().cloned().unwrap_or_default();
    let files: Vec<PathBuf> = std::fs::read_dir(logs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.len() == files.len()
        && files.iter().all(|f| {
            let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
            entries
                .iter()
                .any(|e| e["path"] == f.display().to_string() && e["offset"] == size)
        })
}

#[tokio::test]
async fn a_disk_buffer_keeps_lines_whose_files_rotated_away_during_an_outage() {
    let dir = common::temp_dir("logship-disk");
    let sink = start_sink(Behaviour::Status(503)).await;
    let cfg = dir.join("ship.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"admin_listen: 127.0.0.1:0
logship:
  enabled: true
  data_dir: {state}
  paths: ["{logs}/app.log*"]
  discover_interval_ms: 50
  poll_interval_ms: 20
  checkpoint_interval_ms: 20
  read_chunk_bytes: 16384
  sinks:
    - type: http
      url: {url}
      batch: {{timeout_ms: 50}}
      buffer: {{max_bytes: 65536}}
      retry: {{initial_backoff_ms: 50, max_backoff_ms: 200}}
      disk_buffer: {{enabled: true, max_bytes: 104857600}}
"#,
            state = dir.join("state").display(),
            logs = dir.join("logs").display(),
            url = sink.url()
        ),
    )
    .unwrap();
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    // Rename rotation at 32 KiB keeping 2 backups: older files are deleted.
    let mut n = 0u64;
    let mut write = |count: u64| {
        for _ in 0..count {
            let log = logs.join("app.log");
            if std::fs::metadata(&log).is_ok_and(|m| m.len() > 32 * 1024) {
                let _ = std::fs::rename(logs.join("app.log.1"), logs.join("app.log.2"));
                std::fs::rename(&log, logs.join("app.log.1")).unwrap();
            }
            append(&log, line(n).as_bytes());
            n += 1;
        }
    };
    let mut shipper = Shipper::start(&cfg);
    // The first discovery writes the checkpoint file: from then on files are followed.
    // Bursts stay well under one file (~125 lines), so nothing is rotated away before
    // the shipper has opened it — that loss no shipper could prevent.
    wait_for("the shipper", Duration::from_secs(10), || {
        dir.join("state/checkpoints.json").exists()
    })
    .await;
    for _ in 0..40 {
        write(50);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for("everything on disk", Duration::from_secs(20), || {
        all_acknowledged(&dir.join("state"), &logs)
    })
    .await;
    // Most of those lines are in files rotation deleted, and the sink is still down: a
    // crash now must not lose what only the disk buffer holds.
    assert!(!logs.join("app.log.3").exists());
    shipper.kill9();
    write(100);
    shipper = Shipper::start(&shipper.config.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    sink.set(Behaviour::Ok);
    let total = n;
    let waited = Instant::now();
    while (numbers(&sink.records()).len() as u64) < total
        && waited.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = numbers(&sink.records());
    let missing: Vec<u64> = (0..total).filter(|i| !seen.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "{} of {total} missing: {:?}…; {} requests",
        missing.len(),
        &missing[..missing.len().min(5)],
        sink.state.lock().unwrap().requests
    );
    assert!((0..total).all(|i| seen.contains_key(&i)));
    assert!(sink.state.lock().unwrap().requests > 3);
    drop(shipper);
}

#[tokio::test]
async fn files_created_and_deleted_during_an_outage_are_still_shipped() {
    let dir = common::temp_dir("logship-outage");
    let sink = start_sink(Behaviour::Status(503)).await;
    let cfg = write_config(&dir, &sink, "");
    let logs = dir.join("logs");
    // More than the sink's queue holds, so the reader is held up by backpressure.
    append(
        &logs.join("a.log"),
        (0..3000).map(line).collect::<String>().as_bytes(),
    );
    let _shipper = Shipper::start(&cfg);
    wait_for("the sink to be tried", Duration::from_secs(10), || {
        sink.state.lock().unwrap().requests >= 2
    })
    .await;
    append(
        &logs.join("b.log"),
        (5000..5100).map(line).collect::<String>().as_bytes(),
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    std::fs::remove_file(logs.join("b.log")).unwrap();
    sink.set(Behaviour::Ok);
    wait_for("both files", Duration::from_secs(20), || {
        let s = numbers(&sink.records());
        (0..3000).chain(5000..5100).all(|n| s.contains_key(&n))
    })
    .await;
}
