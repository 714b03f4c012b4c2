//! The Prometheus rule-file format and its validation.
//!
//! Unknown fields are refused (Prometheus decodes with `KnownFields`), so a typo such as
//! `anotations:` fails the check instead of silently dropping every annotation.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::duration::parse_duration;
use super::group::Group;
use super::rule::{Rule, RuleKind};
use crate::promql;
use crate::template;

/// A scalar YAML value read as text: Prometheus's Go structs take `expr: 1` or
/// `severity: 2` as strings, while serde_yaml refuses a number for a `String`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::String(s) => Ok(Text(s)),
            serde_yaml::Value::Number(n) => Ok(Text(n.to_string())),
            serde_yaml::Value::Bool(b) => Ok(Text(b.to_string())),
            serde_yaml::Value::Null => Ok(Text(String::new())),
            _ => Err(serde::de::Error::custom("expected a scalar value")),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    groups: Vec<RawGroup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    #[serde(default)]
    name: String,
    interval: Option<Text>,
    query_offset: Option<Text>,
    #[serde(default)]
    limit: usize,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    record: Option<Text>,
    alert: Option<Text>,
    expr: Option<Text>,
    #[serde(rename = "for")]
    for_: Option<Text>,
    keep_firing_for: Option<Text>,
    #[serde(default)]
    labels: BTreeMap<String, Text>,
    #[serde(default)]
    annotations: BTreeMap<String, Text>,
}

/// One problem in a rule file, located as precisely as the file allows.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleFileError {
    pub file: PathBuf,
    /// 1-based line of the rule (or group, or YAML error) when known.
    pub line: Option<usize>,
    pub group: Option<String>,
    /// 1-based position of the rule in its group, like promtool prints it.
    pub rule_index: Option<usize>,
    pub rule_name: Option<String>,
    pub message: String,
}

impl fmt::Display for RuleFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        f.write_str(": ")?;
        if let Some(g) = &self.group {
            write!(f, "group {g:?}, ")?;
        }
        if let Some(i) = self.rule_index {
            write!(f, "rule {i}, ")?;
        }
        if let Some(n) = &self.rule_name {
            write!(f, "{n:?}: ")?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: {source}", file.display())]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    /// Every problem found, in file order, so one `rules check` run shows them all.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<RuleFileError>),
}

/// What loading checks beyond the file format.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Refuse expressions the PromQL engine cannot evaluate (on by default: a rule that
    /// can never evaluate should fail at load, not at every evaluation).
    pub check_engine_support: bool,
    /// The evaluation interval of groups that set none (Prometheus's global default: 1m).
    pub default_interval_ms: i64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            check_engine_support: true,
            default_interval_ms: 60_000,
        }
    }
}

/// Loads rule files in order; see [`load_files_with`].
pub fn load_files<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<Group>, LoadError> {
    load_files_with(paths, LoadOptions::default())
}

/// Loads and validates rule files, returning their groups in file order. Group names are
/// unique per file (as in Prometheus, the same name may appear in two files).
pub fn load_files_with<P: AsRef<Path>>(
    paths: &[P],
    opts: LoadOptions,
) -> Result<Vec<Group>, LoadError> {
    let mut groups = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        let path = p.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            file: path.to_path_buf(),
            source,
        })?;
        match parse_file(path, &text, opts) {
            Ok(g) => groups.extend(g),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(groups)
    } else {
        Err(LoadError::Invalid(errors))
    }
}

/// Line numbers of group and rule starts, found by scanning the text: serde_yaml reports
/// positions for syntax errors only, and promtool-style messages need the rule's line.
struct Lines {
    groups: Vec<usize>,
    rules: Vec<usize>,
}

fn scan_lines(text: &str) -> Lines {
    let mut groups = Vec::new();
    let mut rules = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let item = t.strip_prefix("- ").map(str::trim_start);
        if item.is_some_and(|rest| rest.starts_with("name:")) {
            groups.push(i + 1);
            continue;
        }
        let body = item.unwrap_or(t);
        if body.starts_with("alert:") || body.starts_with("record:") {
            rules.push(i + 1);
        }
    }
    Lines { groups, rules }
}

