//! Billing: Stripe webhooks (signatures, idempotency, ordering, transitions), the ingest
//! guard (402 and its reasons), checkout and portal sessions against a fake Stripe on
//! 127.0.0.1, Stripe failures, and the admin billing routes with their audit trail.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use common::*;
use serde_json::{Value, json};

const API_KEY: &str = "sk_test_fake_0123456789abcdef";
const WEBHOOK_SECRET: &str = "whsec_test_0123456789abcdef";
const PRICE_PRO: &str = "price_pro_test";
const PRICE_ENTERPRISE: &str = "price_enterprise_test";

// ---------------------------------------------------------------------------------------
// A fake Stripe: records every request, answers canned sessions, or fails on demand.

#[derive(Debug, Clone)]
struct Recorded {
    path: String,
    headers: HeaderMap,
    form: Vec<(String, String)>,
}

impl Recorded {
    fn field(&self, k: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
    fn header(&self, k: &str) -> Option<&str> {
        self.headers.get(k).and_then(|v| v.to_str().ok())
    }
}

/// 0 = answer normally, 1 = hang past the client's timeout, else answer with that status.
#[derive(Clone, Default)]
struct FakeStripe {
    requests: Arc<Mutex<Vec<Recorded>>>,
    mode: Arc<AtomicU16>,
}

impl FakeStripe {
    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
    fn set_mode(&self, m: u16) {
        self.mode.store(m, Ordering::SeqCst);
    }
}

async fn fake_handler(
    State(fake): State<FakeStripe>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let text = String::from_utf8_lossy(&body).to_string();
    let form = reqwest::Url::parse(&format!("http://x/?{text}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let n = {
        let mut r = fake.requests.lock().unwrap();
        r.push(Recorded {
            path: uri.path().to_string(),
            headers,
            form,
        });
        r.len()
    };
    match fake.mode.load(Ordering::SeqCst) {
        0 => {
            let (id, url) = if uri.path().contains("billing_portal") {
                (
                    format!("bps_test_{n}"),
                    format!("https://billing.stripe.test/p/session/{n}"),
                )
            } else {
                (
                    format!("cs_test_{n}"),
                    format!("https://checkout.stripe.test/c/pay/cs_test_{n}"),
                )
            };
            axum::Json(json!({"id": id, "object": "session", "url": url})).into_response()
        }
        1 => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            axum::Json(json!({"id": "late", "url": "https://late.test"})).into_response()
        }
        status => (
            StatusCode::from_u16(status).unwrap(),
            axum::Json(json!({"error": {"type": "api_error", "code": "boom", "message": "fake Stripe failure"}})),
        )
            .into_response(),
    }
}

async fn start_fake() -> (String, FakeStripe) {
    let fake = FakeStripe::default();
    let app = axum::Router::new()
        .route("/v1/checkout/sessions", axum::routing::post(fake_handler))
        .route(
            "/v1/billing_portal/sessions",
            axum::routing::post(fake_handler),
        )
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), fake)
}

// ---------------------------------------------------------------------------------------
// Starting rag-core with billing configured.

