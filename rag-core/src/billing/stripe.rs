//! Calls to Stripe's REST API (form-encoded POSTs answered with JSON).

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use tracing::Instrument;

use super::BillingConfig;

/// A hosted Stripe page the caller is sent to.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    #[error("Stripe did not answer within {0} s")]
    Timeout(u64),
    #[error("cannot reach Stripe: {0}")]
    Transport(String),
    #[error("Stripe answered HTTP {status}")]
    Status {
        status: u16,
        error_type: Option<String>,
        code: Option<String>,
        /// Stripe's own text; logged, never returned to the API caller.
        message: Option<String>,
    },
    #[error("unexpected answer from Stripe: {0}")]
    BadResponse(String),
}

impl StripeError {
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();

fn client() -> Result<reqwest::Client, StripeError> {
    if let Some(c) = CLIENT.get() {
        return Ok(c.clone());
    }
    // Stripe's API never redirects; following one could only send the key elsewhere.
    let built = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| StripeError::Transport(e.to_string()))?;
    Ok(CLIENT.get_or_init(|| built).clone())
}

/// `application/x-www-form-urlencoded`, as Stripe expects (brackets in keys included).
pub fn encode_form(pairs: &[(&str, String)]) -> String {
    fn enc(out: &mut String, s: &str) {
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
    }
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        enc(&mut out, k);
        out.push('=');
        enc(&mut out, v);
    }
    out
}

/// POSTs `form` to `path` (e.g. `/v1/checkout/sessions`) and returns the created
/// session's id and URL. Carries the request id and trace context of the request being
/// served, and `idempotency_key` so a retried call cannot create a second session.
pub async fn create_session(
    cfg: &BillingConfig,
    api_key: &str,
    path: &str,
    idempotency_key: &str,
    form: &[(&str, String)],
) -> Result<Session, StripeError> {
    let client = client()?;
    let url = format!("{}{path}", cfg.stripe_api_base.trim_end_matches('/'));
    let span = crate::obs::trace::client_span("POST", &url);
    let timeout = cfg.request_timeout_seconds;
    let sent = client
        .post(&url)
        .headers(span.in_scope(crate::obs::trace::outbound_headers))
        .bearer_auth(api_key)
        .header("idempotency-key", idempotency_key)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(encode_form(form))
        .timeout(Duration::from_secs(timeout))
        .send()
        .instrument(span.clone())
        .await;
    let fail = |e: reqwest::Error| {
        crate::obs::trace::client_failed(
            &span,
            if e.is_timeout() {
                "timeout"
            } else {
                "transport"
            },
        );
        if e.is_timeout() {
            StripeError::Timeout(timeout)
        } else {
            StripeError::Transport(e.without_url().to_string())
        }
    };
    let resp = sent.map_err(fail)?;
    let status = resp.status().as_u16();
    crate::obs::trace::client_status(&span, status);
    let body = resp.bytes().instrument(span.clone()).await.map_err(fail)?;
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    if !(200..300).contains(&status) {
        let err = json.as_ref().map(|v| &v["error"]);
        let field = |k: &str| err.and_then(|e| e[k].as_str()).map(str::to_owned);
        return Err(StripeError::Status {
            status,
            error_type: field("type"),
            code: field("code"),
            message: field("message"),
        });
    }
    let json = json.ok_or_else(|| StripeError::BadResponse("the body is not JSON".into()))?;
    match (json["id"].as_str(), json["url"].as_str()) {
        (Some(id), Some(url)) => Ok(Session {
            id: id.to_string(),
            url: url.to_string(),
        }),
        _ => Err(StripeError::BadResponse(
            "the session has no id or url".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding() {
        let s = encode_form(&[
            ("line_items[0][price]", "price_1".into()),
            (
                "success_url",
                "https://x.test/ok?s={CHECKOUT_SESSION_ID}&a=b c".into(),
            ),
            ("metadata[note]", "é".into()),
        ]);
        assert_eq!(
            s,
            "line_items%5B0%5D%5Bprice%5D=price_1&success_url=https%3A%2F%2Fx.test%2Fok%3Fs%3D%7BCHECKOUT_SESSION_ID%7D%26a%3Db+c&metadata%5Bnote%5D=%C3%A9"
        );
    }
}
