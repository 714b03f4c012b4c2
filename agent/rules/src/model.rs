//! The data model shared by the store, the engine and the rule evaluator.

use std::fmt;
use std::sync::Arc;

/// The reserved label holding the metric name.
pub const METRIC_NAME: &str = "__name__";

/// Prometheus's staleness marker: a NaN with a payload no arithmetic produces, written
/// when a series disappears from a scrape so lookback stops returning its last value.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

pub fn stale_nan() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

pub fn is_stale(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// A label set, kept sorted by name with unique names and no empty values, so equal sets
/// compare, hash and print equal.
///
/// Shared behind an `Arc` (copy-on-write): the store hands the same set to every query
/// that selects the series, so cloning is a reference-count increment, not one
/// allocation per label.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Arc<Vec<(String, String)>>);

impl Labels {
    pub fn new() -> Self {
        Labels(Arc::new(Vec::new()))
    }

    /// Builds a set from pairs in any order; later duplicates win, empty values are dropped.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut l = Labels::new();
        for (k, v) in pairs {
            l.set(k.into(), v.into());
        }
        l
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    /// Sets `name` to `value`; an empty value removes the label (Prometheus semantics).
    pub fn set(&mut self, name: String, value: String) {
        match self.0.binary_search_by(|(k, _)| k.as_str().cmp(&name)) {
            Ok(i) if value.is_empty() => {
                Arc::make_mut(&mut self.0).remove(i);
            }
            Ok(i) if self.0[i].1 == value => {}
            Ok(i) => Arc::make_mut(&mut self.0)[i].1 = value,
            Err(_) if value.is_empty() => {}
            Err(i) => Arc::make_mut(&mut self.0).insert(i, (name, value)),
        }
    }

    pub fn remove(&mut self, name: &str) {
        if let Ok(i) = self.0.binary_search_by(|(k, _)| k.as_str().cmp(name)) {
            Arc::make_mut(&mut self.0).remove(i);
        }
    }

    pub fn name(&self) -> Option<&str> {
        self.get(METRIC_NAME)
    }

    pub fn without_name(&self) -> Labels {
        let mut l = self.clone();
        l.remove(METRIC_NAME);
        l
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Keeps only the named labels (`by`), or drops them (`without`). `keep` is a
    /// predicate and may be called more than once per label.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        if self.0.iter().all(|(k, _)| keep(k)) {
            return;
        }
        Arc::make_mut(&mut self.0).retain(|(k, _)| keep(k));
    }
}

/// Prometheus's text form: `name{a="b", c="d"}`, values escaped like Go's `%q`.
impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(n) = self.name() {
            f.write_str(n)?;
        }
        f.write_str("{")?;
        let mut first = true;
        for (k, v) in self.iter().filter(|(k, _)| *k != METRIC_NAME) {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{k}=\"")?;
            for c in v.chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    '"' => f.write_str("\\\"")?,
                    '\n' => f.write_str("\\n")?,
                    c => write!(f, "{c}")?,
                }
            }
            f.write_str("\"")?;
        }
        f.write_str("}")
    }
}

/// One point in time: milliseconds since the Unix epoch and a value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub t: i64,
    pub v: f64,
}

/// A series' samples in a time range, oldest first.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub samples: Vec<Sample>,
}
