//! The shipped Kubernetes manifests (`config/k8s/`) and the Dockerfile: the kustomize
//! output passes `kubernetes-validate --strict`, the committed sidecar Deployment is
//! exactly what `inject` writes, and the Dockerfile's paths, binaries, user and image
//! names agree with the repository and the injector.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A tool on PATH; outside CI a missing one skips with a note, in CI it fails.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is not on PATH in CI (.ci/run installs it)"
        );
        eprintln!("skipped: {name} not on PATH");
    }
    found
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
