//! Local alert-rule evaluation (issue #7): scrape loops feed one bounded [`MemStore`];
//! one task per rule group evaluates it on Prometheus's schedule; alerts go to
//! Alertmanagers and webhooks through bounded per-destination queues; the admin listener
//! serves Prometheus's rules/alerts/query API over the same state.
//!
//! Memory bound: `store.max_series` series × (retention / scrape interval) samples (at
//! most 16 bytes each, compressed in practice), plus label sets; queues hold at most
//! `notify.queue_capacity` alerts per destination.

pub mod api;
pub mod config;
pub mod notify;
pub mod scrape;
pub mod standalone;
pub mod stats;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use minirag_rules::model::Labels;
use minirag_rules::promql::Engine;
use minirag_rules::rules::{AlertState, EvalContext, Group, LoadOptions, load_files_with};
use minirag_rules::storage::MemStore;

pub use config::RulesConfig;
use stats::{GroupStats, RulesStats, TargetStats};

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{0}")]
    Config(String),
    #[error("rule files: {0}")]
    Load(#[from] minirag_rules::rules::LoadError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Expands the rule-file globs, in order; a pattern matching nothing is an error (a typo
/// must not silently disable alerting).
pub fn expand_rule_files(patterns: &[String]) -> Result<Vec<std::path::PathBuf>, RulesError> {
    let mut out = Vec::new();
    for p in patterns {
        let mut matched: Vec<_> = glob::glob(p)
            .map_err(|e| RulesError::Config(format!("rule_files: bad pattern {p:?}: {e}")))?
            .filter_map(Result::ok)
            .collect();
        if matched.is_empty() {
            return Err(RulesError::Config(format!(
                "rule_files: {p:?} matches no file"
            )));
        }
        matched.sort();
        out.extend(matched);
    }
    Ok(out)
}

/// A scrape target before start: `Agent` is replaced by the agent's own registry.
#[derive(Clone)]
pub enum TargetSource {
    Url(String),
    Agent,
}

#[derive(Clone)]
pub struct TargetSpec {
    pub source: TargetSource,
    pub job: String,
    pub instance: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub sample_limit: usize,
}

/// The targets `cfg.scrape` names, plus the agent itself and rag-core when asked
/// (`agent_instance` = the admin address; `upstream` = rag-core's base URL).
pub fn targets_from_config(
    cfg: &RulesConfig,
    agent_instance: Option<&str>,
    upstream: Option<&str>,
) -> Vec<TargetSpec> {
    let s = &cfg.scrape;
    let timeout = s.timeout.min(s.interval).std();
    let mut out = Vec::new();
    if let (true, Some(i)) = (s.agent, agent_instance) {
        out.push(TargetSpec {
            source: TargetSource::Agent,
            job: "minirag-agent".into(),
            instance: i.to_string(),
            interval: s.interval.std(),
            timeout,
            sample_limit: s.sample_limit,
        });
    }
    if let (true, Some(u)) = (s.upstream, upstream) {
        let url = format!("{}/metrics", u.trim_end_matches('/'));
        out.push(TargetSpec {
            instance: scrape::instance_of(&url),
            source: TargetSource::Url(url),
            job: "rag-core".into(),
            interval: s.interval.std(),
            timeout,
            sample_limit: s.sample_limit,
        });
    }
    for t in &s.targets {
        let interval = t.interval.unwrap_or(s.interval);
        out.push(TargetSpec {
            source: TargetSource::Url(t.url.clone()),
            job: t.job.clone(),
            instance: scrape::instance_of(&t.url),
            interval: interval.std(),
            timeout: t.timeout.unwrap_or(s.timeout).min(interval).std(),
            sample_limit: t.sample_limit.unwrap_or(s.sample_limit),
        });
    }
    out
}

/// What the API handlers read; shared by every loop.
pub struct Runtime {
    pub(crate) store: Arc<RwLock<MemStore>>,
    pub(crate) groups: Vec<Arc<Mutex<Group>>>,
    pub(crate) engine: Engine,
    stats: Arc<RulesStats>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Rules loaded and state allocated, loops not yet running (so the self-metrics
/// collector can be registered before the registry is frozen).
pub struct Prepared {
    cfg: RulesConfig,
    groups: Vec<Group>,
    targets: Vec<TargetSpec>,
    dests: Vec<Arc<notify::Destination>>,
    stats: Arc<RulesStats>,
    store: Arc<RwLock<MemStore>>,
    retention_ms: i64,
    external_url: String,
}

impl Prepared {
    pub fn new(
        cfg: RulesConfig,
        targets: Vec<TargetSpec>,
        external_url: String,
    ) -> Result<Prepared, RulesError> {
        cfg.validate().map_err(RulesError::Config)?;
        let files = expand_rule_files(&cfg.rule_files)?;
        let groups = load_files_with(
            &files,
            LoadOptions {
                check_engine_support: true,
                default_interval_ms: cfg.evaluation_interval.ms(),
            },
        )?;
        let lookback = cfg.store.lookback_delta.ms();
        let mut retention_ms = cfg.store.min_retention.ms().max(lookback);
        for g in &groups {
            for r in g.rules() {
                if let Ok(e) = minirag_rules::promql::parse(r.query()) {
                    retention_ms = retention_ms.max(
                        minirag_rules::retention::lookbehind_ms(&e, lookback)
                            .saturating_add(g.query_offset_ms()),
                    );
                }
            }
        }
        let mut dests = Vec::new();
        for u in &cfg.notify.alertmanagers {
            dests.push(notify::Destination::new(
                notify::Kind::Alertmanager,
                u.clone(),
                cfg.notify.queue_capacity,
            ));
        }
        for u in &cfg.notify.webhooks {
            dests.push(notify::Destination::new(
                notify::Kind::Webhook,
                u.clone(),
                cfg.notify.queue_capacity,
            ));
        }
        let stats = RulesStats {
            groups: groups
                .iter()
                .map(|g| {
                    Arc::new(GroupStats {
                        key: format!("{};{}", g.file().display(), g.name()),
                        rules: g.rules().len() as u64,
                        ..GroupStats::default()
                    })
                })
                .collect(),
            targets: targets
                .iter()
                .map(|t| {
                    Arc::new(TargetStats {
                        key: format!("{}/{}", t.job, t.instance),
                        ..TargetStats::default()
                    })
                })
                .collect(),
            dests: dests.iter().map(|d| Arc::clone(&d.stats)).collect(),
            ..RulesStats::default()
        };
        stats.retention_ms.store(retention_ms, Relaxed);
        let store = Arc::new(RwLock::new(MemStore::new(cfg.store.max_series)));
        Ok(Prepared {
            cfg,
            groups,
            targets,
            dests,
            stats: Arc::new(stats),
            store,
            retention_ms,
            external_url,
        })
    }

    /// Self-metrics (`minirag_agent_rule*`, `minirag_agent_notifications_*`).
    pub fn collector(&self) -> stats::RulesCollector {
        stats::RulesCollector {
            stats: Arc::clone(&self.stats),
            store: Arc::clone(&self.store),
        }
    }

    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    pub fn retention_ms(&self) -> i64 {
        self.retention_ms
    }

    /// Starts every loop. `agent` renders the agent's own registry for the `Agent` target.
    pub fn start(self, agent: Option<scrape::LocalSource>) -> Result<Arc<Runtime>, RulesError> {
        let (stop, stop_rx) = watch::channel(false);
        // reqwest is built without a default crypto provider; ring is the agent's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| RulesError::Config(format!("HTTP client: {e}")))?;
        let engine = Engine {
            lookback_ms: self.cfg.store.lookback_delta.ms(),
        };
        let mut tasks = Vec::new();
        for (spec, st) in self.targets.iter().zip(&self.stats.targets) {
            let source = match &spec.source {
                TargetSource::Url(u) => scrape::Source::Http(u.clone()),
                TargetSource::Agent => match &agent {
                    Some(f) => scrape::Source::Local(Arc::clone(f)),
                    None => continue,
                },
            };
            let t = scrape::Target {
                source,
                job: spec.job.clone(),
                instance: spec.instance.clone(),
                interval: spec.interval,
                timeout: spec.timeout,
                sample_limit: spec.sample_limit,
                max_body_bytes: self.cfg.scrape.max_body_bytes,
            };
            tasks.push(tokio::spawn(scrape::run(
                t,
                client.clone(),
                Arc::clone(&self.store),
                Arc::clone(st),
                stop_rx.clone(),
            )));
        }
        for d in &self.dests {
            tasks.push(tokio::spawn(notify::run(
                Arc::clone(d),
                client.clone(),
                notify::SendOptions {
                    max_batch: self.cfg.notify.max_batch,
                    timeout: self.cfg.notify.timeout.std(),
                    retry_deadline: self.cfg.notify.retry_deadline.std(),
                    external_url: self.external_url.clone(),
                },
                stop_rx.clone(),
            )));
        }
        let groups: Vec<Arc<Mutex<Group>>> = self
            .groups
            .into_iter()
            .map(|g| Arc::new(Mutex::new(g)))
            .collect();
        let ctx = Arc::new(EvalContext {
            external_labels: Labels::from_pairs(self.cfg.external_labels.clone()),
            external_url: self.external_url.clone(),
        });
        let dests = Arc::new(self.dests);
        for (g, st) in groups.iter().zip(&self.stats.groups) {
            tasks.push(tokio::spawn(eval_loop(EvalTask {
                group: Arc::clone(g),
                stats: Arc::clone(st),
                store: Arc::clone(&self.store),
                engine: engine.clone(),
                ctx: Arc::clone(&ctx),
                dests: Arc::clone(&dests),
                resend_delay_ms: self.cfg.resend_delay.ms(),
                log_transitions: self.cfg.notify.log_transitions,
                stop: stop_rx.clone(),
            })));
        }
        tasks.push(tokio::spawn(truncate_loop(
            Arc::clone(&self.store),
            self.retention_ms,
            self.cfg.store.truncate_interval.std(),
            stop_rx.clone(),
        )));
        crate::log::info_with(
            "rules.started",
            &format!(
                "evaluating {} rule group(s) over {} target(s); retention {}s",
                groups.len(),
                self.targets.len(),
                self.retention_ms / 1000
            ),
            serde_json::json!({"groups": groups.len(), "targets": self.targets.len(), "retention_seconds": self.retention_ms / 1000, "alertmanagers": self.cfg.notify.alertmanagers, "webhooks": self.cfg.notify.webhooks}),
        );
        Ok(Arc::new(Runtime {
            store: self.store,
            groups,
            engine,
            stats: self.stats,
            stop,
            tasks: Mutex::new(tasks),
        }))
    }
}

impl Runtime {
    pub fn collector(&self) -> stats::RulesCollector {
        stats::RulesCollector {
            stats: Arc::clone(&self.stats),
            store: Arc::clone(&self.store),
        }
    }

    /// Stops the loops; queued notifications get up to `grace` to go out.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.stop.send(true);
        let tasks: Vec<_> = match self.tasks.lock() {
            Ok(mut t) => t.drain(..).collect(),
            Err(_) => return,
        };
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        let _ = tokio::time::timeout(grace, all).await;
    }
}

struct EvalTask {
    group: Arc<Mutex<Group>>,
    stats: Arc<GroupStats>,
    store: Arc<RwLock<MemStore>>,
    engine: Engine,
    ctx: Arc<EvalContext>,
    dests: Arc<Vec<Arc<notify::Destination>>>,
    resend_delay_ms: i64,
    log_transitions: bool,
    stop: watch::Receiver<bool>,
}

/// Spreads groups over the interval like Prometheus (a stable per-group offset), so
/// groups with the same interval do not all wake at once.
fn schedule_offset(key: &str, interval_ms: i64) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % interval_ms.max(1) as u64) as i64
}

