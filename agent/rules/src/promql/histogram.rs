//! `histogram_quantile` over classic (`le`-bucketed) histograms.

use std::collections::HashMap;

use super::AnnotationLevel;
use super::eval::{Elem, Evaluator};
use super::numeric::{almost_equal, format_openmetrics_float, parse_go_float};
use crate::model::Labels;

/// Bucket counts closer than this (relative) are treated as equal: they come from
/// floating-point noise, not from real observations.
const SMALL_DELTA_TOLERANCE: f64 = 1e-12;

pub(crate) fn histogram_quantile(ev: &Evaluator<'_>, q: f64, v: Vec<Elem>) -> Vec<Elem> {
    group_buckets(ev, v)
        .into_iter()
        .map(|(labels, mut buckets)| {
            let (v, forced_monotonic) = bucket_quantile(q, &mut buckets);
            if forced_monotonic {
                ev.annotate(
                    AnnotationLevel::Info,
                    format!(
                        "PromQL info: input to histogram_quantile needed to be fixed for monotonicity (see https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile) for metric name \"{}\"",
                        labels.name().unwrap_or("")
                    ),
                );
            }
            Elem {
                labels,
                v,
                drop_name: true,
            }
        })
        .collect()
}

/// `histogram_quantiles(v, "label", q1, q2, ...)`: one output series per histogram and
/// φ, told apart by `label`.
pub(crate) fn histogram_quantiles(
    ev: &Evaluator<'_>,
    label: &str,
    qs: &[f64],
    v: Vec<Elem>,
) -> Vec<Elem> {
    let groups = group_buckets(ev, v);
    let mut out = Vec::with_capacity(groups.len() * qs.len());
    for &q in qs {
        let q_str = format_openmetrics_float(q);
        for (labels, buckets) in &groups {
            let mut b = buckets.clone();
            let (v, forced_monotonic) = bucket_quantile(q, &mut b);
            if forced_monotonic {
                ev.annotate(
                    AnnotationLevel::Info,
                    format!(
                        "PromQL info: input to histogram_quantile needed to be fixed for monotonicity (see https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile) for metric name \"{}\"",
                        labels.name().unwrap_or("")
                    ),
                );
            }
            let mut l = labels.clone();
            l.set(label.to_string(), q_str.clone());
            out.push(Elem {
                labels: l,
                v,
                drop_name: true,
            });
        }
    }
    out
}

/// `histogram_fraction` over classic histograms: the estimated share of observations
/// between `lower` and `upper`, interpolating linearly within buckets.
pub(crate) fn histogram_fraction(
    ev: &Evaluator<'_>,
    lower: f64,
    upper: f64,
    v: Vec<Elem>,
) -> Vec<Elem> {
    group_buckets(ev, v)
        .into_iter()
        .map(|(labels, mut buckets)| Elem {
            labels,
            v: bucket_fraction(lower, upper, &mut buckets),
            drop_name: true,
        })
        .collect()
}

/// Buckets per histogram: series grouped by their labels without `le`.
fn group_buckets(ev: &Evaluator<'_>, v: Vec<Elem>) -> Vec<(Labels, Vec<(f64, f64)>)> {
    let mut index: HashMap<Labels, usize> = HashMap::new();
    let mut groups: Vec<(Labels, Vec<(f64, f64)>)> = Vec::new();
    for e in v {
        let le_raw = e.labels.get("le").unwrap_or("");
        let Some(le) = parse_go_float(le_raw) else {
            ev.annotate(
                AnnotationLevel::Warning,
                format!(
                    "PromQL warning: bucket label \"le\" is missing or has a malformed value of \"{le_raw}\" for metric name \"{}\"",
                    e.labels.name().unwrap_or("")
                ),
            );
            continue;
        };
        let mut key = e.labels.clone();
        // The name stays in the key until the result is assembled, so two histograms
        // that differ only by name collide there, as in Prometheus.
        key.remove("le");
        match index.get(&key) {
            Some(&i) => groups[i].1.push((le, e.v)),
            None => {
                index.insert(key.clone(), groups.len());
                groups.push((key, vec![(le, e.v)]));
            }
        }
    }
    groups
}

