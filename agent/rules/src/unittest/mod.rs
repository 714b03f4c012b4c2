//! promtool's rule unit tests (`promtool test rules`), run on our engine.
//!
//! Semantics follow `cmd/promtool/unittest.go` of Prometheus 2.42: input series are
//! loaded step by step; every group is evaluated at 0, `evaluation_interval`, … up to the
//! largest `eval_time`; an alert case at `eval_time` is checked after the evaluation at
//! the last step not after it, against the *firing* alerts of rules with that name
//! (labels including `alertname`, and annotations); expression cases are queried after
//! the loop. A rule evaluation error stops its test group.

pub mod series;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::Labels;
use crate::promql::{self, Engine, Value};
use crate::rules::duration::{format_duration, parse_duration};
use crate::rules::{AlertState, EvalContext, Group, LoadOptions, load_files_with};
use crate::storage::MemStore;

/// Bound on series one test group may create (inputs plus rule output).
pub const MAX_TEST_SERIES: usize = 100_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    rule_files: Vec<String>,
    evaluation_interval: Option<String>,
    #[serde(default)]
    group_eval_order: Vec<String>,
    #[serde(default)]
    tests: Vec<TestGroup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestGroup {
    interval: Option<String>,
    #[serde(default)]
    input_series: Vec<InputSeries>,
    #[serde(default)]
    alert_rule_test: Vec<AlertCase>,
    #[serde(default)]
    promql_expr_test: Vec<ExprCase>,
    #[serde(default)]
    external_labels: BTreeMap<String, String>,
    #[serde(default)]
    external_url: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSeries {
    series: String,
    #[serde(default)]
    values: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertCase {
    eval_time: String,
    #[serde(default)]
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<ExpAlert>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpAlert {
    #[serde(default)]
    exp_labels: BTreeMap<String, String>,
    #[serde(default)]
    exp_annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExprCase {
    expr: String,
    eval_time: String,
    #[serde(default)]
    exp_samples: Vec<ExpSample>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpSample {
    #[serde(default)]
    labels: String,
    value: f64,
}

/// Whether a case checks alerts or an expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CaseKind {
    Alert,
    Expr,
}

/// One `alert_rule_test` or `promql_expr_test` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseResult {
    pub kind: CaseKind,
    /// The alert name or the expression.
    pub subject: String,
    /// `eval_time` as promtool prints it ("10m").
    pub eval_time: String,
    /// None when the case passed; promtool's failure text otherwise.
    pub failure: Option<String>,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

/// One entry of `tests:`.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupResult {
    pub name: String,
    pub cases: Vec<CaseResult>,
    /// Errors that stopped the group (rule files, input series, rule evaluation).
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileResult {
    pub file: PathBuf,
    /// A problem with the test file itself (unreadable, invalid YAML).
    pub error: Option<String>,
    pub groups: Vec<GroupResult>,
}

impl FileResult {
    pub fn passed(&self) -> bool {
        self.error.is_none()
            && self
                .groups
                .iter()
                .all(|g| g.errors.is_empty() && g.cases.iter().all(CaseResult::passed))
    }

    /// promtool's failure messages for this file, in its order.
    pub fn failures(&self) -> Vec<String> {
        let mut out: Vec<String> = self.error.iter().cloned().collect();
        for g in &self.groups {
            out.extend(g.errors.iter().cloned());
            out.extend(g.cases.iter().filter_map(|c| c.failure.clone()));
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub files: Vec<FileResult>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.files.iter().all(FileResult::passed)
    }

    /// promtool's layout. Returns (stdout, stderr).
    pub fn render(&self) -> (String, String) {
        let mut out = String::new();
        let mut err = String::new();
        for f in &self.files {
            let _ = writeln!(out, "Unit Testing:  {}", f.file.display());
            if f.passed() {
                let _ = writeln!(out, "  SUCCESS");
            } else {
                let _ = writeln!(err, "  FAILED:");
                for e in f.failures() {
                    let _ = writeln!(err, "{e}");
                    out.push('\n');
                }
            }
            out.push('\n');
        }
        (out, err)
    }
}

/// Runs promtool-format test files.
pub fn run_files<P: AsRef<Path>>(engine: &Engine, files: &[P]) -> Report {
    Report {
        files: files.iter().map(|f| run_file(engine, f.as_ref())).collect(),
    }
}

fn run_file(engine: &Engine, path: &Path) -> FileResult {
    let mut res = FileResult {
        file: path.to_path_buf(),
        error: None,
        groups: Vec::new(),
    };
    let parsed = std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_yaml::from_str::<TestFile>(&t).map_err(|e| e.to_string()));
    let tf = match parsed {
        Ok(t) => t,
        Err(e) => {
            res.error = Some(e);
            return res;
        }
    };
    let eval_interval = match tf.evaluation_interval.as_deref().map(parse_duration) {
        None | Some(Ok(0)) => 60_000,
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            res.error = Some(format!("evaluation_interval: {e}"));
            return res;
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let rule_files = match resolve_rule_files(dir, &tf.rule_files) {
        Ok(f) => f,
        Err(e) => {
            res.error = Some(e);
            return res;
        }
    };
    let mut order: HashMap<&str, usize> = HashMap::new();
    for (i, g) in tf.group_eval_order.iter().enumerate() {
        if order.insert(g.as_str(), i).is_some() {
            res.error = Some(format!("group name repeated in evaluation order: {g}"));
            return res;
        }
    }
    for (i, tg) in tf.tests.iter().enumerate() {
        let name = if tg.name.is_empty() {
            format!("#{}", i + 1)
        } else {
            tg.name.clone()
        };
        let mut gr = GroupResult {
            name,
            cases: Vec::new(),
            errors: Vec::new(),
        };
        run_group(engine, tg, eval_interval, &rule_files, &order, &mut gr);
        res.groups.push(gr);
    }
    res
}

/// Rule files are relative to the test file; a `*` in the last path element globs.
fn resolve_rule_files(dir: &Path, files: &[String]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for f in files {
        let p = dir.join(f);
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.contains('*') {
            out.push(p);
            continue;
        }
        let parent = p.parent().unwrap_or(Path::new("."));
        let (pre, post) = name.split_once('*').unwrap_or((&name, ""));
        let mut matched: Vec<PathBuf> = std::fs::read_dir(parent)
            .map_err(|e| format!("{}: {e}", parent.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .is_some_and(|n| {
                        n.len() >= pre.len() + post.len() && n.starts_with(pre) && n.ends_with(post)
                    })
            })
            .collect();
        matched.sort();
        out.extend(matched);
    }
    Ok(out)
}

struct Input {
    labels: Labels,
    samples: Vec<(i64, f64)>,
    next: usize,
}

/// Go's `labels.Labels.String()`: every label inside the braces, `__name__` included.
fn labels_string(l: &Labels) -> String {
    let parts: Vec<String> = l
        .iter()
        .map(|(k, v)| format!("{k}={}", crate::template::format::quote(v)))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

fn annotations_string(a: &[(String, String)]) -> String {
    let parts: Vec<String> = a
        .iter()
        .map(|(k, v)| format!("{k}={}", crate::template::format::quote(v)))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

fn alerts_string(v: &[(Labels, Vec<(String, String)>)]) -> String {
    if v.is_empty() {
        return "[]".into();
    }
    let mut s = String::from("[");
    for (i, (l, a)) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "\n{i}:\n  Labels:{}\n  Annotations:{}",
            labels_string(l),
            annotations_string(a)
        );
    }
    s.push_str("\n]");
    s
}

fn indent(s: &str, prefix: &str) -> String {
    s.split('\n')
        .collect::<Vec<_>>()
        .join(&format!("\n{prefix}"))
}

fn run_group(
    engine: &Engine,
    tg: &TestGroup,
    eval_interval: i64,
    rule_files: &[PathBuf],
    order: &HashMap<&str, usize>,
    gr: &mut GroupResult,
) {
    let group_label = if tg.name.is_empty() {
        String::new()
    } else {
        format!("    name: {},\n", tg.name)
    };
    let series_interval = match tg.interval.as_deref().map(parse_duration) {
        None | Some(Ok(0)) => eval_interval,
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            gr.errors.push(format!("    interval: {e}"));
            return;
        }
    };
    let opts = LoadOptions {
        check_engine_support: true,
        default_interval_ms: series_interval,
    };
    let mut groups: Vec<Group> = match load_files_with(rule_files, opts) {
        Ok(g) => g,
        Err(e) => {
            gr.errors.push(e.to_string());
            return;
        }
    };
    // Groups named in group_eval_order go first in that order; the rest keep file order.
    groups.sort_by_key(|g| order.get(g.name()).copied().unwrap_or(usize::MAX));

    let mut inputs = Vec::new();
    for s in &tg.input_series {
        let labels = match series::parse_metric(&s.series) {
            Ok(l) => l,
            Err(e) => {
                gr.errors.push(format!("    series {:?}: {e}", s.series));
                return;
            }
        };
        let values = match series::expand_values(&s.values) {
            Ok(v) => v,
            Err(e) => {
                gr.errors.push(format!("    series {:?}: {e}", s.series));
                return;
            }
        };
        let samples = values
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (i as i64 * series_interval, v)))
            .collect();
        inputs.push(Input {
            labels,
            samples,
            next: 0,
        });
    }

    let mut alert_times: Vec<i64> = Vec::new();
    let mut alert_cases: Vec<(i64, &AlertCase)> = Vec::new();
    for a in &tg.alert_rule_test {
        let t = match parse_duration(&a.eval_time) {
            Ok(t) => t,
            Err(e) => {
                gr.errors.push(format!("    eval_time: {e}"));
                return;
            }
        };
        if a.alertname.is_empty() {
            gr.errors.push(format!(
                "an item under alert_rule_test misses required attribute alertname at eval_time {}",
                format_duration(t)
            ));
            return;
        }
        alert_times.push(t);
        alert_cases.push((t, a));
    }
    let mut expr_cases = Vec::new();
    for c in &tg.promql_expr_test {
        match parse_duration(&c.eval_time) {
            Ok(t) => expr_cases.push((t, c)),
            Err(e) => {
                gr.errors.push(format!("    eval_time: {e}"));
                return;
            }
        }
    }
    alert_times.sort_unstable();
    alert_times.dedup();
    let maxt = alert_times
        .iter()
        .chain(expr_cases.iter().map(|(t, _)| t))
        .copied()
        .max()
        .unwrap_or(0);

    let ctx = EvalContext {
        external_labels: Labels::from_pairs(tg.external_labels.clone()),
        external_url: tg.external_url.clone(),
    };
    let mut store = MemStore::new(MAX_TEST_SERIES);
    let mut curr = 0;
    let mut ts = 0;
    while ts <= maxt {
        for inp in &mut inputs {
            while let Some(&(t, v)) = inp.samples.get(inp.next) {
                if t > ts {
                    break;
                }
                if let Err(e) = store.append(&inp.labels, t, v) {
                    gr.errors.push(format!("    input series: {e}"));
                    return;
                }
                inp.next += 1;
            }
        }
        let mut eval_errs = Vec::new();
        for g in &mut groups {
            g.eval(engine, &mut store, ts, &ctx);
            for r in g.rules() {
                if let Some(e) = r.last_error() {
                    eval_errs.push(format!(
                        "    rule: {}, time: {}, err: {e}",
                        r.name(),
                        format_duration(ts)
                    ));
                }
            }
        }
        if !eval_errs.is_empty() {
            gr.errors.extend(eval_errs);
            return;
        }
        while curr < alert_times.len()
            && ts <= alert_times[curr]
            && alert_times[curr] < ts + eval_interval
        {
            let t = alert_times[curr];
            for (_, case) in alert_cases.iter().filter(|(ct, _)| *ct == t) {
                gr.cases.push(check_alert(&groups, case, t, &group_label));
            }
            curr += 1;
        }
        ts += eval_interval;
    }
    // Every alert eval_time is <= maxt, so the loop above checked each one.
    for (t, case) in expr_cases {
        gr.cases.push(check_expr(engine, &store, case, t));
    }
}

fn check_alert(groups: &[Group], case: &AlertCase, t: i64, group_label: &str) -> CaseResult {
    let mut got: Vec<(Labels, Vec<(String, String)>)> = Vec::new();
    for g in groups {
        for r in g.rules() {
            if !r.is_alerting() || r.name() != case.alertname {
                continue;
            }
            for a in r.alerts() {
                if a.state == AlertState::Firing {
                    got.push((a.labels.clone(), a.annotations.clone()));
                }
            }
        }
    }
    let mut exp: Vec<(Labels, Vec<(String, String)>)> = case
        .exp_alerts
        .iter()
        .map(|a| {
            let mut l = Labels::from_pairs(a.exp_labels.clone());
            l.set("alertname".to_string(), case.alertname.clone());
            let ann = a
                .exp_annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (l, ann)
        })
        .collect();
    got.sort();
    exp.sort();
    let time = format_duration(t);
    let failure = (got != exp).then(|| {
        format!(
            "{group_label}    alertname: {}, time: {time}, \n        exp:{}, \n        got:{}",
            case.alertname,
            indent(&alerts_string(&exp), "            "),
            indent(&alerts_string(&got), "            ")
        )
    });
    CaseResult {
        kind: CaseKind::Alert,
        subject: case.alertname.clone(),
        eval_time: time,
        failure,
    }
}

fn samples_string(v: &[(Labels, f64)]) -> String {
    if v.is_empty() {
        return "nil".into();
    }
    v.iter()
        .map(|(l, x)| format!("{} {}", labels_string(l), go_float_e(*x)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Go's `strconv.FormatFloat(v, 'E', -1, 64)`.
fn go_float_e(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let s = format!("{v:E}");
    let (m, e) = s.split_once('E').unwrap_or((&s, "0"));
    let e: i32 = e.parse().unwrap_or(0);
    format!("{m}E{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
}

fn check_expr(engine: &Engine, store: &MemStore, case: &ExprCase, t: i64) -> CaseResult {
    let time = format_duration(t);
    let mut result = CaseResult {
        kind: CaseKind::Expr,
        subject: case.expr.clone(),
        eval_time: time.clone(),
        failure: None,
    };
    let quoted = crate::template::format::quote(&case.expr);
    let got = promql::parse(&case.expr)
        .and_then(|e| engine.instant(store, &e, t))
        .map_err(|e| e.to_string())
        .and_then(|v| match v {
            Value::Vector(v) => Ok(v.into_iter().map(|s| (s.labels, s.v)).collect::<Vec<_>>()),
            Value::Scalar { v, .. } => Ok(vec![(Labels::new(), v)]),
            _ => Err("rule result is not a vector or scalar".to_string()),
        });
    let mut got = match got {
        Ok(g) => g,
        Err(e) => {
            result.failure = Some(format!("    expr: {quoted}, time: {time}, err: {e}"));
            return result;
        }
    };
    let mut exp = Vec::new();
    for s in &case.exp_samples {
        match series::parse_metric_or_empty(&s.labels) {
            Ok(l) => exp.push((l, s.value)),
            Err(e) => {
                result.failure = Some(format!(
                    "    expr: {quoted}, time: {time}, err: labels {}: {e}",
                    crate::template::format::quote(&s.labels)
                ));
                return result;
            }
        }
    }
    let by_labels = |a: &(Labels, f64), b: &(Labels, f64)| a.0.cmp(&b.0);
    got.sort_by(by_labels);
    exp.sort_by(by_labels);
    // Exact comparison, as promtool 2.42's reflect.DeepEqual (NaN never equals NaN).
    let equal =
        got.len() == exp.len() && got.iter().zip(&exp).all(|(g, e)| g.0 == e.0 && g.1 == e.1);
    if !equal {
        result.failure = Some(format!(
            "    expr: {quoted}, time: {time},\n        exp: {}\n        got: {}",
            samples_string(&exp),
            samples_string(&got)
        ));
    }
    result
}
