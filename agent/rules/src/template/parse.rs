//! Lexing and parsing of the template subset into a small tree.

use super::TemplateError;

/// The variables Prometheus defines before every alert template.
pub(super) const PREDEFINED: [&str; 5] =
    ["$", "$labels", "$externalLabels", "$externalURL", "$value"];

/// Functions known at parse time; Go refuses an unknown name while parsing.
const FUNCS: &[&str] = &[
    "printf",
    "print",
    "println",
    "len",
    "index",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "and",
    "or",
    "not",
    "humanize",
    "humanize1024",
    "humanizeDuration",
    "humanizePercentage",
    "humanizeTimestamp",
    "toUpper",
    "toLower",
    "title",
    "reReplaceAll",
    "match",
    "externalURL",
    "pathPrefix",
    "query",
    "first",
    "label",
    "value",
    "strvalue",
    "sortByLabel",
    "graphLink",
    "tableLink",
    "safeHtml",
];

#[derive(Debug, Clone)]
pub struct Template {
    pub(super) name: String,
    pub(super) nodes: Vec<Node>,
}

#[derive(Debug, Clone)]
pub(super) enum Node {
    Text(String),
    Action(Pipe),
    If {
        pipe: Pipe,
        then: Vec<Node>,
        otherwise: Vec<Node>,
    },
    With {
        pipe: Pipe,
        then: Vec<Node>,
        otherwise: Vec<Node>,
    },
    Range {
        pipe: Pipe,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Pipe {
    /// Variables declared (`:=`) or assigned (`=`) by this pipeline.
    pub decl: Vec<String>,
    pub cmds: Vec<Cmd>,
    /// Where each command is, for Go-style error locations (top-level pipelines only).
    pub locs: Vec<Option<Loc>>,
}

/// A command's position (1-based line, 0-based byte column) and its source text, which
/// Go prints as `template: NAME:LINE:COL: executing "NAME" at <TEXT>: …`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Loc {
    pub line: usize,
    pub col: usize,
    pub text: String,
}

/// One command of a pipeline: a function call or a single operand.
#[derive(Debug, Clone)]
pub(super) enum Cmd {
    Call(String, Vec<Arg>),
    Operand(Arg),
}

#[derive(Debug, Clone)]
pub(super) enum Arg {
    Str(String),
    Num(f64, bool),
    Bool(bool),
    Dot(Vec<String>),
    Var(String, Vec<String>),
    Sub(Box<Pipe>, Vec<String>),
    Nil,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Var(String),
    Field(String),
    Dot,
    Str(String),
    Num(String),
    Pipe,
    LParen,
    RParen,
    Declare,
    Assign,
    Comma,
}

fn err(name: &str, line: usize, msg: impl std::fmt::Display) -> TemplateError {
    TemplateError(format!("template: {name}:{line}: {msg}"))
}

/// A piece of template source with its line: literal text (`Ok`) or an action body (`Err`)
/// with the body's byte offset in the template.
type Item = (usize, Result<String, (usize, String)>);

/// Splits the text into literal text and action bodies, applying trim markers.
fn split(name: &str, text: &str) -> Result<Vec<Item>, TemplateError> {
    let mut out: Vec<Item> = Vec::new();
    let mut rest = text;
    let mut line = 1;
    let mut trim_next = false;
    while !rest.is_empty() {
        let Some(start) = rest.find("{{") else {
            let mut t = rest.to_string();
            if trim_next {
                t = t.trim_start().to_string();
            }
            out.push((line, Ok(t)));
            break;
        };
        let mut t = rest[..start].to_string();
        if trim_next {
            t = t.trim_start().to_string();
        }
        let after = &rest[start + 2..];
        let left_trim = after.starts_with("- ")
            || after.starts_with("-\t")
            || after.starts_with("-\n")
            || after.starts_with("-\r");
        if left_trim {
            t = t.trim_end().to_string();
        }
        line += rest[..start].matches('\n').count();
        out.push((line, Ok(t)));
        let body_start = if left_trim { 2 } else { 0 };
        let body_all = &after[body_start..];
        // Comments may contain "}}"-free text only up to "*/", so find the end after them.
        let end = if body_all.trim_start().starts_with("/*") {
            match body_all.find("*/") {
                Some(c) => body_all[c..].find("}}").map(|e| c + e),
                None => None,
            }
        } else {
            find_action_end(body_all)
        };
        let Some(end) = end else {
            return Err(err(name, line, "unclosed action"));
        };
        let mut body = &body_all[..end];
        trim_next = false;
        if body.ends_with(" -") || body.ends_with("\t-") || body.ends_with("\n-") {
            body = &body[..body.len() - 1];
            trim_next = true;
        }
        line += body_all[..end].matches('\n').count();
        if !body.trim_start().starts_with("/*") {
            let offset = text.len() - body_all.len();
            out.push((line, Err((offset, body.to_string()))));
        }
        rest = &body_all[end + 2..];
    }
    Ok(out)
}

/// The end of an action, skipping "}}" inside string literals.
fn find_action_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
            }
            b'}' if b.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

