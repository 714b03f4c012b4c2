//! Execution of a parsed template against alert data.

use std::collections::BTreeMap;

use super::format::{fmt_e, fmt_f, fmt_g, quote};
use super::parse::{Arg, Cmd, Loc, Node, Pipe, Template};
use super::{AlertData, QueryFn, QuerySample, TemplateError};

#[derive(Debug, Clone)]
enum V {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Map(BTreeMap<String, String>),
    Data,
    Samples(Vec<QuerySample>),
    Sample(QuerySample),
}

fn e(msg: impl Into<String>) -> TemplateError {
    TemplateError(msg.into())
}

impl V {
    fn truthy(&self) -> bool {
        match self {
            V::Nil => false,
            V::Bool(b) => *b,
            V::Int(i) => *i != 0,
            V::Float(f) => *f != 0.0,
            V::Str(s) => !s.is_empty(),
            V::Map(m) => !m.is_empty(),
            V::Data | V::Sample(_) => true,
            V::Samples(s) => !s.is_empty(),
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            V::Nil => "nil",
            V::Bool(_) => "bool",
            V::Int(_) => "int",
            V::Float(_) => "float64",
            V::Str(_) => "string",
            V::Map(_) => "map[string]string",
            V::Data => "struct",
            V::Samples(_) => "template.queryResult",
            V::Sample(_) => "*template.sample",
        }
    }

    fn print(&self, data: &AlertData) -> String {
        match self {
            V::Nil => "<no value>".into(),
            V::Bool(b) => b.to_string(),
            V::Int(i) => i.to_string(),
            V::Float(f) => fmt_g(*f, None),
            V::Str(s) => s.clone(),
            V::Map(m) => print_map(m),
            V::Data => format!(
                "{{{} {} {} {}}}",
                print_map(&data.labels),
                print_map(&data.external_labels),
                data.external_url,
                fmt_g(data.value, None)
            ),
            V::Sample(s) => format!("{{{} {}}}", print_map(&s.labels), fmt_g(s.value, None)),
            V::Samples(v) => {
                let parts: Vec<String> = v
                    .iter()
                    .map(|s| format!("{{{} {}}}", print_map(&s.labels), fmt_g(s.value, None)))
                    .collect();
                format!("[{}]", parts.join(" "))
            }
        }
    }

    /// Prometheus's `convertToFloat`: numbers and numeric strings.
    fn to_float(&self) -> Result<f64, TemplateError> {
        match self {
            V::Float(f) => Ok(*f),
            V::Int(i) => Ok(*i as f64),
            V::Str(s) => parse_go_float(s).ok_or_else(|| {
                e(format!(
                    "strconv.ParseFloat: parsing {}: invalid syntax",
                    quote(s)
                ))
            }),
            other => Err(e(format!("can't convert {} to float", other.type_name()))),
        }
    }

    fn to_str(&self) -> Result<String, TemplateError> {
        match self {
            V::Str(s) => Ok(s.clone()),
            other => Err(e(format!(
                "wrong type for value; expected string; got {}",
                other.type_name()
            ))),
        }
    }
}

