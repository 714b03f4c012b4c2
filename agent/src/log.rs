//! The agent's own operational log lines, in the shared schema (DESIGN §4.1), on stderr
//! so they never mix with access lines on stdout.

use std::io::Write;

use serde_json::{Map, Value, json};

fn write(level: &str, event: &str, message: &str, extra: Value) {
    let mut obj = Map::new();
    obj.insert(
        "timestamp".into(),
        Value::from(minirag_contracts::timestamp_now()),
    );
    obj.insert("level".into(), Value::from(level));
    obj.insert("logger".into(), Value::from("minirag_agent"));
    obj.insert("message".into(), Value::from(message));
    obj.insert("event".into(), Value::from(event));
    for k in [
        "request_id",
        "trace_id",
        "span_id",
        "user_id",
        "workspace_id",
        "organization_id",
    ] {
        obj.insert(k.into(), Value::Null);
    }
    if let Value::Object(m) = extra {
        obj.extend(m);
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{}", Value::Object(obj));
}

pub fn info(event: &str, message: &str) {
    write("INFO", event, message, json!({}));
}

pub fn info_with(event: &str, message: &str, extra: Value) {
    write("INFO", event, message, extra);
}

pub fn warn_with(event: &str, message: &str, extra: Value) {
    write("WARN", event, message, extra);
}

pub fn warn(event: &str, message: &str) {
    write("WARN", event, message, json!({}));
}

pub fn error(event: &str, message: &str) {
    write("ERROR", event, message, json!({}));
}
