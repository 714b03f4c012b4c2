//! OTLP/HTTP logs sink: each batch becomes one `ExportLogsServiceRequest`, sent as
//! protobuf (the default every collector accepts) or as OTLP/JSON.
//!
//! A record maps onto a `LogRecord` so that backends can index it natively instead of
//! parsing a JSON string: `message` is the body, `level` the severity, `timestamp` the
//! event time, `trace_id`/`span_id` the correlation ids (DESIGN §4.1). Host and
//! Kubernetes fields describe where the record came from, not the event, so they go to
//! the resource, and records are grouped into one `ResourceLogs` per distinct origin
//! (normally just one per batch). Every other field becomes an attribute.
//!
//! Answers follow the OTLP/HTTP spec: only 429, 502, 503 and 504 are worth retrying
//! (honouring `Retry-After`); 413 lets the driver split the batch; anything else is
//! refused for good; a 2xx with `partial_success` counts the records the collector
//! dropped as rejected, without a retry (the spec forbids retrying them).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::{Map, Value, json};

use crate::logship::chunk::Chunk;
use crate::logship::config::{OtlpEncoding, OtlpSinkConfig};
use crate::logship::record;
use crate::logship::sinks::{Delivered, Sink, SinkError, net};

/// The instrumentation scope of every shipped record: tells a backend these records
/// were collected from files by this agent, not emitted by an SDK.
pub const SCOPE_NAME: &str = "minirag-agent.logship";

/// `service.name` when `OTEL_SERVICE_NAME` is not set (the resource needs one: backends
/// file records without it under `unknown_service`).
pub const DEFAULT_SERVICE_NAME: &str = "minirag";

pub struct OtlpSink {
    endpoint: net::Endpoint,
    encoding: OtlpEncoding,
    service_name: String,
}

impl OtlpSink {
    pub fn new(c: &OtlpSinkConfig) -> Result<Self, String> {
        if c.endpoint.is_empty() {
            return Err("endpoint is required (e.g. http://collector:4318/v1/logs)".into());
        }
        // Read once: the resource must not change under a running shipper.
        let service_name = std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string());
        Ok(Self {
            endpoint: net::Endpoint::new(
                c.endpoint.clone(),
                net::headers(&c.headers)?,
                c.compression,
            )?,
            encoding: c.encoding,
            service_name,
        })
    }

    /// The export request for `batch` and the number of records in it.
    fn build(&self, batch: &[Arc<Chunk>]) -> (ExportLogsServiceRequest, u64) {
        let observed = now_nanos();
        let mut count = 0u64;
        // A linear search is right for the usual single group.
        let mut groups: Vec<(Origin, Vec<LogRecord>)> = Vec::new();
        for chunk in batch {
            for (bytes, _) in chunk.iter() {
                count += 1;
                let (origin, rec) = log_record(bytes, observed);
                match groups.iter_mut().find(|(o, _)| *o == origin) {
                    Some((_, recs)) => recs.push(rec),
                    None => groups.push((origin, vec![rec])),
                }
            }
        }
        let resource_logs = groups
            .into_iter()
            .map(|(origin, log_records)| {
                let mut attributes = Vec::with_capacity(origin.len() + 1);
                // A record's own `service.name` (e.g. a configured static field) wins.
                if !origin.iter().any(|(k, _)| k == "service.name") {
                    attributes.push(kv("service.name", string_value(&self.service_name)));
                }
                for (k, v) in origin {
                    attributes.push(kv(&k, string_value(&v)));
                }
                ResourceLogs {
                    resource: Some(Resource {
                        attributes,
                        ..Default::default()
                    }),
                    scope_logs: vec![ScopeLogs {
                        scope: Some(InstrumentationScope {
                            name: SCOPE_NAME.into(),
                            version: env!("CARGO_PKG_VERSION").into(),
                            ..Default::default()
                        }),
                        log_records,
                        ..Default::default()
                    }],
                    ..Default::default()
                }
            })
            .collect();
        (ExportLogsServiceRequest { resource_logs }, count)
    }
}

