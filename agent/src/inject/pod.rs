//! The mutation of one pod template (`metadata` + `spec`): what the agent sidecar needs
//! and nothing else, so a second pass finds it already there and changes nothing.

use serde_yaml::{Mapping, Value};

use super::{mapping_entry, sequence_entry};

pub const ANNOTATION_INJECT: &str = "minirag.io/inject";
pub const ANNOTATION_INJECTED: &str = "minirag.io/injected";
pub const ANNOTATION_IMAGE: &str = "minirag.io/agent-image";
pub const ANNOTATION_PROXY_PORT: &str = "minirag.io/proxy-port";
pub const ANNOTATION_ADMIN_PORT: &str = "minirag.io/admin-port";
pub const ANNOTATION_UPSTREAM_PORT: &str = "minirag.io/upstream-port";
pub const ANNOTATION_LOG_PATH: &str = "minirag.io/log-path";
pub const ANNOTATION_CPU_REQUEST: &str = "minirag.io/cpu-request";
pub const ANNOTATION_MEMORY_REQUEST: &str = "minirag.io/memory-request";
pub const ANNOTATION_MEMORY_LIMIT: &str = "minirag.io/memory-limit";
pub const ANNOTATION_MODE: &str = "minirag.io/sidecar-mode";
pub const ANNOTATION_CONFIG_MAP: &str = "minirag.io/config-map";
pub const ANNOTATION_RULES_CONFIG_MAP: &str = "minirag.io/rules-config-map";

pub const CONTAINER_NAME: &str = "minirag-agent";
const LOGS_VOLUME: &str = "minirag-logs";
const CONFIG_VOLUME: &str = "minirag-agent-config";
const CONFIG_DIR: &str = "/etc/minirag-agent";

/// Defaults; each can be overridden per pod by annotation.
#[derive(Debug, Clone)]
pub struct Options {
    pub image: String,
    pub proxy_port: u16,
    pub admin_port: u16,
    pub upstream_port: u16,
    pub log_path: String,
    pub config_map: String,
    /// Alert/recording rule files, projected next to the config (optional: a pod
    /// without it simply evaluates no rules).
    pub rules_config_map: String,
    pub classic: bool,
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
    /// The agent's `lifecycle.drain_delay_seconds + grace_seconds` (what shutdown may
    /// take); the pod's grace period is raised to at least this plus a margin.
    pub shutdown_seconds: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            image: format!(
                "ghcr.io/minirag/minirag-agent:{}",
                env!("CARGO_PKG_VERSION")
            ),
            proxy_port: 8080,
            admin_port: 9901,
            upstream_port: 8000,
            log_path: "/var/log/minirag".into(),
            config_map: "minirag-agent-config".into(),
            rules_config_map: "minirag-agent-rules".into(),
            classic: false,
            cpu_request: "50m".into(),
            memory_request: "64Mi".into(),
            memory_limit: "256Mi".into(),
            // config/agent.yaml defaults: drain_delay_seconds 5 + grace_seconds 25.
            shutdown_seconds: 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Injected { mode: &'static str },
    Skipped(String),
}

/// Injects the agent into `template` (a mapping with `metadata` and `spec`).
/// `namespace_setting` is the namespace's `minirag.io/inject` value, if known; the
/// pod's own annotation wins over it.
pub fn inject_template(
    template: &mut Value,
    defaults: &Options,
    namespace_setting: Option<&str>,
) -> Outcome {
    let Some(t) = template.as_mapping_mut() else {
        return Outcome::Skipped("pod template is not a mapping".into());
    };
    let annotations = t
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_mapping)
        .cloned()
        .unwrap_or_default();
    let ann = |k: &str| get_str(&annotations, k);
    match ann(ANNOTATION_INJECT).or(namespace_setting) {
        Some("disabled") => {
            return Outcome::Skipped(format!("{ANNOTATION_INJECT}: disabled"));
        }
        Some("enabled") | None => {}
        Some(other) => {
            return Outcome::Skipped(format!(
                "{ANNOTATION_INJECT}: {other:?} is neither enabled nor disabled"
            ));
        }
    }
    let opts = match overrides(defaults, &annotations) {
        Ok(o) => o,
        Err(e) => return Outcome::Skipped(e),
    };
    let Some(spec) = t.get("spec").and_then(Value::as_mapping) else {
        return Outcome::Skipped("pod template has no spec".into());
    };
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Outcome::Skipped("hostNetwork: the agent's ports would be the node's ports".into());
    }
    let has_agent = ["containers", "initContainers"].iter().any(|k| {
        spec.get(*k).and_then(Value::as_sequence).is_some_and(|cs| {
            cs.iter()
                .any(|c| c.get("name").and_then(Value::as_str) == Some(CONTAINER_NAME))
        })
    });
    if has_agent || ann(ANNOTATION_INJECTED).is_some() {
        return Outcome::Skipped("already injected".into());
    }
    let Some(app_containers) = spec.get("containers").and_then(Value::as_sequence) else {
        return Outcome::Skipped("pod template has no containers".into());
    };
    if app_containers.is_empty() {
        return Outcome::Skipped("pod template has no containers".into());
    }
    let port_taken = app_containers.iter().any(|c| {
        c.get("ports")
            .and_then(Value::as_sequence)
            .is_some_and(|ps| {
                ps.iter().any(|p| {
                    let n = p.get("containerPort").and_then(Value::as_u64);
                    n == Some(u64::from(opts.proxy_port)) || n == Some(u64::from(opts.admin_port))
                })
            })
    });
    if port_taken {
        return Outcome::Skipped(format!(
            "an app container already uses port {} or {} (set {ANNOTATION_PROXY_PORT} / {ANNOTATION_ADMIN_PORT})",
            opts.proxy_port, opts.admin_port
        ));
    }

    let metadata = mapping_entry(t, "metadata");
    let annotations = mapping_entry(metadata, "annotations");
    let mode = if opts.classic { "classic" } else { "native" };
    annotations.insert(ANNOTATION_INJECTED.into(), mode.into());
    annotations.insert("prometheus.io/scrape".into(), "true".into());
    annotations.insert(
        "prometheus.io/port".into(),
        opts.admin_port.to_string().into(),
    );
    annotations.insert("prometheus.io/path".into(), "/metrics".into());

    let spec = mapping_entry(t, "spec");
    let grace = opts.shutdown_seconds + 5;
    let current = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(30);
    if current < grace {
        spec.insert("terminationGracePeriodSeconds".into(), grace.into());
    }
    let volumes = sequence_entry(spec, "volumes");
    if !volumes
        .iter()
        .any(|v| v.get("name").and_then(Value::as_str) == Some(LOGS_VOLUME))
    {
        volumes.push(yaml(&format!("{{name: {LOGS_VOLUME}, emptyDir: {{}}}}")));
    }
    if !volumes
        .iter()
        .any(|v| v.get("name").and_then(Value::as_str) == Some(CONFIG_VOLUME))
    {
        // One read-only directory holding agent.yaml (required) and the rule files
        // (optional), so the agent's config can name rules by a fixed path.
        volumes.push(yaml(&format!(
            "{{name: {CONFIG_VOLUME}, projected: {{sources: [{{configMap: {{name: {}}}}}, {{configMap: {{name: {}, optional: true}}}}]}}}}",
            opts.config_map, opts.rules_config_map
        )));
    }
    // The app writes its logs into the shared volume, where the agent tails them.
    for c in sequence_entry(spec, "containers").iter_mut() {
        let Some(c) = c.as_mapping_mut() else {
            continue;
        };
        let mounts = sequence_entry(c, "volumeMounts");
        let taken = mounts.iter().any(|m| {
            m.get("name").and_then(Value::as_str) == Some(LOGS_VOLUME)
                || m.get("mountPath").and_then(Value::as_str) == Some(opts.log_path.as_str())
        });
        if !taken {
            mounts.push(yaml(&format!(
                "{{name: {LOGS_VOLUME}, mountPath: {}}}",
                opts.log_path
            )));
        }
    }
    let agent = agent_container(&opts);
    if opts.classic {
        sequence_entry(spec, "containers").push(agent);
    } else {
        // First among the init containers: later ones (and the app) start once its
        // startup probe passes, so they can use the proxy from their first request.
        sequence_entry(spec, "initContainers").insert(0, agent);
    }
    Outcome::Injected { mode }
}

