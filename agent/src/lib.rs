//! minirag-agent: the sidecar in front of rag-core. `main.rs` parses the command line;
//! [`run`] wires the capabilities and owns the lifecycle.

pub mod access_log;
pub mod admin;
pub mod artifacts;
pub mod config;
pub mod identity;
pub mod inject;
pub mod log;
pub mod logship;
pub mod metrics;
pub mod proxy;
pub mod quota;
pub mod reload;
pub mod rules;
pub mod ship;
pub mod telemetry;
pub mod tls;
pub mod up;

/// Hash maps consulted on every request (tenant ids and token digests as keys, bounded in
/// size): foldhash is seeded per process, so keys cannot be picked to collide without the
/// seed, and costs a fraction of SipHash on short keys.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::proxy::forward::client;
use crate::proxy::service::{Dynamic, Proxy};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
}

/// Serves until SIGTERM/SIGINT or `POST /shutdown` (or `external_stop`), then drains:
/// readiness fails → keep serving `drain_delay_seconds` → stop accepting → wait up to
/// `grace_seconds` for in-flight requests → return.
pub async fn run(
    source: reload::ConfigSource,
    external_stop: Option<Arc<Notify>>,
) -> Result<(), RunError> {
    let cfg = source.load().map_err(|e| RunError::Config(e.to_string()))?;
    let tracing = minirag_otel::Pipeline::from_env("minirag-agent")
        .map_err(|e| RunError::Config(format!("tracing: {e}")))?;
    let shipper = if cfg.logship.enabled {
        let extra: Vec<String> = cfg
            .access_log
            .file
            .iter()
            .map(|f| logship::access_log_glob(f))
            .collect();
        Some(
            logship::Logship::start(&cfg.logship, &extra)
                .map_err(|e| RunError::Config(e.to_string()))?,
        )
    } else {
        None
    };
    let rules_prepared = if cfg.rules.enabled {
        let targets = rules::targets_from_config(
            &cfg.rules,
            Some(&cfg.admin_listen.to_string()),
            Some(&cfg.upstream),
        );
        let external_url = cfg
            .rules
            .external_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", cfg.admin_listen));
        Some(
            rules::Prepared::new(cfg.rules.clone(), targets, external_url)
                .map_err(|e| RunError::Config(e.to_string()))?,
        )
    } else {
        None
    };
    let mut metrics = metrics::Metrics::new(tracing.as_ref().map(|t| t.stats()));
    if let Some(s) = &shipper {
        metrics = metrics.with_collector(Box::new(logship::stats::LogshipCollector(s.stats())));
    }
    if let Some(p) = &rules_prepared {
        metrics = metrics.with_collector(Box::new(p.collector()));
    }
    let metrics = Arc::new(metrics);
    // The agent scrapes its own registry in-process (no HTTP hop to itself).
    let rules_rt = match rules_prepared {
        Some(p) => {
            let m = Arc::clone(&metrics);
            Some(
                p.start(Some(Arc::new(move || m.encode())))
                    .map_err(|e| RunError::Config(e.to_string()))?,
            )
        }
        None => None,
    };
    let dynamic = Dynamic::build(cfg.clone(), &metrics).map_err(RunError::Config)?;
    let identity = match cfg.identity.provider {
        config::IdentityProvider::None => None,
        config::IdentityProvider::Introspect => {
            let token = source.internal_token.clone().ok_or_else(|| {
                RunError::Config("identity.provider introspect needs MINIRAG_INTERNAL_TOKEN (or MINIRAG_INTERNAL_TOKEN_FILE)".into())
            })?;
            Some(identity::Identity::Introspect(Box::new(
                identity::Introspector::new(cfg.identity.clone(), token),
            )))
        }
        config::IdentityProvider::TrustedHeaders => Some(identity::Identity::TrustedHeaders(
            identity::trusted::TrustedHeaders::new(&cfg.identity.trusted_headers)
                .map_err(RunError::Config)?,
        )),
        config::IdentityProvider::Jwt => Some(identity::Identity::Jwt(
            identity::jwt::JwtVerifier::load(&cfg.identity.jwt).map_err(RunError::Config)?,
        )),
    };
    let proxy = Arc::new(
        Proxy::new(
            client(Duration::from_millis(cfg.timeouts.connect_ms)),
            metrics,
            identity,
            tracing.clone(),
            dynamic,
        )
        .map_err(RunError::Config)?,
    );
    reload::watch(source, Arc::clone(&proxy));

    let tls = match &cfg.tls {
        Some(t) => Some(tls::acceptor(t)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let admin_listener = tokio::net::TcpListener::bind(cfg.admin_listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: cfg.admin_listen,
            source,
        })?;
    let listen = listener.local_addr().map_err(|source| RunError::Listen {
        addr: cfg.listen,
        source,
    })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| RunError::Listen {
            addr: cfg.admin_listen,
            source,
        })?;

    let shutdown = external_stop.unwrap_or_default();
    let admin_state = Arc::new(admin::AdminState {
        proxy: Arc::clone(&proxy),
        accepting: AtomicBool::new(true),
        shutdown: Arc::clone(&shutdown),
        rules: rules_rt.clone(),
    });
    tokio::spawn(admin::serve(admin_listener, Arc::clone(&admin_state)));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(proxy::server::serve(
        listener,
        tls,
        Arc::clone(&proxy),
        stop_rx,
    ));
    log::info_with(
        "agent.started",
        &format!(
            "minirag-agent proxying {}://{listen} -> {}",
            if cfg.tls.is_some() { "https" } else { "http" },
            cfg.upstream
        ),
        serde_json::json!({"tls": cfg.tls.is_some(), "listen": listen.to_string(), "admin_listen": admin_addr.to_string(), "upstream": cfg.upstream, "version": env!("CARGO_PKG_VERSION"), "tracing": tracing.as_ref().map(|t| format!("{:?}", t.settings().exporter).to_lowercase())}),
    );

    tokio::select! {
        _ = shutdown_signal() => {}
        _ = shutdown.notified() => {}
    }
    admin_state.accepting.store(false, Ordering::Relaxed);
    log::info_with(
        "agent.draining",
        "shutdown requested: readiness now fails; still serving during the drain delay",
        serde_json::json!({"drain_delay_seconds": cfg.lifecycle.drain_delay_seconds, "grace_seconds": cfg.lifecycle.grace_seconds}),
    );
    tokio::time::sleep(Duration::from_secs(cfg.lifecycle.drain_delay_seconds)).await;
    let _ = stop_tx.send(true);
    let graceful = match server.await {
        Ok(g) => g,
        Err(e) => return Err(RunError::Config(format!("accept loop failed: {e}"))),
    };
    let grace = Duration::from_secs(cfg.lifecycle.grace_seconds);
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => log::info("agent.stopped", "all connections drained; exiting"),
        Err(_) => log::warn(
            "agent.stopped",
            "grace period over with connections still open; exiting",
        ),
    }
    // The last spans go out within a bounded wait: a dead collector cannot hold the exit.
    if let Some(t) = &tracing {
        let t = t.clone();
        let _ = tokio::task::spawn_blocking(move || t.shutdown(Duration::from_secs(2))).await;
    }
    // Let the access-log writer flush the last lines before the process ends.
    drop(admin_state);
    drop(proxy);
    tokio::time::sleep(Duration::from_millis(cfg.access_log.flush_interval_ms + 50)).await;
    if let Some(rt) = &rules_rt {
        rt.shutdown(Duration::from_secs(
            cfg.lifecycle.grace_seconds.clamp(1, 10),
        ))
        .await;
    }
    // Whatever the shipper cannot deliver now stays unacknowledged and is read again
    // on the next start.
    if let Some(s) = shipper {
        s.shutdown(Duration::from_secs(
            cfg.lifecycle.grace_seconds.clamp(1, 10),
        ))
        .await;
    }
    Ok(())
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
