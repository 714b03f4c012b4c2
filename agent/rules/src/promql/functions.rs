//! PromQL functions. Range-vector functions read a [`Window`] so rate-like functions
//! know the exact window edges they extrapolate to.

use promql_parser::parser::{Call, Expr};
use regex::Regex;

use super::aggregate::valid_label_name;
use super::eval::{
    Elem, Evaluator, RangeSeries, Val, WindowSrc, runtime, selector_matchers, unparen,
};
use super::histogram::{histogram_fraction, histogram_quantile, histogram_quantiles};
use super::numeric::{Mean, Variance, go_max, go_min, kahan_inc, kahan_sum, quantile};
use super::{AnnotationLevel, EvalError};
use crate::model::{Labels, METRIC_NAME, Sample};
use promql_parser::label::MatchOp;

/// Every function the engine evaluates; [`super::check_supported`] refuses the rest.
pub(crate) const SUPPORTED: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "cos",
    "cosh",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "deg",
    "delta",
    "double_exponential_smoothing",
    "end",
    "max_of",
    "min_of",
    "range",
    "start",
    "step",
    "deriv",
    "exp",
    "first_over_time",
    "floor",
    "histogram_fraction",
    "histogram_quantile",
    "histogram_quantiles",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "mad_over_time",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "pi",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rad",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sin",
    "sinh",
    "sort",
    "sort_by_label",
    "sort_by_label_desc",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "tan",
    "tanh",
    "time",
    "timestamp",
    "ts_of_first_over_time",
    "ts_of_last_over_time",
    "ts_of_max_over_time",
    "ts_of_min_over_time",
    "vector",
    "year",
];

