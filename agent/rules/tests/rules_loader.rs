//! Rule-file loading: every problem names file, line, group and rule.

use std::path::PathBuf;

use minirag_rules::rules::{LoadError, LoadOptions, RuleFileError, load_files, load_files_with};

fn write(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("minirag-rules-loader-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn errors(name: &str, text: &str) -> Vec<RuleFileError> {
    let p = write(name, text);
    let opts = LoadOptions {
        check_engine_support: false,
        ..LoadOptions::default()
    };
    match load_files_with(&[&p], opts) {
        Err(LoadError::Invalid(e)) => e,
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("{name} loaded"),
    }
}

fn one(name: &str, text: &str) -> RuleFileError {
    let e = errors(name, text);
    assert_eq!(e.len(), 1, "{e:?}");
    e.into_iter().next().unwrap()
}

#[test]
fn valid_file_loads_groups_and_rules() {
    let p = write(
        "ok.yaml",
        "groups:\n  - name: a\n    interval: 30s\n    limit: 5\n    query_offset: 1m\n    rules:\n      - record: job:up:sum\n        expr: sum by (job) (up)\n      - alert: Down\n        expr: up == 0\n        for: 5m\n        keep_firing_for: 2m\n        labels: {severity: page, priority: 1}\n        annotations: {summary: '{{ $labels.job }} down'}\n  - name: b\n    rules: []\n",
    );
    let opts = LoadOptions {
        check_engine_support: false,
        ..LoadOptions::default()
    };
    let groups = load_files_with(&[&p], opts).unwrap();
    assert_eq!(groups.len(), 2);
    let g = &groups[0];
    assert_eq!(g.name(), "a");
    assert_eq!(g.interval_ms(), 30_000);
    assert_eq!(g.limit(), 5);
    assert_eq!(g.query_offset_ms(), 60_000);
    assert_eq!(g.rules().len(), 2);
    assert_eq!(g.rules()[0].rule_type(), "recording");
    let a = &g.rules()[1];
    assert_eq!(a.rule_type(), "alerting");
    assert_eq!(a.name(), "Down");
    assert_eq!(a.for_ms(), 300_000);
    assert_eq!(a.keep_firing_for_ms(), 120_000);
    assert!(
        a.labels()
            .contains(&("priority".to_string(), "1".to_string()))
    );
    assert_eq!(a.health().as_str(), "unknown");
    assert_eq!(groups[1].interval_ms(), 60_000, "default interval");
}

#[test]
fn yaml_syntax_error_has_a_line() {
    let e = one(
        "syntax.yaml",
        "groups:\n  - name: a\n    rules:\n      - alert: X\n        expr: [\n",
    );
    assert!(e.line.is_some(), "{e}");
    assert!(e.to_string().starts_with(&format!("{}:", e.file.display())));
}

#[test]
fn unknown_field_is_refused_with_its_line() {
    let e = one(
        "unknown.yaml",
        "groups:\n  - name: a\n    rules:\n      - alert: X\n        expr: up == 0\n        anotations: {}\n",
    );
    assert!(e.message.contains("unknown field `anotations`"), "{e}");
    assert_eq!(e.line, Some(6));
    assert_eq!(e.group.as_deref(), Some("a"));
    assert_eq!(e.rule_index, Some(1));
    assert_eq!(e.rule_name.as_deref(), Some("X"));
}

#[test]
fn promql_error_names_file_line_group_and_rule() {
    let e = one(
        "badexpr.yaml",
        "groups:\n  - name: g1\n    rules:\n      - record: ok:x\n        expr: up\n      - alert: Broken\n        expr: sum(rate(up[5m])\n",
    );
    assert_eq!(e.line, Some(6));
    assert_eq!(e.group.as_deref(), Some("g1"));
    assert_eq!(e.rule_index, Some(2));
    assert_eq!(e.rule_name.as_deref(), Some("Broken"));
    assert!(e.message.starts_with("could not parse expression"), "{e}");
    let s = e.to_string();
    assert!(
        s.contains("badexpr.yaml:6: group \"g1\", rule 2, \"Broken\": could not parse"),
        "{s}"
    );
}

#[test]
fn semantic_errors_are_all_reported() {
    let e = errors(
        "many.yaml",
        r#"groups:
  - name: g
    rules:
      - record: bad name
        expr: up
        for: 5m
      - alert: A
        expr: up
        for: 5x
        labels:
          "bad-label": x
        annotations:
          summary: "{{ $labels.job "
      - alert: B
        record: b
        expr: up
      - alert: C
  - name: g
    rules: []
"#,
    );
    let text: Vec<String> = e.iter().map(|x| x.to_string()).collect();
    let has = |s: &str| text.iter().any(|t| t.contains(s));
    assert!(has("invalid recording rule name: bad name"), "{text:#?}");
    assert!(has("invalid field 'for' in recording rule"), "{text:#?}");
    assert!(has("for: not a valid duration string: \"5x\""), "{text:#?}");
    assert!(has("invalid label name: bad-label"), "{text:#?}");
    assert!(
        has("annotation \"summary\": template: __alert_A"),
        "{text:#?}"
    );
    assert!(
        has("only one of 'record' and 'alert' must be set"),
        "{text:#?}"
    );
    assert!(
        has("rule 4, \"C\": field 'expr' must be set in rule"),
        "{text:#?}"
    );
    assert!(
        has("groupname: \"g\" is repeated in the same file"),
        "{text:#?}"
    );
    // Rules are located by their own lines.
    let for_err = e.iter().find(|x| x.message.contains("5x")).unwrap();
    assert_eq!(for_err.line, Some(7));
}

#[test]
fn the_same_group_name_in_two_files_is_allowed() {
    let a = write("a.yaml", "groups:\n  - name: same\n    rules: []\n");
    let b = write("b.yaml", "groups:\n  - name: same\n    rules: []\n");
    assert_eq!(load_files(&[a, b]).unwrap().len(), 2);
}

#[test]
fn missing_file_is_an_io_error() {
    let r = load_files(&["/nonexistent/rules.yaml"]);
    assert!(matches!(r, Err(LoadError::Io { .. })));
}

#[test]
fn shipped_rules_load_with_engine_support_checked() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../alerts/minirag.rules.yaml");
    let groups = load_files(&[p]).unwrap();
    let names: Vec<&str> = groups
        .iter()
        .flat_map(|g| g.rules())
        .filter(|r| r.is_alerting())
        .map(|r| r.name())
        .collect();
    assert!(names.contains(&"AskLatencyP95High"));
    for r in groups
        .iter()
        .flat_map(|g| g.rules())
        .filter(|r| r.is_alerting())
    {
        let ann: Vec<&str> = r.annotations().iter().map(|(k, _)| k.as_str()).collect();
        for want in ["summary", "description", "runbook_url"] {
            assert!(ann.contains(&want), "{} lacks {want}", r.name());
        }
        let url = &r
            .annotations()
            .iter()
            .find(|(k, _)| k == "runbook_url")
            .unwrap()
            .1;
        assert!(
            url.ends_with(&format!("#{}", r.name().to_lowercase())),
            "{url}"
        );
        assert!(r.labels().iter().any(|(k, _)| k == "severity"));
    }
}

