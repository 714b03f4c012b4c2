//! Sidecar injection: adds the agent to the pod templates of Kubernetes manifests.
//!
//! The CLI (`minirag-agent inject`) reads multi-document YAML and writes it back with
//! the agent added to every pod template it finds (Pod, Deployment, StatefulSet,
//! DaemonSet, ReplicaSet, Job, CronJob, and `List` items). The mutation is a pure
//! function of the pod template, its annotations and the namespace's annotations, so
//! injecting twice changes nothing and the admission webhook can share it.

pub mod patch;
pub mod pod;
pub mod webhook;

use serde_yaml::{Mapping, Value};

pub use pod::{Options, Outcome};

/// What happened to one resource, for the report on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `Kind/namespace/name`.
    pub resource: String,
    pub outcome: Outcome,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.outcome {
            Outcome::Injected { mode } => write!(f, "{}: injected ({mode})", self.resource),
            Outcome::Skipped(reason) => write!(f, "{}: skipped: {reason}", self.resource),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("document {index}: not valid YAML: {message}")]
    Yaml { index: usize, message: String },
}

/// Injects every document of `input`; returns the YAML to print and one report per
/// resource. Namespace documents in the input set the namespace-level opt-in/out.
pub fn inject_stream(input: &str, opts: &Options) -> Result<(String, Vec<Report>), InjectError> {
    let mut docs = Vec::new();
    for (index, de) in serde_yaml::Deserializer::from_str(input).enumerate() {
        let v = <Value as serde::Deserialize>::deserialize(de).map_err(|e| InjectError::Yaml {
            index: index + 1,
            message: e.to_string(),
        })?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    let namespaces = namespace_annotations(&docs);
    let mut reports = Vec::new();
    for doc in &mut docs {
        inject_value(doc, opts, &namespaces, &mut reports);
    }
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        // A Value always serialises.
        out.push_str(&serde_yaml::to_string(doc).unwrap_or_default());
    }
    Ok((out, reports))
}

/// `inject` annotations of the Namespace objects in the stream, by name.
fn namespace_annotations(docs: &[Value]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for d in docs {
        if str_at(d, &["kind"]) == Some("Namespace")
            && let Some(name) = str_at(d, &["metadata", "name"])
            && let Some(v) = str_at(d, &["metadata", "annotations", pod::ANNOTATION_INJECT])
        {
            out.push((name.to_string(), v.to_string()));
        }
    }
    out
}

/// Injects one resource (recursing into `List`), appending its report.
pub fn inject_value(
    doc: &mut Value,
    opts: &Options,
    namespaces: &[(String, String)],
    reports: &mut Vec<Report>,
) {
    let kind = str_at(doc, &["kind"]).unwrap_or("").to_string();
    if kind == "List" || kind.ends_with("List") {
        if let Some(items) = doc.get_mut("items").and_then(Value::as_sequence_mut) {
            for item in items {
                inject_value(item, opts, namespaces, reports);
            }
        }
        return;
    }
    let name = str_at(doc, &["metadata", "name"])
        .unwrap_or("?")
        .to_string();
    let namespace = str_at(doc, &["metadata", "namespace"])
        .unwrap_or("default")
        .to_string();
    let resource = format!("{kind}/{namespace}/{name}");
    let path: &[&str] = match kind.as_str() {
        "Pod" => &[],
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        // Not a workload (Service, ConfigMap, Namespace, …): passed through silently.
        "Namespace"
        | "Service"
        | "ConfigMap"
        | "Secret"
        | "ServiceAccount"
        | "Ingress"
        | "NetworkPolicy"
        | "PodDisruptionBudget"
        | "HorizontalPodAutoscaler"
        | "Role"
        | "RoleBinding"
        | "ClusterRole"
        | "ClusterRoleBinding" => return,
        "" => {
            reports.push(Report {
                resource,
                outcome: Outcome::Skipped("no kind".into()),
            });
            return;
        }
        _ => {
            reports.push(Report {
                resource,
                outcome: Outcome::Skipped(format!("unsupported kind {kind}")),
            });
            return;
        }
    };
    let ns_setting = namespaces
        .iter()
        .find(|(n, _)| *n == namespace)
        .map(|(_, v)| v.as_str());
    let Some(template) = get_mut_path(doc, path) else {
        reports.push(Report {
            resource,
            outcome: Outcome::Skipped("no pod template".into()),
        });
        return;
    };
    let outcome = pod::inject_template(template, opts, ns_setting);
    reports.push(Report { resource, outcome });
}

pub(crate) fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

fn get_mut_path<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    let mut cur = v;
    for p in path {
        cur = cur.get_mut(*p)?;
    }
    cur.is_mapping().then_some(cur)
}

/// The mapping at `key`, created empty when absent (or replaced when not a mapping).
pub(crate) fn mapping_entry<'a>(m: &'a mut Mapping, key: &str) -> &'a mut Mapping {
    let e = m
        .entry(Value::from(key))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if !e.is_mapping() {
        *e = Value::Mapping(Mapping::new());
    }
    let Value::Mapping(inner) = e else {
        unreachable!("made a mapping just above")
    };
    inner
}

/// The sequence at `key`, created empty when absent (or replaced when not a sequence).
pub(crate) fn sequence_entry<'a>(m: &'a mut Mapping, key: &str) -> &'a mut Vec<Value> {
    let e = m
        .entry(Value::from(key))
        .or_insert_with(|| Value::Sequence(Vec::new()));
    if !e.is_sequence() {
        *e = Value::Sequence(Vec::new());
    }
    let Value::Sequence(inner) = e else {
        unreachable!("made a sequence just above")
    };
    inner
}
