//! Startup and shutdown: logging, store, state, listener, signals.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;

use crate::answer::llm::ChatClient;
use crate::api::{self, AppState, Inner};
use crate::config::{AnswerMode, Config};
use crate::ingest::Chunker;
use crate::ingest::fetch::Fetcher;
use crate::obs::log::{JsonLayer, LogSink};
use crate::obs::metrics::Metrics;
use crate::obs::rotate::RotatingFile;
use crate::retrieval::{Embedder, Searcher, VectorIndex};
use crate::store::Store;
use crate::tenancy;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open log file {path}: {source}")]
    Log {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot install the logger: {0}")]
    Logger(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Setup(String),
}

/// Installs the JSON logger (stdout and/or the rotating file) as the global subscriber.
pub fn init_logging(cfg: &Config) -> Result<(), ServeError> {
    let path = cfg.log_dir().join(&cfg.logging.file_name);
    let file = RotatingFile::open(
        &path,
        cfg.logging.rotation_max_bytes,
        cfg.logging.rotation_backups,
        cfg.logging.retention_days,
    )
    .map_err(|source| ServeError::Log {
        path: path.display().to_string(),
        source,
    })?;
    let layer = JsonLayer::new(
        LogSink::new(cfg.logging.stdout, Some(file)),
        cfg.logging.level,
    );
    let tracing = minirag_otel::Pipeline::from_env("rag-core")
        .map_err(|e| ServeError::Setup(format!("tracing: {e}")))?;
    let otel = crate::obs::trace::layer(tracing.as_ref()).with_filter(
        tracing_subscriber::filter::filter_fn(|m| m.target().starts_with("rag_core")),
    );
    let subscriber = tracing_subscriber::registry().with(layer).with(otel);
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|e| ServeError::Logger(e.to_string()))
}

pub async fn serve(cfg: Config) -> Result<(), ServeError> {
    // reqwest is built without a default crypto provider; pick ring explicitly once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = Arc::new(cfg);
    cfg.warn_placeholder_secrets();
    let store = Store::open(&cfg.data_dir, &cfg.store)?;

    if cfg.bootstrap_on_empty && store.write_blocking(|c| tenancy::is_empty(c))? {
        let t = &cfg.tenancy;
        let b = store.write_blocking(|c| {
            tenancy::bootstrap_org(
                c,
                "default",
                "admin@localhost",
                "free",
                t.chunk_limit_free,
                t.trial_days,
                &crate::audit::Origin::new(crate::audit::Actor::system("bootstrap"), None),
            )
        })?;
        b.audit.log();
        // Shown once on the terminal, never written to the log file.
        eprintln!(
            "\nrag-core: empty store, created a first organization.\n  organization_id: {}\n  workspace_id:    {}\n  admin API key:   {}\n(the key is shown only now; store it safely)\n",
            b.organization_id, b.workspace_id, b.api_key
        );
        tracing::info!(event = "tenancy.bootstrapped", organization_id = %b.organization_id, workspace_id = %b.workspace_id, "bootstrap organization created");
    }

    let state = build_state(Arc::clone(&cfg), store).await?;
    // Before anything else starts: an unusable backup key stops startup here.
    crate::backup::schedule::start(&state).map_err(|e| ServeError::Setup(e.to_string()))?;
    crate::jobs::Jobs::start(state.clone());

    if let Some(url) = cfg.healthchecks.ping_url.clone() {
        tokio::spawn(crate::obs::healthcheck::run(
            state.clone(),
            url,
            Duration::from_secs(cfg.healthchecks.interval_seconds),
            Duration::from_secs(cfg.healthchecks.timeout_seconds),
        ));
    }

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let local = listener.local_addr()?;
    tracing::info!(
        event = "server.started",
        listen = %local,
        data_dir = %cfg.data_dir.display(),
        embedder = %state.embedder.name(),
        version = env!("CARGO_PKG_VERSION"),
        "rag-core listening on http://{local}"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = api::router(state.clone());
    let mut server = tokio::spawn(async move {
        let mut rx = stop_rx;
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
    });

    tokio::select! {
        res = &mut server => {
            return match res {
                Ok(r) => r.map_err(ServeError::Io),
                Err(e) => Err(ServeError::Setup(e.to_string())),
            };
        }
        _ = shutdown_signal() => {}
    }
    state.shutting_down.store(true, Ordering::Relaxed);
    tracing::info!(
        event = "server.stopping",
        grace_seconds = cfg.shutdown_grace_seconds,
        "signal received; draining in-flight requests"
    );
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(cfg.shutdown_grace_seconds), &mut server).await {
        Ok(_) => tracing::info!(event = "server.stopped", "all requests finished; exiting"),
        Err(_) => tracing::warn!(
            event = "server.stopped",
            "grace period over; exiting with requests still open"
        ),
    }
    state.jobs.release().await;
    // The last spans go out before exit (bounded: a dead collector cannot hold it).
    let _ = tokio::task::spawn_blocking(crate::obs::trace::shutdown).await;
    Ok(())
}

/// Everything handlers and job workers share, built once per process.
pub async fn build_state(cfg: Arc<Config>, store: Arc<Store>) -> Result<AppState, ServeError> {
    let metrics = Arc::new(Metrics::new());
    let total = store.read(crate::store::documents::total_chunks).await?;
    metrics.chunk_records.set(total);

    let embedder = Arc::new(
        Embedder::from_config(&cfg.retrieval, &cfg.openai)
            .map_err(|e| ServeError::Setup(e.to_string()))?,
    );
    let chat = match cfg.answer.mode {
        AnswerMode::Openai => {
            Some(ChatClient::new(&cfg.openai).map_err(|e| ServeError::Setup(e.to_string()))?)
        }
        AnswerMode::Extractive => None,
    };
    let searcher = Searcher {
        store: Arc::clone(&store),
        index: Arc::new(VectorIndex::new(cfg.store.vector_cache_max_chunks)),
        embedder: Arc::clone(&embedder),
        cfg: cfg.retrieval.clone(),
        metrics: Arc::clone(&metrics),
    };
    let jobs = crate::jobs::Jobs::new(
        Arc::new(crate::jobs::SqliteQueue::new(
            Arc::clone(&store),
            cfg.jobs.max_pending,
        )),
        // The built-in `lifecycle` schedule (retention sweep) joins the configured ones.
        cfg.lifecycle.with_schedule(&cfg.jobs),
        Arc::clone(&metrics),
    );
    let state = AppState(Arc::new(Inner {
        cfg: Arc::clone(&cfg),
        store,
        metrics,
        searcher,
        embedder,
        chat,
        fetcher: Fetcher::new(&cfg.ingest.url),
        chunker: Chunker::new(cfg.ingest.chunk_size, cfg.ingest.chunk_overlap),
        shutting_down: AtomicBool::new(false),
        inflight: Semaphore::new(cfg.limits.max_concurrent_requests),
        jobs,
    }));
    Ok(state)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
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
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
