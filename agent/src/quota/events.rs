//! When quota log events are worth a line: `quota.threshold` once per upward crossing
//! (re-armed below 80% of the threshold, so usage hovering at the line does not flap), and
//! `quota.exceeded` at most once per workspace and metric every 10 s.

use std::sync::Mutex;
use std::time::{Duration, Instant};

const EXCEEDED_EVERY: Duration = Duration::from_secs(10);

/// Usage gauges are refreshed at most this often per workspace and metric: they are read
/// by scrapes every few seconds, and refreshing them costs more than the quota check.
const GAUGE_EVERY: Duration = Duration::from_millis(100);

#[derive(Default, Clone, Copy)]
struct State {
    above: bool,
    last_exceeded: Option<Instant>,
    last_gauge: Option<Instant>,
}

impl State {
    fn cross(&mut self, ratio: f64, threshold: f64) -> bool {
        if !self.above && ratio >= threshold {
            self.above = true;
            true
        } else {
            if self.above && ratio < threshold * 0.8 {
                self.above = false;
            }
            false
        }
    }

    fn gauge_due(&mut self, now: Instant) -> bool {
        let due = self
            .last_gauge
            .is_none_or(|t| now.duration_since(t) >= GAUGE_EVERY);
        if due {
            self.last_gauge = Some(now);
        }
        due
    }
}

#[derive(Default)]
struct PerWorkspace(smallvec::SmallVec<[(&'static str, State); 2]>);

impl PerWorkspace {
    fn state(&mut self, metric: &'static str) -> &mut State {
        let i = match self.0.iter().position(|(m, _)| *m == metric) {
            Some(i) => i,
            None => {
                self.0.push((metric, State::default()));
                self.0.len() - 1
            }
        };
        &mut self.0[i].1
    }
}

pub struct QuotaEvents {
    /// workspace → (metric, state); keyed by workspace alone so lookups by `&str` do not
    /// allocate. A workspace has a few metrics at most: a short list beats a second map.
    state: Mutex<crate::FastMap<String, PerWorkspace>>,
    max: usize,
}

impl QuotaEvents {
    pub fn new(max: usize) -> Self {
        Self {
            state: Mutex::new(crate::FastMap::default()),
            max: max.max(1),
        }
    }

    fn with<R>(&self, ws: &str, metric: &'static str, f: impl FnOnce(&mut State) -> R) -> R {
        let mut map = match self.state.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if let Some(per_ws) = map.get_mut(ws) {
            return f(per_ws.state(metric));
        }
        if map.len() >= self.max {
            // Bounded: forgetting state only risks one repeated event.
            map.clear();
        }
        f(map.entry(ws.to_string()).or_default().state(metric))
    }

    /// One allowed request's bookkeeping under a single lookup: whether the usage gauges
    /// are due for a refresh (at most every `GAUGE_EVERY`) and whether this request took
    /// usage across the threshold from below.
    pub fn observe(
        &self,
        ws: &str,
        metric: &'static str,
        ratio: f64,
        threshold: f64,
        now: Instant,
    ) -> (bool, bool) {
        self.with(ws, metric, |s| {
            (s.gauge_due(now), s.cross(ratio, threshold))
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
            .map(|r| e.observe("w", "m", *r, 0.9, Instant::now()).1)
            .collect();
        assert_eq!(fired, vec![false, true, false, false, false, false, true]);
    }

    #[test]
    fn observe_throttles_gauges_and_reports_crossings() {
        let e = QuotaEvents::new(10);
        let t = Instant::now();
        assert_eq!(e.observe("w", "m", 0.5, 0.9, t), (true, false));
        assert_eq!(
            e.observe("w", "m", 0.95, 0.9, t + Duration::from_millis(10)),
            (false, true)
        );
        assert_eq!(
            e.observe("w", "m", 0.96, 0.9, t + GAUGE_EVERY),
            (true, false)
        );
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
