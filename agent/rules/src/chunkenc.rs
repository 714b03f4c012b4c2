//! Compact sample storage for one series.
//!
//! A scrape every second keeps 900 samples per series for a 15-minute window; at 16
//! bytes each that is the bulk of the agent's memory. Samples are therefore kept in
//! sealed chunks encoded like Prometheus's XOR chunks, but byte-aligned (simpler to
//! decode, a little larger): timestamps as zigzag varints of the delta-of-delta (regular
//! scrapes cost one byte), values as the XOR with the previous value stripped of its
//! leading and trailing zero bytes (an unchanged gauge costs one byte). The newest
//! samples stay raw in a small head until a chunk fills.

use std::collections::VecDeque;

use crate::model::Sample;

/// Samples per sealed chunk. Larger chunks amortise the raw first sample better;
/// smaller ones waste less of the raw head per series and let truncation free memory
/// sooner. 64 costs ~1 KiB of head per live series at most.
const CHUNK_SAMPLES: usize = 64;

struct Chunk {
    min_t: i64,
    max_t: i64,
    count: u32,
    bytes: Box<[u8]>,
}

/// The samples of one series in time order.
#[derive(Default)]
pub struct SeriesSamples {
    chunks: VecDeque<Chunk>,
    head: Vec<Sample>,
    len: usize,
    // Every append compares against the newest sample; caching it means a freshly
    // sealed chunk is never decoded for that.
    last: Option<Sample>,
}

impl SeriesSamples {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn last(&self) -> Option<Sample> {
        self.last
    }

    /// Samples with `t >= min_t` (decodes at most the oldest chunk).
    pub fn count_from(&self, min_t: i64) -> usize {
        let mut n = 0;
        for c in &self.chunks {
            if c.min_t >= min_t {
                n += c.count as usize;
            } else if c.max_t >= min_t {
                let mut d = Decoder::new(&c.bytes);
                while let Some(s) = d.next_sample() {
                    n += usize::from(s.t >= min_t);
                }
            }
        }
        n + self.head.len() - self.head.partition_point(|s| s.t < min_t)
    }

    pub fn first_t(&self) -> Option<i64> {
        match self.chunks.front() {
            Some(c) => Some(c.min_t),
            None => self.head.first().map(|s| s.t),
        }
    }

    /// Appends a sample; the caller guarantees it is newer than [`Self::last`].
    pub fn push(&mut self, s: Sample) {
        self.last = Some(s);
        self.head.push(s);
        self.len += 1;
        if self.head.len() >= CHUNK_SAMPLES {
            let bytes = encode(&self.head);
            self.chunks.push_back(Chunk {
                min_t: self.head[0].t,
                max_t: s.t,
                count: self.head.len() as u32,
                bytes,
            });
            self.head.clear();
            // A sealed series (no new samples) should not keep a full head buffer.
            self.head.shrink_to(CHUNK_SAMPLES / 4);
        }
    }

    /// Frees whole chunks older than `min_t` and head samples older than it. A chunk
    /// straddling `min_t` is kept whole; readers filter by time anyway. Returns the
    /// number of samples freed.
    pub fn truncate_before(&mut self, min_t: i64) -> usize {
        let mut freed = 0;
        while self.chunks.front().is_some_and(|c| c.max_t < min_t) {
            if let Some(c) = self.chunks.pop_front() {
                freed += c.count as usize;
            }
        }
        if self.chunks.is_empty() {
            let old = self.head.partition_point(|s| s.t < min_t);
            if old > 0 {
                self.head.drain(..old);
                freed += old;
            }
        }
        self.len -= freed;
        if self.len == 0 {
            self.last = None;
        }
        freed
    }

    /// Appends the samples with `mint <= t <= maxt` to `out`, oldest first.
    pub fn range_into(&self, mint: i64, maxt: i64, out: &mut Vec<Sample>) {
        for c in &self.chunks {
            if c.max_t < mint {
                continue;
            }
            if c.min_t > maxt {
                return;
            }
            out.reserve(c.count as usize);
            let mut d = Decoder::new(&c.bytes);
            while let Some(s) = d.next_sample() {
                if s.t > maxt {
                    return;
                }
                if s.t >= mint {
                    out.push(s);
                }
            }
        }
        let start = self.head.partition_point(|s| s.t < mint);
        let end = self.head.partition_point(|s| s.t <= maxt);
        if start < end {
            out.extend_from_slice(&self.head[start..end]);
        }
    }

