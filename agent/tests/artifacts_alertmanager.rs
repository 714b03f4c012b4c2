//! The example Alertmanager configuration and notification templates
//! (`alerts/alertmanager/`), checked with the real tools of the Debian
//! `prometheus-alertmanager` package: `amtool check-config`, `amtool config routes test`,
//! `amtool template render`, and a live Alertmanager for the inhibition rule.
//! Outside CI a missing tool skips with a printed reason; with `CI=true` it fails.

mod common;

use common::tool;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn dir() -> PathBuf {
    root().join("alerts/alertmanager")
}

fn config() -> PathBuf {
    dir().join("alertmanager.yml")
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn amtool_check_config_passes() {
    let Some(amtool) = tool("amtool") else {
        return;
    };
    let (ok, text) = run(Command::new(amtool).arg("check-config").arg(config()));
    assert!(ok, "amtool check-config:\n{text}");
    for part in ["1 inhibit rules", "2 receivers", "1 templates"] {
        assert!(text.contains(part), "{part} not in:\n{text}");
    }
    let templates: Vec<_> = std::fs::read_dir(dir().join("templates"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "tmpl"))
        .collect();
    assert!(!templates.is_empty(), "templates/*.tmpl matches nothing");
}

fn yaml(path: &Path) -> serde_yaml::Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// An alerting rule of `alerts/*.yaml`.
struct Rule {
    alert: String,
    severity: String,
    runbook_url: String,
}

/// The alerting rules in `alerts/*.yaml` (none while there are none).
fn rules() -> Vec<Rule> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root().join("alerts")).unwrap() {
        let path = entry.unwrap().path();
        if !path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            continue;
        }
        let doc = yaml(&path);
        for group in doc["groups"].as_sequence().into_iter().flatten() {
            for rule in group["rules"].as_sequence().into_iter().flatten() {
                if let Some(alert) = rule["alert"].as_str() {
                    let text = |v: &serde_yaml::Value| v.as_str().unwrap_or("").to_string();
                    out.push(Rule {
                        alert: alert.to_string(),
                        severity: text(&rule["labels"]["severity"]),
                        runbook_url: text(&rule["annotations"]["runbook_url"]),
                    });
                }
            }
        }
    }
    out
}

