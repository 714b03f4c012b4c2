//! `rag-core backup create|verify|restore|keygen` and scheduled backups, run as real
//! processes: a backup taken while the server runs restores to a server that answers
//! exactly as the original did; damaged, foreign and wrongly keyed files are refused with
//! their own messages and leave nothing behind; the key never reaches any output.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

const HEADER_LEN: usize = 56;
const FINAL_CHUNK_LEN: usize = 48;
const CHUNK: u64 = 1 << 20;

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Out {
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs `rag-core` with a clean environment for the backup variables.
fn rag(args: &[&dyn AsRef<std::ffi::OsStr>], env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(bin());
    for a in args {
        cmd.arg(a);
    }
    cmd.env_remove("RAG_CORE_CONFIG")
        .env_remove("RAG_CORE_DATA_DIR")
        .env_remove("RAG_CORE_BACKUP_KEY")
        .env_remove("RAG_CORE_BACKUP_KEY_FILE")
        .env_remove("BACKGROUND_JOBS_ENABLED");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run rag-core");
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A new key file; returns its path and the key (hex).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = rag(&[&"backup", &"keygen", &"--out", &path], &[]);
    assert!(out.ok, "{}", out.all());
    let key = std::fs::read_to_string(&path).unwrap().trim().to_string();
    assert_eq!(key.len(), 64);
    assert!(!out.all().contains(&key), "keygen --out printed the key");
    (path, key)
}

/// `key: value` from a command's output.
fn field(out: &str, name: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} in {out}"))
        .trim()
        .to_string()
}

fn create(data_dir: &Path, out: &Path, key_file: &Path) -> Out {
    rag(
        &[
            &"backup",
            &"create",
            &"--data-dir",
            &data_dir,
            &"--out",
            &out,
            &"--key-file",
            &key_file,
        ],
        &[],
    )
}

fn restore(file: &Path, data_dir: &Path, key_file: &Path, force: bool) -> Out {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"backup",
        &"restore",
        &file,
        &"--data-dir",
        &data_dir,
        &"--key-file",
        &key_file,
    ];
    if force {
        args.push(&"--force");
    }
    rag(&args, &[])
}

