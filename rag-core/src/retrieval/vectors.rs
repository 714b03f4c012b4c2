//! In-memory vector index per workspace, for brute-force cosine search.
//!
//! Vectors are quantised to i8 (a quarter of f32's memory, integer dot products the
//! compiler vectorises). A workspace is loaded from SQLite on its first search and kept
//! current by ingest and delete; the total held is bounded by
//! `store.vector_cache_max_chunks` — past it a workspace is searched from disk instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub fn quantize(v: &[f32]) -> Vec<i8> {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if max == 0.0 {
        return vec![0; v.len()];
    }
    v.iter().map(|x| (x / max * 127.0).round() as i8).collect()
}

pub fn dequantize_to_blob(q: &[i8]) -> Vec<u8> {
    q.iter().map(|x| *x as u8).collect()
}

pub fn blob_to_i8(b: &[u8]) -> Vec<i8> {
    b.iter().map(|x| *x as i8).collect()
}

fn dot(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum()
}

fn norm(a: &[i8]) -> f32 {
    (dot(a, a) as f32).sqrt()
}

#[derive(Default)]
pub struct WorkspaceVectors {
    dims: usize,
    ids: Vec<i64>,
    norms: Vec<f32>,
    data: Vec<i8>,
}

impl WorkspaceVectors {
    pub fn new(dims: usize) -> Self {
        Self {
            dims,
            ..Default::default()
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn push(&mut self, id: i64, v: &[i8]) {
        if v.len() != self.dims {
            return;
        }
        self.ids.push(id);
        self.norms.push(norm(v));
        self.data.extend_from_slice(v);
    }

    pub fn remove(&mut self, gone: &std::collections::HashSet<i64>) {
        let mut w = 0;
        for r in 0..self.ids.len() {
            if !gone.contains(&self.ids[r]) {
                self.ids[w] = self.ids[r];
                self.norms[w] = self.norms[r];
                self.data
                    .copy_within(r * self.dims..(r + 1) * self.dims, w * self.dims);
                w += 1;
            }
        }
        self.ids.truncate(w);
        self.norms.truncate(w);
        self.data.truncate(w * self.dims);
    }

    /// Top `n` (chunk id, cosine) for the query, best first.
    pub fn top(&self, q: &[i8], n: usize, allow: Option<&dyn Fn(i64) -> bool>) -> Vec<(i64, f32)> {
        if q.len() != self.dims || self.dims == 0 {
            return Vec::new();
        }
        let qn = norm(q);
        if qn == 0.0 {
            return Vec::new();
        }
        let mut scored: Vec<(i64, f32)> = self
            .data
            .chunks_exact(self.dims)
            .zip(self.ids.iter().zip(&self.norms))
            .filter(|(_, (id, _))| allow.is_none_or(|f| f(**id)))
            .map(|(v, (id, n))| {
                let c = if *n == 0.0 {
                    0.0
                } else {
                    dot(q, v) as f32 / (qn * n)
                };
                (*id, c)
            })
            .collect();
        let n = n.min(scored.len());
        if n == 0 {
            return Vec::new();
        }
        scored.select_nth_unstable_by(n - 1, |a, b| b.1.total_cmp(&a.1));
        scored.truncate(n);
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored
    }
}

type Slot = Arc<tokio::sync::RwLock<Option<WorkspaceVectors>>>;

pub struct VectorIndex {
    slots: Mutex<HashMap<i64, Slot>>,
    held: AtomicUsize,
    max: usize,
}

impl VectorIndex {
    pub fn new(max_chunks: usize) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            held: AtomicUsize::new(0),
            max: max_chunks,
        }
    }

    pub fn slot(&self, ws: i64) -> Slot {
        let mut slots = match self.slots.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        Arc::clone(slots.entry(ws).or_default())
    }

    /// Whether `n` more vectors fit under the bound (reserving them if so).
    pub fn reserve(&self, n: usize) -> bool {
        let mut cur = self.held.load(Ordering::Relaxed);
        loop {
            if cur + n > self.max {
                return false;
            }
            match self
                .held
                .compare_exchange(cur, cur + n, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    pub fn release(&self, n: usize) {
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |c| {
                Some(c.saturating_sub(n))
            });
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_and_remove() {
        let mut w = WorkspaceVectors::new(3);
        w.push(1, &quantize(&[1.0, 0.0, 0.0]));
        w.push(2, &quantize(&[0.0, 1.0, 0.0]));
        w.push(3, &quantize(&[0.7, 0.7, 0.0]));
        let q = quantize(&[1.0, 0.1, 0.0]);
        let top = w.top(&q, 2, None);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3]);
        w.remove(&[1].into_iter().collect());
        assert_eq!(w.top(&q, 1, None)[0].0, 3);
        assert_eq!(w.len(), 2);
    }
}
