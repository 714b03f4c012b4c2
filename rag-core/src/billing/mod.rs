//! Billing: organization billing state, the ingest guard (402), Stripe webhooks and
//! checkout/portal sessions. See `docs/billing.md`.
//!
//! Stripe is the source of truth for paid plans: webhooks move the state, admins can
//! correct it by hand, and every change lands in the audit trail. The guard reads the
//! state on each ingest request, so a change applies to the next request without a cache.

pub mod api;
pub mod config;
mod stripe;
pub mod webhook;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::{Value, json};

pub use config::BillingConfig;

use crate::api::error::ApiError;
use crate::store::StoreError;
use crate::tenancy::Principal;

/// Migration v5: Stripe links and the event clock on organizations, and the record of
/// processed Stripe events (idempotency by event id).
pub const SCHEMA: &str = r#"
ALTER TABLE organizations ADD COLUMN stripe_customer_id TEXT;
ALTER TABLE organizations ADD COLUMN stripe_subscription_id TEXT;
-- `created` (Unix seconds) of the newest Stripe event applied to the organization; an
-- event older than it arrives late and is not applied.
ALTER TABLE organizations ADD COLUMN billing_event_created INTEGER;
ALTER TABLE organizations ADD COLUMN billing_updated_at TEXT;
CREATE INDEX organizations_stripe_customer ON organizations(stripe_customer_id);
CREATE TABLE stripe_events (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    organization_id TEXT,
    created INTEGER NOT NULL,
    received_at TEXT NOT NULL,
    outcome TEXT NOT NULL,
    request_id TEXT
);
CREATE INDEX stripe_events_org ON stripe_events(organization_id, received_at);
"#;

/// Reason codes of a 402, in the order they are checked (docs/billing.md).
pub const REASONS: &[&str] = &[
    "trial_ended",
    "subscription_expired",
    "billing_status_past_due",
    "billing_status_canceled",
    "billing_status_expired",
    "billing_status_incomplete",
    "billing_status_unpaid",
    "billing_status_paused",
    "billing_status_unknown",
];

/// An organization's billing columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BillingState {
    pub organization_id: String,
    pub plan: String,
    pub status: String,
    pub trial_ends_at: Option<String>,
    pub subscription_expires_at: Option<String>,
    pub stripe_customer_id: Option<String>,
    pub stripe_subscription_id: Option<String>,
    #[serde(skip)]
    pub last_event_created: Option<i64>,
    pub updated_at: Option<String>,
}

/// The stored timestamp form (UTC, milliseconds, `Z`): string order is time order.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Stripe's Unix-seconds timestamps in the stored form.
pub fn from_unix(secs: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp(secs, 0).map(format_time)
}

fn status_reason(status: &str) -> &'static str {
    match status {
        "past_due" => "billing_status_past_due",
        "canceled" => "billing_status_canceled",
        "expired" => "billing_status_expired",
        "incomplete" => "billing_status_incomplete",
        "unpaid" => "billing_status_unpaid",
        "paused" => "billing_status_paused",
        _ => "billing_status_unknown",
    }
}

/// Why ingest is refused now, if it is. An unreadable timestamp counts as unset: only
/// hand-edited rows can hold one, and refusing paying customers over it is worse.
fn blocked_reason(
    status: &str,
    trial_ends_at: &Option<String>,
    subscription_expires_at: &Option<String>,
    now: DateTime<Utc>,
) -> Option<&'static str> {
    let passed = |t: &Option<String>| t.as_deref().and_then(parse_time).is_some_and(|t| t <= now);
    match status {
        "trialing" if passed(trial_ends_at) => Some("trial_ended"),
        "trialing" | "active" if passed(subscription_expires_at) => Some("subscription_expired"),
        "trialing" | "active" => None,
        other => Some(status_reason(other)),
    }
}

