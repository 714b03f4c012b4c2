//! PromQL evaluation with Prometheus 3.x semantics on `promql-parser`'s AST.
//!
//! The public surface is small on purpose: [`parse`], [`check_supported`] (run when rules
//! load, so an unsupported construct is refused up front rather than failing every
//! evaluation) and [`Engine`].
//!
//! Semantics follow Prometheus 3.x: left-open windows (`(t - range, t]`, lookback
//! `(t - 5m, t]`), stale markers end series, delayed metric-name removal, `@`/`offset`,
//! subqueries aligned to multiples of their step. Native histograms, `limit_ratio` and
//! `info()` are refused by [`check_supported`]. Measured against Prometheus's own test
//! files by `tests/promql_conformance.rs`.
//!
//! Bounds: one evaluation holds at most the samples its selectors read (range functions
//! over plain selectors stream each window without copying), capped in total by
//! [`MAX_SAMPLES_PER_QUERY`]; range queries are capped at [`MAX_RANGE_QUERY_POINTS`] steps
//! and subqueries at [`MAX_SUBQUERY_STEPS`].

mod aggregate;
mod binary;
mod eval;
mod functions;
mod histogram;
mod numeric;
mod support;

use std::collections::HashMap;

use promql_parser::parser::Expr;

use crate::model::{Labels, Sample, Series};
use crate::storage::Queryable;

pub use numeric::almost_equal;
pub use support::check_supported;

/// The most samples one query may read from storage or produce in subqueries, counted
/// cumulatively (Prometheus's `--query.max-samples` default, which counts samples held
/// at once; ours is the stricter total). Bounds a rule evaluation's memory.
pub const MAX_SAMPLES_PER_QUERY: usize = 50_000_000;

/// The most steps a range query may have (Prometheus's limit of points per series).
pub const MAX_RANGE_QUERY_POINTS: i64 = 11_000;

/// The most steps one subquery may evaluate its inner expression at: without a bound,
/// `x[1y:1ms]` would run for hours (Prometheus relies on a query timeout instead).
pub const MAX_SUBQUERY_STEPS: i64 = 1_000_000;

/// The step of a subquery written without one (`x[5m:]`): Prometheus uses the global
/// evaluation interval, whose default is one minute.
pub const DEFAULT_SUBQUERY_STEP_MS: i64 = 60 * 1000;

/// Prometheus's default lookback delta: an instant selector returns the newest sample no
/// older than this.
pub const DEFAULT_LOOKBACK_MS: i64 = 5 * 60 * 1000;

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum EvalError {
    #[error("parse error: {0}")]
    Parse(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Runtime(String),
}

/// One element of an instant vector.
#[derive(Clone, Debug, PartialEq)]
pub struct InstantSample {
    pub labels: Labels,
    /// Milliseconds since the epoch: the evaluation time.
    pub t: i64,
    pub v: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnotationLevel {
    Warning,
    Info,
}

/// A non-fatal remark about an evaluation, as Prometheus returns with query results
/// (e.g. a quantile outside [0, 1], a histogram whose buckets had to be fixed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Annotation {
    pub level: AnnotationLevel,
    pub message: String,
}

/// The result of an expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Scalar { t: i64, v: f64 },
    String { t: i64, v: String },
    Vector(Vec<InstantSample>),
    Matrix(Vec<Series>),
}

pub fn parse(query: &str) -> Result<Expr, EvalError> {
    promql_parser::parser::parse(query).map_err(EvalError::Parse)
}

#[derive(Clone, Debug)]
pub struct Engine {
    pub lookback_ms: i64,
}

impl Default for Engine {
    fn default() -> Self {
        Engine {
            lookback_ms: DEFAULT_LOOKBACK_MS,
        }
    }
}

