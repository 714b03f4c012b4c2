//! The promtool-format unit-test runner on the testdata files.

use std::path::PathBuf;

use minirag_rules::promql::Engine;
use minirag_rules::unittest::{CaseKind, run_files};

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/testdata")
        .join(name)
}

#[test]
fn passing_file_passes_every_case() {
    let r = run_files(&Engine::default(), &[testdata("passing.test.yaml")]);
    assert!(r.passed(), "{:#?}", r);
    let cases = &r.files[0].groups[0].cases;
    assert_eq!(cases.len(), 5);
    let (out, err) = r.render();
    assert!(out.contains("  SUCCESS"));
    assert!(err.is_empty());
}

#[test]
fn failing_file_fails_exactly_the_wrong_cases() {
    let r = run_files(&Engine::default(), &[testdata("failing.test.yaml")]);
    assert!(!r.passed());
    let failed: Vec<(CaseKind, &str, &str)> = r.files[0].groups[0]
        .cases
        .iter()
        .filter(|c| !c.passed())
        .map(|c| (c.kind, c.subject.as_str(), c.eval_time.as_str()))
        .collect();
    assert_eq!(
        failed,
        vec![
            (CaseKind::Alert, "InstanceDown", "3m"),
            (CaseKind::Expr, "job:up:sum", "4m")
        ]
    );
    let (_, err) = r.render();
    assert!(err.contains("  FAILED:"));
    assert!(
        err.contains("    alertname: InstanceDown, time: 3m, \n        exp:["),
        "{err}"
    );
    assert!(
        err.contains("        got: {__name__=\"job:up:sum\", job=\"api\"} 0E+00"),
        "{err}"
    );
}

#[test]
fn group_eval_order_decides_what_later_groups_see() {
    let r = run_files(&Engine::default(), &[testdata("ordered.test.yaml")]);
    assert!(r.passed(), "{:#?}", r.files[0].failures());
}

#[test]
fn templates_expand_like_promtool() {
    // The expectations in this file are promtool 2.42's own output.
    let r = run_files(&Engine::default(), &[testdata("templates.test.yaml")]);
    assert!(r.passed(), "{:#?}", r.files[0].failures());
}

#[test]
fn shipped_alert_tests_pass() {
    let f = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../alerts/tests/minirag.rules.test.yaml");
    let r = run_files(&Engine::default(), &[f]);
    assert!(r.passed(), "{:#?}", r.files[0].failures());
}

#[test]
fn broken_test_files_fail_with_a_reason() {
    let dir = std::env::temp_dir().join(format!("minirag-unittest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad_yaml = dir.join("bad.yaml");
    std::fs::write(&bad_yaml, "tests: [\n").unwrap();
    let unknown = dir.join("unknown.yaml");
    std::fs::write(
        &unknown,
        "rule_files: []\ntests:\n  - interval: 1m\n    inputs: []\n",
    )
    .unwrap();
    let missing_rules = dir.join("missing.yaml");
    std::fs::write(
        &missing_rules,
        "rule_files: [nope.yaml]\ntests:\n  - promql_expr_test:\n      - expr: '1'\n        eval_time: 0m\n        exp_samples: [{labels: '{}', value: 1}]\n",
    )
    .unwrap();
    let r = run_files(&Engine::default(), &[bad_yaml, unknown, missing_rules]);
    assert!(r.files.iter().all(|f| !f.passed()));
    assert!(
        r.files[1]
            .error
            .as_deref()
            .unwrap()
            .contains("unknown field `inputs`")
    );
    assert!(r.files[2].groups[0].errors[0].contains("nope.yaml"));
}
