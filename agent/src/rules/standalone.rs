//! `minirag-agent rules run`: the evaluator alone, with its own admin listener
//! (`/metrics`, `/healthz`, `/readyz`, `/api/v1/*`). Flags override the config file's
//! `rules` section; without a file, `--scrape` and `--rules` make a one-line setup.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::config::{Dur, TargetConfig};
use super::{Prepared, RulesConfig, RulesError, targets_from_config};
use crate::config::AgentConfig;

#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    pub config: Option<PathBuf>,
    /// Metrics URLs to scrape (added to the file's targets).
    pub scrape: Vec<String>,
    /// Rule files or globs (replace `rules.rule_files` when given).
    pub rules: Vec<String>,
    pub alertmanagers: Vec<String>,
    pub webhooks: Vec<String>,
    pub admin_listen: Option<SocketAddr>,
    pub scrape_interval: Option<Dur>,
    pub eval_interval: Option<Dur>,
}

/// The effective `rules` config and admin address for `opts`.
pub fn effective(opts: &RunOptions) -> Result<(RulesConfig, SocketAddr), RulesError> {
    let (mut cfg, admin) = match &opts.config {
        Some(p) => {
            let a = AgentConfig::load(Some(p)).map_err(|e| RulesError::Config(e.to_string()))?;
            (a.rules, a.admin_listen)
        }
        None => (
            RulesConfig::default(),
            SocketAddr::from(([127, 0, 0, 1], 9901)),
        ),
    };
    cfg.enabled = true;
    if let Some(i) = opts.scrape_interval {
        cfg.scrape.interval = i;
        // A timeout longer than the interval would overlap scrapes.
        cfg.scrape.timeout = cfg.scrape.timeout.min(i);
    }
    if let Some(i) = opts.eval_interval {
        cfg.evaluation_interval = i;
    }
    if !opts.rules.is_empty() {
        cfg.rule_files = opts.rules.clone();
    }
    // An empty value counts as not given, so wrappers can pass "$UNSET_VAR" (the
    // benchmark harness does when it runs without Alertmanager).
    let given = |v: &&String| !v.trim().is_empty();
    for u in opts.scrape.iter().filter(given) {
        cfg.scrape.targets.push(TargetConfig {
            url: u.clone(),
            job: "scrape".into(),
            interval: None,
            timeout: None,
            sample_limit: None,
        });
    }
    cfg.notify
        .alertmanagers
        .extend(opts.alertmanagers.iter().cloned());
    cfg.notify.webhooks.extend(opts.webhooks.iter().cloned());
    if cfg.rule_files.is_empty() {
        return Err(RulesError::Config(
            "no rule files: pass --rules FILE or set rules.rule_files".into(),
        ));
    }
    cfg.validate().map_err(RulesError::Config)?;
    Ok((cfg, opts.admin_listen.unwrap_or(admin)))
}

/// Loads everything (failing before any socket is bound), then serves until a signal.
pub async fn run(opts: RunOptions) -> Result<(), RulesError> {
    let (cfg, admin) = effective(&opts)?;
    let listener = tokio::net::TcpListener::bind(admin)
        .await
        .map_err(|source| RulesError::Listen {
            addr: admin,
            source,
        })?;
    let bound = listener.local_addr().unwrap_or(admin);
    let external_url = cfg
        .external_url
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"));
    // In standalone mode there is no proxy registry to scrape in-process.
    let targets = targets_from_config(&cfg, None, None);
    let prepared = Prepared::new(cfg, targets, external_url)?;
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(prepared.collector()));
    let rt = prepared.start(None)?;
    tokio::spawn(crate::admin::serve_metrics(
        listener,
        Arc::new(registry),
        Some(Arc::clone(&rt)),
    ));
    crate::log::info_with(
        "agent.admin_listening",
        &format!("rules API and metrics on http://{bound}"),
        serde_json::json!({"admin_listen": bound.to_string()}),
    );
    crate::shutdown_signal().await;
    crate::log::info(
        "rules.stopping",
        "shutdown requested: sending queued alerts",
    );
    rt.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
