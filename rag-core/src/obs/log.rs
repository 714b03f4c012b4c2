//! JSON log lines in the shared schema (DESIGN §4.1), built as a `tracing` layer.
//!
//! Request-scoped ids live on the request span; every event inside it inherits them,
//! so handlers never pass ids around just to log.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::sync::Mutex;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Record};
use tracing::{Event, Id, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use super::rotate::RotatingFile;
use crate::config::LogLevel;

/// Keys every record carries, `null` when unknown.
pub const REQUIRED_KEYS: &[&str] = &[
    "timestamp",
    "level",
    "logger",
    "message",
    "event",
    "request_id",
    "trace_id",
    "span_id",
    "user_id",
    "workspace_id",
    "organization_id",
];

pub struct LogSink {
    stdout: bool,
    file: Option<Mutex<RotatingFile>>,
}

impl LogSink {
    pub fn new(stdout: bool, file: Option<RotatingFile>) -> Self {
        Self {
            stdout,
            file: file.map(Mutex::new),
        }
    }

    fn write(&self, line: &[u8]) {
        if self.stdout {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line);
        }
        if let Some(file) = &self.file {
            let mut f = match file.lock() {
                Ok(f) => f,
                Err(poisoned) => poisoned.into_inner(),
            };
            if let Err(e) = f.write_line(line) {
                // Logging must never take the service down; say so where an operator looks.
                let _ = writeln!(std::io::stderr(), "rag-core: cannot write log file: {e}");
            }
        }
    }
}

pub struct JsonLayer {
    sink: LogSink,
    min_level: Level,
}

impl JsonLayer {
    pub fn new(sink: LogSink, level: LogLevel) -> Self {
        let min_level = match level {
            LogLevel::Debug => Level::DEBUG,
            LogLevel::Info => Level::INFO,
            LogLevel::Warn => Level::WARN,
            LogLevel::Error => Level::ERROR,
        };
        Self { sink, min_level }
    }
}

#[derive(Default)]
struct Fields(BTreeMap<&'static str, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name(), Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name(), Value::from(value));
    }
}

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::TRACE | Level::DEBUG => "DEBUG",
        Level::INFO => "INFO",
        Level::WARN => "WARN",
        Level::ERROR => "ERROR",
    }
}

pub use minirag_contracts::timestamp_now;

impl<S> tracing_subscriber::Layer<S> for JsonLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        // Spans are always kept (they carry request ids); events are filtered by level
        // and only our own crate's events are written.
        metadata.is_span()
            || (*metadata.level() <= self.min_level && metadata.target().starts_with("rag_core"))
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(fields) = ext.get_mut::<Fields>() {
                values.record(fields);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut obj = Map::new();
        for key in REQUIRED_KEYS {
            obj.insert((*key).to_string(), Value::Null);
        }
        obj.insert("timestamp".into(), Value::String(timestamp_now()));
        obj.insert(
            "level".into(),
            Value::String(level_name(meta.level()).into()),
        );
        obj.insert(
            "logger".into(),
            Value::String(meta.target().replace("::", ".")),
        );
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<Fields>() {
                    for (k, v) in &fields.0 {
                        // Dotted names are span attributes (semantic conventions), not
                        // log-schema fields.
                        if !k.contains('.') {
                            obj.insert((*k).to_string(), v.clone());
                        }
                    }
                }
            }
        }
        // The innermost span's own ids, so a line logged inside "fts_search" names that
        // span, not only the request's.
        if let Some(span) = ctx.event_span(event)
            && let Some((trace_id, span_id)) = tracing::dispatcher::get_default(|d| {
                tracing_opentelemetry::get_otel_context(&span.id(), d).and_then(|cx| {
                    use opentelemetry::trace::TraceContextExt;
                    let sc = cx.span().span_context().clone();
                    sc.is_valid()
                        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
                })
            })
        {
            obj.insert("trace_id".into(), Value::String(trace_id));
            obj.insert("span_id".into(), Value::String(span_id));
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        for (k, v) in fields.0 {
            obj.insert(k.to_string(), v);
        }
        if obj.get("event").is_none_or(Value::is_null) {
            obj.insert("event".into(), Value::String("log.message".into()));
        }
        let mut line = match serde_json::to_vec(&Value::Object(obj)) {
            Ok(l) => l,
            Err(_) => return,
        };
        line.push(b'\n');
        self.sink.write(&line);
    }
}
