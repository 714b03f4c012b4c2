//! When quota log events are worth a line: `quota.threshold` once per upward crossing
//! (re-armed below 80% of the threshold, so usage hovering at the line does not flap), and
//! `quota.exceeded` at most once per workspace and metric every 10 s.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const EXCEEDED_EVERY: Duration = Duration::from_secs(10);

#[derive(Default, Clone, Copy)]
struct State {
    above: bool,
    last_exceeded: Option<Instant>,
}

pub struct QuotaEvents {
    state: Mutex<HashMap<(String, &'static str), State>>,
    max: usize,
}

impl QuotaEvents {
    pub fn new(max: usize) -> Self {
        Self {
            state: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }

    fn with<R>(&self, ws: &str, metric: &'static str, f: impl FnOnce(&mut State) -> R) -> R {
        let mut map = match self.state.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if map.len() >= self.max && !map.contains_key(&(ws.to_string(), metric)) {
            // Bounded: forgetting state only risks one repeated event.
            map.clear();
        }
        f(map.entry((ws.to_string(), metric)).or_default())
    }

    /// True when this request took usage across the threshold from below.
    pub fn crossed(&self, ws: &str, metric: &'static str, ratio: f64, threshold: f64) -> bool {
        self.with(ws, metric, |s| {
            if !s.above && ratio >= threshold {
                s.above = true;
                true
            } else {
                if s.above && ratio < threshold * 0.8 {
                    s.above = false;
                }
                false
            }
        })
    }

    pub fn should_log_exceeded(&self, ws: &str, metric: &'static str, now: Instant) -> bool {
        self.with(ws, metric, |s| {
            if s.last_exceeded
                .is_none_or(|t| now.duration_since(t) >= EXCEEDED_EVERY)
            {
                s.last_exceeded = Some(now);
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_fires_once_per_crossing() {
        let e = QuotaEvents::new(10);
        let fired: Vec<bool> = [0.5, 0.91, 0.95, 0.99, 0.85, 0.7, 0.92]
            .iter()
            .map(|r| e.crossed("w", "m", *r, 0.9))
            .collect();
        assert_eq!(fired, vec![false, true, false, false, false, false, true]);
    }

    #[test]
    fn exceeded_is_rate_limited() {
        let e = QuotaEvents::new(10);
        let t = Instant::now();
        assert!(e.should_log_exceeded("w", "m", t));
        assert!(!e.should_log_exceeded("w", "m", t + Duration::from_secs(3)));
        assert!(e.should_log_exceeded("w", "m", t + Duration::from_secs(11)));
    }
}
