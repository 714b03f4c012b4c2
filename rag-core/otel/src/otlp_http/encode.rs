//! `ExportTraceServiceRequest` written straight from a `SpanData` batch into a reused
//! buffer: no intermediate `opentelemetry_proto` structs, no `String` per attribute key or
//! value, no hash map for the scope grouping.
//!
//! The output decodes to exactly what opentelemetry-proto's own conversion
//! (`group_spans_by_resource_and_scope`) would encode: one `ResourceSpans`, one
//! `ScopeSpans` per distinct instrumentation scope in order of first appearance, spans in
//! batch order, and the same presence rules (the resource, each scope and each span's
//! status are always present; a `oneof` value is written even when it is the default).
//!
//! Field numbers are those of opentelemetry-proto's `trace.proto`, `common.proto`,
//! `resource.proto` and `trace_service.proto` (v1), written in field-number order as prost
//! writes them, so the bytes are the same as prost's for the same batch. A nested message's length goes before
//! its content: small ones (attributes, status) are sized up front, larger ones (span,
//! event, link, scope, the request itself) get a guessed length slot that is widened or
//! narrowed in place once the content is written, so the buffer is the only memory used.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, SpanKind, Status, TraceState};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;

// Wire types.
const VARINT: u32 = 0;
const I64: u32 = 1;
const LEN: u32 = 2;
const I32: u32 = 5;

// ExportTraceServiceRequest
const REQUEST_RESOURCE_SPANS: u32 = 1;
// ResourceSpans
const RESOURCE_SPANS_RESOURCE: u32 = 1;
const RESOURCE_SPANS_SCOPE_SPANS: u32 = 2;
const RESOURCE_SPANS_SCHEMA_URL: u32 = 3;
// Resource
const RESOURCE_ATTRIBUTES: u32 = 1;
// ScopeSpans
const SCOPE_SPANS_SCOPE: u32 = 1;
const SCOPE_SPANS_SPANS: u32 = 2;
const SCOPE_SPANS_SCHEMA_URL: u32 = 3;
// InstrumentationScope
const SCOPE_NAME: u32 = 1;
const SCOPE_VERSION: u32 = 2;
const SCOPE_ATTRIBUTES: u32 = 3;
// Span
const SPAN_TRACE_ID: u32 = 1;
const SPAN_SPAN_ID: u32 = 2;
const SPAN_TRACE_STATE: u32 = 3;
const SPAN_PARENT_SPAN_ID: u32 = 4;
const SPAN_NAME: u32 = 5;
const SPAN_KIND: u32 = 6;
const SPAN_START: u32 = 7;
const SPAN_END: u32 = 8;
const SPAN_ATTRIBUTES: u32 = 9;
const SPAN_DROPPED_ATTRIBUTES: u32 = 10;
const SPAN_EVENTS: u32 = 11;
const SPAN_DROPPED_EVENTS: u32 = 12;
const SPAN_LINKS: u32 = 13;
const SPAN_DROPPED_LINKS: u32 = 14;
const SPAN_STATUS: u32 = 15;
const SPAN_FLAGS: u32 = 16;
// Span.Event
const EVENT_TIME: u32 = 1;
const EVENT_NAME: u32 = 2;
const EVENT_ATTRIBUTES: u32 = 3;
const EVENT_DROPPED_ATTRIBUTES: u32 = 4;
// Span.Link
const LINK_TRACE_ID: u32 = 1;
const LINK_SPAN_ID: u32 = 2;
const LINK_TRACE_STATE: u32 = 3;
const LINK_ATTRIBUTES: u32 = 4;
const LINK_DROPPED_ATTRIBUTES: u32 = 5;
const LINK_FLAGS: u32 = 6;
// Status
const STATUS_MESSAGE: u32 = 2;
const STATUS_CODE: u32 = 3;
// KeyValue
const KV_KEY: u32 = 1;
const KV_VALUE: u32 = 2;
// AnyValue (oneof)
const ANY_STRING: u32 = 1;
const ANY_BOOL: u32 = 2;
const ANY_INT: u32 = 3;
const ANY_DOUBLE: u32 = 4;
const ANY_ARRAY: u32 = 5;
// ArrayValue
const ARRAY_VALUES: u32 = 1;

