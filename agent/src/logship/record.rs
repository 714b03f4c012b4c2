//! One log line → one shipped record: a JSON object, UTF-8, one line.
//!
//! A line that is a JSON object (DESIGN §4.1) is validated and kept byte for byte; the
//! enrichment fields (host, file, Kubernetes, static fields) are spliced in before its
//! closing brace, skipping any the record already has. Only a record carrying a field
//! to redact is rebuilt. Any other line becomes `{"message": <the line>, …}`.
//! Validation walks the object without allocating, which keeps parsing at a few hundred
//! MB/s on one core.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

/// Marks on a record that did not arrive as a plain, complete, valid line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineFlags {
    /// Cut at `max_line_bytes`.
    pub truncated: bool,
    /// Shipped without its newline after `partial_line_timeout_ms`.
    pub partial: bool,
}

/// Fields added to every record; built once per file.
#[derive(Debug, Clone)]
pub struct Enrichment {
    /// `(name, JSON-encoded value)`; the name set is checked against each record's keys.
    fields: Vec<(String, String)>,
    /// Lower-cased names whose values are replaced.
    redact: Vec<String>,
}

pub const REDACTED: &str = "[REDACTED]";

impl Enrichment {
    /// `static_fields` are the host / Kubernetes / configured fields; `file` the path.
    pub fn new(static_fields: &[(String, String)], file: &str, redact: &[String]) -> Self {
        let mut fields: Vec<(String, String)> = static_fields
            .iter()
            .filter(|(k, _)| k != "log.file.path")
            .map(|(k, v)| (k.clone(), json_string(v)))
            .collect();
        fields.push(("log.file.path".into(), json_string(file)));
        Self {
            fields,
            redact: redact.iter().map(|r| r.to_ascii_lowercase()).collect(),
        }
    }

    /// Appends the record for `line` (without its newline) and a `\n` to `out`.
    /// Returns true if the line was not valid UTF-8 (shipped with replacement characters).
    pub fn encode(&self, line: &[u8], flags: LineFlags, out: &mut Vec<u8>) -> bool {
        let line = trim_end(line);
        // serde skips ignored string values without checking their UTF-8, so the whole
        // line is checked first (std's validation runs at several GB/s).
        if !flags.truncated
            && std::str::from_utf8(line).is_ok()
            && let Some(keys) = self.scan_object(line)
        {
            if keys.redact {
                self.encode_redacted(line, &keys, flags, out);
            } else {
                // Splice: `{…}` → `{…,"host.name":…}`.
                out.extend_from_slice(&line[..line.len() - 1]);
                self.append_fields(&keys.present, !keys.empty, flags, out);
                out.extend_from_slice(b"}\n");
            }
            return false;
        }
        self.encode_text(line, flags, out)
    }

    /// `{"message": <line>, …}` for anything that is not one JSON object.
    fn encode_text(&self, line: &[u8], flags: LineFlags, out: &mut Vec<u8>) -> bool {
        let (text, invalid_utf8) = match std::str::from_utf8(line) {
            Ok(s) => (std::borrow::Cow::Borrowed(s), false),
            Err(_) => (String::from_utf8_lossy(line), true),
        };
        // A cut JSON line (or any text) may still carry `"password": "…"`: mask values
        // of redacted keys in the text too.
        let text = if self.redact.is_empty() {
            text
        } else {
            mask_in_text(text, &self.redact)
        };
        out.extend_from_slice(b"{\"message\":");
        out.extend_from_slice(json_string(&text).as_bytes());
        if invalid_utf8 {
            out.extend_from_slice(b",\"log.invalid_utf8\":true");
        }
        self.append_fields(&[], true, flags, out);
        out.extend_from_slice(b"}\n");
        invalid_utf8
    }

    fn append_fields(&self, present: &[bool], comma: bool, flags: LineFlags, out: &mut Vec<u8>) {
        let mut comma = comma;
        for (i, (name, value)) in self.fields.iter().enumerate() {
            if present.get(i).copied().unwrap_or(false) {
                continue;
            }
            if comma {
                out.push(b',');
            }
            comma = true;
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            out.extend_from_slice(value.as_bytes());
        }
        if flags.truncated {
            out.extend_from_slice(if comma {
                b",\"log.truncated\":true"
            } else {
                b"\"log.truncated\":true"
            });
            comma = true;
        }
        if flags.partial {
            out.extend_from_slice(if comma {
                b",\"log.partial\":true"
            } else {
                b"\"log.partial\":true"
            });
        }
    }

