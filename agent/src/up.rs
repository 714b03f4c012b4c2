//! `minirag-agent up`: the whole stack on one machine. rag-core runs as a supervised child
//! (restarted with backoff if it dies), the proxy runs in front of it, and SIGTERM stops
//! both in order: proxy drains first, then rag-core gets SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::config::AgentConfig;

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(
        "rag-core binary not found (looked next to minirag-agent and on PATH); pass --rag-core PATH"
    )]
    NoBinary,
    #[error("cannot start rag-core: {0}")]
    Spawn(std::io::Error),
    #[error("rag-core did not become ready within {0} s")]
    NotReady(u64),
    #[error("rag-core exited during startup ({0}); see its output above")]
    EarlyExit(String),
    #[error("no free local port: {0}")]
    Port(std::io::Error),
    #[error(transparent)]
    Run(#[from] crate::RunError),
}

pub struct UpOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub rag_core: Option<PathBuf>,
}

fn locate(explicit: Option<PathBuf>) -> Result<PathBuf, UpError> {
    if let Some(p) = explicit {
        return if p.exists() {
            Ok(p)
        } else {
            Err(UpError::NoBinary)
        };
    }
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("rag-core")))
        && sibling.exists()
    {
        return Ok(sibling);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("rag-core"))
                .find(|p| p.exists())
        })
        .ok_or(UpError::NoBinary)
}

fn free_port() -> Result<u16, UpError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(UpError::Port)?;
    Ok(l.local_addr().map_err(UpError::Port)?.port())
}

fn spawn(bin: &PathBuf, port: u16, opts: &UpOptions, token: &str) -> Result<Child, UpError> {
    Command::new(bin)
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(&opts.data_dir)
        .env("MINIRAG_INTERNAL_TOKEN", token)
        // The child is its own service in traces, whatever name the agent was given.
        .env_remove("OTEL_SERVICE_NAME")
        // rag-core's own JSON logs stay in its log file; the terminal gets the agent's.
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(UpError::Spawn)
}

async fn wait_ready(port: u16, child: &mut Child, limit: Duration) -> Result<(), UpError> {
    let deadline = Instant::now() + limit;
    let client = crate::proxy::forward::client(Duration::from_millis(500));
    let uri: http::Uri = format!("http://127.0.0.1:{port}/readyz")
        .parse()
        .map_err(|_| UpError::NotReady(0))?;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(UpError::EarlyExit(status.to_string()));
        }
        let req = http::Request::get(uri.clone()).body(http_body_util::BodyExt::boxed(
            http_body_util::BodyExt::map_err(
                http_body_util::Empty::<bytes::Bytes>::new(),
                |never| match never {},
            ),
        ));
        if let Ok(req) = req
            && let Ok(Ok(r)) =
                tokio::time::timeout(Duration::from_secs(1), client.request(req)).await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(UpError::NotReady(limit.as_secs()))
}

async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