// SpanFlags: the "is remote" bits of the parent (the low byte holds the W3C trace flags).
const FLAG_CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_CONTEXT_IS_REMOTE: u32 = 0x200;

/// Encodes span batches for one resource. Keeps its scratch space between batches.
#[derive(Debug, Default)]
pub struct TraceEncoder {
    /// `ResourceSpans.resource` and `ResourceSpans.schema_url`, tags included: the same
    /// for every batch, so encoded once.
    resource: Vec<u8>,
    resource_schema_url: Vec<u8>,
    /// Per span of the current batch: the index of its scope in `scope_first`.
    scope_of: Vec<u32>,
    /// Per distinct scope: the index of the first span that has it.
    scope_first: Vec<usize>,
}

impl TraceEncoder {
    pub fn new(resource: &Resource) -> Self {
        let mut e = Self::default();
        e.set_resource(resource);
        e
    }

    pub fn set_resource(&mut self, resource: &Resource) {
        self.resource.clear();
        let at = open(&mut self.resource, RESOURCE_SPANS_RESOURCE, 2);
        for (k, v) in resource.iter() {
            write_key_value(&mut self.resource, RESOURCE_ATTRIBUTES, k.as_str(), v);
        }
        close(&mut self.resource, at);
        self.resource_schema_url.clear();
        if let Some(url) = resource.schema_url() {
            write_str(
                &mut self.resource_schema_url,
                RESOURCE_SPANS_SCHEMA_URL,
                url,
            );
        }
    }

    /// Replaces `out` with the `ExportTraceServiceRequest` for `spans` (nothing for an
    /// empty batch, which is also a valid, empty request).
    pub fn encode(&mut self, spans: &[SpanData], out: &mut Vec<u8>) {
        out.clear();
        if spans.is_empty() {
            return;
        }
        self.group_by_scope(spans);
        let request = open(out, REQUEST_RESOURCE_SPANS, 3);
        out.extend_from_slice(&self.resource);
        for (index, &first) in self.scope_first.iter().enumerate() {
            let scope = &spans[first].instrumentation_scope;
            let scope_spans = open(out, RESOURCE_SPANS_SCOPE_SPANS, 3);
            write_scope(out, scope);
            for (span, _) in spans[first..]
                .iter()
                .zip(&self.scope_of[first..])
                .filter(|(_, s)| **s as usize == index)
            {
                write_span(out, span);
            }
            if let Some(url) = scope.schema_url() {
                write_str(out, SCOPE_SPANS_SCHEMA_URL, url);
            }
            close(out, scope_spans);
        }
        out.extend_from_slice(&self.resource_schema_url);
        close(out, request);
    }

    /// Scopes in order of first appearance. A batch usually has one or two, so a linear
    /// search (after checking the previous span's scope) beats hashing every span's.
    fn group_by_scope(&mut self, spans: &[SpanData]) {
        self.scope_of.clear();
        self.scope_first.clear();
        let mut last: Option<u32> = None;
        for (i, span) in spans.iter().enumerate() {
            let scope = &span.instrumentation_scope;
            let same_as = |index: u32| {
                same_scope(
                    &spans[self.scope_first[index as usize]].instrumentation_scope,
                    scope,
                )
            };
            let index = match last {
                Some(l) if same_as(l) => l,
                _ => match (0..self.scope_first.len() as u32).find(|&s| same_as(s)) {
                    Some(s) => s,
                    None => {
                        self.scope_first.push(i);
                        self.scope_first.len() as u32 - 1
                    }
                },
            };
            last = Some(index);
            self.scope_of.push(index);
        }
    }
}