    fn encode_redacted(&self, line: &[u8], keys: &Keys, flags: LineFlags, out: &mut Vec<u8>) {
        let Ok(mut map) =
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(line)
        else {
            // Cannot happen for a line `scan_object` accepted; never ship it unredacted.
            self.encode_text(REDACTED.as_bytes(), flags, out);
            return;
        };
        for (k, v) in map.iter_mut() {
            if self.is_redacted(k) {
                *v = serde_json::Value::from(REDACTED);
            }
        }
        let mut body = serde_json::to_vec(&map).unwrap_or_else(|_| b"{}".to_vec());
        body.pop(); // the closing brace
        out.extend_from_slice(&body);
        self.append_fields(&keys.present, !map.is_empty(), flags, out);
        out.extend_from_slice(b"}\n");
    }

    fn is_redacted(&self, key: &str) -> bool {
        self.redact
            .iter()
            .any(|r| r.len() == key.len() && r.eq_ignore_ascii_case(key))
    }

    /// Some(keys) if `line` is exactly one JSON object.
    fn scan_object(&self, line: &[u8]) -> Option<Keys> {
        if line.first() != Some(&b'{') || line.last() != Some(&b'}') {
            return None;
        }
        let mut de = serde_json::Deserializer::from_slice(line);
        let keys = ObjectSeed { enrich: self }.deserialize(&mut de).ok()?;
        de.end().ok()?;
        Some(keys)
    }
}

struct Keys {
    /// Which enrichment fields the record already has.
    present: Vec<bool>,
    redact: bool,
    empty: bool,
}

struct ObjectSeed<'e> {
    enrich: &'e Enrichment,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = Keys;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Keys, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = Keys;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
        let mut keys = Keys {
            present: vec![false; self.enrich.fields.len()],
            redact: false,
            empty: true,
        };
        while map
            .next_key_seed(KeySeed {
                enrich: self.enrich,
                keys: &mut keys,
            })?
            .is_some()
        {
            keys.empty = false;
            map.next_value::<IgnoredAny>()?;
        }
        Ok(keys)
    }
}

struct KeySeed<'e, 'k> {
    enrich: &'e Enrichment,
    keys: &'k mut Keys,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<(), E> {
        for (i, (name, _)) in self.enrich.fields.iter().enumerate() {
            if name == key {
                self.keys.present[i] = true;
            }
        }
        if !self.enrich.redact.is_empty() && self.enrich.is_redacted(key) {
            self.keys.redact = true;
        }
        Ok(())
    }
}

/// Replaces the string value after every `"<key>"\s*:` (key from `redact`,
/// case-insensitive) with [`REDACTED`]; a value cut by the end of the text is masked to
/// the end.
fn mask_in_text<'a>(
    text: std::borrow::Cow<'a, str>,
    redact: &[String],
) -> std::borrow::Cow<'a, str> {
    let lower = text.to_ascii_lowercase();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for key in redact {
        let needle = format!("\"{key}\"");
        let mut from = 0;
        while let Some(at) = lower[from..].find(&needle) {
            let mut i = from + at + needle.len();
            from = i;
            let b = lower.as_bytes();
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if i >= b.len() || b[i] != b':' {
                continue;
            }
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if i >= b.len() {
                continue;
            }
            let start = i;
            let end = if b[i] == b'"' {
                // To the closing quote (skipping escapes), or the end of a cut line.
                let mut j = i + 1;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                (j + 1).min(b.len())
            } else {
                // A bare value: up to the next delimiter.
                let mut j = i;
                while j < b.len() && !matches!(b[j], b',' | b'}' | b']') {
                    j += 1;
                }
                j
            };
            spans.push((start, end));
            from = end.max(from);
        }
    }
    if spans.is_empty() {
        return text;
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (start, end) in spans {
        if start < last {
            continue;
        }
        out.push_str(&text[last..start]);
        out.push('"');
        out.push_str(REDACTED);
        out.push('"');
        last = end;
    }
    out.push_str(&text[last..]);
    std::borrow::Cow::Owned(out)
}

fn trim_end(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\r' | b' ' | b'\t') {
        end -= 1;
    }
    &line[..end]
}

pub fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// A shipped record as a JSON map (sinks that re-shape records: OTLP, Loki, ES).
pub fn parse(record: &[u8]) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_slice(record).unwrap_or_default()
}