    /// The newest sample with `mint <= t <= maxt` (what an instant selector reads).
    pub fn last_in(&self, mint: i64, maxt: i64) -> Option<Sample> {
        let end = self.head.partition_point(|s| s.t <= maxt);
        if end > 0 {
            let s = self.head[end - 1];
            return (s.t >= mint).then_some(s);
        }
        // Not in the head: the newest chunk starting at or before maxt holds it.
        let c = self.chunks.iter().rev().find(|c| c.min_t <= maxt)?;
        if c.max_t < mint {
            return None;
        }
        let mut d = Decoder::new(&c.bytes);
        let mut found = None;
        while let Some(s) = d.next_sample() {
            if s.t > maxt {
                break;
            }
            found = Some(s);
        }
        found.filter(|s| s.t >= mint)
    }

    /// Heap bytes held (chunk payloads and the head's capacity), for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| c.bytes.len() + std::mem::size_of::<Chunk>())
            .sum::<usize>()
            + self.head.capacity() * std::mem::size_of::<Sample>()
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn encode(samples: &[Sample]) -> Box<[u8]> {
    let mut out = Vec::with_capacity(samples.len() * 4 + 16);
    let mut prev_t = 0i64;
    let mut prev_delta = 0i64;
    let mut prev_v = 0u64;
    for (i, s) in samples.iter().enumerate() {
        let bits = s.v.to_bits();
        if i == 0 {
            put_varint(&mut out, zigzag(s.t));
            out.extend_from_slice(&bits.to_be_bytes());
        } else {
            let delta = s.t.wrapping_sub(prev_t);
            put_varint(&mut out, zigzag(delta.wrapping_sub(prev_delta)));
            prev_delta = delta;
            let x = bits ^ prev_v;
            if x == 0 {
                out.push(0);
            } else {
                let lead = (x.leading_zeros() / 8) as usize;
                let trail = (x.trailing_zeros() / 8) as usize;
                let n = 8 - lead - trail;
                // Never 0 (that is "unchanged"): bit 6 set, 3 bits of leading zero
                // bytes, 3 bits of (significant bytes - 1).
                out.push(0x40 | ((lead as u8) << 3) | (n as u8 - 1));
                out.extend_from_slice(&x.to_be_bytes()[lead..lead + n]);
            }
        }
        prev_t = s.t;
        prev_v = bits;
    }
    // Padding lets the decoder read every value as one 8-byte load.
    out.extend_from_slice(&[0; PAD]);
    out.into_boxed_slice()
}

const PAD: usize = 8;

struct Decoder<'a> {
    buf: &'a [u8],
    end: usize,
    pos: usize,
    first: bool,
    t: i64,
    delta: i64,
    v: u64,
}