#[test]
fn check_reports_counts_errors_and_duplicate_lint() {
    use minirag_rules::rules::check_files;
    let opts = LoadOptions {
        check_engine_support: false,
        ..LoadOptions::default()
    };
    let good = write(
        "good.yaml",
        "groups:\n  - name: a\n    rules:\n      - record: x:y\n        expr: up\n",
    );
    let dup = write(
        "dup.yaml",
        "groups:\n  - name: a\n    rules:\n      - record: x:y\n        expr: up\n        labels: {a: b}\n      - record: x:y\n        expr: sum(up)\n        labels: {a: b}\n",
    );
    let bad = write(
        "bad.yaml",
        "groups:\n  - name: a\n    rules:\n      - record: x:y\n",
    );
    let r = check_files(&[&good, &dup, &bad], opts);
    assert!(!r.success());
    assert_eq!(r.files[0].rules, Some(1));
    assert!(r.files[0].errors.is_empty() && r.files[0].lint.is_none());
    // Duplicates warn like promtool's default lint but do not fail the file.
    assert!(r.files[1].errors.is_empty());
    assert_eq!(
        r.files[1].lint.as_deref(),
        Some(
            "1 duplicate rule(s) found.\nMetric: x:y\nLabel(s):\n\ta: b\nMight cause inconsistency while recording expressions"
        )
    );
    assert_eq!(r.files[2].errors.len(), 1);
    let (out, err) = r.render();
    assert!(out.contains(&format!(
        "Checking {}\n  SUCCESS: 1 rules found\n",
        good.display()
    )));
    assert!(err.contains("lint error 1 duplicate rule(s) found."));
    assert!(err.contains("field 'expr' must be set in rule"));
    assert!(check_files(&[&good, &dup], opts).success());
}