pub(crate) fn call(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Val, EvalError> {
    let name = c.func.name;
    let args: Vec<&Expr> = c.args.args.iter().map(|a| a.as_ref()).collect();
    let arg = |i: usize| -> Result<&Expr, EvalError> {
        args.get(i)
            .copied()
            .ok_or_else(|| runtime(format!("{name}: missing argument {}", i + 1)))
    };
    if name.starts_with("sort") && ev.start != ev.end {
        ev.annotate(
            AnnotationLevel::Warning,
            "PromQL warning: sort is ineffective for range queries since results are always ordered by labels".into(),
        );
    }
    match name {
        "time" => Ok(Val::Scalar(t as f64 / 1000.0)),
        "pi" => Ok(Val::Scalar(std::f64::consts::PI)),
        "start" => Ok(Val::Scalar(ev.start as f64 / 1000.0)),
        "end" => Ok(Val::Scalar(ev.end as f64 / 1000.0)),
        "range" => Ok(Val::Scalar((ev.end - ev.start) as f64 / 1000.0)),
        "step" => Ok(Val::Scalar(if ev.start == ev.end {
            0.0
        } else {
            ev.step as f64 / 1000.0
        })),
        "min_of" | "max_of" => {
            let a = ev.eval_scalar(arg(0)?, t)?;
            let b = ev.eval_scalar(arg(1)?, t)?;
            Ok(Val::Scalar(if name == "min_of" {
                go_min(a, b)
            } else {
                go_max(a, b)
            }))
        }
        "vector" => {
            let v = ev.eval_scalar(arg(0)?, t)?;
            Ok(Val::Vector(vec![Elem {
                labels: Labels::new(),
                v,
                drop_name: false,
            }]))
        }
        "scalar" => {
            let v = ev.eval_vector(arg(0)?, t)?;
            Ok(Val::Scalar(if v.len() == 1 { v[0].v } else { f64::NAN }))
        }
        "abs" | "ceil" | "floor" | "exp" | "ln" | "log2" | "log10" | "sqrt" | "sgn" | "sin"
        | "cos" | "tan" | "asin" | "acos" | "atan" | "sinh" | "cosh" | "tanh" | "asinh"
        | "acosh" | "atanh" | "deg" | "rad" => {
            let f: fn(f64) -> f64 = match name {
                "abs" => f64::abs,
                "ceil" => f64::ceil,
                "floor" => f64::floor,
                "exp" => f64::exp,
                "ln" => f64::ln,
                "log2" => f64::log2,
                "log10" => f64::log10,
                "sqrt" => f64::sqrt,
                "sgn" => sgn,
                "sin" => f64::sin,
                "cos" => f64::cos,
                "tan" => f64::tan,
                "asin" => f64::asin,
                "acos" => f64::acos,
                "atan" => f64::atan,
                "sinh" => f64::sinh,
                "cosh" => f64::cosh,
                "tanh" => f64::tanh,
                "asinh" => f64::asinh,
                "acosh" => f64::acosh,
                "atanh" => f64::atanh,
                "deg" => f64::to_degrees,
                _ => f64::to_radians,
            };
            map_vector(ev.eval_vector(arg(0)?, t)?, f)
        }
        "round" => {
            let to_nearest = match args.get(1) {
                Some(e) => ev.eval_scalar(e, t)?,
                None => 1.0,
            };
            let inv = 1.0 / to_nearest;
            map_vector(ev.eval_vector(arg(0)?, t)?, |v| {
                (v * inv + 0.5).floor() / inv
            })
        }
        "clamp" => {
            let v = ev.eval_vector(arg(0)?, t)?;
            let lo = ev.eval_scalar(arg(1)?, t)?;
            let hi = ev.eval_scalar(arg(2)?, t)?;
            if hi < lo {
                return Ok(Val::Vector(Vec::new()));
            }
            map_vector(v, |x| go_max(lo, go_min(hi, x)))
        }
        "clamp_min" => {
            let v = ev.eval_vector(arg(0)?, t)?;
            let lo = ev.eval_scalar(arg(1)?, t)?;
            map_vector(v, |x| go_max(lo, x))
        }
        "clamp_max" => {
            let v = ev.eval_vector(arg(0)?, t)?;
            let hi = ev.eval_scalar(arg(1)?, t)?;
            map_vector(v, |x| go_min(hi, x))
        }
        "minute" | "hour" | "day_of_month" | "day_of_week" | "day_of_year" | "days_in_month"
        | "month" | "year" => {
            let v = match args.first() {
                Some(e) => ev.eval_vector(e, t)?,
                None => vec![Elem {
                    labels: Labels::new(),
                    v: t as f64 / 1000.0,
                    drop_name: false,
                }],
            };
            let f = |secs: f64| -> f64 {
                let c = civil(secs.floor() as i64);
                match name {
                    "minute" => c.minute as f64,
                    "hour" => c.hour as f64,
                    "day_of_month" => c.day as f64,
                    "day_of_week" => c.weekday as f64,
                    "day_of_year" => c.yday as f64,
                    "days_in_month" => days_in_month(c.year, c.month) as f64,
                    "month" => c.month as f64,
                    _ => c.year as f64,
                }
            };
            map_vector(v, |x| if x.is_finite() { f(x) } else { f64::NAN })
        }
        "timestamp" => {
            let e = arg(0)?;
            let mut v = match unparen(e) {
                Expr::VectorSelector(vs) => ev.select_instant(vs, t, true)?,
                _ => {
                    let mut v = ev.eval_vector(e, t)?;
                    for x in &mut v {
                        x.v = t as f64 / 1000.0;
                    }
                    v
                }
            };
            for x in &mut v {
                x.drop_name = true;
            }
            Ok(Val::Vector(v))
        }
        "sort" | "sort_desc" => {
            let mut v = ev.eval_vector(arg(0)?, t)?;
            let desc = name == "sort_desc";
            v.sort_by(|a, b| match (a.v.is_nan(), b.v.is_nan()) {
                (true, true) => std::cmp::Ordering::Equal,
                (true, false) => std::cmp::Ordering::Greater,
                (false, true) => std::cmp::Ordering::Less,
                _ if desc => b.v.partial_cmp(&a.v).unwrap_or(std::cmp::Ordering::Equal),
                _ => a.v.partial_cmp(&b.v).unwrap_or(std::cmp::Ordering::Equal),
            });
            Ok(Val::Vector(v))
        }
        "sort_by_label" | "sort_by_label_desc" => {
            let mut v = ev.eval_vector(arg(0)?, t)?;
            let mut names = Vec::new();
            for e in args.get(1..).unwrap_or(&[]) {
                names.push(ev.eval_string(e, t)?);
            }
            let desc = name == "sort_by_label_desc";
            v.sort_by(|a, b| {
                for n in &names {
                    let (x, y) = (a.labels.get(n).unwrap_or(""), b.labels.get(n).unwrap_or(""));
                    let o = natural_cmp(x, y);
                    if o != std::cmp::Ordering::Equal {
                        return if desc { o.reverse() } else { o };
                    }
                }
                let o = a.labels.cmp(&b.labels);
                if desc { o.reverse() } else { o }
            });
            Ok(Val::Vector(v))
        }
        "label_replace" => label_replace(ev, &args, t),
        "label_join" => label_join(ev, &args, t),
        "absent" => {
            let v = ev.eval_vector(arg(0)?, t)?;
            if !v.is_empty() {
                return Ok(Val::Vector(Vec::new()));
            }
            Ok(Val::Vector(vec![absent_elem(arg(0)?)]))
        }
        "absent_over_time" => {
            let w = ev.eval_window(arg(0)?, t)?;
            if !w.series.is_empty() {
                return Ok(Val::Vector(Vec::new()));
            }
            Ok(Val::Vector(vec![absent_elem(arg(0)?)]))
        }
        "histogram_quantile" => {
            let q = ev.eval_scalar(arg(0)?, t)?;
            ev.check_quantile_param(q);
            let v = ev.eval_vector(arg(1)?, t)?;
            Ok(Val::Vector(histogram_quantile(ev, q, v)))
        }
        "histogram_quantiles" => {
            let v = ev.eval_vector(arg(0)?, t)?;
            let label = ev.eval_string(arg(1)?, t)?;
            let mut qs = Vec::new();
            for e in args.get(2..).unwrap_or(&[]) {
                let q = ev.eval_scalar(e, t)?;
                ev.check_quantile_param(q);
                qs.push(q);
            }
            Ok(Val::Vector(histogram_quantiles(ev, &label, &qs, v)))
        }
        "histogram_fraction" => {
            let lower = ev.eval_scalar(arg(0)?, t)?;
            let upper = ev.eval_scalar(arg(1)?, t)?;
            let v = ev.eval_vector(arg(2)?, t)?;
            Ok(Val::Vector(histogram_fraction(ev, lower, upper, v)))
        }
        "rate" | "increase" | "delta" => {
            let w = ev.window_src(arg(0)?, t)?;
            let is_counter = name != "delta";
            let is_rate = name == "rate";
            over_window(ev, w, true, |l, s, w| {
                if is_counter {
                    warn_possible_non_counter(ev, l);
                }
                extrapolated_rate(s, w, is_counter, is_rate)
            })
        }
        "double_exponential_smoothing" => {
            let w = ev.window_src(arg(0)?, t)?;
            let sf = ev.eval_scalar(arg(1)?, t)?;
            let tf = ev.eval_scalar(arg(2)?, t)?;
            if !(sf > 0.0 && sf < 1.0) {
                return Err(runtime(format!(
                    "invalid smoothing factor. Expected: 0 < sf < 1, got: {sf}"
                )));
            }
            if !(tf > 0.0 && tf < 1.0) {
                return Err(runtime(format!(
                    "invalid trend factor. Expected: 0 < tf < 1, got: {tf}"
                )));
            }
            over_window(ev, w, true, |_, s, _| {
                double_exponential_smoothing(s, sf, tf)
            })
        }
        "irate" | "idelta" => {
            let w = ev.window_src(arg(0)?, t)?;
            let is_rate = name == "irate";
            over_window(ev, w, true, |_, s, _| instant_value(s, is_rate))
        }
        "deriv" => {
            let w = ev.window_src(arg(0)?, t)?;
            over_window(ev, w, true, |_, s, _| {
                if s.len() < 2 {
                    return None;
                }
                Some(linear_regression(s, s[0].t).0)
            })
        }
        "predict_linear" => {
            let w = ev.window_src(arg(0)?, t)?;
            let d = ev.eval_scalar(arg(1)?, t)?;
            over_window(ev, w, true, |_, s, _| {
                if s.len() < 2 {
                    return None;
                }
                let (slope, intercept) = linear_regression(s, t);
                Some(intercept + slope * d)
            })
        }
        "changes" => {
            let w = ev.window_src(arg(0)?, t)?;
            over_window(ev, w, true, |_, s, _| {
                let mut n = 0.0;
                for p in s.windows(2) {
                    let (a, b) = (p[0].v, p[1].v);
                    if a != b && !(a.is_nan() && b.is_nan()) {
                        n += 1.0;
                    }
                }
                Some(n)
            })
        }
        "resets" => {
            let w = ev.window_src(arg(0)?, t)?;
            over_window(ev, w, true, |_, s, _| {
                Some(s.windows(2).filter(|p| p[1].v < p[0].v).count() as f64)
            })
        }
        "avg_over_time" => over_window(ev, ev.window_src(arg(0)?, t)?, true, |_, s, _| {
            let mut m = Mean::default();
            s.iter().for_each(|p| m.add(p.v));
            Some(m.value())
        }),
        "sum_over_time" => over_window(ev, ev.window_src(arg(0)?, t)?, true, |_, s, _| {
            Some(kahan_sum(s.iter().map(|p| p.v)))
        }),
        "count_over_time" => over_window(ev, ev.window_src(arg(0)?, t)?, true, |_, s, _| {
            Some(s.len() as f64)
        }),
        "present_over_time" => {
            over_window(ev, ev.window_src(arg(0)?, t)?, true, |_, _, _| Some(1.0))
        }
        "min_over_time" => over_window(ev, ev.window_src(arg(0)?, t)?, true, |_, s, _| {
            let mut m = s[0].v;
            for p in &s[1..] {
                if p.v < m || m.is_nan() {
                    m = p.v;
                }
            }
            Some(m)
        }),
        "max_over_time" => over_window(ev, ev.window_src(arg(0)?, t)?, true, |_, s, _| {
            let mut m = s[0].v;
            for p in &s[1..] {
                if p.v > m || m.is_nan() {
                    m = p.v;
                }
            }
            Some(m)
        }),
        "stddev_over_time" | "stdvar_over_time" => {
            let sd = name == "stddev_over_time";
            over_window(ev, ev.window_src(arg(0)?, t)?, true, |_, s, _| {
                let mut v = Variance::default();
                s.iter().for_each(|p| v.add(p.v));
                Some(if sd { v.value().sqrt() } else { v.value() })
            })
        }
        "quantile_over_time" => {
            let q = ev.eval_scalar(arg(0)?, t)?;
            ev.check_quantile_param(q);
            let mut buf = Vec::new();
            over_window(ev, ev.window_src(arg(1)?, t)?, true, |_, s, _| {
                buf.clear();
                buf.extend(s.iter().map(|p| p.v));
                Some(quantile(q, &mut buf))
            })
        }
        "mad_over_time" => {
            let mut buf = Vec::new();
            over_window(ev, ev.window_src(arg(0)?, t)?, true, |_, s, _| {
                // A NaN makes the median, and so the deviation, undefined.
                if s.iter().any(|p| p.v.is_nan()) {
                    return Some(f64::NAN);
                }
                buf.clear();
                buf.extend(s.iter().map(|p| p.v));
                let median = quantile(0.5, &mut buf);
                for x in buf.iter_mut() {
                    *x = (*x - median).abs();
                }
                Some(quantile(0.5, &mut buf))
            })
        }
        "last_over_time" => over_window(ev, ev.window_src(arg(0)?, t)?, false, |_, s, _| {
            s.last().map(|p| p.v)
        }),
        "first_over_time" => over_window(ev, ev.window_src(arg(0)?, t)?, false, |_, s, _| {
            s.first().map(|p| p.v)
        }),
        "ts_of_last_over_time" => over_window(ev, ev.window_src(arg(0)?, t)?, true, |_, s, _| {
            s.last().map(|p| p.t as f64 / 1000.0)
        }),
        "ts_of_first_over_time" => over_window(ev, ev.window_src(arg(0)?, t)?, true, |_, s, _| {
            s.first().map(|p| p.t as f64 / 1000.0)
        }),
        "ts_of_max_over_time" | "ts_of_min_over_time" => {
            let max = name == "ts_of_max_over_time";
            over_window(ev, ev.window_src(arg(0)?, t)?, true, |_, s, _| {
                let mut best = s[0];
                for p in &s[1..] {
                    let better = if max { p.v >= best.v } else { p.v <= best.v };
                    if better || best.v.is_nan() {
                        best = *p;
                    }
                }
                Some(best.t as f64 / 1000.0)
            })
        }
        other => Err(EvalError::Unsupported(format!("function \"{other}\""))),
    }
}

fn sgn(v: f64) -> f64 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        v
    }
}

