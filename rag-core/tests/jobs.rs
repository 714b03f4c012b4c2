//! Background jobs against the real binary: retries, dead letters, idempotency,
//! cancellation, crash recovery, concurrency, schedules and workspace scoping.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn config(extra: &str) -> Options {
    let yaml = format!(
        r#"
jobs:
  enabled: true
  concurrency: 2
  lease_seconds: 2
  poll_interval_ms: 50
  default_retry:
    max_attempts: 3
    initial_backoff_ms: 300
    max_backoff_ms: 5000
    jitter: 0.0
  testing:
    enabled: true
{extra}
"#
    );
    Options {
        config_yaml: Some(yaml),
        ..Options::default()
    }
}

async fn submit_test(
    c: &reqwest::Client,
    s: &Server,
    key: &str,
    payload: Value,
    idem: Option<&str>,
) -> (u16, Value) {
    let mut req = c
        .post(s.url("/api/v1/jobs"))
        .bearer_auth(key)
        .json(&json!({"name": "test", "payload": payload}));
    if let Some(k) = idem {
        req = req.header("Idempotency-Key", k);
    }
    json(req).await
}

async fn get_job(c: &reqwest::Client, s: &Server, key: &str, id: &str) -> (u16, Value) {
    json(c.get(s.url(&format!("/api/v1/jobs/{id}"))).bearer_auth(key)).await
}

/// Polls until the job's status satisfies `done` (or panics after `secs`).
async fn wait_for(
    c: &reqwest::Client,
    s: &Server,
    key: &str,
    id: &str,
    secs: u64,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (st, v) = get_job(c, s, key, id).await;
        assert_eq!(st, 200, "{v}");
        if done(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "job did not get there in time: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn status_is(s: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["status"] == s
}

fn events<'a>(lines: &'a [Value], event: &str, job_id: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["event"] == event && l["job_id"] == job_id)
        .collect()
}

