//! Prometheus durations (`1y2w3d4h5m6s7ms`), as written in rule and test files.

const UNITS: [(&str, i64); 7] = [
    ("y", 365 * 24 * 3_600_000),
    ("w", 7 * 24 * 3_600_000),
    ("d", 24 * 3_600_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Parses a duration into milliseconds. Units must appear largest first, each at most
/// once, like Prometheus's `model.ParseDuration`; "0" alone is accepted.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let invalid = || format!("not a valid duration string: \"{s}\"");
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err("empty duration string".into());
    }
    let b = s.as_bytes();
    let mut i = 0;
    let mut total: i64 = 0;
    let mut last_unit = usize::MAX;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(invalid());
        }
        let n: i64 = s[start..i].parse().map_err(|_| invalid())?;
        let ustart = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &s[ustart..i];
        let Some(idx) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(invalid());
        };
        if last_unit != usize::MAX && idx <= last_unit {
            return Err(invalid());
        }
        last_unit = idx;
        total = n
            .checked_mul(UNITS[idx].1)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(|| "duration out of range".to_string())?;
    }
    Ok(total)
}

/// Formats milliseconds the way Prometheus prints a `model.Duration` ("1h30m", "0s").
pub fn format_duration(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = ms.unsigned_abs();
    if ms < 0 {
        out.push('-');
    }
    for (u, size) in UNITS {
        let size = size as u64;
        if rest >= size {
            out.push_str(&format!("{}{u}", rest / size));
            rest %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        assert_eq!(parse_duration("5m"), Ok(300_000));
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration("1d"), Ok(86_400_000));
        assert_eq!(parse_duration("250ms"), Ok(250));
        assert_eq!(parse_duration("0"), Ok(0));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5m1h").is_err());
        assert!(parse_duration("1.5h").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(format_duration(5_400_000), "1h30m");
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(610_000), "10m10s");
        assert_eq!(format_duration(86_400_000), "1d");
    }
}
