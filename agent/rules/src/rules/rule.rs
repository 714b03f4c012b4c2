//! One rule and, for alerting rules, the alert state machine of Prometheus's
//! `rules/alerting.go`: pending → firing after `for`, `keep_firing_for`, resolved alerts
//! kept 15 minutes so their resolution is re-sent.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use promql_parser::parser::Expr;

use crate::model::{Labels, METRIC_NAME};
use crate::promql::InstantSample;
use crate::template::{AlertData, QueryFn, expand_alert_text};

/// How long a resolved alert is kept (and re-sent) after it stops firing.
pub const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Unknown,
    Ok,
    Err,
}

impl Health {
    /// The string the Prometheus HTTP API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Ok => "ok",
            Health::Err => "err",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AlertState {
    Inactive,
    Pending,
    Firing,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

/// One alert of an alerting rule: an output series of its expression after templating.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// The alert's identity: the sample's labels without `__name__`, plus the rule's
    /// templated labels and `alertname`.
    pub labels: Labels,
    /// Templated annotations, sorted by name; empty values are kept as Prometheus does.
    pub annotations: Vec<(String, String)>,
    pub state: AlertState,
    pub value: f64,
    pub active_at_ms: i64,
    pub fired_at_ms: Option<i64>,
    pub resolved_at_ms: Option<i64>,
    pub last_sent_at_ms: Option<i64>,
    pub valid_until_ms: Option<i64>,
    pub keep_firing_since_ms: Option<i64>,
}

impl Alert {
    /// Prometheus's `needsSending`: firing alerts every `resend_delay`, and a resolution
    /// as soon as it happens (and then again every `resend_delay` while retained).
    fn needs_sending(&self, t_ms: i64, resend_delay_ms: i64) -> bool {
        if self.state == AlertState::Pending {
            return false;
        }
        let last = self.last_sent_at_ms;
        if let Some(r) = self.resolved_at_ms
            && last.is_none_or(|l| r > l)
        {
            return true;
        }
        match last {
            None => true,
            Some(l) => l + resend_delay_ms < t_ms,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AlertingState {
    for_ms: i64,
    keep_firing_for_ms: i64,
    annotations: Vec<(String, String)>,
    active: HashMap<Labels, Alert>,
}

#[derive(Debug, Clone)]
pub enum RuleKind {
    Recording,
    Alerting(AlertingState),
}

impl RuleKind {
    pub(crate) fn alerting(
        for_ms: i64,
        keep_firing_for_ms: i64,
        annotations: Vec<(String, String)>,
    ) -> RuleKind {
        RuleKind::Alerting(AlertingState {
            for_ms,
            keep_firing_for_ms,
            annotations,
            active: HashMap::new(),
        })
    }
}

/// A recording or alerting rule with its evaluation status.
#[derive(Debug, Clone)]
pub struct Rule {
    name: String,
    query: String,
    pub(crate) expr: Expr,
    labels: Vec<(String, String)>,
    pub(crate) kind: RuleKind,
    pub(crate) health: Health,
    pub(crate) last_error: Option<String>,
    pub(crate) last_evaluation_ms: Option<i64>,
    pub(crate) evaluation_duration: Duration,
}

/// What templates see for one alert (`$labels`, `$value`, …).
pub(crate) struct TemplateCtx<'a> {
    pub external_labels: &'a Labels,
    pub external_url: &'a str,
    /// The `query` template function, evaluated at the rule's evaluation time.
    pub query: Option<&'a QueryFn<'a>>,
}

fn to_map(l: &Labels) -> BTreeMap<String, String> {
    l.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Rule {
    pub(crate) fn new(
        name: String,
        query: String,
        expr: Expr,
        labels: Vec<(String, String)>,
        kind: RuleKind,
    ) -> Rule {
        Rule {
            name,
            query,
            expr,
            labels,
            kind,
            health: Health::Unknown,
            last_error: None,
            last_evaluation_ms: None,
            evaluation_duration: Duration::ZERO,
        }
    }

    /// The alert name or the recorded metric name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The expression as written in the file.
    pub fn query(&self) -> &str {
        &self.query
    }

    /// "alerting" or "recording", as the HTTP API names them.
    pub fn rule_type(&self) -> &'static str {
        match self.kind {
            RuleKind::Recording => "recording",
            RuleKind::Alerting(_) => "alerting",
        }
    }

    pub fn is_alerting(&self) -> bool {
        matches!(self.kind, RuleKind::Alerting(_))
    }

    /// The rule's labels as written (templates unexpanded).
    pub fn labels(&self) -> &[(String, String)] {
        &self.labels
    }

    /// Annotations as written; empty for recording rules.
    pub fn annotations(&self) -> &[(String, String)] {
        match &self.kind {
            RuleKind::Alerting(a) => &a.annotations,
            RuleKind::Recording => &[],
        }
    }

    /// `for`, in milliseconds (0 for recording rules).
    pub fn for_ms(&self) -> i64 {
        match &self.kind {
            RuleKind::Alerting(a) => a.for_ms,
            RuleKind::Recording => 0,
        }
    }

    pub fn keep_firing_for_ms(&self) -> i64 {
        match &self.kind {
            RuleKind::Alerting(a) => a.keep_firing_for_ms,
            RuleKind::Recording => 0,
        }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    pub fn last_evaluation_ms(&self) -> Option<i64> {
        self.last_evaluation_ms
    }

    pub fn evaluation_duration(&self) -> Duration {
        self.evaluation_duration
    }

    /// Pending, firing and (until retention ends) resolved alerts, sorted by labels.
    /// Callers wanting only what Prometheus's `/api/v1/alerts` shows filter out
    /// [`AlertState::Inactive`].
    pub fn alerts(&self) -> Vec<&Alert> {
        let mut v: Vec<&Alert> = match &self.kind {
            RuleKind::Alerting(a) => a.active.values().collect(),
            RuleKind::Recording => Vec::new(),
        };
        v.sort_by(|a, b| a.labels.cmp(&b.labels));
        v
    }

    /// The rule's overall state: its most severe active alert's.
    pub fn state(&self) -> AlertState {
        self.alerts()
            .iter()
            .map(|a| a.state)
            .max()
            .unwrap_or(AlertState::Inactive)
    }

    /// Turns a recording rule's result into the series it writes.
    pub(crate) fn record(
        &self,
        result: Vec<InstantSample>,
        limit: usize,
    ) -> Result<Vec<InstantSample>, String> {
        let mut out = Vec::with_capacity(result.len());
        let mut seen = std::collections::HashSet::new();
        for mut s in result {
            s.labels.set(METRIC_NAME.to_string(), self.name.clone());
            for (k, v) in &self.labels {
                s.labels.set(k.clone(), v.clone());
            }
            if !seen.insert(s.labels.clone()) {
                return Err(
                    "vector contains metrics with the same labelset after applying rule labels"
                        .into(),
                );
            }
            out.push(s);
        }
        if limit > 0 && out.len() > limit {
            return Err(format!(
                "exceeded limit of {limit} with {} series",
                out.len()
            ));
        }
        Ok(out)
    }

    /// Advances the alert state machine with the expression's result at `t_ms` and
    /// returns the `ALERTS` and `ALERTS_FOR_STATE` samples to write.
    pub(crate) fn alert(
        &mut self,
        result: Vec<InstantSample>,
        t_ms: i64,
        sample_t_ms: i64,
        limit: usize,
        ctx: &TemplateCtx<'_>,
    ) -> Result<Vec<InstantSample>, String> {
        let name = self.name.clone();
        let rule_labels = self.labels.clone();
        let RuleKind::Alerting(st) = &mut self.kind else {
            return Ok(Vec::new());
        };
        let ext = to_map(ctx.external_labels);
        let mut fresh: HashMap<Labels, Alert> = HashMap::with_capacity(result.len());
        for s in result {
            let data = AlertData {
                labels: to_map(&s.labels),
                external_labels: ext.clone(),
                external_url: ctx.external_url.to_string(),
                value: s.v,
            };
            let mut lbls = s.labels.without_name();
            for (k, v) in &rule_labels {
                lbls.set(k.clone(), expand_alert_text(&name, v, &data, ctx.query));
            }
            lbls.set("alertname".to_string(), name.clone());
            let annotations = st
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), expand_alert_text(&name, v, &data, ctx.query)))
                .collect();
            if fresh.contains_key(&lbls) {
                return Err(
                    "vector contains metrics with the same labelset after applying alert labels"
                        .into(),
                );
            }
            fresh.insert(
                lbls.clone(),
                Alert {
                    labels: lbls,
                    annotations,
                    state: AlertState::Pending,
                    value: s.v,
                    active_at_ms: t_ms,
                    fired_at_ms: None,
                    resolved_at_ms: None,
                    last_sent_at_ms: None,
                    valid_until_ms: None,
                    keep_firing_since_ms: None,
                },
            );
        }
        let present: std::collections::HashSet<Labels> = fresh.keys().cloned().collect();
        for (k, a) in fresh {
            match st.active.get_mut(&k) {
                Some(old) if old.state != AlertState::Inactive => {
                    old.value = a.value;
                    old.annotations = a.annotations;
                }
                _ => {
                    st.active.insert(k, a);
                }
            }
        }

        let mut out = Vec::new();
        let mut active_count = 0usize;
        let mut remove = Vec::new();
        for (k, a) in st.active.iter_mut() {
            if !present.contains(k) {
                let mut keep_firing = false;
                if a.state == AlertState::Firing && st.keep_firing_for_ms > 0 {
                    let since = *a.keep_firing_since_ms.get_or_insert(t_ms);
                    keep_firing = t_ms - since < st.keep_firing_for_ms;
                }
                if a.state == AlertState::Pending
                    || a.resolved_at_ms
                        .is_some_and(|r| t_ms - r > RESOLVED_RETENTION_MS)
                {
                    remove.push(k.clone());
                }
                if a.state != AlertState::Inactive && !keep_firing {
                    a.state = AlertState::Inactive;
                    a.resolved_at_ms = Some(t_ms);
                }
                if !keep_firing {
                    continue;
                }
            } else {
                a.keep_firing_since_ms = None;
            }
            active_count += 1;
            if a.state == AlertState::Pending && t_ms - a.active_at_ms >= st.for_ms {
                a.state = AlertState::Firing;
                a.fired_at_ms = Some(t_ms);
            }
            let mut alerts = a.labels.clone();
            alerts.set(METRIC_NAME.to_string(), "ALERTS".to_string());
            alerts.set("alertstate".to_string(), a.state.as_str().to_string());
            out.push(InstantSample {
                labels: alerts,
                t: sample_t_ms,
                v: 1.0,
            });
            let mut for_state = a.labels.clone();
            for_state.set(METRIC_NAME.to_string(), "ALERTS_FOR_STATE".to_string());
            out.push(InstantSample {
                labels: for_state,
                t: sample_t_ms,
                // Whole seconds, as Prometheus's `ActiveAt.Unix()`.
                v: a.active_at_ms.div_euclid(1000) as f64,
            });
        }
        for k in remove {
            st.active.remove(&k);
        }
        if limit > 0 && active_count > limit {
            st.active.clear();
            return Err(format!(
                "exceeded limit of {limit} with {active_count} alerts"
            ));
        }
        Ok(out)
    }

    /// Marks alerts sent at `t_ms` and returns copies of those due, per Prometheus's
    /// `sendAlerts`: `valid_until` = t + 4 × max(interval, resend delay).
    pub(crate) fn take_alerts_to_send(
        &mut self,
        t_ms: i64,
        resend_delay_ms: i64,
        interval_ms: i64,
    ) -> Vec<Alert> {
        let RuleKind::Alerting(st) = &mut self.kind else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for a in st.active.values_mut() {
            if a.needs_sending(t_ms, resend_delay_ms) {
                a.last_sent_at_ms = Some(t_ms);
                a.valid_until_ms = Some(t_ms + 4 * resend_delay_ms.max(interval_ms));
                out.push(a.clone());
            }
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }
}
