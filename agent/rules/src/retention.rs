//! How much history the loaded rules can read, so the store keeps exactly that.
//!
//! An expression evaluated at `t` reads samples no older than `t - lookbehind`; the store
//! must keep the largest lookbehind over every loaded expression. `@` modifiers pin a
//! selector to an absolute time and cannot be bounded this way: they are treated like
//! the same selector without `@` (rules with `@` in the past see only retained data, as
//! with any Prometheus retention).

use std::time::Duration;

use promql_parser::parser::{Expr, Offset};

fn ms(d: &Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A positive offset reaches further back; a negative one reads the future, which needs
/// no extra history (it never reduces what the rest of the expression needs either).
fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        Some(Offset::Pos(d)) => ms(d),
        Some(Offset::Neg(_)) | None => 0,
    }
}

/// How far before the evaluation time `expr` reads, in milliseconds: ranges, subquery
/// ranges (plus their step, since subquery steps align to multiples of the step) and
/// offsets add up along the path from the root to each selector; instant selectors add
/// `lookback_ms`.
pub fn lookbehind_ms(expr: &Expr, lookback_ms: i64) -> i64 {
    match expr {
        Expr::VectorSelector(vs) => offset_ms(&vs.offset).saturating_add(lookback_ms),
        // A range selector reads (t - offset - range, t - offset]; Prometheus applies no
        // lookback to it.
        Expr::MatrixSelector(m) => offset_ms(&m.vs.offset).saturating_add(ms(&m.range)),
        Expr::Subquery(s) => offset_ms(&s.offset)
            .saturating_add(ms(&s.range))
            .saturating_add(s.step.as_ref().map(ms).unwrap_or(0))
            .saturating_add(lookbehind_ms(&s.expr, lookback_ms)),
        Expr::Aggregate(a) => {
            let p = a
                .param
                .as_ref()
                .map(|p| lookbehind_ms(p, lookback_ms))
                .unwrap_or(0);
            p.max(lookbehind_ms(&a.expr, lookback_ms))
        }
        Expr::Unary(u) => lookbehind_ms(&u.expr, lookback_ms),
        Expr::Binary(b) => {
            lookbehind_ms(&b.lhs, lookback_ms).max(lookbehind_ms(&b.rhs, lookback_ms))
        }
        Expr::Paren(p) => lookbehind_ms(&p.expr, lookback_ms),
        Expr::Call(c) => c
            .args
            .args
            .iter()
            .map(|a| lookbehind_ms(a, lookback_ms))
            .max()
            .unwrap_or(0),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => 0,
    }
}

/// The retention the store needs for `exprs`: their largest lookbehind, never less than
/// `floor_ms` (so ad-hoc queries have some history even when the rules need little).
pub fn retention_ms<'a>(
    exprs: impl IntoIterator<Item = &'a Expr>,
    lookback_ms: i64,
    floor_ms: i64,
) -> i64 {
    exprs
        .into_iter()
        .map(|e| lookbehind_ms(e, lookback_ms))
        .fold(floor_ms.max(lookback_ms), i64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LB: i64 = 300_000;

    fn lb(q: &str) -> i64 {
        lookbehind_ms(&promql_parser::parser::parse(q).unwrap(), LB)
    }

    #[test]
    fn instant_selector_needs_the_lookback() {
        assert_eq!(lb("up"), LB);
        assert_eq!(lb("up offset 1m"), 60_000 + LB);
        assert_eq!(lb("up offset -1m"), LB);
        assert_eq!(lb("1 + 2"), 0);
    }

    #[test]
    fn ranges_and_offsets_add_up() {
        assert_eq!(lb("rate(x[5m])"), 300_000);
        assert_eq!(lb("rate(x[5m] offset 10m)"), 900_000);
        assert_eq!(lb("sum(rate(a[5m])) / sum(rate(b[1h]))"), 3_600_000);
        assert_eq!(lb("max_over_time(q[10m]) > 0.9"), 600_000);
        assert_eq!(
            lb("histogram_quantile(0.9, sum by (le) (rate(b[2m])))"),
            120_000
        );
    }

    #[test]
    fn subqueries_nest() {
        // 30m range + 1m step + the inner 5m range.
        assert_eq!(
            lb("max_over_time(rate(x[5m])[30m:1m])"),
            1_800_000 + 60_000 + 300_000
        );
        // An inner instant selector adds the lookback; the subquery offset adds too.
        assert_eq!(
            lb("min_over_time(up[10m:] offset 5m)"),
            600_000 + 300_000 + LB
        );
    }

    #[test]
    fn aggregation_parameters_count() {
        assert_eq!(lb("topk(scalar(k offset 1h), x)"), 3_600_000 + LB);
    }

    #[test]
    fn retention_takes_the_max_with_a_floor() {
        let a = promql_parser::parser::parse("rate(x[5m])").unwrap();
        let b = promql_parser::parser::parse("max_over_time(x[30m])").unwrap();
        assert_eq!(retention_ms([&a, &b], LB, 900_000), 1_800_000);
        assert_eq!(retention_ms([&a], LB, 900_000), 900_000);
        assert_eq!(retention_ms([], LB, 0), LB);
    }
}
