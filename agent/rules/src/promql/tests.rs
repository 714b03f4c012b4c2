//! Focused tests for the semantics that are easy to get subtly wrong; the broad check
//! is the conformance run over Prometheus's own test files.

use super::*;
use crate::model::{METRIC_NAME, stale_nan};
use crate::storage::{MemStore, Queryable};

fn labels(name: &str, pairs: &[(&str, &str)]) -> Labels {
    let mut l = Labels::from_pairs(pairs.iter().copied());
    l.set(METRIC_NAME.into(), name.into());
    l
}

fn instant(s: &MemStore, q: &str, t: i64) -> Result<Value, EvalError> {
    let e = parse(q)?;
    check_supported(&e)?;
    Engine::default().instant(s, &e, t)
}

fn vector(s: &MemStore, q: &str, t: i64) -> Vec<InstantSample> {
    match instant(s, q, t) {
        Ok(Value::Vector(v)) => v,
        other => panic!("{q}: expected a vector, got {other:?}"),
    }
}

fn single(s: &MemStore, q: &str, t: i64) -> f64 {
    let v = vector(s, q, t);
    assert_eq!(v.len(), 1, "{q}: {v:?}");
    v[0].v
}

#[test]
fn rate_extrapolates_to_window_edges_but_not_below_zero() {
    let mut s = MemStore::new(10);
    let l = labels("c", &[]);
    // 1, 2, ..., 30 at 10s, 20s, ..., 300s.
    for i in 1..=30 {
        s.append(&l, i * 10_000, i as f64).unwrap();
    }
    // Window (0s, 300s]: 29 increase over 290s of samples; the start is 10s from the
    // window edge (below the 11s threshold) but the counter's zero point is also 10s
    // away, so the extrapolated increase is 30.
    let inc = single(&s, "increase(c[5m])", 300_000);
    assert!((inc - 30.0).abs() < 1e-9, "{inc}");
    let rate = single(&s, "rate(c[5m])", 300_000);
    assert!((rate - 0.1).abs() < 1e-12, "{rate}");
    // A gap larger than 1.1 average intervals extrapolates only half an interval:
    // window (150s, 300s] holds 160s..300s: 14 over 140s, +5s at the start.
    let inc = single(&s, "increase(c[150s])", 300_000);
    assert!((inc - 14.0 * 150.0 / 140.0).abs() < 1e-9, "{inc}");
}

#[test]
fn rate_handles_counter_resets_and_needs_two_samples() {
    let mut s = MemStore::new(10);
    let l = labels("c", &[]);
    for (i, v) in [(1, 10.0), (2, 20.0), (3, 5.0), (4, 15.0)] {
        s.append(&l, i * 60_000, v).unwrap();
    }
    // Raw increase: 20-10 + 5 (after the reset, from 0) + 10 = 25 over 180s; the window
    // (0, 240s] starts 60s before the first sample: the zero point (10/25*180 = 72s)
    // is further, so extrapolate a full interval: 25 * 240/180.
    let inc = single(&s, "increase(c[4m])", 240_000);
    assert!((inc - 25.0 * 240.0 / 180.0).abs() < 1e-9, "{inc}");
    assert!(vector(&s, "rate(c[1m])", 240_000).is_empty());
    assert_eq!(single(&s, "resets(c[5m])", 240_000), 1.0);
    assert_eq!(single(&s, "irate(c[5m])", 240_000), 10.0 / 60.0);
}

#[test]
fn windows_are_left_open_and_lookback_excludes_its_edge() {
    let mut s = MemStore::new(10);
    let l = labels("g", &[]);
    s.append(&l, 0, 1.0).unwrap();
    s.append(&l, 60_000, 2.0).unwrap();
    assert_eq!(single(&s, "count_over_time(g[1m])", 60_000), 1.0);
    assert_eq!(single(&s, "count_over_time(g[61s])", 60_000), 2.0);
    // The newest sample (60s) is exactly 5m old at 360s: not visible any more.
    assert_eq!(single(&s, "g", 359_999), 2.0);
    assert!(vector(&s, "g", 360_000).is_empty());
}

#[test]
fn stale_markers_end_a_series() {
    let mut s = MemStore::new(10);
    let l = labels("g", &[("a", "1")]);
    s.append(&l, 0, 1.0).unwrap();
    s.append(&l, 10_000, 2.0).unwrap();
    s.append(&l, 20_000, stale_nan()).unwrap();
    assert_eq!(single(&s, "g", 15_000), 2.0);
    assert!(vector(&s, "g", 25_000).is_empty());
    // Range selectors skip the marker but keep the real samples.
    assert_eq!(single(&s, "count_over_time(g[1m])", 25_000), 2.0);
    assert_eq!(single(&s, "last_over_time(g[1m])", 25_000), 2.0);
}

