//! No alert or panel may be silently empty: every metric name used by a PromQL
//! expression in `alerts/*.yaml` or a Prometheus dashboard in `dashboards/*.json` must be
//! a sample name the running programs actually export (scraped live from rag-core and
//! from the agent in front of it, with identity, quotas, log shipping, tracing and rule
//! evaluation on, after a little traffic), a recording rule of `alerts/*.yaml`, a series
//! the rule evaluator writes itself, or an entry of [`ALLOWED`] with its reason.
//!
//! Sample names are compared as exported (`foo_bucket`, `foo_count`, `bar_total`), so an
//! expression that queries a histogram by its family name or forgets `_total` fails too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr, VectorSelector};
use serde_json::Value;

mod common;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Metrics that exist only under conditions this test cannot create cheaply, each with
/// the reason. Keep it short: every entry is a query nobody has seen return data here.
const ALLOWED: &[(&str, &str)] = &[];

/// Series the rule evaluator (the agent's or Prometheus's) writes itself.
fn written_by_the_evaluator(name: &str) -> bool {
    matches!(name, "ALERTS" | "ALERTS_FOR_STATE" | "up") || name.starts_with("scrape_")
}

/// Sample names on an exposition page (text format or OpenMetrics).
fn sample_names(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

fn rule_files() -> Vec<(String, serde_yaml::Value)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root().join("alerts")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let doc = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            out.push((name, doc));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no alerts/*.yaml");
    out
}

/// (where, PromQL) of every rule, and the names of the recording rules.
fn rule_exprs() -> (Vec<(String, String)>, BTreeSet<String>) {
    let mut exprs = Vec::new();
    let mut recorded = BTreeSet::new();
    for (file, doc) in rule_files() {
        for g in doc["groups"].as_sequence().into_iter().flatten() {
            for r in g["rules"].as_sequence().into_iter().flatten() {
                let name = r["alert"].as_str().or(r["record"].as_str()).unwrap_or("?");
                if let Some(rec) = r["record"].as_str() {
                    recorded.insert(rec.to_string());
                }
                let expr = r["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{file}/{name}: no expr"));
                exprs.push((format!("{file}/{name}"), expr.to_string()));
            }
        }
    }
    (exprs, recorded)
}

/// The plugin type behind a datasource reference, resolving the `$datasource`-style
/// variable through the dashboard's templating.
fn datasource_type(dashboard: &Value, ds: &Value) -> Option<String> {
    let (ty, uid) = match ds {
        Value::Object(o) => (
            o.get("type")?.as_str(),
            o.get("uid").and_then(Value::as_str),
        ),
        Value::String(s) => (None, Some(s.as_str())),
        _ => return None,
    };
    if let Some(t) = ty {
        return Some(t.to_string());
    }
    let var = uid?.trim_start_matches('$').trim_matches(['{', '}']);
    dashboard["templating"]["list"]
        .as_array()?
        .iter()
        .find(|v| v["type"] == "datasource" && v["name"] == var)
        .and_then(|v| v["query"].as_str())
        .map(str::to_string)
}

fn all_panels(panels: &Value, out: &mut Vec<Value>) {
    for p in panels.as_array().into_iter().flatten() {
        out.push(p.clone());
        // Collapsed rows carry their panels inside.
        all_panels(&p["panels"], out);
    }
}

/// (where, PromQL) of every Prometheus query of the dashboards: panel targets and
/// query variables. Loki (LogQL) panels and variables are left out by datasource type.
fn dashboard_exprs() -> (Vec<(String, String)>, Vec<String>) {
    let mut exprs = Vec::new();
    let mut skipped = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards/*.json");
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut panels = Vec::new();
        all_panels(&d["panels"], &mut panels);
        for p in &panels {
            let title = p["title"].as_str().unwrap_or("?");
            for t in p["targets"].as_array().into_iter().flatten() {
                let ds = if t["datasource"].is_null() {
                    &p["datasource"]
                } else {
                    &t["datasource"]
                };
                let ty = datasource_type(&d, ds)
                    .unwrap_or_else(|| panic!("{file}/{title}: no datasource type"));
                let Some(expr) = t["expr"].as_str() else {
                    continue;
                };
                let at = format!("{file}/{title}/{}", t["refId"].as_str().unwrap_or("?"));
                match ty.as_str() {
                    "prometheus" => exprs.push((at, expr.to_string())),
                    _ => skipped.push(format!("{at} ({ty})")),
                }
            }
        }
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            if v["type"] != "query" {
                continue;
            }
            let at = format!("{file}/variable {}", v["name"]);
            let ty = datasource_type(&d, &v["datasource"]).unwrap_or_default();
            if ty != "prometheus" {
                skipped.push(format!("{at} ({ty})"));
                continue;
            }
            let q = v["query"]
                .as_str()
                .or(v["query"]["query"].as_str())
                .unwrap_or_default()
                .trim();
            // Grafana's Prometheus variable functions wrap PromQL or a bare selector.
            let inner = |f: &str| q.strip_prefix(f).and_then(|r| r.strip_suffix(')'));
            if let Some(args) = inner("label_values(") {
                // label_values(label) alone names no metric.
                if let Some((selector, _label)) = args.rsplit_once(',') {
                    exprs.push((at, selector.trim().to_string()));
                }
            } else if let Some(e) = inner("query_result(") {
                exprs.push((at, e.to_string()));
            } else if let Some(e) = inner("series(") {
                exprs.push((at, e.to_string()));
            } else if !q.starts_with("label_names(") && !q.starts_with("metrics(") {
                exprs.push((at, q.to_string()));
            }
        }
    }
    (exprs, skipped)
}

/// Grafana's variables replaced so the expression parses as Prometheus receives it:
/// interval variables become durations, others a label value inside quotes and a number
/// outside them.
fn interpolate(expr: &str) -> String {
    let mut s = expr
        .replace("$__rate_interval", "5m")
        .replace("${__rate_interval}", "5m")
        .replace("$__interval_ms", "60000")
        .replace("$__interval", "1m")
        .replace("${__interval}", "1m")
        .replace("$__range_s", "3600")
        .replace("$__range_ms", "3600000")
        .replace("$__range", "1h")
        .replace("${__range}", "1h");
    let mut out = String::with_capacity(s.len());
    let mut in_quotes: Option<char> = None;
    let chars: Vec<char> = std::mem::take(&mut s).chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' if in_quotes == Some(c) => in_quotes = None,
            '"' | '\'' | '`' if in_quotes.is_none() => in_quotes = Some(c),
            '\\' if in_quotes.is_some() && i + 1 < chars.len() => {
                out.push(c);
                out.push(chars[i + 1]);
                i += 2;
                continue;
            }
            _ => {}
        }
        if c == '$' {
            let mut j = i + 1;
            if chars.get(j) == Some(&'{') {
                while j < chars.len() && chars[j] != '}' {
                    j += 1;
                }
                j += 1;
            } else {
                while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
            }
            out.push_str(if in_quotes.is_some() { "x" } else { "1" });
            i = j;
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

/// The metric name a selector asks for: its name, or an equality `__name__` matcher.
/// `Err` for a regex on `__name__`, which no static check can resolve.
fn selector_name(vs: &VectorSelector) -> Result<Option<String>, String> {
    if let Some(n) = &vs.name {
        return Ok(Some(n.clone()));
    }
    match vs.matchers.matchers.iter().find(|m| m.name == "__name__") {
        Some(m) if m.op == MatchOp::Equal => Ok(Some(m.value.clone())),
        Some(m) => Err(format!("__name__ matcher {m} cannot be checked")),
        None => Ok(None),
    }
}

fn metric_names(e: &Expr, out: &mut BTreeSet<String>, errors: &mut Vec<String>) {
    let mut selector = |vs: &VectorSelector| match selector_name(vs) {
        Ok(Some(n)) => {
            out.insert(n);
        }
        Ok(None) => errors.push(format!("selector without a metric name: {vs}")),
        Err(e) => errors.push(e),
    };
    match e {
        Expr::VectorSelector(vs) => selector(vs),
        Expr::MatrixSelector(ms) => selector(&ms.vs),
        Expr::Aggregate(a) => {
            metric_names(&a.expr, out, errors);
            if let Some(p) = &a.param {
                metric_names(p, out, errors);
            }
        }
        Expr::Unary(u) => metric_names(&u.expr, out, errors),
        Expr::Binary(b) => {
            metric_names(&b.lhs, out, errors);
            metric_names(&b.rhs, out, errors);
        }
        Expr::Paren(p) => metric_names(&p.expr, out, errors),
        Expr::Subquery(s) => metric_names(&s.expr, out, errors),
        Expr::Call(c) => {
            for a in &c.args.args {
                metric_names(a, out, errors);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// metric name → where it is used, for every rule and Prometheus dashboard query; panics
/// naming the expression if one does not parse.
fn used_metrics() -> (BTreeMap<String, Vec<String>>, BTreeSet<String>, usize) {
    let (mut exprs, recorded) = rule_exprs();
    let (dash, skipped) = dashboard_exprs();
    eprintln!(
        "{} rule and {} dashboard PromQL expressions; not PromQL (skipped): {skipped:?}",
        exprs.len(),
        dash.len()
    );
    exprs.extend(dash);
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for (at, expr) in &exprs {
        let ast = match parser::parse(&interpolate(expr)) {
            Ok(a) => a,
            Err(e) => {
                problems.push(format!("{at}: does not parse: {e}\n    {expr}"));
                continue;
            }
        };
        let mut names = BTreeSet::new();
        let mut errors = Vec::new();
        metric_names(&ast, &mut names, &mut errors);
        problems.extend(errors.into_iter().map(|e| format!("{at}: {e}")));
        for n in names {
            used.entry(n).or_default().push(at.clone());
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    (used, recorded, exprs.len())
}

#[test]
fn the_expression_walk_finds_every_selector() {
    let ast = parser::parse(&interpolate(
        r#"sum by (le) (rate(a_bucket{w=~"$workspace"}[$__rate_interval])) / on() group_left
           max_over_time(b[5m:1m]) > bool topk(3, {__name__="c"}) and -d offset 5m
           unless absent(e) > $threshold"#,
    ))
    .unwrap();
    let mut names = BTreeSet::new();
    let mut errors = Vec::new();
    metric_names(&ast, &mut names, &mut errors);
    let want: BTreeSet<String> = ["a_bucket", "b", "c", "d", "e"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(names, want);
    assert!(errors.is_empty(), "{errors:?}");
    let ast = parser::parse(r#"{__name__=~"x.*"}"#).unwrap();
    metric_names(&ast, &mut names, &mut errors);
    assert_eq!(errors.len(), 1, "a regex on __name__ is reported");
    assert_eq!(
        sample_names("# TYPE a counter\na_total{x=\"1\"} 3\nb 1 123\n# EOF\n"),
        ["a_total".to_string(), "b".into()].into_iter().collect()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_alerts_and_dashboards_use_is_exported_by_the_running_programs() {
    // Fails before anything is started if an expression does not parse.
    let (used, recorded, expressions) = used_metrics();

    let rag = common::start_rag_core();
    let dir = common::temp_dir("metrics-live");
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    std::fs::write(dir.join("logs/app.log"), "{\"msg\":\"hello\"}\n").unwrap();
    std::fs::write(
        dir.join("quotas.yaml"),
        "plans:\n  free:\n    requests_per_minute: 10\n",
    )
    .unwrap();
    // A port nobody listens on: the OTLP exporter fails there, so its counters move.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let yaml = format!(
        "identity:\n  provider: introspect\n\
         quotas:\n  policy_file: {d}/quotas.yaml\n\
         logship:\n  enabled: true\n  data_dir: {d}/state\n  paths: [\"{d}/logs/*.log\"]\n  \
         sinks:\n    - type: file\n      name: file\n      path: {d}/shipped.ndjson\n\
         rules:\n  enabled: true\n  rule_files: [\"{root}/alerts/*.yaml\"]\n  \
         evaluation_interval: 1s\n  scrape:\n    interval: 1s\n",
        d = dir.display(),
        root = root().display(),
    );
    let agent = common::Agent::start_env(
        &rag.base,
        &yaml,
        &[
            ("MINIRAG_INTERNAL_TOKEN", common::TOKEN),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &dead_url),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "200"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    );
    let c = common::client();
    let post = |path: &str, body: Value| {
        c.post(agent.url(path))
            .bearer_auth(&rag.key)
            .json(&body)
            .send()
    };
    let r = post(
        "/api/v1/ingest/text",
        serde_json::json!({"documents": [{"title": "t", "text": "The sky is blue."}]}),
    )
    .await
    .unwrap();
    assert!(r.status().is_success(), "ingest: {}", r.status());
    let r = post(
        "/api/v1/ask",
        serde_json::json!({"question": "What colour is the sky?"}),
    )
    .await
    .unwrap();
    assert!(r.status().is_success(), "ask: {}", r.status());
    // Over the workspace's chunk quota (2 in the test config): rag-core refuses.
    let r = post(
        "/api/v1/ingest/text",
        serde_json::json!({"documents": [
            {"title": "a", "text": "Grass is green."},
            {"title": "b", "text": "Snow is white."},
            {"title": "c", "text": "Coal is black."}
        ]}),
    )
    .await
    .unwrap();
    eprintln!("ingest over the chunk quota: {}", r.status());
    let r = c
        .get(agent.url("/api/v1/sources/does-not-exist"))
        .bearer_auth(&rag.key)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "404: {}", r.status());
    // A background job (the worker pool runs even with jobs.enabled off): the job
    // counters and the duration histogram get their first series when it ends. Polled on
    // rag-core directly so the polls do not spend the rate quota.
    let r = post("/api/v1/jobs", serde_json::json!({"name": "embed"}))
        .await
        .unwrap();
    assert!(r.status().is_success(), "job: {}", r.status());
    let job: Value = r.json().await.unwrap();
    let id = job["job_id"].as_str().expect("job_id").to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let v: Value = c
            .get(format!("{}/api/v1/jobs/{id}", rag.base))
            .bearer_auth(&rag.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if matches!(v["status"].as_str(), Some("succeeded" | "dead_lettered")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "job never ended: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut refused = false;
    for _ in 0..20 {
        let r = c
            .get(agent.url("/api/v1/sources"))
            .bearer_auth(&rag.key)
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            refused = true;
            break;
        }
    }
    assert!(refused, "the rate quota never refused");
    let _ = c.get(format!("{}/readyz", agent.admin)).send().await;
    let scrape = |url: String| {
        let c = c.clone();
        async move {
            let r = c.get(&url).send().await.unwrap();
            assert!(r.status().is_success(), "{url}: {}", r.status());
            r.text().await.unwrap()
        }
    };
    let exported_somewhere = |name: &String, pages: &[&BTreeSet<String>]| {
        pages.iter().any(|p| p.contains(name))
            || recorded.contains(name)
            || written_by_the_evaluator(name)
            || ALLOWED.iter().any(|(n, _)| n == name)
    };
    // The evaluator, the shipper and the failing exporter move on their own clocks:
    // scrape until every name is there or a generous deadline passes (a slow CI machine
    // must not turn into a false "not exported").
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (agent_names, rag_names) = loop {
        let agent_names = sample_names(&scrape(format!("{}/metrics", agent.admin)).await);
        let rag_names = sample_names(&scrape(format!("{}/metrics", rag.base)).await);
        let done = used
            .keys()
            .all(|n| exported_somewhere(n, &[&agent_names, &rag_names]));
        if done || std::time::Instant::now() > deadline {
            break (agent_names, rag_names);
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    assert!(
        agent_names.contains("ask_requests_total"),
        "{agent_names:?}"
    );
    assert!(
        rag_names.contains("rag_core_http_requests_total"),
        "{rag_names:?}"
    );
    // Names are compared as exported: a histogram is only visible through its series.
    assert!(
        agent_names.contains("ask_request_latency_seconds_bucket")
            && !agent_names.contains("ask_request_latency_seconds"),
        "{agent_names:?}"
    );

    let mut missing = Vec::new();
    let mut allowed = Vec::new();
    let mut report = String::new();
    for (name, at) in &used {
        let source = if agent_names.contains(name) {
            "agent"
        } else if rag_names.contains(name) {
            "rag-core"
        } else if recorded.contains(name) {
            "recording rule"
        } else if written_by_the_evaluator(name) {
            "rule evaluator"
        } else if let Some((_, why)) = ALLOWED.iter().find(|(n, _)| n == name) {
            allowed.push(format!("{name}: {why}"));
            "ALLOWED"
        } else {
            missing.push(format!("{name} (used by {})", at.join(", ")));
            "MISSING"
        };
        report.push_str(&format!("  {name}: {source}\n"));
    }
    eprintln!(
        "{} metric names in {expressions} expressions:\n{report}allowed without a live series:\n  {}",
        used.len(),
        allowed.join("\n  ")
    );
    assert!(
        missing.is_empty(),
        "used by alerts or dashboards but not exported by the running programs:\n  {}",
        missing.join("\n  ")
    );
}