impl Engine {
    fn evaluator<'a>(
        &self,
        q: &'a dyn Queryable,
        (start, end, step): (i64, i64, i64),
        sub_step: i64,
    ) -> eval::Evaluator<'a> {
        eval::Evaluator {
            q,
            lookback: self.lookback_ms,
            start,
            end,
            step,
            subquery_step: sub_step,
            samples: std::cell::Cell::new(0),
            annotations: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// Evaluates `expr` at `t` (milliseconds since the epoch).
    pub fn instant(&self, q: &dyn Queryable, expr: &Expr, t: i64) -> Result<Value, EvalError> {
        self.instant_with_step(q, expr, t, DEFAULT_SUBQUERY_STEP_MS)
    }

    /// [`Engine::instant`] with the step used by subqueries that name none (a rule
    /// group passes its evaluation interval, as Prometheus does).
    pub fn instant_with_step(
        &self,
        q: &dyn Queryable,
        expr: &Expr,
        t: i64,
        subquery_step_ms: i64,
    ) -> Result<Value, EvalError> {
        self.instant_annotated(q, expr, t, subquery_step_ms)
            .map(|(v, _)| v)
    }

    /// [`Engine::instant_with_step`] that also returns the evaluation's annotations.
    pub fn instant_annotated(
        &self,
        q: &dyn Queryable,
        expr: &Expr,
        t: i64,
        subquery_step_ms: i64,
    ) -> Result<(Value, Vec<Annotation>), EvalError> {
        let ev = self.evaluator(q, (t, t, 0), subquery_step_ms);
        let v = match ev.eval(expr, t)? {
            eval::Val::Scalar(v) => Value::Scalar { t, v },
            eval::Val::Str(v) => Value::String { t, v },
            eval::Val::Vector(mut v) => {
                eval::finish_vector(&mut v)?;
                Value::Vector(
                    v.into_iter()
                        .map(|e| InstantSample {
                            labels: e.labels,
                            t,
                            v: e.v,
                        })
                        .collect(),
                )
            }
            eval::Val::Matrix(mut m) => {
                eval::finish_matrix(&mut m)?;
                Value::Matrix(
                    m.into_iter()
                        .map(|s| Series {
                            labels: s.labels,
                            samples: s.samples,
                        })
                        .collect(),
                )
            }
        };
        Ok((v, ev.annotations.take()))
    }

    /// Evaluates `expr` at every step from `start` to `end` inclusive; the result is a
    /// matrix with one series per distinct output label set, sorted by labels.
    pub fn range(
        &self,
        q: &dyn Queryable,
        expr: &Expr,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<Vec<Series>, EvalError> {
        self.range_annotated(q, expr, start, end, step)
            .map(|(v, _)| v)
    }

    /// [`Engine::range`] that also returns the evaluation's annotations.
    pub fn range_annotated(
        &self,
        q: &dyn Queryable,
        expr: &Expr,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<(Vec<Series>, Vec<Annotation>), EvalError> {
        if step <= 0 {
            return Err(EvalError::Runtime(
                "range query step must be positive".into(),
            ));
        }
        if end < start {
            return Err(EvalError::Runtime("range query end is before start".into()));
        }
        if (end - start) / step >= MAX_RANGE_QUERY_POINTS {
            return Err(EvalError::Runtime(format!(
                "exceeded maximum resolution of {MAX_RANGE_QUERY_POINTS} points per timeseries; \
                 try decreasing the query resolution"
            )));
        }
        let ev = self.evaluator(q, (start, end, step), DEFAULT_SUBQUERY_STEP_MS);
        let mut index: HashMap<Labels, usize> = HashMap::new();
        let mut out: Vec<Series> = Vec::new();
        let mut push = |labels: Labels, p: Sample| match index.get(&labels) {
            Some(&i) => out[i].samples.push(p),
            None => {
                index.insert(labels.clone(), out.len());
                out.push(Series {
                    labels,
                    samples: vec![p],
                });
            }
        };
        let mut t = start;
        while t <= end {
            match ev.eval(expr, t)? {
                eval::Val::Scalar(v) => push(Labels::new(), Sample { t, v }),
                eval::Val::Vector(mut v) => {
                    eval::finish_vector(&mut v)?;
                    for e in v {
                        push(e.labels, Sample { t, v: e.v });
                    }
                }
                other => {
                    return Err(EvalError::Runtime(format!(
                        "range query must return instant vector or scalar, got {}",
                        other.type_name()
                    )));
                }
            }
            t = match t.checked_add(step) {
                Some(n) => n,
                None => break,
            };
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok((out, ev.annotations.take()))
    }
}

#[cfg(test)]
mod tests;
