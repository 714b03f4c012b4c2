//! Prometheus HTTP API subset on the admin listener: `/api/v1/rules`, `/api/v1/alerts`,
//! `/api/v1/query`, `/api/v1/query_range`, in Prometheus's JSON shapes.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Value, json};

use minirag_rules::model::{Labels, Series};
use minirag_rules::promql::{self, Value as PValue};
use minirag_rules::rules::{AlertState, Group, Health, Rule};

use super::Runtime;
use super::notify::rfc3339;

/// Largest POST body of a query (form-encoded parameters).
const MAX_FORM_BYTES: usize = 64 * 1024;
/// Largest number of points a range query may return per series (Prometheus's limit).
const MAX_POINTS: i64 = 11_000;

fn json_resp(status: StatusCode, v: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn ok(data: Value) -> Response<Full<Bytes>> {
    json_resp(StatusCode::OK, json!({"status": "success", "data": data}))
}

fn bad_data(msg: &str) -> Response<Full<Bytes>> {
    json_resp(
        StatusCode::BAD_REQUEST,
        json!({"status": "error", "errorType": "bad_data", "error": msg}),
    )
}

/// Go's `strconv.FormatFloat(v, 'f', -1, 64)`, as the query API writes sample values.
pub fn fmt_value(v: f64) -> String {
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

/// Go's `strconv.FormatFloat(v, 'e', -1, 64)`, as `/api/v1/rules` writes alert values.
pub fn fmt_value_e(v: f64) -> String {
    if !v.is_finite() {
        return fmt_value(v);
    }
    let s = format!("{v:e}");
    match s.split_once('e') {
        Some((m, e)) => {
            let (sign, digits) = match e.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', e),
            };
            format!("{m}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

fn labels_json(l: &Labels) -> Value {
    Value::Object(
        l.iter()
            .map(|(k, v)| (k.to_string(), Value::from(v)))
            .collect(),
    )
}

fn pairs_json(p: &[(String, String)]) -> Value {
    Value::Object(
        p.iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect(),
    )
}

/// A sample timestamp in seconds; whole seconds print without a fraction, as
/// Prometheus writes them.
fn ts(ms: i64) -> Value {
    secs(ms)
}

/// Seconds as Go's JSON encoder writes a float64: whole numbers without a fraction.
fn secs(ms: i64) -> Value {
    if ms % 1000 == 0 {
        json!(ms / 1000)
    } else {
        json!(ms as f64 / 1000.0)
    }
}

fn last_eval(ms: Option<i64>) -> String {
    ms.map(rfc3339)
        .unwrap_or_else(|| "0001-01-01T00:00:00Z".to_string())
}

fn alerts_of(rule: &Rule) -> Vec<Value> {
    rule.alerts()
        .into_iter()
        .filter(|a| a.state != AlertState::Inactive)
        .map(|a| {
            let mut v = json!({
                "labels": labels_json(&a.labels),
                "annotations": pairs_json(&a.annotations),
                "state": a.state.as_str(),
                "activeAt": rfc3339(a.active_at_ms),
                "value": fmt_value_e(a.value),
            });
            if let Some(k) = a.keep_firing_since_ms {
                v["keepFiringSince"] = Value::from(rfc3339(k));
            }
            v
        })
        .collect()
}

fn rule_json(r: &Rule) -> Value {
    let mut v = json!({
        "name": r.name(),
        "query": r.query(),
        "labels": pairs_json(r.labels()),
        "health": r.health().as_str(),
        "evaluationTime": r.evaluation_duration().as_secs_f64(),
        "lastEvaluation": last_eval(r.last_evaluation_ms()),
        "type": r.rule_type(),
    });
    if let Some(e) = r.last_error() {
        v["lastError"] = Value::from(e);
    }
    if r.health() == Health::Err && r.last_error().is_none() {
        v["lastError"] = Value::from("");
    }
    if r.is_alerting() {
        v["state"] = Value::from(r.state().as_str());
        v["duration"] = secs(r.for_ms());
        v["keepFiringFor"] = secs(r.keep_firing_for_ms());
        v["annotations"] = pairs_json(r.annotations());
        v["alerts"] = Value::Array(alerts_of(r));
    }
    v
}

fn group_json(g: &Group, filter: Option<&str>) -> Value {
    json!({
        "name": g.name(),
        "file": g.file().display().to_string(),
        "interval": secs(g.interval_ms()),
        "limit": g.limit(),
        "rules": g.rules().iter()
            .filter(|r| filter.is_none_or(|f| (f == "alert") == r.is_alerting()))
            .map(rule_json).collect::<Vec<_>>(),
        "evaluationTime": g.evaluation_duration().as_secs_f64(),
        "lastEvaluation": last_eval(g.last_evaluation_ms()),
    })
}

fn rules(groups: &[Arc<Mutex<Group>>], params: &[(String, String)]) -> Response<Full<Bytes>> {
    let filter = params
        .iter()
        .find(|(k, _)| k == "type")
        .map(|(_, v)| v.as_str());
    if let Some(f) = filter
        && f != "alert"
        && f != "record"
    {
        return bad_data(&format!("unsupported type {f:?}: use alert or record"));
    }
    let gs: Vec<Value> = groups
        .iter()
        .filter_map(|g| g.lock().ok().map(|g| group_json(&g, filter)))
        .collect();
    ok(json!({"groups": gs}))
}

fn alerts(groups: &[Arc<Mutex<Group>>]) -> Response<Full<Bytes>> {
    let mut out = Vec::new();
    for g in groups {
        if let Ok(g) = g.lock() {
            for r in g.rules() {
                out.extend(alerts_of(r));
            }
        }
    }
    ok(json!({"alerts": out}))
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds (with fraction) or RFC 3339, as Prometheus's API accepts.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>()
        && f.is_finite()
    {
        return Ok((f * 1000.0).round() as i64);
    }
    let err = || format!("cannot parse {s:?} to a valid timestamp");
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return Err(err());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        s.get(r)
            .filter(|x| x.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|x| x.parse().ok())
            .ok_or_else(err)
    };
    let (y, mo, d, h, mi, sec) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if b[13] != b':' || b[16] != b':' || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return Err(err());
    }
    let mut i = 19;
    let mut millis = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(|c| c.is_ascii_digit()) {
            i += 1;
        }
        let frac = s.get(start..i).ok_or_else(err)?;
        if frac.is_empty() {
            return Err(err());
        }
        let padded = format!("{frac:0<3}");
        millis = padded[..3].parse::<i64>().map_err(|_| err())?;
    }
    let offset_min = match s.get(i..) {
        Some("Z" | "z") => 0,
        Some(o) if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) => {
            let hh = num(i + 1..i + 3)?;
            let mm = num(i + 4..i + 6)?;
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (hh * 60 + mm)
        }
        _ => return Err(err()),
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Ok(secs * 1000 + millis)
}

/// Prometheus durations ("5m") or seconds ("15", "0.5").
fn parse_step(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>()
        && f.is_finite()
        && f > 0.0
    {
        return Ok((f * 1000.0).round() as i64);
    }
    minirag_rules::rules::duration::parse_duration(s)
        .ok()
        .filter(|ms| *ms > 0)
        .ok_or_else(|| format!("cannot parse {s:?} to a valid duration"))
}

fn series_json(s: &Series) -> Value {
    json!({
        "metric": labels_json(&s.labels),
        "values": s.samples.iter().map(|p| json!([ts(p.t), fmt_value(p.v)])).collect::<Vec<_>>(),
    })
}

fn value_json(v: &PValue) -> Value {
    match v {
        PValue::Scalar { t, v } => {
            json!({"resultType": "scalar", "result": [ts(*t), fmt_value(*v)]})
        }
        PValue::String { t, v } => json!({"resultType": "string", "result": [ts(*t), v]}),
        PValue::Vector(v) => json!({
            "resultType": "vector",
            "result": v.iter().map(|s| json!({"metric": labels_json(&s.labels), "value": [ts(s.t), fmt_value(s.v)]})).collect::<Vec<_>>(),
        }),
        PValue::Matrix(m) => json!({
            "resultType": "matrix",
            "result": m.iter().map(series_json).collect::<Vec<_>>(),
        }),
    }
}

fn param<'a>(params: &'a [(String, String)], k: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
}

fn error_type(e: &promql::EvalError) -> (&'static str, StatusCode) {
    match e {
        promql::EvalError::Parse(_) => ("bad_data", StatusCode::BAD_REQUEST),
        promql::EvalError::Unsupported(_) => ("bad_data", StatusCode::BAD_REQUEST),
        promql::EvalError::Runtime(_) => ("execution", StatusCode::UNPROCESSABLE_ENTITY),
    }
}

fn eval_error(e: &promql::EvalError) -> Response<Full<Bytes>> {
    let (t, status) = error_type(e);
    json_resp(
        status,
        json!({"status": "error", "errorType": t, "error": e.to_string()}),
    )
}

fn query(rt: &Runtime, params: &[(String, String)]) -> Response<Full<Bytes>> {
    let Some(q) = param(params, "query") else {
        return bad_data("invalid parameter \"query\": no query given");
    };
    let t = match param(params, "time") {
        Some(s) => match parse_time(s) {
            Ok(t) => t,
            Err(e) => return bad_data(&format!("invalid parameter \"time\": {e}")),
        },
        None => super::now_ms(),
    };
    let expr = match promql::parse(q) {
        Ok(e) => e,
        Err(e) => return bad_data(&format!("invalid parameter \"query\": {e}")),
    };
    let Ok(store) = rt.store.read() else {
        return bad_data("store unavailable");
    };
    match rt.engine.instant(&*store, &expr, t) {
        Ok(v) => ok(value_json(&v)),
        Err(e) => eval_error(&e),
    }
}

fn query_range(rt: &Runtime, params: &[(String, String)]) -> Response<Full<Bytes>> {
    let Some(q) = param(params, "query") else {
        return bad_data("invalid parameter \"query\": no query given");
    };
    let get = |k: &str| -> Result<i64, String> {
        let s = param(params, k).ok_or_else(|| format!("invalid parameter \"{k}\": missing"))?;
        let r = if k == "step" {
            parse_step(s)
        } else {
            parse_time(s)
        };
        r.map_err(|e| format!("invalid parameter \"{k}\": {e}"))
    };
    let (start, end, step) = match (get("start"), get("end"), get("step")) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return bad_data(&e),
    };
    if end < start {
        return bad_data("invalid parameter \"end\": end timestamp must not be before start time");
    }
    if (end - start) / step > MAX_POINTS {
        return bad_data(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
        );
    }
    let expr = match promql::parse(q) {
        Ok(e) => e,
        Err(e) => return bad_data(&format!("invalid parameter \"query\": {e}")),
    };
    let Ok(store) = rt.store.read() else {
        return bad_data("store unavailable");
    };
    match rt.engine.range(&*store, &expr, start, end, step) {
        Ok(m) => ok(
            json!({"resultType": "matrix", "result": m.iter().map(series_json).collect::<Vec<_>>()}),
        ),
        Err(e) => eval_error(&e),
    }
}

