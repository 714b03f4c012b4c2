//! Ingest and ask benchmark against the real `rag-core` release binary.
//!
//! Run (from the workspace root):
//!   cargo build --release -p rag-core --bin rag-core --example bench && target/release/examples/bench
//! Options: --docs N (40000) --asks N (1000) --batch N (100) --concurrency N (2) --keep DIR
//!
//! Generates a deterministic corpus (Zipf-distributed synthetic vocabulary, ~2.6 KB per
//! document), ingests it over HTTP in batches, then asks questions built from words of
//! random documents, and prints ingest MB/s, ask p50/p99 and the server's peak RSS.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ra", "ten", "vor", "sa", "qui", "del", "bran", "tor", "ne", "pha", "zu",
    "gri", "om", "lek", "sto", "vi", "mar", "den", "ul", "cas", "fen", "ho", "rix", "pe", "ta",
    "gon", "shi",
];

fn vocabulary(rng: &mut Rng, n: usize) -> Vec<String> {
    let mut words = std::collections::BTreeSet::new();
    while words.len() < n {
        let parts = 2 + rng.below(3);
        let w: String = (0..parts)
            .map(|_| SYLLABLES[rng.below(SYLLABLES.len())])
            .collect();
        words.insert(w);
    }
    words.into_iter().collect()
}

/// Zipf-like pick: low indices much more frequent, long tail of rare words.
fn zipf(rng: &mut Rng, n: usize) -> usize {
    let u = (rng.next() % 1_000_000) as f64 / 1_000_000.0;
    ((n as f64).powf(u) as usize).saturating_sub(1).min(n - 1)
}