fn get_str<'a>(m: &'a Mapping, k: &str) -> Option<&'a str> {
    m.get(k).and_then(Value::as_str)
}

fn overrides(defaults: &Options, annotations: &Mapping) -> Result<Options, String> {
    let ann = |k: &str| get_str(annotations, k);
    let mut o = defaults.clone();
    let port = |key: &str, into: &mut u16| -> Result<(), String> {
        if let Some(v) = ann(key) {
            *into = v
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{key}: {v:?} is not a port"))?;
        }
        Ok(())
    };
    port(ANNOTATION_PROXY_PORT, &mut o.proxy_port)?;
    port(ANNOTATION_ADMIN_PORT, &mut o.admin_port)?;
    port(ANNOTATION_UPSTREAM_PORT, &mut o.upstream_port)?;
    if o.proxy_port == o.admin_port
        || o.proxy_port == o.upstream_port
        || o.admin_port == o.upstream_port
    {
        return Err("proxy, admin and upstream ports must differ".into());
    }
    if let Some(v) = ann(ANNOTATION_IMAGE) {
        if v.is_empty() || v.contains(char::is_whitespace) {
            return Err(format!("{ANNOTATION_IMAGE}: {v:?} is not an image name"));
        }
        o.image = v.to_string();
    }
    if let Some(v) = ann(ANNOTATION_LOG_PATH) {
        if !v.starts_with('/') || v.contains("..") {
            return Err(format!(
                "{ANNOTATION_LOG_PATH}: {v:?} must be an absolute path"
            ));
        }
        o.log_path = v.trim_end_matches('/').to_string();
    }
    for (key, into) in [
        (ANNOTATION_CONFIG_MAP, &mut o.config_map),
        (ANNOTATION_RULES_CONFIG_MAP, &mut o.rules_config_map),
    ] {
        if let Some(v) = ann(key) {
            if !dns_subdomain(v) {
                return Err(format!("{key}: {v:?} is not a ConfigMap name"));
            }
            *into = v.to_string();
        }
    }
    for (key, into) in [
        (ANNOTATION_CPU_REQUEST, &mut o.cpu_request),
        (ANNOTATION_MEMORY_REQUEST, &mut o.memory_request),
        (ANNOTATION_MEMORY_LIMIT, &mut o.memory_limit),
    ] {
        if let Some(v) = ann(key) {
            if !quantity(v) {
                return Err(format!("{key}: {v:?} is not a Kubernetes quantity"));
            }
            *into = v.to_string();
        }
    }
    match ann(ANNOTATION_MODE) {
        Some("native") => o.classic = false,
        Some("classic") => o.classic = true,
        None => {}
        Some(other) => {
            return Err(format!(
                "{ANNOTATION_MODE}: {other:?} is neither native nor classic"
            ));
        }
    }
    Ok(o)
}

