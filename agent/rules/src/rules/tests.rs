//! The alert state machine driven directly with expression results and a fake clock, so
//! these tests need no PromQL engine.

use super::rule::{RuleKind, TemplateCtx};
use super::*;
use crate::model::{Labels, METRIC_NAME};
use crate::promql::{InstantSample, parse};

const MIN: i64 = 60_000;

fn alerting(for_ms: i64, keep_firing_for_ms: i64, labels: &[(&str, &str)]) -> Rule {
    let ann = vec![(
        "summary".to_string(),
        "{{ $labels.instance }} at {{ $value }}".to_string(),
    )];
    Rule::new(
        "HighValue".into(),
        "x > 1".into(),
        parse("x > 1").unwrap(),
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        RuleKind::alerting(for_ms, keep_firing_for_ms, ann),
    )
}

fn sample(instance: &str, v: f64) -> InstantSample {
    InstantSample {
        labels: Labels::from_pairs([(METRIC_NAME, "x"), ("instance", instance)]),
        t: 0,
        v,
    }
}

fn step(r: &mut Rule, t: i64, result: Vec<InstantSample>) -> Vec<InstantSample> {
    let ext = Labels::from_pairs([("cluster", "eu1")]);
    let ctx = TemplateCtx {
        external_labels: &ext,
        external_url: "http://agent",
        query: None,
    };
    r.alert(result, t, t, 0, &ctx).unwrap()
}

fn states(r: &Rule) -> Vec<AlertState> {
    r.alerts().iter().map(|a| a.state).collect()
}

#[test]
fn pending_then_firing_after_for_then_resolved_and_dropped_after_retention() {
    let mut r = alerting(2 * MIN, 0, &[("severity", "page")]);
    let out = step(&mut r, 0, vec![sample("a", 5.0)]);
    assert_eq!(states(&r), vec![AlertState::Pending]);
    let alerts: Vec<_> = out
        .iter()
        .filter(|s| s.labels.name() == Some("ALERTS"))
        .collect();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].labels.get("alertstate"), Some("pending"));
    assert_eq!(alerts[0].labels.get("alertname"), Some("HighValue"));
    assert_eq!(alerts[0].labels.get("severity"), Some("page"));
    let for_state = out
        .iter()
        .find(|s| s.labels.name() == Some("ALERTS_FOR_STATE"))
        .unwrap();
    assert_eq!(for_state.v, 0.0);
    assert_eq!(for_state.labels.get("alertstate"), None);

    step(&mut r, MIN, vec![sample("a", 6.0)]);
    assert_eq!(states(&r), vec![AlertState::Pending]);
    let out = step(&mut r, 2 * MIN, vec![sample("a", 7.0)]);
    assert_eq!(states(&r), vec![AlertState::Firing]);
    assert!(
        out.iter()
            .any(|s| s.labels.get("alertstate") == Some("firing"))
    );
    let a = r.alerts()[0].clone();
    assert_eq!(a.active_at_ms, 0);
    assert_eq!(a.fired_at_ms, Some(2 * MIN));
    assert_eq!(a.value, 7.0);
    assert_eq!(a.annotations[0].1, "a at 7");

    // Gone from the result: resolved, no ALERTS sample, kept for re-sending.
    let out = step(&mut r, 3 * MIN, vec![]);
    assert!(out.is_empty());
    assert_eq!(states(&r), vec![AlertState::Inactive]);
    assert_eq!(r.alerts()[0].resolved_at_ms, Some(3 * MIN));
    step(&mut r, 3 * MIN + RESOLVED_RETENTION_MS, vec![]);
    assert_eq!(r.alerts().len(), 1);
    step(&mut r, 4 * MIN + RESOLVED_RETENTION_MS, vec![]);
    assert!(r.alerts().is_empty());
}

#[test]
fn pending_alert_that_disappears_is_dropped_and_restarts_its_clock() {
    let mut r = alerting(2 * MIN, 0, &[]);
    step(&mut r, 0, vec![sample("a", 5.0)]);
    step(&mut r, MIN, vec![]);
    assert!(r.alerts().is_empty());
    step(&mut r, 2 * MIN, vec![sample("a", 5.0)]);
    assert_eq!(r.alerts()[0].active_at_ms, 2 * MIN);
    step(&mut r, 3 * MIN, vec![sample("a", 5.0)]);
    assert_eq!(states(&r), vec![AlertState::Pending]);
}

#[test]
fn zero_for_fires_on_first_evaluation() {
    let mut r = alerting(0, 0, &[]);
    step(&mut r, 0, vec![sample("a", 5.0), sample("b", 2.0)]);
    assert_eq!(states(&r), vec![AlertState::Firing, AlertState::Firing]);
    assert_eq!(r.state(), AlertState::Firing);
}

#[test]
fn keep_firing_for_holds_a_firing_alert_then_resolves() {
    let mut r = alerting(0, 3 * MIN, &[]);
    step(&mut r, 0, vec![sample("a", 5.0)]);
    let out = step(&mut r, MIN, vec![]);
    assert_eq!(states(&r), vec![AlertState::Firing]);
    assert_eq!(r.alerts()[0].keep_firing_since_ms, Some(MIN));
    assert!(!out.is_empty(), "kept alerts still write ALERTS");
    step(&mut r, 3 * MIN, vec![]);
    assert_eq!(states(&r), vec![AlertState::Firing]);
    step(&mut r, 4 * MIN, vec![]);
    assert_eq!(states(&r), vec![AlertState::Inactive]);
    assert_eq!(r.alerts()[0].resolved_at_ms, Some(4 * MIN));
}