/// The anchors GitHub and most Markdown renderers give the headings of a file: lower
/// case, punctuation other than `-` and `_` dropped, spaces as `-`.
fn anchors(markdown: &str) -> Vec<String> {
    markdown
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

#[test]
fn every_alert_has_a_runbook_section_named_after_it() {
    let runbook = std::fs::read_to_string(root().join("docs/runbook.md")).unwrap();
    let anchors = anchors(&runbook);
    assert!(anchors.contains(&"retention-and-access-control".to_string()));
    assert!(anchors.contains(&"asklatencyp95high".to_string()));
    let rules = rules();
    for rule in &rules {
        let anchor = rule.alert.to_lowercase();
        assert!(
            anchors.contains(&anchor),
            "docs/runbook.md has no section \"### {}\"",
            rule.alert
        );
        assert!(
            rule.runbook_url.ends_with(&format!("runbook.md#{anchor}")),
            "{}: runbook_url {:?} does not point at docs/runbook.md#{anchor}",
            rule.alert,
            rule.runbook_url
        );
    }
    // A section for an alert no rule defines is stale or the rule was renamed; printed
    // rather than failed, so the rules can grow while their sections are written first.
    let section_start = runbook.find("## Alerts").unwrap();
    let section_end = runbook.find("## Retention and access control").unwrap();
    let stale: Vec<&str> = runbook[section_start..section_end]
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .filter(|name| !rules.iter().any(|r| r.alert == *name))
        .collect();
    if !stale.is_empty() {
        eprintln!("docs/runbook.md documents alerts no rule defines: {stale:?}");
    }
}

#[test]
fn critical_alerts_page_and_the_rest_go_to_chat() {
    let am = yaml(&config());
    let receiver = |name: &str| {
        am["receivers"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|r| r["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no receiver {name}"))
            .clone()
    };
    assert!(receiver("pager")["webhook_configs"][0]["url"].is_string());
    let chat = &receiver("chat")["slack_configs"][0];
    for field in ["title", "text"] {
        assert!(
            chat[field]
                .as_str()
                .unwrap()
                .contains("template \"minirag."),
            "chat {field} uses the shipped templates"
        );
    }
    let inhibit = &am["inhibit_rules"][0];
    assert_eq!(
        inhibit["source_matchers"][0].as_str(),
        Some("severity=\"critical\"")
    );
    assert_eq!(
        inhibit["target_matchers"][0].as_str(),
        Some("severity=\"warning\"")
    );
    assert_eq!(inhibit["equal"][0].as_str(), Some("alertname"));

    let Some(amtool) = tool("amtool") else {
        return;
    };
    let route = |labels: &[&str]| {
        let (ok, text) = run(Command::new(&amtool)
            .args(["config", "routes", "test", "--config.file"])
            .arg(config())
            .args(labels));
        assert!(ok, "{labels:?}: {text}");
        // amtool warns on stderr that --config.file overrides --alertmanager.url.
        text.lines()
            .find(|l| !l.starts_with("Warning:"))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    assert_eq!(route(&["alertname=X", "severity=critical"]), "pager");
    assert_eq!(route(&["alertname=X", "severity=warning"]), "chat");
    assert_eq!(route(&["alertname=X", "severity=info"]), "chat");
    // Every shipped alert has a severity this routing knows.
    for Rule {
        alert, severity, ..
    } in rules()
    {
        assert!(
            matches!(severity.as_str(), "critical" | "warning" | "info"),
            "{alert}: severity {severity:?}"
        );
        let expected = if severity == "critical" {
            "pager"
        } else {
            "chat"
        };
        assert_eq!(
            route(&[
                &format!("alertname={alert}"),
                &format!("severity={severity}")
            ]),
            expected,
            "{alert}"
        );
    }
}

/// `amtool template render` of `template` over `data` (Alertmanager's notification data).
fn render(amtool: &Path, template: &str, data: &Value) -> String {
    // Tests run in parallel and render the same template names.
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let file = std::env::temp_dir().join(format!(
        "am-template-data-{}-{}.json",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&file, serde_json::to_vec(data).unwrap()).unwrap();
    let glob = dir().join("templates/*.tmpl");
    let (ok, text) = run(Command::new(amtool)
        .args(["template", "render", "--template.glob"])
        .arg(glob)
        .arg("--template.data")
        .arg(&file)
        .arg("--template.text")
        .arg(format!("{{{{ template \"{template}\" . }}}}")));
    let _ = std::fs::remove_file(&file);
    assert!(ok, "render {template}: {text}");
    text
}

fn alert(status: &str, labels: Value, annotations: Value) -> Value {
    json!({
        "status": status,
        "labels": labels,
        "annotations": annotations,
        "startsAt": "2026-11-29T01:00:00Z",
        "endsAt": if status == "resolved" { "2026-11-29T01:30:00Z" } else { "0001-01-01T00:00:00Z" },
        "generatorURL": "http://prometheus:9090/graph?g0.expr=x",
        "fingerprint": "0123456789abcdef",
    })
}

fn data(status: &str, alerts: Vec<Value>, common: Value) -> Value {
    json!({
        "receiver": "chat",
        "status": status,
        "alerts": alerts,
        "groupLabels": {"alertname": "AskErrorRatioHigh"},
        "commonLabels": common,
        "commonAnnotations": {"runbook_url": "https://example.org/docs/runbook.md#askerrorratiohigh"},
        "externalURL": "http://alertmanager:9093",
    })
}

#[test]
fn templates_show_summary_runbook_and_request_and_trace_links() {
    let Some(amtool) = tool("amtool") else {
        return;
    };
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let with_ids = data(
        "firing",
        vec![alert(
            "firing",
            json!({"alertname": "AskErrorRatioHigh", "severity": "critical", "workspace_id": "ws-1", "request_id": "req-42"}),
            json!({
                "summary": "Ask error ratio above 2 %",
                "description": "3.1 % of asks failed over 5 minutes.",
                "runbook_url": "https://example.org/docs/runbook.md#askerrorratiohigh",
                "trace_id": trace,
            }),
        )],
        json!({"alertname": "AskErrorRatioHigh", "severity": "critical"}),
    );
    assert_eq!(
        render(&amtool, "minirag.title", &with_ids),
        "[FIRING:1] AskErrorRatioHigh (critical)"
    );
    assert_eq!(
        render(&amtool, "minirag.title_link", &with_ids),
        "https://example.org/docs/runbook.md#askerrorratiohigh"
    );
    assert_eq!(render(&amtool, "minirag.color", &with_ids), "danger");
    let text = render(&amtool, "minirag.text", &with_ids);
    for part in [
        "*Ask error ratio above 2 %*",
        "3.1 % of asks failed over 5 minutes.",
        "• workspace_id: `ws-1`",
        "Runbook: https://example.org/docs/runbook.md#askerrorratiohigh",
        "Request id: `req-42` · logs: https://grafana.example.internal/d/minirag-logs/mini-rag-logs?var-request_id=req-42",
        &format!("Trace `{trace}`: https://grafana.example.internal/explore?left="),
        &format!("%22query%22%3A%22{trace}%22"),
        "Source: http://prometheus:9090/graph?g0.expr=x",
        "Since: 2026-11-29 01:00:00 UTC",
    ] {
        assert!(text.contains(part), "{part:?} not in:\n{text}");
    }
    // The ids are shown as links, not repeated as plain labels.
    assert!(!text.contains("• request_id"), "{text}");
    assert!(!text.contains("Workspace logs:"), "{text}");
}

#[test]
fn templates_without_ids_link_the_workspace_logs_and_mark_resolved_alerts() {
    let Some(amtool) = tool("amtool") else {
        return;
    };
    let resolved = data(
        "resolved",
        vec![alert(
            "resolved",
            json!({"alertname": "WorkspaceQuotaNearLimit", "severity": "warning", "workspace_id": "ws 2", "metric": "chunk_storage"}),
            json!({"summary": "Workspace near its quota"}),
        )],
        json!({"alertname": "WorkspaceQuotaNearLimit", "severity": "warning"}),
    );
    assert_eq!(
        render(&amtool, "minirag.title", &resolved),
        "[RESOLVED] WorkspaceQuotaNearLimit (warning)"
    );
    assert_eq!(render(&amtool, "minirag.color", &resolved), "good");
    let text = render(&amtool, "minirag.text", &resolved);
    for part in [
        "RESOLVED *Workspace near its quota*",
        "• metric: `chunk_storage`",
        "Workspace logs: https://grafana.example.internal/d/minirag-logs/mini-rag-logs?var-workspace_id=ws+2",
        "resolved 2026-11-29 01:30:00 UTC",
    ] {
        assert!(text.contains(part), "{part:?} not in:\n{text}");
    }
    for absent in ["Request id", "Trace", "Runbook:"] {
        assert!(!text.contains(absent), "{absent:?} in:\n{text}");
    }
}

/// A free 127.0.0.1 port (Alertmanager cannot report the port it bound to, so one is
/// picked and released just before it starts).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 exchange with `Connection: close`; returns (status, body).
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let (head, rest) = out.split_once("\r\n\r\n")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Some((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_live_alertmanager_mutes_the_warning_while_the_critical_of_the_same_alert_fires() {
    let Some(bin) = tool("prometheus-alertmanager") else {
        return;
    };
    let storage = std::env::temp_dir().join(format!("am-inhibit-{}", std::process::id()));
    std::fs::create_dir_all(&storage).unwrap();
    let port = free_port();
    let _am = Reaped(
        Command::new(bin)
            .arg(format!("--config.file={}", config().display()))
            .arg(format!("--storage.path={}", storage.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // No gossip: a lone test instance.
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while http(port, "GET", "/-/ready", "").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "alertmanager not ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let alerts = json!([
        {"labels": {"alertname": "AskLatencyHigh", "severity": "critical"}},
        {"labels": {"alertname": "AskLatencyHigh", "severity": "warning"}},
        {"labels": {"alertname": "LogShippingLagHigh", "severity": "warning"}},
    ]);
    let (status, body) = http(port, "POST", "/api/v2/alerts", &alerts.to_string()).unwrap();
    assert_eq!(status, 200, "{body}");
    // The inhibitor learns of the critical alert asynchronously: poll for the states.
    let state = |list: &Value, name: &str, severity: &str| -> String {
        list.as_array()
            .into_iter()
            .flatten()
            .find(|a| a["labels"]["alertname"] == name && a["labels"]["severity"] == severity)
            .map(|a| a["status"]["state"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    let mut last = Value::Null;
    let muted = loop {
        if let Some((200, body)) = http(port, "GET", "/api/v2/alerts", "") {
            last = serde_json::from_str(&body).unwrap_or(Value::Null);
            if state(&last, "AskLatencyHigh", "warning") == "suppressed" {
                break true;
            }
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(muted, "warning not inhibited: {last:#}");
    assert_eq!(state(&last, "AskLatencyHigh", "critical"), "active");
    // Another alert's warning is not muted by it.
    assert_eq!(state(&last, "LogShippingLagHigh", "warning"), "active");
    let _ = std::fs::remove_dir_all(&storage);
}
