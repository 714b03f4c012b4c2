//! Alert delivery: every destination (Alertmanager API v2, or a webhook receiving
//! Alertmanager's webhook JSON) has its own bounded queue and sender task, so a dead
//! destination delays and drops only its own alerts.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Notify;

use minirag_rules::model::Labels;
use minirag_rules::rules::OutgoingAlert;

use super::stats::DestStats;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Alertmanager,
    Webhook,
}

/// An alert ready to send, with external labels applied.
#[derive(Clone, Debug)]
pub struct Alert {
    pub labels: Labels,
    pub annotations: Vec<(String, String)>,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub generator_url: String,
}

impl Alert {
    pub fn from_outgoing(a: OutgoingAlert, external: &Labels) -> Alert {
        let mut labels = a.labels;
        // Rule labels win over external labels, as in Prometheus.
        for (k, v) in external.iter() {
            if labels.get(k).is_none() {
                labels.set(k.to_string(), v.to_string());
            }
        }
        Alert {
            labels,
            annotations: a.annotations,
            starts_at_ms: a.starts_at_ms,
            ends_at_ms: a.ends_at_ms,
            generator_url: a.generator_url,
        }
    }
}

pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (proleptic Gregorian), Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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

/// Alertmanager's label-set fingerprint: FNV-1a 64 over name, 0xff, value, 0xff, sorted.
pub fn fingerprint(l: &Labels) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in l.iter() {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// `POST /api/v2/alerts` body.
pub fn alertmanager_body(alerts: &[Alert]) -> Value {
    Value::Array(
        alerts
            .iter()
            .map(|a| {
                json!({
                    "labels": labels_json(&a.labels),
                    "annotations": pairs_json(&a.annotations),
                    "startsAt": rfc3339(a.starts_at_ms),
                    "endsAt": rfc3339(a.ends_at_ms),
                    "generatorURL": a.generator_url,
                })
            })
            .collect(),
    )
}

fn common<'a>(sets: impl Iterator<Item = Vec<(&'a str, &'a str)>>) -> Value {
    let mut acc: Option<Vec<(&str, &str)>> = None;
    for s in sets {
        acc = Some(match acc {
            None => s,
            Some(a) => a.into_iter().filter(|p| s.contains(p)).collect(),
        });
    }
    Value::Object(
        acc.unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::from(v)))
            .collect(),
    )
}

/// Alertmanager's webhook payload (version 4) for one batch; the batch is one
/// notification of receiver `minirag-agent`, grouped by nothing.
pub fn webhook_body(alerts: &[Alert], now_ms: i64, external_url: &str) -> Value {
    let status = |a: &Alert| {
        if a.ends_at_ms > now_ms {
            "firing"
        } else {
            "resolved"
        }
    };
    let any_firing = alerts.iter().any(|a| status(a) == "firing");
    json!({
        "version": "4",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
        "status": if any_firing { "firing" } else { "resolved" },
        "receiver": "minirag-agent",
        "groupLabels": {},
        "commonLabels": common(alerts.iter().map(|a| a.labels.iter().collect())),
        "commonAnnotations": common(alerts.iter().map(|a| a.annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())),
        "externalURL": external_url,
        "alerts": alerts.iter().map(|a| json!({
            "status": status(a),
            "labels": labels_json(&a.labels),
            "annotations": pairs_json(&a.annotations),
            "startsAt": rfc3339(a.starts_at_ms),
            "endsAt": if status(a) == "firing" { "0001-01-01T00:00:00Z".to_string() } else { rfc3339(a.ends_at_ms) },
            "generatorURL": a.generator_url,
            "fingerprint": fingerprint(&a.labels),
        })).collect::<Vec<_>>(),
    })
}

pub struct Destination {
    pub kind: Kind,
    pub url: String,
    queue: Mutex<VecDeque<Alert>>,
    capacity: usize,
    wake: Notify,
    pub stats: Arc<DestStats>,
}

impl Destination {
    pub fn new(kind: Kind, url: String, capacity: usize) -> Arc<Destination> {
        let stats = Arc::new(DestStats {
            kind: match kind {
                Kind::Alertmanager => "alertmanager",
                Kind::Webhook => "webhook",
            },
            url: url.clone(),
            queue_capacity: capacity as u64,
            ..DestStats::default()
        });
        Arc::new(Destination {
            kind,
            url,
            queue: Mutex::new(VecDeque::new()),
            capacity,
            wake: Notify::new(),
            stats,
        })
    }

    /// Queues alerts; past capacity the oldest go first (newer state supersedes them).
    pub fn enqueue(&self, alerts: &[Alert]) {
        if alerts.is_empty() {
            return;
        }
        let Ok(mut q) = self.queue.lock() else { return };
        for a in alerts {
            if q.len() >= self.capacity {
                q.pop_front();
                self.stats.dropped.fetch_add(1, Relaxed);
            }
            q.push_back(a.clone());
        }
        self.stats.queue_len.store(q.len() as u64, Relaxed);
        drop(q);
        self.wake.notify_one();
    }