fn map_vector(mut v: Vec<Elem>, f: impl Fn(f64) -> f64) -> Result<Val, EvalError> {
    for e in &mut v {
        e.v = f(e.v);
        e.drop_name = true;
    }
    Ok(Val::Vector(v))
}

/// Applies `f` to each series of a window; `drop_name` says whether the function removes
/// the metric name (all but `last_over_time` / `first_over_time` do).
fn over_window(
    ev: &Evaluator<'_>,
    src: WindowSrc,
    drop_name: bool,
    mut f: impl FnMut(&Labels, &[Sample], &WindowEdges) -> Option<f64>,
) -> Result<Val, EvalError> {
    match src {
        WindowSrc::Loaded(w) => {
            let edges = WindowEdges {
                end: w.end,
                range: w.range,
            };
            let mut out = Vec::with_capacity(w.series.len());
            for RangeSeries {
                labels,
                samples,
                drop_name: d,
            } in w.series
            {
                if samples.is_empty() {
                    continue;
                }
                if let Some(v) = f(&labels, &samples, &edges) {
                    out.push(Elem {
                        labels,
                        v,
                        drop_name: drop_name || d,
                    });
                }
            }
            Ok(Val::Vector(out))
        }
        WindowSrc::Selector {
            matchers,
            end,
            range,
        } => {
            let edges = WindowEdges { end, range };
            let mut out = Vec::new();
            ev.visit_window(&matchers, end, range, &mut |labels, samples| {
                if let Some(v) = f(labels, samples, &edges) {
                    out.push(Elem {
                        labels: labels.clone(),
                        v,
                        drop_name,
                    });
                }
            })?;
            // The order the materialized path has (storage order by labels), which
            // order-sensitive consumers such as `limitk` and `topk` ties rely on.
            out.sort_unstable_by(|a, b| a.labels.cmp(&b.labels));
            Ok(Val::Vector(out))
        }
    }
}

