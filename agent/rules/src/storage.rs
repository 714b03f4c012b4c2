//! The bounded in-memory series store.
//!
//! Samples live only as long as some rule can read them: the retention window is derived
//! from the loaded rules (longest range + lookback) by the caller, and [`MemStore::truncate`]
//! drops everything older. The number of series is capped; a new series beyond the cap is
//! refused and counted rather than growing memory without bound.

use std::collections::HashMap;

use promql_parser::label::{MatchOp, Matcher};

use crate::chunkenc::SeriesSamples;
use crate::model::{Labels, METRIC_NAME, Sample, Series, is_stale};

/// What the PromQL engine reads. `select` returns every series matching all `matchers`
/// with its samples in `[mint, maxt]` (both ends inclusive; the engine applies the exact
/// window semantics). Series with no sample in the range may be omitted.
pub trait Queryable {
    fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<Series>;

    /// Calls `f` with each matching series' labels and samples in `[mint, maxt]`, without
    /// materializing the samples where the store can avoid it (range functions over many
    /// series only need one pass over each window).
    fn visit(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        f: &mut dyn FnMut(&Labels, &[Sample]),
    ) {
        for s in self.select(matchers, mint, maxt) {
            f(&s.labels, &s.samples);
        }
    }

    /// Like `select`, but each series carries only its newest sample in `[mint, maxt]`.
    /// Instant selectors need nothing more, and a store can answer this without copying
    /// the whole lookback window.
    fn select_last(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<Series> {
        let mut out = self.select(matchers, mint, maxt);
        for s in &mut out {
            let n = s.samples.len();
            s.samples.drain(..n.saturating_sub(1));
        }
        out
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AppendError {
    #[error("series limit of {limit} reached; new series {labels} refused")]
    SeriesLimit { limit: usize, labels: String },
    #[error("out-of-order sample for {labels}: {t} is not after {last}")]
    OutOfOrder { labels: String, t: i64, last: i64 },
    #[error("duplicate sample for {labels} at {t} with a different value")]
    Duplicate { labels: String, t: i64 },
}

/// Counters a caller exports as self-metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StoreStats {
    pub series: usize,
    pub samples: usize,
    pub series_refused_total: u64,
    pub samples_out_of_order_total: u64,
    pub series_removed_total: u64,
}

/// A handle to a series, valid until the series is removed by [`MemStore::truncate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeriesRef(u32);

struct MemSeries {
    labels: Labels,
    samples: SeriesSamples,
}

pub struct MemStore {
    max_series: usize,
    series: Vec<Option<MemSeries>>,
    free: Vec<u32>,
    by_labels: HashMap<Labels, u32>,
    // Posting lists by metric name: nearly every selector names its metric, so a lookup
    // here avoids scanning every series.
    by_name: HashMap<String, Vec<u32>>,
    stats: StoreStats,
}

impl MemStore {
    pub fn new(max_series: usize) -> Self {
        MemStore {
            max_series,
            series: Vec::new(),
            free: Vec::new(),
            by_labels: HashMap::new(),
            by_name: HashMap::new(),
            stats: StoreStats::default(),
        }
    }

    pub fn stats(&self) -> StoreStats {
        self.stats
    }

    /// The handle of an existing series, or of a new one if the cap allows.
    pub fn get_or_create(&mut self, labels: &Labels) -> Result<SeriesRef, AppendError> {
        if let Some(&id) = self.by_labels.get(labels) {
            return Ok(SeriesRef(id));
        }
        if self.stats.series >= self.max_series {
            self.stats.series_refused_total += 1;
            return Err(AppendError::SeriesLimit {
                limit: self.max_series,
                labels: labels.to_string(),
            });
        }
        let s = MemSeries {
            labels: labels.clone(),
            samples: SeriesSamples::default(),
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.series[id as usize] = Some(s);
                id
            }
            None => {
                self.series.push(Some(s));
                (self.series.len() - 1) as u32
            }
        };
        self.by_labels.insert(labels.clone(), id);
        self.by_name
            .entry(labels.name().unwrap_or_default().to_string())
            .or_default()
            .push(id);
        self.stats.series += 1;
        Ok(SeriesRef(id))
    }

    /// Appends to a series by handle. Samples must arrive in time order; a repeat of the
    /// last timestamp with the same value is accepted as a no-op (a re-scrape of a
    /// timestamped sample).
    pub fn append_ref(&mut self, r: SeriesRef, t: i64, v: f64) -> Result<(), AppendError> {
        let Some(Some(s)) = self.series.get_mut(r.0 as usize) else {
            return Ok(());
        };
        if let Some(last) = s.samples.last() {
            if t < last.t {
                self.stats.samples_out_of_order_total += 1;
                return Err(AppendError::OutOfOrder {
                    labels: s.labels.to_string(),
                    t,
                    last: last.t,
                });
            }
            if t == last.t {
                if last.v.to_bits() == v.to_bits() {
                    return Ok(());
                }
                self.stats.samples_out_of_order_total += 1;
                return Err(AppendError::Duplicate {
                    labels: s.labels.to_string(),
                    t,
                });
            }
        }
        s.samples.push(Sample { t, v });
        self.stats.samples += 1;
        Ok(())
    }

    pub fn append(&mut self, labels: &Labels, t: i64, v: f64) -> Result<SeriesRef, AppendError> {
        let r = self.get_or_create(labels)?;
        self.append_ref(r, t, v)?;
        Ok(r)
    }

    /// The last sample of a series, if any (the scraper uses it to decide on stale markers).
    pub fn last(&self, r: SeriesRef) -> Option<Sample> {
        self.series.get(r.0 as usize)?.as_ref()?.samples.last()
    }

    /// Drops samples older than `min_t`, and series left empty or holding only a stale
    /// marker. Returns the number of series removed; their handles become invalid.
    pub fn truncate(&mut self, min_t: i64) -> usize {
        let mut removed = Vec::new();
        for (id, slot) in self.series.iter_mut().enumerate() {
            let Some(s) = slot else { continue };
            self.stats.samples -= s.samples.truncate_before(min_t);
            // Gone: nothing in the window, or only the stale marker that ended it.
            let dead = match s.samples.last() {
                None => true,
                Some(last) => {
                    last.t < min_t || (is_stale(last.v) && s.samples.count_from(min_t) <= 1)
                }
            };
            if dead {
                self.stats.samples -= s.samples.len();
                removed.push(id as u32);
            }
        }
        for &id in &removed {
            if let Some(s) = self.series[id as usize].take() {
                self.by_labels.remove(&s.labels);
                let name = s.labels.name().unwrap_or_default();
                if let Some(p) = self.by_name.get_mut(name) {
                    p.retain(|&x| x != id);
                    if p.is_empty() {
                        self.by_name.remove(name);
                    }
                }
            }
            self.free.push(id);
        }
        self.stats.series -= removed.len();
        self.stats.series_removed_total += removed.len() as u64;
        removed.len()
    }

    fn candidates(&self, matchers: &[Matcher]) -> Vec<u32> {
        for m in matchers {
            if m.name == METRIC_NAME
                && let MatchOp::Equal = m.op
            {
                return self.by_name.get(&m.value).cloned().unwrap_or_default();
            }
        }
        self.series
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| i as u32)
            .collect()
    }
}