/// The first tick strictly after `now` on the grid `offset + k × interval`.
fn next_tick(now: i64, interval: i64, offset: i64) -> i64 {
    let base = (now - offset).div_euclid(interval) * interval + offset;
    base + interval
}

async fn eval_loop(mut t: EvalTask) {
    let interval = match t.group.lock() {
        Ok(g) => g.interval_ms().max(1),
        Err(_) => return,
    };
    let offset = schedule_offset(&t.stats.key, interval);
    let mut next = next_tick(now_ms(), interval, offset);
    let mut firing: HashSet<(usize, Labels)> = HashSet::new();
    loop {
        let wait = (next - now_ms()).max(0) as u64;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            _ = t.stop.changed() => return,
        }
        let now = now_ms();
        // Iterations whose slot passed while the previous one ran are skipped, not
        // run late in a burst.
        let late = (now - next) / interval;
        if late > 0 {
            t.stats.missed.fetch_add(late as u64, Relaxed);
            next += late * interval;
        }
        let ts = next;
        let group = Arc::clone(&t.group);
        let store = Arc::clone(&t.store);
        let engine = t.engine.clone();
        let ctx = Arc::clone(&t.ctx);
        let dests = Arc::clone(&t.dests);
        let stats = Arc::clone(&t.stats);
        let resend = t.resend_delay_ms;
        let log = t.log_transitions;
        let mut prev = std::mem::take(&mut firing);
        // Evaluation is CPU work under locks: keep it off the async workers.
        let r = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let Ok(mut g) = group.lock() else {
                return prev;
            };
            let report = {
                let Ok(mut s) = store.write() else {
                    return prev;
                };
                g.eval(&engine, &mut s, ts, &ctx)
            };
            let outgoing = g.alerts_to_send(ts, resend);
            if !outgoing.is_empty() {
                let alerts: Vec<notify::Alert> = outgoing
                    .into_iter()
                    .map(|a| notify::Alert::from_outgoing(a, &ctx.external_labels))
                    .collect();
                for d in dests.iter() {
                    d.enqueue(&alerts);
                }
            }
            let (mut pending, mut now_firing) = (0u64, HashSet::new());
            for (i, rule) in g.rules().iter().enumerate() {
                for a in rule.alerts() {
                    match a.state {
                        AlertState::Pending => pending += 1,
                        AlertState::Firing => {
                            if log && !prev.contains(&(i, a.labels.clone())) {
                                log_transition("alert.firing", g.name(), a);
                            }
                            now_firing.insert((i, a.labels.clone()));
                        }
                        AlertState::Inactive => {
                            if log && prev.contains(&(i, a.labels.clone())) {
                                log_transition("alert.resolved", g.name(), a);
                            }
                        }
                    }
                }
            }
            stats.pending.store(pending, Relaxed);
            stats.firing.store(now_firing.len() as u64, Relaxed);
            stats
                .rule_failures
                .fetch_add(report.failed_rules.len() as u64, Relaxed);
            stats.iterations.fetch_add(1, Relaxed);
            stats.last_evaluation_ms.store(ts, Relaxed);
            stats
                .last_duration_ns
                .store(started.elapsed().as_nanos() as u64, Relaxed);
            prev.clear();
            now_firing
        })
        .await;
        firing = r.unwrap_or_default();
        next += interval;
    }
}

