//! Identity at the edge and rate quotas, against the real rag-core binary.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn unknown_keys_are_refused_and_quotas_are_exact_under_concurrency() {
    let rag = start_rag_core();
    let c = client();
    // A second key for a second workspace, made directly on rag-core.
    let (_, ws2) = (
        200,
        c.post(format!("{}/api/v1/admin/workspaces", rag.base))
            .bearer_auth(&rag.key)
            .json(&json!({"name": "two"}))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap(),
    );
    let k2: Value = c
        .post(format!("{}/api/v1/admin/keys", rag.base))
        .bearer_auth(&rag.key)
        .json(&json!({"workspace_id": ws2["workspace"]["id"], "scopes": ["read"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key2 = k2["api_key"].as_str().unwrap().to_string();
    let key2_id = k2["id"].as_str().unwrap().to_string();

    let dir = temp_dir("policy");
    let policy = dir.join("quotas.yaml");
    std::fs::write(&policy, "plans:\n  free:\n    requests_per_minute: 5\n").unwrap();
    let yaml = format!(
        "identity:\n  provider: introspect\n  cache_ttl_seconds: 1\nquotas:\n  policy_file: {}\n",
        policy.display()
    );
    let agent = Agent::start_env(&rag.base, &yaml, &[("MINIRAG_INTERNAL_TOKEN", TOKEN)]);

    // No key, or an unknown one: 401 at the edge, no budget spent.
    for req in [
        c.get(agent.url("/api/v1/sources")),
        c.get(agent.url("/api/v1/sources"))
            .bearer_auth("mrk_000000000000_000000000000000000000000000000000000000000000000"),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "unauthorized");
    }
    // Anonymous routes need no key.
    assert_eq!(
        c.get(agent.url("/healthz")).send().await.unwrap().status(),
        200
    );

    // 20 concurrent requests against a limit of 5: exactly 5 pass.
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(
                c.get(agent.url("/api/v1/sources"))
                    .bearer_auth(&rag.key)
                    .send(),
            )
        })
        .collect();
    let mut passed = 0;
    let mut refused = Vec::new();
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        match r.status().as_u16() {
            200 => {
                passed += 1;
                assert!(
                    r.headers()["ratelimit"]
                        .to_str()
                        .unwrap()
                        .starts_with("limit=5, remaining=")
                );
                assert_eq!(r.headers()["ratelimit-policy"], "5;w=60");
            }
            429 => {
                assert!(
                    r.headers()["retry-after"]
                        .to_str()
                        .unwrap()
                        .parse::<u64>()
                        .unwrap()
                        >= 1
                );
                refused.push(r.json::<Value>().await.unwrap());
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(passed, 5, "exactly the limit passes");
    assert_eq!(refused.len(), 15);
    let v = &refused[0];
    assert_eq!(v["error"], "quota_exceeded");
    assert_eq!(v["metric"], "requests_per_minute");
    assert_eq!(v["limit"], 5);
    assert_eq!(v["remaining"], 0);
    assert!(v["retry_after_seconds"].as_u64().unwrap() >= 1);
    assert!(v["request_id"].is_string());

    // The other workspace has its own budget.
    for _ in 0..5 {
        assert_eq!(
            c.get(agent.url("/api/v1/sources"))
                .bearer_auth(&key2)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let m = c
        .get(format!("{}/metrics", agent.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("quota_exceeded_total{workspace_id=\"ws_"), "{m}");
    assert!(m.contains("metric=\"requests_per_minute\"} 15"), "{m}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let line = agent
        .access_lines()
        .into_iter()
        .find(|l| l["status_code"] == 200 && l["workspace_id"].is_string())
        .expect("access line with identity");
    assert!(
        line["organization_id"]
            .as_str()
            .unwrap()
            .starts_with("org_")
    );
    assert!(line["user_id"].as_str().unwrap().starts_with("usr_"));

    // Usage crossed 0.9 of the limit once: one threshold event for that workspace.
    let thresholds = agent
        .stderr
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("\"quota.threshold\"") && l.contains(&rag.workspace_id))
        .count();
    assert_eq!(thresholds, 1);
    let exceeded = agent
        .stderr
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("\"quota.exceeded\""))
        .count();
    assert_eq!(exceeded, 1, "15 refusals, one rate-limited log line");

    // A policy change applies live.
    std::fs::write(&policy, "plans:\n  free:\n    requests_per_minute: 1000\n").unwrap();
    let mut lifted = false;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if c.get(agent.url("/api/v1/sources"))
            .bearer_auth(&rag.key)
            .send()
            .await
            .unwrap()
            .status()
            == 200
        {
            lifted = true;
            break;
        }
    }
    assert!(lifted, "raised limit applied without restart");

    // Storage: 2 chunks fill this workspace; the edge refuses further ingest early.
    let two = json!({"documents": [{"text": "First fact about otters."}, {"text": "Second fact about beavers."}]});
    let r = c
        .post(format!("{}/api/v1/ingest/text", rag.base))
        .bearer_auth(&rag.key)
        .json(&two)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(1200)).await; // principal cache TTL
    let r = c
        .post(agent.url("/api/v1/ingest/text"))
        .bearer_auth(&rag.key)
        .json(&json!({"documents": [{"text": "Third."}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (
            v["error"].as_str(),
            v["metric"].as_str(),
            v["limit"].as_u64()
        ),
        (Some("quota_exceeded"), Some("chunk_storage"), Some(2))
    );
    let m = c
        .get(format!("{}/metrics", agent.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("workspace_quota_ratio{workspace_id=\"ws_")
            && m.contains("metric=\"chunk_storage\"} 1.0"),
        "{m}"
    );

    // A revoked key stops working at the edge within the cache TTL (1 s here).
    let r = c
        .delete(format!("{}/api/v1/admin/keys/{key2_id}", rag.base))
        .bearer_auth(&rag.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        c.get(agent.url("/api/v1/sources"))
            .bearer_auth(&key2)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}