fn form_params(s: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{s}"))
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default()
}

/// Serves `/api/v1/*`; `None` for any other path so the caller's router continues.
pub async fn handle(
    rt: &Runtime,
    req: Request<hyper::body::Incoming>,
) -> Option<Response<Full<Bytes>>> {
    let path = req.uri().path().to_string();
    if !path.starts_with("/api/v1/") {
        return None;
    }
    let mut params = form_params(req.uri().query().unwrap_or(""));
    let method = req.method().clone();
    if method == Method::POST {
        let form = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
        match Limited::new(req.into_body(), MAX_FORM_BYTES)
            .collect()
            .await
        {
            Ok(b) if form => {
                params.extend(form_params(&String::from_utf8_lossy(&b.to_bytes())));
            }
            Ok(_) => {}
            Err(_) => return Some(bad_data("request body too large or unreadable")),
        }
    }
    let get_or_post = method == Method::GET || method == Method::POST;
    Some(match (path.as_str(), get_or_post, method == Method::GET) {
        ("/api/v1/query", true, _) => query(rt, &params),
        ("/api/v1/query_range", true, _) => query_range(rt, &params),
        ("/api/v1/rules", _, true) => rules(&rt.groups, &params),
        ("/api/v1/alerts", _, true) => alerts(&rt.groups),
        (_, _, _) => not_found(),
    })
}

