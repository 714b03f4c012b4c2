//! The shipped Kubernetes manifests (`config/k8s/`) and the Dockerfile: the kustomize
//! output passes `kubernetes-validate --strict`, the committed sidecar Deployment is
//! exactly what `inject` writes, and the Dockerfile's paths, binaries, user and image
//! names agree with the repository and the injector.

mod common;

use common::tool;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn kustomize_output_passes_kubernetes_validate_strict() {
    let (Some(kubectl), Some(validate)) = (tool("kubectl"), tool("kubernetes-validate")) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("k8s-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for base in ["base", "injector"] {
        let out = Command::new(&kubectl)
            .args(["kustomize"])
            .arg(root().join("config/k8s").join(base))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl kustomize {base}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = dir.join(format!("{base}.yaml"));
        std::fs::write(&file, &out.stdout).unwrap();
        let docs = String::from_utf8_lossy(&out.stdout)
            .matches("\nkind: ")
            .count()
            + usize::from(out.stdout.starts_with(b"kind: "));
        assert!(docs >= 5, "{base}: only {docs} resources");
        for v in ["1.29.0", "1.33.0"] {
            let check = Command::new(&validate)
                .args(["--strict", "--quiet", "-k", v])
                .arg(&file)
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            );
            assert!(
                check.status.success() && !text.contains("ERROR"),
                "{base} against {v}:\n{text}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_committed_sidecar_deployment_is_what_inject_writes() {
    let file = root().join("config/k8s/base/deployment.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_minirag-agent"))
        .args(["inject", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("skipped: already injected"));
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        body,
        "re-run inject on the plain Deployment"
    );
    for needle in [
        "restartPolicy: Always",
        "startupProbe:",
        "readOnlyRootFilesystem: true",
        "minirag-logs",
    ] {
        assert!(
            text.contains(needle),
            "{needle} missing from {}",
            file.display()
        );
    }
}

#[test]
fn the_dockerfile_agrees_with_the_repository() {
    let df = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    // Every file copied from the build context exists.
    for line in df
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let src = line.split_whitespace().nth(1).unwrap();
        if src != "." {
            assert!(
                root().join(src).exists(),
                "Dockerfile copies {src}, which is not in the repository"
            );
        }
    }
    // The binaries it installs are the workspace's binaries.
    for bin in ["rag-core", "minirag-agent"] {
        assert!(
            df.contains(&format!("target/release/{bin} /out/{bin}")),
            "{bin} not built"
        );
        assert!(df.contains(&format!("AS {bin}")), "no {bin} target");
    }
    let agent_toml = std::fs::read_to_string(root().join("agent/Cargo.toml")).unwrap();
    assert!(agent_toml.contains("name = \"minirag-agent\""));
    let core_toml = std::fs::read_to_string(root().join("rag-core/Cargo.toml")).unwrap();
    assert!(core_toml.contains("name = \"rag-core\""));
    // The user is the uid the injector and the manifests run as.
    assert_eq!(df.matches("USER 65532:65532").count(), 2);
    let injected = std::fs::read_to_string(root().join("config/k8s/base/deployment.yaml")).unwrap();
    assert!(injected.contains("runAsUser: 65532"));
    // Image names: the injector's default is the image the manifests use.
    let version = env!("CARGO_PKG_VERSION");
    let image = format!("ghcr.io/minirag/minirag-agent:{version}");
    assert_eq!(minirag_agent::inject::Options::default().image, image);
    assert!(injected.contains(&image));
    assert!(
        std::fs::read_to_string(root().join("config/k8s/injector/deployment.yaml"))
            .unwrap()
            .contains(&image)
    );
    assert!(df.contains(&format!("ARG VERSION={version}")));
    assert!(
        !df.lines()
            .any(|l| l.trim_start().starts_with("HEALTHCHECK"))
    );
}

/// The shipped rule files (`alerts/*.yaml`, not the tests), sorted by name.
fn rule_files() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(root().join("alerts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no rule files under alerts/");
    files
}

fn generated_header(what: &str) -> String {
    format!(
        "# {what}, generated from alerts/*.yaml: do not edit.\n\
         # Regenerate: UPDATE_GOLDEN=1 cargo test -p minirag-agent --test k8s\n"
    )
}

