//! Stripe webhooks: signature check, then one transaction per event that records the
//! event id (idempotency), applies the change unless a newer event already has, and
//! audits it.

use ring::hmac;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

use super::{BillingConfig, BillingState, from_unix, load, organization_of_customer, save};
use crate::audit::{self, Actor, Record};
use crate::store::StoreError;
use crate::tenancy::PLANS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is missing")]
    Missing,
    #[error("the Stripe-Signature header is malformed")]
    Malformed,
    #[error("no v1 signature matches the payload")]
    Mismatch,
    #[error("the signature's timestamp is outside the tolerance")]
    Stale,
}

impl SignatureError {
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "missing_signature",
            Self::Malformed | Self::Mismatch => "invalid_signature",
            Self::Stale => "stale_signature",
        }
    }
}

/// Checks `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]` against
/// HMAC-SHA256(secret, "<t>.<body>"). The signature is checked before the timestamp, so
/// `Stale` means "genuine but too old (or too far ahead)": a replay, or a skewed clock.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secret: &str,
    tolerance_seconds: u64,
    now: i64,
) -> Result<i64, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp: Option<&str> = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else {
            continue;
        };
        match k {
            "t" if timestamp.is_none() => timestamp = Some(v),
            // Several v1 entries appear while Stripe rolls the endpoint's secret.
            "v1" => {
                if let Ok(sig) = hex::decode(v) {
                    signatures.push(sig);
                }
            }
            _ => {}
        }
    }
    let t_text = timestamp.ok_or(SignatureError::Malformed)?;
    let t: i64 = t_text.parse().map_err(|_| SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut signed = Vec::with_capacity(t_text.len() + 1 + body.len());
    signed.extend_from_slice(t_text.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    // ring's verify compares in constant time.
    if !signatures
        .iter()
        .any(|sig| hmac::verify(&key, &signed, sig).is_ok())
    {
        return Err(SignatureError::Mismatch);
    }
    if now.abs_diff(t) > tolerance_seconds {
        return Err(SignatureError::Stale);
    }
    Ok(t)
}

/// The parts of a Stripe event we use.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub kind: String,
    pub created: i64,
    pub object: Value,
}

pub fn parse_event(body: &[u8]) -> Result<Event, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let id = v["id"]
        .as_str()
        .filter(|s| !s.is_empty() && s.len() <= 255)
        .ok_or("the event has no id")?;
    let kind = v["type"]
        .as_str()
        .filter(|s| !s.is_empty() && s.len() <= 255)
        .ok_or("the event has no type")?;
    let created = v["created"]
        .as_i64()
        .ok_or("the event has no created time")?;
    Ok(Event {
        id: id.to_string(),
        kind: kind.to_string(),
        created,
        object: v["data"]["object"].clone(),
    })
}

/// Event types that change billing state; others are recorded and acknowledged.
pub const HANDLED: &[&str] = &[
    "checkout.session.completed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.payment_failed",
];

/// What became of an event (`stripe_events.outcome`, and the webhook's answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The state changed (and was audited).
    Applied,
    /// Handled, but the state already said so.
    Unchanged,
    /// Older than an event already applied to the organization.
    Stale,
    /// A type we do not act on, or an object we do not act on (a one-off payment).
    Ignored,
    /// About a subscription other than the organization's current one.
    OtherSubscription,
    /// Neither `metadata.organization_id` nor the customer names a known organization.
    UnknownOrganization,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Unchanged => "unchanged",
            Self::Stale => "stale",
            Self::Ignored => "ignored",
            Self::OtherSubscription => "other_subscription",
            Self::UnknownOrganization => "unknown_organization",
        }
    }
}

/// The result of [`process`]; `audit` must be logged once the caller knows it committed.
#[derive(Debug)]
pub struct Processed {
    pub duplicate: bool,
    pub outcome: String,
    pub organization_id: Option<String>,
    pub status_before: Option<String>,
    pub status_after: Option<String>,
    pub audit: Option<Record>,
}

/// A string field, or the `id` of an expanded object (Stripe expands on request).
fn id_of(v: &Value) -> Option<&str> {
    v.as_str()
        .or_else(|| v["id"].as_str())
        .filter(|s| !s.is_empty())
}

fn metadata_org(obj: &Value) -> Option<&str> {
    [
        &obj["metadata"],
        // Invoices carry their subscription's metadata here (older and newer API versions).
        &obj["subscription_details"]["metadata"],
        &obj["parent"]["subscription_details"]["metadata"],
    ]
    .into_iter()
    .find_map(|m| m["organization_id"].as_str().filter(|s| !s.is_empty()))
}