impl Sink for OtlpSink {
    async fn deliver(&self, batch: &[Arc<Chunk>]) -> Result<Delivered, SinkError> {
        let (request, count) = self.build(batch);
        let (body, content_type) = match self.encoding {
            OtlpEncoding::Protobuf => (request.encode_to_vec(), "application/x-protobuf"),
            OtlpEncoding::Json => (
                serde_json::to_vec(&json_request(&request)).unwrap_or_default(),
                "application/json",
            ),
        };
        drop(request);
        let resp = self.endpoint.post(content_type, body).await?;
        let status = resp.status();
        let answer_is_json = match resp.headers().get(reqwest::header::CONTENT_TYPE) {
            Some(v) => v.to_str().is_ok_and(|t| t.contains("json")),
            None => self.encoding == OtlpEncoding::Json,
        };
        if status.is_success() {
            // The collector took the request: a body we cannot read or decode still
            // means success (retrying could only duplicate what it kept).
            let answer = resp.bytes().await.unwrap_or_default();
            let rejected = partial_rejections(&answer, answer_is_json).min(count);
            return Ok(Delivered { rejected });
        }
        let after = net::retry_after(&resp);
        let answer = resp.bytes().await.unwrap_or_default();
        let reason = format!("HTTP {status}: {}", error_detail(&answer, answer_is_json));
        match status.as_u16() {
            413 => Err(SinkError::TooLarge),
            // The only codes the OTLP/HTTP spec calls retryable.
            429 | 502 | 503 | 504 => Err(SinkError::Retry { reason, after }),
            _ => Err(SinkError::Rejected { reason }),
        }
    }
}

/// A record's resource fields, `(name, value)` sorted by name.
type Origin = Vec<(String, String)>;

/// Record fields that describe the origin and go to the resource.
fn is_resource_field(key: &str) -> bool {
    key == "host.name" || key == "service.name" || key.starts_with("k8s.")
}

/// One shipped record as a `LogRecord`, with its resource fields taken out.
fn log_record(bytes: &[u8], observed: u64) -> (Origin, LogRecord) {
    let mut rec = LogRecord {
        observed_time_unix_nano: observed,
        ..Default::default()
    };
    let mut map = record::parse(bytes);
    if map.is_empty() && bytes.trim_ascii() != b"{}" {
        // Not an object: the shipper never makes such a record, but never lose text.
        rec.body = Some(string_value(&String::from_utf8_lossy(bytes)));
        return (Vec::new(), rec);
    }
    // Sorted (the map is ordered by key), so equal origins compare equal.
    let mut origin = Vec::new();
    map.retain(|k, v| match v {
        Value::String(s) if is_resource_field(k) => {
            origin.push((k.clone(), std::mem::take(s)));
            false
        }
        _ => true,
    });
    match map.remove("message") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => rec.body = Some(string_value(&s)),
        Some(other) => rec.body = any_value(other),
    }
    if let Some(Value::String(level)) = map.remove("level") {
        rec.severity_number = severity(&level) as i32;
        rec.severity_text = level;
    }
    // Fields that do not fit their typed slot stay as attributes: nothing is lost.
    if let Some(Value::String(ts)) = map.get("timestamp")
        && let Some(ns) = unix_nanos(ts)
    {
        rec.time_unix_nano = ns;
        map.remove("timestamp");
    }
    if let Some(Value::String(id)) = map.get("trace_id")
        && let Some(b) = hex_id(id, 16)
    {
        rec.trace_id = b;
        map.remove("trace_id");
    }
    if let Some(Value::String(id)) = map.get("span_id")
        && let Some(b) = hex_id(id, 8)
    {
        rec.span_id = b;
        map.remove("span_id");
    }
    let mut attributes = Vec::with_capacity(map.len() + 1);
    if let Some(Value::String(event)) = map.remove("event") {
        // Both the typed field (OTLP 1.5+) and the attribute older backends index.
        if !map.contains_key("event.name") {
            attributes.push(kv("event.name", string_value(&event)));
        }
        rec.event_name = event;
    }
    for (k, v) in map {
        if let Some(value) = any_value(v) {
            attributes.push(KeyValue {
                key: k,
                value: Some(value),
                ..Default::default()
            });
        }
    }
    rec.attributes = attributes;
    (origin, rec)
}