fn parse_go_float(s: &str) -> Option<f64> {
    match s {
        "Inf" | "+Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

fn print_map(m: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    format!("map[{}]", parts.join(" "))
}

struct Exec<'a> {
    data: &'a AlertData,
    query: Option<&'a QueryFn<'a>>,
    vars: Vec<(String, V)>,
    out: String,
}

/// An execution error and the command it happened in, once known.
struct ExecErr {
    msg: String,
    at: Option<Loc>,
    /// Go locates a field error of `$var.Field` at the field, after the variable name.
    shift: usize,
    /// Go names just the function, not the whole command, for an arity error.
    function_only: Option<String>,
}

impl From<TemplateError> for ExecErr {
    fn from(e: TemplateError) -> Self {
        ExecErr {
            msg: e.0,
            at: None,
            shift: 0,
            function_only: None,
        }
    }
}

/// Executes `t`. `line1_col_offset` is added to columns on the first line: Prometheus
/// prepends its variable definitions to alert templates, which shifts Go's columns.
pub(super) fn execute<'a>(
    t: &Template,
    data: &'a AlertData,
    query: Option<&'a QueryFn<'a>>,
    line1_col_offset: usize,
) -> Result<String, TemplateError> {
    let mut x = Exec {
        data,
        query,
        vars: vec![
            ("$".into(), V::Data),
            ("$labels".into(), V::Map(data.labels.clone())),
            (
                "$externalLabels".into(),
                V::Map(data.external_labels.clone()),
            ),
            ("$externalURL".into(), V::Str(data.external_url.clone())),
            ("$value".into(), V::Float(data.value)),
        ],
        out: String::new(),
    };
    x.nodes(&t.nodes, &V::Data).map_err(|err| {
        let name = &t.name;
        match err.at {
            Some(at) => {
                let col = at.col + if at.line == 1 { line1_col_offset } else { 0 };
                e(format!(
                    "template: {name}:{}:{col}: executing \"{name}\" at <{}>: {}",
                    at.line, at.text, err.msg
                ))
            }
            None => e(format!("template: {name}: {}", err.msg)),
        }
    })?;
    Ok(x.out)
}

