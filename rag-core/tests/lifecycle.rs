//! Data lifecycle against the real binary: workspace export (exactly one workspace's
//! data, streamed download, other organizations refused), deletion of a source, a
//! workspace and a user's data (search and ask forget it, FTS rows and job payloads are
//! gone, other workspaces untouched, the audit chain verifies), content retention on
//! backdated sources, expired exports and rotated log files.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn options(jobs_enabled: bool, schedule: &str) -> Options {
    Options {
        config_yaml: Some(format!(
            "jobs:\n  enabled: {jobs_enabled}\n  poll_interval_ms: 50\n  lease_seconds: 3\n\
             lifecycle:\n  schedule_every: {schedule}\n  delete_batch_size: 7\n"
        )),
        ..Options::default()
    }
}

async fn get(c: &reqwest::Client, s: &Server, key: &str, path: &str) -> (u16, Value) {
    json(c.get(s.url(path)).bearer_auth(key)).await
}

async fn wait_job(c: &reqwest::Client, s: &Server, key: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (st, v) = get(c, s, key, &format!("/api/v1/jobs/{id}")).await;
        assert_eq!(st, 200, "{v}");
        match v["status"].as_str() {
            Some("succeeded") => return v,
            Some("dead_lettered" | "cancelled") => panic!("job ended badly: {v}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "job did not finish: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ingests text documents (title, text) and waits for a queued ingest to finish.
async fn ingest(c: &reqwest::Client, s: &Server, key: &str, docs: &[(&str, &str)]) {
    let docs: Vec<Value> = docs
        .iter()
        .map(|(t, x)| json!({"title": t, "text": x}))
        .collect();
    let (st, v) = ingest_text(c, s, key, json!(docs)).await;
    match st {
        200 => assert!(
            v["documents"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["status"] == "ingested"),
            "{v}"
        ),
        202 => {
            let job = wait_job(c, s, key, v["job_id"].as_str().unwrap()).await;
            assert_eq!(job["result"]["failed"], 0, "{job}");
        }
        _ => panic!("ingest failed: {st} {v}"),
    }
}

/// Source id by title in the key's workspace.
async fn sources(c: &reqwest::Client, s: &Server, key: &str) -> BTreeMap<String, String> {
    let (st, v) = get(c, s, key, "/api/v1/sources?limit=1000").await;
    assert_eq!(st, 200, "{v}");
    v["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["title"].as_str().unwrap().to_string(),
                s["source_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Asserts that neither search nor ask in the key's workspace returns `word` (or any of
/// `gone` source ids).
async fn assert_forgotten(c: &reqwest::Client, s: &Server, key: &str, word: &str, gone: &[String]) {
    let (st, v) = json(
        c.get(s.url("/api/v1/search"))
            .query(&[("q", word), ("k", "20")])
            .bearer_auth(key),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    for r in v["results"].as_array().unwrap() {
        assert!(
            !r.to_string().to_lowercase().contains(word),
            "search still finds {word}: {r}"
        );
        assert!(!gone.iter().any(|g| r["source_id"] == g.as_str()), "{r}");
    }
    let (st, v) = ask(c, s, key, json!({"question": format!("What is {word}?")})).await;
    assert_eq!(st, 200, "{v}");
    assert!(
        !v.to_string().to_lowercase().contains(word),
        "ask still answers with {word}: {v}"
    );
}

async fn assert_found(c: &reqwest::Client, s: &Server, key: &str, word: &str) {
    let (st, v) = json(
        c.get(s.url("/api/v1/search"))
            .query(&[("q", word), ("k", "5")])
            .bearer_auth(key),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert!(
        v["results"].as_array().unwrap().iter().any(|r| r["snippet"]
            .as_str()
            .unwrap_or("")
            .to_lowercase()
            .contains(word)),
        "{word} should still be found: {v}"
    );
}

fn db(dir: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(dir.join("rag.db")).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

fn count(dir: &Path, sql: &str) -> i64 {
    db(dir).query_row(sql, [], |r| r.get(0)).unwrap()
}

fn fts_hits(dir: &Path, word: &str) -> i64 {
    db(dir)
        .query_row(
            "SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH ?1",
            [format!("body:{word}")],
            |r| r.get(0),
        )
        .unwrap()
}

fn audit_verifies(dir: &Path) {
    let c = db(dir);
    let report = rag_core::audit::verify(&c, None).unwrap();
    assert!(report.ok(), "audit chain broken: {:?}", report.problems);
}

async fn audit_actions(c: &reqwest::Client, s: &Server, key: &str, action: &str) -> Vec<Value> {
    let (st, v) = get(
        c,
        s,
        key,
        &format!("/api/v1/admin/audit?action={action}&limit=1000"),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    v["entries"].as_array().unwrap().clone()
}

/// A new workspace in the key's organization and a read/write/admin key for it.
async fn workspace_with_key(
    c: &reqwest::Client,
    s: &Server,
    admin: &str,
    name: &str,
) -> (String, String) {
    let (st, v) = json(
        c.post(s.url("/api/v1/admin/workspaces"))
            .bearer_auth(admin)
            .json(&json!({"name": name})),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let ws = v["workspace"]["id"].as_str().unwrap().to_string();
    let (st, k) = json(
        c.post(s.url("/api/v1/admin/keys"))
            .bearer_auth(admin)
            .json(&json!({"workspace_id": ws, "scopes": ["read", "write", "admin"]})),
    )
    .await;
    assert_eq!(st, 201, "{k}");
    (ws, k["api_key"].as_str().unwrap().to_string())
}

fn octal(field: &[u8]) -> usize {
    let s: String = field
        .iter()
        .take_while(|b| **b != 0 && **b != b' ')
        .map(|b| *b as char)
        .collect();
    usize::from_str_radix(s.trim(), 8).unwrap()
}

/// A tiny ustar reader: gunzip, then (name → bytes) with every header checksum checked.
fn untar(gz: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut raw)
        .unwrap();
    let mut out = BTreeMap::new();
    let mut at = 0;
    while at + 512 <= raw.len() && raw[at..at + 512].iter().any(|b| *b != 0) {
        let h = &raw[at..at + 512];
        let mut copy = h.to_vec();
        copy[148..156].copy_from_slice(b"        ");
        let sum: usize = copy.iter().map(|b| *b as usize).sum();
        assert_eq!(octal(&h[148..156]), sum, "header checksum");
        assert_eq!(&h[257..262], b"ustar");
        assert_eq!(h[156], b'0', "regular files only");
        let name: String = h[..100]
            .iter()
            .take_while(|b| **b != 0)
            .map(|b| *b as char)
            .collect();
        let size = octal(&h[124..136]);
        out.insert(name, raw[at + 512..at + 512 + size].to_vec());
        at += 512 + size.div_ceil(512) * 512;
    }
    assert!(raw[at..].iter().all(|b| *b == 0), "end-of-archive blocks");
    out
}

fn ndjson(bytes: &[u8]) -> Vec<Value> {
    std::str::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn export(c: &reqwest::Client, s: &Server, key: &str, ws: &str, query: &str) -> (u16, Value) {
    json(
        c.post(s.url(&format!("/api/v1/admin/workspaces/{ws}/export{query}")))
            .bearer_auth(key),
    )
    .await
}

/// Queues an export, waits for it, downloads it; returns (status document, archive).
async fn export_and_download(
    c: &reqwest::Client,
    s: &Server,
    key: &str,
    ws: &str,
    query: &str,
) -> (Value, Vec<u8>) {
    let (st, v) = export(c, s, key, ws, query).await;
    assert_eq!(st, 202, "{v}");
    for k in ["job_id", "export_id", "status", "request_id"] {
        assert!(v[k].is_string(), "{k} missing: {v}");
    }
    let export_id = v["export_id"].as_str().unwrap().to_string();
    wait_job(c, s, key, v["job_id"].as_str().unwrap()).await;
    let (st, info) = get(c, s, key, &format!("/api/v1/admin/exports/{export_id}")).await;
    assert_eq!(st, 200, "{info}");
    assert_eq!(info["status"], "ready", "{info}");
    let resp = c
        .get(s.url(info["download_url"].as_str().unwrap()))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "application/gzip");
    let disposition = h["content-disposition"].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment;") && disposition.contains(&export_id),
        "{disposition}"
    );
    let len: usize = h["content-length"].to_str().unwrap().parse().unwrap();
    // Read as a stream, chunk by chunk, the way a client saving to disk would.
    let mut resp = resp;
    let mut body = Vec::new();
    let mut pieces = 0;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
        pieces += 1;
    }
    assert!(pieces >= 1);
    assert_eq!(body.len(), len);
    assert_eq!(info["bytes"].as_u64().unwrap() as usize, len);
    let sha = hex::encode(Sha256::digest(&body));
    assert_eq!(h["x-checksum-sha256"].to_str().unwrap(), sha);
    assert_eq!(info["sha256"], sha.as_str());
    (info, body)
}

#[tokio::test]
async fn export_holds_exactly_one_workspace() {
    let dir = temp_dir("lc-export");
    let a = bootstrap(&dir);
    let s = Server::start_with(&dir, options(false, "null"));
    let c = client();
    let ka = &a.api_key;
    let (ws_b, kb) = workspace_with_key(&c, &s, ka, "bee").await;
    let (st, other) = json(
        c.post(s.url("/api/v1/admin/organizations"))
            .bearer_auth(ka)
            .json(&json!({"name": "Other", "owner_email": "o@example.test"})),
    )
    .await;
    assert_eq!(st, 201, "{other}");
    let ko = other["api_key"].as_str().unwrap().to_string();
    let ws_o = other["workspace_id"].as_str().unwrap().to_string();

    ingest(
        &c,
        &s,
        ka,
        &[
            (
                "Alpha one",
                "The zebracorn grazes near the alpha lighthouse every morning.",
            ),
            (
                "Alpha two",
                "Zebracorn herds migrate along the alpha coast.\n\n## Winter\nThey rest in caves.",
            ),
            ("Alpha gone", "A temporary note about the alpha harbour."),
        ],
    )
    .await;
    ingest(
        &c,
        &s,
        &kb,
        &[("Bee one", "The quokkaberry ripens in the bee valley.")],
    )
    .await;
    ingest(
        &c,
        &s,
        &ko,
        &[("Other one", "The marmotine sleeps under other mountains.")],
    )
    .await;
    let a_sources = sources(&c, &s, ka).await;
    // An A-side audit record that must be exported, and a source that must not be.
    let (st, _) = json(
        c.delete(s.url(&format!("/api/v1/sources/{}", a_sources["Alpha gone"])))
            .bearer_auth(ka),
    )
    .await;
    assert_eq!(st, 200);
    let a_sources = sources(&c, &s, ka).await;
    assert_eq!(a_sources.len(), 2);

    let started = Instant::now();
    let (info, body) = export_and_download(&c, &s, ka, &a.workspace_id, "").await;
    let elapsed = started.elapsed();
    let files = untar(&body);
    assert_eq!(
        files.keys().cloned().collect::<BTreeSet<_>>(),
        [
            "audit.ndjson",
            "chunks.ndjson",
            "manifest.json",
            "sources.ndjson"
        ]
        .into_iter()
        .map(String::from)
        .collect()
    );
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    assert_eq!(manifest["format"], "minirag-workspace-export");
    assert_eq!(manifest["format_version"], 1);
    assert_eq!(manifest["workspace"]["id"], a.workspace_id.as_str());
    assert_eq!(manifest["organization"]["id"], a.organization_id.as_str());
    assert_eq!(manifest["export_id"], info["export_id"]);
    assert_eq!(manifest["embeddings"]["included"], false);
    for m in manifest["members"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let data = &files[name];
        assert_eq!(m["bytes"].as_u64().unwrap() as usize, data.len(), "{name}");
        assert_eq!(
            m["sha256"],
            hex::encode(Sha256::digest(data)).as_str(),
            "{name}"
        );
        assert_eq!(
            m["records"].as_u64().unwrap() as usize,
            ndjson(data).len(),
            "{name}"
        );
    }

    let srcs = ndjson(&files["sources.ndjson"]);
    let ids: BTreeSet<String> = srcs
        .iter()
        .map(|s| s["source_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, a_sources.values().cloned().collect());
    assert_eq!(manifest["counts"]["sources"], 2);
    let chunks = ndjson(&files["chunks.ndjson"]);
    assert_eq!(manifest["counts"]["chunks"], chunks.len());
    assert!(
        chunks
            .iter()
            .all(|ch| ids.contains(ch["source_id"].as_str().unwrap()))
    );
    assert!(chunks.iter().all(|ch| ch.get("embedding_i8").is_none()));
    let all_text = String::from_utf8_lossy(&body_of(&files)).to_lowercase();
    assert!(all_text.contains("zebracorn"));
    for foreign in [
        "quokkaberry",
        "marmotine",
        "temporary note",
        "bee one",
        "other one",
    ] {
        assert!(
            !all_text.contains(foreign),
            "{foreign} leaked into A's export"
        );
    }
    let audit = ndjson(&files["audit.ndjson"]);
    assert!(!audit.is_empty());
    assert!(
        audit
            .iter()
            .all(|r| r["workspace_id"] == a.workspace_id.as_str())
    );
    assert!(audit.iter().any(|r| r["action"] == "source.deleted"));
    assert!(!audit.iter().any(|r| r["workspace_id"] == ws_b.as_str()));

    // Recorded: the export and its download.
    let exported = audit_actions(&c, &s, ka, "workspace.exported").await;
    assert_eq!(exported.len(), 1);
    assert_eq!(exported[0]["target"], info["export_id"]);
    assert_eq!(exported[0]["after"]["sha256"], info["sha256"]);
    assert_eq!(
        audit_actions(&c, &s, ka, "export.downloaded").await.len(),
        1
    );

    // With embeddings, on request.
    let (_, body) =
        export_and_download(&c, &s, ka, &a.workspace_id, "?include_embeddings=true").await;
    let files = untar(&body);
    let chunks = ndjson(&files["chunks.ndjson"]);
    assert!(
        chunks
            .iter()
            .all(|ch| ch["embedding_i8"].is_string() && ch["embedder"].is_string())
    );

    // Another organization: its workspace cannot be exported, its exports cannot be seen.
    let (st, v) = export(&c, &s, ka, &ws_o, "").await;
    assert_eq!(st, 404, "{v}");
    let (st, v) = export(&c, &s, &ko, &ws_o, "").await;
    assert_eq!(st, 202, "{v}");
    let foreign = v["export_id"].as_str().unwrap().to_string();
    wait_job(&c, &s, &ko, v["job_id"].as_str().unwrap()).await;
    for path in [
        format!("/api/v1/admin/exports/{foreign}"),
        format!("/api/v1/admin/exports/{foreign}/download"),
    ] {
        let (st, v) = get(&c, &s, ka, &path).await;
        assert_eq!(st, 404, "{path}: {v}");
    }
    let (st, _) = get(&c, &s, ka, "/api/v1/admin/exports/../../etc/passwd").await;
    assert_eq!(st, 404);
    // Non-admin keys are refused.
    let (st, k) = json(
        c.post(s.url("/api/v1/admin/keys"))
            .bearer_auth(ka)
            .json(&json!({"scopes": ["read", "write"]})),
    )
    .await;
    assert_eq!(st, 201);
    let (st, _) = export(&c, &s, k["api_key"].as_str().unwrap(), &a.workspace_id, "").await;
    assert_eq!(st, 403);
    let dir_files: Vec<String> = std::fs::read_dir(dir.join("exports"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        dir_files.iter().all(|f| f.ends_with(".tar.gz")),
        "no work files left behind: {dir_files:?}"
    );
    eprintln!(
        "export of {} chunks: {} bytes in {:?}",
        manifest["counts"]["chunks"], info["bytes"], elapsed
    );
    audit_verifies(&dir);
    assert_log_schema(&s.log_lines());
}

fn body_of(files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    files.values().flatten().copied().collect()
}

#[tokio::test]
async fn deletions_forget_content_and_leave_the_rest() {
    let dir = temp_dir("lc-delete");
    let a = bootstrap(&dir);
    // Jobs on: ingest runs as jobs, so job payloads hold document text to be removed.
    let s = Server::start_with(&dir, options(true, "null"));
    let c = client();
    let ka = &a.api_key;
    let (ws_b, kb) = workspace_with_key(&c, &s, ka, "bee").await;
    let (ws_c, kc) = workspace_with_key(&c, &s, ka, "sea").await;

    ingest(
        &c,
        &s,
        ka,
        &[
            (
                "Keep A",
                "The lighthouse keeper logs the tides of the alpha coast.",
            ),
            (
                "Narwhal",
                "The narwhalfig is a sweet fruit grown on the northern shore.",
            ),
        ],
    )
    .await;
    let mut bee_docs = Vec::new();
    for i in 0..12 {
        bee_docs.push((
            format!("Bee {i}"),
            format!("Wombatquince orchard {i}: the wombatquince trees bloom in spring, row {i}."),
        ));
    }
    let bee_refs: Vec<(&str, &str)> = bee_docs
        .iter()
        .map(|(t, x)| (t.as_str(), x.as_str()))
        .collect();
    ingest(&c, &s, &kb, &bee_refs).await;
    ingest(
        &c,
        &s,
        &kc,
        &[(
            "Keep C",
            "The cormorant dives for herring in the sea workspace.",
        )],
    )
    .await;
    let b_seq: i64 = db(&dir)
        .query_row("SELECT seq FROM workspaces WHERE id = ?1", [&ws_b], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(fts_hits(&dir, "wombatquince") > 0);
    assert!(
        count(
            &dir,
            "SELECT count(*) FROM jobs WHERE payload LIKE '%wombatquince%'"
        ) > 0
    );

    // (a) One source.
    let narwhal = sources(&c, &s, ka).await["Narwhal"].clone();
    assert_found(&c, &s, ka, "narwhalfig").await;
    let (st, v) = json(
        c.delete(s.url(&format!("/api/v1/sources/{narwhal}")))
            .bearer_auth(ka)
            .header("x-request-id", "delete-narwhal"),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_forgotten(&c, &s, ka, "narwhalfig", std::slice::from_ref(&narwhal)).await;
    assert_eq!(fts_hits(&dir, "narwhalfig"), 0);
    let rec = audit_actions(&c, &s, ka, "source.deleted").await;
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0]["target"], narwhal.as_str());
    assert_eq!(rec[0]["request_id"], "delete-narwhal");
    assert_eq!(rec[0]["before"]["title"], "Narwhal");
    assert!(
        !rec[0].to_string().contains("narwhalfig"),
        "no text in audit"
    );

    // (b) A workspace: refusals first.
    let (st, v) = json(
        c.delete(s.url(&format!("/api/v1/admin/workspaces/{}", a.workspace_id)))
            .bearer_auth(ka),
    )
    .await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["error"], "own_workspace");
    let (st, _) = json(
        c.delete(s.url("/api/v1/admin/workspaces/ws_0000000000000000"))
            .bearer_auth(ka),
    )
    .await;
    assert_eq!(st, 404);
    assert_found(&c, &s, &kb, "wombatquince").await;
    let started = Instant::now();
    let (st, v) = json(
        c.delete(s.url(&format!("/api/v1/admin/workspaces/{ws_b}")))
            .bearer_auth(ka),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["status"], "deleting");
    assert_eq!(v["sources"], 12);
    // Unreachable at once: its keys are revoked in the request's transaction.
    let (st, _) = json(
        c.get(s.url("/api/v1/search?q=wombatquince"))
            .bearer_auth(&kb),
    )
    .await;
    assert_eq!(st, 401);
    let job = wait_job(&c, &s, ka, v["job_id"].as_str().unwrap()).await;
    let delete_time = started.elapsed();
    assert_eq!(job["result"]["sources"], 12, "{job}");
    // A repeated request finds nothing left.
    let (st, _) = json(
        c.delete(s.url(&format!("/api/v1/admin/workspaces/{ws_b}")))
            .bearer_auth(ka),
    )
    .await;
    assert_eq!(st, 404);
    let (_, list) = get(&c, &s, ka, "/api/v1/admin/workspaces").await;
    assert!(!list.to_string().contains(&ws_b), "{list}");
    assert_eq!(fts_hits(&dir, "wombatquince"), 0);
    assert_eq!(
        count(
            &dir,
            &format!("SELECT count(*) FROM chunks WHERE ws = {b_seq}")
        ),
        0
    );
    assert_eq!(
        count(
            &dir,
            &format!("SELECT count(*) FROM sources WHERE ws = {b_seq}")
        ),
        0
    );
    assert_eq!(
        count(
            &dir,
            &format!("SELECT count(*) FROM api_keys WHERE workspace_id = '{ws_b}'")
        ),
        0
    );
    assert_eq!(
        count(
            &dir,
            "SELECT count(*) FROM jobs WHERE payload LIKE '%wombatquince%' OR result LIKE '%wombatquince%'"
        ),
        0
    );
    let deleted = audit_actions(&c, &s, ka, "workspace.deleted").await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0]["after"]["sources"], 12);
    assert_eq!(
        audit_actions(&c, &s, ka, "workspace.delete_requested")
            .await
            .len(),
        1
    );
    // Physically: no live row holds it now; fragments SQLite leaves in the unused space
    // of live pages (b-tree rebalancing does not zero it, even with secure_delete) are
    // gone after the VACUUM docs/data-lifecycle.md recommends for strict erasure.
    {
        let conn = db(&dir);
        conn.execute_batch("VACUUM").unwrap();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
    }
    let raw = std::fs::read(dir.join("rag.db")).unwrap();
    // A short needle: the FTS index stores terms prefix-compressed (stemmed
    // "wombatquinc" may sit there as "ombatquinc" after a term starting with "w").
    assert!(
        !raw.windows(7).any(|w| w.eq_ignore_ascii_case(b"batquin")),
        "deleted text still in the database file after VACUUM"
    );
    // The others are untouched.
    assert_found(&c, &s, ka, "lighthouse").await;
    assert_found(&c, &s, &kc, "cormorant").await;
    let (_, other) = get(&c, &s, &kc, "/api/v1/sources").await;
    assert_eq!(other["total"], 1);

    // (c) A user's data: an editor ingests in two workspaces.
    let (st, u) = json(
        c.post(s.url("/api/v1/admin/users"))
            .bearer_auth(ka)
            .json(&json!({"email": "ed@example.test", "role": "editor"})),
    )
    .await;
    assert_eq!(st, 201, "{u}");
    let uid = u["user"]["id"].as_str().unwrap().to_string();
    let mut ukeys = Vec::new();
    for ws in [&a.workspace_id, &ws_c] {
        let (st, k) = json(
            c.post(s.url("/api/v1/admin/keys"))
                .bearer_auth(ka)
                .json(&json!({"workspace_id": ws, "user_id": uid, "scopes": ["read", "write"]})),
        )
        .await;
        assert_eq!(st, 201, "{k}");
        ukeys.push(k["api_key"].as_str().unwrap().to_string());
    }
    ingest(
        &c,
        &s,
        &ukeys[0],
        &[(
            "Ed A",
            "The platypuslemon tart recipe from the alpha bakery.",
        )],
    )
    .await;
    ingest(
        &c,
        &s,
        &ukeys[1],
        &[(
            "Ed C",
            "Axolotlpear jam is made in the sea workspace kitchen.",
        )],
    )
    .await;
    let (_, listed) = get(&c, &s, ka, "/api/v1/sources").await;
    let ed_a = listed["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["title"] == "Ed A")
        .unwrap()
        .clone();
    assert_eq!(ed_a["ingested_by"], uid.as_str());
    assert_found(&c, &s, ka, "platypuslemon").await;
    let (st, v) = json(
        c.delete(s.url(&format!("/api/v1/admin/users/{uid}/data")))
            .bearer_auth(&ukeys[0]),
    )
    .await;
    assert_eq!(st, 403, "an editor is no admin: {v}");
    let (st, v) = json(
        c.delete(s.url(&format!("/api/v1/admin/users/{uid}/data")))
            .bearer_auth(ka),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["sources"], 2);
    assert_eq!(v["keys_removed"], 2);
    for k in &ukeys {
        let (st, _) = json(c.get(s.url("/api/v1/sources")).bearer_auth(k)).await;
        assert_eq!(st, 401);
    }
    wait_job(&c, &s, ka, v["job_id"].as_str().unwrap()).await;
    assert_forgotten(&c, &s, ka, "platypuslemon", &[]).await;
    assert_forgotten(&c, &s, &kc, "axolotlpear", &[]).await;
    assert_eq!(
        fts_hits(&dir, "platypuslemon") + fts_hits(&dir, "axolotlpear"),
        0
    );
    assert_eq!(
        count(
            &dir,
            "SELECT count(*) FROM jobs WHERE payload LIKE '%platypuslemon%'"
        ),
        0
    );
    let (_, users) = get(&c, &s, ka, "/api/v1/admin/users").await;
    assert!(!users.to_string().contains(&uid) && !users.to_string().contains("ed@example.test"));
    assert_found(&c, &s, ka, "lighthouse").await;
    assert_found(&c, &s, &kc, "cormorant").await;
    assert_eq!(audit_actions(&c, &s, ka, "user.deleted").await.len(), 1);
    let batches = audit_actions(&c, &s, ka, "user.sources_deleted").await;
    assert_eq!(
        batches
            .iter()
            .map(|r| r["after"]["sources"].as_i64().unwrap())
            .sum::<i64>(),
        2
    );
    let (st, _) = json(
        c.delete(s.url(&format!("/api/v1/admin/users/{uid}/data")))
            .bearer_auth(ka),
    )
    .await;
    assert_eq!(st, 404);
    eprintln!("workspace delete of 12 sources (batch 7 chunks): {delete_time:?}");
    audit_verifies(&dir);
    assert_log_schema(&s.log_lines());
}

#[tokio::test]
async fn retention_removes_old_content_expired_exports_and_old_logs() {
    let dir = temp_dir("lc-retention");
    let a = bootstrap(&dir);
    let s = Server::start_with(&dir, options(false, "null"));
    let c = client();
    let ka = &a.api_key;
    let (_ws_b, kb) = workspace_with_key(&c, &s, ka, "bee").await;
    ingest(
        &c,
        &s,
        ka,
        &[
            (
                "Old A",
                "The dodoancient scroll describes the first harbour.",
            ),
            ("New A", "The freshkiwi market opens every Saturday."),
        ],
    )
    .await;
    ingest(
        &c,
        &s,
        &kb,
        &[("Old B", "The oldbutkept map of the bee valley.")],
    )
    .await;

    // The policy API.
    let path = format!("/api/v1/admin/workspaces/{}/retention", a.workspace_id);
    let (st, v) = json(
        c.put(s.url(&path))
            .bearer_auth(ka)
            .json(&json!({"days": 0})),
    )
    .await;
    assert_eq!(st, 422, "{v}");
    let (st, v) = json(
        c.put(s.url(&path))
            .bearer_auth(ka)
            .json(&json!({"days": 30})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["effective_retention_days"], 30);
    let (st, v) = get(&c, &s, ka, &path).await;
    assert_eq!((st, v["retention_days"].clone()), (200, json!(30)));
    let (st, o) = json(
        c.post(s.url("/api/v1/admin/organizations"))
            .bearer_auth(ka)
            .json(&json!({"name": "Other", "owner_email": "o@example.test"})),
    )
    .await;
    assert_eq!(st, 201);
    let foreign = format!(
        "/api/v1/admin/workspaces/{}/retention",
        o["workspace_id"].as_str().unwrap()
    );
    let (st, _) = json(
        c.put(s.url(&foreign))
            .bearer_auth(ka)
            .json(&json!({"days": 1})),
    )
    .await;
    assert_eq!(st, 404);
    assert_eq!(
        audit_actions(&c, &s, ka, "workspace.retention_changed")
            .await
            .len(),
        1
    );

    // An export that will have expired by the restart.
    let (_, body) = export_and_download(&c, &s, ka, &a.workspace_id, "").await;
    assert!(!body.is_empty());
    let (_, exports) = get(&c, &s, ka, "/api/v1/admin/audit?action=workspace.exported").await;
    let export_id = exports["entries"][0]["target"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(s.terminate());

    // Time passes (honestly, in the data): two sources and the export become old while
    // the server is down, and rotated log files of different ages lie in the log dir.
    {
        let c = db(&dir);
        c.execute(
            "UPDATE sources SET created_at = '2001-01-01T00:00:00.000Z' WHERE title IN ('Old A', 'Old B')",
            [],
        )
        .unwrap();
        let past = (chrono::Utc::now() - chrono::Duration::minutes(5))
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string();
        c.execute("UPDATE exports SET expires_at = ?1", [past])
            .unwrap();
    }
    let logs = dir.join("logs");
    let old = SystemTime::now() - Duration::from_secs(30 * 86_400);
    for (name, mtime) in [
        ("rag.log.5", Some(old)),
        (
            "rag.log.4",
            Some(SystemTime::now() - Duration::from_secs(86_400)),
        ),
        ("notes.log.1", Some(old)),
    ] {
        let f = std::fs::File::create(logs.join(name)).unwrap();
        if let Some(t) = mtime {
            f.set_modified(t).unwrap();
        }
    }
    std::fs::File::options()
        .append(true)
        .open(logs.join("rag.log"))
        .unwrap()
        .set_modified(old)
        .unwrap();

    let s = Server::start_with(&dir, options(false, "1s"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while sources(&c, &s, ka).await.contains_key("Old A") {
        assert!(Instant::now() < deadline, "retention did not run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a_left = sources(&c, &s, ka).await;
    assert!(a_left.contains_key("New A"), "{a_left:?}");
    assert_forgotten(&c, &s, ka, "dodoancient", &[]).await;
    assert_eq!(fts_hits(&dir, "dodoancient"), 0);
    // No policy in B and no default: kept however old.
    assert!(sources(&c, &s, &kb).await.contains_key("Old B"));
    let applied = audit_actions(&c, &s, ka, "retention.applied").await;
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert_eq!(applied[0]["actor"], "system:retention");
    assert_eq!(applied[0]["after"]["sources"], 1);
    assert_eq!(applied[0]["workspace_id"], a.workspace_id.as_str());

    // The export expired: gone from disk, 410 on download.
    let deadline = Instant::now() + Duration::from_secs(10);
    while dir
        .join("exports")
        .join(format!("{export_id}.tar.gz"))
        .exists()
    {
        assert!(Instant::now() < deadline, "expired export file still there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (st, v) = get(&c, &s, ka, &format!("/api/v1/admin/exports/{export_id}")).await;
    assert_eq!((st, v["status"].as_str()), (200, Some("expired")), "{v}");
    let (st, v) = get(
        &c,
        &s,
        ka,
        &format!("/api/v1/admin/exports/{export_id}/download"),
    )
    .await;
    assert_eq!(st, 410, "{v}");

    // Log retention: only rotated copies past 14 days; never the active file.
    assert!(!logs.join("rag.log.5").exists());
    assert!(logs.join("rag.log.4").exists());
    assert!(logs.join("notes.log.1").exists());
    assert!(logs.join("rag.log").exists());
    assert!(
        s.log_lines()
            .iter()
            .any(|l| l["event"] == "log.retention.removed" && l["file"] == "rag.log.5")
    );
    audit_verifies(&dir);
    assert_log_schema(&s.log_lines());
}

/// Measures export and deletion on a larger workspace:
/// `LIFECYCLE_BENCH_DOCS=20000 cargo test -p rag-core --release --test lifecycle -- --ignored --nocapture`
#[tokio::test]
#[ignore]
async fn measure_large_workspace() {
    let docs: usize = std::env::var("LIFECYCLE_BENCH_DOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let dir = temp_dir("lc-bench");
    let a = bootstrap(&dir);
    let s = Server::start_with(
        &dir,
        Options {
            config_yaml: Some(
                "limits:\n  max_documents_per_request: 500\nlifecycle:\n  schedule_every: null\n"
                    .into(),
            ),
            ..Options::default()
        },
    );
    let c = client();
    let (ws, kb) = workspace_with_key(&c, &s, &a.api_key, "big").await;
    let started = Instant::now();
    for batch in 0..docs.div_ceil(500) {
        let n = 500.min(docs - batch * 500);
        let d: Vec<Value> = (0..n)
            .map(|i| {
                let k = batch * 500 + i;
                json!({"title": format!("Doc {k}"), "text": format!(
                    "Document {k} about topic {} with several sentences of filler text. \
                     It mentions harbour {} and the season {}. Another line follows here.", k % 97, k % 31, k % 4)})
            })
            .collect();
        let (st, v) = ingest_text(&c, &s, &kb, json!(d)).await;
        assert_eq!(st, 200, "{v}");
    }
    eprintln!("ingested {docs} documents in {:?}", started.elapsed());
    let t = Instant::now();
    let (info, body) = export_and_download(&c, &s, &a.api_key, &ws, "").await;
    eprintln!(
        "export: {} chunks, {} bytes gz, {:?} (incl. download)",
        info["counts"]["chunks"],
        body.len(),
        t.elapsed()
    );
    let t = Instant::now();
    let (st, v) = json(
        c.delete(s.url(&format!("/api/v1/admin/workspaces/{ws}")))
            .bearer_auth(&a.api_key),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    wait_job(&c, &s, &a.api_key, v["job_id"].as_str().unwrap()).await;
    eprintln!("workspace delete: {:?}", t.elapsed());
}