fn lex(name: &str, line: usize, s: &str) -> Result<Vec<Tok>, TemplateError> {
    let c: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
            continue;
        }
        match ch {
            '|' => {
                out.push(Tok::Pipe);
                i += 1;
            }
            '(' => {
                out.push(Tok::LParen);
                i += 1;
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1;
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1;
            }
            ':' if c.get(i + 1) == Some(&'=') => {
                out.push(Tok::Declare);
                i += 2;
            }
            '=' => {
                out.push(Tok::Assign);
                i += 1;
            }
            '"' => {
                let mut v = String::new();
                i += 1;
                loop {
                    let Some(&d) = c.get(i) else {
                        return Err(err(name, line, "unterminated quoted string"));
                    };
                    i += 1;
                    match d {
                        '"' => break,
                        '\\' => {
                            let Some(&e) = c.get(i) else {
                                return Err(err(name, line, "unterminated quoted string"));
                            };
                            i += 1;
                            v.push(match e {
                                'n' => '\n',
                                't' => '\t',
                                'r' => '\r',
                                '\\' => '\\',
                                '"' => '"',
                                '\'' => '\'',
                                _ => return Err(err(name, line, "invalid syntax in string")),
                            });
                        }
                        d => v.push(d),
                    }
                }
                out.push(Tok::Str(v));
            }
            '`' => {
                let mut v = String::new();
                i += 1;
                loop {
                    let Some(&d) = c.get(i) else {
                        return Err(err(name, line, "unterminated raw quoted string"));
                    };
                    i += 1;
                    if d == '`' {
                        break;
                    }
                    v.push(d);
                }
                out.push(Tok::Str(v));
            }
            '$' => {
                let mut v = String::from("$");
                i += 1;
                while i < c.len() && ident(c[i]) {
                    v.push(c[i]);
                    i += 1;
                }
                out.push(Tok::Var(v));
            }
            '.' if c.get(i + 1).is_some_and(|d| d.is_alphabetic() || *d == '_') => {
                let mut v = String::new();
                i += 1;
                while i < c.len() && ident(c[i]) {
                    v.push(c[i]);
                    i += 1;
                }
                out.push(Tok::Field(v));
            }
            '.' if !c.get(i + 1).is_some_and(|d| d.is_ascii_digit()) => {
                out.push(Tok::Dot);
                i += 1;
            }
            c0 if c0.is_ascii_digit() || c0 == '-' || c0 == '+' || c0 == '.' => {
                let mut v = String::new();
                while i < c.len()
                    && (c[i].is_ascii_alphanumeric() || matches!(c[i], '.' | '-' | '+' | '_'))
                {
                    // A sign is only part of a number at its start or after an exponent.
                    if matches!(c[i], '-' | '+') && !v.is_empty() && !v.ends_with(['e', 'E']) {
                        break;
                    }
                    v.push(c[i]);
                    i += 1;
                }
                out.push(Tok::Num(v));
            }
            c0 if ident(c0) => {
                let mut v = String::new();
                while i < c.len() && ident(c[i]) {
                    v.push(c[i]);
                    i += 1;
                }
                out.push(Tok::Ident(v));
            }
            other => {
                return Err(err(name, line, format!("unexpected {other:?} in command")));
            }
        }
    }
    Ok(out)
}