impl Exec<'_> {
    fn nodes(&mut self, nodes: &[Node], dot: &V) -> Result<(), ExecErr> {
        for n in nodes {
            match n {
                Node::Text(t) => self.out.push_str(t),
                Node::Action(p) => {
                    let v = self.pipe(p, dot)?;
                    if p.decl.is_empty() {
                        let s = v.print(self.data);
                        self.out.push_str(&s);
                    }
                }
                Node::If {
                    pipe,
                    then,
                    otherwise,
                } => {
                    let depth = self.vars.len();
                    let v = self.pipe(pipe, dot)?;
                    let r = if v.truthy() {
                        self.nodes(then, dot)
                    } else {
                        self.nodes(otherwise, dot)
                    };
                    self.vars.truncate(depth);
                    r?;
                }
                Node::With {
                    pipe,
                    then,
                    otherwise,
                } => {
                    let depth = self.vars.len();
                    let v = self.pipe(pipe, dot)?;
                    let r = if v.truthy() {
                        self.nodes(then, &v)
                    } else {
                        self.nodes(otherwise, dot)
                    };
                    self.vars.truncate(depth);
                    r?;
                }
                Node::Range {
                    pipe,
                    body,
                    otherwise,
                } => {
                    let depth = self.vars.len();
                    let decl = pipe.decl.clone();
                    let plain = Pipe {
                        decl: Vec::new(),
                        cmds: pipe.cmds.clone(),
                        locs: pipe.locs.clone(),
                    };
                    let v = self.pipe(&plain, dot)?;
                    if let V::Samples(list) = v {
                        if list.is_empty() {
                            self.nodes(otherwise, dot)?;
                        }
                        for (i, s) in list.into_iter().enumerate() {
                            self.vars.truncate(depth);
                            match decl.as_slice() {
                                [one] => self.vars.push((one.clone(), V::Sample(s.clone()))),
                                [kn, vn] => {
                                    self.vars.push((kn.clone(), V::Int(i as i64)));
                                    self.vars.push((vn.clone(), V::Sample(s.clone())));
                                }
                                _ => {}
                            }
                            self.nodes(body, &V::Sample(s))?;
                        }
                        self.vars.truncate(depth);
                        continue;
                    }
                    let V::Map(m) = v else {
                        return Err(e(format!("range can't iterate over {}", v.type_name())).into());
                    };
                    if m.is_empty() {
                        self.nodes(otherwise, dot)?;
                    }
                    for (k, val) in m {
                        self.vars.truncate(depth);
                        match decl.as_slice() {
                            [one] => self.vars.push((one.clone(), V::Str(val.clone()))),
                            [kn, vn] => {
                                self.vars.push((kn.clone(), V::Str(k.clone())));
                                self.vars.push((vn.clone(), V::Str(val.clone())));
                            }
                            _ => {}
                        }
                        self.nodes(body, &V::Str(val))?;
                    }
                    self.vars.truncate(depth);
                }
            }
        }
        Ok(())
    }

    fn pipe(&mut self, p: &Pipe, dot: &V) -> Result<V, ExecErr> {
        let mut prev: Option<V> = None;
        for (i, c) in p.cmds.iter().enumerate() {
            let v = self.cmd(c, dot, prev.take()).map_err(|mut err| {
                if err.at.is_none() {
                    err.at = p.locs.get(i).cloned().flatten().map(|mut l| {
                        l.col += err.shift;
                        if let Some(f) = err.function_only.take() {
                            l.text = f;
                        }
                        l
                    });
                }
                err
            })?;
            prev = Some(v);
        }
        let v = prev.unwrap_or(V::Nil);
        for name in &p.decl {
            // Assignment updates the innermost binding; declaration adds a new one.
            if let Some(slot) = self.vars.iter_mut().rev().find(|(n, _)| n == name) {
                slot.1 = v.clone();
            } else {
                self.vars.push((name.clone(), v.clone()));
            }
        }
        Ok(v)
    }

    fn cmd(&mut self, c: &Cmd, dot: &V, piped: Option<V>) -> Result<V, ExecErr> {
        match c {
            Cmd::Operand(a) => {
                if piped.is_some() {
                    return Err(e("can't give argument to non-function").into());
                }
                self.arg(a, dot)
            }
            Cmd::Call(f, args) => {
                let mut vals = Vec::with_capacity(args.len() + 1);
                for a in args {
                    vals.push(self.arg(a, dot)?);
                }
                if let Some(p) = piped {
                    vals.push(p);
                }
                call(f, vals, self.data, self.query).map_err(|err| {
                    if err.0.starts_with("wrong number of args for ") {
                        ExecErr {
                            function_only: Some(f.clone()),
                            ..err.into()
                        }
                    } else {
                        e(format!("error calling {f}: {}", err.0)).into()
                    }
                })
            }
        }
    }

    fn arg(&mut self, a: &Arg, dot: &V) -> Result<V, ExecErr> {
        match a {
            Arg::Str(s) => Ok(V::Str(s.clone())),
            Arg::Num(n, true) if n.fract() == 0.0 && n.abs() < 9.0e15 => Ok(V::Int(*n as i64)),
            Arg::Num(n, _) => Ok(V::Float(*n)),
            Arg::Bool(b) => Ok(V::Bool(*b)),
            Arg::Nil => Ok(V::Nil),
            Arg::Dot(fields) => Ok(self.fields(dot.clone(), fields)?),
            Arg::Var(name, fields) => {
                let v = self
                    .vars
                    .iter()
                    .rev()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| e(format!("undefined variable: {name}")))?;
                self.fields(v, fields).map_err(|err| ExecErr {
                    shift: name.len(),
                    ..err.into()
                })
            }
            Arg::Sub(p, fields) => {
                let v = self.pipe(p, dot)?;
                Ok(self.fields(v, fields)?)
            }
        }
    }

    fn fields(&self, mut v: V, fields: &[String]) -> Result<V, TemplateError> {
        for f in fields {
            v = match v {
                V::Map(m) => V::Str(m.get(f).cloned().unwrap_or_default()),
                V::Data => match f.as_str() {
                    "Labels" => V::Map(self.data.labels.clone()),
                    "ExternalLabels" => V::Map(self.data.external_labels.clone()),
                    "ExternalURL" => V::Str(self.data.external_url.clone()),
                    "Value" => V::Float(self.data.value),
                    _ => return Err(e(format!("can't evaluate field {f} in type struct"))),
                },
                V::Sample(s) => match f.as_str() {
                    "Labels" => V::Map(s.labels),
                    "Value" => V::Float(s.value),
                    _ => {
                        return Err(e(format!(
                            "can't evaluate field {f} in type *template.sample"
                        )));
                    }
                },
                V::Nil => return Err(e(format!("nil pointer evaluating .{f}"))),
                other => {
                    return Err(e(format!(
                        "can't evaluate field {f} in type {}",
                        other.type_name()
                    )));
                }
            };
        }
        Ok(v)
    }
}