/// The level names of the log schema and their usual synonyms; anything else is
/// UNSPECIFIED (its text is still in `severity_text`).
fn severity(level: &str) -> SeverityNumber {
    let level = level.trim();
    let is = |name: &str| level.eq_ignore_ascii_case(name);
    if is("TRACE") {
        SeverityNumber::Trace
    } else if is("DEBUG") {
        SeverityNumber::Debug
    } else if is("INFO") {
        SeverityNumber::Info
    } else if is("WARN") || is("WARNING") {
        SeverityNumber::Warn
    } else if is("ERROR") {
        SeverityNumber::Error
    } else if is("FATAL") || is("CRITICAL") {
        SeverityNumber::Fatal
    } else {
        SeverityNumber::Unspecified
    }
}

fn kv(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(value),
        ..Default::default()
    }
}

fn string_value(s: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s.to_string())),
    }
}

/// Scalars keep their type; nested objects and arrays travel as their JSON text (an
/// attribute backends can show and search, where a kvlist is often flattened or
/// dropped). Null carries nothing and is skipped.
fn any_value(v: Value) -> Option<AnyValue> {
    use any_value::Value as V;
    let value = match v {
        Value::Null => return None,
        Value::Bool(b) => V::BoolValue(b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                V::IntValue(i)
            } else if n.is_u64() {
                // Above i64::MAX: the exact digits beat a rounded double.
                V::StringValue(n.to_string())
            } else {
                V::DoubleValue(n.as_f64().unwrap_or_default())
            }
        }
        Value::String(s) => V::StringValue(s),
        other => V::StringValue(other.to_string()),
    };
    Some(AnyValue { value: Some(value) })
}

/// Raw id bytes from `len` bytes of hex; None if malformed or all zero (the W3C
/// invalid id, which backends treat as absent anyway).
fn hex_id(s: &str, len: usize) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if s.len() != 2 * len {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(len);
    for pair in s.chunks_exact(2) {
        out.push(nibble(pair[0])? << 4 | nibble(pair[1])?);
    }
    out.iter().any(|b| *b != 0).then_some(out)
}

