//! PromQL evaluation with Prometheus 3.x semantics on `promql-parser`'s AST.
//!
//! The public surface is small on purpose: [`parse`], [`check_supported`] (run when rules
//! load, so an unsupported construct is refused up front rather than failing every
//! evaluation) and [`Engine`].

use promql_parser::parser::Expr;

use crate::model::{Labels, Series};
use crate::storage::Queryable;

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

/// Refuses constructs the engine does not evaluate, naming the first one found.
pub fn check_supported(_expr: &Expr) -> Result<(), EvalError> {
    Err(EvalError::Unsupported("the PromQL engine".into()))
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
    /// Evaluates `expr` at `t` (milliseconds since the epoch).
    pub fn instant(&self, _q: &dyn Queryable, _expr: &Expr, _t: i64) -> Result<Value, EvalError> {
        Err(EvalError::Unsupported("the PromQL engine".into()))
    }

    /// Evaluates `expr` at every step from `start` to `end` inclusive; the result is a
    /// matrix with one series per distinct output label set.
    pub fn range(
        &self,
        _q: &dyn Queryable,
        _expr: &Expr,
        _start: i64,
        _end: i64,
        _step: i64,
    ) -> Result<Vec<Series>, EvalError> {
        Err(EvalError::Unsupported("the PromQL engine".into()))
    }
}
