//! The evaluator: walks the AST at one timestamp. Range queries and subqueries call it
//! once per step; rule evaluation (the hot path) is a single instant evaluation.
//!
//! Metric names follow Prometheus 3.x delayed name removal: operations that drop the
//! name only flag the element, and the flag is applied when the query's result is
//! assembled, so `label_replace` and aggregations can still see the name on the way.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{
    AtModifier, Expr, MatrixSelector, Offset, SubqueryExpr, UnaryExpr, VectorSelector,
};

use super::{Annotation, AnnotationLevel, EvalError, aggregate, binary, functions};
use crate::model::{Labels, METRIC_NAME, Sample, is_stale};
use crate::storage::Queryable;

/// One element of an instant vector during evaluation.
#[derive(Clone, Debug)]
pub(crate) struct Elem {
    pub labels: Labels,
    pub v: f64,
    /// Set by operations that remove the metric name; applied at the end of the query.
    pub drop_name: bool,
}

/// One series of a range vector during evaluation.
#[derive(Clone, Debug)]
pub(crate) struct RangeSeries {
    pub labels: Labels,
    pub samples: Vec<Sample>,
    pub drop_name: bool,
}

#[derive(Clone, Debug)]
pub(crate) enum Val {
    Scalar(f64),
    Str(String),
    Vector(Vec<Elem>),
    Matrix(Vec<RangeSeries>),
}

impl Val {
    pub fn type_name(&self) -> &'static str {
        match self {
            Val::Scalar(_) => "scalar",
            Val::Str(_) => "string",
            Val::Vector(_) => "instant vector",
            Val::Matrix(_) => "range vector",
        }
    }
}

/// A range vector with the window it was read from, which rate-like functions need for
/// extrapolation.
pub(crate) struct Window {
    pub series: Vec<RangeSeries>,
    /// The right edge of the window (evaluation time after `@` and `offset`).
    pub end: i64,
    pub range: i64,
}

/// Where a range function's input comes from.
pub(crate) enum WindowSrc {
    Loaded(Window),
    Selector {
        matchers: Vec<Matcher>,
        end: i64,
        range: i64,
    },
}

pub(crate) struct Evaluator<'a> {
    pub q: &'a dyn Queryable,
    pub lookback: i64,
    /// The query's start and end, which `@ start()` / `@ end()` refer to.
    pub start: i64,
    pub end: i64,
    /// The range query's step; zero for instant queries (what `step()` returns).
    pub step: i64,
    pub subquery_step: i64,
    /// Samples read or produced so far; see [`super::MAX_SAMPLES_PER_QUERY`].
    pub samples: Cell<usize>,
    /// Warnings and infos collected on the way, deduplicated.
    pub annotations: RefCell<Vec<Annotation>>,
}

pub(crate) fn runtime(msg: impl Into<String>) -> EvalError {
    EvalError::Runtime(msg.into())
}

pub(crate) fn duration_ms(d: &Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn system_time_ms(t: &SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => duration_ms(&d),
        Err(e) => -duration_ms(&e.duration()),
    }
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => duration_ms(d),
        Some(Offset::Neg(d)) => -duration_ms(d),
    }
}

/// The matcher sets a selector stands for: one set, or one per `or` alternative.
pub(crate) fn selector_matchers(vs: &VectorSelector) -> Vec<Vec<Matcher>> {
    let with_name = |mut ms: Vec<Matcher>| {
        if let Some(name) = &vs.name {
            let present = ms.iter().any(|m| {
                m.name == METRIC_NAME && matches!(m.op, MatchOp::Equal) && &m.value == name
            });
            if !present {
                ms.push(Matcher::new(MatchOp::Equal, METRIC_NAME, name));
            }
        }
        ms
    };
    if vs.matchers.or_matchers.is_empty() {
        vec![with_name(vs.matchers.matchers.clone())]
    } else {
        vs.matchers
            .or_matchers
            .iter()
            .map(|alt| {
                let mut ms = vs.matchers.matchers.clone();
                ms.extend(alt.iter().cloned());
                with_name(ms)
            })
            .collect()
    }
}

/// Strips parentheses, which never change a value.
pub(crate) fn unparen(mut e: &Expr) -> &Expr {
    while let Expr::Paren(p) = e {
        e = &p.expr;
    }
    e
}