fn want(args: &[V], n: usize, f: &str) -> Result<(), TemplateError> {
    if args.len() != n {
        return Err(e(format!(
            "wrong number of args for {f}: want {n} got {}",
            args.len()
        )));
    }
    Ok(())
}

fn compare(a: &V, b: &V) -> Result<std::cmp::Ordering, TemplateError> {
    use std::cmp::Ordering;
    match (a, b) {
        (V::Str(x), V::Str(y)) => Ok(x.cmp(y)),
        (V::Int(x), V::Int(y)) => Ok(x.cmp(y)),
        (V::Bool(x), V::Bool(y)) => Ok(x.cmp(y)),
        (V::Float(_) | V::Int(_), V::Float(_) | V::Int(_)) => {
            let (x, y) = (a.to_float()?, b.to_float()?);
            Ok(x.partial_cmp(&y).unwrap_or(Ordering::Less))
        }
        _ => Err(e("incompatible types for comparison")),
    }
}

fn humanize_scaled(mut v: f64, up: &[&str], down: &[&str], base: f64) -> String {
    let mut prefix = "";
    if v.abs() >= 1.0 {
        for p in up {
            if v.abs() < base {
                break;
            }
            prefix = p;
            v /= base;
        }
    } else {
        for p in down {
            if v.abs() >= 1.0 {
                break;
            }
            prefix = p;
            v *= 1000.0;
        }
    }
    format!("{}{prefix}", fmt_g(v, Some(4)))
}

const UP: [&str; 8] = ["k", "M", "G", "T", "P", "E", "Z", "Y"];
const DOWN: [&str; 8] = ["m", "u", "n", "p", "f", "a", "z", "y"];

fn humanize_duration(v: f64) -> String {
    if v.is_nan() || v.is_infinite() {
        return fmt_g(v, Some(4));
    }
    if v == 0.0 {
        return format!("{}s", fmt_g(v, Some(4)));
    }
    if v.abs() >= 1.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        let v = v.abs();
        // Go on amd64 (promtool's and Prometheus's usual build) converts an out-of-range
        // float to the minimum int64, which Prometheus then prints as a negative duration.
        let whole = if v < 9.223_372_036_854_776e18 {
            v as i64
        } else {
            i64::MIN
        };
        let (s, m, h, d) = (
            whole % 60,
            (whole / 60) % 60,
            (whole / 3600) % 24,
            whole / 86400,
        );
        return if d != 0 {
            format!("{sign}{d}d {h}h {m}m {s}s")
        } else if h != 0 {
            format!("{sign}{h}h {m}m {s}s")
        } else if m != 0 {
            format!("{sign}{m}m {s}s")
        } else {
            format!("{sign}{}s", fmt_g(v, Some(4)))
        };
    }
    format!("{}s", humanize_scaled(v, &[], &DOWN, 1000.0))
}

