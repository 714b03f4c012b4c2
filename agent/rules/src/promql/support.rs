//! The load-time check: which parsed expressions the engine can evaluate.

use promql_parser::parser::{Expr, token};

use super::EvalError;
use super::functions::SUPPORTED;

/// Functions that only make sense on native histograms.
const NATIVE_HISTOGRAM_FUNCTIONS: &[&str] = &[
    "histogram_avg",
    "histogram_count",
    "histogram_stddev",
    "histogram_stdvar",
    "histogram_sum",
];

/// Refuses constructs the engine does not evaluate, naming the first one found.
pub fn check_supported(expr: &Expr) -> Result<(), EvalError> {
    match expr {
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
        Expr::VectorSelector(_) | Expr::MatrixSelector(_) => Ok(()),
        Expr::Paren(p) => check_supported(&p.expr),
        Expr::Unary(u) => check_supported(&u.expr),
        Expr::Subquery(s) => check_supported(&s.expr),
        Expr::Aggregate(a) => {
            if a.op.id() == token::T_LIMIT_RATIO {
                return Err(EvalError::Unsupported("aggregation \"limit_ratio\"".into()));
            }
            if let Some(p) = &a.param {
                check_supported(p)?;
            }
            check_supported(&a.expr)
        }
        Expr::Binary(b) => {
            if b.modifier
                .as_ref()
                .is_some_and(|m| m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some())
            {
                return Err(EvalError::Unsupported(
                    "binary operator fill modifiers".into(),
                ));
            }
            check_supported(&b.lhs)?;
            check_supported(&b.rhs)
        }
        Expr::Call(c) => {
            let name = c.func.name;
            if NATIVE_HISTOGRAM_FUNCTIONS.contains(&name) {
                return Err(EvalError::Unsupported(format!(
                    "native histograms (function \"{name}\")"
                )));
            }
            if !SUPPORTED.contains(&name) {
                return Err(EvalError::Unsupported(format!("function \"{name}\"")));
            }
            for a in &c.args.args {
                check_supported(a)?;
            }
            Ok(())
        }
        Expr::Extension(e) => Err(EvalError::Unsupported(format!(
            "extension expression \"{}\"",
            e.expr.name()
        ))),
    }
}