fn log_transition(event: &str, group: &str, a: &minirag_rules::rules::Alert) {
    let labels: HashMap<&str, &str> = a.labels.iter().collect();
    let annotations: HashMap<&str, &str> = a
        .annotations
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let name = a.labels.get("alertname").unwrap_or_default();
    let level_warn = event == "alert.firing";
    let msg = format!(
        "alert {name} {}",
        if level_warn { "firing" } else { "resolved" }
    );
    let extra = serde_json::json!({
        "rule_group": group,
        "alertname": name,
        "labels": labels,
        "annotations": annotations,
        "value": a.value,
        "active_at": notify::rfc3339(a.active_at_ms),
    });
    if level_warn {
        crate::log::warn_with(event, &msg, extra);
    } else {
        crate::log::info_with(event, &msg, extra);
    }
}

async fn truncate_loop(
    store: Arc<RwLock<MemStore>>,
    retention_ms: i64,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let store = Arc::clone(&store);
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(mut s) = store.write() {
                s.truncate(now_ms() - retention_ms);
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_align_to_the_grid() {
        assert_eq!(next_tick(10_500, 1000, 0), 11_000);
        assert_eq!(next_tick(11_000, 1000, 0), 12_000);
        assert_eq!(next_tick(10_500, 1000, 300), 11_300);
        assert_eq!(next_tick(10_200, 1000, 300), 10_300);
        let o = schedule_offset("a;b", 60_000);
        assert!((0..60_000).contains(&o));
        assert_eq!(o, schedule_offset("a;b", 60_000));
    }
}