pub async fn up(opts: UpOptions) -> Result<(), UpError> {
    let bin = locate(opts.rag_core.clone())?;
    let token = std::env::var("MINIRAG_INTERNAL_TOKEN")
        .ok()
        .unwrap_or_else(|| minirag_contracts::ids::random_hex(24));
    let port = free_port()?;
    let mut child = spawn(&bin, port, &opts, &token)?;
    wait_ready(port, &mut child, Duration::from_secs(60)).await?;

    let mut cfg = AgentConfig {
        listen: opts.listen,
        admin_listen: opts.admin_listen,
        upstream: format!("http://127.0.0.1:{port}"),
        ..AgentConfig::default()
    };
    // Locally there is no load balancer to drain from.
    cfg.lifecycle.drain_delay_seconds = 0;
    cfg.access_log.stdout = false;
    cfg.access_log.file = Some(opts.data_dir.join("logs/access.log"));
    // Ship both programs' logs to the embedded default sink: one NDJSON file under the
    // data directory (what a central store would receive), checkpoints beside it.
    cfg.logship.enabled = true;
    cfg.logship.data_dir = opts.data_dir.join("agent");
    cfg.logship.paths = vec![crate::logship::access_log_glob(
        &opts.data_dir.join("logs/rag.log"),
    )];
    if let Err(e) = cfg.logship.apply_env(|k| std::env::var(k).ok()) {
        return Err(UpError::Run(crate::RunError::Config(e)));
    }
    cfg.logship.sinks = vec![crate::logship::config::SinkConfig::File(
        crate::logship::config::FileSinkConfig {
            path: opts.data_dir.join("shipped/logs.ndjson"),
            ..Default::default()
        },
    )];
    // The shipped alert rules, evaluated locally (every 15 s; alerts become
    // alert.firing / alert.resolved log events) when present and loadable.
    let shipped = vec!["alerts/*.yaml".to_string()];
    match crate::rules::expand_rule_files(&shipped)
        .map_err(|e| e.to_string())
        .and_then(|f| minirag_rules::rules::load_files(&f).map_err(|e| e.to_string()))
    {
        Ok(_) => {
            cfg.rules.enabled = true;
            cfg.rules.rule_files = shipped;
        }
        Err(e) => crate::log::warn("up.rules_disabled", &format!("local alert rules off: {e}")),
    }
    eprintln!(
        "\nMini-RAG is up: http://{} (admin http://{}; rag-core on 127.0.0.1:{port}, data in {})\nStop with Ctrl-C.\n",
        opts.listen,
        opts.admin_listen,
        opts.data_dir.display()
    );
    // The edge knows who is calling: the same internal token rag-core was given.
    cfg.identity.provider = crate::config::IdentityProvider::Introspect;
    let source = crate::reload::ConfigSource {
        fixed: Some(cfg),
        internal_token: Some(token.clone()),
        ..Default::default()
    };
    // Ctrl-C or SIGTERM reach rag-core too (same process group, or a supervisor signalling
    // both): once seen, rag-core exiting is the stop, not a crash to restart.
    let mut stop = StopSignals::new();
    let mut stopping = false;
    let mut proxy = tokio::spawn(crate::run(source, None));
    let mut backoff = Duration::from_secs(1);
    let mut started = Instant::now();
    let result = loop {
        tokio::select! {
            r = &mut proxy => break r.map_err(|e| UpError::Run(crate::RunError::Config(e.to_string())))?.map_err(UpError::from),
            () = stop.recv(), if !stopping => stopping = true,
            status = child.wait(), if !stopping || !child_exited(&mut child) => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                if stopping {
                    crate::log::info("up.rag_core_stopped", &format!("rag-core stopped ({status})"));
                    continue;
                }
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                }
                crate::log::error("up.rag_core_exited", &format!("rag-core exited ({status}); restarting in {} s", backoff.as_secs()));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                match spawn(&bin, port, &opts, &token) {
                    Ok(c) => {
                        child = c;
                        started = Instant::now();
                        if let Err(e) = wait_ready(port, &mut child, Duration::from_secs(60)).await {
                            crate::log::error("up.rag_core_not_ready", &e.to_string());
                        }
                    }
                    Err(e) => crate::log::error("up.rag_core_spawn_failed", &e.to_string()),
                }
            }
        }
    };
    terminate(&mut child).await;
    result
}

/// Whether rag-core has already exited (its status was collected).
fn child_exited(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(Some(_)))
}

/// SIGINT and SIGTERM as one stream; without signal support (not Unix, or the handler
/// cannot be installed) it never fires and `up` behaves as before.
struct StopSignals {
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                int: signal(SignalKind::interrupt()).ok(),
                term: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            let int = async {
                match self.int.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let term = async {
                match self.term.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = int => {}
                () = term => {}
            }
        }
        #[cfg(not(unix))]
        std::future::pending::<()>().await
    }
}
