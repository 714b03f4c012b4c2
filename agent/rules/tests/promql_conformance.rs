//! Runs Prometheus's own PromQL test scripts (`promql/promqltest/testdata/*.test`)
//! against our engine and fails if the number of passing cases drops below the floor
//! committed in `promql_conformance_floor.txt`.
//!
//! Compared as promqltest does, except that parse errors are not compared by message,
//! and annotation messages (`expect warn msg: ...`) are
//! compared without Prometheus's trailing source position and `regex:` forms only by
//! level (our parser keeps no positions).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use minirag_rules::model::{Labels, METRIC_NAME, Series, stale_nan};
use minirag_rules::promql::{
    self, Annotation, AnnotationLevel, Engine, EvalError, InstantSample, Value, almost_equal,
};
use minirag_rules::storage::{MemStore, matches};
use promql_parser::parser::Expr;

const EPSILON: f64 = 1e-6;
const FLOOR_FILE: &str = "tests/promql_conformance_floor.txt";
const UPDATE_CMD: &str = "UPDATE_CONFORMANCE_FLOOR=1 cargo test -p minirag-rules --test promql_conformance -- --nocapture";

// ---------------------------------------------------------------------------------------
// Script parsing

#[derive(Clone, Debug)]
enum Point {
    Float(f64),
    Stale,
    Omitted,
    Histogram,
}

#[derive(Debug)]
struct SeriesDesc {
    labels: Labels,
    points: Vec<Point>,
}

#[derive(Debug, Default)]
struct Expectations {
    fail: bool,
    /// The exact error message of `expect fail msg: ...`.
    fail_msg: Option<String>,
    ordered: bool,
    string: Option<String>,
    range_vector: Option<(i64, i64, i64)>,
    /// `expect warn` / `expect info`, with the message if one is given.
    warn: Option<Option<String>>,
    info: Option<Option<String>>,
    no_warn: bool,
    no_info: bool,
    scalar: Option<Point>,
    series: Vec<SeriesDesc>,
}

#[derive(Debug)]
enum Kind {
    Instant(i64),
    Range { start: i64, end: i64, step: i64 },
}

#[derive(Debug)]
struct Case {
    line: usize,
    kind: Kind,
    expr: String,
    exp: Expectations,
}

enum Cmd {
    Load {
        step: i64,
        nhcb: bool,
        series: Vec<SeriesDesc>,
    },
    Clear,
    Eval(Box<Case>),
}

fn parse_duration(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(0);
    }
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let b = s.as_bytes();
    let mut i = 0;
    let mut total: i64 = 0;
    if b.is_empty() {
        return Err("empty duration".into());
    }
    while i < b.len() {
        let st = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if st == i {
            return Err(format!("bad duration {s:?}"));
        }
        let n: i64 = s[st..i].parse().map_err(|e| format!("{e}"))?;
        let ust = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let mult = match &s[ust..i] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            u => return Err(format!("bad duration unit {u:?} in {s:?}")),
        };
        total += n * mult;
    }
    Ok(if neg { -total } else { total })
}

fn parse_float(s: &str) -> Option<f64> {
    match s.to_ascii_lowercase().as_str() {
        "inf" | "+inf" => return Some(f64::INFINITY),
        "-inf" => return Some(f64::NEG_INFINITY),
        "nan" | "+nan" | "-nan" => return Some(f64::NAN),
        _ => {}
    }
    // No hex here: in series notation `0x10` means "0, repeated".
    s.parse::<f64>().ok()
}

