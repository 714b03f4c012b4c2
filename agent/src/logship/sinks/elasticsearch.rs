//! Elasticsearch / OpenSearch sink: `POST {endpoint}/_bulk` with one `create` per record
//! into a data stream.
//!
//! Each record gets a deterministic `_id` (file fingerprint + line offset), which makes
//! retries idempotent: a document that an earlier attempt already created comes back
//! `409 version_conflict`, and that counts as delivered. This is what lets the sink
//! retry a whole batch when only some of its items failed.
//!
//! A 2xx bulk answer still reports each item on its own:
//! - 2xx or 409 → delivered;
//! - 429 or 5xx (a full write queue, a shard moving) → the whole batch is retried
//!   (`SinkError::Retry`, backoff chosen by the driver);
//! - anything else (400 mapping errors and the like) will fail the same way every time
//!   → counted as rejected, but only when no item asked for a retry (otherwise the
//!   retry reports them again and they are counted once, at the end).
//!
//! A non-2xx answer to the request itself is classified like any HTTP sink.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::logship::chunk::Chunk;
use crate::logship::config::ElasticsearchSinkConfig;
use crate::logship::record;
use crate::logship::sinks::otlp::unix_nanos;
use crate::logship::sinks::{Delivered, Sink, SinkError, net};

/// Only the parts of the bulk answer we read: keeps the answer small on big batches.
const FILTER_PATH: &str = "errors,items.*.status,items.*.error.type,items.*.error.reason";

pub struct ElasticsearchSink {
    endpoint: net::Endpoint,
    /// `{"_index":"<data stream>"` with the name JSON-escaped once.
    index_json: String,
}

impl ElasticsearchSink {
    pub fn new(c: &ElasticsearchSinkConfig) -> Result<Self, String> {
        if c.endpoint.is_empty() {
            return Err("endpoint is required (e.g. http://elasticsearch:9200)".into());
        }
        if c.data_stream.is_empty() {
            return Err("data_stream must not be empty".into());
        }
        Ok(Self {
            endpoint: net::Endpoint::new(
                format!(
                    "{}/_bulk?filter_path={FILTER_PATH}",
                    c.endpoint.trim_end_matches('/')
                ),
                net::headers(&c.headers)?,
                c.compression,
            )?,
            index_json: record::json_string(&c.data_stream),
        })
    }

    /// The NDJSON body: an action line and the document for each record.
    fn body(&self, batch: &[Arc<Chunk>]) -> Vec<u8> {
        let size: usize = batch.iter().map(|c| c.data.len() + c.len() * 128).sum();
        let mut out = Vec::with_capacity(size);
        for chunk in batch {
            for (bytes, meta) in chunk.iter() {
                out.extend_from_slice(b"{\"create\":{\"_index\":");
                out.extend_from_slice(self.index_json.as_bytes());
                out.extend_from_slice(b",\"_id\":");
                out.extend_from_slice(record::json_string(&chunk.record_id(meta)).as_bytes());
                out.extend_from_slice(b"}}\n");
                document(bytes, &mut out);
                out.push(b'\n');
            }
        }
        out
    }
}

/// The record with `@timestamp` (the field data streams require) spliced in front: the
/// record's own `timestamp` when it is valid RFC 3339, else now. A record that already
/// has `@timestamp` is sent as is; the rest of the record is never re-encoded.
fn document(bytes: &[u8], out: &mut Vec<u8>) {
    let rec = record::parse(bytes);
    if rec.contains_key("@timestamp") {
        out.extend_from_slice(bytes);
        return;
    }
    let ts = match rec.get("timestamp") {
        Some(Value::String(t)) if unix_nanos(t).is_some() => t.clone(),
        _ => minirag_contracts::timestamp_now(),
    };
    out.extend_from_slice(b"{\"@timestamp\":");
    out.extend_from_slice(record::json_string(&ts).as_bytes());
    let body = bytes.trim_ascii();
    match body.strip_prefix(b"{") {
        Some(rest) if !rec.is_empty() => {
            out.push(b',');
            out.extend_from_slice(rest);
        }
        _ if body == b"{}" => out.push(b'}'),
        _ => {
            // Not an object: the shipper never makes one, but keep the text.
            out.extend_from_slice(b",\"message\":");
            out.extend_from_slice(record::json_string(&String::from_utf8_lossy(bytes)).as_bytes());
            out.push(b'}');
        }
    }
}

