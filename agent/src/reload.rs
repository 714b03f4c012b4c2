//! Config reload without dropping connections: the config file is watched (inotify via
//! `notify`, and SIGHUP), a changed file is parsed and validated in full, and only then
//! swapped in. New requests and connections use it; requests in flight finish with the
//! snapshot they started with. An invalid file is refused with a log line naming the
//! problem, and the running config stays.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::config::{AgentConfig, ConfigError};
use crate::proxy::service::{Dynamic, Proxy};

/// Where the config comes from: an optional file, then environment, then flags.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub upstream: Option<String>,
    /// `--quotas FILE`: overrides `quotas.policy_file`.
    pub quotas: Option<PathBuf>,
    /// For `identity.provider: introspect`; from the environment, never from YAML.
    pub internal_token: Option<String>,
    /// A fully built config (used by `up`): no file, nothing to watch.
    pub fixed: Option<AgentConfig>,
}

impl ConfigSource {
    pub fn load(&self) -> Result<AgentConfig, ConfigError> {
        if let Some(cfg) = &self.fixed {
            return Ok(cfg.clone());
        }
        let mut cfg = AgentConfig::load(self.file.as_deref())?;
        if let Some(l) = self.listen {
            cfg.listen = l;
        }
        if let Some(a) = self.admin_listen {
            cfg.admin_listen = a;
        }
        if let Some(u) = &self.upstream {
            cfg.upstream = u.clone();
        }
        if let Some(q) = &self.quotas {
            cfg.quotas.policy_file = Some(q.clone());
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

fn apply(source: &ConfigSource, proxy: &Proxy) {
    let current = proxy.current();
    let next = match source.load() {
        Ok(c) => c,
        Err(e) => {
            crate::log::error(
                "config.reload_rejected",
                &format!("new config refused, the running one stays: {e}"),
            );
            return;
        }
    };
    if next.listen != current.cfg.listen || next.admin_listen != current.cfg.admin_listen {
        crate::log::warn(
            "config.restart_required",
            "listen addresses change only on restart; other changes applied",
        );
    }
    if format!("{:?}", next.tls) != format!("{:?}", current.cfg.tls) {
        crate::log::warn(
            "config.restart_required",
            "tls settings change only on restart (rotating the certificate files themselves needs none)",
        );
    }
    if format!("{:?}", next.identity) != format!("{:?}", current.cfg.identity)
        || next.quotas.max_tracked_budgets != current.cfg.quotas.max_tracked_budgets
    {
        crate::log::warn(
            "config.restart_required",
            "identity.* and quotas.max_tracked_budgets change only on restart",
        );
    }
    if next.logship != current.cfg.logship {
        crate::log::warn(
            "config.restart_required",
            "logship.* changes only on restart (the running shipper keeps its sources and sinks)",
        );
    }
    if next.timeouts.connect_ms != current.cfg.timeouts.connect_ms
        || format!("{:?}", next.lifecycle) != format!("{:?}", current.cfg.lifecycle)
    {
        crate::log::warn(
            "config.restart_required",
            "timeouts.connect_ms and lifecycle.* change only on restart",
        );
    }
    // Building the access log opens its file: do it only when that part changed, so a
    // reload of routes or headers keeps the same writer.
    let dynamic = if format!("{:?}", next.access_log) == format!("{:?}", current.cfg.access_log) {
        Dynamic::rebuild_keeping_log(next, &current)
    } else {
        Dynamic::build(next, &proxy.metrics)
    };
    match dynamic {
        Ok(d) => {
            proxy.replace(d);
            crate::log::info("config.reloaded", "configuration reloaded");
        }
        Err(e) => crate::log::error(
            "config.reload_rejected",
            &format!("new config refused, the running one stays: {e}"),
        ),
    }
}

fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Starts watching the config file and the quota policy file; returns at once. SIGHUP
/// reloads both. With neither file, SIGHUP is only logged (it must never end the process).
pub fn watch(source: ConfigSource, proxy: Arc<Proxy>) {
    let policy = proxy.current().cfg.quotas.policy_file.clone();
    let files: Vec<PathBuf> = source.file.iter().cloned().chain(policy).collect();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);
    let names: Vec<std::ffi::OsString> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_owned()))
        .collect();
    let fs_tx = tx.clone();
    let watcher = if files.is_empty() {
        None
    } else {
        match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Editors and Kubernetes ConfigMaps replace files by rename (`..data` swaps), so
            // the directories are watched and events filtered by name.
            if let Ok(ev) = res
                && ev.paths.iter().any(|p| {
                    p.ends_with("..data")
                        || p.file_name().is_some_and(|n| names.iter().any(|x| x == n))
                })
            {
                let _ = fs_tx.try_send(());
            }
        }) {
            Ok(mut w) => {
                for dir in files.iter().map(|f| parent_dir(f)) {
                    if let Err(e) = w.watch(&dir, RecursiveMode::NonRecursive) {
                        crate::log::warn(
                            "config.watch_failed",
                            &format!("cannot watch {}: {e}; SIGHUP still reloads", dir.display()),
                        );
                    }
                }
                Some(w)
            }
            Err(e) => {
                crate::log::warn(
                    "config.watch_failed",
                    &format!("file watching unavailable: {e}; SIGHUP still reloads"),
                );
                None
            }
        }
    };
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let _keep_alive = watcher;
        let mut hup = signal(SignalKind::hangup()).ok();
        loop {
            tokio::select! {
                got = rx.recv() => if got.is_none() { return },
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
            if files.is_empty() {
                crate::log::info(
                    "config.reload_skipped",
                    "SIGHUP received, but no config or policy file was given",
                );
                continue;
            }
            // Let a burst of events (write + rename + chmod) settle into one reload.
            tokio::time::sleep(Duration::from_millis(200)).await;
            while rx.try_recv().is_ok() {}
            apply(&source, &proxy);
        }
    });
}