/// Splits at whitespace, keeping `{{ ... }}` histogram literals whole.
fn value_tokens(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut depth = 0i32;
    for c in s.chars() {
        match c {
            '{' => {
                depth += 1;
                cur.push(c);
            }
            '}' => {
                depth -= 1;
                cur.push(c);
            }
            c if c.is_whitespace() && depth == 0 => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Expands the series notation: `a`, `a+bxN`, `a-bxN`, `axN`, `_`, `_xN`, `stale`,
/// `{{...}}`.
fn expand_values(s: &str) -> Result<Vec<Point>, String> {
    let mut out = Vec::new();
    for tok in value_tokens(s) {
        if tok.starts_with("{{") {
            // A histogram, possibly with an `xN` / `+...xN` tail.
            let times = tok
                .rsplit_once("}}")
                .and_then(|(_, tail)| tail.rsplit_once('x'))
                .and_then(|(_, n)| n.parse::<usize>().ok());
            for _ in 0..=times.unwrap_or(0) {
                out.push(Point::Histogram);
            }
            continue;
        }
        if tok == "_" {
            out.push(Point::Omitted);
            continue;
        }
        if tok == "stale" {
            out.push(Point::Stale);
            continue;
        }
        if let Some(n) = tok.strip_prefix("_x") {
            let n: usize = n.parse().map_err(|_| format!("bad token {tok:?}"))?;
            out.extend(std::iter::repeat_n(Point::Omitted, n));
            continue;
        }
        if let Some(v) = parse_float(&tok) {
            out.push(Point::Float(v));
            continue;
        }
        let (head, times) = tok
            .rsplit_once('x')
            .ok_or_else(|| format!("bad token {tok:?}"))?;
        let times: usize = times.parse().map_err(|_| format!("bad token {tok:?}"))?;
        // Split `a+b` / `a-b` at the first sign that is neither leading nor an exponent's.
        let hb = head.as_bytes();
        let mut split = None;
        for i in 1..hb.len() {
            if (hb[i] == b'+' || hb[i] == b'-') && !matches!(hb[i - 1], b'e' | b'E') {
                split = Some(i);
                break;
            }
        }
        let (start, delta) = match split {
            Some(i) => {
                let a = parse_float(&head[..i]).ok_or_else(|| format!("bad token {tok:?}"))?;
                let d = parse_float(&head[i + 1..]).ok_or_else(|| format!("bad token {tok:?}"))?;
                (a, if hb[i] == b'-' { -d } else { d })
            }
            None => (
                parse_float(head).ok_or_else(|| format!("bad token {tok:?}"))?,
                0.0,
            ),
        };
        for k in 0..=times {
            out.push(Point::Float(start + delta * k as f64));
        }
    }
    Ok(out)
}

/// The exact message of `expect warn msg: ...`, without its source position.
fn annotation_msg(rest: &str) -> Option<String> {
    let m = rest.trim().strip_prefix("msg:")?.trim();
    let m = match m.rfind(" (") {
        Some(i) if m.ends_with(')') && m[i + 2..m.len() - 1].contains(':') => &m[..i],
        _ => m,
    };
    Some(m.to_string())
}

fn parse_quoted(b: &[u8], mut i: usize) -> Result<(String, usize), String> {
    let q = b[i];
    i += 1;
    let mut out = Vec::new();
    while i < b.len() && b[i] != q {
        if b[i] == b'\\' && q != b'`' && i + 1 < b.len() {
            i += 1;
            out.push(match b[i] {
                b'n' => b'\n',
                b't' => b'\t',
                c => c,
            });
        } else {
            out.push(b[i]);
        }
        i += 1;
    }
    if i >= b.len() {
        return Err("unterminated string".into());
    }
    Ok((String::from_utf8_lossy(&out).into_owned(), i + 1))
}

/// Parses `name{l="v", ...}` at the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut labels = Labels::new();
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
        i += 1;
    }
    if i > 0 {
        labels.set(METRIC_NAME.into(), s[..i].into());
    }
    if i < b.len() && b[i] == b'{' {
        i += 1;
        loop {
            while i < b.len() && (b[i] == b' ' || b[i] == b',' || b[i] == b'\t') {
                i += 1;
            }
            if i >= b.len() {
                return Err("unterminated label set".into());
            }
            if b[i] == b'}' {
                i += 1;
                break;
            }
            let name;
            if b[i] == b'"' || b[i] == b'\'' {
                let (n, j) = parse_quoted(b, i)?;
                i = j;
                while i < b.len() && b[i] == b' ' {
                    i += 1;
                }
                if i < b.len() && b[i] != b'=' {
                    // A bare quoted string is the metric name.
                    labels.set(METRIC_NAME.into(), n);
                    continue;
                }
                name = n;
            } else {
                let st = i;
                while i < b.len() && b[i] != b'=' && b[i] != b' ' {
                    i += 1;
                }
                name = s[st..i].to_string();
            }
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            if i >= b.len() || b[i] != b'=' {
                return Err(format!("expected '=' in {s:?}"));
            }
            i += 1;
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            if i >= b.len() {
                return Err("missing label value".into());
            }
            let (v, j) = parse_quoted(b, i)?;
            i = j;
            labels.set(name, v);
        }
    }
    Ok((labels, &s[i..]))
}

fn parse_series_line(line: &str) -> Result<SeriesDesc, String> {
    let (labels, rest) = parse_labels(line.trim())?;
    Ok(SeriesDesc {
        labels,
        points: expand_values(rest)?,
    })
}

fn is_comment(l: &str) -> bool {
    l.trim_start().starts_with('#')
}

fn parse_script(text: &str) -> Result<Vec<Cmd>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut cmds = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim();
        i += 1;
        let cmd_line = i;
        if t.is_empty() || is_comment(t) {
            continue;
        }
        let (word, rest) = t.split_once(char::is_whitespace).unwrap_or((t, ""));
        let rest = rest.trim();
        // The block that follows: indented, non-empty lines.
        let mut block = Vec::new();
        while i < lines.len() && !lines[i].trim().is_empty() {
            let l = lines[i];
            if !l.starts_with([' ', '\t']) && !is_comment(l) {
                break;
            }
            if !is_comment(l) {
                block.push((i + 1, l.trim()));
            }
            i += 1;
        }
        match word {
            "clear" => cmds.push(Cmd::Clear),
            "load" | "load_with_nhcb" => {
                let step = parse_duration(rest)?;
                let mut series = Vec::new();
                for (n, l) in block {
                    series.push(parse_series_line(l).map_err(|e| format!("line {n}: {e}"))?);
                }
                cmds.push(Cmd::Load {
                    step,
                    nhcb: word == "load_with_nhcb",
                    series,
                });
            }
            "eval" | "eval_fail" | "eval_ordered" | "eval_warn" | "eval_info" => {
                let mut exp = Expectations {
                    fail: word == "eval_fail",
                    ordered: word == "eval_ordered",
                    ..Default::default()
                };
                let (kind, expr) = if let Some(r) = rest.strip_prefix("instant at ") {
                    let (at, expr) = r.split_once(' ').ok_or("missing expression")?;
                    (Kind::Instant(parse_duration(at)?), expr.trim().to_string())
                } else if let Some(r) = rest.strip_prefix("range from ") {
                    let toks: Vec<&str> = r.splitn(6, ' ').collect();
                    if toks.len() < 6 || toks[1] != "to" || toks[3] != "step" {
                        return Err(format!("line {i}: bad range eval {t:?}"));
                    }
                    (
                        Kind::Range {
                            start: parse_duration(toks[0])?,
                            end: parse_duration(toks[2])?,
                            step: parse_duration(toks[4])?,
                        },
                        toks[5].trim().to_string(),
                    )
                } else {
                    return Err(format!("line {i}: bad eval {t:?}"));
                };
                for (n, l) in block {
                    if let Some(e) = l.strip_prefix("expect ") {
                        let e = e.trim();
                        if let Some(r) = e.strip_prefix("fail") {
                            exp.fail = true;
                            exp.fail_msg =
                                r.trim().strip_prefix("msg:").map(|m| m.trim().to_string());
                        } else if e == "ordered" {
                            exp.ordered = true;
                        } else if let Some(s) = e.strip_prefix("string ") {
                            let s = s.trim();
                            let (v, _) = parse_quoted(s.as_bytes(), 0)
                                .map_err(|e| format!("line {n}: {e}"))?;
                            exp.string = Some(v);
                        } else if let Some(r) = e.strip_prefix("range vector from ") {
                            let toks: Vec<&str> = r.split_whitespace().collect();
                            if toks.len() != 5 {
                                return Err(format!("line {n}: bad expect range vector"));
                            }
                            exp.range_vector = Some((
                                parse_duration(toks[0])?,
                                parse_duration(toks[2])?,
                                parse_duration(toks[4])?,
                            ));
                        } else if e == "no_warn" {
                            exp.no_warn = true;
                        } else if e == "no_info" {
                            exp.no_info = true;
                        } else if let Some(r) = e.strip_prefix("warn") {
                            exp.warn = Some(annotation_msg(r));
                        } else if let Some(r) = e.strip_prefix("info") {
                            exp.info = Some(annotation_msg(r));
                        }
                        continue;
                    }
                    let toks = value_tokens(l);
                    if let [tok] = toks.as_slice()
                        && let Some(v) = parse_float(tok)
                    {
                        exp.scalar = Some(Point::Float(v));
                        continue;
                    }
                    exp.series
                        .push(parse_series_line(l).map_err(|e| format!("line {n}: {e}"))?);
                }
                cmds.push(Cmd::Eval(Box::new(Case {
                    line: cmd_line,
                    kind,
                    expr,
                    exp,
                })));
            }
            other => return Err(format!("line {i}: unknown command {other:?}")),
        }
    }
    Ok(cmds)
}

