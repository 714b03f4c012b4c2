//! `billing:` settings. The two Stripe secrets never come from YAML values: only from the
//! environment (`STRIPE_API_KEY`, `STRIPE_WEBHOOK_SECRET`, or their `*_FILE` variants) or
//! from a file whose path the YAML names.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::config::{Config, ConfigError, read_secret};
use crate::tenancy::PLANS;

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingConfig {
    /// Base URL of Stripe's REST API; a fake Stripe for local testing.
    pub stripe_api_base: String,
    /// Plan → Stripe price id used for checkout (and to name the plan of a subscription).
    pub prices: BTreeMap<String, String>,
    /// Largest age (either way) of a webhook signature's timestamp.
    pub webhook_tolerance_seconds: u64,
    /// Budget of one call to Stripe's API, connect to last byte.
    pub request_timeout_seconds: u64,
    /// File holding the API key, used when neither `STRIPE_API_KEY` nor
    /// `STRIPE_API_KEY_FILE` is set.
    pub stripe_api_key_file: Option<PathBuf>,
    /// File holding the webhook signing secret, used when neither `STRIPE_WEBHOOK_SECRET`
    /// nor `STRIPE_WEBHOOK_SECRET_FILE` is set.
    pub stripe_webhook_secret_file: Option<PathBuf>,
    #[serde(skip)]
    pub stripe_api_key: Option<String>,
    #[serde(skip)]
    pub stripe_webhook_secret: Option<String>,
}

impl Default for BillingConfig {
    fn default() -> Self {
        Self {
            stripe_api_base: "https://api.stripe.com".into(),
            prices: BTreeMap::new(),
            webhook_tolerance_seconds: 300,
            request_timeout_seconds: 20,
            stripe_api_key_file: None,
            stripe_webhook_secret_file: None,
            stripe_api_key: None,
            stripe_webhook_secret: None,
        }
    }
}

/// Hand-written so a `{cfg:?}` anywhere can never print a secret.
impl std::fmt::Debug for BillingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |s: &Option<String>| s.as_ref().map(|_| "<set>");
        f.debug_struct("BillingConfig")
            .field("stripe_api_base", &self.stripe_api_base)
            .field("prices", &self.prices)
            .field("webhook_tolerance_seconds", &self.webhook_tolerance_seconds)
            .field("request_timeout_seconds", &self.request_timeout_seconds)
            .field("stripe_api_key_file", &self.stripe_api_key_file)
            .field(
                "stripe_webhook_secret_file",
                &self.stripe_webhook_secret_file,
            )
            .field("stripe_api_key", &set(&self.stripe_api_key))
            .field("stripe_webhook_secret", &set(&self.stripe_webhook_secret))
            .finish()
    }
}

impl BillingConfig {
    pub fn validate(&self) -> Result<(), String> {
        match reqwest::Url::parse(&self.stripe_api_base) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            _ => return Err("billing.stripe_api_base must be an http:// or https:// URL".into()),
        }
        for (plan, price) in &self.prices {
            if !PLANS.contains(&plan.as_str()) || plan == "free" {
                return Err(format!(
                    "billing.prices: {plan:?} is not a paid plan (use pro or enterprise)"
                ));
            }
            if price.trim().is_empty() || price.chars().any(|c| c.is_whitespace()) {
                return Err(format!(
                    "billing.prices.{plan} must be a Stripe price id such as price_123"
                ));
            }
        }
        if !(1..=3600).contains(&self.webhook_tolerance_seconds) {
            return Err("billing.webhook_tolerance_seconds must be within 1..=3600".into());
        }
        if !(1..=300).contains(&self.request_timeout_seconds) {
            return Err("billing.request_timeout_seconds must be within 1..=300".into());
        }
        Ok(())
    }

    /// The plan a Stripe price id stands for, per `prices`.
    pub fn plan_of_price(&self, price: &str) -> Option<&str> {
        self.prices
            .iter()
            .find(|(_, p)| p.as_str() == price)
            .map(|(plan, _)| plan.as_str())
    }
}

