//! Auth, scopes, roles and workspace isolation: a key of workspace A can neither see nor
//! change anything of workspace B, on any route.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn keys_are_confined_to_their_workspace_and_organization() {
    let dir = temp_dir("isolation");
    let a = bootstrap(&dir);
    let s = Server::start(&dir);
    let c = client();

    // Organization B, created through the admin API.
    let (st, b) = json(
        c.post(s.url("/api/v1/admin/organizations"))
            .bearer_auth(&a.api_key)
            .json(&json!({"name": "Beta", "owner_email": "owner@beta.test"})),
    )
    .await;
    assert_eq!(st, 201, "{b}");
    let kb = b["api_key"].as_str().unwrap().to_string();
    let (_, v) = ingest_text(&c, &s, &kb, json!([{"title": "Beta secret", "text": "The launch code for project nebula is tangerine."}])).await;
    let b_src = v["documents"][0]["source_id"].as_str().unwrap().to_string();
    // A second workspace inside org A is also separate from A's default workspace.
    let (st, ws2) = json(
        c.post(s.url("/api/v1/admin/workspaces"))
            .bearer_auth(&a.api_key)
            .json(&json!({"name": "second"})),
    )
    .await;
    assert_eq!(st, 201);
    let ws2_id = ws2["workspace"]["id"].as_str().unwrap().to_string();

    let ka = &a.api_key;
    for path in [
        format!("/api/v1/sources/{b_src}"),
        format!("/api/v1/sources/{b_src}/chunks"),
        format!("/api/v1/sources/{b_src}/preview"),
    ] {
        let (st, _) = json(c.get(s.url(&path)).bearer_auth(ka)).await;
        assert_eq!(st, 404, "{path}");
    }
    let (st, _) = json(
        c.delete(s.url(&format!("/api/v1/sources/{b_src}")))
            .bearer_auth(ka),
    )
    .await;
    assert_eq!(st, 404);
    let (_, v) = json(
        c.post(s.url("/api/v1/sources/delete"))
            .bearer_auth(ka)
            .json(&json!({"source_ids": [b_src]})),
    )
    .await;
    assert_eq!(v["not_found"], json!([b_src]));
    let (st, _) = ask(
        &c,
        &s,
        ka,
        json!({"question": "launch code?", "source_ids": [b_src]}),
    )
    .await;
    assert_eq!(st, 404);
    let (_, v) = ask(
        &c,
        &s,
        ka,
        json!({"question": "What is the launch code for project nebula?"}),
    )
    .await;
    assert_eq!(v["abstained"], true, "A must not see B's document: {v}");
    let (_, v) = json(
        c.get(s.url("/api/v1/search"))
            .query(&[("q", "launch code nebula")])
            .bearer_auth(ka),
    )
    .await;
    assert_eq!(v["results"].as_array().unwrap().len(), 0, "{v}");
    let (_, v) = json(c.get(s.url("/api/v1/sources")).bearer_auth(ka)).await;
    assert_eq!(v["total"], 0);

    // Admin operations on B's objects answer 404 for A's admin.
    let (_, bkeys) = json(c.get(s.url("/api/v1/admin/keys")).bearer_auth(&kb)).await;
    let b_key_id = bkeys["keys"][0]["id"].as_str().unwrap().to_string();
    let (_, busers) = json(c.get(s.url("/api/v1/admin/users")).bearer_auth(&kb)).await;
    let b_user = busers["users"][0]["id"].as_str().unwrap().to_string();
    let (st, _) = json(
        c.delete(s.url(&format!("/api/v1/admin/keys/{b_key_id}")))
            .bearer_auth(ka),
    )
    .await;
    assert_eq!(st, 404);
    let (st, _) = json(
        c.patch(s.url(&format!("/api/v1/admin/users/{b_user}")))
            .bearer_auth(ka)
            .json(&json!({"role": "reader"})),
    )
    .await;
    assert_eq!(st, 404);
    let (st, _) = json(
        c.post(s.url("/api/v1/admin/keys"))
            .bearer_auth(ka)
            .json(&json!({"workspace_id": b["workspace_id"], "scopes": ["read"]})),
    )
    .await;
    assert_eq!(st, 404);
    let (_, v) = json(c.get(s.url("/api/v1/admin/keys")).bearer_auth(ka)).await;
    assert!(
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["id"] != b_key_id)
    );
    let (_, v) = json(c.get(s.url("/api/v1/admin/workspaces")).bearer_auth(ka)).await;
    assert_eq!(v["workspaces"].as_array().unwrap().len(), 2);

    // A key for A's second workspace sees nothing of A's default workspace.
    let (_, d) = ingest_text(
        &c,
        &s,
        ka,
        json!([{"text": "Default workspace fact: owls hunt at night."}]),
    )
    .await;
    let a_src = d["documents"][0]["source_id"].as_str().unwrap().to_string();
    let (st, k2) = json(
        c.post(s.url("/api/v1/admin/keys"))
            .bearer_auth(ka)
            .json(&json!({"workspace_id": ws2_id, "scopes": ["read", "write"]})),
    )
    .await;
    assert_eq!(st, 201);
    let k2 = k2["api_key"].as_str().unwrap().to_string();
    let (st, _) = json(
        c.get(s.url(&format!("/api/v1/sources/{a_src}")))
            .bearer_auth(&k2),
    )
    .await;
    assert_eq!(st, 404);
    let (_, v) = ask(&c, &s, &k2, json!({"question": "When do owls hunt?"})).await;
    assert_eq!(v["abstained"], true);
}

