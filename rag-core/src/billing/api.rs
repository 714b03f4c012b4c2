//! Billing routes: the Stripe webhook (signature only, no API key), checkout and portal
//! sessions, and `/api/v1/admin/billing`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::stripe::{self, StripeError};
use super::webhook::{self, SignatureError};
use super::{BillingState, format_time, load, parse_time, save};
use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, Auth, Ctx};
use crate::audit;
use crate::tenancy::{BILLING_STATUSES, PLANS, Principal, Role, Scope};

fn not_configured(what: &str, variable: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "billing_not_configured",
        format!("{what} is not configured on this server ({variable} is not set)"),
    )
}

/// Billing is an owner's or admin's business, whatever scopes a key lists.
fn billing_admin(auth: &Auth) -> Result<&Principal, ApiError> {
    let p = auth.require(Scope::Admin)?;
    if !matches!(p.role, Role::Owner | Role::Admin) {
        return Err(ApiError::forbidden(
            "billing needs an owner or admin of the organization",
        ));
    }
    Ok(p)
}

async fn current(state: &AppState, org: &str) -> Result<BillingState, ApiError> {
    let org = org.to_string();
    state
        .store
        .read(move |c| load(c, &org))
        .await?
        .ok_or_else(ApiError::internal)
}

// ---------------------------------------------------------------------------------------
// Webhook

/// `POST /api/v1/billing/stripe/webhook`. Answers 2xx for every verified event, also the
/// ones it does not act on, so Stripe stops retrying; 400 only for what Stripe did not
/// sign, 5xx (Stripe retries) only when the store failed.
pub async fn stripe_webhook(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    let Some(secret) = state.cfg.billing.stripe_webhook_secret.as_deref() else {
        return Err(not_configured(
            "the Stripe webhook",
            "STRIPE_WEBHOOK_SECRET",
        ));
    };
    let header = headers
        .get("stripe-signature")
        // A header that is not text cannot be a valid signature: malformed, not missing.
        .map(|v| v.to_str().unwrap_or(""));
    if let Err(e) = webhook::verify(
        header,
        &body,
        secret,
        state.cfg.billing.webhook_tolerance_seconds,
        Utc::now().timestamp(),
    ) {
        // Neither the header nor the secret is logged: the reason is enough to act on.
        tracing::warn!(
            event = "billing.webhook.rejected",
            reason = e.code(),
            bytes = body.len(),
            "Stripe webhook refused: {e}"
        );
        let message = match e {
            SignatureError::Stale => format!(
                "{e} of {} s; check the server's clock, or this is a replay",
                state.cfg.billing.webhook_tolerance_seconds
            ),
            _ => e.to_string(),
        };
        return Err(ApiError::bad_request(e.code(), message));
    }
    let ev = webhook::parse_event(&body).map_err(|m| {
        tracing::warn!(event = "billing.webhook.rejected", reason = "invalid_event", error = %m, "Stripe webhook refused");
        ApiError::bad_request("invalid_event", format!("not a Stripe event: {m}"))
    })?;
    let cfg = std::sync::Arc::clone(&state.cfg);
    let rid = ctx.request_id.clone();
    let event = ev.clone();
    let done = state
        .store
        .write(move |c| webhook::process(c, &cfg.billing, &event, &rid))
        .await?;
    if let Some(rec) = &done.audit {
        rec.log();
    }
    if let Some(org) = &done.organization_id {
        tracing::Span::current().record("organization_id", org.as_str());
    }
    tracing::info!(
        event = "billing.webhook.processed",
        stripe_event_id = %ev.id,
        stripe_event_type = %ev.kind,
        outcome = %done.outcome,
        duplicate = done.duplicate,
        billing_status = done.status_after.as_deref(),
        previous_billing_status = done.status_before.as_deref(),
        "Stripe event {} ({}): {}",
        ev.id,
        ev.kind,
        done.outcome
    );
    Ok(axum::Json(json!({
        "received": true,
        "duplicate": done.duplicate,
        "outcome": done.outcome,
        "request_id": ctx.request_id,
    })))
}

// ---------------------------------------------------------------------------------------
// Checkout and portal

fn check_url(field: &str, v: &str) -> Result<String, ApiError> {
    let v = v.trim();
    let ok = v.len() <= 2048
        && reqwest::Url::parse(v)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
    if !ok {
        return Err(ApiError::unprocessable(
            "invalid_request",
            format!(
                "{field} must be an absolute http:// or https:// URL of at most 2048 characters"
            ),
        ));
    }
    // The original text goes to Stripe: it may hold Stripe's {CHECKOUT_SESSION_ID}
    // template, which parsing would percent-encode.
    Ok(v.to_string())
}