/// Reads both Stripe secrets (env, env `*_FILE`, then the YAML-named file) and puts them
/// through the same placeholder check as every other secret.
pub fn apply_env(
    cfg: &mut Config,
    get: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let key = secret(
        get,
        "STRIPE_API_KEY",
        "STRIPE_API_KEY_FILE",
        "billing.stripe_api_key_file",
        cfg.billing.stripe_api_key_file.clone(),
    )?;
    if let Some((name, v)) = key {
        cfg.admit_secret(name, &v)?;
        cfg.billing.stripe_api_key = Some(v);
    }
    let webhook = secret(
        get,
        "STRIPE_WEBHOOK_SECRET",
        "STRIPE_WEBHOOK_SECRET_FILE",
        "billing.stripe_webhook_secret_file",
        cfg.billing.stripe_webhook_secret_file.clone(),
    )?;
    if let Some((name, v)) = webhook {
        cfg.admit_secret(name, &v)?;
        cfg.billing.stripe_webhook_secret = Some(v);
    }
    Ok(())
}

fn secret(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    file_var: &'static str,
    yaml_key: &'static str,
    yaml_file: Option<PathBuf>,
) -> Result<Option<(&'static str, String)>, ConfigError> {
    if let Some(found) = read_secret(get, name, file_var)? {
        return Ok(Some(found));
    }
    let Some(path) = yaml_file else {
        return Ok(None);
    };
    let v = std::fs::read_to_string(&path).map_err(|e| ConfigError::Env {
        name: yaml_key,
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    Ok(Some((yaml_key, v.trim().to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&'static str, String)]) -> impl Fn(&str) -> Option<String> {
        let pairs = pairs.to_vec();
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn secrets_come_from_env_then_files_and_placeholders_are_refused() {
        let mut cfg = Config::default();
        apply_env(
            &mut cfg,
            &env(&[
                ("STRIPE_API_KEY", "sk_test_51Habcdef".into()),
                ("STRIPE_WEBHOOK_SECRET", "whsec_0123456789".into()),
            ]),
        )
        .unwrap();
        assert_eq!(
            cfg.billing.stripe_api_key.as_deref(),
            Some("sk_test_51Habcdef")
        );
        let printed = format!("{:?}", cfg.billing);
        assert!(!printed.contains("sk_test"), "{printed}");
        assert!(!printed.contains("whsec_"), "{printed}");

        let err = apply_env(
            &mut Config::default(),
            &env(&[("STRIPE_WEBHOOK_SECRET", "replace-me".into())]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("STRIPE_WEBHOOK_SECRET holds"), "{err}");

        let dir = std::env::temp_dir().join(format!("rag-core-billing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("whsec");
        std::fs::write(&file, "changeme\n").unwrap();
        let mut cfg = Config::default();
        cfg.billing.stripe_webhook_secret_file = Some(file.clone());
        let err = apply_env(&mut cfg, &env(&[])).unwrap_err().to_string();
        assert!(err.contains("billing.stripe_webhook_secret_file"), "{err}");
        std::fs::write(&file, "whsec_from_file_123\n").unwrap();
        apply_env(&mut cfg, &env(&[])).unwrap();
        assert_eq!(
            cfg.billing.stripe_webhook_secret.as_deref(),
            Some("whsec_from_file_123")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn validation_names_the_key() {
        let mut b = BillingConfig::default();
        assert!(b.validate().is_ok());
        b.prices.insert("gold".into(), "price_1".into());
        assert!(b.validate().unwrap_err().contains("gold"));
        b.prices.clear();
        b.prices.insert("pro".into(), "price_pro".into());
        assert_eq!(b.plan_of_price("price_pro"), Some("pro"));
        b.stripe_api_base = "ftp://x".into();
        assert!(b.validate().unwrap_err().contains("stripe_api_base"));
    }
}