#[test]
fn offset_and_at_move_the_evaluation_time() {
    let mut s = MemStore::new(10);
    let l = labels("g", &[]);
    for i in 0..10 {
        s.append(&l, i * 60_000, i as f64).unwrap();
    }
    assert_eq!(single(&s, "g offset 2m", 540_000), 7.0);
    assert_eq!(single(&s, "g @ 180", 540_000), 3.0);
    assert_eq!(single(&s, "g @ 180 offset 1m", 540_000), 2.0);
    let e = parse("g @ start()").unwrap();
    let r = Engine::default()
        .range(&s, &e, 120_000, 240_000, 60_000)
        .unwrap();
    assert_eq!(r.len(), 1);
    assert!(r[0].samples.iter().all(|p| p.v == 2.0));
    assert_eq!(r[0].samples.len(), 3);
}

#[test]
fn vector_matching_refuses_ambiguity() {
    let mut s = MemStore::new(10);
    s.append(&labels("a", &[("x", "1"), ("y", "1")]), 0, 1.0)
        .unwrap();
    s.append(&labels("a", &[("x", "1"), ("y", "2")]), 0, 2.0)
        .unwrap();
    s.append(&labels("b", &[("x", "1")]), 0, 10.0).unwrap();
    // Two left series match one right series: needs group_left.
    let err = instant(&s, "a + on(x) b", 0).unwrap_err();
    assert!(
        err.to_string()
            .contains("many-to-one matching must be explicit"),
        "{err}"
    );
    // Duplicates on the "one" side are refused whatever the grouping.
    let err = instant(&s, "a + on(x) group_right b", 0).unwrap_err();
    assert!(
        err.to_string()
            .contains("many-to-many matching not allowed"),
        "{err}"
    );
    let err = instant(&s, "b * on(x) a", 0).unwrap_err();
    assert!(err.to_string().contains("many-to-many"), "{err}");
    let mut v = vector(&s, "a + on(x) group_left b", 0);
    v.sort_by(|p, q| p.v.total_cmp(&q.v));
    assert_eq!(v.iter().map(|e| e.v).collect::<Vec<_>>(), vec![11.0, 12.0]);
    assert_eq!(v[0].labels, Labels::from_pairs([("x", "1"), ("y", "1")]));
}

#[test]
fn comparisons_filter_or_return_bool_and_keep_names() {
    let mut s = MemStore::new(10);
    s.append(&labels("m", &[("i", "1")]), 0, 1.0).unwrap();
    s.append(&labels("m", &[("i", "2")]), 0, 5.0).unwrap();
    let v = vector(&s, "m > 2", 0);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].labels.name(), Some("m"));
    let mut v = vector(&s, "m > bool 2", 0);
    v.sort_by(|p, q| p.v.total_cmp(&q.v));
    assert_eq!(v.iter().map(|e| e.v).collect::<Vec<_>>(), vec![0.0, 1.0]);
    assert_eq!(v[0].labels.name(), None);
}