/// The group and rule enclosing `line`, read from the text when the YAML did not decode.
fn locate(
    text: &str,
    lines: &Lines,
    line: usize,
) -> (Option<String>, Option<usize>, Option<String>) {
    let Some(gi) = lines.groups.iter().rposition(|&g| g <= line) else {
        return (None, None, None);
    };
    let gline = lines.groups[gi];
    let raw = |l: usize| text.lines().nth(l - 1).unwrap_or_default();
    let value_of = |l: usize| {
        raw(l)
            .split_once(':')
            .map(|(_, v)| v.trim().trim_matches(['"', '\'']).to_string())
    };
    let group = value_of(gline);
    let in_group: Vec<usize> = lines
        .rules
        .iter()
        .copied()
        .filter(|&r| r > gline && lines.groups.get(gi + 1).is_none_or(|&next| r < next))
        .collect();
    match in_group.iter().rposition(|&r| r <= line) {
        Some(ri) => (group, Some(ri + 1), value_of(in_group[ri])),
        None => (group, None, None),
    }
}

fn valid_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

pub(crate) fn valid_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

fn parse_file(
    path: &Path,
    text: &str,
    opts: LoadOptions,
) -> Result<Vec<Group>, Vec<RuleFileError>> {
    let base = RuleFileError {
        file: path.to_path_buf(),
        line: None,
        group: None,
        rule_index: None,
        rule_name: None,
        message: String::new(),
    };
    let raw: RawFile = if text.trim().is_empty() {
        RawFile { groups: Vec::new() }
    } else {
        serde_yaml::from_str(text).map_err(|e| {
            let line = e.location().map(|l| l.line());
            let (group, rule_index, rule_name) =
                line.map_or((None, None, None), |l| locate(text, &scan_lines(text), l));
            vec![RuleFileError {
                line,
                group,
                rule_index,
                rule_name,
                message: e.to_string(),
                ..base.clone()
            }]
        })?
    };
    let lines = scan_lines(text);
    let mut rule_counter = 0usize;
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    let mut groups = Vec::new();
    for (gi, rg) in raw.groups.into_iter().enumerate() {
        let gline = lines.groups.get(gi).copied();
        let gerr = |message: String| RuleFileError {
            line: gline,
            group: Some(rg.name.clone()),
            message,
            ..base.clone()
        };
        if rg.name.is_empty() {
            errors.push(gerr("Groupname must not be empty".into()));
        } else if !seen.insert(rg.name.clone()) {
            errors.push(gerr(format!(
                "groupname: \"{}\" is repeated in the same file",
                rg.name
            )));
        }
        let mut interval = opts.default_interval_ms;
        if let Some(i) = &rg.interval {
            match parse_duration(&i.0) {
                Ok(0) => errors.push(gerr("interval must be greater than 0".into())),
                Ok(v) => interval = v,
                Err(e) => errors.push(gerr(format!("interval: {e}"))),
            }
        }
        let mut query_offset = 0;
        if let Some(o) = &rg.query_offset {
            match parse_duration(&o.0) {
                Ok(v) => query_offset = v,
                Err(e) => errors.push(gerr(format!("query_offset: {e}"))),
            }
        }
        let mut rules = Vec::new();
        for (ri, rr) in rg.rules.into_iter().enumerate() {
            let line = lines.rules.get(rule_counter).copied().or(gline);
            rule_counter += 1;
            let name = rr
                .alert
                .as_ref()
                .or(rr.record.as_ref())
                .map(|t| t.0.clone());
            let rerr = |message: String| RuleFileError {
                line,
                group: Some(rg.name.clone()),
                rule_index: Some(ri + 1),
                rule_name: name.clone(),
                message,
                ..base.clone()
            };
            match build_rule(rr, opts) {
                Ok(r) => rules.push(r),
                Err(msgs) => errors.extend(msgs.into_iter().map(rerr)),
            }
        }
        groups.push(Group::new(
            rg.name,
            path.to_path_buf(),
            interval,
            rg.limit,
            query_offset,
            rules,
        ));
    }
    if errors.is_empty() {
        Ok(groups)
    } else {
        Err(errors)
    }
}

