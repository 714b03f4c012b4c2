//! Interval schedules (`every: 1h`). A run's slot is `floor(now / interval)`; it is
//! submitted with the idempotency key `schedule:<name>:<slot>`, so restarts and several
//! processes sharing one database never run a slot twice.

use std::time::Duration;

pub fn parse_every(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("interval {s:?} needs a unit (s, m, h, d)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("interval {s:?} must start with a whole number"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("interval {s:?}: unit must be s, m, h or d")),
    };
    if secs == 0 {
        return Err(format!("interval {s:?} must be positive"));
    }
    Ok(Duration::from_secs(secs))
}

/// The slot `now_ms` falls in.
pub fn slot(now_ms: i64, every: Duration) -> i64 {
    let every_ms = every.as_millis().max(1) as i64;
    now_ms.div_euclid(every_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_rejects_garbage() {
        assert_eq!(parse_every("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_every("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_every("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_every("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["", "h", "10", "0s", "5w", "1.5h", "-1h"] {
            assert!(parse_every(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn slots_change_on_interval_boundaries() {
        let e = Duration::from_secs(60);
        assert_eq!(slot(59_999, e), 0);
        assert_eq!(slot(60_000, e), 1);
        assert_eq!(slot(119_999, e), 1);
    }
}
