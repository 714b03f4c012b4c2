//! Scrape-page parsers: the Prometheus text format 0.0.4 and OpenMetrics 1.0 text.
//!
//! Both are line-based; they differ in details that change the samples: OpenMetrics ends
//! with `# EOF` (required; nothing may follow), writes timestamps in seconds rather than
//! milliseconds, carries exemplars after ` # ` (ignored here, as Prometheus does without
//! exemplar storage) and `_created` series for counters, histograms and summaries
//! (ignored, as Prometheus does unless created-timestamp ingestion is on).
//!
//! The parser is strict like Prometheus's: one malformed line fails the whole scrape,
//! because a half-read page would silently mark the rest of its series stale.

use crate::model::{Labels, METRIC_NAME};

/// What the agent asks for, most preferred first (the same order Prometheus uses).
pub const ACCEPT_HEADER: &str = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    PromText,
    OpenMetrics,
}

impl Format {
    /// The format a response's `Content-Type` announces; anything but OpenMetrics is
    /// read as the classic text format (Prometheus's fallback too).
    pub fn from_content_type(ct: Option<&str>) -> Format {
        match ct {
            Some(ct)
                if ct.split(';').next().is_some_and(|m| {
                    m.trim()
                        .eq_ignore_ascii_case("application/openmetrics-text")
                }) =>
            {
                Format::OpenMetrics
            }
            _ => Format::PromText,
        }
    }
}

/// One scraped sample; `labels` includes `__name__`.
#[derive(Clone, Debug, PartialEq)]
pub struct ScrapedSample {
    pub labels: Labels,
    pub value: f64,
    /// Milliseconds since the epoch, when the page gave one.
    pub timestamp_ms: Option<i64>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    #[error("line {line}: {msg}")]
    Syntax { line: usize, msg: String },
    #[error("sample limit of {limit} exceeded")]
    SampleLimit { limit: usize },
    #[error("OpenMetrics page does not end with # EOF")]
    MissingEof,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum MetricType {
    Counter,
    Histogram,
    GaugeHistogram,
    Summary,
    Other,
}

/// Parses a whole page. More than `sample_limit` samples fails the page (Prometheus's
/// `sample_limit`): a target that suddenly explodes must not fill the store.
pub fn parse(
    body: &str,
    format: Format,
    sample_limit: usize,
) -> Result<Vec<ScrapedSample>, ParseError> {
    let mut out = Vec::new();
    // The current family (from `# TYPE`), to recognise its `_created` series.
    let mut family: Option<(String, MetricType)> = None;
    let mut saw_eof = false;
    // The final newline ends the last line rather than opening an empty one.
    let body = body.strip_suffix('\n').unwrap_or(body);
    for (i, raw) in body.split('\n').enumerate() {
        let line_no = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if saw_eof {
            return Err(syntax(line_no, "content after # EOF"));
        }
        match format {
            Format::PromText => {
                let t = line.trim_start_matches([' ', '\t']);
                if t.is_empty() {
                    continue;
                }
                if let Some(c) = t.strip_prefix('#') {
                    if let Some((name, ty)) = type_line(c) {
                        family = Some((name, ty));
                    }
                    continue;
                }
            }
            Format::OpenMetrics => {
                if line == "# EOF" {
                    saw_eof = true;
                    continue;
                }
                if line.is_empty() {
                    return Err(syntax(line_no, "empty line"));
                }
                if let Some(c) = line.strip_prefix('#') {
                    if !c.starts_with(' ') {
                        return Err(syntax(line_no, "expected '# ' comment"));
                    }
                    if let Some((name, ty)) = type_line(c) {
                        family = Some((name, ty));
                    }
                    continue;
                }
            }
        }
        let s = parse_sample(line, format).map_err(|m| syntax(line_no, &m))?;
        if format == Format::OpenMetrics && is_created(&s.labels, family.as_ref()) {
            continue;
        }
        if out.len() >= sample_limit {
            return Err(ParseError::SampleLimit {
                limit: sample_limit,
            });
        }
        out.push(s);
    }
    if format == Format::OpenMetrics && !saw_eof {
        return Err(ParseError::MissingEof);
    }
    Ok(out)
}

fn syntax(line: usize, msg: &str) -> ParseError {
    ParseError::Syntax {
        line,
        msg: msg.to_string(),
    }
}

/// `# TYPE name type` (given the text after `#`).
fn type_line(c: &str) -> Option<(String, MetricType)> {
    let mut it = c.split_whitespace();
    if it.next()? != "TYPE" {
        return None;
    }
    let name = it.next()?.to_string();
    let ty = match it.next()? {
        "counter" => MetricType::Counter,
        "histogram" => MetricType::Histogram,
        "gaugehistogram" => MetricType::GaugeHistogram,
        "summary" => MetricType::Summary,
        _ => MetricType::Other,
    };
    Some((name, ty))
}

fn is_created(labels: &Labels, family: Option<&(String, MetricType)>) -> bool {
    let (Some(name), Some((fam, ty))) = (labels.name(), family) else {
        return false;
    };
    *ty != MetricType::Other
        && name
            .strip_suffix("_created")
            .is_some_and(|base| base == fam)
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) -> usize {
        let start = self.i;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
        self.i - start
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// A metric or label name: `[a-zA-Z_:][a-zA-Z0-9_:]*` (label names without `:`,
    /// which Prometheus tolerates in practice; we accept it too rather than fail a page).
    fn name(&mut self) -> Option<&'a str> {
        let start = self.i;
        while let Some(c) = self.peek() {
            let ok = c.is_ascii_alphabetic()
                || c == b'_'
                || c == b':'
                || (self.i > start && c.is_ascii_digit());
            if !ok {
                break;
            }
            self.i += 1;
        }
        if self.i == start {
            return None;
        }
        std::str::from_utf8(&self.s[start..self.i]).ok()
    }