fn build_rule(rr: RawRule, opts: LoadOptions) -> Result<Rule, Vec<String>> {
    let mut errs = Vec::new();
    let (name, is_alert) = match (&rr.alert, &rr.record) {
        (Some(_), Some(_)) => {
            return Err(vec!["only one of 'record' and 'alert' must be set".into()]);
        }
        (None, None) => return Err(vec!["one of 'record' or 'alert' must be set".into()]),
        (Some(a), None) => (a.0.clone(), true),
        (None, Some(r)) => (r.0.clone(), false),
    };
    if name.is_empty() {
        errs.push(format!(
            "field '{}' must be set in rule",
            if is_alert { "alert" } else { "record" }
        ));
    }
    let expr_text = rr.expr.map(|t| t.0).unwrap_or_default();
    let mut expr = None;
    if expr_text.is_empty() {
        errs.push("field 'expr' must be set in rule".into());
    } else {
        match promql::parse(&expr_text) {
            Err(e) => errs.push(format!("could not parse expression: {e}")),
            Ok(x) => {
                if opts.check_engine_support
                    && let Err(e) = promql::check_supported(&x)
                {
                    errs.push(format!("expression not supported by minirag-agent: {e}"));
                }
                expr = Some(x);
            }
        }
    }
    let dur = |field: &str, v: &Option<Text>, errs: &mut Vec<String>| -> i64 {
        match v {
            None => 0,
            Some(t) => match parse_duration(&t.0) {
                Ok(v) => v,
                Err(e) => {
                    errs.push(format!("{field}: {e}"));
                    0
                }
            },
        }
    };
    let for_ms = dur("for", &rr.for_, &mut errs);
    let keep_firing_for_ms = dur("keep_firing_for", &rr.keep_firing_for, &mut errs);
    if is_alert {
        if !name.is_empty() && !valid_label_value(&name) {
            errs.push(format!("invalid alert name: {name}"));
        }
    } else {
        if !rr.annotations.is_empty() {
            errs.push("invalid field 'annotations' in recording rule".into());
        }
        if rr.for_.is_some() {
            errs.push("invalid field 'for' in recording rule".into());
        }
        if rr.keep_firing_for.is_some() {
            errs.push("invalid field 'keep_firing_for' in recording rule".into());
        }
        if !name.is_empty() && !valid_metric_name(&name) {
            errs.push(format!("invalid recording rule name: {name}"));
        }
    }
    let mut labels = Vec::new();
    for (k, v) in rr.labels {
        if !valid_label_name(&k) || k == "__name__" {
            errs.push(format!("invalid label name: {k}"));
        }
        if is_alert && let Err(e) = template::check(&format!("__alert_{name}"), &v.0) {
            errs.push(format!("label {k:?}: {e}"));
        }
        labels.push((k, v.0));
    }
    let mut annotations = Vec::new();
    for (k, v) in rr.annotations {
        if !valid_label_name(&k) {
            errs.push(format!("invalid annotation name: {k}"));
        }
        if let Err(e) = template::check(&format!("__alert_{name}"), &v.0) {
            errs.push(format!("annotation {k:?}: {e}"));
        }
        annotations.push((k, v.0));
    }
    let Some(expr) = expr else {
        return Err(errs);
    };
    if !errs.is_empty() {
        return Err(errs);
    }
    let kind = if is_alert {
        RuleKind::alerting(for_ms, keep_firing_for_ms, annotations)
    } else {
        RuleKind::Recording
    };
    Ok(Rule::new(name, expr_text, expr, labels, kind))
}

fn valid_label_value(s: &str) -> bool {
    !s.contains('\0')
}
