//! The shipped Grafana dashboards (`dashboards/*.json`), their provisioning files and
//! their Kubernetes ConfigMap rendering.
//!
//! Users import these without reading our code, so they are linted like code: one
//! datasource variable used everywhere, `$__rate_interval` in every range, counters only
//! under `rate`/`increase`, every PromQL expression parses, every metric is one the
//! catalogue (`docs/metrics.md`) says a program exports, and the ConfigMap cannot drift
//! from the JSON (regenerate it with
//! `UPDATE_GOLDEN=1 cargo test -p minirag-agent --test artifacts_dashboards`). That each
//! metric is really exported by the running programs is `artifacts_metrics_live`'s job.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use promql_parser::parser::{self, Expr};
use serde::Deserialize;
use serde_json::Value;

mod common;

use common::tool;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The workspace version (`[workspace.package] version`), which the artifacts carry.
fn workspace_version() -> String {
    let text = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let mut in_package = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[workspace.package]";
        } else if in_package && let Some(v) = line.strip_prefix("version") {
            return v
                .trim_start_matches([' ', '='])
                .trim()
                .trim_matches('"')
                .into();
        }
    }
    panic!("no [workspace.package] version in Cargo.toml");
}

/// Grafana's dashboard `version` is an integer, so the semantic version is encoded as
/// major·10000 + minor·100 + patch (0.1.0 → 100).
fn version_number(version: &str) -> u64 {
    let parts: Vec<u64> = version.split('.').map(|p| p.parse().unwrap()).collect();
    assert_eq!(parts.len(), 3, "version {version}");
    assert!(parts[1] < 100 && parts[2] < 100, "version {version}");
    parts[0] * 10_000 + parts[1] * 100 + parts[2]
}

const DASHBOARDS: [&str; 3] = ["minirag-overview", "minirag-agent", "minirag-logs"];

/// (file stem, raw text, parsed JSON) of every `dashboards/*.json`, by name.
fn dashboards() -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root().join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let json: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            out.push((stem, text, json));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            if let Some(nested) = p.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn targets(panel: &Value) -> impl Iterator<Item = &Value> {
    panel["targets"].as_array().into_iter().flatten()
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The datasource plugin a dashboard is built on, from its one datasource variable.
fn datasource_type(name: &str, dashboard: &Value) -> String {
    let vars: Vec<&Value> = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| str_of(v, "type") == "datasource")
        .collect();
    assert_eq!(vars.len(), 1, "{name}: exactly one datasource variable");
    assert_eq!(str_of(vars[0], "name"), "datasource", "{name}");
    let kind = str_of(vars[0], "query");
    assert!(matches!(kind, "prometheus" | "loki"), "{name}: {kind}");
    kind.to_string()
}

