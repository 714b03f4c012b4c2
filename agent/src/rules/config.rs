//! The `rules:` section of agent.yaml (documented in config/agent.yaml and docs/rules.md).
//! Durations are Prometheus durations ("15s", "1m30s"), as in rule files.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use minirag_rules::rules::duration::{format_duration, parse_duration};

/// A Prometheus duration in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub i64);

impl Dur {
    pub fn ms(self) -> i64 {
        self.0
    }

    pub fn std(self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::try_from(self.0).unwrap_or(0))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl std::str::FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(Dur)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Off by default in `run`; `rules run` always evaluates.
    pub enabled: bool,
    /// Rule files (globs, Prometheus rule-file format), loaded in order.
    pub rule_files: Vec<String>,
    /// Interval of groups that set none.
    pub evaluation_interval: Dur,
    /// A firing alert is re-sent this often (Prometheus's `--rules.alert.resend-delay`).
    pub resend_delay: Dur,
    /// Added to every outgoing alert (and `$externalLabels` in templates).
    pub external_labels: BTreeMap<String, String>,
    /// Base of alerts' `generatorURL`; default `http://<admin_listen>`.
    pub external_url: Option<String>,
    pub scrape: ScrapeConfig,
    pub store: StoreConfig,
    pub notify: NotifyConfig,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            rule_files: vec!["alerts/*.yaml".into()],
            evaluation_interval: Dur(60_000),
            resend_delay: Dur(60_000),
            external_labels: BTreeMap::new(),
            external_url: None,
            scrape: ScrapeConfig::default(),
            store: StoreConfig::default(),
            notify: NotifyConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScrapeConfig {
    /// Default interval of every target.
    pub interval: Dur,
    /// Default timeout; must not exceed the target's interval.
    pub timeout: Dur,
    /// Samples per scrape; a bigger page fails the scrape (`up` 0), like Prometheus's
    /// `sample_limit`.
    pub sample_limit: usize,
    /// Largest response body read; a bigger one fails the scrape.
    pub max_body_bytes: usize,
    /// Scrape the agent's own registry in-process (job `minirag-agent`). `run` only.
    pub agent: bool,
    /// Scrape rag-core's `/metrics` at `upstream` (job `rag-core`). `run` only.
    pub upstream: bool,
    pub targets: Vec<TargetConfig>,
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        Self {
            interval: Dur(15_000),
            timeout: Dur(10_000),
            sample_limit: 50_000,
            max_body_bytes: 16 * 1024 * 1024,
            agent: true,
            upstream: true,
            targets: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Full URL of the metrics page, e.g. http://127.0.0.1:9100/metrics.
    pub url: String,
    /// `job` label [default: scrape].
    #[serde(default = "default_job")]
    pub job: String,
    #[serde(default)]
    pub interval: Option<Dur>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub sample_limit: Option<usize>,
}

fn default_job() -> String {
    "scrape".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Series held at most; new series beyond it are refused and counted
    /// (`minirag_agent_rules_store_series_refused_total`).
    pub max_series: usize,
    /// Retention never goes below this, so ad-hoc `/api/v1/query` has history even when
    /// the rules need little. The effective retention is max(this, the longest range +
    /// offset any rule reads + lookback_delta).
    pub min_retention: Dur,
    /// How far back an instant selector looks for a sample (Prometheus: 5m).
    pub lookback_delta: Dur,
    /// How often samples older than the retention are dropped.
    pub truncate_interval: Dur,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_series: 100_000,
            min_retention: Dur(15 * 60_000),
            lookback_delta: Dur(5 * 60_000),
            truncate_interval: Dur(60_000),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Alertmanager base URLs (`<url>/api/v2/alerts`); each gets every alert.
    pub alertmanagers: Vec<String>,
    /// URLs receiving Alertmanager's webhook JSON (version 4) per batch.
    pub webhooks: Vec<String>,
    /// Alerts queued per destination; when full the oldest are dropped and counted.
    pub queue_capacity: usize,
    /// Alerts per request.
    pub max_batch: usize,
    /// One request's budget.
    pub timeout: Dur,
    /// A batch is retried (with backoff) until this much time has passed, then dropped
    /// and counted.
    pub retry_deadline: Dur,
    /// Log `alert.firing` / `alert.resolved` events on state changes.
    pub log_transitions: bool,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            alertmanagers: Vec::new(),
            webhooks: Vec::new(),
            queue_capacity: 10_000,
            max_batch: 64,
            timeout: Dur(10_000),
            retry_deadline: Dur(30_000),
            log_transitions: true,
        }
    }
}