pub(crate) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Nanoseconds since the Unix epoch of an RFC 3339 timestamp (`Z` or a numeric offset,
/// any number of fraction digits; the log schema writes `2026-11-28T10:00:00.123Z`).
/// None for anything else or before 1970: the caller then falls back (no time for
/// OTLP, now for Loki and Elasticsearch). Hand-written because the agent has no date
/// crate and this is the only date it ever reads. Also used by the Loki and
/// Elasticsearch sinks.
pub(crate) fn unix_nanos(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |from: usize, to: usize| -> Option<i64> {
        let digits = b.get(from..to)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let sep = |at: usize, allowed: &[u8]| b.get(at).is_some_and(|c| allowed.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    // 60 is a leap second; counted as the next second's start, like most parsers.
    if day < 1 || day > month_days || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: u64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while let Some(c) = b.get(i).filter(|c| c.is_ascii_digit()) {
            if i - start < 9 {
                nanos = nanos * 10 + u64::from(c - b'0');
            }
            i += 1;
        }
        let digits = (i - start).min(9);
        if digits == 0 {
            return None;
        }
        nanos *= 10u64.pow(9 - digits as u32);
    }
    let offset = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && sep(i + 3, b":") => {
            let (oh, om) = (num(i + 1, i + 3)?, num(i + 4, i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = (oh * 60 + om) * 60;
            if *sign == b'-' { -off } else { off }
        }
        _ => return None,
    };
    // Days since 1970-01-01 (H. Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    let secs = u64::try_from(secs).ok()?;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// Records the collector refused, from an `ExportLogsServiceResponse` (protobuf, or its
/// JSON mapping where 64-bit ints may be strings). 0 when absent or unreadable.
fn partial_rejections(body: &[u8], json: bool) -> u64 {
    let n = if json {
        let v: Value = serde_json::from_slice(body).unwrap_or_default();
        match v.pointer("/partialSuccess/rejectedLogRecords") {
            Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
            Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
            _ => 0,
        }
    } else {
        ExportLogsServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map_or(0, |p| p.rejected_log_records)
    };
    u64::try_from(n).unwrap_or(0)
}

/// `google.rpc.Status`, the body of an OTLP/HTTP error answer in protobuf (only the
/// fields we show).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// A short, printable description of an error answer's body.
fn error_detail(body: &[u8], json: bool) -> String {
    let text = if json {
        let v: Value = serde_json::from_slice(body).unwrap_or_default();
        match v.get("message").and_then(Value::as_str) {
            Some(m) => m.to_string(),
            None => String::from_utf8_lossy(body).into_owned(),
        }
    } else {
        match RpcStatus::decode(body) {
            Ok(s) if !s.message.is_empty() => s.message,
            _ if std::str::from_utf8(body).is_ok() => String::from_utf8_lossy(body).into_owned(),
            _ => "(binary body)".to_string(),
        }
    };
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// The OTLP/JSON mapping of `req`: camelCase names, ids as hex, 64-bit integers as
/// decimal strings, enums as numbers, default values left out (the proto types here
/// carry no serde support, hence by hand).
fn json_request(req: &ExportLogsServiceRequest) -> Value {
    let resource_logs: Vec<Value> = req
        .resource_logs
        .iter()
        .map(|rl| {
            let mut o = Map::new();
            if let Some(r) = &rl.resource {
                o.insert(
                    "resource".into(),
                    json!({ "attributes": json_attributes(&r.attributes) }),
                );
            }
            let scope_logs: Vec<Value> = rl
                .scope_logs
                .iter()
                .map(|sl| {
                    let mut s = Map::new();
                    if let Some(scope) = &sl.scope {
                        s.insert(
                            "scope".into(),
                            json!({ "name": scope.name, "version": scope.version }),
                        );
                    }
                    s.insert(
                        "logRecords".into(),
                        sl.log_records.iter().map(json_record).collect(),
                    );
                    Value::Object(s)
                })
                .collect();
            o.insert("scopeLogs".into(), scope_logs.into());
            Value::Object(o)
        })
        .collect();
    json!({ "resourceLogs": resource_logs })
}

fn json_record(r: &LogRecord) -> Value {
    let mut o = Map::new();
    if r.time_unix_nano != 0 {
        o.insert("timeUnixNano".into(), r.time_unix_nano.to_string().into());
    }
    o.insert(
        "observedTimeUnixNano".into(),
        r.observed_time_unix_nano.to_string().into(),
    );
    if r.severity_number != 0 {
        o.insert("severityNumber".into(), r.severity_number.into());
    }
    if !r.severity_text.is_empty() {
        o.insert("severityText".into(), r.severity_text.clone().into());
    }
    if let Some(body) = &r.body {
        o.insert("body".into(), json_any(body));
    }
    if !r.attributes.is_empty() {
        o.insert("attributes".into(), json_attributes(&r.attributes));
    }
    if !r.trace_id.is_empty() {
        o.insert("traceId".into(), hex(&r.trace_id).into());
    }
    if !r.span_id.is_empty() {
        o.insert("spanId".into(), hex(&r.span_id).into());
    }
    if !r.event_name.is_empty() {
        o.insert("eventName".into(), r.event_name.clone().into());
    }
    Value::Object(o)
}

fn json_attributes(attrs: &[KeyValue]) -> Value {
    attrs
        .iter()
        .map(|kv| {
            json!({
                "key": kv.key,
                "value": kv.value.as_ref().map_or_else(|| json!({}), json_any),
            })
        })
        .collect()
}

fn json_any(v: &AnyValue) -> Value {
    use any_value::Value as V;
    match &v.value {
        Some(V::StringValue(s)) => json!({ "stringValue": s }),
        Some(V::BoolValue(b)) => json!({ "boolValue": b }),
        Some(V::IntValue(i)) => json!({ "intValue": i.to_string() }),
        Some(V::DoubleValue(d)) => json!({ "doubleValue": d }),
        Some(V::ArrayValue(a)) => {
            let values: Vec<Value> = a.values.iter().map(json_any).collect();
            json!({ "arrayValue": { "values": values } })
        }
        Some(V::KvlistValue(l)) => {
            json!({ "kvlistValue": { "values": json_attributes(&l.values) } })
        }
        // Never built by this sink.
        _ => json!({}),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339() {
        assert_eq!(unix_nanos("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            unix_nanos("2026-11-28T10:00:00.123Z"),
            Some(1_795_860_000_123_000_000)
        );
        assert_eq!(
            unix_nanos("2026-11-28T11:00:00.123+01:00"),
            unix_nanos("2026-11-28T10:00:00.123Z")
        );
        assert_eq!(
            unix_nanos("2000-02-29T00:00:00.000000001Z"),
            Some(951_782_400_000_000_001)
        );
        for bad in [
            "",
            "2026-11-28",
            "2026-11-28T10:00:00",
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-11-28T10:00:00.Z",
            "1969-12-31T23:59:59Z",
            "2026-11-28T10:00:00Zjunk",
            "２026-11-28T10:00:00Z",
        ] {
            assert_eq!(unix_nanos(bad), None, "{bad}");
        }
    }

    #[test]
    fn maps_a_record() {
        let line = br#"{"timestamp":"2026-11-28T10:00:00.123Z","level":"WARN","logger":"rag","message":"hi","event":"x.y","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331","n":3,"f":1.5,"ok":true,"nested":{"a":1},"nil":null,"host.name":"h","k8s.pod.name":"p"}"#;
        let (origin, r) = log_record(line, 7);
        assert_eq!(
            origin,
            vec![
                ("host.name".to_string(), "h".to_string()),
                ("k8s.pod.name".to_string(), "p".to_string())
            ]
        );
        assert_eq!(r.severity_number, 13);
        assert_eq!(r.severity_text, "WARN");
        assert_eq!(r.time_unix_nano, 1_795_860_000_123_000_000);
        assert_eq!(r.observed_time_unix_nano, 7);
        assert_eq!(hex(&r.trace_id), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(hex(&r.span_id), "b7ad6b7169203331");
        assert_eq!(r.event_name, "x.y");
        let keys: Vec<&str> = r.attributes.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(keys, ["event.name", "f", "logger", "n", "nested", "ok"]);
        let json = json_record(&r);
        assert_eq!(json["body"]["stringValue"], "hi");
        assert_eq!(json["timeUnixNano"], "1795860000123000000");
        assert_eq!(json["attributes"][3]["value"]["intValue"], "3");
        assert_eq!(json["attributes"][4]["value"]["stringValue"], r#"{"a":1}"#);
    }

    #[test]
    fn keeps_malformed_fields_as_attributes() {
        let (_, r) = log_record(
            br#"{"message":"m","timestamp":"yesterday","trace_id":"xyz","span_id":"0000000000000000","level":"LOUD"}"#,
            0,
        );
        assert_eq!(r.time_unix_nano, 0);
        assert!(r.trace_id.is_empty() && r.span_id.is_empty());
        assert_eq!(r.severity_number, 0);
        let keys: Vec<&str> = r.attributes.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(keys, ["span_id", "timestamp", "trace_id"]);
    }

    #[test]
    fn reads_partial_success() {
        let resp = ExportLogsServiceResponse {
            partial_success: Some(
                opentelemetry_proto::tonic::collector::logs::v1::ExportLogsPartialSuccess {
                    rejected_log_records: 2,
                    error_message: "bad".into(),
                },
            ),
        };
        assert_eq!(partial_rejections(&resp.encode_to_vec(), false), 2);
        assert_eq!(partial_rejections(b"", false), 0);
        assert_eq!(
            partial_rejections(br#"{"partialSuccess":{"rejectedLogRecords":"3"}}"#, true),
            3
        );
        assert_eq!(partial_rejections(br#"{"partialSuccess":{}}"#, true), 0);
        assert_eq!(partial_rejections(b"garbage", true), 0);
    }
}
