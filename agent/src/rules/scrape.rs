//! One scrape loop per target: fetch (HTTP, or the agent's own registry in-process),
//! parse, attach `job`/`instance`, append to the store, and write Prometheus's report
//! series (`up`, `scrape_duration_seconds`, `scrape_samples_scraped`,
//! `scrape_series_added`) plus stale markers for series that disappeared.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use minirag_rules::model::{Labels, METRIC_NAME, stale_nan};
use minirag_rules::storage::MemStore;
use minirag_rules::textparse::{self, ACCEPT_HEADER, Format};

use super::stats::TargetStats;

/// Renders a registry page (OpenMetrics text) without going through HTTP.
pub type LocalSource = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
pub enum Source {
    Http(String),
    Local(LocalSource),
}

#[derive(Clone)]
pub struct Target {
    pub source: Source,
    pub job: String,
    pub instance: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub sample_limit: usize,
    pub max_body_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("{0}")]
    Http(String),
    #[error("server returned HTTP status {0}")]
    Status(u16),
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("body is not UTF-8")]
    Utf8,
    #[error("timeout after {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Parse(#[from] textparse::ParseError),
}

/// `host:port` of a URL, Prometheus's default `instance`.
pub fn instance_of(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or_default();
            match u.port_or_known_default() {
                Some(p) => format!("{host}:{p}"),
                None => host.to_string(),
            }
        }
        Err(_) => url.to_string(),
    }
}