fn labels() -> serde_yaml::Value {
    serde_yaml::from_str(&format!(
        "{{app.kubernetes.io/part-of: minirag, app.kubernetes.io/component: alert-rules, \
         app.kubernetes.io/version: \"{}\"}}",
        env!("CARGO_PKG_VERSION")
    ))
    .unwrap()
}

/// The ConfigMap the sidecar projects next to agent.yaml: one key per rule file, the
/// file's text unchanged, so the agent evaluates exactly what `promtool` tested.
fn render_rules_configmap() -> String {
    let mut data = serde_yaml::Mapping::new();
    for (name, text) in rule_files() {
        data.insert(name.into(), text.into());
    }
    let mut cm = serde_yaml::Mapping::new();
    cm.insert("apiVersion".into(), "v1".into());
    cm.insert("kind".into(), "ConfigMap".into());
    let mut meta = serde_yaml::Mapping::new();
    meta.insert("name".into(), "minirag-agent-rules".into());
    meta.insert("labels".into(), labels());
    cm.insert("metadata".into(), meta.into());
    cm.insert("data".into(), data.into());
    generated_header("Alert and recording rules for the agent's local evaluation")
        + &serde_yaml::to_string(&cm).unwrap()
}

/// The same groups as a prometheus-operator `PrometheusRule`, for clusters where
/// Prometheus evaluates them.
fn render_prometheus_rule() -> String {
    let mut groups = Vec::new();
    for (name, text) in rule_files() {
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let gs = doc["groups"]
            .as_sequence()
            .unwrap_or_else(|| panic!("alerts/{name}: no groups"));
        groups.extend(gs.iter().cloned());
    }
    let mut spec = serde_yaml::Mapping::new();
    spec.insert("groups".into(), groups.into());
    let mut meta = serde_yaml::Mapping::new();
    meta.insert("name".into(), "minirag-rules".into());
    meta.insert("labels".into(), labels());
    let mut pr = serde_yaml::Mapping::new();
    pr.insert("apiVersion".into(), "monitoring.coreos.com/v1".into());
    pr.insert("kind".into(), "PrometheusRule".into());
    pr.insert("metadata".into(), meta.into());
    pr.insert("spec".into(), spec.into());
    generated_header("The shipped rules as a prometheus-operator PrometheusRule")
        + &serde_yaml::to_string(&pr).unwrap()
}

fn golden(path: &str, rendered: &str) {
    let file = root().join(path);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, rendered).unwrap();
    }
    let committed = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{path}: {e} (UPDATE_GOLDEN=1 writes it)"));
    assert!(
        committed == rendered,
        "{path} is out of date with alerts/*.yaml: UPDATE_GOLDEN=1 cargo test -p minirag-agent --test k8s"
    );
}

#[test]
fn rule_renderings_match_the_rule_files() {
    golden(
        "config/k8s/base/rules-configmap.yaml",
        &render_rules_configmap(),
    );
    golden("alerts/k8s/prometheusrule.yaml", &render_prometheus_rule());
    // The rendering round-trips: every key holds a rule file's exact text.
    let cm: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("config/k8s/base/rules-configmap.yaml")).unwrap(),
    )
    .unwrap();
    for (name, text) in rule_files() {
        assert_eq!(cm["data"][name.as_str()].as_str(), Some(text.as_str()));
    }
    let kustomization =
        std::fs::read_to_string(root().join("config/k8s/base/kustomization.yaml")).unwrap();
    assert!(kustomization.contains("- rules-configmap.yaml"));
}

#[test]
fn every_rule_file_carries_the_workspace_version() {
    let header = format!("# minirag-observability {} ", env!("CARGO_PKG_VERSION"));
    for (name, text) in rule_files() {
        assert!(
            text.starts_with(&header),
            "alerts/{name} must start with {header:?} (the released version)"
        );
    }
}

#[test]
fn the_prometheus_rule_rendering_only_warns_about_its_crd() {
    let Some(validate) = tool("kubernetes-validate") else {
        return;
    };
    let file = root().join("alerts/k8s/prometheusrule.yaml");
    let out = Command::new(validate)
        .args(["--strict", "-k", "1.33.0"])
        .arg(&file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // No schema ships for the operator's CRD: a warning is expected, an error is not.
    assert!(out.status.success() && !text.contains("ERROR"), "{text}");
    assert!(text.contains("PrometheusRule"), "{text}");
}