#[derive(Deserialize, Default)]
struct BulkAnswer {
    #[serde(default)]
    errors: bool,
    /// Each item is `{"<action>": {"status": …, "error": {…}}}`.
    #[serde(default)]
    items: Vec<std::collections::HashMap<String, BulkItem>>,
}

#[derive(Deserialize)]
struct BulkItem {
    #[serde(default)]
    status: u16,
    #[serde(default)]
    error: Option<Value>,
}

/// The verdict on a 2xx bulk answer (see the module doc).
fn judge(answer: &BulkAnswer) -> Result<Delivered, SinkError> {
    if !answer.errors {
        return Ok(Delivered::default());
    }
    let (mut retry, mut rejected) = (0u64, 0u64);
    let mut first_retry = None;
    for item in answer.items.iter().flat_map(|i| i.values()) {
        match item.status {
            200..=299 | 409 => {}
            429 | 500..=599 => {
                retry += 1;
                first_retry.get_or_insert(item);
            }
            _ => rejected += 1,
        }
    }
    if let Some(item) = first_retry {
        return Err(SinkError::Retry {
            reason: format!(
                "{retry} of {} documents not indexed yet, e.g. {}",
                answer.items.len(),
                describe(item)
            ),
            after: None,
        });
    }
    // The driver logs the count; the causes are in the peer's answer and its logs.
    Ok(Delivered { rejected })
}

fn describe(item: &BulkItem) -> String {
    let field = |k: &str| {
        item.error
            .as_ref()
            .and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let text = format!(
        "HTTP {} {}: {}",
        item.status,
        field("type"),
        field("reason")
    );
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

impl Sink for ElasticsearchSink {
    async fn deliver(&self, batch: &[Arc<Chunk>]) -> Result<Delivered, SinkError> {
        let resp = self
            .endpoint
            .post("application/x-ndjson", self.body(batch))
            .await?;
        let resp = net::classify(resp).await?;
        // A 2xx whose body we cannot read or parse: the peer took the request, and
        // retrying could not tell us more; count it delivered.
        let answer = resp.bytes().await.unwrap_or_default();
        let answer: BulkAnswer = serde_json::from_slice(&answer).unwrap_or_default();
        judge(&answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(line: &str) -> Value {
        let mut out = Vec::new();
        document(line.as_bytes(), &mut out);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn documents_get_a_timestamp() {
        let d = doc(r#"{"timestamp":"2026-11-28T10:00:00.123Z","message":"m"}"#);
        assert_eq!(d["@timestamp"], "2026-11-28T10:00:00.123Z");
        assert_eq!(d["message"], "m");
        let d = doc(r#"{"message":"plain"}"#);
        assert!(d["@timestamp"].as_str().unwrap().ends_with('Z'));
        let d = doc(r#"{"timestamp":"soon","message":"x"}"#);
        assert_ne!(d["@timestamp"], "soon");
        assert_eq!(d["timestamp"], "soon");
        let d = doc(r#"{"@timestamp":"2020-01-01T00:00:00Z"}"#);
        assert_eq!(d["@timestamp"], "2020-01-01T00:00:00Z");
        assert_eq!(doc("{}").as_object().unwrap().len(), 1);
    }

    fn answer(statuses: &[u16]) -> BulkAnswer {
        let items: Vec<Value> = statuses
            .iter()
            .map(|s| serde_json::json!({"create": {"status": s, "error": {"type": "t", "reason": "r"}}}))
            .collect();
        serde_json::from_value(serde_json::json!({"errors": true, "items": items})).unwrap()
    }

    #[test]
    fn judges_items() {
        assert!(matches!(
            judge(&answer(&[201, 409])),
            Ok(Delivered { rejected: 0 })
        ));
        assert!(matches!(
            judge(&answer(&[201, 400, 400])),
            Ok(Delivered { rejected: 2 })
        ));
        assert!(matches!(
            judge(&answer(&[201, 400, 429])),
            Err(SinkError::Retry { after: None, .. })
        ));
        assert!(matches!(
            judge(&answer(&[503])),
            Err(SinkError::Retry { .. })
        ));
        assert!(matches!(
            judge(&BulkAnswer::default()),
            Ok(Delivered { rejected: 0 })
        ));
    }
}