fn start(dir: &Path, stripe_base: &str, extra: &[(&str, &str)], yaml_extra: &str) -> Server {
    let mut opts = Options {
        config_yaml: Some(format!(
            "billing:\n  stripe_api_base: {stripe_base}\n  prices: {{pro: {PRICE_PRO}, enterprise: {PRICE_ENTERPRISE}}}\n{yaml_extra}"
        )),
        ..Options::default()
    };
    opts.env.push(("STRIPE_API_KEY".into(), API_KEY.into()));
    opts.env
        .push(("STRIPE_WEBHOOK_SECRET".into(), WEBHOOK_SECRET.into()));
    for (k, v) in extra {
        opts.env.push((k.to_string(), v.to_string()));
    }
    Server::start_with(dir, opts)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn sign(secret: &str, t: i64, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    hex::encode(ring::hmac::sign(&key, format!("{t}.{body}").as_bytes()).as_ref())
}

fn event(id: &str, kind: &str, created: i64, object: Value) -> Value {
    json!({"id": id, "object": "event", "type": kind, "created": created,
           "livemode": false, "data": {"object": object}})
}

async fn post_event(c: &reqwest::Client, s: &Server, ev: &Value) -> (u16, Value) {
    let body = ev.to_string();
    let t = now();
    let sig = format!("t={t},v1={}", sign(WEBHOOK_SECRET, t, &body));
    json(
        c.post(s.url("/api/v1/billing/stripe/webhook"))
            .header("stripe-signature", sig)
            .header("content-type", "application/json")
            .body(body),
    )
    .await
}

async fn billing(c: &reqwest::Client, s: &Server, key: &str) -> Value {
    let (st, v) = json(c.get(s.url("/api/v1/admin/billing")).bearer_auth(key)).await;
    assert_eq!(st, 200, "{v}");
    v["billing"].clone()
}

async fn patch(c: &reqwest::Client, s: &Server, key: &str, body: Value) -> (u16, Value) {
    json(
        c.patch(s.url("/api/v1/admin/billing"))
            .bearer_auth(key)
            .json(&body),
    )
    .await
}

async fn audit(c: &reqwest::Client, s: &Server, key: &str, action: &str) -> Vec<Value> {
    let (st, v) = json(
        c.get(s.url("/api/v1/admin/audit"))
            .bearer_auth(key)
            .query(&[("action", action)]),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    v["entries"].as_array().unwrap().clone()
}

async fn principal(c: &reqwest::Client, s: &Server, key: &str) -> Value {
    let (st, v) = json(
        c.get(s.url("/internal/v1/principal"))
            .header("x-internal-token", INTERNAL_TOKEN)
            .header("x-api-key", key),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    v
}

async fn ingest_one(c: &reqwest::Client, s: &Server, key: &str, text: &str) -> (u16, Value) {
    ingest_text(c, s, key, json!([{"title": "Doc", "text": text}])).await
}

/// An editor's key (read + write): may ingest, may not touch billing.
async fn editor_key(c: &reqwest::Client, s: &Server, admin: &str) -> String {
    let (st, u) = json(
        c.post(s.url("/api/v1/admin/users"))
            .bearer_auth(admin)
            .json(&json!({"email": "editor@example.com", "role": "editor"})),
    )
    .await;
    assert_eq!(st, 201, "{u}");
    let (st, k) = json(
        c.post(s.url("/api/v1/admin/keys"))
            .bearer_auth(admin)
            .json(&json!({"user_id": u["user"]["id"], "scopes": ["read", "write"]})),
    )
    .await;
    assert_eq!(st, 201, "{k}");
    k["api_key"].as_str().unwrap().to_string()
}

fn log_file(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("logs/rag.log"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn metric(c: &reqwest::Client, s: &Server, series: &str) -> Option<f64> {
    series_value(&scrape(c, s).await, series)
}

fn past() -> String {
    "2020-01-01T00:00:00Z".into()
}

fn future_unix() -> i64 {
    now() + 30 * 86400
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn webhook_events_move_the_billing_state() {
    let dir = temp_dir("billing-transitions");
    let a = bootstrap(&dir);
    let s = start(&dir, "http://127.0.0.1:9", &[], "");
    let c = client();
    let org = a.organization_id.as_str();
    let key = a.api_key.as_str();
    let t0 = now() - 100;

    // checkout.session.completed → active, linked, plan from metadata.
    let (st, v) = post_event(
        &c,
        &s,
        &event(
            "evt_checkout",
            "checkout.session.completed",
            t0,
            json!({"object": "checkout.session", "mode": "subscription", "customer": "cus_1",
                   "subscription": "sub_1", "client_reference_id": "req-1",
                   "metadata": {"organization_id": org, "plan": "pro", "request_id": "req-1"}}),
        ),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["received"], true);
    assert_eq!(v["duplicate"], false);
    assert_eq!(v["outcome"], "applied");
    let b = billing(&c, &s, key).await;
    assert_eq!(b["status"], "active");
    assert_eq!(b["plan"], "pro");
    assert_eq!(b["stripe_customer_id"], "cus_1");
    assert_eq!(b["stripe_subscription_id"], "sub_1");
    assert_eq!(b["blocked"], false);
    assert_eq!(
        ingest_one(&c, &s, key, "Active orgs can ingest.").await.0,
        200
    );

    let sub = |status: &str| {
        json!({"object": "subscription", "id": "sub_1", "customer": "cus_1", "status": status,
               "metadata": {"organization_id": org, "plan": "pro"},
               "items": {"data": [{"price": {"id": PRICE_ENTERPRISE}, "current_period_end": future_unix()}]}})
    };
    let steps: &[(&str, &str, Value, &str, Option<&str>)] = &[
        (
            "evt_upd_past_due",
            "customer.subscription.updated",
            sub("past_due"),
            "past_due",
            Some("billing_status_past_due"),
        ),
        (
            "evt_upd_active",
            "customer.subscription.updated",
            sub("active"),
            "active",
            None,
        ),
        // Found by the customer id alone: invoices carry no organization metadata here.
        (
            "evt_invoice_failed",
            "invoice.payment_failed",
            json!({"object": "invoice", "customer": "cus_1", "subscription": "sub_1"}),
            "past_due",
            Some("billing_status_past_due"),
        ),
        (
            "evt_upd_unpaid",
            "customer.subscription.updated",
            sub("unpaid"),
            "unpaid",
            Some("billing_status_unpaid"),
        ),
        (
            "evt_upd_canceled",
            "customer.subscription.updated",
            sub("canceled"),
            "canceled",
            Some("billing_status_canceled"),
        ),
        (
            "evt_upd_active_again",
            "customer.subscription.updated",
            sub("active"),
            "active",
            None,
        ),
        (
            "evt_deleted",
            "customer.subscription.deleted",
            sub("canceled"),
            "canceled",
            Some("billing_status_canceled"),
        ),
    ];
    for (i, (id, kind, obj, status, reason)) in steps.iter().enumerate() {
        let (st, v) = post_event(&c, &s, &event(id, kind, t0 + 1 + i as i64, obj.clone())).await;
        assert_eq!(st, 200, "{id}: {v}");
        assert_eq!(v["outcome"], "applied", "{id}: {v}");
        let b = billing(&c, &s, key).await;
        assert_eq!(b["status"], *status, "{id}: {b}");
        assert_eq!(b["blocked_reason"].as_str(), *reason, "{id}: {b}");
        // The plan follows the subscription's price.
        assert_eq!(b["plan"], "enterprise", "{id}: {b}");
        let (st, v) = ingest_one(&c, &s, key, &format!("Document number {i}.")).await;
        match reason {
            None => assert_eq!(st, 200, "{id}: {v}"),
            Some(r) => {
                assert_eq!(st, 402, "{id}: {v}");
                assert_eq!(v["error"], "billing_blocked");
                assert_eq!(v["reason"], *r);
                assert_eq!(v["billing_status"], *status);
            }
        }
        let p = principal(&c, &s, key).await;
        assert_eq!(p["billing_status"], *status, "{id}: {p}");
        assert_eq!(p["billing_blocked_reason"].as_str(), *reason);
    }
    let b = billing(&c, &s, key).await;
    assert!(b["subscription_expires_at"].is_string(), "{b}");

    // Each webhook change is in the audit trail, by Stripe, with before and after.
    let entries = audit(&c, &s, key, "billing.status_changed").await;
    assert_eq!(entries.len(), 1 + steps.len(), "{entries:?}");
    for e in &entries {
        assert_eq!(e["actor"], "stripe:webhook");
        assert_eq!(e["target"], org);
        assert!(e["request_id"].is_string());
    }
    assert_eq!(entries[0]["before"]["status"], "trialing");
    assert_eq!(entries[0]["after"]["status"], "active");
    assert_eq!(entries[0]["after"]["stripe_event"]["id"], "evt_checkout");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_refusal_reason_answers_402_on_every_ingest_route_and_reading_still_works() {
    let dir = temp_dir("billing-guard");
    let a = bootstrap(&dir);
    let s = start(&dir, "http://127.0.0.1:9", &[], "");
    let c = client();
    let key = a.api_key.as_str();
    let (st, v) = ingest_one(&c, &s, key, "Owls hunt at night and sleep during the day.").await;
    assert_eq!(st, 200, "{v}");

    let cases: &[(Value, &str, &str)] = &[
        (
            json!({"status": "trialing", "trial_ends_at": past()}),
            "trial_ended",
            "expired",
        ),
        (
            json!({"status": "active", "subscription_expires_at": past()}),
            "subscription_expired",
            "expired",
        ),
        (
            json!({"status": "past_due", "subscription_expires_at": null}),
            "billing_status_past_due",
            "past_due",
        ),
        (
            json!({"status": "canceled"}),
            "billing_status_canceled",
            "canceled",
        ),
        (
            json!({"status": "expired"}),
            "billing_status_expired",
            "expired",
        ),
        (
            json!({"status": "incomplete"}),
            "billing_status_incomplete",
            "incomplete",
        ),
        (
            json!({"status": "unpaid"}),
            "billing_status_unpaid",
            "unpaid",
        ),
        (
            json!({"status": "paused"}),
            "billing_status_paused",
            "paused",
        ),
    ];
    for (body, reason, status) in cases {
        let (st, v) = patch(&c, &s, key, body.clone()).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["billing"]["blocked_reason"], *reason, "{v}");
        assert_eq!(v["billing"]["effective_status"], *status, "{v}");

        let text = ingest_one(&c, &s, key, "Blocked text.").await;
        let files = upload(&c, &s, key, vec![("a.txt", b"Blocked file.".to_vec())]).await;
        let urls = json(
            c.post(s.url("/api/v1/ingest/urls"))
                .bearer_auth(key)
                .json(&json!({"urls": ["https://example.com/doc"]})),
        )
        .await;
        for (route, (st, v)) in [("text", text), ("files", files), ("urls", urls)] {
            assert_eq!(st, 402, "{reason} {route}: {v}");
            assert_eq!(v["error"], "billing_blocked");
            assert_eq!(v["reason"], *reason);
            assert_eq!(v["billing_status"], *status);
            assert!(
                v["message"]
                    .as_str()
                    .unwrap()
                    .contains("asking and reading still work")
            );
        }
        // Asking, searching and reading are not billing-guarded.
        let (st, v) = ask(&c, &s, key, json!({"question": "When do owls hunt?"})).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["abstained"], false, "{v}");
        let (st, _) = json(c.get(s.url("/api/v1/sources")).bearer_auth(key)).await;
        assert_eq!(st, 200);
        // The agent's early refusal reads the same verdict.
        let p = principal(&c, &s, key).await;
        assert_eq!(p["billing_status"], *status);
        assert_eq!(p["billing_blocked_reason"], *reason);
    }

    // Back to good standing: ingest works again at once.
    let (st, v) = patch(
        &c,
        &s,
        key,
        json!({"status": "active", "subscription_expires_at": null}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["billing"]["blocked"], false);
    assert_eq!(ingest_one(&c, &s, key, "Back in business.").await.0, 200);

    // Every refusal left a billing.blocked line in the log file.
    std::thread::sleep(Duration::from_millis(200));
    let lines = log_file(&dir);
    assert_log_schema(&lines);
    let blocked: Vec<Value> = lines
        .into_iter()
        .filter(|l| l["event"] == "billing.blocked")
        .collect();
    assert_eq!(blocked.len(), cases.len() * 3, "{blocked:?}");
    for (body, reason, status) in cases {
        let _ = body;
        let line = blocked
            .iter()
            .find(|l| l["reason"] == *reason)
            .unwrap_or_else(|| panic!("no billing.blocked line for {reason}"));
        assert_eq!(line["organization_id"], a.organization_id.as_str());
        assert_eq!(line["workspace_id"], a.workspace_id.as_str());
        assert_eq!(line["billing_status"], *status);
        assert!(line["request_id"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_ingest_and_job_submissions_are_guarded_too() {
    let dir = temp_dir("billing-jobs");
    let a = bootstrap(&dir);
    let s = start(
        &dir,
        "http://127.0.0.1:9",
        &[("BACKGROUND_JOBS_ENABLED", "true")],
        "",
    );
    let c = client();
    let key = a.api_key.as_str();
    let (st, v) = ingest_one(&c, &s, key, "Queued while trialing.").await;
    assert_eq!(st, 202, "{v}");

    let (st, _) = patch(&c, &s, key, json!({"status": "canceled"})).await;
    assert_eq!(st, 200);
    let (st, v) = ingest_one(&c, &s, key, "Queued while canceled.").await;
    assert_eq!(st, 402, "{v}");
    assert_eq!(v["reason"], "billing_status_canceled");
    let (st, v) = upload(&c, &s, key, vec![("b.md", b"# Title\n\nBody.".to_vec())]).await;
    assert_eq!(st, 402, "{v}");
    for name in ["ingest_text", "ingest_files", "ingest_urls"] {
        let (st, v) = json(
            c.post(s.url("/api/v1/jobs"))
                .bearer_auth(key)
                .json(&json!({"name": name, "payload": {"documents": []}})),
        )
        .await;
        assert_eq!(st, 402, "{name}: {v}");
        assert_eq!(v["error"], "billing_blocked");
    }
    // Other jobs are not ingest.
    let (st, v) = json(
        c.post(s.url("/api/v1/jobs"))
            .bearer_auth(key)
            .json(&json!({"name": "embed"})),
    )
    .await;
    assert_eq!(st, 202, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_signatures_are_verified_and_failures_change_nothing() {
    let dir = temp_dir("billing-signatures");
    let a = bootstrap(&dir);
    let s = start(&dir, "http://127.0.0.1:9", &[], "");
    let c = client();
    let ev = event(
        "evt_sig",
        "checkout.session.completed",
        now(),
        json!({"mode": "subscription", "customer": "cus_s", "subscription": "sub_s",
               "metadata": {"organization_id": a.organization_id}}),
    );
    let body = ev.to_string();
    let url = s.url("/api/v1/billing/stripe/webhook");
    let send = |sig: Option<String>, body: String| {
        let mut r = c
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(sig) = sig {
            r = r.header("stripe-signature", sig);
        }
        json(r)
    };
    let t = now();
    let good_sig = sign(WEBHOOK_SECRET, t, &body);
    let cases: Vec<(&str, Option<String>, String, &str)> = vec![
        ("missing", None, body.clone(), "missing_signature"),
        (
            "garbage",
            Some("nonsense".into()),
            body.clone(),
            "invalid_signature",
        ),
        (
            "tampered body",
            Some(format!("t={t},v1={good_sig}")),
            body.replace("cus_s", "cus_evil"),
            "invalid_signature",
        ),
        (
            "wrong secret",
            Some(format!(
                "t={t},v1={}",
                sign("whsec_someone_else_0000", t, &body)
            )),
            body.clone(),
            "invalid_signature",
        ),
        (
            "stale timestamp",
            Some(format!(
                "t={},v1={}",
                t - 301,
                sign(WEBHOOK_SECRET, t - 301, &body)
            )),
            body.clone(),
            "stale_signature",
        ),
        (
            "signed garbage",
            Some(format!("t={t},v1={}", sign(WEBHOOK_SECRET, t, "{}"))),
            "{}".into(),
            "invalid_event",
        ),
    ];
    for (name, sig, body, code) in cases {
        let (st, v) = send(sig, body).await;
        assert_eq!(st, 400, "{name}: {v}");
        assert_eq!(v["error"], code, "{name}: {v}");
    }
    let b = billing(&c, &s, &a.api_key).await;
    assert_eq!(b["status"], "trialing", "refused events change nothing");
    assert!(b["stripe_customer_id"].is_null());

    // The genuine one goes through.
    let (st, v) = send(Some(format!("t={t},v1={good_sig}")), body.clone()).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(billing(&c, &s, &a.api_key).await["status"], "active");

    // Refusals are logged with their reason, never with the secret or the signature.
    std::thread::sleep(Duration::from_millis(200));
    let raw = std::fs::read_to_string(dir.join("logs/rag.log")).unwrap();
    assert!(!raw.contains(WEBHOOK_SECRET));
    assert!(!raw.contains(&good_sig));
    let lines = log_file(&dir);
    assert_log_schema(&lines);
    let reasons: Vec<String> = lines
        .iter()
        .filter(|l| l["event"] == "billing.webhook.rejected")
        .map(|l| l["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    for r in [
        "missing_signature",
        "invalid_signature",
        "stale_signature",
        "invalid_event",
    ] {
        assert!(reasons.iter().any(|x| x == r), "{r} not in {reasons:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicates_late_events_unknown_organizations_and_types() {
    let dir = temp_dir("billing-idempotency");
    let a = bootstrap(&dir);
    let s = start(&dir, "http://127.0.0.1:9", &[], "");
    let c = client();
    let key = a.api_key.as_str();
    let org = a.organization_id.as_str();
    let t0 = now() - 1000;

    let checkout = event(
        "evt_dup",
        "checkout.session.completed",
        t0,
        json!({"mode": "subscription", "customer": "cus_d", "subscription": "sub_d",
               "metadata": {"organization_id": org, "plan": "pro"}}),
    );
    let (st, v) = post_event(&c, &s, &checkout).await;
    assert_eq!((st, v["duplicate"].clone()), (200, json!(false)), "{v}");
    // Stripe redelivers the same event: acknowledged, not applied again.
    let (st, v) = post_event(&c, &s, &checkout).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["received"], true);
    assert_eq!(v["duplicate"], true);
    assert_eq!(v["outcome"], "applied");
    // A manual change in between must survive the redelivery.
    let (st, _) = patch(&c, &s, key, json!({"plan": "enterprise"})).await;
    assert_eq!(st, 200);
    let (_, v) = post_event(&c, &s, &checkout).await;
    assert_eq!(v["duplicate"], true);
    assert_eq!(billing(&c, &s, key).await["plan"], "enterprise");
    assert_eq!(audit(&c, &s, key, "billing.status_changed").await.len(), 1);

    // Out of order: the newer event (active) arrives first, the older (past_due) later.
    let sub = |status: &str| {
        json!({"id": "sub_d", "customer": "cus_d", "status": status,
               "current_period_end": future_unix(), "metadata": {"organization_id": org}})
    };
    let (_, v) = post_event(
        &c,
        &s,
        &event(
            "evt_newer",
            "customer.subscription.updated",
            t0 + 20,
            sub("active"),
        ),
    )
    .await;
    assert_eq!(v["outcome"], "applied", "{v}");
    let (st, v) = post_event(
        &c,
        &s,
        &event(
            "evt_older",
            "customer.subscription.updated",
            t0 + 10,
            sub("past_due"),
        ),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["outcome"], "stale", "{v}");
    let b = billing(&c, &s, key).await;
    assert_eq!(b["status"], "active");
    assert!(
        b["subscription_expires_at"].is_string(),
        "period end from the top-level field: {b}"
    );
    // An event in the same second as the last applied one still applies.
    let (_, v) = post_event(
        &c,
        &s,
        &event(
            "evt_same_second",
            "customer.subscription.updated",
            t0 + 20,
            sub("past_due"),
        ),
    )
    .await;
    assert_eq!(v["outcome"], "applied", "{v}");

    // Unknown organization (neither metadata nor customer match): acknowledged, recorded.
    let (st, v) = post_event(
        &c,
        &s,
        &event(
            "evt_unknown_org",
            "customer.subscription.updated",
            t0 + 30,
            json!({"id": "sub_x", "customer": "cus_nobody", "status": "canceled",
                   "metadata": {"organization_id": "org_doesnotexist"}}),
        ),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["outcome"], "unknown_organization");
    // Unknown event types are acknowledged and ignored.
    let (st, v) = post_event(
        &c,
        &s,
        &event(
            "evt_other_type",
            "charge.refunded",
            t0 + 40,
            json!({"customer": "cus_d"}),
        ),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["outcome"], "ignored");
    let (_, v) = post_event(
        &c,
        &s,
        &event(
            "evt_other_type",
            "charge.refunded",
            t0 + 40,
            json!({"customer": "cus_d"}),
        ),
    )
    .await;
    assert_eq!(v["duplicate"], true);
    assert_eq!(billing(&c, &s, key).await["status"], "past_due");
}

#[tokio::test(flavor = "multi_thread")]
async fn checkout_and_portal_sessions_go_to_stripe_with_ids_metadata_and_idempotency() {
    let (base, fake) = start_fake().await;
    let dir = temp_dir("billing-checkout");
    let a = bootstrap(&dir);
    let s = start(&dir, &base, &[], "");
    let c = client();
    let key = a.api_key.as_str();
    let org = a.organization_id.as_str();

    // No customer yet: nothing to open a portal for.
    let (st, v) = json(
        c.post(s.url("/api/v1/billing/portal"))
            .bearer_auth(key)
            .json(&json!({"return_url": "https://app.example.com/settings"})),
    )
    .await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["error"], "no_stripe_customer");

    let checkout = |rid: &str, body: Value| {
        c.post(s.url("/api/v1/billing/checkout"))
            .bearer_auth(key)
            .header("x-request-id", rid)
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .json(&body)
    };
    let body = json!({"plan": "pro", "success_url": "https://app.example.com/ok?s={CHECKOUT_SESSION_ID}",
                      "cancel_url": "https://app.example.com/cancel"});
    let (st, v) = json(checkout("req-checkout-1", body.clone())).await;
    assert_eq!(st, 201, "{v}");
    assert!(
        v["url"]
            .as_str()
            .unwrap()
            .starts_with("https://checkout.stripe.test/")
    );
    assert!(v["session_id"].as_str().unwrap().starts_with("cs_test_"));
    assert_eq!(v["request_id"], "req-checkout-1");

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.path, "/v1/checkout/sessions");
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {API_KEY}").as_str())
    );
    assert_eq!(r.header("x-request-id"), Some("req-checkout-1"));
    let idem = r.header("idempotency-key").unwrap();
    assert!(
        idem.contains("req-checkout-1") && idem.contains("checkout.create"),
        "{idem}"
    );
    let tp = r.header("traceparent").expect("traceparent");
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/x-www-form-urlencoded")
    );
    assert_eq!(r.field("mode"), Some("subscription"));
    assert_eq!(r.field("line_items[0][price]"), Some(PRICE_PRO));
    assert_eq!(r.field("line_items[0][quantity]"), Some("1"));
    assert_eq!(r.field("metadata[organization_id]"), Some(org));
    assert_eq!(r.field("metadata[request_id]"), Some("req-checkout-1"));
    assert_eq!(r.field("client_reference_id"), Some("req-checkout-1"));
    assert_eq!(
        r.field("subscription_data[metadata][organization_id]"),
        Some(org)
    );
    assert_eq!(
        r.field("success_url"),
        Some("https://app.example.com/ok?s={CHECKOUT_SESSION_ID}")
    );
    assert_eq!(r.field("customer"), None, "no customer known yet");

    // Audited, with the request id of the call.
    let entries = audit(&c, &s, key, "billing.checkout_created").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["request_id"], "req-checkout-1");
    assert_eq!(entries[0]["after"]["plan"], "pro");
    assert!(entries[0]["actor"].as_str().unwrap().starts_with("user:"));

    // Refused before Stripe is called.
    for bad in [
        json!({"plan": "free", "success_url": "https://a.test/", "cancel_url": "https://a.test/"}),
        json!({"plan": "pro", "success_url": "not a url", "cancel_url": "https://a.test/"}),
        json!({"plan": "pro", "success_url": "https://a.test/", "cancel_url": "javascript:alert(1)"}),
    ] {
        let (st, v) = json(checkout("req-bad", bad)).await;
        assert_eq!(st, 422, "{v}");
    }
    assert_eq!(fake.requests().len(), 1);

    // Once a checkout completed, the customer is reused and the portal opens.
    let (st, _) = post_event(
        &c,
        &s,
        &event(
            "evt_done",
            "checkout.session.completed",
            now(),
            json!({"mode": "subscription", "customer": "cus_portal", "subscription": "sub_p",
                   "metadata": {"organization_id": org, "plan": "pro"}}),
        ),
    )
    .await;
    assert_eq!(st, 200);
    let (st, _) = json(checkout("req-checkout-2", body.clone())).await;
    assert_eq!(st, 201);
    assert_eq!(fake.requests()[1].field("customer"), Some("cus_portal"));

    let (st, v) = json(
        c.post(s.url("/api/v1/billing/portal"))
            .bearer_auth(key)
            .header("x-request-id", "req-portal-1")
            .json(&json!({"return_url": "https://app.example.com/settings"})),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    assert!(
        v["url"]
            .as_str()
            .unwrap()
            .starts_with("https://billing.stripe.test/")
    );
    let p = fake.requests().last().cloned().unwrap();
    assert_eq!(p.path, "/v1/billing_portal/sessions");
    assert_eq!(p.field("customer"), Some("cus_portal"));
    assert_eq!(
        p.field("return_url"),
        Some("https://app.example.com/settings")
    );
    assert_eq!(p.header("x-request-id"), Some("req-portal-1"));
    assert!(
        p.header("idempotency-key")
            .unwrap()
            .contains("portal.create")
    );
    assert_eq!(
        p.header("authorization"),
        Some(format!("Bearer {API_KEY}").as_str())
    );
    assert_eq!(audit(&c, &s, key, "billing.portal_created").await.len(), 1);

    // Billing is for owners and admins only.
    let editor = editor_key(&c, &s, key).await;
    let n = fake.requests().len();
    for req in [
        c.post(s.url("/api/v1/billing/checkout")).json(&body),
        c.post(s.url("/api/v1/billing/portal"))
            .json(&json!({"return_url": "https://a.test/"})),
        c.get(s.url("/api/v1/admin/billing")),
        c.patch(s.url("/api/v1/admin/billing"))
            .json(&json!({"status": "active"})),
    ] {
        let (st, v) = json(req.bearer_auth(&editor)).await;
        assert_eq!(st, 403, "{v}");
    }
    assert_eq!(fake.requests().len(), n);
    // An editor still ingests.
    assert_eq!(ingest_one(&c, &s, &editor, "Editors ingest.").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn stripe_failures_answer_502_and_are_counted() {
    let (base, fake) = start_fake().await;
    let dir = temp_dir("billing-stripe-errors");
    let a = bootstrap(&dir);
    let s = start(&dir, &base, &[], "  request_timeout_seconds: 1\n");
    let c = client();
    let key = a.api_key.as_str();
    let checkout_series =
        r#"external_request_errors_total{service="stripe",operation="checkout.create"}"#;
    let portal_series =
        r#"external_request_errors_total{service="stripe",operation="portal.create"}"#;
    assert_eq!(metric(&c, &s, checkout_series).await, Some(0.0));
    assert_eq!(metric(&c, &s, portal_series).await, Some(0.0));

    let body = json!({"plan": "enterprise", "success_url": "https://a.test/ok", "cancel_url": "https://a.test/no"});
    fake.set_mode(500);
    let (st, v) = json(
        c.post(s.url("/api/v1/billing/checkout"))
            .bearer_auth(key)
            .json(&body),
    )
    .await;
    assert_eq!(st, 502, "{v}");
    assert_eq!(v["error"], "stripe_error");
    assert_eq!(v["stripe_status"], 500);
    assert_eq!(v["operation"], "checkout.create");
    assert_eq!(metric(&c, &s, checkout_series).await, Some(1.0));
    assert_eq!(
        fake.requests()[0].field("line_items[0][price]"),
        Some(PRICE_ENTERPRISE)
    );

    fake.set_mode(400);
    let (st, _) = json(
        c.post(s.url("/api/v1/billing/checkout"))
            .bearer_auth(key)
            .json(&body),
    )
    .await;
    assert_eq!(st, 502);
    assert_eq!(metric(&c, &s, checkout_series).await, Some(2.0));

    // A Stripe that does not answer in time.
    fake.set_mode(1);
    let (st, v) = json(
        c.post(s.url("/api/v1/billing/checkout"))
            .bearer_auth(key)
            .json(&body),
    )
    .await;
    assert_eq!(st, 502, "{v}");
    assert!(v["message"].as_str().unwrap().contains("within 1 s"), "{v}");
    assert_eq!(metric(&c, &s, checkout_series).await, Some(3.0));
    assert_eq!(metric(&c, &s, portal_series).await, Some(0.0));
    // Nothing was audited for the failures.
    assert!(
        audit(&c, &s, key, "billing.checkout_created")
            .await
            .is_empty()
    );

    std::thread::sleep(Duration::from_millis(200));
    let failed: Vec<Value> = log_file(&dir)
        .into_iter()
        .filter(|l| l["event"] == "external.request_failed" && l["service"] == "stripe")
        .collect();
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert_eq!(failed[0]["operation"], "checkout.create");
    let raw = std::fs::read_to_string(dir.join("logs/rag.log")).unwrap();
    assert!(!raw.contains(API_KEY), "the API key never reaches the log");

    // An unreachable Stripe (nothing listens on the port) is a 502 as well.
    let dir2 = temp_dir("billing-stripe-down");
    let b = bootstrap(&dir2);
    let s2 = start(&dir2, "http://127.0.0.1:9", &[], "");
    let (st, v) = json(
        c.post(s2.url("/api/v1/billing/checkout"))
            .bearer_auth(&b.api_key)
            .json(&body),
    )
    .await;
    assert_eq!(st, 502, "{v}");
    assert!(v["stripe_status"].is_null());
    assert_eq!(metric(&c, &s2, checkout_series).await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_billing_can_be_read_and_corrected_with_an_audit_trail() {
    let dir = temp_dir("billing-admin");
    let a = bootstrap(&dir);
    let s = start(&dir, "http://127.0.0.1:9", &[], "");
    let c = client();
    let key = a.api_key.as_str();

    let b = billing(&c, &s, key).await;
    assert_eq!(b["organization_id"], a.organization_id.as_str());
    assert_eq!(b["status"], "trialing");
    assert_eq!(b["effective_status"], "trialing");
    assert_eq!(b["blocked"], false);
    assert!(b["blocked_reason"].is_null());
    assert!(b["trial_ends_at"].is_string());

    for bad in [
        json!({}),
        json!({"status": "gold"}),
        json!({"plan": "platinum"}),
        json!({"trial_ends_at": "tomorrow"}),
        json!({"subscription_expires_at": 5}),
        json!({"status": "active", "colour": "blue"}),
    ] {
        let (st, v) = patch(&c, &s, key, bad.clone()).await;
        assert_eq!(st, 422, "{bad}: {v}");
    }
    assert_eq!(audit(&c, &s, key, "billing.updated").await.len(), 0);

    let (st, v) = json(
        c.patch(s.url("/api/v1/admin/billing"))
            .bearer_auth(key)
            .header("x-request-id", "req-patch-1")
            .json(&json!({"plan": "pro", "status": "active",
                           "subscription_expires_at": "2099-01-01T10:00:00+02:00", "trial_ends_at": null})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let b = &v["billing"];
    assert_eq!(b["plan"], "pro");
    assert_eq!(b["status"], "active");
    assert_eq!(b["subscription_expires_at"], "2099-01-01T08:00:00.000Z");
    assert!(b["trial_ends_at"].is_null());
    assert_eq!(billing(&c, &s, key).await["plan"], "pro");

    let entries = audit(&c, &s, key, "billing.").await;
    let e = entries
        .iter()
        .find(|e| e["action"] == "billing.updated")
        .expect("billing.updated audited");
    assert_eq!(e["request_id"], "req-patch-1");
    assert_eq!(e["target"], a.organization_id.as_str());
    assert!(e["actor"].as_str().unwrap().starts_with("user:"));
    assert!(e["actor_key_id"].is_string());
    assert_eq!(e["before"]["status"], "trialing");
    assert_eq!(e["before"]["plan"], "free");
    assert_eq!(e["after"]["status"], "active");
    assert_eq!(e["after"]["plan"], "pro");

    // Without a key, or with a non-admin key: refused.
    let (st, _) = json(c.get(s.url("/api/v1/admin/billing"))).await;
    assert_eq!(st, 401);
    let editor = editor_key(&c, &s, key).await;
    let (st, v) = patch(&c, &s, &editor, json!({"status": "canceled"})).await;
    assert_eq!(st, 403, "{v}");
    assert_eq!(billing(&c, &s, key).await["status"], "active");
}

#[tokio::test(flavor = "multi_thread")]
async fn billing_routes_answer_503_when_stripe_is_not_configured() {
    let dir = temp_dir("billing-unconfigured");
    let a = bootstrap(&dir);
    let s = Server::start(&dir);
    let c = client();
    let ev = event("evt_x", "checkout.session.completed", now(), json!({}));
    let body = ev.to_string();
    let t = now();
    let (st, v) = json(
        c.post(s.url("/api/v1/billing/stripe/webhook"))
            .header(
                "stripe-signature",
                format!("t={t},v1={}", sign(WEBHOOK_SECRET, t, &body)),
            )
            .body(body),
    )
    .await;
    assert_eq!(st, 503, "{v}");
    assert_eq!(v["error"], "billing_not_configured");
    let (st, v) = json(
        c.post(s.url("/api/v1/billing/checkout"))
            .bearer_auth(&a.api_key)
            .json(&json!({"plan": "pro", "success_url": "https://a.test/", "cancel_url": "https://a.test/"})),
    )
    .await;
    assert_eq!(st, 503, "{v}");
    assert_eq!(v["error"], "billing_not_configured");
    // Without Stripe, billing state still works and the guard still applies.
    assert_eq!(billing(&c, &s, &a.api_key).await["status"], "trialing");
}

#[test]
fn placeholder_stripe_secrets_stop_the_server() {
    let dir = temp_dir("billing-placeholder");
    for (name, value) in [
        ("STRIPE_API_KEY", "changeme"),
        ("STRIPE_WEBHOOK_SECRET", "<your webhook secret>"),
    ] {
        let mut child = std::process::Command::new(bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&dir)
            .env_remove("RAG_CORE_ALLOW_PLACEHOLDER_SECRETS")
            .env(name, value)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run rag-core");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{name} placeholder: serve kept running");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "{name} placeholder must stop serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("{name} holds a placeholder")),
            "{stderr}"
        );
    }
}
