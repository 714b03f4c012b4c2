//! Exponential backoff with jitter.

use std::time::Duration;

use super::config::RetryConfig;

/// Delay before attempt `attempt + 1`, after `attempt` (1-based) failed.
pub fn backoff(policy: &RetryConfig, attempt: u32, random_unit: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let base = policy
        .initial_backoff_ms
        .saturating_mul(1u64 << exp)
        .min(policy.max_backoff_ms) as f64;
    // Jitter only shortens the delay, so max_backoff_ms stays a true upper bound.
    let jittered = base * (1.0 - policy.jitter * random_unit.clamp(0.0, 1.0));
    Duration::from_millis(jittered.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryConfig {
        RetryConfig {
            max_attempts: 5,
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            jitter: 0.5,
        }
    }

    #[test]
    fn doubles_until_the_cap() {
        let p = policy();
        let d: Vec<u64> = (1..=6)
            .map(|a| backoff(&p, a, 0.0).as_millis() as u64)
            .collect();
        assert_eq!(d, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_stays_within_its_share() {
        let p = policy();
        assert_eq!(backoff(&p, 2, 1.0).as_millis(), 100);
        assert_eq!(backoff(&p, 2, 0.5).as_millis(), 150);
        assert_eq!(backoff(&p, 40, 0.0).as_millis(), 1000);
    }
}