#[tokio::test]
async fn authentication_scopes_roles_and_revocation() {
    let dir = temp_dir("auth");
    let a = bootstrap(&dir);
    let s = Server::start(&dir);
    let c = client();
    let ka = &a.api_key;
    for req in [
        c.get(s.url("/api/v1/sources")),
        c.get(s.url("/api/v1/sources"))
            .bearer_auth("mrk_000000000000_000000000000000000000000000000000000000000000000"),
        c.get(s.url("/api/v1/sources"))
            .header("x-api-key", "garbage"),
    ] {
        let (st, v) = json(req).await;
        assert_eq!((st, v["error"].as_str().unwrap()), (401, "unauthorized"));
    }
    // X-API-Key works like Bearer.
    let (st, _) = json(c.get(s.url("/api/v1/sources")).header("x-api-key", ka)).await;
    assert_eq!(st, 200);

    // A reader user: even a key listing write gets only what the role allows.
    let (st, u) = json(
        c.post(s.url("/api/v1/admin/users"))
            .bearer_auth(ka)
            .json(&json!({"email": "r@a.test", "role": "reader"})),
    )
    .await;
    assert_eq!(st, 201);
    let reader = u["user"]["id"].as_str().unwrap().to_string();
    let (st, _) = json(
        c.post(s.url("/api/v1/admin/keys"))
            .bearer_auth(ka)
            .json(&json!({"user_id": reader, "scopes": ["read", "write"]})),
    )
    .await;
    assert_eq!(st, 422, "a reader cannot hold write");
    let (st, rk) = json(
        c.post(s.url("/api/v1/admin/keys"))
            .bearer_auth(ka)
            .json(&json!({"user_id": reader, "scopes": ["read"]})),
    )
    .await;
    assert_eq!(st, 201);
    let rk_id = rk["id"].as_str().unwrap().to_string();
    let rk = rk["api_key"].as_str().unwrap().to_string();
    let (st, v) = ingest_text(&c, &s, &rk, json!([{"text": "nope"}])).await;
    assert_eq!((st, v["error"].as_str().unwrap()), (403, "forbidden"));
    let (st, _) = json(c.get(s.url("/api/v1/admin/users")).bearer_auth(&rk)).await;
    assert_eq!(st, 403);
    let (st, _) = json(c.get(s.url("/api/v1/sources")).bearer_auth(&rk)).await;
    assert_eq!(st, 200);
    // Secret never listed again.
    let (_, keys) = json(c.get(s.url("/api/v1/admin/keys")).bearer_auth(ka)).await;
    assert!(!keys.to_string().contains(&rk));

    // Role change, and the last owner cannot be demoted.
    let (st, _) = json(
        c.patch(s.url(&format!("/api/v1/admin/users/{reader}")))
            .bearer_auth(ka)
            .json(&json!({"role": "editor"})),
    )
    .await;
    assert_eq!(st, 200);
    let (_, users) = json(c.get(s.url("/api/v1/admin/users")).bearer_auth(ka)).await;
    let owner = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["role"] == "owner")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, v) = json(
        c.patch(s.url(&format!("/api/v1/admin/users/{owner}")))
            .bearer_auth(ka)
            .json(&json!({"role": "admin"})),
    )
    .await;
    assert_eq!((st, v["error"].as_str().unwrap()), (409, "last_owner"));

    // Revocation takes effect at once.
    let (st, _) = json(
        c.delete(s.url(&format!("/api/v1/admin/keys/{rk_id}")))
            .bearer_auth(ka),
    )
    .await;
    assert_eq!(st, 200);
    let (st, _) = json(c.get(s.url("/api/v1/sources")).bearer_auth(&rk)).await;
    assert_eq!(st, 401);
}

#[tokio::test]
async fn internal_principal_needs_the_internal_token() {
    let dir = temp_dir("principal");
    let a = bootstrap(&dir);
    let s = Server::start(&dir);
    let c = client();
    let url = s.url("/internal/v1/principal");
    let (st, _) = json(c.get(&url).bearer_auth(&a.api_key)).await;
    assert_eq!(st, 403, "no internal token");
    let (st, _) = json(
        c.get(&url)
            .bearer_auth(&a.api_key)
            .header("x-internal-token", "wrong-token-wrong-token"),
    )
    .await;
    assert_eq!(st, 403);
    let (st, _) = json(c.get(&url).header("x-internal-token", INTERNAL_TOKEN)).await;
    assert_eq!(st, 401, "token but no key");
    let (st, v) = json(
        c.get(&url)
            .bearer_auth(&a.api_key)
            .header("x-internal-token", INTERNAL_TOKEN),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["workspace_id"], a.workspace_id.as_str());
    assert_eq!(v["organization_id"], a.organization_id.as_str());
    assert_eq!(v["plan"], "free");
    assert_eq!(v["billing_status"], "trialing");
    assert_eq!(v["scopes"], json!(["read", "write", "admin"]));
    assert_eq!(v["usage"]["chunk_total"], 0);
    assert!(v["usage"]["chunk_limit"].as_i64().unwrap() > 0);
    assert!(v["user_id"].is_string());
}