pub(crate) struct WindowEdges {
    end: i64,
    range: i64,
}

/// Prometheus's hint that `rate`/`increase` may be applied to a gauge, judged by the
/// naming convention for counters.
fn warn_possible_non_counter(ev: &Evaluator<'_>, l: &Labels) {
    let Some(name) = l.name() else {
        return;
    };
    if ["_total", "_sum", "_count", "_bucket"]
        .iter()
        .any(|suffix| name.ends_with(suffix))
    {
        return;
    }
    ev.annotate(
        AnnotationLevel::Info,
        format!(
            "PromQL info: metric might not be a counter, name does not end in _total/_sum/_count/_bucket: {name:?}"
        ),
    );
}

/// `rate`, `increase` and `delta`: the change over the window, extrapolated towards the
/// window's edges as Prometheus's `extrapolatedRate` does.
fn extrapolated_rate(
    s: &[Sample],
    w: &WindowEdges,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    if s.len() < 2 {
        return None;
    }
    let range_start = w.end - w.range;
    let range_end = w.end;
    let first = s[0];
    let last = s[s.len() - 1];
    let mut result = last.v - first.v;
    if is_counter {
        let mut prev = first.v;
        for p in &s[1..] {
            if p.v < prev {
                result += prev;
            }
            prev = p.v;
        }
    }
    let mut to_start = (first.t - range_start) as f64 / 1000.0;
    let mut to_end = (range_end - last.t) as f64 / 1000.0;
    let sampled = (last.t - first.t) as f64 / 1000.0;
    let avg_step = sampled / (s.len() - 1) as f64;
    let threshold = avg_step * 1.1;
    if to_start >= threshold {
        to_start = avg_step / 2.0;
    }
    if is_counter {
        // A counter cannot go below zero: do not extrapolate past its zero point.
        let mut to_zero = to_start;
        if result > 0.0 && first.v >= 0.0 {
            to_zero = sampled * (first.v / result);
        }
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    if to_end >= threshold {
        to_end = avg_step / 2.0;
    }
    let mut factor = (sampled + to_start + to_end) / sampled;
    if is_rate {
        factor /= w.range as f64 / 1000.0;
    }
    Some(result * factor)
}

/// Holt's linear smoothing; the value is the last smoothed level.
fn double_exponential_smoothing(s: &[Sample], sf: f64, tf: f64) -> Option<f64> {
    if s.len() < 2 {
        return None;
    }
    let (mut s0, mut s1) = (0.0, s[0].v);
    let mut b = s[1].v - s[0].v;
    for (i, p) in s.iter().enumerate().skip(1) {
        let x = sf * p.v;
        // The trend is only updated from the second step on.
        if i > 1 {
            b = tf * (s1 - s0) + (1.0 - tf) * b;
        }
        let y = (1.0 - sf) * (s1 + b);
        (s0, s1) = (s1, x + y);
    }
    Some(s1)
}

fn instant_value(s: &[Sample], is_rate: bool) -> Option<f64> {
    if s.len() < 2 {
        return None;
    }
    let last = s[s.len() - 1];
    let prev = s[s.len() - 2];
    let mut v = if is_rate && last.v < prev.v {
        last.v
    } else {
        last.v - prev.v
    };
    let dt = last.t - prev.t;
    if dt == 0 {
        return None;
    }
    if is_rate {
        v /= dt as f64 / 1000.0;
    }
    Some(v)
}

/// Least-squares fit of value over time (seconds relative to `intercept_t`).
fn linear_regression(s: &[Sample], intercept_t: i64) -> (f64, f64) {
    let (mut n, mut sx, mut cx, mut sy, mut cy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut sxy, mut cxy, mut sx2, mut cx2) = (0.0, 0.0, 0.0, 0.0);
    let init_y = s[0].v;
    let mut const_y = true;
    for (i, p) in s.iter().enumerate() {
        if const_y && i > 0 && p.v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (p.t - intercept_t) as f64 / 1000.0;
        (sx, cx) = kahan_inc(x, sx, cx);
        (sy, cy) = kahan_inc(p.v, sy, cy);
        (sxy, cxy) = kahan_inc(x * p.v, sxy, cxy);
        (sx2, cx2) = kahan_inc(x * x, sx2, cx2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    let (sx, sy, sxy, sx2) = (sx + cx, sy + cy, sxy + cxy, sx2 + cx2);
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    let intercept = sy / n - slope * sx / n;
    (slope, intercept)
}

/// The labels `absent` reports: the selector's equality matchers, except the metric
/// name and labels matched more than once.
fn absent_elem(e: &Expr) -> Elem {
    let vs = match unparen(e) {
        Expr::VectorSelector(vs) => Some(vs),
        Expr::MatrixSelector(ms) => Some(&ms.vs),
        _ => None,
    };
    let mut labels = Labels::new();
    if let Some(vs) = vs {
        let sets = selector_matchers(vs);
        if sets.len() == 1 {
            let ms = &sets[0];
            for m in ms {
                if m.name == METRIC_NAME || !matches!(m.op, MatchOp::Equal) {
                    continue;
                }
                let dup = ms.iter().filter(|o| o.name == m.name).count() > 1;
                if !dup {
                    labels.set(m.name.clone(), m.value.clone());
                }
            }
        }
    }
    Elem {
        labels,
        v: 1.0,
        drop_name: false,
    }
}

fn label_replace(ev: &Evaluator<'_>, args: &[&Expr], t: i64) -> Result<Val, EvalError> {
    if args.len() != 5 {
        return Err(runtime("label_replace expects 5 arguments"));
    }
    let mut v = ev.eval_vector(args[0], t)?;
    let dst = ev.eval_string(args[1], t)?;
    let repl = ev.eval_string(args[2], t)?;
    let src = ev.eval_string(args[3], t)?;
    let re_src = ev.eval_string(args[4], t)?;
    let re = Regex::new(&format!("^(?s:{re_src})$")).map_err(|e| {
        runtime(format!(
            "invalid regular expression in label_replace(): {e}"
        ))
    })?;
    if !valid_label_name(&dst) {
        return Err(runtime(format!(
            "invalid destination label name in label_replace(): {dst}"
        )));
    }
    for e in &mut v {
        let src_v = e.labels.get(&src).unwrap_or("").to_string();
        if let Some(caps) = re.captures(&src_v) {
            let mut out = String::new();
            caps.expand(&repl, &mut out);
            e.labels.set(dst.clone(), out);
            if dst == METRIC_NAME {
                e.drop_name = false;
            }
        }
    }
    Ok(Val::Vector(v))
}

fn label_join(ev: &Evaluator<'_>, args: &[&Expr], t: i64) -> Result<Val, EvalError> {
    if args.len() < 3 {
        return Err(runtime("label_join expects at least 3 arguments"));
    }
    let mut v = ev.eval_vector(args[0], t)?;
    let dst = ev.eval_string(args[1], t)?;
    let sep = ev.eval_string(args[2], t)?;
    let mut srcs = Vec::new();
    for e in &args[3..] {
        srcs.push(ev.eval_string(e, t)?);
    }
    if !valid_label_name(&dst) {
        return Err(runtime(format!(
            "invalid destination label name in label_join(): {dst}"
        )));
    }
    for e in &mut v {
        let joined = srcs
            .iter()
            .map(|s| e.labels.get(s).unwrap_or(""))
            .collect::<Vec<_>>()
            .join(&sep);
        e.labels.set(dst.clone(), joined);
        if dst == METRIC_NAME {
            e.drop_name = false;
        }
    }
    Ok(Val::Vector(v))
}

/// Compares strings with digit runs ordered by numeric value ("a2" < "a10").
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (ab, bb) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < ab.len() && j < bb.len() {
        if ab[i].is_ascii_digit() && bb[j].is_ascii_digit() {
            let si = i;
            while i < ab.len() && ab[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < bb.len() && bb[j].is_ascii_digit() {
                j += 1;
            }
            let x = a[si..i].trim_start_matches('0');
            let y = b[sj..j].trim_start_matches('0');
            let o = x.len().cmp(&y.len()).then_with(|| x.cmp(y));
            if o != Ordering::Equal {
                return o;
            }
        } else {
            if ab[i] != bb[j] {
                return ab[i].cmp(&bb[j]);
            }
            i += 1;
            j += 1;
        }
    }
    (ab.len() - i).cmp(&(bb.len() - j))
}

struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    weekday: u32,
    yday: u32,
}

/// Calendar fields of a Unix time in UTC (Howard Hinnant's days-to-civil algorithm).
fn civil(secs: i64) -> Civil {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = (days + 4).rem_euclid(7) as u32;
    let mut yday = 0;
    for m in 1..month {
        yday += days_in_month(year, m);
    }
    Civil {
        year,
        month,
        day,
        hour: (rem / 3600) as u32,
        minute: ((rem % 3600) / 60) as u32,
        weekday,
        yday: yday + day,
    }
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}