/// Go's `Time.String()` in UTC for a Unix timestamp in seconds.
///
/// Prometheus goes through `model.Time`, so the result is truncated to milliseconds, and
/// values whose nanoseconds overflow an int64 are an error.
fn humanize_timestamp(v: f64) -> Result<String, TemplateError> {
    if v.is_nan() || v.is_infinite() {
        return Ok(fmt_g(v, Some(4)));
    }
    let ns = v * 1e9;
    if !(-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&ns) {
        return Err(e(format!(
            "{} cannot be represented as a nanoseconds timestamp since it overflows int64",
            fmt_g(v, None)
        )));
    }
    // Integer division truncates toward zero, as Go's does.
    let ms = (ns as i64 / 1_000_000) as i128;
    let secs = ms.div_euclid(1000) as i64;
    let nanos = (ms.rem_euclid(1000) * 1_000_000) as u32;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let (y, mo, d) = civil_from_days(days);
    let mut frac = String::new();
    if nanos != 0 {
        frac = format!(".{nanos:09}");
        while frac.ends_with('0') {
            frac.pop();
        }
    }
    Ok(format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}{frac} +0000 UTC",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    ))
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Go's deprecated `strings.Title`: upper-cases the first letter of each word.
fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_sep = true;
    for c in s.chars() {
        if prev_sep {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        prev_sep = !(c.is_alphanumeric() || c == '_');
    }
    out
}

/// Go's `regexp.ReplaceAllString` expands `$1`/`${name}`; the regex crate uses the same
/// syntax, so the replacement passes through unchanged.
fn re_replace_all(pattern: &str, repl: &str, text: &str) -> Result<String, TemplateError> {
    let re = regex::Regex::new(pattern)
        .map_err(|err| e(format!("regexp: Compile({}): {err}", quote(pattern))))?;
    Ok(re.replace_all(text, repl).into_owned())
}

fn printf(args: &[V], data: &AlertData) -> Result<String, TemplateError> {
    let Some(V::Str(fmt)) = args.first() else {
        return Err(e("printf: format must be a string"));
    };
    let mut out = String::new();
    let mut rest = args[1..].iter();
    let c: Vec<char> = fmt.chars().collect();
    let mut i = 0;
    while i < c.len() {
        if c[i] != '%' {
            out.push(c[i]);
            i += 1;
            continue;
        }
        i += 1;
        let mut flags = String::new();
        while i < c.len() && "+-# 0".contains(c[i]) {
            flags.push(c[i]);
            i += 1;
        }
        let mut width = String::new();
        while i < c.len() && c[i].is_ascii_digit() {
            width.push(c[i]);
            i += 1;
        }
        let mut prec: Option<usize> = None;
        if i < c.len() && c[i] == '.' {
            i += 1;
            let mut p = String::new();
            while i < c.len() && c[i].is_ascii_digit() {
                p.push(c[i]);
                i += 1;
            }
            prec = Some(p.parse().unwrap_or(0));
        }
        let Some(&verb) = c.get(i) else {
            out.push_str("%!(NOVERB)");
            break;
        };
        i += 1;
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = rest.next() else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        let bad = || format!("%!{verb}({}={})", arg.type_name(), arg.print(data));
        let mut s = match (verb, arg) {
            ('v', a) => match (a, prec) {
                (V::Float(f), Some(p)) => fmt_g(*f, Some(p)),
                _ => a.print(data),
            },
            ('s', V::Str(s)) => match prec {
                Some(p) => s.chars().take(p).collect(),
                None => s.clone(),
            },
            ('s', V::Float(_) | V::Int(_) | V::Bool(_)) => bad(),
            ('s', a) => a.print(data),
            ('q', V::Str(s)) => quote(s),
            ('d', V::Int(n)) => n.to_string(),
            ('x', V::Int(n)) => format!("{n:x}"),
            ('x', V::Str(s)) => s.bytes().map(|b| format!("{b:02x}")).collect(),
            ('t', V::Bool(b)) => b.to_string(),
            ('f' | 'F', V::Float(_) | V::Int(_)) => fmt_f(arg.to_float()?, prec.unwrap_or(6)),
            ('e', V::Float(_) | V::Int(_)) => fmt_e(arg.to_float()?, prec.unwrap_or(6)),
            ('g', V::Float(_) | V::Int(_)) => fmt_g(arg.to_float()?, prec),
            _ => bad(),
        };
        if flags.contains('+')
            && !s.starts_with(['-', '+'])
            && matches!(verb, 'd' | 'f' | 'e' | 'g')
        {
            s.insert(0, '+');
        }
        let w: usize = width.parse().unwrap_or(0);
        let len = s.chars().count();
        if len < w {
            let pad = w - len;
            if flags.contains('-') {
                s.push_str(&" ".repeat(pad));
            } else if flags.contains('0') && matches!(verb, 'd' | 'f' | 'e' | 'g') {
                let sign = if s.starts_with(['-', '+']) {
                    s.remove(0).to_string()
                } else {
                    String::new()
                };
                s = format!("{sign}{}{s}", "0".repeat(pad));
            } else {
                s = format!("{}{s}", " ".repeat(pad));
            }
        }
        out.push_str(&s);
    }
    let extra: Vec<String> = rest
        .map(|a| format!("{}={}", a.type_name(), a.print(data)))
        .collect();
    if !extra.is_empty() {
        out.push_str(&format!("%!(EXTRA {})", extra.join(", ")));
    }
    Ok(out)
}

/// Go's `url.QueryEscape`.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn one_sample(args: Vec<V>, f: &str) -> Result<QuerySample, TemplateError> {
    want(&args, 1, f)?;
    match args.into_iter().next() {
        Some(V::Sample(s)) => Ok(s),
        Some(other) => Err(e(format!(
            "wrong type for value; expected *template.sample; got {}",
            other.type_name()
        ))),
        None => Err(e("missing argument")),
    }
}