impl<'a> Decoder<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Decoder {
            end: buf.len().saturating_sub(PAD),
            buf,
            pos: 0,
            first: true,
            t: 0,
            delta: 0,
            v: 0,
        }
    }

    fn varint(&mut self) -> Option<u64> {
        // Regular scrapes make nearly every delta-of-delta a single byte.
        let b = *self.buf.get(self.pos)?;
        if b < 0x80 {
            self.pos += 1;
            return Some(u64::from(b));
        }
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
            shift += 7;
            if shift > 63 {
                return None;
            }
        }
    }

    // Chunks are only ever produced by `encode` in this process, so a short or malformed
    // buffer cannot happen; ending the iteration is the safe answer if it ever did.
    fn next_sample(&mut self) -> Option<Sample> {
        if self.pos >= self.end {
            return None;
        }
        if self.first {
            self.first = false;
            self.t = unzigzag(self.varint()?);
            let raw = self.buf.get(self.pos..self.pos + 8)?;
            self.v = u64::from_be_bytes(raw.try_into().ok()?);
            self.pos += 8;
        } else {
            let dod = unzigzag(self.varint()?);
            self.delta = self.delta.wrapping_add(dod);
            self.t = self.t.wrapping_add(self.delta);
            let head = *self.buf.get(self.pos)?;
            self.pos += 1;
            if head != 0 {
                let lead = u32::from((head >> 3) & 0x7);
                let n = u32::from(head & 0x7) + 1;
                let word = self.buf.get(self.pos..self.pos + 8)?;
                let word = u64::from_be_bytes(word.try_into().ok()?);
                self.pos += n as usize;
                // The n significant bytes are the top of `word`; move them down to
                // their place: `lead` zero bytes above, the rest below.
                let trail = 8 - lead - n;
                self.v ^= (word >> (64 - 8 * n)) << (8 * trail);
            }
        }
        Some(Sample {
            t: self.t,
            v: f64::from_bits(self.v),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{is_stale, stale_nan};

    fn samples(n: usize) -> Vec<Sample> {
        let mut t = 1_700_000_000_000i64;
        let mut v = 0.0;
        (0..n)
            .map(|i| {
                // Irregular intervals, jumps, resets, NaN, infinities and stale markers.
                t += 1000 + (i as i64 % 7) * 13 - 20;
                v = match i % 50 {
                    10 => 0.0,
                    20 => f64::NAN,
                    21 => f64::INFINITY,
                    22 => -1e300,
                    30 => stale_nan(),
                    _ => v + (i % 5) as f64 * 0.25,
                };
                Sample { t, v }
            })
            .collect()
    }

    #[test]
    fn round_trips_bit_exactly() {
        let input = samples(1000);
        let mut s = SeriesSamples::default();
        for x in &input {
            s.push(*x);
        }
        assert_eq!(s.len(), 1000);
        let mut out = Vec::new();
        s.range_into(i64::MIN, i64::MAX, &mut out);
        assert_eq!(out.len(), input.len());
        for (a, b) in out.iter().zip(&input) {
            assert_eq!(a.t, b.t);
            assert_eq!(a.v.to_bits(), b.v.to_bits());
        }
        assert!(out.iter().any(|x| is_stale(x.v)));
        assert_eq!(s.last().map(|x| x.t), input.last().map(|x| x.t));
    }

    #[test]
    fn range_and_truncate() {
        let input = samples(500);
        let mut s = SeriesSamples::default();
        for x in &input {
            s.push(*x);
        }
        let (lo, hi) = (input[100].t, input[300].t);
        let mut out = Vec::new();
        s.range_into(lo, hi, &mut out);
        assert_eq!(out.len(), 201);
        assert_eq!(out[0].t, lo);
        assert_eq!(s.last_in(lo, hi).map(|x| x.t), Some(hi));
        assert_eq!(s.last_in(lo, hi - 1).map(|x| x.t), Some(input[299].t));
        assert_eq!(s.last_in(input[0].t - 10, input[0].t - 1), None);
        assert_eq!(s.last_in(0, i64::MAX).map(|x| x.t), Some(input[499].t));
        let freed = s.truncate_before(input[200].t);
        assert!((128..=200).contains(&freed), "{freed}");
        assert_eq!(s.len(), 500 - freed);
        out.clear();
        s.range_into(input[200].t, i64::MAX, &mut out);
        assert_eq!(out.len(), 300);
        // Everything older than the last sample: only the head may remain.
        s.truncate_before(i64::MAX);
        assert!(s.is_empty());
    }

    #[test]
    fn regular_scrapes_of_a_steady_counter_are_small() {
        let mut s = SeriesSamples::default();
        for i in 0..(CHUNK_SAMPLES * 10) as i64 {
            s.push(Sample {
                t: 1_700_000_000_000 + i * 1000,
                v: 1000.0 + (i * 3) as f64,
            });
        }
        let per_sample = s.heap_bytes() as f64 / s.len() as f64;
        assert!(per_sample < 6.0, "{per_sample} bytes per sample");
    }
}
