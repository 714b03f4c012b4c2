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
    let m = scrape(&c, &agent).await;
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
    let m = scrape(&c, &agent).await;
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

fn hs256_token(secret: &[u8], claims: &Value) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let input = format!(
        "{}.{}",
        b.encode(json!({"alg": "HS256", "typ": "JWT"}).to_string()),
        b.encode(claims.to_string())
    );
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        input.as_bytes(),
    );
    format!("{input}.{}", b.encode(tag.as_ref()))
}

#[tokio::test]
async fn jwt_identity_feeds_the_same_quotas() {
    use base64::Engine;
    let up = start_upstream().await;
    let dir = temp_dir("jwt");
    let secret = b"jwt-test-secret-jwt-test-secret!";
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [{"kty": "oct", "kid": "t1", "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)}]}).to_string()).unwrap();
    let policy = dir.join("quotas.yaml");
    std::fs::write(&policy, "plans:\n  free:\n    ask_per_minute: 3\n").unwrap();
    let yaml = format!(
        "identity:\n  provider: jwt\n  jwt:\n    jwks_file: {}\n    issuer: minirag-tests\nquotas:\n  policy_file: {}\n",
        jwks.display(),
        policy.display()
    );
    let agent = Agent::start(&format!("http://{}", up.addr), &yaml);
    let c = client();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = json!({"sub": "usr_j", "workspace_id": "ws_j", "organization_id": "org_j", "iss": "minirag-tests", "exp": exp});
    let token = hs256_token(secret, &claims);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            c.post(agent.url("/api/v1/ask"))
                .bearer_auth(&token)
                .body("{}")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
    // Other routes are not limited by ask_per_minute.
    assert_eq!(
        c.get(agent.url("/api/v1/sources"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let mut wrong_iss = claims.clone();
    wrong_iss["iss"] = json!("someone-else");
    for bad in [
        hs256_token(b"not-the-secret-not-the-secret!!!", &claims),
        hs256_token(secret, &wrong_iss),
        "garbage".to_string(),
    ] {
        assert_eq!(
            c.get(agent.url("/api/v1/sources"))
                .bearer_auth(&bad)
                .send()
                .await
                .unwrap()
                .status(),
            401
        );
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        agent
            .access_lines()
            .iter()
            .any(|l| l["workspace_id"] == "ws_j" && l["user_id"] == "usr_j")
    );
}

#[tokio::test]
async fn an_organization_total_binds_across_its_workspaces() {
    let rag = start_rag_core();
    let c = client();
    let ws2: Value = c
        .post(format!("{}/api/v1/admin/workspaces", rag.base))
        .bearer_auth(&rag.key)
        .json(&json!({"name": "two"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
    let dir = temp_dir("orgpolicy");
    let policy = dir.join("quotas.yaml");
    // 5 per workspace, 7 for the whole organization.
    std::fs::write(
        &policy,
        "plans:\n  free:\n    requests_per_minute: 5\n    organization:\n      requests_per_minute: 7\n",
    )
    .unwrap();
    let yaml = format!(
        "identity:\n  provider: introspect\nquotas:\n  policy_file: {}\n",
        policy.display()
    );
    let agent = Agent::start_env(&rag.base, &yaml, &[("MINIRAG_INTERNAL_TOKEN", TOKEN)]);
    let status = |key: String| {
        let c = c.clone();
        let url = agent.url("/api/v1/sources");
        async move {
            let r = c.get(url).bearer_auth(key).send().await.unwrap();
            let s = r.status().as_u16();
            let body = if s == 429 {
                Some(r.json::<Value>().await.unwrap())
            } else {
                None
            };
            (s, body)
        }
    };
    for _ in 0..5 {
        assert_eq!(status(rag.key.clone()).await.0, 200);
    }
    // The second workspace has 5 of its own, but the organization only 2 left.
    let mut second = Vec::new();
    for _ in 0..5 {
        second.push(status(key2.clone()).await);
    }
    let passed = second.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(passed, 2, "{second:?}");
    let refused = second.iter().find_map(|(_, b)| b.clone()).unwrap();
    assert_eq!(refused["error"], "quota_exceeded");
    assert_eq!(refused["scope"], "organization");
    assert_eq!(refused["limit"], 7);
    // The first workspace is refused by its own limit first.
    let (s, body) = status(rag.key.clone()).await;
    assert_eq!(s, 429);
    assert_eq!(body.unwrap()["scope"], "workspace");
}

#[tokio::test]
async fn concurrency_and_ingest_byte_quotas() {
    use base64::Engine;
    let up = start_upstream().await;
    let dir = temp_dir("concurrency");
    let secret = b"jwt-test-secret-jwt-test-secret!";
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [{"kty": "oct", "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)}]}).to_string()).unwrap();
    let policy = dir.join("quotas.yaml");
    std::fs::write(
        &policy,
        "plans:\n  free:\n    concurrent_requests: 2\n    ingest_bytes_per_day: 1000\n",
    )
    .unwrap();
    let yaml = format!(
        "identity:\n  provider: jwt\n  jwt:\n    jwks_file: {}\nquotas:\n  policy_file: {}\n",
        jwks.display(),
        policy.display()
    );
    let agent = Agent::start(&format!("http://{}", up.addr), &yaml);
    let c = client();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = hs256_token(
        secret,
        &json!({"sub": "usr_c", "workspace_id": "ws_c", "organization_id": "org_c", "exp": exp}),
    );

    // Two slow requests hold both slots; the others are refused while they run.
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(c.get(agent.url("/slow")).bearer_auth(&token).send()))
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = c
        .get(agent.url("/fast"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["metric"], "concurrent_requests");
    assert_eq!(v["limit"], 2);
    for s in slow {
        assert_eq!(s.await.unwrap().unwrap().status(), 200);
    }
    // Slots come back when the bodies end.
    assert_eq!(
        c.get(agent.url("/fast"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Ingest bytes: the declared size is spent; 600 + 600 > 1000.
    let ingest = |body: Vec<u8>| {
        c.post(agent.url("/api/v1/ingest/text"))
            .bearer_auth(&token)
            .body(body)
            .send()
    };
    assert_eq!(ingest(vec![b'a'; 600]).await.unwrap().status(), 200);
    let r = ingest(vec![b'a'; 600]).await.unwrap();
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["metric"], "ingest_bytes_per_day");
    assert_eq!(ingest(vec![b'a'; 300]).await.unwrap().status(), 200);
    // Without a Content-Length the size cannot be checked first: 411.
    let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(
        bytes::Bytes::from_static(b"abc"),
    )]);
    let r = c
        .post(agent.url("/api/v1/ingest/text"))
        .bearer_auth(&token)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 411);
}

#[tokio::test]
async fn trusted_headers_only_from_configured_sources() {
    let up = start_upstream().await;
    let dir = temp_dir("trusted");
    let policy = dir.join("quotas.yaml");
    std::fs::write(&policy, "plans:\n  free:\n    requests_per_minute: 2\n").unwrap();
    let yaml = |sources: &str| {
        format!(
            "identity:\n  provider: trusted_headers\n  trusted_headers:\n    sources: [{sources}]\n    workspace_id: x-gw-workspace\nquotas:\n  policy_file: {}\n",
            policy.display()
        )
    };
    let c = client();
    let send = |agent: &Agent| {
        c.get(agent.url("/api/v1/sources"))
            .header("x-minirag-user-id", "usr_t")
            .header("x-gw-workspace", "ws_t")
            .header("x-minirag-organization-id", "org_t")
            .send()
    };
    // The test client is 127.0.0.1: trusted here…
    let trusted = Agent::start(&format!("http://{}", up.addr), &yaml("127.0.0.1/32"));
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(send(&trusted).await.unwrap().status().as_u16());
    }
    assert_eq!(
        statuses,
        vec![200, 200, 429],
        "the asserted workspace gets its quota"
    );
    let seen = up.seen.lock().unwrap().clone();
    let (_, h) = seen.last().unwrap();
    assert!(h.get("x-gw-workspace").is_none(), "{h}");
    assert!(h.get("x-minirag-user-id").is_none(), "{h}");
    // …and not there.
    let untrusted = Agent::start(&format!("http://{}", up.addr), &yaml("10.0.0.0/8"));
    assert_eq!(send(&untrusted).await.unwrap().status(), 401);
}
