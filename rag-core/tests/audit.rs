//! The audit trail end to end: admin actions through the real server land in the
//! hash-chained log with actor, request id, target and before/after; the admin API filters
//! and confines them to the caller's organization; `rag-core audit verify` passes on the
//! untouched store and names the record after an edit, a removal or a cut tail.

mod common;

use std::process::Command;

use common::*;
use serde_json::{Value, json};

fn verify(dir: &std::path::Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(bin())
        .args(["audit", "verify", "--data-dir"])
        .arg(dir)
        .args(extra)
        .output()
        .expect("run audit verify");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn entries(c: &reqwest::Client, s: &Server, key: &str, query: &str) -> (u16, Value) {
    json(
        c.get(s.url(&format!("/api/v1/admin/audit{query}")))
            .bearer_auth(key),
    )
    .await
}

#[tokio::test]
async fn admin_actions_are_recorded_filtered_and_verifiable() {
    let dir = temp_dir("audit");
    let a = bootstrap(&dir);
    let s = Server::start(&dir);
    let c = client();
    let key = &a.api_key;

    let (st, ws) = json(
        c.post(s.url("/api/v1/admin/workspaces"))
            .bearer_auth(key)
            .header("x-request-id", "audit-ws-1")
            .json(&json!({"name": "research"})),
    )
    .await;
    assert_eq!(st, 201, "{ws}");
    let ws_id = ws["workspace"]["id"].as_str().unwrap().to_string();
    let (st, user) = json(
        c.post(s.url("/api/v1/admin/users"))
            .bearer_auth(key)
            .json(&json!({"email": "ed@example.test", "role": "editor"})),
    )
    .await;
    assert_eq!(st, 201, "{user}");
    let user_id = user["user"]["id"].as_str().unwrap().to_string();
    let (st, _) = json(
        c.patch(s.url(&format!("/api/v1/admin/users/{user_id}")))
            .bearer_auth(key)
            .header("x-request-id", "audit-role-1")
            .json(&json!({"role": "reader"})),
    )
    .await;
    assert_eq!(st, 200);
    let (st, k) = json(c.post(s.url("/api/v1/admin/keys")).bearer_auth(key).json(
        &json!({"name": "ci", "user_id": user_id, "workspace_id": ws_id, "scopes": ["read"]}),
    ))
    .await;
    assert_eq!(st, 201, "{k}");
    let new_key = k["api_key"].as_str().unwrap().to_string();
    let key_id = k["id"].as_str().unwrap().to_string();
    let (st, _) = json(
        c.delete(s.url(&format!("/api/v1/admin/keys/{key_id}")))
            .bearer_auth(key),
    )
    .await;
    assert_eq!(st, 200);
    // A second organization whose records the first must never see.
    let (st, b) = json(
        c.post(s.url("/api/v1/admin/organizations"))
            .bearer_auth(key)
            .json(&json!({"name": "Beta", "owner_email": "owner@beta.test"})),
    )
    .await;
    assert_eq!(st, 201);
    let b_key = b["api_key"].as_str().unwrap().to_string();
    let b_org = b["organization_id"].as_str().unwrap().to_string();

    let (st, v) = entries(&c, &s, key, "").await;
    assert_eq!(st, 200, "{v}");
    let list = v["entries"].as_array().unwrap();
    let actions: Vec<&str> = list.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "organization.created",
            "workspace.created",
            "user.created",
            "user.role_changed",
            "api_key.created",
            "api_key.revoked",
        ],
        "{v}"
    );
    // The first record is the CLI bootstrap; the rest name the calling user and key.
    assert_eq!(list[0]["actor"], "cli:admin bootstrap");
    for e in &list[1..] {
        assert!(e["actor"].as_str().unwrap().starts_with("user:usr_"), "{e}");
        assert!(
            e["actor_key_id"].as_str().unwrap().starts_with("key_"),
            "{e}"
        );
        assert_eq!(e["organization_id"], a.organization_id.as_str());
    }
    assert_eq!(list[1]["request_id"], "audit-ws-1");
    assert_eq!(list[1]["target"], ws_id.as_str());
    let role = &list[3];
    assert_eq!(role["request_id"], "audit-role-1");
    assert_eq!(role["target"], user_id.as_str());
    assert_eq!(role["before"], json!({"role": "editor"}));
    assert_eq!(role["after"], json!({"role": "reader"}));
    assert_eq!(list[4]["target"], key_id.as_str());
    // No secret ever enters the trail: neither the new key nor the bootstrap key.
    let text = v.to_string();
    assert!(!text.contains(&new_key) && !text.contains(key.as_str()));
    // The records link up.
    for w in list.windows(2) {
        assert_eq!(w[1]["prev_hash"], w[0]["hash"]);
        assert_eq!(
            w[1]["seq"].as_i64().unwrap(),
            w[0]["seq"].as_i64().unwrap() + 1
        );
    }

    // Filters.
    let (_, v) = entries(&c, &s, key, "?action=api_key.").await;
    assert_eq!(v["entries"].as_array().unwrap().len(), 2, "{v}");
    let (_, v) = entries(&c, &s, key, &format!("?workspace_id={ws_id}")).await;
    assert_eq!(v["entries"].as_array().unwrap().len(), 2, "{v}");
    let (_, v) = entries(&c, &s, key, "?request_id=audit-role-1").await;
    assert_eq!(v["entries"][0]["action"], "user.role_changed");
    let (_, v) = entries(&c, &s, key, "?limit=2").await;
    assert_eq!(v["entries"].as_array().unwrap().len(), 2);
    let next = v["next_after_seq"].as_i64().unwrap();
    let (_, v2) = entries(&c, &s, key, &format!("?limit=2&after_seq={next}")).await;
    assert_eq!(v2["entries"][0]["seq"].as_i64().unwrap(), next + 1);
    let (_, v) = entries(
        &c,
        &s,
        key,
        "?since=2000-01-01T00:00:00Z&until=2000-01-02T00:00:00Z",
    )
    .await;
    assert_eq!(v["entries"], json!([]));
    let (st, v) = entries(&c, &s, key, "?since=yesterday").await;
    assert_eq!((st, v["error"].as_str()), (400, Some("invalid_request")));
    let (st, _) = entries(&c, &s, key, "?limit=0").await;
    assert_eq!(st, 400);

    // Organization B sees its own creation record only (it was created by A's caller but
    // belongs to B), and A's list never shows B's.
    let (st, v) = entries(&c, &s, &b_key, "").await;
    assert_eq!(st, 200);
    let bl = v["entries"].as_array().unwrap();
    assert_eq!(bl.len(), 1, "{v}");
    assert_eq!(bl[0]["organization_id"], b_org.as_str());
    let (_, v) = entries(&c, &s, key, "?limit=1000").await;
    assert!(
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["organization_id"] == a.organization_id.as_str())
    );

    // Admin scope only.
    let (st, k) = json(
        c.post(s.url("/api/v1/admin/keys"))
            .bearer_auth(key)
            .json(&json!({"name": "reader", "scopes": ["read", "write"]})),
    )
    .await;
    assert_eq!(st, 201);
    let (st, v) = entries(&c, &s, k["api_key"].as_str().unwrap(), "").await;
    assert_eq!(st, 403, "{v}");

    // Every record was also announced in the log with its seq and hash.
    let logged: Vec<Value> = s
        .log_lines()
        .into_iter()
        .filter(|l| l["event"] == "audit.api_key.revoked")
        .collect();
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0]["audit_seq"].as_i64(), list[5]["seq"].as_i64());
    assert_eq!(logged[0]["audit_hash"], list[5]["hash"]);
    let head = format!(
        "{}:{}",
        logged[0]["audit_seq"],
        logged[0]["audit_hash"].as_str().unwrap()
    );
    assert!(s.terminate());

    let (ok, out) = verify(&dir, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("chain is intact"), "{out}");
    let (ok, out) = verify(&dir, &["--expect-head", &head]);
    assert!(ok, "{out}");
    let (ok, out) = verify(&dir, &["--json"]);
    assert!(ok);
    let report: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(report["problems"], json!([]));
    assert!(report["records"].as_u64().unwrap() >= 8);

    // Tampering, as someone with the database file would do it: triggers dropped first.
    let db = rusqlite::Connection::open(dir.join("rag.db")).unwrap();
    assert!(
        db.execute(
            "UPDATE audit_log SET actor = 'user:nobody' WHERE seq = 4",
            []
        )
        .is_err(),
        "the append-only trigger refuses edits"
    );
    db.execute_batch("DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;")
        .unwrap();
    db.execute(
        "UPDATE audit_log SET after = '{\"role\":\"owner\"}' WHERE seq = 4",
        [],
    )
    .unwrap();
    let (ok, out) = verify(&dir, &[]);
    assert!(!ok);
    assert!(out.contains("BROKEN at record 4: edited"), "{out}");
    db.execute(
        "UPDATE audit_log SET after = '{\"role\":\"reader\"}' WHERE seq = 4",
        [],
    )
    .unwrap();
    assert!(
        verify(&dir, &[]).0,
        "restoring the exact text restores the hash"
    );

    db.execute("DELETE FROM audit_log WHERE seq = 3", [])
        .unwrap();
    let (ok, out) = verify(&dir, &[]);
    assert!(!ok);
    assert!(out.contains("BROKEN at record 4: gap"), "{out}");
    assert!(out.contains("BROKEN at record 4: broken_link"), "{out}");

    // A cut tail leaves a consistent chain; the head seen in the log catches it.
    let dir2 = temp_dir("audit-tail");
    let _ = bootstrap(&dir2);
    let (_, out) = verify(&dir2, &["--json"]);
    let r: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let head2 = format!("{}:{}", r["head_seq"], r["head_hash"].as_str().unwrap());
    let db2 = rusqlite::Connection::open(dir2.join("rag.db")).unwrap();
    db2.execute_batch(
        "DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log);",
    )
    .unwrap();
    assert!(verify(&dir2, &[]).0);
    let (ok, out) = verify(&dir2, &["--expect-head", &head2]);
    assert!(!ok);
    assert!(out.contains("head_missing"), "{out}");
    let (ok, out) = verify(&dir2, &["--expect-head", "nonsense"]);
    assert!(!ok && out.contains("SEQ:HASH"), "{out}");
}