#[tokio::test]
async fn retries_with_backoff_then_success() {
    let dir = temp_dir("jobs-retry");
    let b = bootstrap(&dir);
    let s = Server::start_with(&dir, config(""));
    let c = client();
    let (st, v) = submit_test(&c, &s, &b.api_key, json!({"fail_attempts": 2}), None).await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["status"], "queued");
    let rid = v["request_id"].as_str().unwrap().to_string();
    let id = v["job_id"].as_str().unwrap().to_string();
    let started = Instant::now();
    let job = wait_for(&c, &s, &b.api_key, &id, 20, status_is("succeeded")).await;
    // Backoff 300 ms then 600 ms (no jitter in this config).
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(job["attempts"], 3);
    assert_eq!(job["result"]["attempt"], 3);
    let lines = s.log_lines();
    let retrying = events(&lines, "job.retrying", &id);
    assert_eq!(retrying.len(), 2, "{retrying:?}");
    assert_eq!(events(&lines, "job.failed", &id).len(), 2);
    for e in retrying
        .iter()
        .chain(events(&lines, "job.succeeded", &id).iter())
        .chain(events(&lines, "job.submitted", &id).iter())
        .chain(events(&lines, "job.started", &id).iter())
    {
        assert_eq!(
            e["request_id"],
            rid.as_str(),
            "job log lines carry the submitting request id: {e}"
        );
    }
    let metrics = scrape(&c, &s).await;
    assert!(
        metrics.contains(r#"background_jobs_completed_total{name="test",status="failed"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"background_jobs_completed_total{name="test",status="succeeded"} 1"#)
    );
    assert!(metrics.contains(r#"background_jobs_submitted_total{name="test"} 1"#));
    assert_log_schema(&s.log_lines());
    assert!(
        metrics.contains(r#"background_job_duration_seconds_bucket{le="0.1",name="test"}"#)
            || metrics.contains(r#"background_job_duration_seconds_bucket{name="test",le="0.1"}"#)
    );
}

#[tokio::test]
async fn exhausted_retries_are_dead_lettered_and_can_be_retried() {
    let dir = temp_dir("jobs-dead");
    let b = bootstrap(&dir);
    let s = Server::start_with(&dir, config(""));
    let c = client();
    let (_, v) = submit_test(&c, &s, &b.api_key, json!({"fail_attempts": 3}), None).await;
    let id = v["job_id"].as_str().unwrap().to_string();
    let job = wait_for(&c, &s, &b.api_key, &id, 20, status_is("dead_lettered")).await;
    assert_eq!(job["attempts"], 3);
    assert_eq!(job["error"], "injected failure on attempt 3");
    assert_eq!(events(&s.log_lines(), "job.dead_lettered", &id).len(), 1);
    let (st, v) = json(
        c.get(s.url("/api/v1/jobs?status=dead_lettered"))
            .bearer_auth(&b.api_key),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["jobs"].as_array().unwrap().len(), 1);

    // Retrying a job that is not dead-lettered is refused.
    let (_, ok) = submit_test(&c, &s, &b.api_key, json!({}), None).await;
    let ok_id = ok["job_id"].as_str().unwrap();
    wait_for(&c, &s, &b.api_key, ok_id, 10, status_is("succeeded")).await;
    let (st, _) = json(
        c.post(s.url(&format!("/api/v1/jobs/{ok_id}/retry")))
            .bearer_auth(&b.api_key),
    )
    .await;
    assert_eq!(st, 409);

    // From the dead letter: back to the queue with a new budget; attempt 4 succeeds.
    let (st, v) = json(
        c.post(s.url(&format!("/api/v1/jobs/{id}/retry")))
            .bearer_auth(&b.api_key),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let job = wait_for(&c, &s, &b.api_key, &id, 20, status_is("succeeded")).await;
    assert_eq!(job["attempts"], 4);
    assert_eq!(job["error"], Value::Null);

    // A permanent failure skips the retries.
    let (_, v) = submit_test(
        &c,
        &s,
        &b.api_key,
        json!({"fail_attempts": 1, "fail_permanently": true}),
        None,
    )
    .await;
    let pid = v["job_id"].as_str().unwrap();
    let job = wait_for(&c, &s, &b.api_key, pid, 10, status_is("dead_lettered")).await;
    assert_eq!(job["attempts"], 1);
}

#[tokio::test]
async fn idempotency_keys_return_the_same_job() {
    let dir = temp_dir("jobs-idem");
    let b = bootstrap(&dir);
    let s = Server::start_with(&dir, config(""));
    let c = client();
    let (st1, v1) = submit_test(&c, &s, &b.api_key, json!({}), Some("key-1")).await;
    let (st2, v2) = submit_test(&c, &s, &b.api_key, json!({}), Some("key-1")).await;
    let (st3, v3) = submit_test(&c, &s, &b.api_key, json!({}), Some("key-2")).await;
    assert_eq!((st1, st2, st3), (202, 200, 202));
    assert_eq!(v1["job_id"], v2["job_id"]);
    assert_eq!(v2["duplicate"], true);
    assert_ne!(v1["job_id"], v3["job_id"]);

    // Queued ingest honours the key too: one job, the documents stored once.
    let doc = json!({"documents": [{"title": "Idem", "text": "Kestrels hover over the meadow before diving."}]});
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (st, v) = json(
            c.post(s.url("/api/v1/ingest/text"))
                .bearer_auth(&b.api_key)
                .header("Idempotency-Key", "ingest-1")
                .json(&doc),
        )
        .await;
        assert!(st == 202 || st == 200, "{st} {v}");
        ids.push(v["job_id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids[0], ids[1]);
    let job = wait_for(&c, &s, &b.api_key, &ids[0], 20, status_is("succeeded")).await;
    assert_eq!(job["result"]["ingested"], 1);
    let (_, jobs) = json(
        c.get(s.url("/api/v1/jobs?type=ingest_text"))
            .bearer_auth(&b.api_key),
    )
    .await;
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1);
    let m = scrape(&c, &s).await;
    assert!(
        m.contains(r#"background_jobs_submitted_total{name="test"} 2"#),
        "{m}"
    );
}

#[tokio::test]
async fn cancellation_of_running_and_queued_jobs() {
    let dir = temp_dir("jobs-cancel");
    let b = bootstrap(&dir);
    let s = Server::start_with(&dir, config(""));
    let c = client();
    let long = json!({"steps": 200, "step_ms": 50});
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (_, v) = submit_test(&c, &s, &b.api_key, long.clone(), None).await;
        ids.push(v["job_id"].as_str().unwrap().to_string());
    }
    // Two run (concurrency 2), the third waits.
    let running = wait_for(&c, &s, &b.api_key, &ids[0], 10, |v| {
        v["status"] == "running" && v["progress"]["done"].as_i64().unwrap_or(0) >= 2
    })
    .await;
    assert_eq!(running["progress"]["total"], 200);
    wait_for(&c, &s, &b.api_key, &ids[1], 10, status_is("running")).await;
    let (_, queued) = get_job(&c, &s, &b.api_key, &ids[2]).await;
    assert_eq!(queued["status"], "queued");

    let (st, v) = json(
        c.post(s.url(&format!("/api/v1/jobs/{}/cancel", ids[2])))
            .bearer_auth(&b.api_key),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["status"], "cancelled", "a queued job ends at once");

    let (st, v) = json(
        c.post(s.url(&format!("/api/v1/jobs/{}/cancel", ids[0])))
            .bearer_auth(&b.api_key),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["cancel_requested"], true);
    let t = Instant::now();
    let job = wait_for(&c, &s, &b.api_key, &ids[0], 5, status_is("cancelled")).await;
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(job["progress"]["done"].as_i64().unwrap() < 200);

    let (st, v) = json(
        c.post(s.url(&format!("/api/v1/jobs/{}/cancel", ids[0])))
            .bearer_auth(&b.api_key),
    )
    .await;
    assert_eq!(st, 409, "{v}");
    // The cancelled third job never ran.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, v) = get_job(&c, &s, &b.api_key, &ids[2]).await;
    assert_eq!(v["status"], "cancelled");
    assert_eq!(v["attempts"], 0);
}

#[tokio::test]
async fn concurrency_limit_is_respected() {
    let dir = temp_dir("jobs-conc");
    let b = bootstrap(&dir);
    let s = Server::start_with(&dir, config(""));
    let c = client();
    let mut ids = Vec::new();
    for _ in 0..6 {
        let (_, v) = submit_test(
            &c,
            &s,
            &b.api_key,
            json!({"steps": 3, "step_ms": 100}),
            None,
        )
        .await;
        ids.push(v["job_id"].as_str().unwrap().to_string());
    }
    let mut spans = Vec::new();
    for id in &ids {
        let j = wait_for(&c, &s, &b.api_key, id, 30, status_is("succeeded")).await;
        spans.push((
            j["result"]["started_ms"].as_i64().unwrap(),
            j["result"]["finished_ms"].as_i64().unwrap(),
        ));
    }
    let max_overlap = spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(s2, e2)| s2 <= start && start < e2)
                .count()
        })
        .max()
        .unwrap();
    assert_eq!(max_overlap, 2, "{spans:?}");
}

async fn source_count(c: &reqwest::Client, s: &Server, key: &str) -> i64 {
    let (_, v) = json(c.get(s.url("/api/v1/sources?limit=1")).bearer_auth(key)).await;
    v["total"].as_i64().unwrap()
}

#[tokio::test]
async fn kill_9_mid_ingest_resumes_after_restart_and_stores_once() {
    let dir = temp_dir("jobs-kill");
    let b = bootstrap(&dir);
    let extra = "  ingest_batch_size: 5\n";
    let cfg = || {
        let mut o = config(extra);
        let y = o.config_yaml.take().unwrap().replace(
            "    enabled: true\n",
            "    enabled: true\n    ingest_batch_delay_ms: 400\n",
        );
        o.config_yaml = Some(y);
        o
    };
    let s = Server::start_with(&dir, cfg());
    let c = client();
    let docs: Vec<Value> = (0..40)
        .map(|i| json!({"title": format!("Doc {i}"), "text": format!("Document number {i} talks about topic {i} and nothing else. Word{i}x appears once.")}))
        .collect();
    let (st, v) = json(
        c.post(s.url("/api/v1/ingest/text"))
            .bearer_auth(&b.api_key)
            .json(&json!({"documents": docs})),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    let id = v["job_id"].as_str().unwrap().to_string();
    let mid = wait_for(&c, &s, &b.api_key, &id, 20, |v| {
        v["progress"]["done"].as_i64().unwrap_or(0) >= 10
    })
    .await;
    assert_eq!(mid["status"], "running");
    assert_eq!(mid["progress"]["total"], 40);
    s.kill9();

    let s = Server::start_with(&dir, cfg());
    let job = wait_for(&c, &s, &b.api_key, &id, 60, status_is("succeeded")).await;
    assert_eq!(job["attempts"], 2, "the crashed attempt counts: {job}");
    assert_eq!(job["progress"]["done"], 40);
    assert_eq!(source_count(&c, &s, &b.api_key).await, 40);
    let ingested = job["result"]["ingested"].as_u64().unwrap();
    let skipped = job["result"]["skipped"].as_u64().unwrap();
    assert_eq!(ingested + skipped, 40, "{job}");
    // Every document is findable exactly once.
    let (_, v) = json(
        c.get(s.url("/api/v1/search?q=Word33x"))
            .bearer_auth(&b.api_key),
    )
    .await;
    let text_hits = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| !h["bm25_rank"].is_null())
        .count();
    assert_eq!(text_hits, 1, "{v}");
    assert_log_schema(&s.log_lines());
}

#[tokio::test]
async fn schedules_fire_once_per_slot() {
    let dir = temp_dir("jobs-sched");
    bootstrap(&dir);
    let extra = "  schedules:\n    - {name: cleanup, job: retention, every: 1s}\n    - {name: optimize, job: reindex, every: 1h}\n";
    // Hourly slots are aligned to the epoch: a run that straddles an hour boundary
    // legitimately runs the hourly job once more, so that check needs a steady hour.
    let hour = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 3600
    };
    let hour_at_start = hour();
    let s = Server::start_with(&dir, config(extra));
    let started = std::time::Instant::now();
    let done = |lines: &[serde_json::Value], name: &str| {
        lines
            .iter()
            .filter(|l| l["event"] == "job.succeeded" && l["job_name"] == name)
            .count()
    };
    // Poll rather than sleep a fixed time: a loaded CI machine may start workers late.
    let mut lines = s.log_lines();
    while done(&lines, "retention") < 3 && started.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        lines = s.log_lines();
    }
    let retention = done(&lines, "retention");
    // One run per 1-second slot: at most one more than the whole seconds elapsed.
    let bound = started.elapsed().as_secs() as usize + 2;
    assert!(
        (3..=bound).contains(&retention),
        "retention ran {retention} times in {:?}",
        started.elapsed()
    );
    if hour() == hour_at_start {
        assert_eq!(done(&lines, "reindex"), 1);
    }
    assert_log_schema(&lines);
    // A restart inside the same hour does not run the hourly job again.
    drop(s);
    let s = Server::start_with(&dir, config(extra));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = s
        .log_lines()
        .iter()
        .filter(|l| l["event"] == "job.submitted" && l["job_name"] == "reindex")
        .count();
    if hour() == hour_at_start {
        assert_eq!(again, 0);
    }
}

#[tokio::test]
async fn jobs_are_workspace_scoped() {
    let dir = temp_dir("jobs-scope");
    let a = bootstrap(&dir);
    let s = Server::start_with(&dir, config(""));
    let c = client();
    let (st, ws2) = json(
        c.post(s.url("/api/v1/admin/workspaces"))
            .bearer_auth(&a.api_key)
            .json(&json!({"name": "second"})),
    )
    .await;
    assert_eq!(st, 201);
    let ws2_id = ws2["workspace"]["id"].as_str().unwrap().to_string();
    let (st, k) = json(
        c.post(s.url("/api/v1/admin/keys"))
            .bearer_auth(&a.api_key)
            .json(&json!({"workspace_id": ws2_id, "scopes": ["read", "write"]})),
    )
    .await;
    assert_eq!(st, 201, "{k}");
    let k2 = k["api_key"]
        .as_str()
        .or(k["key"]["api_key"].as_str())
        .unwrap()
        .to_string();

    let (_, v) = submit_test(
        &c,
        &s,
        &a.api_key,
        json!({"steps": 100, "step_ms": 50}),
        None,
    )
    .await;
    let a_job = v["job_id"].as_str().unwrap().to_string();
    let (_, v) = submit_test(&c, &s, &k2, json!({}), Some("same-key")).await;
    let b_job = v["job_id"].as_str().unwrap().to_string();
    // The same idempotency key in another workspace is another job.
    let (st, v) = submit_test(&c, &s, &a.api_key, json!({}), Some("same-key")).await;
    assert_eq!(st, 202);
    assert_ne!(v["job_id"], b_job.as_str());

    let (st, _) = get_job(&c, &s, &k2, &a_job).await;
    assert_eq!(st, 404);
    for path in ["cancel", "retry"] {
        let (st, _) = json(
            c.post(s.url(&format!("/api/v1/jobs/{a_job}/{path}")))
                .bearer_auth(&k2),
        )
        .await;
        assert_eq!(st, 404);
    }
    let (_, v) = json(c.get(s.url("/api/v1/jobs")).bearer_auth(&k2)).await;
    let listed: Vec<&str> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![b_job.as_str()]);
    // The organization's admin sees both workspaces' jobs, and pages through them.
    let (_, v) = json(c.get(s.url("/api/v1/jobs?limit=2")).bearer_auth(&a.api_key)).await;
    assert_eq!(v["jobs"].as_array().unwrap().len(), 2);
    let cursor = v["next_cursor"].as_str().unwrap().to_string();
    let (_, v2) = json(
        c.get(s.url(&format!("/api/v1/jobs?limit=2&cursor={cursor}")))
            .bearer_auth(&a.api_key),
    )
    .await;
    assert_eq!(v2["jobs"].as_array().unwrap().len(), 1);
    assert!(v2["next_cursor"].is_null());
    let (st, _) = get_job(&c, &s, &a.api_key, &b_job).await;
    assert_eq!(st, 200);
    let (st, _) = json(
        c.get(s.url("/api/v1/jobs?status=bogus"))
            .bearer_auth(&a.api_key),
    )
    .await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn maintenance_runs_inline_without_jobs_and_queued_with_them() {
    let dir = temp_dir("jobs-maint");
    let b = bootstrap(&dir);
    let para = |w: &str| format!("{} ", w).repeat(200);
    let shared = para("shared");
    let docs = json!([
        {"title": "A", "text": format!("{shared}\n\n{}", para("alpha"))},
        {"title": "B", "text": format!("{shared}\n\n{}", para("beta"))},
    ]);
    {
        let s = Server::start(&dir);
        let c = client();
        let (st, _) = ingest_text(&c, &s, &b.api_key, docs.clone()).await;
        assert_eq!(st, 200, "without jobs ingest answers inline");
        let (st, v) = json(c.post(s.url("/api/v1/dedupe")).bearer_auth(&b.api_key)).await;
        assert_eq!(st, 200, "{v}");
        assert!(v["result"]["removed_chunks"].as_u64().unwrap() >= 1, "{v}");
        let (st, v) = json(c.post(s.url("/api/v1/dedupe")).bearer_auth(&b.api_key)).await;
        assert_eq!(st, 200);
        assert_eq!(v["result"]["removed_chunks"], 0);
    }
    let s = Server::start_with(&dir, config(""));
    let c = client();
    for path in ["/api/v1/dedupe", "/api/v1/rebuild"] {
        let (st, v) = json(c.post(s.url(path)).bearer_auth(&b.api_key)).await;
        assert_eq!(st, 202, "{v}");
        assert_eq!(v["status"], "queued");
        let id = v["job_id"].as_str().unwrap();
        wait_for(&c, &s, &b.api_key, id, 20, status_is("succeeded")).await;
    }
    let (st, v) = json(
        c.get(s.url("/api/v1/search?q=alpha"))
            .bearer_auth(&b.api_key),
    )
    .await;
    assert_eq!(st, 200, "{v}");
}

#[tokio::test]
async fn sigterm_hands_running_jobs_back_without_waiting_for_the_lease() {
    let dir = temp_dir("jobs-term");
    let b = bootstrap(&dir);
    // A lease far longer than the test: only the release at shutdown can free the job.
    let cfg = || {
        let mut o = config("");
        let y = o
            .config_yaml
            .take()
            .unwrap()
            .replace("lease_seconds: 2", "lease_seconds: 120");
        o.config_yaml = Some(y);
        o
    };
    let s = Server::start_with(&dir, cfg());
    let c = client();
    let (_, v) = submit_test(
        &c,
        &s,
        &b.api_key,
        json!({"steps": 40, "step_ms": 50}),
        None,
    )
    .await;
    let id = v["job_id"].as_str().unwrap().to_string();
    wait_for(&c, &s, &b.api_key, &id, 10, |v| {
        v["progress"]["done"].as_i64().unwrap_or(0) >= 2
    })
    .await;
    let lines = s.stdout.clone();
    assert!(s.terminate(), "clean exit");
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("\"job.released\"")),
        "release logged"
    );
    let s = Server::start_with(&dir, cfg());
    let job = wait_for(&c, &s, &b.api_key, &id, 20, status_is("succeeded")).await;
    assert_eq!(
        job["attempts"], 1,
        "the interrupted attempt is not counted: {job}"
    );
}