struct Parser<'a> {
    name: &'a str,
    items: Vec<Item>,
    text: &'a str,
    pos: usize,
    vars: Vec<String>,
}

enum ListEnd {
    Eof,
    Else(usize, Vec<Tok>, Vec<Loc>),
    End,
}

impl Parser<'_> {
    fn list(&mut self) -> Result<(Vec<Node>, ListEnd), TemplateError> {
        let mut nodes = Vec::new();
        while self.pos < self.items.len() {
            let (line, item) = self.items[self.pos].clone();
            self.pos += 1;
            let body = match item {
                Ok(text) => {
                    if !text.is_empty() {
                        nodes.push(Node::Text(text));
                    }
                    continue;
                }
                Err(body) => body,
            };
            let (offset, body) = body;
            let locs = command_locs(self.text, offset, &body);
            let toks = lex(self.name, line, &body)?;
            match toks.first() {
                None => return Err(err(self.name, line, "missing value for command")),
                Some(Tok::Ident(k)) if k == "end" => {
                    if toks.len() > 1 {
                        return Err(err(self.name, line, "unexpected token in end"));
                    }
                    return Ok((nodes, ListEnd::End));
                }
                Some(Tok::Ident(k)) if k == "else" => {
                    return Ok((nodes, ListEnd::Else(line, toks[1..].to_vec(), locs)));
                }
                Some(Tok::Ident(k)) if k == "if" || k == "with" || k == "range" => {
                    let kind = k.clone();
                    nodes.push(self.control(&kind, line, &toks[1..], locs)?);
                }
                Some(Tok::Ident(k)) if k == "define" || k == "template" || k == "block" => {
                    return Err(err(self.name, line, format!("{k} is not supported")));
                }
                _ => {
                    let mut pipe = self.pipe(line, &toks, true)?;
                    pipe.set_locs(locs);
                    nodes.push(Node::Action(pipe));
                }
            }
        }
        Ok((nodes, ListEnd::Eof))
    }

    fn control(
        &mut self,
        kind: &str,
        line: usize,
        toks: &[Tok],
        locs: Vec<Loc>,
    ) -> Result<Node, TemplateError> {
        let depth = self.vars.len();
        let mut pipe = self.pipe(line, toks, true)?;
        pipe.set_locs(locs);
        let (then, end) = self.list()?;
        let otherwise = match end {
            ListEnd::Eof => return Err(err(self.name, line, format!("unexpected EOF in {kind}"))),
            ListEnd::End => Vec::new(),
            ListEnd::Else(l, rest, _) if rest.is_empty() => {
                let (o, e) = self.list()?;
                if !matches!(e, ListEnd::End) {
                    return Err(err(self.name, l, "expected end; found else or EOF"));
                }
                o
            }
            ListEnd::Else(l, rest, locs) => {
                // `else if` / `else with` chains nest, sharing one `end`.
                match rest.first() {
                    Some(Tok::Ident(k)) if k == kind && kind != "range" => {
                        vec![self.control(kind, l, &rest[1..], locs)?]
                    }
                    _ => return Err(err(self.name, l, "unexpected tokens after else")),
                }
            }
        };
        self.vars.truncate(depth);
        Ok(match kind {
            "if" => Node::If {
                pipe,
                then,
                otherwise,
            },
            "with" => Node::With {
                pipe,
                then,
                otherwise,
            },
            _ => Node::Range {
                pipe,
                body: then,
                otherwise,
            },
        })
    }

    fn pipe(&mut self, line: usize, toks: &[Tok], top: bool) -> Result<Pipe, TemplateError> {
        let mut decl = Vec::new();
        let mut toks = toks;
        if top {
            // `$a := …`, `$a = …` or `$k, $v := …`.
            let assign_at = toks
                .iter()
                .position(|t| matches!(t, Tok::Declare | Tok::Assign));
            if let Some(p) = assign_at {
                let lhs = &toks[..p];
                let ok = lhs.iter().enumerate().all(|(i, t)| {
                    if i % 2 == 0 {
                        matches!(t, Tok::Var(_))
                    } else {
                        matches!(t, Tok::Comma)
                    }
                });
                if ok && !lhs.is_empty() && lhs.len() <= 3 {
                    for t in lhs {
                        if let Tok::Var(v) = t {
                            if toks[p] == Tok::Assign && !self.vars.contains(v) {
                                return Err(err(
                                    self.name,
                                    line,
                                    format!("undefined variable \"{v}\""),
                                ));
                            }
                            decl.push(v.clone());
                        }
                    }
                    toks = &toks[p + 1..];
                }
            }
        }
        let mut cmds = Vec::new();
        for part in split_top(toks, &Tok::Pipe) {
            cmds.push(self.cmd(line, part)?);
        }
        if cmds.is_empty() {
            return Err(err(self.name, line, "missing value for command"));
        }
        for v in &decl {
            if !self.vars.contains(v) {
                self.vars.push(v.clone());
            }
        }
        let locs = vec![None; cmds.len()];
        Ok(Pipe { decl, cmds, locs })
    }

    fn cmd(&mut self, line: usize, toks: &[Tok]) -> Result<Cmd, TemplateError> {
        if toks.is_empty() {
            return Err(err(self.name, line, "missing command"));
        }
        let mut args = Vec::new();
        let mut i = 0;
        while i < toks.len() {
            let (a, used) = self.operand(line, &toks[i..])?;
            args.push(a);
            i += used;
        }
        if let Some(Tok::Ident(f)) = toks.first()
            && !matches!(f.as_str(), "true" | "false" | "nil")
        {
            return Ok(Cmd::Call(f.clone(), args.split_off(1)));
        }
        if args.len() > 1 {
            return Err(err(self.name, line, "can't give argument to non-function"));
        }
        Ok(Cmd::Operand(args.remove(0)))
    }

    fn operand(&mut self, line: usize, toks: &[Tok]) -> Result<(Arg, usize), TemplateError> {
        let fields = |rest: &[Tok]| -> Vec<String> {
            rest.iter()
                .map_while(|t| match t {
                    Tok::Field(f) => Some(f.clone()),
                    _ => None,
                })
                .collect()
        };
        match &toks[0] {
            Tok::Ident(f) => match f.as_str() {
                "true" => Ok((Arg::Bool(true), 1)),
                "false" => Ok((Arg::Bool(false), 1)),
                "nil" => Ok((Arg::Nil, 1)),
                f if FUNCS.contains(&f) => Ok((Arg::Nil, 1)),
                f => Err(err(
                    self.name,
                    line,
                    format!("function \"{f}\" not defined"),
                )),
            },
            Tok::Str(s) => Ok((Arg::Str(s.clone()), 1)),
            Tok::Num(n) => {
                let is_int = !n.contains(['.', 'e', 'E']) || n.starts_with("0x");
                let v = if let Some(h) = n.strip_prefix("0x") {
                    i64::from_str_radix(h, 16).ok().map(|x| x as f64)
                } else {
                    n.replace('_', "").parse::<f64>().ok()
                };
                match v {
                    Some(v) => Ok((Arg::Num(v, is_int), 1)),
                    None => Err(err(self.name, line, format!("bad number syntax: \"{n}\""))),
                }
            }
            Tok::Dot => Ok((Arg::Dot(Vec::new()), 1)),
            Tok::Field(_) => {
                let f = fields(toks);
                let n = f.len();
                Ok((Arg::Dot(f), n))
            }
            Tok::Var(v) => {
                if !self.vars.contains(v) {
                    return Err(err(self.name, line, format!("undefined variable \"{v}\"")));
                }
                let f = fields(&toks[1..]);
                let n = f.len() + 1;
                Ok((Arg::Var(v.clone(), f), n))
            }
            Tok::LParen => {
                let mut depth = 0;
                let mut close = None;
                for (i, t) in toks.iter().enumerate() {
                    match t {
                        Tok::LParen => depth += 1,
                        Tok::RParen => {
                            depth -= 1;
                            if depth == 0 {
                                close = Some(i);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let Some(close) = close else {
                    return Err(err(self.name, line, "unclosed left paren"));
                };
                let inner = self.pipe(line, &toks[1..close], false)?;
                let f = fields(&toks[close + 1..]);
                let n = close + 1 + f.len();
                Ok((Arg::Sub(Box::new(inner), f), n))
            }
            t => Err(err(self.name, line, format!("unexpected {t:?} in operand"))),
        }
    }
}

impl Pipe {
    fn set_locs(&mut self, locs: Vec<Loc>) {
        if locs.len() == self.cmds.len() {
            self.locs = locs.into_iter().map(Some).collect();
        }
    }
}

/// The source spans of the top-level commands of an action body: after a leading
/// `if`/`with`/`range`/`else …` keyword and a `$x :=` declaration, split at `|` outside
/// strings and parentheses.
fn command_locs(text: &str, body_offset: usize, body: &str) -> Vec<Loc> {
    let b = body.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    let word_at = |i: usize| -> &str {
        let end = body[i..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(body.len(), |e| i + e);
        &body[i..end]
    };
    skip_ws(&mut i);
    let w = word_at(i);
    if matches!(w, "if" | "with" | "range" | "else") {
        i += w.len();
        skip_ws(&mut i);
        if w == "else" {
            let w2 = word_at(i);
            i += w2.len();
        }
    }
    let mut start = i;
    let mut cuts = Vec::new();
    let mut depth = 0i32;
    let mut seen_decl = false;
    let mut j = i;
    while j < b.len() {
        match b[j] {
            b'"' => {
                j += 1;
                while j < b.len() && b[j] != b'"' {
                    if b[j] == b'\\' {
                        j += 1;
                    }
                    j += 1;
                }
            }
            b'`' => {
                j += 1;
                while j < b.len() && b[j] != b'`' {
                    j += 1;
                }
            }
            b'(' => depth += 1,
            b')' => depth -= 1,
            b'|' if depth == 0 => cuts.push(j),
            b':' if depth == 0 && !seen_decl && b.get(j + 1) == Some(&b'=') => {
                seen_decl = true;
                start = j + 2;
                cuts.clear();
                j += 1;
            }
            b'=' if depth == 0 && !seen_decl => {
                seen_decl = true;
                start = j + 1;
                cuts.clear();
            }
            _ => {}
        }
        j += 1;
    }
    cuts.push(b.len());
    let mut out = Vec::new();
    let mut from = start;
    for cut in cuts {
        let seg = &body[from..cut];
        let lead = seg.len() - seg.trim_start().len();
        let abs = body_offset + from + lead;
        let before = &text[..abs.min(text.len())];
        let line = 1 + before.matches('\n').count();
        let col = match before.rfind('\n') {
            Some(nl) => abs - (nl + 1),
            None => abs,
        };
        out.push(Loc {
            line,
            col,
            text: seg.split_whitespace().collect::<Vec<_>>().join(" "),
        });
        from = cut + 1;
    }
    out
}

/// Splits on `sep` outside parentheses.
fn split_top<'t>(toks: &'t [Tok], sep: &Tok) -> Vec<&'t [Tok]> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, t) in toks.iter().enumerate() {
        match t {
            Tok::LParen => depth += 1,
            Tok::RParen => depth -= 1,
            t if t == sep && depth == 0 => {
                out.push(&toks[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < toks.len() || !out.is_empty() {
        out.push(&toks[start..]);
    }
    out
}

pub(super) fn parse(name: &str, text: &str) -> Result<Template, TemplateError> {
    let items = split(name, text)?;
    let mut p = Parser {
        name,
        items,
        text,
        pos: 0,
        vars: PREDEFINED.iter().map(|s| s.to_string()).collect(),
    };
    let (nodes, end) = p.list()?;
    let line = p.items.get(p.pos.saturating_sub(1)).map_or(1, |i| i.0);
    match end {
        ListEnd::Eof => Ok(Template {
            name: name.to_string(),
            nodes,
        }),
        ListEnd::End => Err(err(name, line, "unexpected {{end}}")),
        ListEnd::Else(..) => Err(err(name, line, "unexpected {{else}}")),
    }
}
