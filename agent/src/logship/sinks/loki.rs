//! Loki sink: the push API in JSON,
//! `{"streams":[{"stream":{labels},"values":[["<unix ns>","<line>"],…]}]}`.
//!
//! The line is the record's JSON exactly as shipped, so LogQL's `| json` sees every
//! field. Only a few, low-cardinality fields become stream labels: Loki keeps one
//! index entry per distinct label set, and an unbounded label (a request id, a user
//! id) would blow it up. Hence the cap: each label field keeps the first
//! `max_label_values` values it sees for the sink's lifetime, and any further value is
//! sent as `other` (the exact value stays in the line).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use serde_json::Value;

use crate::logship::chunk::Chunk;
use crate::logship::config::LokiSinkConfig;
use crate::logship::record;
use crate::logship::sinks::otlp::{now_nanos, unix_nanos};
use crate::logship::sinks::{Delivered, Sink, SinkError, net};

/// The value a capped label field takes once its budget of distinct values is spent.
pub const OTHER: &str = "other";

/// Loki refuses a stream without labels; this one is used when neither the static
/// labels nor any label field gives a record a label.
const FALLBACK_LABEL: (&str, &str) = ("job", "minirag");

/// Longer label values are sent as [`OTHER`]: Loki refuses the whole push over one
/// value above its `max_label_value_length` (2048 by default), and a value that long
/// is no useful label anyway.
const MAX_LABEL_VALUE_BYTES: usize = 1024;

pub struct LokiSink {
    /// Its headers are the configured ones plus `X-Scope-OrgID`.
    endpoint: net::Endpoint,
    static_labels: BTreeMap<String, String>,
    /// (record field, label name).
    label_fields: Vec<(String, String)>,
    max_label_values: usize,
    /// Per label field, the values already given a label of their own.
    seen: Mutex<HashMap<String, HashSet<String>>>,
}

impl LokiSink {
    pub fn new(c: &LokiSinkConfig) -> Result<Self, String> {
        if c.endpoint.is_empty() {
            return Err("endpoint is required (e.g. http://loki:3100/loki/api/v1/push)".into());
        }
        let mut headers = net::headers(&c.headers)?;
        if let Some(tenant) = c.tenant_id.as_deref().filter(|t| !t.is_empty()) {
            let value = reqwest::header::HeaderValue::from_str(tenant)
                .map_err(|_| "tenant_id is not a valid header value".to_string())?;
            headers.insert("x-scope-orgid", value);
        }
        Ok(Self {
            endpoint: net::Endpoint::new(c.endpoint.clone(), headers, c.compression)?,
            static_labels: c
                .labels
                .iter()
                .map(|(k, v)| (label_name(k), v.clone()))
                .collect(),
            label_fields: c
                .label_fields
                .iter()
                .map(|f| (f.clone(), label_name(f)))
                .collect(),
            max_label_values: c.max_label_values,
            seen: Mutex::new(HashMap::new()),
        })
    }

    /// The stream labels of one record: the static labels, then each label field's
    /// (capped) value; a field the record lacks adds no label.
    fn labels(
        &self,
        rec: &serde_json::Map<String, Value>,
        seen: &mut HashMap<String, HashSet<String>>,
    ) -> Labels {
        let mut labels = self.static_labels.clone();
        for (field, name) in &self.label_fields {
            let value = match rec.get(field) {
                None | Some(Value::Null) => continue,
                Some(Value::String(s)) if s.is_empty() => continue,
                Some(Value::String(s)) => Cow::Borrowed(s.as_str()),
                Some(other) => Cow::Owned(other.to_string()),
            };
            let known = seen.entry(field.clone()).or_default();
            let value = if value.len() > MAX_LABEL_VALUE_BYTES {
                OTHER.to_string()
            } else if known.contains(value.as_ref()) {
                value.into_owned()
            } else if known.len() < self.max_label_values {
                known.insert(value.to_string());
                value.into_owned()
            } else {
                OTHER.to_string()
            };
            labels.insert(name.clone(), value);
        }
        if labels.is_empty() {
            labels.insert(FALLBACK_LABEL.0.into(), FALLBACK_LABEL.1.into());
        }
        labels
    }

