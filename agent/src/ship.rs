//! `minirag-agent ship`: the log shipper alone (a VM, or a sidecar that only ships).
//! Flags build a one-source, one-sink pipeline; a config file gives everything else.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::AgentConfig;
use crate::logship::config::{FileSinkConfig, HttpSinkConfig, SinkConfig, StdoutSinkConfig};
use crate::logship::{Logship, LogshipConfig};

#[derive(Debug, Default, Clone)]
pub struct ShipOptions {
    pub config: Option<PathBuf>,
    /// Globs replacing `logship.paths`.
    pub files: Vec<String>,
    /// One sink replacing `logship.sinks`: an http(s) URL (NDJSON POST), `-` (stdout)
    /// or a file path.
    pub to: Option<String>,
    pub state_dir: Option<PathBuf>,
    /// `/metrics`, `/healthz`; default: the config file's `admin_listen`, none without one.
    pub admin_listen: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Logship(crate::logship::LogshipError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The effective shipper config and admin address for `opts`.
pub fn effective(
    opts: &ShipOptions,
) -> Result<(LogshipConfig, Option<SocketAddr>, u64), ShipError> {
    let (mut cfg, admin, grace) = match &opts.config {
        Some(path) => {
            let agent =
                AgentConfig::load(Some(path)).map_err(|e| ShipError::Config(e.to_string()))?;
            (
                agent.logship,
                Some(agent.admin_listen),
                agent.lifecycle.grace_seconds,
            )
        }
        None => {
            let mut l = LogshipConfig::default();
            l.apply_env(|k| std::env::var(k).ok())
                .map_err(ShipError::Config)?;
            (l, None, 30)
        }
    };
    cfg.enabled = true;
    if !opts.files.is_empty() {
        cfg.paths = opts.files.clone();
    }
    if let Some(dir) = &opts.state_dir {
        cfg.data_dir = dir.clone();
    }
    if let Some(to) = &opts.to {
        let sink = if to.starts_with("http://") || to.starts_with("https://") {
            SinkConfig::Http(HttpSinkConfig {
                url: to.clone(),
                ..HttpSinkConfig::default()
            })
        } else if to == "-" {
            SinkConfig::Stdout(StdoutSinkConfig::default())
        } else {
            SinkConfig::File(FileSinkConfig {
                path: PathBuf::from(to),
                ..FileSinkConfig::default()
            })
        };
        cfg.sinks = vec![sink];
    }
    cfg.validate().map_err(ShipError::Config)?;
    Ok((cfg, opts.admin_listen.or(admin), grace))
}

impl From<crate::logship::LogshipError> for ShipError {
    fn from(e: crate::logship::LogshipError) -> Self {
        Self::Logship(e)
    }
}

pub async fn ship(opts: ShipOptions) -> Result<(), ShipError> {
    let (cfg, admin, grace) = effective(&opts)?;
    let shipper = Logship::start(&cfg, &[])?;
    if let Some(addr) = admin {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ShipError::Listen { addr, source })?;
        let bound = listener.local_addr().unwrap_or(addr);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(crate::logship::stats::LogshipCollector(
            shipper.stats(),
        )));
        tokio::spawn(crate::admin::serve_metrics(
            listener,
            Arc::new(registry),
            None,
        ));
        crate::log::info_with(
            "agent.admin_listening",
            &format!("metrics on http://{bound}/metrics"),
            serde_json::json!({"admin_listen": bound.to_string()}),
        );
    }
    crate::shutdown_signal().await;
    crate::log::info(
        "logship.stopping",
        "shutdown requested: delivering what is buffered",
    );
    shipper.shutdown(Duration::from_secs(grace)).await;
    crate::log::info("logship.stopped", "checkpoints written; exiting");
    Ok(())
}