/// The static enrichment: host name, Kubernetes metadata from Downward-API variables
/// (`POD_NAME`, `POD_NAMESPACE`, `NODE_NAME`, `POD_IP`) and configured fields.
pub fn static_fields(
    configured: &std::collections::BTreeMap<String, String>,
    get: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let host = get("HOSTNAME")
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    out.push(("host.name".to_string(), host));
    for (var, field) in [
        ("POD_NAME", "k8s.pod.name"),
        ("POD_NAMESPACE", "k8s.namespace.name"),
        ("NODE_NAME", "k8s.node.name"),
        ("POD_IP", "k8s.pod.ip"),
    ] {
        if let Some(v) = get(var).filter(|v| !v.is_empty()) {
            out.push((field.to_string(), v));
        }
    }
    for (k, v) in configured {
        out.retain(|(name, _)| name != k);
        out.push((k.clone(), v.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enrich() -> Enrichment {
        Enrichment::new(
            &[("host.name".into(), "h1".into())],
            "/var/log/rag.log",
            &["authorization".into(), "api_key".into()],
        )
    }

    fn one(line: &[u8], flags: LineFlags) -> serde_json::Value {
        let mut out = Vec::new();
        enrich().encode(line, flags, &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn json_lines_are_kept_and_enriched() {
        let v = one(br#"{"timestamp":"2026-11-28T10:00:00.000Z","level":"INFO","message":"hi \"x\"","n":1}"#, LineFlags::default());
        assert_eq!(v["message"], "hi \"x\"");
        assert_eq!(v["n"], 1);
        assert_eq!(v["host.name"], "h1");
        assert_eq!(v["log.file.path"], "/var/log/rag.log");
    }

    #[test]
    fn existing_fields_win_and_empty_objects_work() {
        let v = one(br#"{"host.name":"mine"}"#, LineFlags::default());
        assert_eq!(v["host.name"], "mine");
        let v = one(b"{}\r", LineFlags::default());
        assert_eq!(v["host.name"], "h1");
    }

    #[test]
    fn other_lines_become_messages() {
        let v = one(b"plain text", LineFlags::default());
        assert_eq!(v["message"], "plain text");
        let v = one(br#"{"a":1} trailing"#, LineFlags::default());
        assert_eq!(v["message"], r#"{"a":1} trailing"#);
        let v = one(b"[1,2]", LineFlags::default());
        assert_eq!(v["message"], "[1,2]");
        let v = one(b"bad \xff\xfe utf8", LineFlags::default());
        assert_eq!(v["log.invalid_utf8"], true);
        assert!(v["message"].as_str().is_some_and(|m| m.starts_with("bad ")));
    }

    #[test]
    fn marks_cut_and_partial_lines() {
        let v = one(
            br#"{"a":"#,
            LineFlags {
                truncated: true,
                partial: false,
            },
        );
        assert_eq!(v["log.truncated"], true);
        assert_eq!(v["message"], r#"{"a":"#);
        let v = one(
            br#"{"a":1}"#,
            LineFlags {
                truncated: false,
                partial: true,
            },
        );
        assert_eq!(v["log.partial"], true);
        assert_eq!(v["a"], 1);
    }

    #[test]
    fn redacts_secrets() {
        let v = one(
            br#"{"Authorization":"Bearer x","api_key":"k","ok":"y"}"#,
            LineFlags::default(),
        );
        assert_eq!(v["Authorization"], REDACTED);
        assert_eq!(v["api_key"], REDACTED);
        assert_eq!(v["ok"], "y");
        assert_eq!(v["host.name"], "h1");
    }

    #[test]
    fn invalid_utf8_inside_json_values_is_caught() {
        let v = one(b"{\"message\":\"bad \xff\"}", LineFlags::default());
        assert_eq!(v["log.invalid_utf8"], true);
    }

    #[test]
    fn cut_lines_still_hide_secrets() {
        let v = one(
            br#"{"user":"a","Authorization": "Bearer abc","n":1,"api_key":"k-very-long-and-cu"#,
            LineFlags {
                truncated: true,
                partial: false,
            },
        );
        let m = v["message"].as_str().unwrap();
        assert!(!m.contains("Bearer") && !m.contains("k-very"), "{m}");
        assert!(m.contains(r#""user":"a""#) && m.contains(r#""n":1"#), "{m}");
        assert!(m.contains(REDACTED));
        let v = one(b"password: plain text stays", LineFlags::default());
        assert_eq!(v["message"], "password: plain text stays");
    }

    #[test]
    fn escaped_keys_are_seen() {
        let v = one(br#"{"api\u005fkey":"k"}"#, LineFlags::default());
        assert_eq!(v["api_key"], REDACTED);
    }
}