fn call(
    f: &str,
    args: Vec<V>,
    data: &AlertData,
    query: Option<&QueryFn<'_>>,
) -> Result<V, TemplateError> {
    let one_float = |args: &[V]| -> Result<f64, TemplateError> {
        want(args, 1, f)?;
        args[0].to_float()
    };
    let one_str = |args: &[V]| -> Result<String, TemplateError> {
        want(args, 1, f)?;
        args[0].to_str()
    };
    Ok(match f {
        "printf" => V::Str(printf(&args, data)?),
        "print" | "println" => {
            // Go's Sprint adds spaces only between operands that are not both strings.
            let mut s = String::new();
            for (i, a) in args.iter().enumerate() {
                let is_str = matches!(a, V::Str(_));
                let prev_str = i > 0 && matches!(args[i - 1], V::Str(_));
                if i > 0 && (f == "println" || (!is_str && !prev_str)) {
                    s.push(' ');
                }
                s.push_str(&a.print(data));
            }
            if f == "println" {
                s.push('\n');
            }
            V::Str(s)
        }
        "len" => {
            want(&args, 1, f)?;
            match &args[0] {
                V::Str(s) => V::Int(s.len() as i64),
                V::Map(m) => V::Int(m.len() as i64),
                V::Samples(v) => V::Int(v.len() as i64),
                other => return Err(e(format!("len of type {}", other.type_name()))),
            }
        }
        "index" => {
            want(&args, 2, f)?;
            match (&args[0], &args[1]) {
                (V::Map(m), V::Str(k)) => V::Str(m.get(k).cloned().unwrap_or_default()),
                (V::Samples(v), V::Int(i)) => match usize::try_from(*i).ok().and_then(|i| v.get(i))
                {
                    Some(s) => V::Sample(s.clone()),
                    None => return Err(e(format!("index out of range: {i}"))),
                },
                (V::Map(_), k) => {
                    return Err(e(format!(
                        "value has type {}; should be string",
                        k.type_name()
                    )));
                }
                _ => return Err(e("can't index item")),
            }
        }
        "eq" | "ne" | "lt" | "le" | "gt" | "ge" => {
            if args.len() < 2 {
                return Err(e("missing argument for comparison"));
            }
            use std::cmp::Ordering::*;
            let r = if f == "eq" {
                // eq is true when the first argument equals any of the others.
                let mut any = false;
                for b in &args[1..] {
                    any |= compare(&args[0], b)? == Equal;
                }
                any
            } else {
                want(&args, 2, f)?;
                let o = compare(&args[0], &args[1])?;
                match f {
                    "ne" => o != Equal,
                    "lt" => o == Less,
                    "le" => o != Greater,
                    "gt" => o == Greater,
                    _ => o != Less,
                }
            };
            V::Bool(r)
        }
        "and" => args
            .iter()
            .find(|a| !a.truthy())
            .or(args.last())
            .cloned()
            .unwrap_or(V::Nil),
        "or" => args
            .iter()
            .find(|a| a.truthy())
            .or(args.last())
            .cloned()
            .unwrap_or(V::Nil),
        "not" => {
            want(&args, 1, f)?;
            V::Bool(!args[0].truthy())
        }
        "humanize" => {
            let v = one_float(&args)?;
            if v == 0.0 || v.is_nan() || v.is_infinite() {
                V::Str(fmt_g(v, Some(4)))
            } else {
                V::Str(humanize_scaled(v, &UP, &DOWN, 1000.0))
            }
        }
        "humanize1024" => {
            let v = one_float(&args)?;
            if v.abs() <= 1.0 || v.is_nan() || v.is_infinite() {
                V::Str(fmt_g(v, Some(4)))
            } else {
                let up = ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"];
                V::Str(humanize_scaled(v, &up, &[], 1024.0))
            }
        }
        "humanizeDuration" => V::Str(humanize_duration(one_float(&args)?)),
        "humanizePercentage" => V::Str(format!("{}%", fmt_g(one_float(&args)? * 100.0, Some(4)))),
        "humanizeTimestamp" => V::Str(humanize_timestamp(one_float(&args)?)?),
        "toUpper" => V::Str(one_str(&args)?.to_uppercase()),
        "toLower" => V::Str(one_str(&args)?.to_lowercase()),
        "title" => V::Str(title(&one_str(&args)?)),
        "reReplaceAll" => {
            want(&args, 3, f)?;
            V::Str(re_replace_all(
                &args[0].to_str()?,
                &args[1].to_str()?,
                &args[2].to_str()?,
            )?)
        }
        "match" => {
            want(&args, 2, f)?;
            let re = regex::Regex::new(&args[0].to_str()?).map_err(|err| e(err.to_string()))?;
            V::Bool(re.is_match(&args[1].to_str()?))
        }
        "query" => {
            let q = one_str(&args)?;
            let Some(run) = query else {
                return Err(e("query is not available here"));
            };
            V::Samples(run(&q).map_err(e)?)
        }
        "first" => {
            want(&args, 1, f)?;
            match args.into_iter().next() {
                Some(V::Samples(v)) => match v.into_iter().next() {
                    Some(s) => V::Sample(s),
                    None => return Err(e("first() called on vector with no elements")),
                },
                _ => return Err(e("wrong type for value; expected template.queryResult")),
            }
        }
        "label" => {
            want(&args, 2, f)?;
            let name = args[0].to_str()?;
            let s = one_sample(args[1..].to_vec(), f)?;
            V::Str(s.labels.get(&name).cloned().unwrap_or_default())
        }
        "value" => V::Float(one_sample(args, f)?.value),
        "strvalue" => V::Str(
            one_sample(args, f)?
                .labels
                .get("__value__")
                .cloned()
                .unwrap_or_default(),
        ),
        "sortByLabel" => {
            want(&args, 2, f)?;
            let name = args[0].to_str()?;
            match &args[1] {
                V::Samples(v) => {
                    let mut v = v.clone();
                    v.sort_by(|a, b| a.labels.get(&name).cmp(&b.labels.get(&name)));
                    V::Samples(v)
                }
                _ => return Err(e("wrong type for value; expected template.queryResult")),
            }
        }
        "graphLink" => V::Str(format!(
            "/graph?g0.expr={}&g0.tab=0",
            query_escape(&one_str(&args)?)
        )),
        "tableLink" => V::Str(format!(
            "/graph?g0.expr={}&g0.tab=1",
            query_escape(&one_str(&args)?)
        )),
        "safeHtml" => V::Str(one_str(&args)?),
        "externalURL" => V::Str(data.external_url.clone()),
        "pathPrefix" => {
            let u = &data.external_url;
            let after_scheme = u.find("://").map_or(0, |i| i + 3);
            V::Str(
                u[after_scheme..]
                    .find('/')
                    .map_or(String::new(), |i| u[after_scheme + i..].to_string()),
            )
        }
        other => return Err(e(format!("function \"{other}\" not defined"))),
    })
}