    /// A double-quoted string with `\\`, `\"` and `\n` escapes (any other escaped
    /// character is kept with its backslash, as Prometheus does in the text format).
    fn quoted(&mut self) -> Result<String, String> {
        if !self.eat(b'"') {
            return Err("expected '\"'".into());
        }
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err("unterminated label value".into()),
                Some(b'"') => {
                    self.i += 1;
                    break;
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(b'\\') => out.push(b'\\'),
                        Some(b'"') => out.push(b'"'),
                        Some(b'n') => out.push(b'\n'),
                        Some(c) => {
                            out.push(b'\\');
                            out.push(c);
                        }
                        None => return Err("unterminated label value".into()),
                    }
                    self.i += 1;
                }
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| "label value is not valid UTF-8".to_string())
    }

    fn token(&mut self) -> &'a str {
        let start = self.i;
        while let Some(c) = self.peek() {
            if c == b' ' || c == b'\t' {
                break;
            }
            self.i += 1;
        }
        std::str::from_utf8(&self.s[start..self.i]).unwrap_or("")
    }
}

fn parse_sample(line: &str, format: Format) -> Result<ScrapedSample, String> {
    let mut c = Cursor {
        s: line.as_bytes(),
        i: 0,
    };
    if format == Format::PromText {
        c.skip_ws();
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut name = c.name().map(str::to_string);
    if c.eat(b'{') {
        loop {
            c.skip_ws();
            if c.eat(b'}') {
                break;
            }
            // A bare quoted string inside the braces is a (UTF-8) metric name.
            let label = if c.peek() == Some(b'"') {
                let q = c.quoted()?;
                c.skip_ws();
                if c.peek() != Some(b'=') {
                    if name.is_some() {
                        return Err("metric name given twice".into());
                    }
                    name = Some(q);
                    None
                } else {
                    Some(q)
                }
            } else {
                Some(
                    c.name()
                        .ok_or_else(|| "expected a label name".to_string())?
                        .to_string(),
                )
            };
            if let Some(label) = label {
                c.skip_ws();
                if !c.eat(b'=') {
                    return Err(format!("expected '=' after label {label}"));
                }
                c.skip_ws();
                let v = c.quoted()?;
                if label == METRIC_NAME || pairs.iter().any(|(k, _)| *k == label) {
                    return Err(format!("duplicate label {label}"));
                }
                pairs.push((label, v));
            }
            c.skip_ws();
            if c.eat(b'}') {
                break;
            }
            if !c.eat(b',') {
                return Err("expected ',' or '}' in label set".into());
            }
        }
    }
    let name = name.ok_or_else(|| "expected a metric name".to_string())?;
    if c.skip_ws() == 0 {
        return Err("expected a space before the value".into());
    }
    let value = parse_value(c.token())?;
    let mut timestamp_ms = None;
    c.skip_ws();
    match c.peek() {
        None => {}
        Some(b'#') if format == Format::OpenMetrics => {}
        Some(_) => {
            let t = c.token();
            timestamp_ms = Some(match format {
                Format::PromText => t
                    .parse::<i64>()
                    .map_err(|_| format!("invalid timestamp {t:?}"))?,
                Format::OpenMetrics => {
                    let secs = t
                        .parse::<f64>()
                        .ok()
                        .filter(|s| s.is_finite())
                        .ok_or_else(|| format!("invalid timestamp {t:?}"))?;
                    (secs * 1000.0).round() as i64
                }
            });
            c.skip_ws();
        }
    }
    match c.peek() {
        None => {}
        // An exemplar (OpenMetrics) is not stored; its syntax is not our concern.
        Some(b'#') if format == Format::OpenMetrics => {}
        Some(_) => return Err("unexpected text after the sample".into()),
    }
    let mut labels = Labels::from_pairs(pairs);
    labels.set(METRIC_NAME.to_string(), name);
    Ok(ScrapedSample {
        labels,
        value,
        timestamp_ms,
    })
}

/// Go's `ParseFloat` spellings Prometheus accepts, including `NaN`, `+Inf`, `-Inf`.
fn parse_value(t: &str) -> Result<f64, String> {
    match t {
        "NaN" | "nan" => return Ok(f64::NAN),
        "+Inf" | "Inf" | "+inf" | "inf" => return Ok(f64::INFINITY),
        "-Inf" | "-inf" => return Ok(f64::NEG_INFINITY),
        _ => {}
    }
    t.parse::<f64>().map_err(|_| format!("invalid value {t:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> ScrapedSample {
        let mut v = parse(line, Format::PromText, 10).unwrap();
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    #[test]
    fn content_type_negotiation() {
        assert_eq!(
            Format::from_content_type(Some(
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            )),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::from_content_type(Some("text/plain; version=0.0.4")),
            Format::PromText
        );
        assert_eq!(Format::from_content_type(None), Format::PromText);
    }

    #[test]
    fn text_format_basics() {
        let page = "# HELP http_requests_total The total.\n# TYPE http_requests_total counter\nhttp_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000\nhttp_requests_total{method=\"post\",code=\"400\"}    3 1395066363000\n\n  metric_without_timestamp_and_labels 12.47\nsomething_weird{problem=\"division by zero\"} +Inf -3982045\nneg -Inf\nnan NaN\nsci 1.5e3\n";
        let v = parse(page, Format::PromText, 100).unwrap();
        assert_eq!(v.len(), 7);
        assert_eq!(v[0].labels.get("code"), Some("200"));
        assert_eq!(v[0].labels.name(), Some("http_requests_total"));
        assert_eq!(v[0].value, 1027.0);
        assert_eq!(v[0].timestamp_ms, Some(1395066363000));
        assert_eq!(v[1].value, 3.0);
        assert_eq!(v[2].timestamp_ms, None);
        assert_eq!(v[3].value, f64::INFINITY);
        assert_eq!(v[3].timestamp_ms, Some(-3982045));
        assert_eq!(v[4].value, f64::NEG_INFINITY);
        assert!(v[5].value.is_nan());
        assert_eq!(v[6].value, 1500.0);
    }

    #[test]
    fn escapes_in_label_values() {
        let s = one(
            "msdos_file_access_time_seconds{path=\"C:\\\\DIR\\\\FILE.TXT\",error=\"Cannot find file:\\n\\\"FILE.TXT\\\"\"} 1.458255915e9\n",
        );
        assert_eq!(s.labels.get("path"), Some("C:\\DIR\\FILE.TXT"));
        assert_eq!(
            s.labels.get("error"),
            Some("Cannot find file:\n\"FILE.TXT\"")
        );
        // Braces, commas and '#' inside a value are data.
        let s = one("m{a=\"x}, b=#\"} 1");
        assert_eq!(s.labels.get("a"), Some("x}, b=#"));
    }

    #[test]
    fn trailing_comma_empty_braces_and_empty_values() {
        let s = one("m{a=\"1\",} 2");
        assert_eq!(s.labels.get("a"), Some("1"));
        let s = one("m{} 2");
        assert_eq!(s.labels.len(), 1);
        // An empty value is the same as no label (Prometheus semantics).
        let s = one("m{a=\"\"} 2");
        assert_eq!(s.labels.get("a"), None);
    }

    #[test]
    fn quoted_metric_name() {
        let s = one("{\"my.metric\", a=\"b\"} 3");
        assert_eq!(s.labels.name(), Some("my.metric"));
        assert_eq!(s.labels.get("a"), Some("b"));
    }

    #[test]
    fn malformed_lines_fail_with_the_line_number() {
        for bad in [
            "m{a=\"1\"",
            "m{a=1} 2",
            "m 1 2 3",
            "m abc",
            "m{a=\"1\",a=\"2\"} 1",
            "m{a=\"1\" b=\"2\"} 1",
            "m",
            "m 1 1.5",
            "{} 1",
        ] {
            let e = parse(&format!("ok 1\n{bad}\n"), Format::PromText, 10).unwrap_err();
            assert!(
                matches!(e, ParseError::Syntax { line: 2, .. }),
                "{bad:?}: {e:?}"
            );
        }
    }

    #[test]
    fn sample_limit_fails_the_page() {
        let e = parse("a 1\nb 2\nc 3\n", Format::PromText, 2).unwrap_err();
        assert_eq!(e, ParseError::SampleLimit { limit: 2 });
    }

    #[test]
    fn openmetrics_page() {
        let page = "# TYPE foo counter\n# HELP foo Foo.\nfoo_total{a=\"b\"} 17.0 1520879607.789 # {trace_id=\"KOO5S4vxi0o\"} 0.67\nfoo_created{a=\"b\"} 1520872607.123\n# TYPE h histogram\nh_bucket{le=\"0.5\"} 1 # {trace_id=\"x\"} 0.4 1520879607.1\nh_bucket{le=\"+Inf\"} 2\nh_count 2\nh_sum 0.9\nh_created 1520872607.123\n# TYPE g gauge\ng_created 5\n# EOF\n";
        let v = parse(page, Format::OpenMetrics, 100).unwrap();
        let names: Vec<_> = v.iter().map(|s| s.labels.name().unwrap()).collect();
        // `_created` of counters/histograms is dropped; a gauge named g_created is data.
        assert_eq!(
            names,
            [
                "foo_total",
                "h_bucket",
                "h_bucket",
                "h_count",
                "h_sum",
                "g_created"
            ]
        );
        assert_eq!(v[0].timestamp_ms, Some(1520879607789));
        assert_eq!(v[0].value, 17.0);
        assert_eq!(v[2].labels.get("le"), Some("+Inf"));
    }

    #[test]
    fn openmetrics_needs_eof_and_nothing_after_it() {
        assert_eq!(
            parse("a 1\n", Format::OpenMetrics, 10).unwrap_err(),
            ParseError::MissingEof
        );
        assert!(matches!(
            parse("a 1\n# EOF\nb 2\n", Format::OpenMetrics, 10).unwrap_err(),
            ParseError::Syntax { line: 3, .. }
        ));
        assert!(matches!(
            parse("a 1\n\n# EOF\n", Format::OpenMetrics, 10).unwrap_err(),
            ParseError::Syntax { line: 2, .. }
        ));
        assert_eq!(
            parse("a 1\n# EOF", Format::OpenMetrics, 10).unwrap().len(),
            1
        );
    }

    #[test]
    fn prometheus_client_output_parses() {
        // The exact shape our own registry writes (prometheus-client, OpenMetrics).
        let page = "# HELP minirag_agent_requests Requests.\n# TYPE minirag_agent_requests counter\nminirag_agent_requests_total{class=\"ask\",method=\"POST\",status_code=\"200\"} 3\n# EOF\n";
        let v = parse(page, Format::OpenMetrics, 10).unwrap();
        assert_eq!(v[0].labels.get("status_code"), Some("200"));
    }
}
