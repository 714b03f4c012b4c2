//! `minirag-agent rules check|test` against the shipped rules, and against promtool:
//! both tools run the same unit-test files and must fail exactly the same cases.

mod common;

use common::tool;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn agent(args: &[&str], files: &[PathBuf]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_minirag-agent"))
        .args(args)
        .args(files)
        .output()
        .unwrap()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    v.sort();
    v
}

fn rule_files() -> Vec<PathBuf> {
    let v = yaml_files(&root().join("alerts"));
    assert!(!v.is_empty(), "no rule files in alerts/");
    v
}

fn test_files() -> Vec<PathBuf> {
    let v = yaml_files(&root().join("alerts/tests"));
    assert!(!v.is_empty(), "no rule tests in alerts/tests/");
    v
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("minirag-rules-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn rules_check_accepts_the_shipped_rules() {
    let files = rule_files();
    let out = agent(&["rules", "check"], &files);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for f in &files {
        assert!(
            stdout.contains(&format!("Checking {}", f.display())),
            "{stdout}"
        );
    }
    assert_eq!(
        stdout.matches("  SUCCESS: ").count(),
        files.len(),
        "{stdout}"
    );
    if let Some(promtool) = tool("promtool") {
        let p = Command::new(promtool)
            .args(["check", "rules"])
            .args(&files)
            .output()
            .unwrap();
        assert!(p.status.success(), "promtool: {}", text(&p.stderr));
        // Same files, same rule counts, same report.
        assert_eq!(text(&p.stdout), stdout);
    }
}

#[test]
fn rules_check_names_file_line_and_rule_of_a_broken_file() {
    let dir = temp_dir("check");
    let bad = dir.join("bad.rules.yaml");
    std::fs::write(
        &bad,
        "groups:\n  - name: broken\n    rules:\n      - record: fine:sum\n        expr: sum(up)\n      - alert: BadExpr\n        expr: rate(up[5m]\n        for: 5m\n",
    )
    .unwrap();
    let good = root().join("alerts/minirag.rules.yaml");
    let out = agent(&["rules", "check"], &[bad.clone(), good]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("Checking {}", bad.display())),
        "{stdout}"
    );
    // The good file is still checked and reported.
    assert!(stdout.contains("  SUCCESS: 8 rules found"), "{stdout}");
    assert!(stderr.contains("  FAILED:"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:6: group \"broken\", rule 2, \"BadExpr\": could not parse expression",
            bad.display()
        )),
        "{stderr}"
    );
    if let Some(promtool) = tool("promtool") {
        let p = Command::new(promtool)
            .args(["check", "rules"])
            .arg(&bad)
            .output()
            .unwrap();
        assert!(!p.status.success(), "promtool accepted the broken file");
    }
}

/// Failed cases as (kind, subject, time) from promtool-format failure output.
fn failed_cases(stderr: &str) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for line in stderr.lines() {
        let l = line.trim_start();
        if let Some(rest) = l.strip_prefix("alertname: ") {
            if let Some((name, rest)) = rest.split_once(", time: ") {
                let time = rest.trim_end().trim_end_matches(',');
                out.insert(("alert".into(), name.into(), time.into()));
            }
        } else if let Some(rest) = l.strip_prefix("expr: ") {
            if let Some((expr, rest)) = rest.rsplit_once(", time: ") {
                let time = rest.split(',').next().unwrap_or_default();
                out.insert(("expr".into(), expr.into(), time.into()));
            }
        } else if let Some(rest) = l.strip_prefix("rule: ")
            && let Some((rule, rest)) = rest.split_once(", time: ")
        {
            let time = rest.split(',').next().unwrap_or_default();
            out.insert(("rule_error".into(), rule.into(), time.into()));
        }
    }
    out
}

struct Run {
    passed: bool,
    failed: BTreeSet<(String, String, String)>,
    output: String,
}

fn run(cmd: &mut Command) -> Run {
    let o = cmd.output().unwrap();
    let stderr = text(&o.stderr);
    Run {
        passed: o.status.success(),
        failed: failed_cases(&stderr),
        output: format!("{}{stderr}", text(&o.stdout)),
    }
}

/// Runs one test file with both tools and checks that they agree; returns our run.
fn agree(promtool: &Path, file: &Path) -> Run {
    let theirs = run(Command::new(promtool).args(["test", "rules"]).arg(file));
    let ours = run(Command::new(env!("CARGO_BIN_EXE_minirag-agent"))
        .args(["rules", "test"])
        .arg(file));
    assert_eq!(
        ours.passed,
        theirs.passed,
        "{}: exit status differs\n--- promtool\n{}\n--- minirag-agent\n{}",
        file.display(),
        theirs.output,
        ours.output
    );
    assert_eq!(
        ours.failed,
        theirs.failed,
        "{}: failed cases differ\n--- promtool\n{}\n--- minirag-agent\n{}",
        file.display(),
        theirs.output,
        ours.output
    );
    ours
}

#[test]
fn rules_test_passes_the_shipped_tests() {
    let out = agent(&["rules", "test"], &test_files());
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("  SUCCESS"));
}

#[test]
fn promtool_and_the_agent_agree_on_every_test_file() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    for f in test_files() {
        let r = agree(&promtool, &f);
        assert!(r.passed, "{}: {}", f.display(), r.output);
    }
    let testdata = root().join("agent/rules/tests/testdata");
    let r = agree(&promtool, &testdata.join("passing.test.yaml"));
    assert!(r.passed);
    let r = agree(&promtool, &testdata.join("failing.test.yaml"));
    assert!(!r.passed);
    assert_eq!(r.failed.len(), 2, "{:?}", r.failed);
    let r = agree(&promtool, &testdata.join("ordered.test.yaml"));
    assert!(r.passed);
    // Template expansion, error texts included, byte for byte.
    let r = agree(&promtool, &testdata.join("templates.test.yaml"));
    assert!(r.passed, "{}", r.output);
    // The same file with the groups evaluated the other way round fails in both.
    let dir = temp_dir("order");
    std::fs::copy(
        testdata.join("ordered.rules.yaml"),
        dir.join("ordered.rules.yaml"),
    )
    .unwrap();
    let reversed = std::fs::read_to_string(testdata.join("ordered.test.yaml"))
        .unwrap()
        .replace("[second, first]", "[first, second]");
    std::fs::write(dir.join("reversed.test.yaml"), reversed).unwrap();
    let r = agree(&promtool, &dir.join("reversed.test.yaml"));
    assert!(!r.passed);
    assert_eq!(r.failed.len(), 1, "{:?}", r.failed);
}

#[test]
fn promtool_and_the_agent_fail_the_same_cases_of_a_broken_shipped_test() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    // A copy of the shipped tests with two wrong expectations, next to the rules.
    let dir = temp_dir("mutated");
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    std::fs::copy(
        root().join("alerts/minirag.rules.yaml"),
        dir.join("minirag.rules.yaml"),
    )
    .unwrap();
    let orig =
        std::fs::read_to_string(root().join("alerts/tests/minirag.rules.test.yaml")).unwrap();
    let mutated = orig
        .replace("description: 25% of asks", "description: 26% of asks")
        .replace("value: 0.25", "value: 0.5")
        .replace("eval_time: 25m", "eval_time: 14m");
    assert_ne!(orig, mutated);
    let f = dir.join("tests/mutated.test.yaml");
    std::fs::write(&f, mutated).unwrap();
    let r = agree(&promtool, &f);
    assert!(!r.passed);
    assert_eq!(r.failed.len(), 3, "{:?}", r.failed);
}