fn customer_of(obj: &Value) -> Option<&str> {
    id_of(&obj["customer"])
}

/// Stripe's subscription statuses in ours.
pub fn map_status(stripe: &str) -> Option<&'static str> {
    Some(match stripe {
        "trialing" => "trialing",
        "active" => "active",
        "past_due" => "past_due",
        "canceled" => "canceled",
        "unpaid" => "unpaid",
        "incomplete" => "incomplete",
        "incomplete_expired" => "expired",
        "paused" => "paused",
        _ => return None,
    })
}

/// The end of the paid period: top level on older API versions, per item since 2025-03.
fn period_end(sub: &Value) -> Option<i64> {
    sub["current_period_end"].as_i64().or_else(|| {
        sub["items"]["data"]
            .as_array()?
            .iter()
            .filter_map(|i| i["current_period_end"].as_i64())
            .max()
    })
}

fn valid_plan(p: Option<&str>) -> Option<&str> {
    p.filter(|p| PLANS.contains(p))
}

fn subscription_plan<'a>(cfg: &'a BillingConfig, sub: &'a Value) -> Option<&'a str> {
    let from_price = sub["items"]["data"].as_array().and_then(|items| {
        items
            .iter()
            .find_map(|i| i["price"]["id"].as_str().and_then(|p| cfg.plan_of_price(p)))
    });
    from_price.or_else(|| valid_plan(sub["metadata"]["plan"].as_str()))
}

fn invoice_subscription(inv: &Value) -> Option<&str> {
    id_of(&inv["subscription"])
        .or_else(|| id_of(&inv["parent"]["subscription_details"]["subscription"]))
}

/// The state after `ev`, or why it does not apply. Pure, so each rule is unit-tested.
pub fn next_state(
    cfg: &BillingConfig,
    ev: &Event,
    current: &BillingState,
) -> Result<BillingState, Outcome> {
    if let Some(last) = current.last_event_created
        && ev.created < last
    {
        return Err(Outcome::Stale);
    }
    let obj = &ev.object;
    let mut next = current.clone();
    match ev.kind.as_str() {
        "checkout.session.completed" => {
            if obj["mode"].as_str().is_some_and(|m| m != "subscription") {
                return Err(Outcome::Ignored);
            }
            let sub = id_of(&obj["subscription"]).map(str::to_owned);
            if sub.is_some() && sub != current.stripe_subscription_id {
                // A new subscription: the old period end says nothing about it, and its
                // own subscription event brings the new one.
                next.subscription_expires_at = None;
                next.stripe_subscription_id = sub;
            }
            if let Some(c) = customer_of(obj) {
                next.stripe_customer_id = Some(c.to_string());
            }
            next.status = "active".into();
            if let Some(plan) = valid_plan(obj["metadata"]["plan"].as_str()) {
                next.plan = plan.to_string();
            }
        }
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted" => {
            let Some(sub_id) = id_of(&obj["id"]) else {
                return Err(Outcome::Ignored);
            };
            let status = if ev.kind == "customer.subscription.deleted" {
                "canceled"
            } else {
                match obj["status"].as_str().and_then(map_status) {
                    Some(s) => s,
                    None => return Err(Outcome::Ignored),
                }
            };
            let terminal = matches!(status, "canceled" | "expired");
            if let Some(linked) = current.stripe_subscription_id.as_deref()
                && linked != sub_id
            {
                // A new subscription replaces the linked one only when it is created
                // alive; the end of an old one must not cancel the current one.
                if ev.kind != "customer.subscription.created" || terminal {
                    return Err(Outcome::OtherSubscription);
                }
            }
            next.stripe_subscription_id = Some(sub_id.to_string());
            if let Some(c) = customer_of(obj) {
                next.stripe_customer_id = Some(c.to_string());
            }
            next.status = status.to_string();
            let end = if ev.kind == "customer.subscription.deleted" {
                obj["ended_at"].as_i64().or_else(|| period_end(obj))
            } else {
                period_end(obj)
            };
            if let Some(end) = end.and_then(from_unix) {
                next.subscription_expires_at = Some(end);
            }
            if status == "trialing"
                && let Some(t) = obj["trial_end"].as_i64().and_then(from_unix)
            {
                next.trial_ends_at = Some(t);
            }
            if let Some(plan) = subscription_plan(cfg, obj) {
                next.plan = plan.to_string();
            }
        }
        "invoice.payment_failed" => {
            if let (Some(linked), Some(sub)) = (
                current.stripe_subscription_id.as_deref(),
                invoice_subscription(obj),
            ) && linked != sub
            {
                return Err(Outcome::OtherSubscription);
            }
            // A failed retry on an already ended subscription must not revive it.
            if matches!(current.status.as_str(), "active" | "trialing" | "past_due") {
                next.status = "past_due".into();
            }
            if next.stripe_customer_id.is_none()
                && let Some(c) = customer_of(obj)
            {
                next.stripe_customer_id = Some(c.to_string());
            }
        }
        _ => return Err(Outcome::Ignored),
    }
    next.last_event_created = Some(
        current
            .last_event_created
            .unwrap_or(ev.created)
            .max(ev.created),
    );
    Ok(next)
}