async fn fetch(client: &reqwest::Client, t: &Target) -> Result<(String, Format), ScrapeError> {
    let url = match &t.source {
        Source::Local(f) => return Ok((f(), Format::OpenMetrics)),
        Source::Http(u) => u,
    };
    let mut resp = client
        .get(url)
        .header(reqwest::header::ACCEPT, ACCEPT_HEADER)
        .header(
            "X-Prometheus-Scrape-Timeout-Seconds",
            format!("{}", t.timeout.as_secs_f64()),
        )
        .send()
        .await
        .map_err(|e| ScrapeError::Http(e.without_url().to_string()))?;
    if !resp.status().is_success() {
        return Err(ScrapeError::Status(resp.status().as_u16()));
    }
    let format = Format::from_content_type(
        resp.headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    if resp
        .content_length()
        .is_some_and(|n| n > t.max_body_bytes as u64)
    {
        return Err(ScrapeError::TooLarge(t.max_body_bytes));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| ScrapeError::Http(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > t.max_body_bytes {
            return Err(ScrapeError::TooLarge(t.max_body_bytes));
        }
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(body).map_err(|_| ScrapeError::Utf8)?;
    Ok((text, format))
}

/// Per-target memory between scrapes: the series the last scrape wrote (for staleness).
pub struct ScrapeState {
    prev: HashSet<Labels>,
}

impl ScrapeState {
    pub fn new() -> Self {
        ScrapeState {
            prev: HashSet::new(),
        }
    }
}

impl Default for ScrapeState {
    fn default() -> Self {
        Self::new()
    }
}

/// Target labels win over scraped ones (`honor_labels: false`): a conflicting scraped
/// label is kept as `exported_<name>` (repeatedly prefixed until free).
fn target_labels(mut l: Labels, job: &str, instance: &str) -> Labels {
    for (name, value) in [("job", job), ("instance", instance)] {
        if let Some(v) = l.get(name).map(str::to_string) {
            if v == value {
                continue;
            }
            let mut k = format!("exported_{name}");
            while l.get(&k).is_some() {
                k = format!("exported_{k}");
            }
            l.set(k, v);
        }
        l.set(name.to_string(), value.to_string());
    }
    l
}

/// Applies one scrape result to the store at `t_ms`. Returns (samples scraped, series added).
pub fn apply(
    store: &mut MemStore,
    state: &mut ScrapeState,
    t: &Target,
    t_ms: i64,
    result: &mut Result<Vec<textparse::ScrapedSample>, ScrapeError>,
    duration: Duration,
) -> (usize, usize) {
    let series_before = store.stats().series;
    let mut seen = HashSet::with_capacity(state.prev.len());
    let mut scraped = 0;
    if let Ok(samples) = result {
        scraped = samples.len();
        // The samples are consumed: their label sets move into the store's keys and the
        // staleness set instead of being copied (this runs for every series every scrape).
        for s in samples.drain(..) {
            let labels = target_labels(s.labels, &t.job, &t.instance);
            let ts = s.timestamp_ms.unwrap_or(t_ms);
            // Refusals (series cap, out of order) are counted by the store itself.
            let _ = store.append(&labels, ts, s.value);
            // Prometheus never stale-marks series that carry their own timestamps.
            if s.timestamp_ms.is_none() {
                seen.insert(labels);
            }
        }
    }
    for gone in state.prev.difference(&seen) {
        let _ = store.append(gone, t_ms, stale_nan());
    }
    state.prev = seen;
    let added = store.stats().series.saturating_sub(series_before);
    let report = |name: &str| {
        Labels::from_pairs([
            (METRIC_NAME, name),
            ("job", t.job.as_str()),
            ("instance", t.instance.as_str()),
        ])
    };
    let up = if result.is_ok() { 1.0 } else { 0.0 };
    let _ = store.append(&report("up"), t_ms, up);
    let _ = store.append(
        &report("scrape_duration_seconds"),
        t_ms,
        duration.as_secs_f64(),
    );
    let _ = store.append(&report("scrape_samples_scraped"), t_ms, scraped as f64);
    let _ = store.append(&report("scrape_series_added"), t_ms, added as f64);
    (scraped, added)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Scrapes `t` every interval until `stop` turns true.
pub async fn run(
    t: Target,
    client: reqwest::Client,
    store: Arc<RwLock<MemStore>>,
    stats: Arc<TargetStats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut state = ScrapeState::new();
    let mut tick = tokio::time::interval(t.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let t_ms = now_ms();
        let started = Instant::now();
        let mut result = match tokio::time::timeout(t.timeout, fetch(&client, &t)).await {
            Ok(Ok((body, format))) => {
                textparse::parse(&body, format, t.sample_limit).map_err(ScrapeError::from)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ScrapeError::Timeout(t.timeout)),
        };
        let duration = started.elapsed();
        let (scraped, _) = match store.write() {
            Ok(mut s) => apply(&mut s, &mut state, &t, t_ms, &mut result, duration),
            Err(_) => return,
        };
        stats.scrapes.fetch_add(1, Relaxed);
        stats
            .last_duration_ns
            .store(started.elapsed().as_nanos() as u64, Relaxed);
        match &result {
            Ok(_) => {
                stats.up.store(1, Relaxed);
                stats.last_samples.store(scraped as u64, Relaxed);
                if last_error.take().is_some() {
                    crate::log::info_with(
                        "rules.scrape_recovered",
                        &format!("scrape of {} succeeds again", stats.key),
                        serde_json::json!({"target": stats.key}),
                    );
                }
            }
            Err(e) => {
                stats.up.store(0, Relaxed);
                stats.failures.fetch_add(1, Relaxed);
                let msg = e.to_string();
                // One line per change of error, not one per failed scrape.
                if last_error.as_deref() != Some(msg.as_str()) {
                    crate::log::warn_with(
                        "rules.scrape_failed",
                        &format!("scrape of {} failed: {msg}", stats.key),
                        serde_json::json!({"target": stats.key, "error": msg}),
                    );
                    last_error = Some(msg);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minirag_rules::model::is_stale;
    use minirag_rules::promql::parse;
    use minirag_rules::storage::Queryable;
    use promql_parser::label::{MatchOp, Matcher};

    fn target() -> Target {
        Target {
            source: Source::Http("http://x".into()),
            job: "j".into(),
            instance: "h:1".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            sample_limit: 10,
            max_body_bytes: 1000,
        }
    }

    fn values(store: &MemStore, name: &str) -> Vec<(Labels, Vec<f64>)> {
        let _ = parse;
        store
            .select(
                &[Matcher::new(MatchOp::Equal, METRIC_NAME, name)],
                i64::MIN,
                i64::MAX,
            )
            .into_iter()
            .map(|s| (s.labels, s.samples.iter().map(|x| x.v).collect()))
            .collect()
    }

    #[test]
    fn honor_labels_false_renames_conflicts() {
        let l = Labels::from_pairs([(METRIC_NAME, "m"), ("job", "other"), ("exported_job", "x")]);
        let l = target_labels(l, "j", "h:1");
        assert_eq!(l.get("job"), Some("j"));
        assert_eq!(l.get("instance"), Some("h:1"));
        assert_eq!(l.get("exported_job"), Some("x"));
        assert_eq!(l.get("exported_exported_job"), Some("other"));
    }

    #[test]
    fn failures_write_up_zero_and_stale_markers() {
        let mut store = MemStore::new(100);
        let mut st = ScrapeState::new();
        let t = target();
        let mut page =
            textparse::parse("a 1\nb 2\n", Format::PromText, 10).map_err(ScrapeError::from);
        apply(&mut store, &mut st, &t, 1000, &mut page, Duration::ZERO);
        // b disappears from a successful scrape.
        let mut page = textparse::parse("a 3\n", Format::PromText, 10).map_err(ScrapeError::from);
        apply(&mut store, &mut st, &t, 2000, &mut page, Duration::ZERO);
        let b = values(&store, "b");
        assert!(is_stale(b[0].1[1]));
        // The target goes away: a goes stale and up is 0.
        apply(
            &mut store,
            &mut st,
            &t,
            3000,
            &mut Err(ScrapeError::Status(500)),
            Duration::ZERO,
        );
        let a = values(&store, "a");
        assert_eq!(a[0].1[..2], [1.0, 3.0]);
        assert!(is_stale(a[0].1[2]));
        let up = values(&store, "up");
        assert_eq!(up[0].1, vec![1.0, 1.0, 0.0]);
        assert_eq!(up[0].0.get("job"), Some("j"));
        let added = values(&store, "scrape_series_added");
        assert_eq!(added[0].1, vec![2.0, 0.0, 0.0]);
    }

    #[test]
    fn instance_is_host_port() {
        assert_eq!(
            instance_of("http://127.0.0.1:9100/metrics"),
            "127.0.0.1:9100"
        );
        assert_eq!(instance_of("https://example.com/m"), "example.com:443");
    }
}