fn document(rng: &mut Rng, vocab: &[String], target: usize) -> String {
    let mut s = String::with_capacity(target + 200);
    while s.len() < target {
        let len = 8 + rng.below(12);
        for i in 0..len {
            let w = &vocab[zipf(rng, vocab.len())];
            if i == 0 {
                let mut c = w.chars();
                if let Some(f) = c.next() {
                    s.extend(f.to_uppercase());
                    s.push_str(c.as_str());
                }
            } else {
                s.push(' ');
                s.push_str(w);
            }
        }
        s.push_str(if rng.below(6) == 0 { ".\n\n" } else { ". " });
    }
    s
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_owned)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let docs = arg("--docs", 40_000);
    let asks = arg("--asks", 1000);
    let batch = arg("--batch", 100).max(1);
    let concurrency = arg("--concurrency", 2).max(1);
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("rag-core"))
        .filter(|p| p.exists())
        .ok_or("rag-core binary not found next to the example; build it with --bin rag-core")?;
    let dir = std::env::temp_dir().join(format!("rag-core-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let out = Command::new(&bin)
        .args(["admin", "bootstrap", "--json", "--data-dir"])
        .arg(&dir)
        .output()?;
    let boot: Value = serde_json::from_slice(&out.stdout)?;
    let key = boot["api_key"].as_str().ok_or("no api key")?.to_string();
    let cfg = dir.join("bench.yaml");
    let sync = if std::env::args().any(|a| a == "--sync-normal") {
        "normal"
    } else {
        "full"
    };
    std::fs::write(
        &cfg,
        format!("logging:\n  stdout: false\nstore:\n  synchronous: {sync}\n"),
    )?;
    let mut child = Command::new(&bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&dir)
        .env("LOG_ROTATION_MAX_BYTES", "10485760")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id();
    // With stdout off, read the listen address from the log file.
    let log = dir.join("logs/rag.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        if let Ok(f) = std::fs::File::open(&log) {
            let found = BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .find_map(|l| {
                    let v: Value = serde_json::from_str(&l).ok()?;
                    (v["event"] == "server.started")
                        .then(|| v["listen"].as_str().map(str::to_owned))?
                });
            if let Some(a) = found {
                break a;
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("server did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let base = format!("http://{addr}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;

    println!("generating {docs} documents …");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let vocab = vocabulary(&mut rng, 20_000);
    let corpus: Vec<String> = (0..docs)
        .map(|_| {
            let size = 2400 + rng.below(400);
            document(&mut rng, &vocab, size)
        })
        .collect();
    let total_bytes: usize = corpus.iter().map(String::len).sum();

    println!(
        "ingesting {:.1} MB in batches of {batch}, {concurrency} concurrent …",
        total_bytes as f64 / 1e6
    );
    let started = Instant::now();
    let batches: Vec<Vec<Value>> = corpus
        .chunks(batch)
        .enumerate()
        .map(|(bi, c)| {
            c.iter()
                .enumerate()
                .map(|(i, t)| json!({"title": format!("doc {}", bi * batch + i), "text": t}))
                .collect()
        })
        .collect();
    let queue = std::sync::Arc::new(tokio::sync::Mutex::new(batches.into_iter()));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let queue = queue.clone();
        let client = client.clone();
        let url = format!("{base}/api/v1/ingest/text");
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut ingested = 0usize;
            loop {
                let next = queue.lock().await.next();
                let Some(b) = next else { break };
                let resp = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({"documents": b}))
                    .send()
                    .await?;
                if !resp.status().is_success() {
                    return Err(format!(
                        "ingest failed: HTTP {}: {}",
                        resp.status(),
                        resp.text().await.unwrap_or_default()
                    )
                    .into());
                }
                ingested += b.len();
            }
            Ok::<usize, Box<dyn std::error::Error + Send + Sync>>(ingested)
        }));
    }
    let mut ingested = 0;
    for t in tasks {
        ingested += t.await?.map_err(|e| e.to_string())?;
    }
    let ingest_secs = started.elapsed().as_secs_f64();
    let rss_after_ingest = peak_rss_kib(pid);

    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let chunks: u64 = metrics
        .lines()
        .find(|l| l.starts_with("chunk_records_total "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);

    let stage_sums: Vec<(String, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with("rag_core_stage_duration_seconds_sum"))
        .filter_map(|l| {
            let stage = l.split("stage=\"").nth(1)?.split('"').next()?.to_string();
            Some((stage, l.split_whitespace().last()?.parse().ok()?))
        })
        .collect();

    println!("asking {asks} questions …");
    // Warm-up: the first ask loads the workspace's vectors into memory.
    let warm = Instant::now();
    client
        .post(format!("{base}/api/v1/ask"))
        .bearer_auth(&key)
        .json(&json!({"question": "warm up"}))
        .send()
        .await?;
    let warm_ms = warm.elapsed().as_secs_f64() * 1000.0;
    let mut lat = Vec::with_capacity(asks);
    let mut abstained = 0;
    let mut found_own = 0;
    for _ in 0..asks {
        let d = rng.below(corpus.len());
        let words: Vec<&str> = corpus[d].split_whitespace().collect();
        let start = rng.below(words.len().saturating_sub(6).max(1));
        let q: String = words[start..(start + 5).min(words.len())]
            .join(" ")
            .replace('.', "");
        let t = Instant::now();
        let resp = client
            .post(format!("{base}/api/v1/ask"))
            .bearer_auth(&key)
            .json(&json!({"question": q, "k": 4}))
            .send()
            .await?;
        let v: Value = resp.json().await?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        if v["abstained"] == true {
            abstained += 1;
        } else if v["citations"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["title"] == format!("doc {d}")))
        {
            found_own += 1;
        }
    }
    lat.sort_by(f64::total_cmp);
    let rss_peak = peak_rss_kib(pid);
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = child.wait();
    if std::env::args().all(|a| a != "--keep") {
        let _ = std::fs::remove_dir_all(&dir);
    }

    let mb = total_bytes as f64 / 1e6;
    println!();
    println!("| figure | value | target |");
    println!("|---|---|---|");
    println!("| documents ingested | {ingested} | ≥ 20,000 |");
    println!("| corpus size | {mb:.1} MB | ≈ 50 MB+ |");
    println!("| chunks stored | {chunks} | ≥ 100,000 |");
    println!(
        "| ingest throughput | {:.1} MB/s ({:.0} docs/s, {ingest_secs:.1} s) | ≥ 10 MB/s |",
        mb / ingest_secs,
        ingested as f64 / ingest_secs
    );
    println!("| asks | {asks} (first ask, loading vectors: {warm_ms:.0} ms) | ≥ 1,000 |");
    println!("| ask p50 | {:.1} ms | |", percentile(&lat, 0.5));
    println!("| ask p99 | {:.1} ms | ≤ 50 ms |", percentile(&lat, 0.99));
    println!(
        "| ask max | {:.1} ms | |",
        lat.last().copied().unwrap_or(0.0)
    );
    println!(
        "| answered / own document cited | {} / {found_own} | |",
        asks - abstained
    );
    for (stage, secs) in &stage_sums {
        println!("| server time in stage {stage} during ingest | {secs:.2} s | |");
    }
    println!(
        "| peak RSS after ingest | {:.0} MB | |",
        rss_after_ingest as f64 / 1024.0
    );
    println!(
        "| peak RSS overall | {:.0} MB | ≤ 300 MB |",
        rss_peak as f64 / 1024.0
    );
    Ok(())
}