/// Unique per organization, operation and request: a client retrying with the same
/// X-Request-ID gets the same session back instead of a second one.
fn idempotency_key(operation: &str, org: &str, request_id: &str) -> String {
    format!("minirag-{operation}-{org}-{request_id}")
}

fn stripe_failure(state: &AppState, operation: &'static str, e: &StripeError) -> ApiError {
    state.metrics.external_error("stripe", operation);
    let (error_type, code, stripe_message) = match e {
        StripeError::Status {
            error_type,
            code,
            message,
            ..
        } => (error_type.clone(), code.clone(), message.clone()),
        _ => (None, None, None),
    };
    tracing::error!(
        event = "external.request_failed",
        service = "stripe",
        operation,
        error = %e,
        http_status = e.status(),
        stripe_error_type = error_type.as_deref(),
        stripe_error_code = code.as_deref(),
        stripe_message = stripe_message.as_deref(),
        "Stripe call failed"
    );
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "stripe_error",
        format!("{e}; nothing was created, retry later"),
    )
    .with("operation", operation)
    .with("stripe_status", e.status())
    .with("stripe_error_type", error_type)
    .with("stripe_error_code", code)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutBody {
    plan: String,
    success_url: String,
    cancel_url: String,
}

/// `POST /api/v1/billing/checkout`: a Stripe Checkout session for a subscription to
/// `plan`; the client sends the user to the returned `url`.
pub async fn checkout(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    ApiJson(body): ApiJson<CheckoutBody>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let p = billing_admin(&auth)?.clone();
    let billing_cfg = &state.cfg.billing;
    let Some(api_key) = billing_cfg.stripe_api_key.clone() else {
        return Err(not_configured("Stripe checkout", "STRIPE_API_KEY"));
    };
    let Some(price) = billing_cfg.prices.get(&body.plan).cloned() else {
        let offered: Vec<&str> = billing_cfg.prices.keys().map(String::as_str).collect();
        return Err(ApiError::unprocessable(
            "invalid_request",
            format!(
                "plan must be one with a configured price: {}",
                if offered.is_empty() {
                    "none configured".to_string()
                } else {
                    offered.join(", ")
                }
            ),
        ));
    };
    let success_url = check_url("success_url", &body.success_url)?;
    let cancel_url = check_url("cancel_url", &body.cancel_url)?;
    let org = p.organization_id.clone();
    let billing = current(&state, &org).await?;
    let rid = ctx.request_id.clone();
    let mut form: Vec<(&str, String)> = vec![
        ("mode", "subscription".into()),
        ("line_items[0][price]", price.clone()),
        ("line_items[0][quantity]", "1".into()),
        ("success_url", success_url),
        ("cancel_url", cancel_url),
        ("client_reference_id", rid.clone()),
        ("metadata[organization_id]", org.clone()),
        ("metadata[request_id]", rid.clone()),
        ("metadata[plan]", body.plan.clone()),
        // Copied onto the subscription so its own events name the organization too.
        ("subscription_data[metadata][organization_id]", org.clone()),
        ("subscription_data[metadata][plan]", body.plan.clone()),
    ];
    if let Some(customer) = &billing.stripe_customer_id {
        form.push(("customer", customer.clone()));
    }
    let session = stripe::create_session(
        billing_cfg,
        &api_key,
        "/v1/checkout/sessions",
        &idempotency_key("checkout.create", &org, &rid),
        &form,
    )
    .await
    .map_err(|e| stripe_failure(&state, "checkout.create", &e))?;
    let event = audit::Origin::api(&p, &rid)
        .event("billing.checkout_created")
        .organization(&org)
        .target(org.clone())
        .after(json!({"plan": body.plan, "price": price, "stripe_session_id": session.id}));
    state
        .store
        .write(move |c| audit::append_now(c, event))
        .await?;
    tracing::info!(event = "billing.checkout.created", plan = %body.plan, stripe_session_id = %session.id, "Stripe checkout session created");
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "session_id": session.id,
            "url": session.url,
            "plan": body.plan,
            "request_id": ctx.request_id,
        })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalBody {
    return_url: String,
}