    /// The push body for `batch`: one stream per label set, values in time order
    /// (Loki accepts out-of-order entries only within a window; sorting keeps a batch
    /// that spans files within it).
    fn body(&self, batch: &[Arc<Chunk>]) -> Vec<u8> {
        let now = now_nanos();
        let mut streams: BTreeMap<Labels, Vec<(u64, Cow<'_, str>)>> = BTreeMap::new();
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            for chunk in batch {
                for (bytes, _) in chunk.iter() {
                    let rec = record::parse(bytes);
                    let ts = match rec.get("timestamp") {
                        Some(Value::String(t)) => unix_nanos(t).unwrap_or(now),
                        _ => now,
                    };
                    let labels = self.labels(&rec, &mut seen);
                    // Records are UTF-8 by construction; lossy only as a safety net.
                    streams
                        .entry(labels)
                        .or_default()
                        .push((ts, String::from_utf8_lossy(bytes)));
                }
            }
        }
        let streams: Vec<Stream<'_>> = streams
            .into_iter()
            .map(|(stream, mut entries)| {
                entries.sort_by_key(|(ts, _)| *ts);
                Stream {
                    stream,
                    values: entries
                        .into_iter()
                        .map(|(ts, line)| (ts.to_string(), line))
                        .collect(),
                }
            })
            .collect();
        serde_json::to_vec(&Push { streams }).unwrap_or_default()
    }
}

/// A stream's label set.
type Labels = BTreeMap<String, String>;

#[derive(Serialize)]
struct Push<'a> {
    streams: Vec<Stream<'a>>,
}

#[derive(Serialize)]
struct Stream<'a> {
    stream: Labels,
    /// `[timestamp in ns as a decimal string, line]`.
    values: Vec<(String, Cow<'a, str>)>,
}

impl Sink for LokiSink {
    async fn deliver(&self, batch: &[Arc<Chunk>]) -> Result<Delivered, SinkError> {
        let resp = self
            .endpoint
            .post("application/json", self.body(batch))
            .await?;
        // Loki answers 204; 429 (rate limit) and 5xx are retried, 400 (e.g. entries too
        // old) is final.
        net::classify(resp).await?;
        Ok(Delivered::default())
    }
}

/// A valid Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`): other characters become
/// `_`, so `k8s.namespace.name` is labelled `k8s_namespace_name`.
fn label_name(field: &str) -> String {
    let mut name: String = field
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(max: usize) -> LokiSink {
        LokiSink::new(&LokiSinkConfig {
            endpoint: "http://127.0.0.1:1/loki/api/v1/push".into(),
            labels: BTreeMap::from([("app.name".into(), "rag".into())]),
            label_fields: vec!["level".into(), "k8s.namespace.name".into()],
            max_label_values: max,
            ..LokiSinkConfig::default()
        })
        .unwrap()
    }

    fn labels(s: &LokiSink, line: &str) -> BTreeMap<String, String> {
        let mut seen = s.seen.lock().unwrap();
        s.labels(&record::parse(line.as_bytes()), &mut seen)
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(label_name("k8s.namespace.name"), "k8s_namespace_name");
        assert_eq!(label_name("9lives"), "_9lives");
        assert_eq!(label_name(""), "_");
        assert_eq!(label_name("ok_Name1"), "ok_Name1");
    }

    #[test]
    fn values_are_capped() {
        let s = sink(1);
        let l = labels(&s, r#"{"level":"INFO","k8s.namespace.name":"prod"}"#);
        assert_eq!(l["app_name"], "rag");
        assert_eq!(l["level"], "INFO");
        assert_eq!(l["k8s_namespace_name"], "prod");
        assert_eq!(labels(&s, r#"{"level":"ERROR"}"#)["level"], OTHER);
        assert_eq!(labels(&s, r#"{"level":"INFO"}"#)["level"], "INFO");
        assert!(!labels(&s, r#"{"message":"x"}"#).contains_key("level"));
        assert_eq!(labels(&s, r#"{"level":5}"#)["level"], OTHER);
    }

    #[test]
    fn a_stream_always_has_a_label() {
        let s = LokiSink::new(&LokiSinkConfig {
            endpoint: "http://127.0.0.1:1/push".into(),
            ..LokiSinkConfig::default()
        })
        .unwrap();
        let l = labels(&s, r#"{"message":"x"}"#);
        assert_eq!(l.len(), 1);
        assert_eq!(l["job"], "minirag");
    }
}