fn check_url(what: &str, u: &str) -> Result<(), String> {
    match reqwest::Url::parse(u) {
        Ok(p) if (p.scheme() == "http" || p.scheme() == "https") && p.host().is_some() => Ok(()),
        _ => Err(format!("{what}: {u:?} is not an http(s) URL")),
    }
}

impl RulesConfig {
    pub fn validate(&self) -> Result<(), String> {
        let pos = |what: &str, d: Dur| {
            if d.0 > 0 {
                Ok(())
            } else {
                Err(format!("rules.{what} must be > 0"))
            }
        };
        pos("evaluation_interval", self.evaluation_interval)?;
        pos("resend_delay", self.resend_delay)?;
        pos("scrape.interval", self.scrape.interval)?;
        pos("scrape.timeout", self.scrape.timeout)?;
        pos("store.lookback_delta", self.store.lookback_delta)?;
        pos("store.truncate_interval", self.store.truncate_interval)?;
        pos("notify.timeout", self.notify.timeout)?;
        if self.scrape.sample_limit == 0 || self.scrape.max_body_bytes == 0 {
            return Err("rules.scrape.sample_limit and max_body_bytes must be > 0".into());
        }
        if self.store.max_series == 0 {
            return Err("rules.store.max_series must be > 0".into());
        }
        if self.notify.queue_capacity == 0 || self.notify.max_batch == 0 {
            return Err("rules.notify.queue_capacity and max_batch must be > 0".into());
        }
        for (i, t) in self.scrape.targets.iter().enumerate() {
            check_url(&format!("rules.scrape.targets[{i}].url"), &t.url)?;
            let interval = t.interval.unwrap_or(self.scrape.interval);
            let timeout = t.timeout.unwrap_or(self.scrape.timeout).min(interval);
            if interval.0 <= 0 || timeout.0 <= 0 {
                return Err(format!(
                    "rules.scrape.targets[{i}]: interval and timeout must be > 0"
                ));
            }
            if t.job.is_empty() {
                return Err(format!("rules.scrape.targets[{i}].job must not be empty"));
            }
        }
        for u in &self.notify.alertmanagers {
            check_url("rules.notify.alertmanagers", u)?;
        }
        for u in &self.notify.webhooks {
            check_url("rules.notify.webhooks", u)?;
        }
        if let Some(u) = &self.external_url {
            check_url("rules.external_url", u)?;
        }
        for k in self.external_labels.keys() {
            let valid = !k.is_empty()
                && k.bytes().enumerate().all(|(i, c)| {
                    c.is_ascii_alphabetic() || c == b'_' || (i > 0 && c.is_ascii_digit())
                });
            if !valid {
                return Err(format!("rules.external_labels: invalid label name {k:?}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        let c: RulesConfig =
            serde_yaml::from_str("evaluation_interval: 1m30s\nscrape: {interval: 500ms}\n")
                .unwrap();
        assert_eq!(c.evaluation_interval, Dur(90_000));
        assert_eq!(c.scrape.interval, Dur(500));
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["evaluation_interval"], "1m30s");
        assert!(serde_yaml::from_str::<RulesConfig>("evaluation_interval: 90").is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = RulesConfig::default();
        c.notify.alertmanagers = vec!["ftp://x".into()];
        assert!(c.validate().unwrap_err().contains("alertmanagers"));
        let c = RulesConfig {
            evaluation_interval: Dur(0),
            ..RulesConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("evaluation_interval"));
        assert!(RulesConfig::default().validate().is_ok());
    }
}
