//! promtool's input notation: series descriptions (`name{a="b"}`) and expanding values
//! (`1+2x3`, `5-1x4`, `7x2`, `_`, `_x3`, `stale`).

use crate::model::{Labels, METRIC_NAME, stale_nan};

/// Parses `name{label="value", …}`, `name` or `{__name__="x", …}`.
pub fn parse_metric(s: &str) -> Result<Labels, String> {
    let s = s.trim();
    let (name, rest) = match s.find('{') {
        Some(i) => (s[..i].trim(), Some(&s[i..])),
        None => (s, None),
    };
    let mut labels = Labels::new();
    if !name.is_empty() {
        let ok = name.chars().enumerate().all(|(i, c)| {
            c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
        });
        if !ok {
            return Err(format!("invalid metric name {name:?}"));
        }
        labels.set(METRIC_NAME.to_string(), name.to_string());
    }
    let Some(rest) = rest else {
        return if name.is_empty() {
            Err("empty series description".into())
        } else {
            Ok(labels)
        };
    };
    let inner = rest
        .strip_prefix('{')
        .and_then(|r| r.trim_end().strip_suffix('}'))
        .ok_or_else(|| format!("unclosed label set in {s:?}"))?;
    let c: Vec<char> = inner.chars().collect();
    let mut i = 0;
    loop {
        while i < c.len() && (c[i].is_whitespace() || c[i] == ',') {
            i += 1;
        }
        if i >= c.len() {
            break;
        }
        let start = i;
        while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_') {
            i += 1;
        }
        let key: String = c[start..i].iter().collect();
        if key.is_empty() || key.starts_with(|x: char| x.is_ascii_digit()) {
            return Err(format!("invalid label name in {s:?}"));
        }
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        if c.get(i) != Some(&'=') {
            return Err(format!("expected '=' after label {key:?} in {s:?}"));
        }
        i += 1;
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        let quote = match c.get(i) {
            Some(q @ ('"' | '\'' | '`')) => *q,
            _ => return Err(format!("expected quoted value for label {key:?} in {s:?}")),
        };
        i += 1;
        let mut val = String::new();
        loop {
            let Some(&ch) = c.get(i) else {
                return Err(format!("unterminated label value in {s:?}"));
            };
            i += 1;
            if ch == quote {
                break;
            }
            if ch == '\\' && quote != '`' {
                let Some(&esc) = c.get(i) else {
                    return Err(format!("unterminated label value in {s:?}"));
                };
                i += 1;
                val.push(match esc {
                    'n' => '\n',
                    't' => '\t',
                    other => other,
                });
            } else {
                val.push(ch);
            }
        }
        labels.set(key, val);
    }
    Ok(labels)
}

/// Like [`parse_metric`], with "" meaning the empty label set (a scalar result).
pub fn parse_metric_or_empty(s: &str) -> Result<Labels, String> {
    if s.trim().is_empty() {
        Ok(Labels::new())
    } else {
        parse_metric(s)
    }
}

fn parse_num(s: &str) -> Result<f64, String> {
    match s {
        "Inf" | "+Inf" | "inf" | "+inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        "NaN" | "nan" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| format!("invalid number {s:?}")),
    }
}

/// Expands a values string into one entry per interval step; `None` is a missing sample.
pub fn expand_values(s: &str) -> Result<Vec<Option<f64>>, String> {
    let mut out = Vec::new();
    for tok in s.split_whitespace() {
        if tok == "_" {
            out.push(None);
            continue;
        }
        if tok == "stale" {
            out.push(Some(stale_nan()));
            continue;
        }
        let Some(xpos) = tok.rfind('x') else {
            out.push(Some(parse_num(tok)?));
            continue;
        };
        let (head, count) = (&tok[..xpos], &tok[xpos + 1..]);
        let n: usize = count
            .parse()
            .map_err(|_| format!("invalid repetition count in {tok:?}"))?;
        if n > 1_000_000 {
            return Err(format!("repetition count too large in {tok:?}"));
        }
        if head == "_" {
            out.extend(std::iter::repeat_n(None, n));
            continue;
        }
        // The operator is the first sign that is neither leading nor part of an exponent.
        let b = head.as_bytes();
        let op = (1..b.len())
            .find(|&i| (b[i] == b'+' || b[i] == b'-') && !matches!(b[i - 1], b'e' | b'E'));
        let (start, step) = match op {
            Some(i) => {
                let step = parse_num(&head[i + 1..])?;
                (
                    parse_num(&head[..i])?,
                    if b[i] == b'-' { -step } else { step },
                )
            }
            None if head == "stale" => {
                out.extend(std::iter::repeat_n(Some(stale_nan()), n + 1));
                continue;
            }
            None => (parse_num(head)?, 0.0),
        };
        let mut v = start;
        out.push(Some(v));
        for _ in 0..n {
            v += step;
            out.push(Some(v));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::is_stale;

    #[test]
    fn values_expand_like_promtool() {
        assert_eq!(
            expand_values("-2+4x3").unwrap(),
            vec![Some(-2.0), Some(2.0), Some(6.0), Some(10.0)]
        );
        assert_eq!(
            expand_values("1-2x4").unwrap(),
            vec![Some(1.0), Some(-1.0), Some(-3.0), Some(-5.0), Some(-7.0)]
        );
        assert_eq!(expand_values("1x2").unwrap(), vec![Some(1.0); 3]);
        let v = expand_values("1 _x3 stale").unwrap();
        assert_eq!(v.len(), 5);
        assert_eq!(&v[..4], &[Some(1.0), None, None, None]);
        assert!(is_stale(v[4].unwrap()));
        assert!(expand_values("1+x").is_err());
        assert!(expand_values("abc").is_err());
    }

    #[test]
    fn metrics_parse() {
        let l = parse_metric("up{job=\"a\", instance='b'}").unwrap();
        assert_eq!(l.to_string(), "up{instance=\"b\", job=\"a\"}");
        assert_eq!(parse_metric("{__name__=\"x\"}").unwrap().name(), Some("x"));
        assert_eq!(parse_metric("up").unwrap().len(), 1);
        assert!(parse_metric("up{job=a}").is_err());
        assert!(parse_metric("up{job=\"a\"").is_err());
    }
}