fn resolve_org(conn: &Connection, obj: &Value) -> Result<Option<String>, StoreError> {
    if let Some(org) = metadata_org(obj)
        && load(conn, org)?.is_some()
    {
        return Ok(Some(org.to_string()));
    }
    match customer_of(obj) {
        Some(c) => organization_of_customer(conn, c),
        None => Ok(None),
    }
}

/// Processes one verified event in one transaction: a repeated event id changes nothing.
pub fn process(
    conn: &mut Connection,
    cfg: &BillingConfig,
    ev: &Event,
    request_id: &str,
) -> Result<Processed, StoreError> {
    let tx = conn.transaction()?;
    let seen: Option<(String, Option<String>)> = tx
        .query_row(
            "SELECT outcome, organization_id FROM stripe_events WHERE id = ?1",
            [&ev.id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((outcome, organization_id)) = seen {
        return Ok(Processed {
            duplicate: true,
            outcome,
            organization_id,
            status_before: None,
            status_after: None,
            audit: None,
        });
    }
    let org = resolve_org(&tx, &ev.object)?;
    let mut result = Processed {
        duplicate: false,
        outcome: Outcome::Ignored.as_str().into(),
        organization_id: org.clone(),
        status_before: None,
        status_after: None,
        audit: None,
    };
    let handled = HANDLED.contains(&ev.kind.as_str());
    let current = match &org {
        Some(id) => load(&tx, id)?,
        None => None,
    };
    let outcome = match (handled, current) {
        (false, _) => Outcome::Ignored,
        (true, None) => Outcome::UnknownOrganization,
        (true, Some(current)) => match next_state(cfg, ev, &current) {
            Err(o) => o,
            Ok(mut next) => {
                result.status_before = Some(current.status.clone());
                result.status_after = Some(next.status.clone());
                let mut before_cmp = current.clone();
                before_cmp.last_event_created = next.last_event_created;
                if before_cmp == next {
                    // Keep the event clock moving even when nothing else changes.
                    save(&tx, &next)?;
                    Outcome::Unchanged
                } else {
                    next.updated_at = Some(crate::tenancy::now());
                    save(&tx, &next)?;
                    let action = if current.status != next.status {
                        "billing.status_changed"
                    } else {
                        "billing.subscription_synced"
                    };
                    let mut after = next.snapshot();
                    after["stripe_event"] = json!({"id": ev.id, "type": ev.kind});
                    result.audit = Some(audit::append(
                        &tx,
                        audit::Event::new(action, Actor::external("stripe"))
                            .organization(&next.organization_id)
                            .target(next.organization_id.clone())
                            .request(request_id)
                            .before(current.snapshot())
                            .after(after),
                    )?);
                    Outcome::Applied
                }
            }
        },
    };
    tx.execute(
        "INSERT INTO stripe_events (id, type, organization_id, created, received_at, outcome, request_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            ev.id,
            ev.kind,
            org,
            ev.created,
            crate::tenancy::now(),
            outcome.as_str(),
            request_id
        ],
    )?;
    tx.commit()?;
    result.outcome = outcome.as_str().into();
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_unit_test_secret";

    fn sign(t: &str, body: &[u8], secret: &str) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        let mut msg = format!("{t}.").into_bytes();
        msg.extend_from_slice(body);
        hex::encode(hmac::sign(&key, &msg).as_ref())
    }

    #[test]
    fn signatures() {
        let body = br#"{"id":"evt_1"}"#;
        let now = 1_700_000_000;
        let good = format!("t={now},v1={}", sign(&now.to_string(), body, SECRET));
        assert_eq!(verify(Some(&good), body, SECRET, 300, now + 10), Ok(now));
        // Extra schemes and a second (rolled) signature are fine.
        let rolled = format!(
            "t={now},v1={},v1={},v0=abc",
            sign(&now.to_string(), body, "whsec_old"),
            sign(&now.to_string(), body, SECRET)
        );
        assert_eq!(verify(Some(&rolled), body, SECRET, 300, now), Ok(now));
        assert_eq!(
            verify(None, body, SECRET, 300, now),
            Err(SignatureError::Missing)
        );
        for bad in ["", "garbage", "t=abc,v1=00", &format!("t={now}"), "v1=00"] {
            assert_eq!(
                verify(Some(bad), body, SECRET, 300, now),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            verify(Some(&good), b"{\"id\":\"evt_2\"}", SECRET, 300, now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&good), body, "whsec_other", 300, now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&good), body, SECRET, 300, now + 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(Some(&good), body, SECRET, 300, now - 301),
            Err(SignatureError::Stale)
        );
    }

    fn org() -> BillingState {
        BillingState {
            organization_id: "org_1".into(),
            plan: "free".into(),
            status: "trialing".into(),
            trial_ends_at: None,
            subscription_expires_at: None,
            stripe_customer_id: None,
            stripe_subscription_id: None,
            last_event_created: None,
            updated_at: None,
        }
    }

    fn ev(kind: &str, created: i64, object: Value) -> Event {
        Event {
            id: format!("evt_{created}"),
            kind: kind.into(),
            created,
            object,
        }
    }

    fn cfg() -> BillingConfig {
        let mut c = BillingConfig::default();
        c.prices.insert("pro".into(), "price_pro".into());
        c.prices.insert("enterprise".into(), "price_ent".into());
        c
    }

    #[test]
    fn transitions() {
        let cfg = cfg();
        let s = next_state(
            &cfg,
            &ev(
                "checkout.session.completed",
                10,
                json!({"mode": "subscription", "customer": "cus_1", "subscription": "sub_1",
                       "metadata": {"organization_id": "org_1", "plan": "pro"}}),
            ),
            &org(),
        )
        .unwrap();
        assert_eq!(
            (
                s.status.as_str(),
                s.plan.as_str(),
                s.stripe_customer_id.as_deref()
            ),
            ("active", "pro", Some("cus_1"))
        );
        assert_eq!(s.last_event_created, Some(10));

        let upd = next_state(
            &cfg,
            &ev(
                "customer.subscription.updated",
                20,
                json!({"id": "sub_1", "customer": "cus_1", "status": "past_due",
                       "items": {"data": [{"price": {"id": "price_ent"}, "current_period_end": 86400}]}}),
            ),
            &s,
        )
        .unwrap();
        assert_eq!(upd.status, "past_due");
        assert_eq!(upd.plan, "enterprise");
        assert_eq!(
            upd.subscription_expires_at.as_deref(),
            Some("1970-01-02T00:00:00.000Z")
        );

        // Older than what was applied: stale.
        let old = ev(
            "customer.subscription.updated",
            15,
            json!({"id": "sub_1", "status": "active"}),
        );
        assert_eq!(next_state(&cfg, &old, &upd), Err(Outcome::Stale));

        // Another subscription's end does not cancel the linked one.
        let other = ev(
            "customer.subscription.deleted",
            30,
            json!({"id": "sub_old", "status": "canceled"}),
        );
        assert_eq!(
            next_state(&cfg, &other, &upd),
            Err(Outcome::OtherSubscription)
        );
        let del = ev(
            "customer.subscription.deleted",
            30,
            json!({"id": "sub_1", "status": "canceled", "ended_at": 0}),
        );
        let canceled = next_state(&cfg, &del, &upd).unwrap();
        assert_eq!(canceled.status, "canceled");

        // A failed payment does not revive a canceled subscription ...
        let failed = ev(
            "invoice.payment_failed",
            40,
            json!({"customer": "cus_1", "subscription": "sub_1"}),
        );
        assert_eq!(
            next_state(&cfg, &failed, &canceled).unwrap().status,
            "canceled"
        );
        // ... but makes an active one past due.
        assert_eq!(next_state(&cfg, &failed, &s).unwrap().status, "past_due");

        assert_eq!(
            next_state(&cfg, &ev("charge.succeeded", 50, json!({})), &s),
            Err(Outcome::Ignored)
        );
        assert_eq!(map_status("incomplete_expired"), Some("expired"));
        assert_eq!(map_status("bogus"), None);
    }

    #[test]
    fn events_parse_and_need_their_fields() {
        let e =
            parse_event(br#"{"id":"evt_1","type":"x.y","created":5,"data":{"object":{"a":1}}}"#)
                .unwrap();
        assert_eq!(
            (e.id.as_str(), e.kind.as_str(), e.created),
            ("evt_1", "x.y", 5)
        );
        assert!(parse_event(b"{}").is_err());
        assert!(parse_event(b"nope").is_err());
    }
}