/// Whether `labels` satisfies `m`; a missing label matches as the empty string.
pub fn matches(m: &Matcher, labels: &Labels) -> bool {
    m.is_match(labels.get(&m.name).unwrap_or(""))
}

impl Queryable for MemStore {
    fn visit(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        f: &mut dyn FnMut(&Labels, &[Sample]),
    ) {
        // Chunks decode into one buffer reused for every series.
        let mut scratch: Vec<Sample> = Vec::new();
        for id in self.candidates(matchers) {
            let Some(Some(s)) = self.series.get(id as usize) else {
                continue;
            };
            if !matchers.iter().all(|m| matches(m, &s.labels)) {
                continue;
            }
            scratch.clear();
            s.samples.range_into(mint, maxt, &mut scratch);
            if !scratch.is_empty() {
                f(&s.labels, &scratch);
            }
        }
    }

    fn select_last(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<Series> {
        let mut out = Vec::new();
        for id in self.candidates(matchers) {
            let Some(Some(s)) = self.series.get(id as usize) else {
                continue;
            };
            if !matchers.iter().all(|m| matches(m, &s.labels)) {
                continue;
            }
            let Some(last) = s.samples.last_in(mint, maxt) else {
                continue;
            };
            out.push(Series {
                labels: s.labels.clone(),
                samples: vec![last],
            });
        }
        out
    }

    fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<Series> {
        let mut out = Vec::new();
        for id in self.candidates(matchers) {
            let Some(Some(s)) = self.series.get(id as usize) else {
                continue;
            };
            if !matchers.iter().all(|m| matches(m, &s.labels)) {
                continue;
            }
            let mut samples = Vec::new();
            s.samples.range_into(mint, maxt, &mut samples);
            if samples.is_empty() {
                continue;
            }
            out.push(Series {
                labels: s.labels.clone(),
                samples,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::stale_nan;

    fn l(name: &str, job: &str) -> Labels {
        Labels::from_pairs([(METRIC_NAME, name), ("job", job)])
    }

    #[test]
    fn select_filters_by_matchers_and_time() {
        let mut s = MemStore::new(10);
        for t in 0..10 {
            s.append(&l("up", "a"), t * 1000, t as f64).unwrap();
            s.append(&l("up", "b"), t * 1000, 1.0).unwrap();
        }
        let m = vec![
            Matcher::new(MatchOp::Equal, METRIC_NAME, "up"),
            Matcher::new(MatchOp::Equal, "job", "a"),
        ];
        let r = s.select(&m, 2000, 4000);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].samples.len(), 3);
        assert_eq!(r[0].samples[0].v, 2.0);
    }

    #[test]
    fn series_cap_refuses_and_counts() {
        let mut s = MemStore::new(1);
        s.append(&l("up", "a"), 0, 1.0).unwrap();
        assert!(matches!(
            s.append(&l("up", "b"), 0, 1.0),
            Err(AppendError::SeriesLimit { .. })
        ));
        assert_eq!(s.stats().series_refused_total, 1);
    }

    #[test]
    fn out_of_order_refused_duplicate_same_value_accepted() {
        let mut s = MemStore::new(5);
        s.append(&l("up", "a"), 1000, 1.0).unwrap();
        s.append(&l("up", "a"), 1000, 1.0).unwrap();
        assert!(s.append(&l("up", "a"), 1000, 2.0).is_err());
        assert!(s.append(&l("up", "a"), 500, 2.0).is_err());
        assert_eq!(s.stats().samples, 1);
    }

    #[test]
    fn truncate_drops_old_samples_and_dead_series() {
        let mut s = MemStore::new(5);
        s.append(&l("up", "a"), 0, 1.0).unwrap();
        s.append(&l("up", "a"), 5000, 1.0).unwrap();
        s.append(&l("up", "b"), 0, 1.0).unwrap();
        s.append(&l("up", "b"), 5000, stale_nan()).unwrap();
        assert_eq!(s.truncate(1000), 1);
        assert_eq!(s.stats().series, 1);
        assert_eq!(s.stats().samples, 1);
        // The freed slot is reused and the cap counts live series only.
        s.append(&l("up", "c"), 6000, 1.0).unwrap();
        assert_eq!(s.stats().series, 2);
    }
}