// ---------------------------------------------------------------------------------------
// Running

#[derive(Default, Clone, Copy)]
struct Tally {
    passed: usize,
    failed: usize,
    unsupported: usize,
    unparsable: usize,
}

enum Outcome {
    Pass,
    Fail(String),
    Unsupported(String),
    Unparsable(String),
}

struct Loaded {
    store: MemStore,
    native: Vec<Labels>,
}

fn load(l: &mut Loaded, step: i64, nhcb: bool, series: &[SeriesDesc]) -> Result<(), String> {
    // A later line for the same series and time overrides an earlier one, as in
    // promqltest; merge before appending in time order.
    let mut merged: BTreeMap<Labels, BTreeMap<i64, f64>> = BTreeMap::new();
    for s in series {
        if s.points.iter().any(|p| matches!(p, Point::Histogram)) {
            l.native.push(s.labels.clone());
            continue;
        }
        if nhcb && let Some(base) = s.labels.name().and_then(|n| n.strip_suffix("_bucket")) {
            let mut nl = s.labels.clone();
            nl.remove("le");
            nl.set(METRIC_NAME.into(), base.into());
            l.native.push(nl);
        }
        let m = merged.entry(s.labels.clone()).or_default();
        for (i, p) in s.points.iter().enumerate() {
            let t = step * i as i64;
            let v = match p {
                Point::Float(v) => *v,
                Point::Stale => stale_nan(),
                _ => continue,
            };
            m.insert(t, v);
        }
    }
    for (labels, points) in merged {
        for (t, v) in points {
            l.store.append(&labels, t, v).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Whether any selector in `e` could read a native-histogram series.
fn touches_native(e: &Expr, native: &[Labels]) -> bool {
    if native.is_empty() {
        return false;
    }
    let mut found = false;
    visit_selectors(e, &mut |vs| {
        let mut ms = vs.matchers.matchers.clone();
        if let Some(n) = &vs.name {
            ms.push(promql_parser::label::Matcher::new(
                promql_parser::label::MatchOp::Equal,
                METRIC_NAME,
                n,
            ));
        }
        if native
            .iter()
            .any(|l| ms.iter().all(|m| matches(m, l)) || !vs.matchers.or_matchers.is_empty())
        {
            found = true;
        }
    });
    found
}

fn visit_selectors(e: &Expr, f: &mut dyn FnMut(&promql_parser::parser::VectorSelector)) {
    match e {
        Expr::VectorSelector(vs) => f(vs),
        Expr::MatrixSelector(ms) => f(&ms.vs),
        Expr::Paren(p) => visit_selectors(&p.expr, f),
        Expr::Unary(u) => visit_selectors(&u.expr, f),
        Expr::Subquery(s) => visit_selectors(&s.expr, f),
        Expr::Aggregate(a) => {
            visit_selectors(&a.expr, f);
            if let Some(p) = &a.param {
                visit_selectors(p, f);
            }
        }
        Expr::Binary(b) => {
            visit_selectors(&b.lhs, f);
            visit_selectors(&b.rhs, f);
        }
        Expr::Call(c) => c.args.args.iter().for_each(|a| visit_selectors(a, f)),
        _ => {}
    }
}

fn fmt_points(ps: &[(i64, f64)]) -> String {
    ps.iter()
        .map(|(t, v)| format!("{v}@{}", *t as f64 / 1000.0))
        .collect::<Vec<_>>()
        .join(" ")
}

fn run_case(engine: &Engine, l: &Loaded, c: &Case) -> Outcome {
    let exp = &c.exp;
    let has_hist_expectation = exp
        .series
        .iter()
        .any(|s| s.points.iter().any(|p| matches!(p, Point::Histogram)))
        || matches!(exp.scalar, Some(Point::Histogram));
    let expr = match promql::parse(&c.expr) {
        Ok(e) => e,
        Err(e) => {
            if exp.fail {
                return Outcome::Pass;
            }
            return Outcome::Unparsable(e.to_string());
        }
    };
    if has_hist_expectation || touches_native(&expr, &l.native) {
        return Outcome::Unsupported("native histograms".into());
    }
    if let Err(e) = promql::check_supported(&expr) {
        return Outcome::Unsupported(e.to_string());
    }
    let result = match c.kind {
        Kind::Instant(t) => {
            engine.instant_annotated(&l.store, &expr, t, promql::DEFAULT_SUBQUERY_STEP_MS)
        }
        Kind::Range { start, end, step } => engine
            .range_annotated(&l.store, &expr, start, end, step)
            .map(|(m, a)| (Value::Matrix(m), a)),
    };
    let (got, annotations) = match result {
        Err(EvalError::Unsupported(m)) => return Outcome::Unsupported(m),
        Err(e) if exp.fail => {
            let msg = match &e {
                EvalError::Runtime(m) => m.clone(),
                other => other.to_string(),
            };
            return match &exp.fail_msg {
                Some(want) if *want != msg => {
                    Outcome::Fail(format!("expected error {want:?}, got {msg:?}"))
                }
                _ => Outcome::Pass,
            };
        }
        Err(e) => return Outcome::Fail(format!("unexpected error: {e}")),
        Ok(_) if exp.fail => return Outcome::Fail("expected an error, got a result".into()),
        Ok(v) => v,
    };
    let was_scalar = matches!(got, Value::Scalar { .. });
    let rangeable = matches!(got, Value::Scalar { .. } | Value::Vector(_));
    if let Err(m) = compare(c, got) {
        return Outcome::Fail(m);
    }
    if let Err(m) = check_annotations(exp, &annotations) {
        return Outcome::Fail(m);
    }
    // As promqltest: an instant query must give the same result as the middle step of a
    // range query around it (unless it depends on the query's own start/end/step).
    let Kind::Instant(t) = c.kind else {
        return Outcome::Pass;
    };
    let context_funcs = ["start()", "end()", "range()", "step()"];
    if !rangeable || exp.ordered || context_funcs.iter().any(|f| c.expr.contains(f)) {
        return Outcome::Pass;
    }
    let m = match engine.range(&l.store, &expr, t - 60_000, t + 60_000, 60_000) {
        Ok(m) => m,
        Err(e) => return Outcome::Fail(format!("error in range mode: {e}")),
    };
    let mut vec = Vec::new();
    for s in m {
        if let Some(p) = s.samples.iter().find(|p| p.t == t) {
            vec.push(InstantSample {
                labels: s.labels,
                t,
                v: p.v,
            });
        }
    }
    let v = if was_scalar {
        match vec.first() {
            Some(x) => Value::Scalar { t, v: x.v },
            None => return Outcome::Fail("range mode lost the scalar".into()),
        }
    } else {
        Value::Vector(vec)
    };
    match compare(c, v) {
        Ok(()) => Outcome::Pass,
        Err(m) => Outcome::Fail(format!("in range mode: {m}")),
    }
}

fn check_annotations(exp: &Expectations, got: &[Annotation]) -> Result<(), String> {
    for (level, want, none) in [
        (AnnotationLevel::Warning, &exp.warn, exp.no_warn),
        (AnnotationLevel::Info, &exp.info, exp.no_info),
    ] {
        let msgs: Vec<&str> = got
            .iter()
            .filter(|a| a.level == level)
            .map(|a| a.message.as_str())
            .collect();
        match want {
            Some(_) if msgs.is_empty() => return Err(format!("expected a {level:?} annotation")),
            Some(Some(m)) if !msgs.contains(&m.as_str()) => {
                return Err(format!("expected {level:?} {m:?}, got {msgs:?}"));
            }
            _ => {}
        }
        if none && !msgs.is_empty() {
            return Err(format!("expected no {level:?} annotation, got {msgs:?}"));
        }
    }
    Ok(())
}

fn expected_points(points: &[Point], start: i64, step: i64) -> Result<Vec<(i64, f64)>, String> {
    let mut out = Vec::new();
    for (i, p) in points.iter().enumerate() {
        let t = start + step * i as i64;
        match p {
            Point::Float(v) => out.push((t, *v)),
            Point::Stale => out.push((t, stale_nan())),
            Point::Omitted => {}
            Point::Histogram => return Err("histogram expectation".into()),
        }
    }
    Ok(out)
}

fn compare_matrix(exp: &[SeriesDesc], got: &[Series], start: i64, step: i64) -> Result<(), String> {
    if exp.len() != got.len() {
        return Err(format!(
            "expected {} series, got {}: {}",
            exp.len(),
            got.len(),
            got.iter()
                .map(|s| format!("{} [{}]", s.labels, fmt_points(&pts(s))))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    let by_labels: HashMap<&Labels, &Series> = got.iter().map(|s| (&s.labels, s)).collect();
    for e in exp {
        let Some(g) = by_labels.get(&e.labels) else {
            return Err(format!("expected series {} not in result", e.labels));
        };
        let want = expected_points(&e.points, start, step)?;
        let have = pts(g);
        let same = want.len() == have.len()
            && want
                .iter()
                .zip(&have)
                .all(|(a, b)| a.0 == b.0 && almost_equal(a.1, b.1, EPSILON));
        if !same {
            return Err(format!(
                "{}: expected [{}], got [{}]",
                e.labels,
                fmt_points(&want),
                fmt_points(&have)
            ));
        }
    }
    Ok(())
}

fn pts(s: &Series) -> Vec<(i64, f64)> {
    s.samples.iter().map(|p| (p.t, p.v)).collect()
}

fn compare(c: &Case, got: Value) -> Result<(), String> {
    let exp = &c.exp;
    match got {
        Value::String { v, .. } => match &exp.string {
            Some(s) if *s == v => Ok(()),
            _ => Err(format!("expected {:?}, got string {v:?}", exp.string)),
        },
        Value::Scalar { v, .. } => match &exp.scalar {
            Some(Point::Float(e)) if almost_equal(*e, v, EPSILON) => Ok(()),
            _ => Err(format!("expected {:?}, got scalar {v}", exp.scalar)),
        },
        Value::Matrix(m) => match (&c.kind, exp.range_vector) {
            (Kind::Range { start, step, .. }, _) => compare_matrix(&exp.series, &m, *start, *step),
            (Kind::Instant(_), Some((start, _, step))) => {
                compare_matrix(&exp.series, &m, start, step)
            }
            _ => Err("got a range vector without `expect range vector`".into()),
        },
        Value::Vector(v) => {
            if exp.scalar.is_some() || exp.string.is_some() {
                return Err(format!(
                    "expected a scalar/string, got a vector of {}",
                    v.len()
                ));
            }
            if v.len() != exp.series.len() {
                return Err(format!(
                    "expected {} elements, got {}: {}",
                    exp.series.len(),
                    v.len(),
                    v.iter()
                        .map(|s| format!("{} {}", s.labels, s.v))
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
            for (i, e) in exp.series.iter().enumerate() {
                let want = match e.points.as_slice() {
                    [Point::Float(x)] => *x,
                    _ => return Err(format!("bad expectation for {}", e.labels)),
                };
                let found = if exp.ordered {
                    Some(&v[i]).filter(|g| g.labels == e.labels)
                } else {
                    v.iter().find(|g| g.labels == e.labels)
                };
                match found {
                    Some(g) if almost_equal(want, g.v, EPSILON) => {}
                    Some(g) => return Err(format!("{}: expected {want}, got {}", e.labels, g.v)),
                    None => {
                        return Err(format!(
                            "expected {} {want}{}, got: {}",
                            e.labels,
                            if exp.ordered { " at this position" } else { "" },
                            v.iter()
                                .map(|s| format!("{} {}", s.labels, s.v))
                                .collect::<Vec<_>>()
                                .join("; ")
                        ));
                    }
                }
            }
            Ok(())
        }
    }
}

fn conformance_dir() -> PathBuf {
    if let Ok(d) = std::env::var("MINIRAG_PROMQL_CONFORMANCE_DIR") {
        return PathBuf::from(d);
    }
    // CARGO_MANIFEST_DIR is agent/rules; the workspace root is two levels up.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/promql")
}

fn read_floor() -> BTreeMap<String, usize> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(FLOOR_FILE);
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.split_once(char::is_whitespace)?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn write_floor(per_file: &BTreeMap<String, Tally>, total: usize) {
    let mut s = String::from(
        "# Minimum passing PromQL conformance cases (file, passed). The conformance test fails\n\
         # if a count drops below these. Regenerate after an improvement with:\n",
    );
    s.push_str(&format!("#   {UPDATE_CMD}\n"));
    for (f, t) in per_file {
        s.push_str(&format!("{f} {}\n", t.passed));
    }
    s.push_str(&format!("TOTAL {total}\n"));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(FLOOR_FILE);
    std::fs::write(path, s).expect("write floor file");
}

#[test]
fn promql_conformance() {
    let dir = conformance_dir();
    if !dir.is_dir() {
        if std::env::var("CI").as_deref() == Ok("true") {
            eprintln!(
                "\n!!!!!!!!!!\n!!! PromQL conformance data missing at {} (set MINIRAG_PROMQL_CONFORMANCE_DIR); \
                 CI must provision ../shared/conformance/promql — SKIPPING\n!!!!!!!!!!\n",
                dir.display()
            );
        } else {
            eprintln!(
                "skipping PromQL conformance: {} does not exist (set MINIRAG_PROMQL_CONFORMANCE_DIR)",
                dir.display()
            );
        }
        return;
    }
    let verbose = std::env::var("CONFORMANCE_VERBOSE").is_ok_and(|v| v == "1");
    // Every case's outcome, for checking how a case was classified.
    let trace = std::env::var("CONFORMANCE_TRACE").is_ok_and(|v| v == "1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read conformance dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "test"))
        .collect();
    files.sort();
    let engine = Engine::default();
    let mut per_file: BTreeMap<String, Tally> = BTreeMap::new();
    let mut unsupported_reasons: BTreeMap<String, usize> = BTreeMap::new();
    for path in &files {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(path).expect("read test file");
        let cmds = match parse_script(&text) {
            Ok(c) => c,
            Err(e) => panic!("{}: cannot parse script: {e}", path.display()),
        };
        let mut tally = Tally::default();
        let mut shown = 0;
        let mut loaded = Loaded {
            store: MemStore::new(1_000_000),
            native: Vec::new(),
        };
        for cmd in cmds {
            match cmd {
                Cmd::Clear => {
                    loaded = Loaded {
                        store: MemStore::new(1_000_000),
                        native: Vec::new(),
                    }
                }
                Cmd::Load { step, nhcb, series } => {
                    if let Err(e) = load(&mut loaded, step, nhcb, &series) {
                        panic!("{name}: load failed: {e}");
                    }
                }
                Cmd::Eval(case) => {
                    // A panic in the engine is a failure of that case, not of the run.
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_case(&engine, &loaded, &case)
                    }))
                    .unwrap_or_else(|_| Outcome::Fail("engine panicked".into()));
                    if trace {
                        let o = match &outcome {
                            Outcome::Pass => "pass".to_string(),
                            Outcome::Fail(_) => "FAIL".to_string(),
                            Outcome::Unsupported(r) => format!("unsupported ({r})"),
                            Outcome::Unparsable(_) => "unparsable".to_string(),
                        };
                        eprintln!("  [{name}:{}] {o}: {}", case.line, case.expr);
                    }
                    match outcome {
                        Outcome::Pass => tally.passed += 1,
                        Outcome::Unsupported(r) => {
                            tally.unsupported += 1;
                            *unsupported_reasons.entry(r).or_default() += 1;
                        }
                        Outcome::Unparsable(r) => {
                            tally.unparsable += 1;
                            if verbose {
                                eprintln!("  [{name}:{}] UNPARSABLE {}: {r}", case.line, case.expr);
                            }
                        }
                        Outcome::Fail(m) => {
                            tally.failed += 1;
                            if verbose || shown < 3 {
                                shown += 1;
                                eprintln!("  [{name}:{}] FAIL {}\n      {m}", case.line, case.expr);
                            }
                        }
                    }
                }
            }
        }
        per_file.insert(name, tally);
    }
    eprintln!(
        "\n{:<22} {:>7} {:>7} {:>12} {:>11} {:>8}",
        "file", "passed", "failed", "unsupported", "unparsable", "pass%"
    );
    let mut total = Tally::default();
    for (f, t) in &per_file {
        let considered = t.passed + t.failed;
        eprintln!(
            "{:<22} {:>7} {:>7} {:>12} {:>11} {:>7.1}%",
            f,
            t.passed,
            t.failed,
            t.unsupported,
            t.unparsable,
            100.0 * t.passed as f64 / considered.max(1) as f64
        );
        total.passed += t.passed;
        total.failed += t.failed;
        total.unsupported += t.unsupported;
        total.unparsable += t.unparsable;
    }
    eprintln!(
        "{:<22} {:>7} {:>7} {:>12} {:>11} {:>7.1}%",
        "TOTAL",
        total.passed,
        total.failed,
        total.unsupported,
        total.unparsable,
        100.0 * total.passed as f64 / (total.passed + total.failed).max(1) as f64
    );
    eprintln!("(pass% = passed / (passed + failed); unsupported and unparsable excluded)");
    if verbose {
        for (r, n) in &unsupported_reasons {
            eprintln!("  unsupported x{n}: {r}");
        }
    }
    if std::env::var("UPDATE_CONFORMANCE_FLOOR").is_ok_and(|v| v == "1") {
        write_floor(&per_file, total.passed);
        eprintln!("floor file updated");
        return;
    }
    let floor = read_floor();
    let mut regressions = Vec::new();
    for (f, min) in &floor {
        let have = if f == "TOTAL" {
            total.passed
        } else {
            per_file.get(f).map(|t| t.passed).unwrap_or(0)
        };
        if have < *min {
            regressions.push(format!("{f}: {have} passed, floor {min}"));
        }
    }
    assert!(
        regressions.is_empty(),
        "PromQL conformance regressed below the floor:\n  {}\n(after an intended change, update with: {UPDATE_CMD})",
        regressions.join("\n  ")
    );
    eprintln!("conformance at or above the floor; after improvements run: {UPDATE_CMD}");
}