/// The status that holds now: a trial or subscription whose end has passed is `expired`.
fn effective_status<'a>(status: &'a str, reason: Option<&str>) -> &'a str {
    match reason {
        Some("trial_ended" | "subscription_expired") => "expired",
        _ => status,
    }
}

/// The caller's organization's blocked reason and effective status now, from the
/// principal (resolved with the billing columns, so no second read).
pub fn principal_billing(p: &Principal, now: DateTime<Utc>) -> (Option<&'static str>, &str) {
    let reason = blocked_reason(
        &p.billing_status,
        &p.trial_ends_at,
        &p.subscription_expires_at,
        now,
    );
    (reason, effective_status(&p.billing_status, reason))
}

impl BillingState {
    pub fn blocked_reason(&self, now: DateTime<Utc>) -> Option<&'static str> {
        blocked_reason(
            &self.status,
            &self.trial_ends_at,
            &self.subscription_expires_at,
            now,
        )
    }

    /// The status that holds now: a trial or subscription whose end has passed is
    /// `expired` even before any webhook says so. The agent reads this one (through the
    /// principal), so its early 402 (`billing_blocked_statuses`) agrees.
    pub fn effective_status(&self, now: DateTime<Utc>) -> &str {
        effective_status(&self.status, self.blocked_reason(now))
    }

    /// What the audit trail records as before/after.
    pub fn snapshot(&self) -> Value {
        json!({
            "plan": self.plan,
            "status": self.status,
            "trial_ends_at": self.trial_ends_at,
            "subscription_expires_at": self.subscription_expires_at,
            "stripe_customer_id": self.stripe_customer_id,
            "stripe_subscription_id": self.stripe_subscription_id,
        })
    }

    /// The API view: stored state plus what it means now.
    pub fn view(&self, now: DateTime<Utc>) -> Value {
        let reason = self.blocked_reason(now);
        json!({
            "organization_id": self.organization_id,
            "plan": self.plan,
            "status": self.status,
            "effective_status": self.effective_status(now),
            "blocked": reason.is_some(),
            "blocked_reason": reason,
            "trial_ends_at": self.trial_ends_at,
            "subscription_expires_at": self.subscription_expires_at,
            "stripe_customer_id": self.stripe_customer_id,
            "stripe_subscription_id": self.stripe_subscription_id,
            "updated_at": self.updated_at,
        })
    }
}

pub fn load(conn: &Connection, organization_id: &str) -> Result<Option<BillingState>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT id, plan, billing_status, trial_ends_at, subscription_expires_at, \
                    stripe_customer_id, stripe_subscription_id, billing_event_created, billing_updated_at \
             FROM organizations WHERE id = ?1",
            [organization_id],
            |r| {
                Ok(BillingState {
                    organization_id: r.get(0)?,
                    plan: r.get(1)?,
                    status: r.get(2)?,
                    trial_ends_at: r.get(3)?,
                    subscription_expires_at: r.get(4)?,
                    stripe_customer_id: r.get(5)?,
                    stripe_subscription_id: r.get(6)?,
                    last_event_created: r.get(7)?,
                    updated_at: r.get(8)?,
                })
            },
        )
        .optional()?)
}

/// The organization linked to a Stripe customer (the newest link wins if, by hand,
/// two organizations share one).
pub fn organization_of_customer(
    conn: &Connection,
    customer: &str,
) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT id FROM organizations WHERE stripe_customer_id = ?1 \
             ORDER BY billing_updated_at DESC LIMIT 1",
            [customer],
            |r| r.get(0),
        )
        .optional()?)
}

/// Writes every billing column of `s` (and stamps `billing_updated_at`).
pub fn save(conn: &Connection, s: &BillingState) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE organizations SET plan = ?2, billing_status = ?3, trial_ends_at = ?4, \
         subscription_expires_at = ?5, stripe_customer_id = ?6, stripe_subscription_id = ?7, \
         billing_event_created = ?8, billing_updated_at = ?9 WHERE id = ?1",
        params![
            s.organization_id,
            s.plan,
            s.status,
            s.trial_ends_at,
            s.subscription_expires_at,
            s.stripe_customer_id,
            s.stripe_subscription_id,
            s.last_event_created,
            s.updated_at,
        ],
    )?;
    Ok(())
}