/// `POST /api/v1/billing/portal`: a Stripe customer-portal session (change plan, update
/// the card, cancel) for an organization that completed a checkout.
pub async fn portal(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    ApiJson(body): ApiJson<PortalBody>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let p = billing_admin(&auth)?.clone();
    let Some(api_key) = state.cfg.billing.stripe_api_key.clone() else {
        return Err(not_configured("the Stripe portal", "STRIPE_API_KEY"));
    };
    let return_url = check_url("return_url", &body.return_url)?;
    let org = p.organization_id.clone();
    let Some(customer) = current(&state, &org).await?.stripe_customer_id else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_stripe_customer",
            "the organization has no Stripe customer yet; complete a checkout first",
        ));
    };
    let rid = ctx.request_id.clone();
    let session = stripe::create_session(
        &state.cfg.billing,
        &api_key,
        "/v1/billing_portal/sessions",
        &idempotency_key("portal.create", &org, &rid),
        &[("customer", customer), ("return_url", return_url)],
    )
    .await
    .map_err(|e| stripe_failure(&state, "portal.create", &e))?;
    let event = audit::Origin::api(&p, &rid)
        .event("billing.portal_created")
        .organization(&org)
        .target(org.clone())
        .after(json!({"stripe_session_id": session.id}));
    state
        .store
        .write(move |c| audit::append_now(c, event))
        .await?;
    tracing::info!(event = "billing.portal.created", stripe_session_id = %session.id, "Stripe portal session created");
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "session_id": session.id,
            "url": session.url,
            "request_id": ctx.request_id,
        })),
    ))
}

// ---------------------------------------------------------------------------------------
// Admin

/// `GET /api/v1/admin/billing`.
pub async fn show(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
) -> Result<axum::Json<Value>, ApiError> {
    let p = auth.require(Scope::Admin)?;
    let billing = current(&state, &p.organization_id).await?;
    Ok(axum::Json(
        json!({"billing": billing.view(Utc::now()), "request_id": ctx.request_id}),
    ))
}

/// Absent → `None` (leave as is); `null` → `Some(None)` (clear); a value → `Some(Some)`.
fn nullable<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingPatch {
    #[serde(default)]
    plan: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    trial_ends_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    subscription_expires_at: Option<Option<String>>,
}

fn check_time(field: &str, v: Option<String>) -> Result<Option<String>, ApiError> {
    match v {
        None => Ok(None),
        Some(t) => parse_time(&t).map(|t| Some(format_time(t))).ok_or_else(|| {
            ApiError::unprocessable(
                "invalid_request",
                format!(
                    "{field} must be an RFC 3339 timestamp such as 2026-01-31T00:00:00Z, or null"
                ),
            )
        }),
    }
}

/// `PATCH /api/v1/admin/billing`: a manual correction (support, invoicing outside
/// Stripe). A later Stripe event still applies on top of it.
pub async fn update(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    ApiJson(body): ApiJson<BillingPatch>,
) -> Result<axum::Json<Value>, ApiError> {
    let p = billing_admin(&auth)?.clone();
    if body.plan.is_none()
        && body.status.is_none()
        && body.trial_ends_at.is_none()
        && body.subscription_expires_at.is_none()
    {
        return Err(ApiError::unprocessable(
            "invalid_request",
            "nothing to change: send plan, status, trial_ends_at or subscription_expires_at",
        ));
    }
    if let Some(plan) = &body.plan
        && !PLANS.contains(&plan.as_str())
    {
        return Err(ApiError::unprocessable(
            "invalid_request",
            format!("plan must be one of {}", PLANS.join(", ")),
        ));
    }
    if let Some(status) = &body.status
        && !BILLING_STATUSES.contains(&status.as_str())
    {
        return Err(ApiError::unprocessable(
            "invalid_request",
            format!("status must be one of {}", BILLING_STATUSES.join(", ")),
        ));
    }
    let trial = body
        .trial_ends_at
        .map(|v| check_time("trial_ends_at", v))
        .transpose()?;
    let expires = body
        .subscription_expires_at
        .map(|v| check_time("subscription_expires_at", v))
        .transpose()?;
    let org = p.organization_id.clone();
    let origin = audit::Origin::api(&p, &ctx.request_id);
    let (after, rec) = state
        .store
        .write(move |c| {
            let tx = c.transaction()?;
            let Some(before) = load(&tx, &org)? else {
                return Ok(None);
            };
            let mut after = before.clone();
            if let Some(plan) = body.plan {
                after.plan = plan;
            }
            if let Some(status) = body.status {
                after.status = status;
            }
            if let Some(t) = trial {
                after.trial_ends_at = t;
            }
            if let Some(t) = expires {
                after.subscription_expires_at = t;
            }
            after.updated_at = Some(crate::tenancy::now());
            save(&tx, &after)?;
            let rec = audit::append(
                &tx,
                origin
                    .event("billing.updated")
                    .organization(&org)
                    .target(org.clone())
                    .before(before.snapshot())
                    .after(after.snapshot()),
            )?;
            tx.commit()?;
            Ok(Some((after, rec)))
        })
        .await?
        .ok_or_else(ApiError::internal)?;
    rec.log();
    tracing::info!(
        event = "billing.updated",
        billing_status = %after.status,
        plan = %after.plan,
        "billing state changed by an admin"
    );
    Ok(axum::Json(
        json!({"billing": after.view(Utc::now()), "request_id": ctx.request_id}),
    ))
}
