//! `minirag_agent_rule*` self-metrics: atomics written by the loops, encoded at scrape
//! time (store figures are read under a short read lock).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use minirag_rules::storage::MemStore;

#[derive(Default)]
pub struct GroupStats {
    /// Prometheus's `rule_group` label value: `<file>;<group>`.
    pub key: String,
    pub rules: u64,
    /// Nanoseconds of the last complete evaluation (rules + alert state + queueing).
    pub last_duration_ns: AtomicU64,
    pub last_evaluation_ms: AtomicI64,
    pub iterations: AtomicU64,
    pub missed: AtomicU64,
    pub rule_failures: AtomicU64,
    pub pending: AtomicU64,
    pub firing: AtomicU64,
}

#[derive(Default)]
pub struct TargetStats {
    /// `job/instance`, the `target` label.
    pub key: String,
    pub up: AtomicU64,
    pub scrapes: AtomicU64,
    pub failures: AtomicU64,
    pub last_duration_ns: AtomicU64,
    pub last_samples: AtomicU64,
}

#[derive(Default)]
pub struct DestStats {
    /// `alertmanager` or `webhook`.
    pub kind: &'static str,
    pub url: String,
    pub sent: AtomicU64,
    pub errors: AtomicU64,
    pub dropped: AtomicU64,
    pub queue_len: AtomicU64,
    pub queue_capacity: u64,
}

#[derive(Default)]
pub struct RulesStats {
    pub groups: Vec<Arc<GroupStats>>,
    pub targets: Vec<Arc<TargetStats>>,
    pub dests: Vec<Arc<DestStats>>,
    pub retention_ms: AtomicI64,
}

pub struct RulesCollector {
    pub stats: Arc<RulesStats>,
    pub store: Arc<RwLock<MemStore>>,
}

impl std::fmt::Debug for RulesCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RulesCollector")
    }
}

type Rows = Vec<(Vec<(String, String)>, f64)>;