#[test]
fn name_removal_collisions_are_errors() {
    let mut s = MemStore::new(10);
    s.append(&labels("a", &[("x", "1")]), 0, 1.0).unwrap();
    s.append(&labels("b", &[("x", "1")]), 0, 1.0).unwrap();
    let err = instant(&s, r#"abs({__name__=~"a|b"})"#, 0).unwrap_err();
    assert!(err.to_string().contains("same labelset"), "{err}");
    // Restoring the name before the end avoids the collision.
    let v = vector(
        &s,
        r#"label_replace(abs({__name__=~"a|b"}), "__name__", "$1", "__name__", "(.*)")"#,
        0,
    );
    assert_eq!(v.len(), 2);
}

#[test]
fn aggregation_groups_and_topk() {
    let mut s = MemStore::new(10);
    for (j, i, v) in [("a", "1", 1.0), ("a", "2", 3.0), ("b", "1", 10.0)] {
        s.append(&labels("m", &[("job", j), ("i", i)]), 0, v)
            .unwrap();
    }
    let mut v = vector(&s, "sum by (job) (m)", 0);
    v.sort_by(|p, q| p.v.total_cmp(&q.v));
    assert_eq!(v[0].labels, Labels::from_pairs([("job", "a")]));
    assert_eq!(v[0].v, 4.0);
    assert_eq!(single(&s, "count without (i, job) (m)", 0), 3.0);
    let v = vector(&s, "topk(1, m)", 0);
    assert_eq!(v[0].labels.get("job"), Some("b"));
    assert_eq!(v[0].labels.name(), Some("m"));
    assert_eq!(single(&s, "quantile(0.5, m)", 0), 3.0);
}

#[test]
fn histogram_quantile_interpolates_and_fixes_monotonicity() {
    let mut s = MemStore::new(10);
    for (le, c) in [("0.1", 10.0), ("0.5", 8.0), ("1", 20.0), ("+Inf", 20.0)] {
        s.append(&labels("h_bucket", &[("le", le)]), 0, c).unwrap();
    }
    // The 0.5 bucket is lifted to 10; rank 10 falls at the top of the first bucket.
    assert!((single(&s, "histogram_quantile(0.5, h_bucket)", 0) - 0.1).abs() < 1e-12);
    // rank 15: halfway through (0.5, 1] which holds 10.
    let v = single(&s, "histogram_quantile(0.75, h_bucket)", 0);
    assert!((v - 0.75).abs() < 1e-12, "{v}");
}

#[test]
fn subqueries_align_steps_to_multiples_of_the_step() {
    let mut s = MemStore::new(10);
    let l = labels("g", &[]);
    for i in 0..=20 {
        s.append(&l, i * 10_000, i as f64).unwrap();
    }
    // Steps at 120s, 150s, 180s (not 95s, 125s...): window (95s, 185s].
    assert_eq!(single(&s, "count_over_time(g[90s:30s])", 185_000), 3.0);
    assert_eq!(single(&s, "min_over_time(g[90s:30s])", 185_000), 12.0);
}

#[test]
fn range_queries_return_sorted_series_per_step() {
    let mut s = MemStore::new(10);
    for i in 0..5 {
        s.append(&labels("g", &[("i", "2")]), i * 60_000, i as f64)
            .unwrap();
        s.append(&labels("g", &[("i", "1")]), i * 60_000, 2.0 * i as f64)
            .unwrap();
    }
    let e = parse("g * 2").unwrap();
    let r = Engine::default().range(&s, &e, 0, 240_000, 60_000).unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].labels, Labels::from_pairs([("i", "1")]));
    assert_eq!(
        r[1].samples.iter().map(|p| p.v).collect::<Vec<_>>(),
        vec![0.0, 2.0, 4.0, 6.0, 8.0]
    );
}

#[test]
fn check_supported_names_what_it_refuses() {
    let e = parse("info(x)").unwrap();
    let err = check_supported(&e).unwrap_err();
    assert_eq!(err, EvalError::Unsupported("function \"info\"".into()));
    let e = parse("limit_ratio(0.5, x)").unwrap();
    assert!(
        check_supported(&e)
            .unwrap_err()
            .to_string()
            .contains("limit_ratio")
    );
    let e = parse("histogram_count(rate(x[5m]))").unwrap();
    assert!(
        check_supported(&e)
            .unwrap_err()
            .to_string()
            .contains("native histograms")
    );
    let e = parse("sum by (job) (rate(x[5m])) / on(job) group_left count(up)").unwrap();
    assert!(check_supported(&e).is_ok());
}

#[test]
fn select_last_agrees_with_select() {
    let mut s = MemStore::new(10);
    let l = labels("g", &[]);
    for i in 0..10 {
        s.append(&l, i * 1000, i as f64).unwrap();
    }
    let m = vec![promql_parser::label::Matcher::new(
        promql_parser::label::MatchOp::Equal,
        METRIC_NAME,
        "g",
    )];
    for (mint, maxt) in [
        (0, 9000),
        (2500, 4500),
        (3000, 3000),
        (9500, 20_000),
        (-5, -1),
    ] {
        let full = s.select(&m, mint, maxt);
        let last = s.select_last(&m, mint, maxt);
        assert_eq!(full.len(), last.len(), "{mint}..{maxt}");
        for (f, l) in full.iter().zip(&last) {
            assert_eq!(l.samples, vec![*f.samples.last().unwrap()]);
        }
    }
}

#[test]
fn visit_agrees_with_select_across_ring_buffer_wrap() {
    let mut s = MemStore::new(10);
    let l = labels("g", &[]);
    // Fill, drop the front and refill so the deque's storage wraps around.
    for i in 0..16 {
        s.append(&l, i * 1000, i as f64).unwrap();
    }
    s.truncate(8000);
    for i in 16..30 {
        s.append(&l, i * 1000, i as f64).unwrap();
    }
    let m = vec![promql_parser::label::Matcher::new(
        promql_parser::label::MatchOp::Equal,
        METRIC_NAME,
        "g",
    )];
    for mint in (0..32).map(|x| x * 1000) {
        for maxt in (mint / 1000..32).map(|x| x * 1000) {
            let want: Vec<_> = s
                .select(&m, mint, maxt)
                .into_iter()
                .map(|x| x.samples)
                .collect();
            let mut got = Vec::new();
            s.visit(&m, mint, maxt, &mut |_, samples| got.push(samples.to_vec()));
            assert_eq!(got, want, "{mint}..{maxt}");
        }
    }
}

