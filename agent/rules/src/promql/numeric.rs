//! Numeric helpers whose exact behaviour (NaN, infinities, rounding error) is part of
//! PromQL's observable results.

/// One step of Kahan-Babuška-Neumaier summation; the result is `sum + c`.
pub(crate) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

pub(crate) fn kahan_sum(vals: impl Iterator<Item = f64>) -> f64 {
    let (mut s, mut c) = (0.0, 0.0);
    for v in vals {
        (s, c) = kahan_inc(v, s, c);
    }
    if s.is_infinite() { s } else { s + c }
}

/// The mean as Prometheus computes it: a compensated sum, switching to an incremental
/// mean only when the sum would overflow.
#[derive(Default)]
pub(crate) struct Mean {
    count: f64,
    sum: f64,
    c: f64,
    mean: f64,
    incremental: bool,
}

impl Mean {
    pub fn add(&mut self, v: f64) {
        self.count += 1.0;
        if !self.incremental {
            let (s, c) = kahan_inc(v, self.sum, self.c);
            if self.count == 1.0 || !s.is_infinite() {
                self.sum = s;
                self.c = c;
                return;
            }
            self.incremental = true;
            self.mean = self.sum / (self.count - 1.0);
            self.c /= self.count - 1.0;
        }
        if self.mean.is_infinite() {
            if v.is_infinite() && (self.mean > 0.0) == (v > 0.0) {
                return;
            }
            if !v.is_infinite() && !v.is_nan() {
                return;
            }
        }
        let corrected = self.mean + self.c;
        (self.mean, self.c) = kahan_inc(v / self.count - corrected / self.count, self.mean, self.c);
    }

    pub fn value(&self) -> f64 {
        if self.incremental {
            self.mean + self.c
        } else if self.sum.is_infinite() {
            self.sum / self.count
        } else {
            self.sum / self.count + self.c / self.count
        }
    }
}

/// Welford's variance with compensated sums (population variance).
#[derive(Default)]
pub(crate) struct Variance {
    count: f64,
    mean: f64,
    c_mean: f64,
    aux: f64,
    c_aux: f64,
}

impl Variance {
    pub fn add(&mut self, v: f64) {
        self.count += 1.0;
        let delta = v - (self.mean + self.c_mean);
        (self.mean, self.c_mean) = kahan_inc(delta / self.count, self.mean, self.c_mean);
        let new_mean = self.mean + self.c_mean;
        (self.aux, self.c_aux) = kahan_inc(delta * (v - new_mean), self.aux, self.c_aux);
    }

    pub fn value(&self) -> f64 {
        (self.aux + self.c_aux) / self.count
    }
}

/// Go's `math.Max`: NaN wins, +Inf beats everything else, +0 beats -0.
pub(crate) fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        return f64::NAN;
    }
    if a == 0.0 && b == 0.0 {
        return if a.is_sign_negative() { b } else { a };
    }
    if a > b { a } else { b }
}

pub(crate) fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        return f64::NAN;
    }
    if a == 0.0 && b == 0.0 {
        return if a.is_sign_negative() { a } else { b };
    }
    if a < b { a } else { b }
}

/// Orders like Go's `slices.Sort` on floats: NaN first, then ascending.
pub(crate) fn nan_first_cmp(a: &f64, b: &f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    }
}

/// The φ-quantile of `vals` with linear interpolation between closest ranks, as
/// Prometheus's `quantile` and `quantile_over_time`. Sorts `vals` in place.
pub(crate) fn quantile(q: f64, vals: &mut [f64]) -> f64 {
    if vals.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    vals.sort_unstable_by(nan_first_cmp);
    let n = vals.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    vals[lower as usize] * (1.0 - weight) + vals[upper as usize] * weight
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)`, used where values become label values.
pub(crate) fn format_go_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Parses floats the way Prometheus does for `le` labels and test files.
pub(crate) fn parse_go_float(s: &str) -> Option<f64> {
    let t = s.trim();
    match t.to_ascii_lowercase().as_str() {
        "+inf" | "inf" | "+infinity" | "infinity" => return Some(f64::INFINITY),
        "-inf" | "-infinity" => return Some(f64::NEG_INFINITY),
        "nan" | "+nan" | "-nan" => return Some(f64::NAN),
        _ => {}
    }
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return i64::from_str_radix(h, 16).ok().map(|x| x as f64);
    }
    t.replace('_', "").parse::<f64>().ok()
}

/// Relative float equality as Prometheus's tests use it (`almost.Equal`).
pub fn almost_equal(a: f64, b: f64, epsilon: f64) -> bool {
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < f64::MIN_POSITIVE {
        return diff < epsilon * f64::MIN_POSITIVE;
    }
    diff / abs_sum.min(f64::MAX) < epsilon
}

/// Prometheus's `FormatOpenMetricsFloat`: Go's shortest `%g`, with `.0` appended to
/// integral values (`0.5`, `1.0`, `1e+06`, `+Inf`).
pub(crate) fn format_openmetrics_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if v == 0.0 {
        return if v.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "1.5e-7", "-1e6".
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    // Go's shortest %g switches to exponent form below 1e-4 and from 1e6 on.
    let s = if !(-4..6).contains(&exp) {
        format!(
            "{mantissa}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    } else {
        format!("{v}")
    };
    if v == v.floor() && !s.contains(['e', '.']) {
        s + ".0"
    } else {
        s
    }
}