#[test]
fn keep_firing_since_resets_when_the_alert_comes_back() {
    let mut r = alerting(0, 2 * MIN, &[]);
    step(&mut r, 0, vec![sample("a", 5.0)]);
    step(&mut r, MIN, vec![]);
    step(&mut r, 2 * MIN, vec![sample("a", 5.0)]);
    assert_eq!(r.alerts()[0].keep_firing_since_ms, None);
    step(&mut r, 3 * MIN, vec![]);
    step(&mut r, 4 * MIN, vec![]);
    assert_eq!(states(&r), vec![AlertState::Firing]);
}

#[test]
fn templated_labels_colliding_is_an_error() {
    let mut r = alerting(0, 0, &[("instance", "all")]);
    let ext = Labels::new();
    let ctx = TemplateCtx {
        external_labels: &ext,
        external_url: "",
        query: None,
    };
    let err = r
        .alert(vec![sample("a", 1.0), sample("b", 2.0)], 0, 0, 0, &ctx)
        .unwrap_err();
    assert_eq!(
        err,
        "vector contains metrics with the same labelset after applying alert labels"
    );
}

#[test]
fn label_templates_use_value_and_external_labels() {
    let mut r = alerting(
        0,
        0,
        &[
            (
                "where",
                "{{ $externalLabels.cluster }}/{{ $labels.instance }}",
            ),
            ("empty", "{{ $labels.nope }}"),
        ],
    );
    step(&mut r, 0, vec![sample("a", 5.0)]);
    let a = r.alerts()[0];
    assert_eq!(a.labels.get("where"), Some("eu1/a"));
    // A label that expands to "" is dropped, as Prometheus's label builder does.
    assert_eq!(a.labels.get("empty"), None);
    assert_eq!(a.labels.get(METRIC_NAME), None);
}

#[test]
fn limit_clears_alerts_and_errors() {
    let mut r = alerting(0, 0, &[]);
    let ext = Labels::new();
    let ctx = TemplateCtx {
        external_labels: &ext,
        external_url: "",
        query: None,
    };
    let err = r
        .alert(vec![sample("a", 1.0), sample("b", 2.0)], 0, 0, 1, &ctx)
        .unwrap_err();
    assert_eq!(err, "exceeded limit of 1 with 2 alerts");
    assert!(r.alerts().is_empty());
}

#[test]
fn sending_follows_resend_delay_and_resolution() {
    let mut r = alerting(0, 0, &[]);
    let resend = MIN;
    let interval = 30_000;
    step(&mut r, 0, vec![sample("a", 5.0)]);
    let sent = r.take_alerts_to_send(0, resend, interval);
    assert_eq!(sent.len(), 1);
    // valid_until = t + 4 × max(interval, resend delay)
    assert_eq!(sent[0].valid_until_ms, Some(4 * MIN));
    assert!(r.take_alerts_to_send(30_000, resend, interval).is_empty());
    assert!(r.take_alerts_to_send(MIN, resend, interval).is_empty());
    assert_eq!(r.take_alerts_to_send(MIN + 1, resend, interval).len(), 1);
    // Resolution is sent at once, then re-sent every resend delay while retained.
    step(&mut r, 2 * MIN, vec![]);
    let sent = r.take_alerts_to_send(2 * MIN, resend, interval);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].resolved_at_ms, Some(2 * MIN));
    assert!(
        r.take_alerts_to_send(2 * MIN + 1000, resend, interval)
            .is_empty()
    );
    assert_eq!(
        r.take_alerts_to_send(3 * MIN + 1, resend, interval).len(),
        1
    );
}

#[test]
fn pending_alerts_are_not_sent() {
    let mut r = alerting(5 * MIN, 0, &[]);
    step(&mut r, 0, vec![sample("a", 5.0)]);
    assert!(r.take_alerts_to_send(0, MIN, MIN).is_empty());
}

#[test]
fn recording_applies_name_and_labels_and_refuses_collisions() {
    let r = Rule::new(
        "job:x:sum".into(),
        "x".into(),
        parse("x").unwrap(),
        vec![("team".into(), "core".into())],
        RuleKind::Recording,
    );
    let out = r.record(vec![sample("a", 1.0)], 0).unwrap();
    assert_eq!(out[0].labels.name(), Some("job:x:sum"));
    assert_eq!(out[0].labels.get("team"), Some("core"));
    assert!(
        r.record(vec![sample("a", 1.0), sample("b", 1.0)], 1)
            .is_err()
    );
    let collide = vec![
        sample("a", 1.0),
        InstantSample {
            labels: Labels::from_pairs([(METRIC_NAME, "y"), ("instance", "a")]),
            t: 0,
            v: 2.0,
        },
    ];
    assert_eq!(
        r.record(collide, 0).unwrap_err(),
        "vector contains metrics with the same labelset after applying rule labels"
    );
}