fn lbl(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: Vec<(Vec<(String, String)>, u64)>,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(0u64);
    let mut family = enc.encode_descriptor(name, help, None, c.metric_type())?;
    for (labels, v) in rows {
        if labels.is_empty() {
            ConstCounter::new(v).encode(family)?;
            return Ok(());
        }
        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: Rows,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(0.0f64);
    let mut family = enc.encode_descriptor(name, help, None, g.metric_type())?;
    for (labels, v) in rows {
        if labels.is_empty() {
            ConstGauge::new(v).encode(family)?;
            return Ok(());
        }
        ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for RulesCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.stats;
        let g = |f: &dyn Fn(&GroupStats) -> f64| -> Rows {
            s.groups
                .iter()
                .map(|x| (lbl(&[("rule_group", &x.key)]), f(x)))
                .collect()
        };
        let gc = |f: &dyn Fn(&GroupStats) -> u64| -> Vec<(Vec<(String, String)>, u64)> {
            s.groups
                .iter()
                .map(|x| (lbl(&[("rule_group", &x.key)]), f(x)))
                .collect()
        };
        gauge(
            &mut enc,
            "minirag_agent_rule_group_last_duration_seconds",
            "Wall time of the group's most recent complete evaluation (all rules, alert state, queueing notifications)",
            g(&|x| x.last_duration_ns.load(Relaxed) as f64 / 1e9),
        )?;
        gauge(
            &mut enc,
            "minirag_agent_rule_group_last_evaluation_timestamp_seconds",
            "Evaluation timestamp of the group's most recent evaluation",
            g(&|x| x.last_evaluation_ms.load(Relaxed) as f64 / 1e3),
        )?;
        gauge(
            &mut enc,
            "minirag_agent_rule_group_rules",
            "Rules in the group",
            g(&|x| x.rules as f64),
        )?;
        counter(
            &mut enc,
            "minirag_agent_rule_group_iterations",
            "Scheduled group evaluations run",
            gc(&|x| x.iterations.load(Relaxed)),
        )?;
        counter(
            &mut enc,
            "minirag_agent_rule_group_iterations_missed",
            "Group evaluations skipped because the previous one overran its interval",
            gc(&|x| x.missed.load(Relaxed)),
        )?;
        counter(
            &mut enc,
            "minirag_agent_rule_evaluation_failures",
            "Rule evaluations that failed",
            gc(&|x| x.rule_failures.load(Relaxed)),
        )?;
        let mut alerts = Vec::new();
        for x in &s.groups {
            alerts.push((
                lbl(&[("rule_group", &x.key), ("state", "pending")]),
                x.pending.load(Relaxed) as f64,
            ));
            alerts.push((
                lbl(&[("rule_group", &x.key), ("state", "firing")]),
                x.firing.load(Relaxed) as f64,
            ));
        }
        gauge(
            &mut enc,
            "minirag_agent_alerts",
            "Active alerts by state after the group's last evaluation",
            alerts,
        )?;
        let t = |f: &dyn Fn(&TargetStats) -> f64| -> Rows {
            s.targets
                .iter()
                .map(|x| (lbl(&[("target", &x.key)]), f(x)))
                .collect()
        };
        gauge(
            &mut enc,
            "minirag_agent_rules_scrape_up",
            "1 if the target's last scrape succeeded",
            t(&|x| x.up.load(Relaxed) as f64),
        )?;
        gauge(
            &mut enc,
            "minirag_agent_rules_scrape_duration_seconds",
            "Duration of the target's last scrape (fetch, parse, store)",
            t(&|x| x.last_duration_ns.load(Relaxed) as f64 / 1e9),
        )?;
        gauge(
            &mut enc,
            "minirag_agent_rules_scrape_samples",
            "Samples in the target's last successful scrape",
            t(&|x| x.last_samples.load(Relaxed) as f64),
        )?;
        counter(
            &mut enc,
            "minirag_agent_rules_scrapes",
            "Scrapes attempted",
            s.targets
                .iter()
                .map(|x| (lbl(&[("target", &x.key)]), x.scrapes.load(Relaxed)))
                .collect(),
        )?;
        counter(
            &mut enc,
            "minirag_agent_rules_scrape_failures",
            "Scrapes that failed (connect, status, timeout, body size, parse, sample limit)",
            s.targets
                .iter()
                .map(|x| (lbl(&[("target", &x.key)]), x.failures.load(Relaxed)))
                .collect(),
        )?;
        let store = self.store.read().map(|st| st.stats()).unwrap_or_default();
        let none = Vec::new;
        gauge(
            &mut enc,
            "minirag_agent_rules_store_series",
            "Series in the rule store",
            vec![(none(), store.series as f64)],
        )?;
        gauge(
            &mut enc,
            "minirag_agent_rules_store_samples",
            "Samples in the rule store",
            vec![(none(), store.samples as f64)],
        )?;
        gauge(
            &mut enc,
            "minirag_agent_rules_store_retention_seconds",
            "Retention derived from the loaded rules (longest range + offset + lookback, floored)",
            vec![(none(), s.retention_ms.load(Relaxed) as f64 / 1e3)],
        )?;
        counter(
            &mut enc,
            "minirag_agent_rules_store_series_refused",
            "New series refused because the store held max_series",
            vec![(none(), store.series_refused_total)],
        )?;
        counter(
            &mut enc,
            "minirag_agent_rules_store_samples_rejected",
            "Samples refused as out of order or duplicate",
            vec![(none(), store.samples_out_of_order_total)],
        )?;
        counter(
            &mut enc,
            "minirag_agent_rules_store_series_removed",
            "Series dropped by retention",
            vec![(none(), store.series_removed_total)],
        )?;
        let d = |f: &dyn Fn(&DestStats) -> u64| -> Vec<(Vec<(String, String)>, u64)> {
            s.dests
                .iter()
                .map(|x| (lbl(&[("kind", x.kind), ("url", &x.url)]), f(x)))
                .collect()
        };
        counter(
            &mut enc,
            "minirag_agent_notifications_sent",
            "Alerts delivered",
            d(&|x| x.sent.load(Relaxed)),
        )?;
        counter(
            &mut enc,
            "minirag_agent_notifications_errors",
            "Failed delivery attempts (each retry counts)",
            d(&|x| x.errors.load(Relaxed)),
        )?;
        counter(
            &mut enc,
            "minirag_agent_notifications_dropped",
            "Alerts dropped: queue overflow (oldest first) or retry deadline passed",
            d(&|x| x.dropped.load(Relaxed)),
        )?;
        let dg = |f: &dyn Fn(&DestStats) -> u64| -> Rows {
            s.dests
                .iter()
                .map(|x| (lbl(&[("kind", x.kind), ("url", &x.url)]), f(x) as f64))
                .collect()
        };
        gauge(
            &mut enc,
            "minirag_agent_notifications_queue_length",
            "Alerts waiting to be sent",
            dg(&|x| x.queue_len.load(Relaxed)),
        )?;
        gauge(
            &mut enc,
            "minirag_agent_notifications_queue_capacity",
            "Queue capacity per destination",
            dg(&|x| x.queue_capacity),
        )?;
        Ok(())
    }
}