/// `InstrumentationScope`'s own equality, without its allocation for scopes that have no
/// attributes (the usual case).
fn same_scope(a: &InstrumentationScope, b: &InstrumentationScope) -> bool {
    if a.name() != b.name() || a.version() != b.version() || a.schema_url() != b.schema_url() {
        return false;
    }
    match (a.attributes().next(), b.attributes().next()) {
        (None, None) => true,
        _ => a == b,
    }
}

fn write_scope(out: &mut Vec<u8>, scope: &InstrumentationScope) {
    let at = open(out, SCOPE_SPANS_SCOPE, 1);
    write_str(out, SCOPE_NAME, scope.name());
    if let Some(v) = scope.version() {
        write_str(out, SCOPE_VERSION, v);
    }
    for kv in scope.attributes() {
        write_kv(out, SCOPE_ATTRIBUTES, kv);
    }
    close(out, at);
}

fn write_span(out: &mut Vec<u8>, span: &SpanData) {
    let at = open(out, SCOPE_SPANS_SPANS, 2);
    let cx = &span.span_context;
    write_bytes(out, SPAN_TRACE_ID, &cx.trace_id().to_bytes());
    write_bytes(out, SPAN_SPAN_ID, &cx.span_id().to_bytes());
    write_trace_state(out, SPAN_TRACE_STATE, cx.trace_state());
    if span.parent_span_id != SpanId::INVALID {
        write_bytes(out, SPAN_PARENT_SPAN_ID, &span.parent_span_id.to_bytes());
    }
    write_str(out, SPAN_NAME, &span.name);
    write_uint(out, SPAN_KIND, kind(&span.span_kind));
    write_fixed64(out, SPAN_START, nanos(span.start_time));
    write_fixed64(out, SPAN_END, nanos(span.end_time));
    for kv in &span.attributes {
        write_kv(out, SPAN_ATTRIBUTES, kv);
    }
    write_uint(
        out,
        SPAN_DROPPED_ATTRIBUTES,
        span.dropped_attributes_count.into(),
    );
    for event in span.events.iter() {
        let ev = open(out, SPAN_EVENTS, 1);
        write_fixed64(out, EVENT_TIME, nanos(event.timestamp));
        write_str(out, EVENT_NAME, &event.name);
        for kv in &event.attributes {
            write_kv(out, EVENT_ATTRIBUTES, kv);
        }
        write_uint(
            out,
            EVENT_DROPPED_ATTRIBUTES,
            event.dropped_attributes_count.into(),
        );
        close(out, ev);
    }
    write_uint(out, SPAN_DROPPED_EVENTS, span.events.dropped_count.into());
    for link in span.links.iter() {
        let l = open(out, SPAN_LINKS, 1);
        let lcx = &link.span_context;
        write_bytes(out, LINK_TRACE_ID, &lcx.trace_id().to_bytes());
        write_bytes(out, LINK_SPAN_ID, &lcx.span_id().to_bytes());
        write_trace_state(out, LINK_TRACE_STATE, lcx.trace_state());
        for kv in &link.attributes {
            write_kv(out, LINK_ATTRIBUTES, kv);
        }
        write_uint(
            out,
            LINK_DROPPED_ATTRIBUTES,
            link.dropped_attributes_count.into(),
        );
        write_fixed32(
            out,
            LINK_FLAGS,
            flags(lcx.is_remote(), lcx.trace_flags().to_u8()),
        );
        close(out, l);
    }
    write_uint(out, SPAN_DROPPED_LINKS, span.links.dropped_count.into());
    write_status(out, &span.status);
    write_fixed32(
        out,
        SPAN_FLAGS,
        flags(span.parent_span_is_remote, cx.trace_flags().to_u8()),
    );
    close(out, at);
}

/// W3C trace flags plus whether the parent (or linked) context is remote.
fn flags(remote: bool, trace_flags: u8) -> u32 {
    let mut f = u32::from(trace_flags) | FLAG_CONTEXT_HAS_IS_REMOTE;
    if remote {
        f |= FLAG_CONTEXT_IS_REMOTE;
    }
    f
}