/// `buckets` are (upper bound, cumulative count) pairs in any order. Also says whether
/// counts had to be raised to make them monotonic.
fn bucket_quantile(q: f64, buckets: &mut Vec<(f64, f64)>) -> (f64, bool) {
    let mut forced = false;
    let v = bucket_quantile_inner(q, buckets, &mut forced);
    (v, forced)
}

fn bucket_quantile_inner(q: f64, buckets: &mut Vec<(f64, f64)>, forced: &mut bool) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    // Buckets with the same bound (e.g. "1" and "1.0") are one bucket.
    sort_and_coalesce(buckets);
    match buckets.last() {
        Some(b) if b.0 == f64::INFINITY => {}
        _ => return f64::NAN,
    }
    // Enforce monotonicity: scrapes of several buckets are not atomic, so counts can
    // briefly decrease with the bound; Prometheus lifts them to the previous count.
    let mut prev = buckets[0].1;
    for b in buckets.iter_mut().skip(1) {
        let cur = b.1;
        if cur == prev {
            continue;
        }
        if almost_equal(prev, cur, SMALL_DELTA_TOLERANCE) {
            b.1 = prev;
            continue;
        }
        if cur < prev {
            b.1 = prev;
            *forced = true;
            continue;
        }
        prev = cur;
    }
    if buckets.len() < 2 {
        return f64::NAN;
    }
    let n = buckets.len();
    let observations = buckets[n - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let b = buckets[..n - 1].partition_point(|x| x.1 < rank);
    if b == n - 1 {
        return buckets[n - 2].0;
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let mut start = 0.0;
    let end = buckets[b].0;
    let mut count = buckets[b].1;
    if b > 0 {
        start = buckets[b - 1].0;
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

fn sort_and_coalesce(buckets: &mut Vec<(f64, f64)>) {
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    buckets.dedup_by(|cur, prev| {
        if cur.0 == prev.0 {
            prev.1 += cur.1;
            true
        } else {
            false
        }
    });
}

fn bucket_fraction(lower: f64, upper: f64, buckets: &mut Vec<(f64, f64)>) -> f64 {
    sort_and_coalesce(buckets);
    let Some(&(last_bound, count)) = buckets.last() else {
        return f64::NAN;
    };
    if last_bound != f64::INFINITY || count == 0.0 || lower.is_nan() || upper.is_nan() {
        return f64::NAN;
    }
    if lower >= upper {
        return 0.0;
    }
    let (mut rank, mut lower_rank, mut upper_rank) = (0.0, 0.0, 0.0);
    let (mut lower_set, mut upper_set) = (false, false);
    // Positive-only buckets start at 0; otherwise the first bucket reaches down to -Inf.
    let mut lower_bound = if buckets[0].0 <= 0.0 {
        f64::NEG_INFINITY
    } else {
        0.0
    };
    for i in 0..buckets.len() {
        if i > 0 {
            lower_bound = buckets[i - 1].0;
        }
        let (upper_bound, b_count) = buckets[i];
        // Infinite-width buckets contribute nothing to interpolation.
        let interpolate = |v: f64| {
            if lower_bound == f64::NEG_INFINITY {
                b_count
            } else {
                rank + (b_count - rank) * (v - lower_bound) / (upper_bound - lower_bound)
            }
        };
        if !lower_set && lower_bound >= lower {
            lower_rank = rank;
            lower_set = true;
        }
        if !upper_set && lower_bound >= upper {
            upper_rank = rank;
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        if !lower_set && lower_bound < lower && upper_bound > lower {
            lower_rank = interpolate(lower);
            lower_set = true;
        }
        if !upper_set && lower_bound < upper && upper_bound > upper {
            upper_rank = interpolate(upper);
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        rank = b_count;
    }
    if !lower_set || lower_rank > count {
        lower_rank = count;
    }
    if !upper_set || upper_rank > count {
        upper_rank = count;
    }
    (upper_rank - lower_rank) / count
}
