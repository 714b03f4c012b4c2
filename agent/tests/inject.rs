//! `minirag-agent inject` against golden files: every workload kind, annotations and
//! overrides, skips with reasons, idempotency, namespace opt-out, stdin and directories.
//! `UPDATE_GOLDEN=1 cargo test -p minirag-agent --test inject` rewrites the golden files
//! (review the diff before committing it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inject")
}

fn inject(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_minirag-agent"))
        .arg("inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(pipe);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "inject {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn golden(name: &str, actual: &str) {
    let path = dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    assert_eq!(
        actual,
        expected,
        "{} differs (UPDATE_GOLDEN=1 rewrites it)",
        path.display()
    );
}

#[test]
fn every_kind_matches_the_golden_files_and_a_second_pass_changes_nothing() {
    let input = dir().join("workloads.yaml");
    let out = inject(&["-f", input.to_str().unwrap()], None);
    let yaml = String::from_utf8(out.stdout).unwrap();
    golden("workloads.golden.yaml", &yaml);
    golden(
        "workloads.report.txt",
        &String::from_utf8(out.stderr).unwrap(),
    );

    let again = inject(&["-f", "-"], Some(&yaml));
    assert_eq!(
        String::from_utf8(again.stdout).unwrap(),
        yaml,
        "inject is not idempotent"
    );
    let report = String::from_utf8(again.stderr).unwrap();
    assert!(
        report.contains("Deployment/rag/rag-core: skipped: already injected"),
        "{report}"
    );
}

#[test]
fn classic_mode_and_flags() {
    let input = dir().join("workloads.yaml");
    let out = inject(
        &[
            "-f",
            input.to_str().unwrap(),
            "--classic",
            "--image",
            "example/agent:9",
            "--config-map",
            "my-agent",
        ],
        None,
    );
    let docs: Vec<serde_yaml::Value> =
        serde_yaml::Deserializer::from_str(std::str::from_utf8(&out.stdout).unwrap())
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
    let deploy = &docs[1]["spec"]["template"]["spec"];
    let containers = deploy["containers"].as_sequence().unwrap();
    let agent = containers
        .iter()
        .find(|c| c["name"] == "minirag-agent")
        .unwrap();
    assert_eq!(agent["image"], "example/agent:9");
    assert!(
        agent.get("restartPolicy").is_none(),
        "a classic container has no restartPolicy"
    );
    assert!(deploy.get("initContainers").is_none());
    let cm = deploy["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "minirag-agent-config")
        .unwrap();
    let sources = &cm["projected"]["sources"];
    assert_eq!(sources[0]["configMap"]["name"], "my-agent");
    assert_eq!(sources[1]["configMap"]["name"], "minirag-agent-rules");
    assert_eq!(sources[1]["configMap"]["optional"], true);
}

#[test]
fn the_pod_annotation_wins_over_the_namespace() {
    let input = r#"
apiVersion: v1
kind: Namespace
metadata: {name: off, annotations: {minirag.io/inject: disabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: off}
spec: {containers: [{name: app, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: off, annotations: {minirag.io/inject: enabled}}
spec: {containers: [{name: app, image: x}]}
"#;
    let out = inject(&[], Some(input));
    let report = String::from_utf8(out.stderr).unwrap();
    assert!(
        report.contains("Pod/off/a: skipped: minirag.io/inject: disabled"),
        "{report}"
    );
    assert!(report.contains("Pod/off/b: injected (native)"), "{report}");
}

#[test]
fn a_directory_is_read_in_name_order_and_bad_yaml_is_an_error() {
    let d = std::env::temp_dir().join(format!("inject-dir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("b.yaml"), "apiVersion: v1\nkind: Pod\nmetadata: {name: second}\nspec: {containers: [{name: c, image: x}]}\n").unwrap();
    std::fs::write(d.join("a.yml"), "apiVersion: v1\nkind: Pod\nmetadata: {name: first}\nspec: {containers: [{name: c, image: x}]}\n").unwrap();
    std::fs::write(d.join("notes.txt"), "not a manifest").unwrap();
    let out = inject(&["-f", d.to_str().unwrap()], None);
    let report = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        report,
        "Pod/default/first: injected (native)\nPod/default/second: injected (native)\n"
    );

    std::fs::write(d.join("c.yaml"), "kind: Pod\n  bad: [indent\n").unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_minirag-agent"))
        .args(["inject", "-f", d.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not valid YAML"));
    let _ = std::fs::remove_dir_all(&d);
}

/// `kubernetes-validate --strict` on injected output (PyPI package; `.ci/run` installs
/// it). Outside CI a missing validator skips with a note; in CI it fails.
fn validator() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("kubernetes-validate"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "kubernetes-validate is not on PATH in CI (.ci/run installs it)"
        );
        eprintln!("skipped: kubernetes-validate not on PATH (pip install kubernetes-validate)");
    }
    found
}

/// The workload documents of the golden input, without `List` wrappers and the custom
/// kind (the validator has no schema for either).
fn validatable(classic: bool) -> String {
    let input = std::fs::read_to_string(dir().join("workloads.yaml")).unwrap();
    let mut docs = Vec::new();
    for d in serde_yaml::Deserializer::from_str(&input) {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(d).unwrap();
        if v["kind"] == "List" {
            for item in v["items"].as_sequence().unwrap() {
                if item["kind"] != "Widget" {
                    docs.push(item.clone());
                }
            }
        } else {
            docs.push(v);
        }
    }
    let flat: Vec<String> = docs
        .iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect();
    let args: &[&str] = if classic { &["--classic"] } else { &[] };
    let out = inject(args, Some(&flat.join("---\n")));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn injected_manifests_pass_kubernetes_validate_strict() {
    let Some(bin) = validator() else { return };
    let d = std::env::temp_dir().join(format!("inject-validate-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    for (classic, versions) in [
        (false, &["1.29.0", "1.33.0"][..]),
        (true, &["1.28.0", "1.33.0"][..]),
    ] {
        let file = d.join(if classic {
            "classic.yaml"
        } else {
            "native.yaml"
        });
        std::fs::write(&file, validatable(classic)).unwrap();
        for v in versions {
            let out = Command::new(&bin)
                .args(["--strict", "--quiet", "-k", v])
                .arg(&file)
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success() && !text.contains("ERROR"),
                "{} against {v}:\n{text}",
                file.display()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// Applies an RFC 6902 patch (add/remove/replace, as the webhook emits) to `doc`.
fn apply_patch(doc: &mut serde_json::Value, ops: &[serde_json::Value]) {
    fn unescape(s: &str) -> String {
        s.replace("~1", "/").replace("~0", "~")
    }
    for op in ops {
        let path = op["path"].as_str().unwrap();
        let parts: Vec<String> = path.split('/').skip(1).map(unescape).collect();
        let (last, parents) = parts.split_last().unwrap();
        let mut cur = &mut *doc;
        for p in parents {
            cur = match cur {
                serde_json::Value::Array(a) => &mut a[p.parse::<usize>().unwrap()],
                serde_json::Value::Object(o) => o.get_mut(p).unwrap(),
                _ => panic!("bad path {path}"),
            };
        }
        let value = op["value"].clone();
        match (op["op"].as_str().unwrap(), cur) {
            ("add", serde_json::Value::Array(a)) if last == "-" => a.push(value),
            ("add", serde_json::Value::Array(a)) => a.insert(last.parse().unwrap(), value),
            ("add" | "replace", serde_json::Value::Object(o)) => {
                o.insert(last.clone(), value);
            }
            ("replace", serde_json::Value::Array(a)) => a[last.parse::<usize>().unwrap()] = value,
            ("remove", serde_json::Value::Object(o)) => {
                o.remove(last);
            }
            (op, _) => panic!("unsupported op {op} at {path}"),
        }
    }
}

#[tokio::test]
async fn the_webhook_patch_gives_the_same_pod_as_the_cli() {
    use base64::Engine;
    let dir = std::env::temp_dir().join(format!("inject-webhook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("tls.crt"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), ck.signing_key.serialize_pem()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_minirag-agent"))
        .args(["webhook", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.join("tls.key"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = child.stderr.take().unwrap();
    let guard = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l)
                && v["event"] == "webhook.started"
            {
                let _ = tx.send(v["listen"].as_str().unwrap().to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("webhook did not start");
    let port = addr.rsplit(':').next().unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let url = format!("https://localhost:{port}/mutate");

    let pods = [
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: rag, annotations: {a/b~c: x}}\nspec:\n  initContainers: [{name: migrate, image: m}]\n  containers: [{name: app, image: x, volumeMounts: [{name: data, mountPath: /data}]}]\n  volumes: [{name: data, emptyDir: {}}]\n",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: b, annotations: {minirag.io/sidecar-mode: classic, minirag.io/upstream-port: '9000'}}\nspec:\n  containers: [{name: app, image: x}]\n",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: c, annotations: {minirag.io/inject: disabled}}\nspec:\n  containers: [{name: app, image: x}]\n",
    ];
    for (i, pod_yaml) in pods.iter().enumerate() {
        let pod: serde_json::Value = serde_yaml::from_str(pod_yaml).unwrap();
        let review = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": format!("uid-{i}"), "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "resource": {"group": "", "version": "v1", "resource": "pods"},
                        "namespace": "rag", "operation": "CREATE", "object": pod}
        });
        let resp: serde_json::Value = client
            .post(&url)
            .json(&review)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(resp["kind"], "AdmissionReview");
        assert_eq!(resp["response"]["uid"], format!("uid-{i}"));
        assert_eq!(resp["response"]["allowed"], true);
        let cli = inject(&["-f", "-"], Some(pod_yaml));
        let cli_pod: serde_json::Value =
            serde_yaml::from_str(std::str::from_utf8(&cli.stdout).unwrap()).unwrap();
        let mut patched = pod.clone();
        if let Some(p) = resp["response"]["patch"].as_str() {
            assert_eq!(resp["response"]["patchType"], "JSONPatch");
            let ops: Vec<serde_json::Value> = serde_json::from_slice(
                &base64::engine::general_purpose::STANDARD.decode(p).unwrap(),
            )
            .unwrap();
            if i == 0 {
                let paths: Vec<&str> = ops.iter().map(|o| o["path"].as_str().unwrap()).collect();
                assert!(
                    paths.contains(&"/metadata/annotations/minirag.io~1injected"),
                    "{paths:?}"
                );
                assert!(paths.contains(&"/spec/initContainers/0"), "{paths:?}");
            }
            apply_patch(&mut patched, &ops);
        } else {
            assert_eq!(i, 2, "only the disabled pod is left alone");
        }
        assert_eq!(patched, cli_pod, "pod {i}: webhook and CLI differ");
    }

    // Garbage is allowed unchanged, with the reason, never refused.
    let resp: serde_json::Value = client
        .post(&url)
        .body("{not json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resp["response"]["allowed"], true);
    assert!(
        resp["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("not JSON")
    );
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
}