#[test]
fn the_dashboards_are_the_expected_files_with_stable_unique_uids_and_the_version() {
    let version = workspace_version();
    let all = dashboards();
    let stems: Vec<&str> = all.iter().map(|d| d.0.as_str()).collect();
    let mut expected = DASHBOARDS.to_vec();
    expected.sort();
    assert_eq!(stems, expected);
    let mut uids = HashSet::new();
    for (name, text, d) in &all {
        // The uid is what links and provisioning refer to, so it is pinned to the file
        // name rather than left to Grafana to generate on import.
        let uid = str_of(d, "uid");
        assert_eq!(uid, name, "{name}: uid");
        assert!(
            uid.len() <= 40
                && uid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{name}: uid {uid}"
        );
        assert!(uids.insert(uid.to_string()), "{name}: duplicate uid");
        assert!(d["id"].is_null(), "{name}: id must be null (set on import)");
        assert!(
            d["schemaVersion"].as_u64().unwrap_or(0) >= 39,
            "{name}: schemaVersion"
        );
        assert_eq!(
            d["version"].as_u64(),
            Some(version_number(&version)),
            "{name}: version encodes {version}"
        );
        let tags: Vec<&str> = d["tags"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(tags.contains(&"minirag"), "{name}: tags {tags:?}");
        assert!(
            tags.contains(&format!("minirag-{version}").as_str()),
            "{name}: tags {tags:?} lack the version"
        );
        assert!(
            str_of(d, "description").contains(&version),
            "{name}: description names the version"
        );
        // Export-for-sharing inputs make the file unusable by provisioning and the
        // ConfigMap sidecar, which do not prompt for them.
        assert!(
            d.get("__inputs").is_none() && d.get("__requires").is_none(),
            "{name}"
        );
        assert!(!text.contains("${DS_"), "{name}: ${{DS_...}} input");
        assert!(text.ends_with("}\n") && !text.ends_with("\n\n"), "{name}");
    }
}

/// Panel types Grafana renders natively today; `graph`, `singlestat`, `table-old` and
/// the old plugin panels are deprecated or removed.
const PANEL_TYPES: [&str; 8] = [
    "timeseries",
    "stat",
    "table",
    "gauge",
    "bargauge",
    "logs",
    "text",
    "row",
];

#[test]
fn panels_have_current_types_titles_descriptions_units_and_a_sane_layout() {
    for (name, _, d) in dashboards() {
        let mut ids = HashSet::new();
        let mut boxes: Vec<(String, [u64; 4])> = Vec::new();
        let all = panels(&d);
        assert!(all.len() >= 5, "{name}: only {} panels", all.len());
        for p in all {
            let title = str_of(p, "title");
            let kind = str_of(p, "type");
            assert!(
                !title.trim().is_empty(),
                "{name}: a {kind} panel has no title"
            );
            assert!(
                PANEL_TYPES.contains(&kind),
                "{name}/{title}: panel type {kind:?} is deprecated or unknown"
            );
            let id = p["id"].as_u64().unwrap_or(0);
            assert!(id > 0 && ids.insert(id), "{name}/{title}: id {id}");
            let g = &p["gridPos"];
            let b = ["x", "y", "w", "h"].map(|k| g[k].as_u64().unwrap());
            assert!(b[0] + b[2] <= 24 && b[2] > 0 && b[3] > 0, "{name}/{title}");
            for (other, o) in &boxes {
                let apart = b[0] + b[2] <= o[0]
                    || o[0] + o[2] <= b[0]
                    || b[1] + b[3] <= o[1]
                    || o[1] + o[3] <= b[1];
                assert!(apart, "{name}: {title} overlaps {other}");
            }
            boxes.push((title.to_string(), b));
            if kind == "row" {
                continue;
            }
            assert!(
                str_of(p, "description").len() >= 20,
                "{name}/{title}: description"
            );
            // A logs panel shows lines, not numbers: a unit has no meaning there.
            if kind != "logs" && kind != "text" {
                let unit = str_of(&p["fieldConfig"]["defaults"], "unit");
                assert!(!unit.is_empty(), "{name}/{title}: unit");
            }
            if kind != "text" {
                assert!(targets(p).count() > 0, "{name}/{title}: no queries");
                let mut refs = HashSet::new();
                for t in targets(p) {
                    assert!(refs.insert(str_of(t, "refId")), "{name}/{title}: refId");
                    assert!(!str_of(t, "expr").trim().is_empty(), "{name}/{title}");
                }
            }
        }
    }
}

#[test]
fn every_panel_and_target_uses_the_datasource_variable() {
    for (name, _, d) in dashboards() {
        let kind = datasource_type(&name, &d);
        let expected = serde_json::json!({"type": kind, "uid": "${datasource}"});
        for p in panels(&d) {
            let title = str_of(p, "title");
            if str_of(p, "type") == "row" || str_of(p, "type") == "text" {
                continue;
            }
            assert_eq!(
                p["datasource"], expected,
                "{name}/{title}: panel datasource"
            );
            for t in targets(p) {
                assert_eq!(
                    t["datasource"], expected,
                    "{name}/{title}: target datasource"
                );
            }
        }
        for v in d["templating"]["list"].as_array().unwrap() {
            if str_of(v, "type") == "query" {
                assert_eq!(v["datasource"], expected, "{name}: variable {}", v["name"]);
            }
        }
    }
}

/// The bracketed range durations of a query (`[...]`, outside string literals).
fn ranges(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut quote = None;
    let mut start = None;
    let mut prev = '\0';
    for (i, c) in expr.char_indices() {
        match quote {
            Some(q) if c == q && prev != '\\' => quote = None,
            Some(_) => {}
            None if c == '"' || c == '`' || c == '\'' => quote = Some(c),
            None if c == '[' => start = Some(i + 1),
            None if c == ']' => {
                if let Some(s) = start.take() {
                    out.push(expr[s..i].to_string());
                }
            }
            None => {}
        }
        prev = if prev == '\\' { '\0' } else { c };
    }
    out
}

#[test]
fn every_range_uses_the_grafana_interval_variable() {
    assert_eq!(
        ranges(r#"rate(a{b="[x]"}[$__rate_interval]) + c[5m:1m]"#),
        ["$__rate_interval", "5m:1m"]
    );
    for (name, _, d) in dashboards() {
        let kind = datasource_type(&name, &d);
        for p in panels(&d) {
            for t in targets(p) {
                let expr = str_of(t, "expr");
                for r in ranges(expr) {
                    // $__rate_interval is at least four scrape intervals, so rate() always
                    // has two samples; Loki has no scrape interval and Grafana's $__auto
                    // picks the step-aligned range for metric queries.
                    let ok = match kind.as_str() {
                        "prometheus" => r == "$__rate_interval",
                        _ => r == "$__auto" || r == "$__interval",
                    };
                    assert!(ok, "{name}/{}: range [{r}] in {expr}", str_of(p, "title"));
                }
            }
        }
    }
}

/// Metric type as far as the lint cares.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// Only meaningful under rate()/increase(): counters and histogram series.
    Counter,
    Gauge,
}

/// Exposed series names → kind, from the catalogue tables of `docs/metrics.md`
/// (`| `name` | type | ...`); a histogram contributes its `_bucket`, `_sum`, `_count`.
fn catalogue() -> BTreeMap<String, Kind> {
    let text = std::fs::read_to_string(root().join("docs/metrics.md")).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[0].is_empty() {
            continue;
        }
        let names: Vec<&str> = cells[1]
            .split(',')
            .map(|n| n.trim().trim_matches('`'))
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty()
            || !names.iter().all(|n| {
                n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
            })
        {
            continue;
        }
        for name in names {
            match cells[2] {
                "counter" => {
                    out.insert(name.to_string(), Kind::Counter);
                }
                "gauge" => {
                    out.insert(name.to_string(), Kind::Gauge);
                }
                "histogram" | "summary" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        out.insert(format!("{name}{suffix}"), Kind::Counter);
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// Recording rules defined in `alerts/*.yaml` (treated as gauges: they are already
/// rates or ratios).
fn recording_rules() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir(root().join("alerts")) else {
        return out;
    };
    for entry in dir {
        let path = entry.unwrap().path();
        if !path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(&text) else {
            continue;
        };
        for group in doc["groups"].as_sequence().into_iter().flatten() {
            for rule in group["rules"].as_sequence().into_iter().flatten() {
                if let Some(r) = rule["record"].as_str() {
                    out.insert(r.to_string());
                }
            }
        }
    }
    out
}

fn known_metrics() -> BTreeMap<String, Kind> {
    let mut known = catalogue();
    assert!(
        known.contains_key("ask_requests_total") && known.contains_key("workspace_quota_ratio"),
        "docs/metrics.md catalogue not understood"
    );
    // Written by whichever rule evaluator runs the alerts (the agent or Prometheus).
    known.insert("ALERTS".into(), Kind::Gauge);
    for r in recording_rules() {
        known.entry(r).or_insert(Kind::Gauge);
    }
    known
}

/// Grafana's variables replaced by values PromQL accepts, so the expression can be
/// parsed as Prometheus will receive it.
fn interpolate(expr: &str) -> String {
    let mut out = expr
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h");
    while let Some(i) = out.find('$') {
        let rest = &out[i + 1..];
        let len = match rest.strip_prefix('{') {
            Some(inner) => inner.find('}').map_or(rest.len(), |e| e + 2),
            None => rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len()),
        };
        out.replace_range(i..i + 1 + len, "x");
    }
    out
}

/// A use of a metric in an expression.
struct Use {
    name: String,
    /// Directly inside rate()/increase()/irate() (the only place a counter means anything).
    under_rate: bool,
}

fn selector_name(vs: &parser::VectorSelector) -> Option<String> {
    vs.name.clone().or_else(|| {
        vs.matchers
            .matchers
            .iter()
            .find(|m| m.name == "__name__")
            .map(|m| m.value.clone())
    })
}

fn metric_uses(expr: &Expr, under_rate: bool, out: &mut Vec<Use>) {
    match expr {
        Expr::Aggregate(a) => {
            metric_uses(&a.expr, false, out);
            if let Some(p) = &a.param {
                metric_uses(p, false, out);
            }
        }
        Expr::Unary(u) => metric_uses(&u.expr, false, out),
        Expr::Binary(b) => {
            metric_uses(&b.lhs, false, out);
            metric_uses(&b.rhs, false, out);
        }
        Expr::Paren(p) => metric_uses(&p.expr, false, out),
        Expr::Subquery(s) => metric_uses(&s.expr, false, out),
        Expr::VectorSelector(vs) => out.push(Use {
            name: selector_name(vs).unwrap_or_default(),
            under_rate: false,
        }),
        Expr::MatrixSelector(ms) => out.push(Use {
            name: selector_name(&ms.vs).unwrap_or_default(),
            under_rate,
        }),
        Expr::Call(c) => {
            let rate = matches!(c.func.name, "rate" | "increase" | "irate");
            for arg in &c.args.args {
                metric_uses(arg, rate, out);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

#[test]
fn the_lint_catches_bad_expressions() {
    let known = known_metrics();
    let uses = |e: &str| {
        let mut out = Vec::new();
        metric_uses(&parser::parse(&interpolate(e)).unwrap(), false, &mut out);
        out
    };
    let raw = uses("sum(ask_requests_total)");
    assert_eq!(raw[0].name, "ask_requests_total");
    assert!(!raw[0].under_rate && known["ask_requests_total"] == Kind::Counter);
    let rated = uses("sum by (x) (rate(ask_requests_total{a=~\"$v\"}[$__rate_interval]))");
    assert!(rated[0].under_rate);
    let over_time = uses("sum_over_time(ask_requests_total[$__rate_interval])");
    assert!(!over_time[0].under_rate);
    assert_eq!(
        known["chunk_records_total"],
        Kind::Gauge,
        "gauge by catalogue"
    );
    assert!(!known.contains_key("ask_requests"));
    assert!(parser::parse(&interpolate("sum(rate(x[$__rate_interval])")).is_err());
}

/// (dashboard, panel or variable, PromQL) of every Prometheus query.
fn promql_queries() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (name, _, d) in dashboards() {
        if datasource_type(&name, &d) != "prometheus" {
            continue;
        }
        for v in d["templating"]["list"].as_array().unwrap() {
            if str_of(v, "type") == "query" {
                let title = format!("variable {}", v["name"]);
                out.push((name.clone(), title, str_of(v, "query").to_string()));
            }
        }
        for p in panels(&d) {
            for t in targets(p) {
                let title = str_of(p, "title").to_string();
                out.push((name.clone(), title, str_of(t, "expr").to_string()));
            }
        }
    }
    out
}

#[test]
fn every_promql_expression_parses_and_uses_only_exported_metrics_correctly() {
    let known = known_metrics();
    for (name, title, expr) in promql_queries() {
        let ast = parser::parse(&interpolate(&expr))
            .unwrap_or_else(|e| panic!("{name}/{title}: {expr}: {e}"));
        let mut uses = Vec::new();
        metric_uses(&ast, false, &mut uses);
        assert!(!uses.is_empty(), "{name}/{title}: no metric in {expr}");
        for u in uses {
            let kind = known.get(&u.name).unwrap_or_else(|| {
                panic!(
                    "{name}/{title}: {} is not in docs/metrics.md, a recording rule or ALERTS",
                    u.name
                )
            });
            assert!(
                *kind != Kind::Counter || u.under_rate,
                "{name}/{title}: counter {} outside rate()/increase(): {expr}",
                u.name
            );
        }
    }
}

#[test]
fn logql_queries_select_the_log_shippers_stream_and_parse_its_json() {
    for (name, _, d) in dashboards() {
        if datasource_type(&name, &d) != "loki" {
            continue;
        }
        let vars: Vec<&str> = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| str_of(v, "name"))
            .collect();
        for p in panels(&d) {
            for t in targets(p) {
                let expr = str_of(t, "expr");
                let title = str_of(p, "title");
                // The Loki sink's stream is chosen by its static labels; the record
                // fields (request_id, workspace_id, level, event) stay in the JSON line.
                assert!(
                    expr.contains(r#"{job="$job"}"#),
                    "{name}/{title}: stream selector"
                );
                assert!(expr.contains("| json"), "{name}/{title}: | json");
                let open = expr.matches(['(', '{']).count();
                let close = expr.matches([')', '}']).count();
                assert_eq!(open, close, "{name}/{title}: unbalanced {expr}");
                for var in expr.split('$').skip(1) {
                    let v: String = var
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    assert!(
                        v.starts_with("__") || vars.contains(&v.as_str()),
                        "{name}/{title}: unknown variable ${v}"
                    );
                }
            }
        }
    }
}

fn yaml(path: &str) -> serde_yaml::Value {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn provisioning_serves_the_dashboards_and_links_metrics_and_logs_to_traces() {
    let providers = yaml("dashboards/provisioning/dashboards/minirag.yaml");
    assert_eq!(providers["apiVersion"].as_u64(), Some(1));
    let provider = &providers["providers"][0];
    assert_eq!(provider["type"].as_str(), Some("file"));
    assert!(provider["options"]["path"].as_str().is_some());

    let text =
        std::fs::read_to_string(root().join("dashboards/provisioning/datasources/minirag.yaml"))
            .unwrap();
    let sources = yaml("dashboards/provisioning/datasources/minirag.yaml");
    let list = sources["datasources"].as_sequence().unwrap();
    let by_type = |t: &str| {
        list.iter()
            .find(|d| d["type"].as_str() == Some(t))
            .unwrap_or_else(|| panic!("no {t} data source"))
    };
    let tempo = by_type("tempo")["uid"].as_str().unwrap();
    // Every dashboard's datasource plugin has an example data source.
    for (name, _, d) in dashboards() {
        by_type(&datasource_type(&name, &d));
    }
    let exemplars = &by_type("prometheus")["jsonData"]["exemplarTraceIdDestinations"][0];
    assert_eq!(
        exemplars["name"].as_str(),
        Some("trace_id"),
        "exemplar label"
    );
    assert_eq!(exemplars["datasourceUid"].as_str(), Some(tempo));
    let derived = &by_type("loki")["jsonData"]["derivedFields"][0];
    assert_eq!(derived["datasourceUid"].as_str(), Some(tempo));
    assert!(
        derived["matcherRegex"]
            .as_str()
            .unwrap()
            .contains("trace_id")
    );
    // Grafana expands environment variables in provisioning files, so a template
    // variable meant for Grafana must be written `$${...}` or it is replaced by "".
    for line in text.lines() {
        let unescaped = line.replace("$$", "");
        assert!(
            !unescaped.contains("${__"),
            "unescaped Grafana variable: {line}"
        );
    }
    assert_eq!(derived["url"].as_str(), Some("$${__value.raw}"));
}

const CONFIGMAPS: &str = "dashboards/k8s/configmap.yaml";

/// The ConfigMaps for Grafana's dashboard sidecar (kube-prometheus-stack): one per
/// dashboard, so none nears the 256 KiB limit of `kubectl apply`'s annotation.
fn render_configmaps(version: &str, dashboards: &[(String, String, Value)]) -> String {
    let mut out = String::from(
        "# Generated from dashboards/*.json by agent/tests/artifacts_dashboards.rs; do not edit.\n\
         # Regenerate: UPDATE_GOLDEN=1 cargo test -p minirag-agent --test artifacts_dashboards\n",
    );
    for (stem, text, _) in dashboards {
        out.push_str("---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n");
        out.push_str(&format!("  name: {stem}-dashboard\n"));
        out.push_str("  labels:\n    grafana_dashboard: \"1\"\n");
        out.push_str("    app.kubernetes.io/name: minirag-dashboards\n");
        out.push_str("    app.kubernetes.io/part-of: minirag\n");
        out.push_str(&format!("    app.kubernetes.io/version: \"{version}\"\n"));
        // The sidecar puts the dashboard in this folder when its
        // `folderAnnotation` is set to grafana_folder.
        out.push_str("  annotations:\n    grafana_folder: Mini-RAG\n");
        out.push_str(&format!("data:\n  {stem}.json: |\n"));
        for line in text.lines() {
            out.push_str("    ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn the_configmap_rendering_matches_the_dashboards_byte_for_byte() {
    let version = workspace_version();
    let all = dashboards();
    let rendered = render_configmaps(&version, &all);
    let path = root().join(CONFIGMAPS);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &rendered).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == rendered,
        "{CONFIGMAPS} is out of date: run UPDATE_GOLDEN=1 cargo test -p minirag-agent --test artifacts_dashboards"
    );
    // Independently of the renderer: what a YAML reader gets back is each file's bytes.
    let mut found = 0;
    for doc in serde_yaml::Deserializer::from_str(&committed) {
        let doc = serde_yaml::Value::deserialize(doc).unwrap();
        assert_eq!(doc["kind"].as_str(), Some("ConfigMap"));
        assert_eq!(
            doc["metadata"]["labels"]["grafana_dashboard"].as_str(),
            Some("1")
        );
        for (key, value) in doc["data"].as_mapping().unwrap() {
            let key = key.as_str().unwrap();
            let (_, text, _) = all
                .iter()
                .find(|d| format!("{}.json", d.0) == key)
                .unwrap_or_else(|| panic!("{key} has no dashboard file"));
            assert_eq!(value.as_str(), Some(text.as_str()), "{key}");
            found += 1;
        }
    }
    assert_eq!(found, all.len());
    let kustomization = yaml("dashboards/k8s/kustomization.yaml");
    assert_eq!(
        kustomization["resources"][0].as_str(),
        Some("configmap.yaml")
    );
}

#[test]
fn the_configmaps_pass_kubernetes_validate_strict() {
    let Some(validate) = tool("kubernetes-validate") else {
        return;
    };
    for v in ["1.29.0", "1.33.0"] {
        let check = Command::new(&validate)
            .args(["--strict", "--quiet", "-k", v])
            .arg(root().join(CONFIGMAPS))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        assert!(
            check.status.success() && !text.contains("ERROR"),
            "against {v}:\n{text}"
        );
    }
}