fn refusal_message(reason: &str, status: &str) -> String {
    match reason {
        "trial_ended" => "the organization's trial has ended; subscribe to a plan to ingest again \
                          (asking and reading still work)"
            .into(),
        "subscription_expired" => "the organization's subscription has expired; renew it to \
                                   ingest again (asking and reading still work)"
            .into(),
        _ => format!(
            "ingest is blocked while the organization's billing status is {status} \
             (asking and reading still work)"
        ),
    }
}

/// The ingest guard: 402 `billing_blocked` when the caller's organization may not ingest
/// now. Called by every ingest entry point before it reads or queues anything; the
/// principal was resolved from the store for this request, so it is as fresh as a read.
pub fn guard(p: &Principal) -> Result<(), ApiError> {
    let (reason, status) = principal_billing(p, Utc::now());
    let Some(reason) = reason else {
        return Ok(());
    };
    let status = status.to_string();
    tracing::warn!(
        event = "billing.blocked",
        reason,
        billing_status = %status,
        organization_id = %p.organization_id,
        workspace_id = %p.workspace_id,
        "ingest refused: {reason}"
    );
    Err(ApiError::new(
        StatusCode::PAYMENT_REQUIRED,
        "billing_blocked",
        refusal_message(reason, &status),
    )
    .with("reason", reason)
    .with("billing_status", status))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(status: &str, trial: Option<&str>, expires: Option<&str>) -> BillingState {
        BillingState {
            organization_id: "org_1".into(),
            plan: "pro".into(),
            status: status.into(),
            trial_ends_at: trial.map(str::to_owned),
            subscription_expires_at: expires.map(str::to_owned),
            stripe_customer_id: None,
            stripe_subscription_id: None,
            last_event_created: None,
            updated_at: None,
        }
    }

    #[test]
    fn each_reason_and_the_effective_status() {
        let now = Utc::now();
        let past = format_time(now - chrono::Duration::hours(1));
        let future = format_time(now + chrono::Duration::hours(1));
        let cases: &[(BillingState, Option<&str>, &str)] = &[
            (state("trialing", Some(&future), None), None, "trialing"),
            (
                state("trialing", Some(&past), None),
                Some("trial_ended"),
                "expired",
            ),
            (
                state("trialing", Some(&future), Some(&past)),
                Some("subscription_expired"),
                "expired",
            ),
            (state("active", Some(&past), None), None, "active"),
            (state("active", None, Some(&future)), None, "active"),
            (
                state("active", None, Some(&past)),
                Some("subscription_expired"),
                "expired",
            ),
            (
                state("past_due", None, Some(&future)),
                Some("billing_status_past_due"),
                "past_due",
            ),
            (
                state("canceled", None, None),
                Some("billing_status_canceled"),
                "canceled",
            ),
            (
                state("unpaid", None, None),
                Some("billing_status_unpaid"),
                "unpaid",
            ),
            (
                state("weird", None, None),
                Some("billing_status_unknown"),
                "weird",
            ),
            // Unreadable timestamps count as unset.
            (state("active", None, Some("not a time")), None, "active"),
        ];
        for (s, reason, effective) in cases {
            assert_eq!(s.blocked_reason(now), *reason, "{s:?}");
            assert_eq!(s.effective_status(now), *effective, "{s:?}");
            if let Some(r) = reason {
                assert!(REASONS.contains(r));
            }
        }
    }

    #[test]
    fn time_forms_round_trip() {
        assert_eq!(from_unix(0).as_deref(), Some("1970-01-01T00:00:00.000Z"));
        let t = parse_time("2026-01-31T10:00:00+02:00").unwrap();
        assert_eq!(format_time(t), "2026-01-31T08:00:00.000Z");
    }
}
