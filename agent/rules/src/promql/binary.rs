//! Binary operators: arithmetic, comparison (with `bool`), set operators, and vector
//! matching with `on`/`ignoring`/`group_left`/`group_right`.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use promql_parser::parser::token::{self, TokenType};
use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality};

use super::EvalError;
use super::eval::{Elem, Evaluator, Val, runtime};
use crate::model::{Labels, METRIC_NAME};

pub(crate) fn eval(ev: &Evaluator<'_>, b: &BinaryExpr, t: i64) -> Result<Val, EvalError> {
    let lhs = ev.eval(&b.lhs, t)?;
    let rhs = ev.eval(&b.rhs, t)?;
    let op = b.op;
    let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
    match (lhs, rhs) {
        (Val::Scalar(l), Val::Scalar(r)) => {
            let (v, keep) = apply(op, l, r)?;
            if is_comparison(op) {
                // The parser only admits scalar comparisons with `bool`.
                Ok(Val::Scalar(if keep { 1.0 } else { 0.0 }))
            } else {
                Ok(Val::Scalar(v))
            }
        }
        (Val::Vector(v), Val::Scalar(s)) => vector_scalar(op, v, s, false, return_bool),
        (Val::Scalar(s), Val::Vector(v)) => vector_scalar(op, v, s, true, return_bool),
        (Val::Vector(l), Val::Vector(r)) => {
            let matching = b.modifier.as_ref().and_then(|m| m.matching.clone());
            let card = b
                .modifier
                .as_ref()
                .map(|m| m.card.clone())
                .unwrap_or(VectorMatchCardinality::OneToOne);
            let sig = Signature::new(matching.as_ref());
            match op.id() {
                token::T_LAND => Ok(Val::Vector(and(l, r, &sig))),
                token::T_LOR => Ok(Val::Vector(or(l, r, &sig))),
                token::T_LUNLESS => Ok(Val::Vector(unless(l, r, &sig))),
                _ => vector_vector(op, l, r, &sig, matching.as_ref(), &card, return_bool),
            }
        }
        (l, r) => Err(runtime(format!(
            "binary operator between {} and {} is not allowed",
            l.type_name(),
            r.type_name()
        ))),
    }
}

fn is_comparison(op: TokenType) -> bool {
    op.is_comparison_operator()
}

/// The arithmetic or comparison result and, for comparisons, whether it holds.
fn apply(op: TokenType, l: f64, r: f64) -> Result<(f64, bool), EvalError> {
    Ok(match op.id() {
        token::T_ADD => (l + r, true),
        token::T_SUB => (l - r, true),
        token::T_MUL => (l * r, true),
        token::T_DIV => (l / r, true),
        token::T_MOD => (l % r, true),
        token::T_POW => (l.powf(r), true),
        token::T_ATAN2 => (l.atan2(r), true),
        token::T_EQLC => (l, l == r),
        token::T_NEQ => (l, l != r),
        token::T_GTR => (l, l > r),
        token::T_LSS => (l, l < r),
        token::T_GTE => (l, l >= r),
        token::T_LTE => (l, l <= r),
        _ => return Err(runtime(format!("operator {op} not allowed here"))),
    })
}

fn vector_scalar(
    op: TokenType,
    v: Vec<Elem>,
    s: f64,
    scalar_left: bool,
    return_bool: bool,
) -> Result<Val, EvalError> {
    let cmp = is_comparison(op);
    let mut out = Vec::with_capacity(v.len());
    for mut e in v {
        let (l, r) = if scalar_left { (s, e.v) } else { (e.v, s) };
        let (mut value, keep) = apply(op, l, r)?;
        // A comparison keeps the vector's value even when the scalar is on the left.
        if cmp && scalar_left {
            value = e.v;
        }
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
        } else if !keep {
            continue;
        }
        e.v = value;
        if !cmp || return_bool {
            e.drop_name = true;
        }
        out.push(e);
    }
    Ok(Val::Vector(out))
}

/// How two elements are matched: by the `on` labels, or by all labels but the
/// `ignoring` ones and the metric name.
pub(crate) struct Signature {
    on: bool,
    names: Vec<String>,
}

impl Signature {
    fn new(m: Option<&LabelModifier>) -> Self {
        match m {
            Some(LabelModifier::Include(ls)) => Signature {
                on: true,
                names: ls.labels.clone(),
            },
            Some(LabelModifier::Exclude(ls)) => Signature {
                on: false,
                names: ls.labels.clone(),
            },
            None => Signature {
                on: false,
                names: Vec::new(),
            },
        }
    }

    /// The labels that form the match group (for error messages).
    fn group_labels(&self, l: &Labels) -> Labels {
        let mut out = l.clone();
        if self.on {
            out.retain(|k| self.names.iter().any(|n| n == k));
        } else {
            out.retain(|k| k != METRIC_NAME && !self.names.iter().any(|n| n == k));
        }
        out
    }

