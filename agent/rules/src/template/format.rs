//! Go's `fmt` number formatting, which alert texts inherit from Prometheus: `%v` and
//! `%g` pick between fixed and exponent notation differently from Rust's `{}`, and users
//! compare notification texts byte for byte when they migrate rules.

/// Significant digits (no trailing zeros) and the decimal point position, for `v` rounded
/// to `prec` significant digits, or the shortest round-tripping digits when `prec` is None.
fn digits(v: f64, prec: Option<usize>) -> (String, i32) {
    let s = match prec {
        Some(p) => format!("{:.*e}", p.max(1) - 1, v.abs()),
        None => format!("{:e}", v.abs()),
    };
    let (mant, exp) = s.split_once('e').unwrap_or((s.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let mut d: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    while d.len() > 1 && d.ends_with('0') {
        d.pop();
    }
    (d, exp + 1)
}

fn special(v: f64, plus: bool) -> Option<String> {
    if v.is_nan() {
        Some("NaN".into())
    } else if v.is_infinite() {
        Some(if v > 0.0 { "+Inf" } else { "-Inf" }.into())
    } else if v == 0.0 {
        let neg = v.is_sign_negative();
        Some(format!(
            "{}0",
            if neg {
                "-"
            } else if plus {
                "+"
            } else {
                ""
            }
        ))
    } else {
        None
    }
}

fn exp_suffix(exp: i32) -> String {
    format!("e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
}

/// `%g` (prec Some) or `%v`/`%g` shortest (prec None), without width handling.
pub fn fmt_g(v: f64, prec: Option<usize>) -> String {
    if let Some(s) = special(v, false) {
        return s;
    }
    let (d, dp) = digits(v, prec);
    let nd = d.len() as i32;
    let eprec = match prec {
        None => 6,
        Some(p) => {
            let p = p.max(1) as i32;
            if p > nd && nd >= dp { nd } else { p }
        }
    };
    let exp = dp - 1;
    let sign = if v < 0.0 { "-" } else { "" };
    if exp < -4 || exp >= eprec {
        let (first, rest) = d.split_at(1);
        let dot = if rest.is_empty() { "" } else { "." };
        return format!("{sign}{first}{dot}{rest}{}", exp_suffix(exp));
    }
    let body = if dp <= 0 {
        format!("0.{}{}", "0".repeat((-dp) as usize), d)
    } else if dp >= nd {
        format!("{}{}", d, "0".repeat((dp - nd) as usize))
    } else {
        format!("{}.{}", &d[..dp as usize], &d[dp as usize..])
    };
    format!("{sign}{body}")
}

/// `%e` with `prec` digits after the point.
pub fn fmt_e(v: f64, prec: usize) -> String {
    if v.is_nan() || v.is_infinite() {
        return special(v, false).unwrap_or_default();
    }
    let s = format!("{:.*e}", prec, v);
    let (mant, exp) = s.split_once('e').unwrap_or((s.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    format!("{mant}{}", exp_suffix(exp))
}

/// `%f` with `prec` digits after the point.
pub fn fmt_f(v: f64, prec: usize) -> String {
    if v.is_nan() || v.is_infinite() {
        return special(v, false).unwrap_or_default();
    }
    format!("{:.*}", prec, v)
}

/// Go's `%q` for strings: double-quoted with Go escapes.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_matches_go_percent_v() {
        assert_eq!(fmt_g(1.0, None), "1");
        assert_eq!(fmt_g(0.5, None), "0.5");
        assert_eq!(fmt_g(123456.0, None), "123456");
        assert_eq!(fmt_g(1e6, None), "1e+06");
        assert_eq!(fmt_g(1234567.0, None), "1.234567e+06");
        assert_eq!(fmt_g(0.0001, None), "0.0001");
        assert_eq!(fmt_g(0.00001, None), "1e-05");
        assert_eq!(fmt_g(-2.5, None), "-2.5");
        assert_eq!(fmt_g(f64::INFINITY, None), "+Inf");
        assert_eq!(fmt_g(f64::NAN, None), "NaN");
        assert_eq!(fmt_g(0.0, None), "0");
    }

    #[test]
    fn precision_g_matches_go() {
        assert_eq!(fmt_g(100.0, Some(4)), "100");
        assert_eq!(fmt_g(12345.0, Some(4)), "1.234e+04");
        assert_eq!(fmt_g(1.5, Some(4)), "1.5");
        assert_eq!(fmt_g(7.12345, Some(4)), "7.123");
        assert_eq!(fmt_g(0.000123456, Some(4)), "0.0001235");
        assert_eq!(fmt_g(1000.0, Some(4)), "1000");
        assert_eq!(fmt_g(0.0, Some(4)), "0");
    }

    #[test]
    fn e_and_f() {
        assert_eq!(fmt_e(1234.5, 2), "1.23e+03");
        assert_eq!(fmt_f(2.0 / 3.0, 2), "0.67");
        assert_eq!(quote("a\"b\n"), "\"a\\\"b\\n\"");
    }
}