#[test]
fn annotations_report_out_of_range_quantiles_and_fixed_buckets() {
    let mut s = MemStore::new(10);
    for (le, c) in [("1", 5.0), ("2", 4.0), ("+Inf", 6.0)] {
        s.append(&labels("h_bucket", &[("le", le)]), 0, c).unwrap();
    }
    let e = parse("histogram_quantile(0.5, h_bucket)").unwrap();
    let (_, a) = Engine::default()
        .instant_annotated(&s, &e, 0, DEFAULT_SUBQUERY_STEP_MS)
        .unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].level, AnnotationLevel::Info);
    assert!(a[0].message.contains("monotonicity"), "{a:?}");
    let e = parse("quantile(1.5, h_bucket)").unwrap();
    let (v, a) = Engine::default()
        .instant_annotated(&s, &e, 0, DEFAULT_SUBQUERY_STEP_MS)
        .unwrap();
    assert_eq!(a[0].level, AnnotationLevel::Warning);
    match v {
        Value::Vector(v) => assert_eq!(v[0].v, f64::INFINITY),
        other => panic!("{other:?}"),
    }
}

#[test]
fn range_queries_are_bounded_in_steps() {
    let s = MemStore::new(1);
    let e = parse("vector(1)").unwrap();
    let err = Engine::default()
        .range(&s, &e, 0, MAX_RANGE_QUERY_POINTS * 1000, 1000)
        .unwrap_err();
    assert!(err.to_string().contains("maximum resolution"), "{err}");
    assert!(Engine::default().range(&s, &e, 0, 10_000, 0).is_err());
    let err = instant(&s, "count_over_time(vector(1)[1y:1ms])", 0).unwrap_err();
    assert!(err.to_string().contains("more than"), "{err}");
    // Extreme `@` times saturate instead of overflowing.
    assert!(vector(&s, "vector(1) and (count_over_time(up[5m] @ 9e15))", 0).is_empty());
}

/// Timing for the rule-evaluation hot path (2,200 series, 300 samples each, 1s scrape):
/// `cargo test --release -p minirag-rules --lib promql::tests::bench_rate -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_rate_over_many_series() {
    let mut s = MemStore::new(10_000);
    let n_series = 2_200;
    let refs: Vec<_> = (0..n_series)
        .map(|i| {
            let l = labels(
                "http_requests_total",
                &[
                    ("job", &format!("job{}", i % 20)),
                    ("instance", &format!("i{i}")),
                ],
            );
            s.get_or_create(&l).unwrap()
        })
        .collect();
    for t in 0..600i64 {
        for (i, r) in refs.iter().enumerate() {
            s.append_ref(*r, t * 1000, (t * (i as i64 % 7 + 1)) as f64)
                .unwrap();
        }
    }
    let m = vec![promql_parser::label::Matcher::new(
        promql_parser::label::MatchOp::Equal,
        METRIC_NAME,
        "http_requests_total",
    )];
    let start = std::time::Instant::now();
    for _ in 0..20 {
        std::hint::black_box(s.select(&m, 299_001, 599_000));
    }
    eprintln!("raw select: {:?} per call", start.elapsed() / 20);
    let start = std::time::Instant::now();
    for _ in 0..20 {
        std::hint::black_box(s.select(&m, 599_000, 599_000));
    }
    eprintln!(
        "raw select of one sample: {:?} per call",
        start.elapsed() / 20
    );
    let engine = Engine::default();
    for q in [
        "rate(http_requests_total[5m])",
        "sum by (job) (rate(http_requests_total[5m]))",
        "sum by (job) (rate(http_requests_total[10m])) > 1",
        "http_requests_total > 1000",
    ] {
        let e = parse(q).unwrap();
        let runs = 20;
        let start = std::time::Instant::now();
        let mut n = 0;
        for _ in 0..runs {
            if let Value::Vector(v) = engine.instant(&s, &e, 599_000).unwrap() {
                n = v.len();
            }
        }
        let per = start.elapsed() / runs;
        eprintln!("{q}: {per:?} per evaluation ({n} results)");
    }
}

#[test]
fn openmetrics_float_format_matches_go() {
    use super::numeric::format_openmetrics_float as f;
    assert_eq!(f(0.5), "0.5");
    assert_eq!(f(1.0), "1.0");
    assert_eq!(f(-0.1), "-0.1");
    assert_eq!(f(123456.0), "123456.0");
    assert_eq!(f(1e6), "1e+06");
    assert_eq!(f(1.5e-7), "1.5e-07");
    assert_eq!(f(f64::INFINITY), "+Inf");
    assert_eq!(f(f64::NAN), "NaN");
}