    fn take(&self, max: usize) -> Vec<Alert> {
        let Ok(mut q) = self.queue.lock() else {
            return Vec::new();
        };
        let n = q.len().min(max);
        let batch: Vec<Alert> = q.drain(..n).collect();
        self.stats.queue_len.store(q.len() as u64, Relaxed);
        batch
    }
}

pub struct SendOptions {
    pub max_batch: usize,
    pub timeout: Duration,
    pub retry_deadline: Duration,
    pub external_url: String,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

async fn post(
    client: &reqwest::Client,
    d: &Destination,
    batch: &[Alert],
    opts: &SendOptions,
) -> Result<(), (bool, String)> {
    let (url, body) = match d.kind {
        Kind::Alertmanager => (
            format!("{}/api/v2/alerts", d.url.trim_end_matches('/')),
            alertmanager_body(batch),
        ),
        Kind::Webhook => (
            d.url.clone(),
            webhook_body(batch, now_ms(), &opts.external_url),
        ),
    };
    let resp = client
        .post(&url)
        .timeout(opts.timeout)
        .json(&body)
        .send()
        .await
        .map_err(|e| (true, e.without_url().to_string()))?;
    let s = resp.status();
    if s.is_success() {
        Ok(())
    } else {
        // 4xx other than 429 will not get better by retrying the same body.
        let retry = s.is_server_error() || s.as_u16() == 429;
        Err((retry, format!("HTTP {}", s.as_u16())))
    }
}

/// Sends `d`'s queue in batches until `stop`; on stop, one last drain within the deadline.
pub async fn run(
    d: Arc<Destination>,
    client: reqwest::Client,
    opts: SendOptions,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut last_error: Option<String> = None;
    loop {
        let batch = d.take(opts.max_batch);
        if batch.is_empty() {
            if *stop.borrow() {
                return;
            }
            tokio::select! {
                _ = d.wake.notified() => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let started = Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            match post(&client, &d, &batch, &opts).await {
                Ok(()) => {
                    d.stats.sent.fetch_add(batch.len() as u64, Relaxed);
                    if last_error.take().is_some() {
                        crate::log::info_with(
                            "rules.notify_recovered",
                            &format!("{} accepts alerts again", d.url),
                            json!({"url": d.url}),
                        );
                    }
                    break;
                }
                Err((retry, msg)) => {
                    d.stats.errors.fetch_add(1, Relaxed);
                    if last_error.as_deref() != Some(msg.as_str()) {
                        crate::log::warn_with(
                            "rules.notify_failed",
                            &format!(
                                "sending {} alert(s) to {} failed: {msg}",
                                batch.len(),
                                d.url
                            ),
                            json!({"url": d.url, "error": msg, "alerts": batch.len()}),
                        );
                        last_error = Some(msg);
                    }
                    if !retry || started.elapsed() + backoff > opts.retry_deadline {
                        d.stats.dropped.fetch_add(batch.len() as u64, Relaxed);
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minirag_rules::model::METRIC_NAME;

    fn alert(name: &str, ends: i64) -> Alert {
        Alert {
            labels: Labels::from_pairs([("alertname", name), ("severity", "page")]),
            annotations: vec![("summary".into(), format!("{name} is bad"))],
            starts_at_ms: 1_000,
            ends_at_ms: ends,
            generator_url: "http://x/graph".into(),
        }
    }

    #[test]
    fn rfc3339_formats_utc_millis() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn external_labels_do_not_override_rule_labels() {
        let ext = Labels::from_pairs([("severity", "x"), ("cluster", "c1")]);
        let o = OutgoingAlert {
            labels: Labels::from_pairs([("alertname", "A"), ("severity", "page")]),
            annotations: vec![],
            starts_at_ms: 0,
            ends_at_ms: 0,
            generator_url: String::new(),
        };
        let a = Alert::from_outgoing(o, &ext);
        assert_eq!(a.labels.get("severity"), Some("page"));
        assert_eq!(a.labels.get("cluster"), Some("c1"));
        assert_eq!(a.labels.get(METRIC_NAME), None);
    }

    #[test]
    fn webhook_shape() {
        let v = webhook_body(&[alert("A", 5_000), alert("B", 500)], 1_000, "http://agent");
        assert_eq!(v["version"], "4");
        assert_eq!(v["status"], "firing");
        assert_eq!(v["commonLabels"], json!({"severity": "page"}));
        assert_eq!(v["commonAnnotations"], json!({}));
        assert_eq!(v["alerts"][0]["status"], "firing");
        assert_eq!(v["alerts"][1]["status"], "resolved");
        assert_eq!(v["alerts"][1]["endsAt"], "1970-01-01T00:00:00.500Z");
        assert_eq!(v["alerts"][0]["fingerprint"].as_str().unwrap().len(), 16);
    }

    #[test]
    fn queue_drops_oldest_when_full() {
        let d = Destination::new(Kind::Webhook, "http://x".into(), 2);
        d.enqueue(&[alert("A", 0), alert("B", 0), alert("C", 0)]);
        assert_eq!(d.stats.dropped.load(Relaxed), 1);
        let b = d.take(10);
        assert_eq!(b[0].labels.get("alertname"), Some("B"));
        assert_eq!(b.len(), 2);
    }
}
