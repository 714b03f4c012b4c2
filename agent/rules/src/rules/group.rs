//! A rule group: rules evaluated in order at one timestamp, writing back into the store
//! (Prometheus's `rules/group.go`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::rule::{Alert, Rule, RuleKind, TemplateCtx};
use crate::model::{Labels, stale_nan};
use crate::promql::{Engine, InstantSample, Value};
use crate::storage::MemStore;
use crate::template::QuerySample;

/// What an evaluation needs from the agent's configuration.
#[derive(Debug, Clone, Default)]
pub struct EvalContext {
    /// `$externalLabels` in templates. Like Prometheus, they are not added to recorded
    /// series or alerts here; the notifier adds them to outgoing alerts.
    pub external_labels: Labels,
    /// `$externalURL` in templates and the base of alerts' `generatorURL`.
    pub external_url: String,
}

/// The outcome of one group evaluation, for logs and self-metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupEvalReport {
    /// Rules that failed, by name, with the error (also kept on the rule).
    pub failed_rules: Vec<(String, String)>,
    /// Samples written: recording results, ALERTS, ALERTS_FOR_STATE and stale markers.
    pub samples_written: usize,
    /// Samples the store refused (series limit, out of order, duplicate).
    pub samples_refused: usize,
    pub duration: Duration,
}

/// An alert to hand to Alertmanager (`POST /api/v2/alerts` fields).
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingAlert {
    pub labels: Labels,
    pub annotations: Vec<(String, String)>,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub generator_url: String,
}

#[derive(Debug, Clone)]
pub struct Group {
    name: String,
    file: PathBuf,
    interval_ms: i64,
    limit: usize,
    query_offset_ms: i64,
    rules: Vec<Rule>,
    /// Series each rule wrote at its last successful evaluation, to stale-mark the ones
    /// that disappear.
    prev_series: Vec<HashSet<Labels>>,
    last_evaluation_ms: Option<i64>,
    evaluation_duration: Duration,
    external_url: String,
}