fn verify(file: &Path, key_file: &Path) -> Out {
    rag(
        &[&"backup", &"verify", &file, &"--key-file", &key_file],
        &[],
    )
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A small store built with the CLI only (no server): bootstrap plus a few documents.
fn small_store(tag: &str) -> PathBuf {
    let dir = temp_dir(tag);
    let _ = bootstrap(&dir);
    let docs = dir.join("corpus");
    std::fs::create_dir_all(&docs).unwrap();
    for (i, text) in [
        "Herons wait motionless by the river before striking at fish.",
        "The lighthouse keeper climbs one hundred and twelve steps every evening.",
        "Sourdough needs a starter fed with flour and water each day.",
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(docs.join(format!("doc{i}.txt")), text).unwrap();
    }
    let out = rag(&[&"ingest", &"--data-dir", &dir, &docs], &[]);
    assert!(out.ok, "{}", out.all());
    dir
}

fn ask_body(v: &Value) -> Value {
    json!({"answer": v["answer"], "citations": v["citations"], "abstained": v["abstained"]})
}

const QUESTIONS: [&str; 7] = [
    "Can I get a refund on an annual plan?",
    "How long does delivery take?",
    "Is data encrypted at rest?",
    "When is the support desk open?",
    "How do I invite teammates?",
    "How much does a seat cost per month?",
    "What is the capital of Mongolia?",
];

#[tokio::test]
async fn backup_of_a_running_server_restores_to_identical_answers() {
    let a = temp_dir("backup-live");
    let (key_file, key) = keygen(&a, "backup.key");
    let b = bootstrap(&a.join("data"));
    let s = Server::start(&a.join("data"));
    let c = client();
    let corpus = json!([
        {"title": "Refund policy", "text": "Refunds: customers on annual plans may request a full refund within 30 days of purchase. Monthly plans are not refundable."},
        {"title": "Shipping", "text": "Orders ship from our warehouse in Lyon. Standard delivery takes five business days within the EU."},
        {"title": "Security", "text": "All data is encrypted at rest with AES-256 and in transit with TLS 1.3. We rotate keys every ninety days."},
        {"title": "Support hours", "text": "Our support desk is staffed Monday to Friday from 9:00 to 18:00 Central European Time."},
        {"title": "Onboarding", "text": "New administrators invite teammates from the settings page and assign each one a role."},
        {"title": "Pricing", "text": "The team plan costs twelve euros per seat per month, billed annually or monthly."}
    ]);
    let (st, v) = ingest_text(&c, &s, &b.api_key, corpus).await;
    assert_eq!(st, 200, "{v}");
    let mut before = Vec::new();
    for q in QUESTIONS {
        let (st, v) = ask(&c, &s, &b.api_key, json!({"question": q, "k": 3})).await;
        assert_eq!(st, 200, "{v}");
        before.push(ask_body(&v));
    }
    assert_eq!(before[6]["abstained"], true);
    let (_, sources_before) = json(c.get(s.url("/api/v1/sources")).bearer_auth(&b.api_key)).await;

    // While the server runs (and serves a question at the same moment).
    let file = a.join("live.mrbak");
    let asking = {
        let (c, url, key) = (c.clone(), s.url("/api/v1/ask"), b.api_key.clone());
        tokio::spawn(async move {
            for _ in 0..5 {
                let r = c
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({"question": "How long does delivery take?"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        })
    };
    let out = tokio::task::spawn_blocking({
        let (d, f, k) = (a.join("data"), file.clone(), key_file.clone());
        move || create(&d, &f, &k)
    })
    .await
    .unwrap();
    asking.await.unwrap();
    assert!(out.ok, "{}", out.all());
    assert_eq!(field(&out.stdout, "path"), file.display().to_string());
    let bytes: u64 = field(&out.stdout, "bytes").parse().unwrap();
    assert_eq!(bytes, std::fs::metadata(&file).unwrap().len());
    let _: u64 = field(&out.stdout, "duration_ms").parse().unwrap();
    assert!(!out.all().contains(&key));
    // Only the backup itself was left next to it (no plaintext snapshot, no .partial).
    assert_eq!(names(&a), vec!["backup.key", "data", "live.mrbak"]);

    let out = verify(&file, &key_file);
    assert!(out.ok, "{}", out.all());
    assert_eq!(field(&out.stdout, "integrity_check"), "ok");
    assert_eq!(field(&out.stdout, "organizations"), "1");
    assert_eq!(field(&out.stdout, "workspaces"), "1");
    assert_eq!(field(&out.stdout, "sources"), "6");
    assert!(field(&out.stdout, "chunks").parse::<u64>().unwrap() >= 6);

    // Into a data directory that does not exist yet.
    let restored = a.join("restored");
    let out = restore(&file, &restored, &key_file, false);
    assert!(out.ok, "{}", out.all());
    assert_eq!(names(&restored), vec!["rag.db"]);
    assert_eq!(field(&out.stdout, "sources"), "6");

    let s2 = Server::start(&restored);
    for (q, want) in QUESTIONS.iter().zip(&before) {
        let (st, v) = ask(&c, &s2, &b.api_key, json!({"question": q, "k": 3})).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(&ask_body(&v), want, "{q}");
    }
    let (_, sources_after) = json(c.get(s2.url("/api/v1/sources")).bearer_auth(&b.api_key)).await;
    assert_eq!(sources_after["sources"], sources_before["sources"]);
    drop(s2);
    drop(s);
    let _ = std::fs::remove_dir_all(&a);
}

#[tokio::test]
async fn backups_taken_during_writes_are_consistent() {
    let a = temp_dir("backup-writes");
    let (key_file, _) = keygen(&a, "k");
    let data = a.join("data");
    let b = bootstrap(&data);
    let s = Server::start(&data);
    let c = client();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Every document is one chunk, stored with its chunk in one transaction: a consistent
    // snapshot always has as many chunks as sources.
    let writer = {
        let (c, url, key, stop) = (
            c.clone(),
            s.url("/api/v1/ingest/text"),
            b.api_key.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let docs: Vec<Value> = (0..5)
                    .map(|i| json!({"title": format!("d{n}-{i}"), "text": format!("Record {n} item {i} about kestrels number {}.", n * 10 + i)}))
                    .collect();
                let r = c
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({"documents": docs}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut seen = Vec::new();
    for i in 0..3 {
        let file = a.join(format!("b{i}.mrbak"));
        let out = tokio::task::spawn_blocking({
            let (d, f, k) = (data.clone(), file.clone(), key_file.clone());
            move || create(&d, &f, &k)
        })
        .await
        .unwrap();
        assert!(out.ok, "{}", out.all());
        let v = verify(&file, &key_file);
        assert!(v.ok, "{}", v.all());
        let sources: u64 = field(&v.stdout, "sources").parse().unwrap();
        let chunks: u64 = field(&v.stdout, "chunks").parse().unwrap();
        assert_eq!(sources, chunks, "torn snapshot: {}", v.stdout);
        seen.push(sources);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let batches = writer.await.unwrap();
    assert!(batches > 0);
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert!(seen[2] > 0, "{seen:?}");
    drop(s);
    let _ = std::fs::remove_dir_all(&a);
}

#[test]
fn damaged_foreign_and_wrongly_keyed_files_are_refused_and_leave_nothing() {
    let data = small_store("backup-tamper");
    let work = temp_dir("backup-tamper-files");
    let (key_file, key) = keygen(&work, "k");
    let (other_key, _) = keygen(&work, "other");
    let file = work.join("good.mrbak");
    let out = create(&data, &file, &key_file);
    assert!(out.ok, "{}", out.all());
    let good = std::fs::read(&file).unwrap();
    let plain_len = u64::from_be_bytes(good[44..52].try_into().unwrap());
    let data_chunks = plain_len.div_ceil(CHUNK);
    assert_eq!(
        good.len() as u64,
        HEADER_LEN as u64 + plain_len + data_chunks * 16 + FINAL_CHUNK_LEN as u64
    );

    let flip = |at: usize| {
        let mut b = good.clone();
        b[at] ^= 0x01;
        b
    };
    let mut appended = good.clone();
    appended.extend_from_slice(b"extra");
    let sqlite = std::fs::read(data.join("rag.db")).unwrap();
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "bit flip in a data chunk",
            flip(HEADER_LEN + 1000),
            "backup is corrupt or was modified (authentication failed at chunk 0)".into(),
        ),
        (
            "bit flip in the final chunk",
            flip(good.len() - 3),
            format!("authentication failed at chunk {data_chunks})"),
        ),
        (
            "edited header (created_at)",
            flip(39),
            "authentication failed at chunk 0".into(),
        ),
        (
            "edited header (schema version)",
            flip(43),
            "authentication failed at chunk 0".into(),
        ),
        (
            "truncated inside a chunk",
            good[..good.len() - 100].to_vec(),
            "backup is truncated".into(),
        ),
        (
            "final chunk cut off",
            good[..good.len() - FINAL_CHUNK_LEN].to_vec(),
            format!("backup is truncated: it ends inside chunk {data_chunks}"),
        ),
        (
            "header only",
            good[..HEADER_LEN].to_vec(),
            "backup is truncated".into(),
        ),
        (
            "bytes appended",
            appended,
            "unexpected data after the final chunk".into(),
        ),
        (
            "a plain SQLite database",
            sqlite,
            "not a Mini-RAG backup file".into(),
        ),
        (
            "an empty file",
            Vec::new(),
            "not a Mini-RAG backup file".into(),
        ),
    ];
    for (i, (what, bytes, want)) in cases.iter().enumerate() {
        let bad = work.join(format!("bad{i}.mrbak"));
        std::fs::write(&bad, bytes).unwrap();
        let target = work.join(format!("restore{i}"));
        let out = restore(&bad, &target, &key_file, false);
        assert!(!out.ok, "{what}: accepted\n{}", out.all());
        assert!(
            out.stderr.contains(want.as_str()),
            "{what}: want {want:?}, got {}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{what}: {}", out.stderr);
        assert!(
            out.stderr.contains(&bad.display().to_string()),
            "{what}: names the file: {}",
            out.stderr
        );
        assert_eq!(
            names(&target),
            Vec::<String>::new(),
            "{what}: left files behind"
        );
        let out = verify(&bad, &key_file);
        assert!(!out.ok, "{what}: verify accepted");
        assert!(
            out.stderr.contains(want.as_str()),
            "{what}: verify said {}",
            out.stderr
        );
        assert!(!out.all().contains(&key));
    }

    // The wrong key is named as such, before anything is decrypted.
    let target = work.join("restore-wrong-key");
    let out = restore(&file, &target, &other_key, false);
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("wrong key: the backup was encrypted with another key"),
        "{}",
        out.stderr
    );
    assert_eq!(names(&target), Vec::<String>::new());
    let out = verify(&file, &other_key);
    assert!(
        !out.ok && out.stderr.contains("wrong key"),
        "{}",
        out.stderr
    );

    // A missing file is an I/O error naming it.
    let out = verify(&work.join("absent.mrbak"), &key_file);
    assert!(
        !out.ok && out.stderr.contains("cannot open the backup"),
        "{}",
        out.stderr
    );

    // A backup from a newer rag-core (higher schema version) verifies but is not restored.
    let newer = temp_dir("backup-newer");
    std::fs::copy(data.join("rag.db"), newer.join("rag.db")).unwrap();
    rusqlite::Connection::open(newer.join("rag.db"))
        .unwrap()
        .execute_batch("PRAGMA user_version = 999")
        .unwrap();
    let newer_file = work.join("newer.mrbak");
    let out = create(&newer, &newer_file, &key_file);
    assert!(out.ok, "{}", out.all());
    assert_eq!(field(&out.stdout, "schema_version"), "999");
    let out = verify(&newer_file, &key_file);
    assert!(out.ok, "{}", out.all());
    assert!(field(&out.stdout, "schema_version").contains("newer than this rag-core"));
    let target = work.join("restore-newer");
    let out = restore(&newer_file, &target, &key_file, false);
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("schema version 999, newer than this rag-core supports"),
        "{}",
        out.stderr
    );
    assert_eq!(names(&target), Vec::<String>::new());

    // The good file still restores.
    let target = work.join("restore-good");
    let out = restore(&file, &target, &key_file, false);
    assert!(out.ok, "{}", out.all());
    assert_eq!(field(&out.stdout, "sources"), "3");
    for d in [data, work, newer] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn restore_into_an_existing_store_needs_force_and_keeps_the_old_one() {
    let data = small_store("backup-force");
    let work = temp_dir("backup-force-files");
    let (key_file, _) = keygen(&work, "k");
    let file = work.join("b.mrbak");
    assert!(create(&data, &file, &key_file).ok);

    let other = small_store("backup-force-other");
    let before = std::fs::read(other.join("rag.db")).unwrap();
    let out = restore(&file, &other, &key_file, false);
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("already holds a store (rag.db); pass --force"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read(other.join("rag.db")).unwrap(),
        before,
        "untouched"
    );
    assert!(
        !names(&other).iter().any(|n| n.contains("restore")),
        "{:?}",
        names(&other)
    );

    // A stale WAL beside the old store moves with it, never into the restored one.
    std::fs::write(other.join("rag.db-wal"), b"stale wal").unwrap();
    let out = restore(&file, &other, &key_file, true);
    assert!(out.ok, "{}", out.all());
    let kept = field(&out.stdout, "replaced store kept as");
    let kept = PathBuf::from(kept.split(" (").next().unwrap());
    assert_eq!(std::fs::read(&kept).unwrap(), before);
    let mut kept_wal = kept.clone().into_os_string();
    kept_wal.push("-wal");
    assert_eq!(std::fs::read(&kept_wal).unwrap(), b"stale wal");
    assert!(!other.join("rag.db-wal").exists());
    let out = verify(&file, &key_file);
    assert!(out.ok);

    // The restored store is usable by the CLI (and so by the server).
    let again = work.join("again.mrbak");
    let out = create(&other, &again, &key_file);
    assert!(out.ok, "{}", out.all());
    for d in [data, work, other] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn the_key_never_appears_in_any_output() {
    let data = small_store("backup-secret");
    let work = temp_dir("backup-secret-files");
    let (key_file, key) = keygen(&work, "k");
    let raw = hex::decode(&key).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
    let b64_file = work.join("k.b64");
    std::fs::write(&b64_file, format!("{b64}\n")).unwrap();
    // Nothing 12 characters long from either encoding may show up anywhere.
    let forbidden: Vec<String> = [key.clone(), key.to_uppercase(), b64.clone()]
        .iter()
        .flat_map(|s| {
            (0..=s.len() - 12)
                .map(|i| s[i..i + 12].to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let check = |what: &str, out: &Out| {
        let all = out.all();
        for f in &forbidden {
            assert!(
                !all.contains(f.as_str()),
                "{what}: output contains key material {f:?}:\n{all}"
            );
        }
    };

    let file = work.join("b.mrbak");
    let out = create(&data, &file, &key_file);
    assert!(out.ok);
    check("create --key-file", &out);
    let file2 = work.join("b2.mrbak");
    let out = rag(
        &[&"backup", &"create", &"--data-dir", &data, &"--out", &file2],
        &[("RAG_CORE_BACKUP_KEY", &b64)],
    );
    assert!(out.ok, "{}", out.all());
    check("create with RAG_CORE_BACKUP_KEY (base64)", &out);
    let out = rag(
        &[&"backup", &"verify", &file2],
        &[("RAG_CORE_BACKUP_KEY_FILE", b64_file.to_str().unwrap())],
    );
    assert!(out.ok, "{}", out.all());
    check("verify with RAG_CORE_BACKUP_KEY_FILE", &out);
    let cfg = work.join("cfg.yaml");
    std::fs::write(
        &cfg,
        format!("backup:\n  key_file: {}\n", key_file.display()),
    )
    .unwrap();
    let out = rag(&[&"backup", &"verify", &file, &"--config", &cfg], &[]);
    assert!(out.ok, "{}", out.all());
    check("verify with backup.key_file", &out);
    let out = restore(&file, &work.join("r"), &key_file, false);
    assert!(out.ok);
    check("restore", &out);
    let out = restore(&file, &work.join("r"), &key_file, false);
    assert!(!out.ok);
    check("restore refused", &out);

    // Bad keys: messages name the setting, never the value.
    let bad_values = [
        (
            &key[..40],
            "must be 64 hex characters or base64 of 32 bytes",
        ),
        (&format!("{key}ab")[..], "must be 64 hex characters"),
        (
            &b64[..30],
            "must be 64 hex characters or base64 of 32 bytes",
        ),
        ("changeme", "placeholder"),
        (&"ab".repeat(32)[..], "not a random key"),
    ];
    for (value, want) in bad_values {
        let out = rag(
            &[&"backup", &"verify", &file],
            &[("RAG_CORE_BACKUP_KEY", value)],
        );
        assert!(!out.ok);
        assert!(
            out.stderr.contains("RAG_CORE_BACKUP_KEY: "),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains(want), "{value}: {}", out.stderr);
        check("bad key", &out);
        let f = work.join("bad.key");
        std::fs::write(&f, value).unwrap();
        let out = rag(
            &[
                &"backup",
                &"create",
                &"--data-dir",
                &data,
                &"--dir",
                &work,
                &"--key-file",
                &f,
            ],
            &[],
        );
        assert!(!out.ok);
        assert!(
            out.stderr.contains("--key-file: ") && out.stderr.contains(want),
            "{}",
            out.stderr
        );
        check("bad key file", &out);
    }
    let out = rag(&[&"backup", &"verify", &file], &[]);
    assert!(
        !out.ok && out.stderr.contains("no backup key"),
        "{}",
        out.stderr
    );
    let (wrong, _) = keygen(&work, "wrong");
    let out = verify(&file, &wrong);
    assert!(!out.ok);
    check("wrong key", &out);
    // keygen without --out is the one command that prints a key: a new one, every time.
    let a = rag(&[&"backup", &"keygen"], &[]);
    let b = rag(&[&"backup", &"keygen"], &[]);
    assert!(a.ok && b.ok);
    assert_eq!(a.stdout.trim().len(), 64);
    assert_ne!(a.stdout, b.stdout);
    check("keygen", &a);
    for d in [data, work] {
        let _ = std::fs::remove_dir_all(d);
    }
}

fn metric(text: &str, name: &str) -> f64 {
    series_value(text, name).unwrap_or_else(|| panic!("{name} not exported:\n{text}"))
}

async fn wait_for_events(s: &Server, event: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let found: Vec<Value> = s
            .log_lines()
            .into_iter()
            .filter(|l| l["event"] == event)
            .collect();
        if found.len() >= n {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "only {} {event} events: {:?}",
            found.len(),
            s.log_lines()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn scheduled_backups_run_keep_the_newest_and_export_metrics() {
    let data = temp_dir("backup-scheduled");
    let (key_file, key) = keygen(&data, "backup.key");
    let b = bootstrap(&data);
    let yaml = format!(
        "backup:\n  enabled: true\n  interval: 1s\n  keep: 2\n  dir: snaps\n  key_file: {}\n",
        key_file.display()
    );
    let s = Server::start_with(
        &data,
        Options {
            config_yaml: Some(yaml),
            ..Options::default()
        },
    );
    let c = client();
    let (st, _) = ingest_text(
        &c,
        &s,
        &b.api_key,
        json!([{"title": "t", "text": "Scheduled backups keep only the newest copies."}]),
    )
    .await;
    assert_eq!(st, 200);
    let done = wait_for_events(&s, "backup.completed", 4).await;
    let _ = wait_for_events(&s, "backup.pruned", 1).await;
    let m = scrape(&c, &s).await;
    let last = metric(&m, "backup_last_success_timestamp_seconds");
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((now - last).abs() < 30.0, "{last} vs {now}");
    assert_eq!(metric(&m, "backup_failures_total"), 0.0);

    let lines = s.log_lines();
    let backup_lines: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["event"]
                .as_str()
                .is_some_and(|e| e.starts_with("backup."))
        })
        .collect();
    assert_log_schema(backup_lines.iter().copied());
    for l in &done {
        assert!(l["path"].as_str().unwrap().ends_with(".mrbak"), "{l}");
        assert!(l["bytes"].as_u64().unwrap() > 0, "{l}");
        assert!(l["duration_ms"].as_f64().unwrap() >= 0.0, "{l}");
    }
    let raw = s.stdout.lock().unwrap().join("\n");
    assert!(
        !raw.contains(&key) && !raw.contains(&key[..16]),
        "key in the log"
    );
    assert!(s.terminate(), "clean exit");

    let dir = data.join("snaps");
    let left = names(&dir);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.iter()
            .all(|n| n.starts_with("rag-") && n.ends_with(".mrbak")),
        "{left:?}"
    );
    let newest = dir.join(&left[1]);
    let out = verify(&newest, &key_file);
    assert!(out.ok, "{}", out.all());
    assert_eq!(field(&out.stdout, "sources"), "1");

    // A restart with fresh backups does not back up at once; the gauge starts from the
    // newest file.
    let s = Server::start_with(
        &data,
        Options {
            config_yaml: Some(format!(
                "backup:\n  enabled: true\n  interval: 1d\n  keep: 2\n  dir: snaps\n  key_file: {}\n",
                key_file.display()
            )),
            ..Options::default()
        },
    );
    let m = scrape(&c, &s).await;
    let last = metric(&m, "backup_last_success_timestamp_seconds");
    assert!(last > 0.0 && (now - last).abs() < 60.0, "{last}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !s.log_lines()
            .iter()
            .any(|l| l["event"] == "backup.completed")
    );
    drop(s);
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test]
async fn scheduled_backup_failures_are_logged_and_counted() {
    let data = temp_dir("backup-failing");
    let (key_file, _) = keygen(&data, "backup.key");
    let _ = bootstrap(&data);
    // The backup directory cannot be created: a file is in the way.
    std::fs::write(data.join("blocked"), b"").unwrap();
    let yaml = format!(
        "backup:\n  enabled: true\n  interval: 1s\n  dir: blocked/backups\n  key_file: {}\n",
        key_file.display()
    );
    let s = Server::start_with(
        &data,
        Options {
            config_yaml: Some(yaml),
            ..Options::default()
        },
    );
    let failed = wait_for_events(&s, "backup.failed", 2).await;
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("cannot create the backup directory"),
        "{}",
        failed[0]
    );
    assert_eq!(failed[0]["level"], "ERROR");
    let c = client();
    let m = scrape(&c, &s).await;
    assert!(metric(&m, "backup_failures_total") >= 2.0);
    assert_eq!(metric(&m, "backup_last_success_timestamp_seconds"), 0.0);
    drop(s);
    let _ = std::fs::remove_dir_all(&data);
}

/// Runs `serve` expecting it to stop at startup; returns its stderr.
fn serve_fails(data: &Path, yaml: &str, env: &[(&str, &str)]) -> String {
    let cfg = data.join("cfg.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .arg("--config")
        .arg(&cfg)
        .env_remove("RAG_CORE_BACKUP_KEY")
        .env_remove("RAG_CORE_BACKUP_KEY_FILE")
        .env_remove("RAG_CORE_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(!st.success());
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve started although the backup key is unusable");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn enabled_backups_without_a_usable_key_stop_startup() {
    let data = temp_dir("backup-nokey");
    let err = serve_fails(&data, "backup:\n  enabled: true\n", &[]);
    assert!(
        err.contains("backup.enabled is true, but no backup key"),
        "{err}"
    );
    assert!(err.contains("backup.key_file"), "{err}");
    let err = serve_fails(
        &data,
        &format!(
            "backup:\n  enabled: true\n  key_file: {}\n",
            data.join("missing.key").display()
        ),
        &[],
    );
    assert!(
        err.contains("backup.key_file: cannot read the key file"),
        "{err}"
    );
    let err = serve_fails(
        &data,
        "backup:\n  enabled: true\n",
        &[("RAG_CORE_BACKUP_KEY", "changeme")],
    );
    assert!(
        err.contains("RAG_CORE_BACKUP_KEY: holds a placeholder value"),
        "{err}"
    );
    let err = serve_fails(&data, "backup:\n  enabled: true\n  interval: 1w\n", &[]);
    assert!(err.contains("backup.interval"), "{err}");
    let _ = std::fs::remove_dir_all(&data);
}
