//! Aggregation operators. Groups are keyed by a hash of the grouping labels, so an
//! aggregation is linear in the input size.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use promql_parser::parser::token;
use promql_parser::parser::{AggregateExpr, LabelModifier};

use super::EvalError;
use super::eval::{Elem, Evaluator, Val, runtime};
use super::numeric::{Mean, Variance, format_go_float, kahan_inc, quantile};
use crate::model::{Labels, METRIC_NAME};

struct Grouping<'a> {
    by: bool,
    names: &'a [String],
}

impl Grouping<'_> {
    fn key(&self, l: &Labels) -> u64 {
        let mut h = DefaultHasher::new();
        if self.by {
            for n in self.names {
                n.hash(&mut h);
                l.get(n).unwrap_or("").hash(&mut h);
            }
        } else {
            for (k, v) in l.iter() {
                if k != METRIC_NAME && !self.names.iter().any(|n| n == k) {
                    k.hash(&mut h);
                    v.hash(&mut h);
                }
            }
        }
        h.finish()
    }

    fn labels(&self, l: &Labels) -> Labels {
        let mut out = l.clone();
        if self.by {
            out.retain(|k| self.names.iter().any(|n| n == k));
        } else {
            out.retain(|k| k != METRIC_NAME && !self.names.iter().any(|n| n == k));
        }
        out
    }

    fn keeps_name(&self) -> bool {
        self.by && self.names.iter().any(|n| n == METRIC_NAME)
    }
}

/// Splits `v` into groups in order of first appearance.
fn group(v: Vec<Elem>, g: &Grouping<'_>) -> Vec<Vec<Elem>> {
    let mut index: HashMap<u64, usize> = HashMap::new();
    let mut groups: Vec<Vec<Elem>> = Vec::new();
    for e in v {
        let k = g.key(&e.labels);
        match index.get(&k) {
            Some(&i) => groups[i].push(e),
            None => {
                index.insert(k, groups.len());
                groups.push(vec![e]);
            }
        }
    }
    groups
}

pub(crate) fn eval(ev: &Evaluator<'_>, a: &AggregateExpr, t: i64) -> Result<Val, EvalError> {
    let input = ev.eval_vector(&a.expr, t)?;
    let empty: Vec<String> = Vec::new();
    let g = match &a.modifier {
        Some(LabelModifier::Include(ls)) => Grouping {
            by: true,
            names: &ls.labels,
        },
        Some(LabelModifier::Exclude(ls)) => Grouping {
            by: false,
            names: &ls.labels,
        },
        None => Grouping {
            by: true,
            names: &empty,
        },
    };
    let op = a.op.id();
    let param_scalar = |name: &str| -> Result<f64, EvalError> {
        match &a.param {
            Some(p) => ev.eval_scalar(p, t),
            None => Err(runtime(format!("{name} requires a parameter"))),
        }
    };
    match op {
        token::T_TOPK | token::T_BOTTOMK | token::T_LIMITK => {
            let k = param_scalar("k")?;
            if k.is_nan() {
                return Err(runtime("Parameter value is NaN"));
            }
            if k < 1.0 {
                return Ok(Val::Vector(Vec::new()));
            }
            let k = if k >= usize::MAX as f64 {
                usize::MAX
            } else {
                k as usize
            };
            let mut out = Vec::new();
            for mut grp in group(input, &g) {
                match op {
                    token::T_TOPK => grp.sort_by(|x, y| desc_nan_last(x.v, y.v)),
                    token::T_BOTTOMK => grp.sort_by(|x, y| asc_nan_last(x.v, y.v)),
                    _ => {}
                }
                grp.truncate(k);
                out.extend(grp);
            }
            return Ok(Val::Vector(out));
        }
        token::T_COUNT_VALUES => {
            let label = match &a.param {
                Some(p) => ev.eval_string(p, t)?,
                None => return Err(runtime("count_values requires a label name")),
            };
            if !valid_label_name(&label) {
                return Err(runtime(format!("invalid label name {label:?}")));
            }
            let mut index: HashMap<Labels, usize> = HashMap::new();
            let mut out: Vec<Elem> = Vec::new();
            for e in &input {
                let mut l = g.labels(&e.labels);
                l.set(label.clone(), format_go_float(e.v));
                match index.get(&l) {
                    Some(&i) => out[i].v += 1.0,
                    None => {
                        index.insert(l.clone(), out.len());
                        out.push(Elem {
                            labels: l,
                            v: 1.0,
                            drop_name: false,
                        });
                    }
                }
            }
            return Ok(Val::Vector(out));
        }
        token::T_LIMIT_RATIO => {
            return Err(EvalError::Unsupported("aggregation \"limit_ratio\"".into()));
        }
        _ => {}
    }
    let q = if op == token::T_QUANTILE {
        let q = param_scalar("quantile")?;
        ev.check_quantile_param(q);
        q
    } else {
        0.0
    };
    let keeps_name = g.keeps_name();
    let mut out = Vec::new();
    for grp in group(input, &g) {
        let v = match op {
            token::T_SUM => {
                let (mut s, mut c) = (0.0, 0.0);
                for e in &grp {
                    (s, c) = kahan_inc(e.v, s, c);
                }
                if s.is_infinite() { s } else { s + c }
            }
            token::T_AVG => {
                let mut m = Mean::default();
                for e in &grp {
                    m.add(e.v);
                }
                m.value()
            }
            token::T_COUNT => grp.len() as f64,
            token::T_GROUP => 1.0,
            token::T_MIN => {
                let mut m = grp[0].v;
                for e in &grp[1..] {
                    if e.v < m || m.is_nan() {
                        m = e.v;
                    }
                }
                m
            }
            token::T_MAX => {
                let mut m = grp[0].v;
                for e in &grp[1..] {
                    if e.v > m || m.is_nan() {
                        m = e.v;
                    }
                }
                m
            }
            token::T_STDDEV | token::T_STDVAR => {
                let mut var = Variance::default();
                for e in &grp {
                    var.add(e.v);
                }
                if op == token::T_STDDEV {
                    var.value().sqrt()
                } else {
                    var.value()
                }
            }
            token::T_QUANTILE => {
                let mut vals: Vec<f64> = grp.iter().map(|e| e.v).collect();
                quantile(q, &mut vals)
            }
            _ => {
                return Err(EvalError::Unsupported(format!("aggregation \"{}\"", a.op)));
            }
        };
        // With `by (__name__)` the name survives only if no member was due to lose it.
        out.push(Elem {
            labels: g.labels(&grp[0].labels),
            v,
            drop_name: keeps_name && grp.iter().any(|e| e.drop_name),
        });
    }
    Ok(Val::Vector(out))
}

fn desc_nan_last(a: f64, b: f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        _ => b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal),
    }
}

fn asc_nan_last(a: f64, b: f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal),
    }
}

pub(crate) fn valid_label_name(s: &str) -> bool {
    // Prometheus 3.x accepts any UTF-8 label name; only the empty name is invalid.
    !s.is_empty()
}