/// Go's `url.QueryEscape`.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl Group {
    pub(crate) fn new(
        name: String,
        file: PathBuf,
        interval_ms: i64,
        limit: usize,
        query_offset_ms: i64,
        rules: Vec<Rule>,
    ) -> Group {
        let prev_series = vec![HashSet::new(); rules.len()];
        Group {
            name,
            file,
            interval_ms,
            limit,
            query_offset_ms,
            rules,
            prev_series,
            last_evaluation_ms: None,
            evaluation_duration: Duration::ZERO,
            external_url: String::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file the group was loaded from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The evaluation interval (the file's, else the loader's default).
    pub fn interval_ms(&self) -> i64 {
        self.interval_ms
    }

    /// Maximum series (recording) or alerts (alerting) per rule; 0 = unlimited.
    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn query_offset_ms(&self) -> i64 {
        self.query_offset_ms
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn last_evaluation_ms(&self) -> Option<i64> {
        self.last_evaluation_ms
    }

    pub fn evaluation_duration(&self) -> Duration {
        self.evaluation_duration
    }

    /// Evaluates every rule at `t_ms`, in file order. Results are appended to `store` at
    /// `t_ms - query_offset` as they are produced, so later rules of the group see earlier
    /// rules' output (recorded series and `ALERTS`) at the same timestamp. A failing rule
    /// keeps its previous series (no stale markers), as in Prometheus; series a
    /// successful rule stops producing get a stale marker.
    pub fn eval(
        &mut self,
        engine: &Engine,
        store: &mut MemStore,
        t_ms: i64,
        ctx: &EvalContext,
    ) -> GroupEvalReport {
        let started = Instant::now();
        let mut report = GroupEvalReport::default();
        self.external_url = ctx.external_url.clone();
        let sample_t = t_ms - self.query_offset_ms;
        for (i, rule) in self.rules.iter_mut().enumerate() {
            let rule_started = Instant::now();
            let result = engine
                .instant(&*store, &rule.expr, sample_t)
                .map_err(|e| e.to_string())
                .and_then(|v| match v {
                    Value::Vector(v) => Ok(v),
                    Value::Scalar { t, v } => Ok(vec![InstantSample {
                        labels: Labels::new(),
                        t,
                        v,
                    }]),
                    _ => Err("rule result is not a vector or scalar".to_string()),
                });
            let out = {
                // Reads only; the store is written after the rule's results are final.
                let reader: &MemStore = store;
                let query = |q: &str| template_query(engine, reader, q, sample_t);
                let tctx = TemplateCtx {
                    external_labels: &ctx.external_labels,
                    external_url: &ctx.external_url,
                    query: Some(&query),
                };
                result.and_then(|v| match rule.kind {
                    RuleKind::Recording => rule.record(v, self.limit),
                    RuleKind::Alerting(_) => rule.alert(v, t_ms, sample_t, self.limit, &tctx),
                })
            };
            rule.last_evaluation_ms = Some(t_ms);
            match out {
                Err(e) => {
                    rule.health = super::Health::Err;
                    rule.last_error = Some(e.clone());
                    report.failed_rules.push((rule.name().to_string(), e));
                }
                Ok(samples) => {
                    rule.health = super::Health::Ok;
                    rule.last_error = None;
                    let mut now = HashSet::with_capacity(samples.len());
                    for s in samples {
                        match store.append(&s.labels, sample_t, s.v) {
                            Ok(_) => report.samples_written += 1,
                            Err(_) => report.samples_refused += 1,
                        }
                        now.insert(s.labels);
                    }
                    for gone in self.prev_series[i].difference(&now) {
                        match store.append(gone, sample_t, stale_nan()) {
                            Ok(_) => report.samples_written += 1,
                            Err(_) => report.samples_refused += 1,
                        }
                    }
                    self.prev_series[i] = now;
                }
            }
            rule.evaluation_duration = rule_started.elapsed();
        }
        self.last_evaluation_ms = Some(t_ms);
        self.evaluation_duration = started.elapsed();
        report.duration = self.evaluation_duration;
        report
    }

    /// Alerts due for (re-)sending at `t_ms`, marked as sent. Firing alerts are sent
    /// every `resend_delay_ms` (Prometheus's default: 1m) with `endsAt` =
    /// t + 4 × max(interval, resend delay), so Alertmanager resolves them itself if the
    /// agent stops; resolved alerts are sent with `endsAt` = resolution time until they
    /// leave the 15-minute retention. External labels are the notifier's to add.
    pub fn alerts_to_send(&mut self, t_ms: i64, resend_delay_ms: i64) -> Vec<OutgoingAlert> {
        let mut out = Vec::new();
        for rule in &mut self.rules {
            let url = format!(
                "{}/graph?g0.expr={}&g0.tab=1",
                self.external_url,
                query_escape(rule.query())
            );
            for a in rule.take_alerts_to_send(t_ms, resend_delay_ms, self.interval_ms) {
                out.push(outgoing(a, &url));
            }
        }
        out
    }
}

/// The `query` template function: an instant query at the rule's evaluation time.
fn template_query(
    engine: &Engine,
    store: &MemStore,
    q: &str,
    t_ms: i64,
) -> Result<Vec<QuerySample>, String> {
    let expr = crate::promql::parse(q).map_err(|e| e.to_string())?;
    let samples = match engine
        .instant(store, &expr, t_ms)
        .map_err(|e| e.to_string())?
    {
        Value::Vector(v) => v,
        Value::Scalar { v, .. } => vec![InstantSample {
            labels: Labels::new(),
            t: t_ms,
            v,
        }],
        _ => return Err("query result is not a vector or scalar".into()),
    };
    Ok(samples
        .into_iter()
        .map(|s| QuerySample {
            labels: s
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value: s.v,
        })
        .collect())
}

fn outgoing(a: Alert, url: &str) -> OutgoingAlert {
    OutgoingAlert {
        starts_at_ms: a.fired_at_ms.unwrap_or(a.active_at_ms),
        ends_at_ms: a.resolved_at_ms.or(a.valid_until_ms).unwrap_or_default(),
        labels: a.labels,
        annotations: a.annotations,
        generator_url: url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_escape_matches_go() {
        assert_eq!(
            query_escape("rate(x{a=\"b\"}[5m]) > 0.5"),
            "rate%28x%7Ba%3D%22b%22%7D%5B5m%5D%29+%3E+0.5"
        );
    }
}