/// A Kubernetes object name (RFC 1123 subdomain): the value lands unquoted in YAML,
/// so anything else is refused rather than interpreted.
fn dns_subdomain(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 253
        && v.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// `100m`, `64Mi`, `1.5`, `2G`: digits with an optional decimal part and unit suffix.
fn quantity(v: &str) -> bool {
    let digits = v.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &v[digits.len()..];
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.chars().filter(|c| *c == '.').count() <= 1
        && ["", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"].contains(&suffix)
}

fn agent_container(o: &Options) -> Value {
    let mut c = yaml(&format!(
        r#"
name: {CONTAINER_NAME}
image: {image}
args:
  - run
  - --config
  - {CONFIG_DIR}/agent.yaml
  - --listen
  - "0.0.0.0:{proxy}"
  - --admin-listen
  - "0.0.0.0:{admin}"
  - --upstream
  - "http://127.0.0.1:{upstream}"
ports:
  - {{name: minirag-proxy, containerPort: {proxy}, protocol: TCP}}
  - {{name: minirag-admin, containerPort: {admin}, protocol: TCP}}
env:
  - name: POD_NAME
    valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
  - name: POD_NAMESPACE
    valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}
  - name: NODE_NAME
    valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}
  - name: POD_IP
    valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
envFrom:
  # MINIRAG_INTERNAL_TOKEN and other secrets, shared with the app; optional.
  - secretRef: {{name: minirag-secrets, optional: true}}
volumeMounts:
  - {{name: {CONFIG_VOLUME}, mountPath: {CONFIG_DIR}, readOnly: true}}
  - {{name: {LOGS_VOLUME}, mountPath: {log_path}}}
resources:
  requests: {{cpu: "{cpu}", memory: "{mem}"}}
  limits: {{memory: "{mem_limit}"}}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities: {{drop: [ALL]}}
  seccompProfile: {{type: RuntimeDefault}}
readinessProbe:
  httpGet: {{path: /readyz, port: {admin}}}
  periodSeconds: 5
  failureThreshold: 2
livenessProbe:
  httpGet: {{path: /healthz, port: {admin}}}
  periodSeconds: 10
  failureThreshold: 3
"#,
        image = o.image,
        proxy = o.proxy_port,
        admin = o.admin_port,
        upstream = o.upstream_port,
        log_path = o.log_path,
        cpu = o.cpu_request,
        mem = o.memory_request,
        mem_limit = o.memory_limit,
    ));
    if !o.classic
        && let Some(m) = c.as_mapping_mut()
    {
        m.insert("restartPolicy".into(), "Always".into());
        // /healthz, not /readyz: readiness waits for the app, which starts only after
        // this probe passes.
        m.insert(
            "startupProbe".into(),
            yaml(&format!(
                "{{httpGet: {{path: /healthz, port: {}}}, periodSeconds: 1, failureThreshold: 30}}",
                o.admin_port
            )),
        );
    }
    c
}

/// Parses a YAML fragment built from validated values above.
fn yaml(s: &str) -> Value {
    serde_yaml::from_str(s).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_map_names() {
        for ok in ["minirag-agent-rules", "a", "rules.v2"] {
            assert!(dns_subdomain(ok), "{ok}");
        }
        for bad in ["", "Rules", "a b", "-a", "a-", "a..b", "{x: y}"] {
            assert!(!dns_subdomain(bad), "{bad}");
        }
    }

    #[test]
    fn quantities() {
        for ok in ["50m", "64Mi", "1", "1.5", "2G"] {
            assert!(quantity(ok), "{ok}");
        }
        for bad in ["", "m", "1..5", "64MB", "-1", "1 Gi"] {
            assert!(!quantity(bad), "{bad}");
        }
    }

    #[test]
    fn agent_container_is_well_formed() {
        let c = agent_container(&Options::default());
        assert_eq!(c["name"], CONTAINER_NAME);
        assert_eq!(c["restartPolicy"], "Always");
        assert_eq!(c["ports"][1]["containerPort"], 9901);
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    }
}
