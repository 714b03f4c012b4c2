//! Group evaluation on the real engine: write-back visible within the group, ALERTS,
//! stale markers, health, limits and notifications.

use std::path::PathBuf;

use minirag_rules::model::{Labels, METRIC_NAME, is_stale};
use minirag_rules::promql::{Engine, parse};
use minirag_rules::rules::{AlertState, EvalContext, Group, Health, load_files};
use minirag_rules::storage::{MemStore, Queryable};
use promql_parser::label::{MatchOp, Matcher};

const MIN: i64 = 60_000;

fn group(text: &str, name: &str) -> Group {
    let dir = std::env::temp_dir().join(format!("minirag-rules-group-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p: PathBuf = dir.join(name);
    std::fs::write(&p, text).unwrap();
    load_files(&[p]).unwrap().remove(0)
}

fn up(instance: &str) -> Labels {
    Labels::from_pairs([(METRIC_NAME, "up"), ("job", "api"), ("instance", instance)])
}

fn series(store: &MemStore, name: &str) -> Vec<minirag_rules::model::Series> {
    store.select(
        &[Matcher::new(MatchOp::Equal, METRIC_NAME, name)],
        0,
        i64::MAX,
    )
}

const RULES: &str = r#"groups:
  - name: g
    interval: 1m
    rules:
      - record: job:up:sum
        expr: sum by (job) (up)
      # Reads the series recorded just above at the same timestamp.
      - alert: FewUp
        expr: job:up:sum < 2
        for: 1m
        labels: {severity: page}
        annotations: {summary: 'only {{ $value }} up in {{ $labels.job }}'}
      # Reads ALERTS written by the rule above in the same evaluation.
      - record: alerts:count
        expr: count(ALERTS)
"#;

#[test]
fn eval_writes_back_and_later_rules_see_it() {
    let mut g = group(RULES, "g.yaml");
    let engine = Engine::default();
    let mut store = MemStore::new(1000);
    let ctx = EvalContext {
        external_labels: Labels::from_pairs([("cluster", "eu1")]),
        external_url: "http://agent:9901".into(),
    };
    for t in 0..3 {
        store.append(&up("a"), t * MIN, 1.0).unwrap();
        store
            .append(&up("b"), t * MIN, if t == 0 { 1.0 } else { 0.0 })
            .unwrap();
        let r = g.eval(&engine, &mut store, t * MIN, &ctx);
        assert!(r.failed_rules.is_empty(), "{r:?}");
    }
    let rules = g.rules();
    assert!(rules.iter().all(|r| r.health() == Health::Ok));
    assert_eq!(rules[0].last_evaluation_ms(), Some(2 * MIN));
    let sum = series(&store, "job:up:sum");
    assert_eq!(sum.len(), 1);
    let vals: Vec<f64> = sum[0].samples.iter().map(|s| s.v).collect();
    assert_eq!(vals, vec![2.0, 1.0, 1.0]);

    let alerts = rules[1].alerts();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].state, AlertState::Firing);
    assert_eq!(alerts[0].active_at_ms, MIN);
    assert_eq!(alerts[0].annotations[0].1, "only 1 up in api");
    assert_eq!(alerts[0].labels.get("alertname"), Some("FewUp"));

    // count(ALERTS) saw the pending alert at 1m and the firing one at 2m.
    let count = series(&store, "alerts:count");
    assert_eq!(count[0].samples.len(), 2);
    assert_eq!(count[0].samples[0].t, MIN);
    let alerts_series = series(&store, "ALERTS");
    let states: Vec<&str> = alerts_series
        .iter()
        .map(|s| s.labels.get("alertstate").unwrap())
        .collect();
    assert!(states.contains(&"pending") && states.contains(&"firing"));

    // Notifications: the firing alert is due now; its generatorURL links the query.
    let out = g.alerts_to_send(2 * MIN, MIN);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].starts_at_ms, 2 * MIN);
    assert_eq!(out[0].ends_at_ms, 2 * MIN + 4 * MIN);
    assert_eq!(
        out[0].generator_url,
        "http://agent:9901/graph?g0.expr=job%3Aup%3Asum+%3C+2&g0.tab=1"
    );
    assert!(g.alerts_to_send(2 * MIN + 1, MIN).is_empty());

    // Recovery: the alert resolves, its ALERTS series gets a stale marker.
    store.append(&up("a"), 3 * MIN, 1.0).unwrap();
    store.append(&up("b"), 3 * MIN, 1.0).unwrap();
    g.eval(&engine, &mut store, 3 * MIN, &ctx);
    assert_eq!(g.rules()[1].alerts()[0].state, AlertState::Inactive);
    let firing = series(&store, "ALERTS")
        .into_iter()
        .find(|s| s.labels.get("alertstate") == Some("firing"))
        .unwrap();
    let last = firing.samples.last().unwrap();
    assert_eq!(last.t, 3 * MIN);
    assert!(is_stale(last.v));
    let out = g.alerts_to_send(3 * MIN, MIN);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].ends_at_ms,
        3 * MIN,
        "resolved alerts end at resolution"
    );
}

#[test]
fn failing_rule_reports_error_and_keeps_the_others_running() {
    let mut g = group(
        r#"groups:
  - name: g
    limit: 1
    rules:
      - record: too:many
        expr: up
      - record: fine
        expr: sum(up)
"#,
        "limit.yaml",
    );
    let engine = Engine::default();
    let mut store = MemStore::new(100);
    store.append(&up("a"), 0, 1.0).unwrap();
    store.append(&up("b"), 0, 1.0).unwrap();
    let r = g.eval(&engine, &mut store, 0, &EvalContext::default());
    assert_eq!(r.failed_rules.len(), 1);
    assert_eq!(r.failed_rules[0].1, "exceeded limit of 1 with 2 series");
    assert_eq!(g.rules()[0].health(), Health::Err);
    assert_eq!(
        g.rules()[0].last_error(),
        Some("exceeded limit of 1 with 2 series")
    );
    assert_eq!(g.rules()[1].health(), Health::Ok);
    assert_eq!(series(&store, "fine").len(), 1);
}

#[test]
fn query_offset_shifts_evaluation_and_output_time() {
    let mut g = group(
        "groups:\n  - name: g\n    query_offset: 1m\n    rules:\n      - record: rec\n        expr: up\n",
        "offset.yaml",
    );
    let engine = Engine::default();
    let mut store = MemStore::new(100);
    store.append(&up("a"), 0, 1.0).unwrap();
    store.append(&up("a"), MIN, 5.0).unwrap();
    g.eval(&engine, &mut store, MIN, &EvalContext::default());
    let rec = series(&store, "rec");
    assert_eq!(rec[0].samples[0].t, 0);
    assert_eq!(rec[0].samples[0].v, 1.0);
    let _ = parse("up").unwrap();
}