fn kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Always present (as the SDK's conversion has it), even when unset.
fn write_status(out: &mut Vec<u8>, status: &Status) {
    let (code, message): (u64, &str) = match status {
        Status::Unset => (0, ""),
        Status::Ok => (1, ""),
        Status::Error { description } => (2, description),
    };
    let mut len = 0;
    if !message.is_empty() {
        len += 1 + varint_len(message.len() as u64) + message.len();
    }
    if code != 0 {
        len += 1 + varint_len(code);
    }
    tag(out, SPAN_STATUS, LEN);
    varint(out, len as u64);
    write_str(out, STATUS_MESSAGE, message);
    write_uint(out, STATUS_CODE, code);
}

/// `key=value,key=value`, written without building the header string.
fn write_trace_state(out: &mut Vec<u8>, field: u32, state: &TraceState) {
    let mut len = 0;
    let mut entries = 0;
    for (k, v) in state {
        len += k.len() + 1 + v.len();
        entries += 1;
    }
    if entries == 0 {
        return;
    }
    len += entries - 1;
    tag(out, field, LEN);
    varint(out, len as u64);
    for (i, (k, v)) in state.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
    }
}

fn write_kv(out: &mut Vec<u8>, field: u32, kv: &KeyValue) {
    write_key_value(out, field, kv.key.as_str(), &kv.value);
}

/// A `KeyValue` message; its size is computed first, so no length slot is needed.
fn write_key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    let value_len = any_value_len(value);
    // An empty key is the proto3 default: left out.
    let key_len = if key.is_empty() {
        0
    } else {
        len_field(key.len())
    };
    let len = key_len + len_field(value_len);
    tag(out, field, LEN);
    varint(out, len as u64);
    write_str(out, KV_KEY, key);
    tag(out, KV_VALUE, LEN);
    varint(out, value_len as u64);
    write_any_value(out, value);
}

/// Size of a length-delimited field with a one-byte tag and `len` bytes of content.
fn len_field(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// Size of an `AnyValue` message's content (its one `oneof` field).
fn any_value_len(value: &Value) -> usize {
    match value {
        Value::Bool(_) => 2,
        Value::I64(i) => 1 + varint_len(*i as u64),
        Value::F64(_) => 9,
        Value::String(s) => len_field(s.as_str().len()),
        Value::Array(a) => len_field(array_value_len(a)),
        // A value type newer than this encoder: sent as its string form.
        other => len_field(other.as_str().len()),
    }
}

/// Size of an `ArrayValue` message's content: each element an `AnyValue`.
fn array_value_len(array: &Array) -> usize {
    match array {
        Array::Bool(v) => v.len() * len_field(2),
        Array::I64(v) => v.iter().map(|i| len_field(1 + varint_len(*i as u64))).sum(),
        Array::F64(v) => v.len() * len_field(9),
        Array::String(v) => v
            .iter()
            .map(|s| len_field(len_field(s.as_str().len())))
            .sum(),
        _ => 0,
    }
}

fn write_any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(b) => {
            tag(out, ANY_BOOL, VARINT);
            out.push(u8::from(*b));
        }
        Value::I64(i) => {
            tag(out, ANY_INT, VARINT);
            varint(out, *i as u64);
        }
        Value::F64(f) => {
            tag(out, ANY_DOUBLE, I64);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::String(s) => write_str_always(out, ANY_STRING, s.as_str()),
        Value::Array(a) => {
            tag(out, ANY_ARRAY, LEN);
            varint(out, array_value_len(a) as u64);
            write_array_value(out, a);
        }
        other => write_str_always(out, ANY_STRING, &other.as_str()),
    }
}