pub fn not_found() -> Response<Full<Bytes>> {
    json_resp(
        StatusCode::NOT_FOUND,
        json!({"status": "error", "errorType": "not_found", "error": "no such API route"}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_formats_match_go() {
        assert_eq!(fmt_value(1.0), "1");
        assert_eq!(fmt_value(0.1), "0.1");
        assert_eq!(fmt_value(f64::INFINITY), "+Inf");
        assert_eq!(fmt_value(f64::NAN), "NaN");
        assert_eq!(fmt_value_e(1.0), "1e+00");
        assert_eq!(fmt_value_e(1234.5), "1.2345e+03");
        assert_eq!(fmt_value_e(0.001), "1e-03");
    }

    #[test]
    fn times_parse_like_prometheus() {
        assert_eq!(parse_time("1700000000").unwrap(), 1_700_000_000_000);
        assert_eq!(parse_time("1700000000.5").unwrap(), 1_700_000_000_500);
        assert_eq!(
            parse_time("2023-11-14T22:13:20.123Z").unwrap(),
            1_700_000_000_123
        );
        assert_eq!(
            parse_time("2023-11-14T23:13:20+01:00").unwrap(),
            1_700_000_000_000
        );
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2023-13-14T22:13:20Z").is_err());
        assert_eq!(parse_step("15").unwrap(), 15_000);
        assert_eq!(parse_step("1m").unwrap(), 60_000);
        assert!(parse_step("0").is_err());
    }
}
