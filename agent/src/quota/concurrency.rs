//! `concurrent_requests`: how many requests of one workspace may be in flight at once
//! on this agent replica. A slot is held until the response body ends (or the client
//! leaves), so long streams count for as long as they run.

use std::sync::{Arc, Mutex};

#[derive(Default, Clone)]
pub struct Concurrency {
    /// Only workspaces with requests in flight have an entry, so the map is bounded by
    /// the proxy's own concurrency limit.
    in_flight: Arc<Mutex<crate::FastMap<String, u64>>>,
}

/// One in-flight request; releases its slot when dropped.
pub struct Slot {
    in_flight: Arc<Mutex<crate::FastMap<String, u64>>>,
    key: String,
}

impl Concurrency {
    /// A slot for `workspace_id` if fewer than `limit` are in flight, with the count
    /// including this one.
    pub fn try_acquire(&self, workspace_id: &str, limit: u64) -> Result<(Slot, u64), u64> {
        let mut map = match self.in_flight.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let n = map.get(workspace_id).copied().unwrap_or(0);
        if n >= limit {
            return Err(n);
        }
        map.insert(workspace_id.to_string(), n + 1);
        Ok((
            Slot {
                in_flight: Arc::clone(&self.in_flight),
                key: workspace_id.to_string(),
            },
            n + 1,
        ))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = match self.in_flight.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_released_on_drop() {
        let c = Concurrency::default();
        let a = c.try_acquire("ws", 2).unwrap();
        let _b = c.try_acquire("ws", 2).unwrap();
        assert_eq!(c.try_acquire("ws", 2).err(), Some(2));
        assert!(c.try_acquire("other", 2).is_ok());
        drop(a);
        assert!(c.try_acquire("ws", 2).is_ok());
    }
}