impl Evaluator<'_> {
    pub fn annotate(&self, level: AnnotationLevel, message: String) {
        let mut a = self.annotations.borrow_mut();
        if !a.iter().any(|x| x.level == level && x.message == message) {
            a.push(Annotation { level, message });
        }
    }

    /// The warning Prometheus gives for a φ outside [0, 1] (the result is ±Inf or NaN).
    pub fn check_quantile_param(&self, q: f64) {
        if q.is_nan() || !(0.0..=1.0).contains(&q) {
            self.annotate(
                AnnotationLevel::Warning,
                format!("PromQL warning: quantile value should be between 0 and 1, got {q}"),
            );
        }
    }

    /// Counts `n` more samples against the per-query bound.
    fn account(&self, n: usize) -> Result<(), EvalError> {
        let total = self.samples.get().saturating_add(n);
        self.samples.set(total);
        if total > super::MAX_SAMPLES_PER_QUERY {
            return Err(runtime(
                "query processing would load too many samples into memory in query execution",
            ));
        }
        Ok(())
    }

    fn at_time(&self, at: &Option<AtModifier>, t: i64) -> i64 {
        match at {
            None => t,
            Some(AtModifier::Start) => self.start,
            Some(AtModifier::End) => self.end,
            Some(AtModifier::At(st)) => system_time_ms(st),
        }
    }

    pub fn eval(&self, e: &Expr, t: i64) -> Result<Val, EvalError> {
        match e {
            Expr::NumberLiteral(n) => Ok(Val::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Val::Str(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => self.eval_unary(u, t),
            Expr::VectorSelector(vs) => Ok(Val::Vector(self.select_instant(vs, t, false)?)),
            Expr::MatrixSelector(ms) => Ok(Val::Matrix(self.select_range(ms, t)?.series)),
            Expr::Subquery(sq) => Ok(Val::Matrix(self.eval_subquery(sq, t)?.series)),
            Expr::Call(c) => functions::call(self, c, t),
            Expr::Aggregate(a) => aggregate::eval(self, a, t),
            Expr::Binary(b) => binary::eval(self, b, t),
            Expr::Extension(_) => Err(EvalError::Unsupported("extension expressions".into())),
        }
    }

    pub fn eval_scalar(&self, e: &Expr, t: i64) -> Result<f64, EvalError> {
        match self.eval(e, t)? {
            Val::Scalar(v) => Ok(v),
            other => Err(runtime(format!(
                "expected scalar, got {}",
                other.type_name()
            ))),
        }
    }

    pub fn eval_vector(&self, e: &Expr, t: i64) -> Result<Vec<Elem>, EvalError> {
        match self.eval(e, t)? {
            Val::Vector(v) => Ok(v),
            other => Err(runtime(format!(
                "expected instant vector, got {}",
                other.type_name()
            ))),
        }
    }

    pub fn eval_string(&self, e: &Expr, t: i64) -> Result<String, EvalError> {
        match self.eval(e, t)? {
            Val::Str(s) => Ok(s),
            other => Err(runtime(format!(
                "expected string, got {}",
                other.type_name()
            ))),
        }
    }

    /// A range-vector argument for a function that reduces each series to one value:
    /// plain matrix selectors are streamed from the store instead of materialized.
    pub fn window_src(&self, e: &Expr, t: i64) -> Result<WindowSrc, EvalError> {
        if let Expr::MatrixSelector(ms) = unparen(e) {
            let mut alts = selector_matchers(&ms.vs);
            if alts.len() == 1 {
                let end = self
                    .at_time(&ms.vs.at, t)
                    .saturating_sub(offset_ms(&ms.vs.offset));
                return Ok(WindowSrc::Selector {
                    matchers: alts.pop().unwrap_or_default(),
                    end,
                    range: duration_ms(&ms.range),
                });
            }
        }
        Ok(WindowSrc::Loaded(self.eval_window(e, t)?))
    }

    /// Streams the windows of a plain selector through `f` (stale markers removed),
    /// counting the samples read against the query's bound.
    pub fn visit_window(
        &self,
        matchers: &[Matcher],
        end: i64,
        range: i64,
        f: &mut dyn FnMut(&Labels, &[Sample]),
    ) -> Result<(), EvalError> {
        let mut read = 0usize;
        let mut clean: Vec<Sample> = Vec::new();
        self.q.visit(
            matchers,
            end.saturating_sub(range).saturating_add(1),
            end,
            &mut |labels, samples| {
                read += samples.len();
                if samples.iter().any(|x| is_stale(x.v)) {
                    clean.clear();
                    clean.extend(samples.iter().filter(|x| !is_stale(x.v)));
                    if !clean.is_empty() {
                        f(labels, &clean);
                    }
                } else if !samples.is_empty() {
                    f(labels, samples);
                }
            },
        );
        self.account(read)
    }

    /// Evaluates a range-vector argument: a matrix selector or a subquery.
    pub fn eval_window(&self, e: &Expr, t: i64) -> Result<Window, EvalError> {
        match unparen(e) {
            Expr::MatrixSelector(ms) => self.select_range(ms, t),
            Expr::Subquery(sq) => self.eval_subquery(sq, t),
            other => Err(runtime(format!(
                "expected range vector, got {}",
                self.eval(other, t)?.type_name()
            ))),
        }
    }

    fn eval_unary(&self, u: &UnaryExpr, t: i64) -> Result<Val, EvalError> {
        match self.eval(&u.expr, t)? {
            Val::Scalar(v) => Ok(Val::Scalar(-v)),
            Val::Vector(mut vs) => {
                for e in &mut vs {
                    e.v = -e.v;
                    e.drop_name = true;
                }
                Ok(Val::Vector(vs))
            }
            other => Err(runtime(format!(
                "unary minus on {} is not allowed",
                other.type_name()
            ))),
        }
    }

    /// Series matching the selector with samples in `[mint, maxt]`, sorted by labels as
    /// Prometheus's storage returns them (order-dependent operators such as `limitk` and
    /// ties in `topk` rely on it).
    fn select(
        &self,
        vs: &VectorSelector,
        mint: i64,
        maxt: i64,
        last_only: bool,
    ) -> Result<Vec<crate::model::Series>, EvalError> {
        let alts = selector_matchers(vs);
        let get = |ms: &[Matcher]| {
            if last_only {
                self.q.select_last(ms, mint, maxt)
            } else {
                self.q.select(ms, mint, maxt)
            }
        };
        let mut out = if alts.len() == 1 {
            get(&alts[0])
        } else {
            let mut seen: HashMap<Labels, ()> = HashMap::new();
            let mut out = Vec::new();
            for ms in &alts {
                for s in get(ms) {
                    if seen.insert(s.labels.clone(), ()).is_none() {
                        out.push(s);
                    }
                }
            }
            out
        };
        self.account(out.iter().map(|s| s.samples.len()).sum())?;
        out.sort_unstable_by(|a, b| a.labels.cmp(&b.labels));
        Ok(out)
    }

    /// The instant selector: per series, the newest sample in `(t - lookback, t]`, unless
    /// that sample is a stale marker. With `keep_ts` the value is the sample's timestamp
    /// in seconds (what `timestamp()` returns).
    pub fn select_instant(
        &self,
        vs: &VectorSelector,
        t: i64,
        keep_ts: bool,
    ) -> Result<Vec<Elem>, EvalError> {
        let ref_t = self
            .at_time(&vs.at, t)
            .saturating_sub(offset_ms(&vs.offset));
        let series = self.select(
            vs,
            ref_t.saturating_sub(self.lookback).saturating_add(1),
            ref_t,
            true,
        )?;
        let mut out = Vec::with_capacity(series.len());
        for s in series {
            let Some(last) = s.samples.last() else {
                continue;
            };
            if is_stale(last.v) {
                continue;
            }
            let v = if keep_ts {
                last.t as f64 / 1000.0
            } else {
                last.v
            };
            out.push(Elem {
                labels: s.labels,
                v,
                drop_name: false,
            });
        }
        Ok(out)
    }

    /// The range selector: samples in the left-open window `(t - range, t]`, stale
    /// markers dropped.
    pub fn select_range(&self, ms: &MatrixSelector, t: i64) -> Result<Window, EvalError> {
        let end = self
            .at_time(&ms.vs.at, t)
            .saturating_sub(offset_ms(&ms.vs.offset));
        let range = duration_ms(&ms.range);
        let series = self.select(
            &ms.vs,
            end.saturating_sub(range).saturating_add(1),
            end,
            false,
        )?;
        let mut out = Vec::with_capacity(series.len());
        for mut s in series {
            s.samples.retain(|x| !is_stale(x.v));
            if s.samples.is_empty() {
                continue;
            }
            out.push(RangeSeries {
                labels: s.labels,
                samples: s.samples,
                drop_name: false,
            });
        }
        Ok(Window {
            series: out,
            end,
            range,
        })
    }

    /// A subquery: the inner expression evaluated at every multiple of the step in
    /// `(t - range, t]` (after `@` and `offset`), the results collected per series.
    pub fn eval_subquery(&self, sq: &SubqueryExpr, t: i64) -> Result<Window, EvalError> {
        let end = self
            .at_time(&sq.at, t)
            .saturating_sub(offset_ms(&sq.offset));
        let range = duration_ms(&sq.range);
        let step = match &sq.step {
            Some(d) => duration_ms(d),
            None => self.subquery_step,
        };
        if step <= 0 {
            return Err(runtime("subquery step must be positive"));
        }
        let mint = end.saturating_sub(range);
        // Go's truncating division, then strictly after mint: the same alignment as
        // Prometheus so steps land on the same timestamps.
        let mut ts = step * (mint / step);
        if ts <= mint {
            ts = ts.saturating_add(step);
        }
        if (end.saturating_sub(ts)) / step >= super::MAX_SUBQUERY_STEPS {
            return Err(runtime(format!(
                "subquery would take more than {} steps; increase its step",
                super::MAX_SUBQUERY_STEPS
            )));
        }
        let mut index: HashMap<Labels, usize> = HashMap::new();
        let mut out: Vec<RangeSeries> = Vec::new();
        while ts <= end {
            match self.eval(&sq.expr, ts)? {
                Val::Vector(v) => {
                    self.account(v.len())?;
                    for e in v {
                        let p = Sample { t: ts, v: e.v };
                        match index.get(&e.labels) {
                            Some(&i) => out[i].samples.push(p),
                            None => {
                                index.insert(e.labels.clone(), out.len());
                                out.push(RangeSeries {
                                    labels: e.labels,
                                    samples: vec![p],
                                    drop_name: e.drop_name,
                                });
                            }
                        }
                    }
                }
                Val::Scalar(v) => {
                    let p = Sample { t: ts, v };
                    match out.first_mut() {
                        Some(s) => s.samples.push(p),
                        None => out.push(RangeSeries {
                            labels: Labels::new(),
                            samples: vec![p],
                            drop_name: false,
                        }),
                    }
                }
                other => {
                    return Err(runtime(format!(
                        "subquery must be of instant vector or scalar type, got {}",
                        other.type_name()
                    )));
                }
            }
            ts = match ts.checked_add(step) {
                Some(n) => n,
                None => break,
            };
        }
        Ok(Window {
            series: out,
            end,
            range,
        })
    }
}

/// Applies deferred name removal and refuses results where two elements end up with
/// the same labels.
pub(crate) fn finish_vector(v: &mut [Elem]) -> Result<(), EvalError> {
    let mut dropped = false;
    for e in v.iter_mut() {
        if e.drop_name && e.labels.name().is_some() {
            e.labels.remove(METRIC_NAME);
            dropped = true;
        }
        e.drop_name = false;
    }
    if dropped || v.len() > 1 {
        check_unique(v.iter().map(|e| &e.labels))?;
    }
    Ok(())
}

pub(crate) fn finish_matrix(m: &mut [RangeSeries]) -> Result<(), EvalError> {
    for s in m.iter_mut() {
        if s.drop_name {
            s.labels.remove(METRIC_NAME);
            s.drop_name = false;
        }
    }
    check_unique(m.iter().map(|s| &s.labels))
}

fn check_unique<'a>(it: impl Iterator<Item = &'a Labels>) -> Result<(), EvalError> {
    let mut seen = std::collections::HashSet::new();
    for l in it {
        if !seen.insert(l) {
            return Err(runtime(
                "vector cannot contain metrics with the same labelset",
            ));
        }
    }
    Ok(())
}