fn write_array_value(out: &mut Vec<u8>, array: &Array) {
    // Each element: ArrayValue.values (an AnyValue message) holding one oneof field.
    let element = |out: &mut Vec<u8>, len: usize| {
        tag(out, ARRAY_VALUES, LEN);
        varint(out, len as u64);
    };
    match array {
        Array::Bool(v) => {
            for b in v {
                element(out, 2);
                tag(out, ANY_BOOL, VARINT);
                out.push(u8::from(*b));
            }
        }
        Array::I64(v) => {
            for i in v {
                element(out, 1 + varint_len(*i as u64));
                tag(out, ANY_INT, VARINT);
                varint(out, *i as u64);
            }
        }
        Array::F64(v) => {
            for f in v {
                element(out, 9);
                tag(out, ANY_DOUBLE, I64);
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
        }
        Array::String(v) => {
            for s in v {
                element(out, len_field(s.as_str().len()));
                write_str_always(out, ANY_STRING, s.as_str());
            }
        }
        _ => {}
    }
}

// Primitive writers. Proto3 leaves out a field that has its default value; `oneof`
// members are the exception (`write_str_always`).

fn tag(out: &mut Vec<u8>, field: u32, wire_type: u32) {
    varint(out, u64::from((field << 3) | wire_type));
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn write_uint(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(out, field, VARINT);
        varint(out, v);
    }
}

fn write_fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(out, field, I64);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn write_fixed32(out: &mut Vec<u8>, field: u32, v: u32) {
    if v != 0 {
        tag(out, field, I32);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn write_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    if !b.is_empty() {
        write_str_always_bytes(out, field, b);
    }
}

fn write_str(out: &mut Vec<u8>, field: u32, s: &str) {
    write_bytes(out, field, s.as_bytes());
}

fn write_str_always(out: &mut Vec<u8>, field: u32, s: &str) {
    write_str_always_bytes(out, field, s.as_bytes());
}

fn write_str_always_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    tag(out, field, LEN);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A nested message whose length is known only once it is written: its tag, then
/// `reserved` bytes held for the length.
#[derive(Debug, Clone, Copy)]
struct Slot {
    at: usize,
    reserved: usize,
}

fn open(out: &mut Vec<u8>, field: u32, reserved: usize) -> Slot {
    tag(out, field, LEN);
    let at = out.len();
    out.resize(at + reserved, 0);
    Slot { at, reserved }
}

/// Writes the length into the slot, first moving the content when the length needs more
/// or fewer bytes than were reserved (the encoding stays canonical).
fn close(out: &mut Vec<u8>, slot: Slot) {
    let start = slot.at + slot.reserved;
    let end = out.len();
    let len = (end - start) as u64;
    let need = varint_len(len);
    if need > slot.reserved {
        let extra = need - slot.reserved;
        out.resize(end + extra, 0);
        out.copy_within(start..end, start + extra);
    } else if need < slot.reserved {
        let fewer = slot.reserved - need;
        out.copy_within(start..end, start - fewer);
        out.truncate(end - fewer);
    }
    let mut v = len;
    for b in &mut out[slot.at..slot.at + need] {
        *b = ((v & 0x7f) as u8) | if v >= 0x80 { 0x80 } else { 0 };
        v >>= 7;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        for (v, n) in [
            (0u64, 1),
            (1, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (u64::MAX, 10),
        ] {
            assert_eq!(varint_len(v), n, "{v}");
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(out.len(), n, "{v}");
        }
    }

    #[test]
    fn length_slots_grow_and_shrink() {
        for (reserved, content) in [(1, 5), (1, 200), (1, 20_000), (3, 5), (3, 300), (2, 127)] {
            let mut out = vec![0xAA];
            let slot = open(&mut out, 2, reserved);
            out.extend((0..content).map(|i| i as u8));
            close(&mut out, slot);
            let mut expected = vec![0xAA, 0x12];
            varint(&mut expected, content as u64);
            expected.extend((0..content).map(|i| i as u8));
            assert_eq!(out, expected, "reserved {reserved}, content {content}");
        }
    }
}