#[tokio::test]
async fn embed_job_reembeds_chunks_after_an_embedder_change() {
    let dir = temp_dir("jobs-embed");
    let b = bootstrap(&dir);
    let c = client();
    let docs = json!([
        {"title": "Herons", "text": "Grey herons stand still in shallow water waiting for fish."},
        {"title": "Swifts", "text": "Common swifts spend almost their whole lives in the air."},
    ]);
    {
        let s = Server::start_with(&dir, config(""));
        let (st, v) = ingest_text(&c, &s, &b.api_key, docs).await;
        assert_eq!(st, 202);
        wait_for(
            &c,
            &s,
            &b.api_key,
            v["job_id"].as_str().unwrap(),
            20,
            status_is("succeeded"),
        )
        .await;
    }
    // Another embedder (different dimensions): the stored vectors are stale.
    let s = Server::start_with(&dir, config("retrieval:\n  hashing_dimensions: 128\n"));
    let submit = || {
        json(
            c.post(s.url("/api/v1/jobs"))
                .bearer_auth(&b.api_key)
                .json(&json!({"name": "embed"})),
        )
    };
    let (st, v) = submit().await;
    assert_eq!(st, 202, "{v}");
    let job = wait_for(
        &c,
        &s,
        &b.api_key,
        v["job_id"].as_str().unwrap(),
        20,
        status_is("succeeded"),
    )
    .await;
    assert_eq!(job["result"]["reembedded_chunks"], 2, "{job}");
    assert_eq!(job["result"]["embedder"], "hashing-v1-128");
    assert_eq!(job["progress"]["total"], 2);
    // Nothing left to do the second time.
    let (_, v) = submit().await;
    let job = wait_for(
        &c,
        &s,
        &b.api_key,
        v["job_id"].as_str().unwrap(),
        20,
        status_is("succeeded"),
    )
    .await;
    assert_eq!(job["result"]["reembedded_chunks"], 0);
    // Vector search works again under the new embedder.
    let (_, v) = json(
        c.get(s.url("/api/v1/search?q=herons%20waiting%20for%20fish"))
            .bearer_auth(&b.api_key),
    )
    .await;
    assert_eq!(v["results"][0]["title"], "Herons", "{v}");
    assert!(v["results"][0]["cosine"].as_f64().unwrap() > 0.0, "{v}");
    let (st, _) = json(
        c.post(s.url("/api/v1/jobs"))
            .bearer_auth(&b.api_key)
            .json(&json!({"name": "retention"})),
    )
    .await;
    assert_eq!(st, 400, "system job types cannot be submitted");
}