    fn of(&self, l: &Labels) -> u64 {
        let mut h = DefaultHasher::new();
        if self.on {
            for n in &self.names {
                n.hash(&mut h);
                l.get(n).unwrap_or("").hash(&mut h);
            }
        } else {
            for (k, v) in l.iter() {
                if k == METRIC_NAME || self.names.iter().any(|n| n == k) {
                    continue;
                }
                k.hash(&mut h);
                v.hash(&mut h);
            }
        }
        h.finish()
    }
}

fn and(l: Vec<Elem>, r: Vec<Elem>, sig: &Signature) -> Vec<Elem> {
    let rs: HashSet<u64> = r.iter().map(|e| sig.of(&e.labels)).collect();
    l.into_iter()
        .filter(|e| rs.contains(&sig.of(&e.labels)))
        .collect()
}

fn unless(l: Vec<Elem>, r: Vec<Elem>, sig: &Signature) -> Vec<Elem> {
    let rs: HashSet<u64> = r.iter().map(|e| sig.of(&e.labels)).collect();
    l.into_iter()
        .filter(|e| !rs.contains(&sig.of(&e.labels)))
        .collect()
}

fn or(mut l: Vec<Elem>, r: Vec<Elem>, sig: &Signature) -> Vec<Elem> {
    let ls: HashSet<u64> = l.iter().map(|e| sig.of(&e.labels)).collect();
    l.extend(r.into_iter().filter(|e| !ls.contains(&sig.of(&e.labels))));
    l
}

fn vector_vector(
    op: TokenType,
    lhs: Vec<Elem>,
    rhs: Vec<Elem>,
    sig: &Signature,
    matching: Option<&LabelModifier>,
    card: &VectorMatchCardinality,
    return_bool: bool,
) -> Result<Val, EvalError> {
    let one_to_many = matches!(card, VectorMatchCardinality::OneToMany(_));
    let (many, one) = if one_to_many { (rhs, lhs) } else { (lhs, rhs) };
    let mut one_side: HashMap<u64, Elem> = HashMap::with_capacity(one.len());
    for e in one {
        let s = sig.of(&e.labels);
        if let Some(prev) = one_side.get(&s) {
            let side = if one_to_many { "left" } else { "right" };
            return Err(runtime(format!(
                "found duplicate series for the match group {} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                go_labels(&sig.group_labels(&e.labels)),
                go_labels(&prev.labels),
                go_labels(&e.labels)
            )));
        }
        one_side.insert(s, e);
    }
    let cmp = is_comparison(op);
    let include: &[String] = card.labels().map(|l| l.labels.as_slice()).unwrap_or(&[]);
    let mut matched: HashMap<u64, HashSet<Labels>> = HashMap::new();
    let mut out = Vec::new();
    for m in many {
        let s = sig.of(&m.labels);
        let Some(o) = one_side.get(&s) else {
            continue;
        };
        let (vl, vr) = if one_to_many { (o.v, m.v) } else { (m.v, o.v) };
        let (mut value, keep) = apply(op, vl, vr)?;
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
        }
        let labels = result_labels(&m.labels, &o.labels, matching, card, include);
        let seen = matched.entry(s).or_default();
        if matches!(card, VectorMatchCardinality::OneToOne) {
            if !seen.is_empty() {
                return Err(runtime(
                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)",
                ));
            }
            seen.insert(Labels::new());
        } else if !seen.insert(labels.clone()) {
            return Err(runtime(
                "multiple matches for labels: grouping labels must ensure unique matches",
            ));
        }
        if !keep && !return_bool {
            continue;
        }
        out.push(Elem {
            labels,
            v: value,
            drop_name: !cmp || return_bool || m.drop_name,
        });
    }
    Ok(Val::Vector(out))
}

fn result_labels(
    many: &Labels,
    one: &Labels,
    matching: Option<&LabelModifier>,
    card: &VectorMatchCardinality,
    include: &[String],
) -> Labels {
    let mut l = many.clone();
    if matches!(card, VectorMatchCardinality::OneToOne) {
        match matching {
            Some(LabelModifier::Include(ls)) => l.retain(|k| ls.labels.iter().any(|n| n == k)),
            Some(LabelModifier::Exclude(ls)) => l.retain(|k| !ls.labels.iter().any(|n| n == k)),
            None => {}
        }
    }
    for n in include {
        match one.get(n) {
            Some(v) => l.set(n.clone(), v.to_string()),
            None => l.remove(n),
        }
    }
    l
}

/// Go's `labels.Labels.String()`: every label, the name included, inside the braces.
fn go_labels(l: &Labels) -> String {
    let parts: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", parts.join(", "))
}
