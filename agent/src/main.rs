//! `minirag-agent` command line (DESIGN §8). Wiring only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use minirag_agent::config::AgentConfig;

// The request path allocates and frees many small objects per request across tasks;
// mimalloc's thread-local free lists cut that cost measurably against glibc malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "minirag-agent",
    version,
    about = "Mini-RAG sidecar: reverse proxy in front of rag-core"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (flags override the config file; no file = defaults).
    Run {
        #[arg(long, env = "MINIRAG_AGENT_CONFIG")]
        config: Option<PathBuf>,
        /// Proxy address [default: 127.0.0.1:8080].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Admin address (/metrics, /healthz, /readyz) [default: 127.0.0.1:9901].
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// rag-core's base URL [default: http://127.0.0.1:8000].
        #[arg(long)]
        upstream: Option<String>,
        /// Quota policy file (see config/quotas.yaml); overrides quotas.policy_file.
        #[arg(long)]
        quotas: Option<PathBuf>,
        /// Worker threads of the async runtime. 1 runs everything on one thread (like one
        /// nginx worker: no cross-thread hand-offs); more uses a work-stealing pool
        /// [default: one per CPU].
        #[arg(long, env = "MINIRAG_AGENT_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
        worker_threads: Option<u16>,
    },
    /// Run the whole stack locally: rag-core as a supervised child, the proxy in front.
    Up {
        /// rag-core's data directory [default: data].
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin_listen: SocketAddr,
        /// Path of the rag-core binary [default: next to this binary, else on PATH].
        #[arg(long)]
        rag_core: Option<PathBuf>,
    },
    /// Ship log files only (no proxy): a VM log shipper. Flags override the file's
    /// `logship` section; without a file, `--file` and `--to` make a one-line setup.
    Ship {
        #[arg(long, env = "MINIRAG_AGENT_CONFIG")]
        config: Option<PathBuf>,
        /// Glob of files to tail (repeatable) [default: logship.paths].
        #[arg(long = "file")]
        files: Vec<String>,
        /// One destination: an http(s) URL (NDJSON POST), `-` (stdout) or a file path
        /// [default: logship.sinks].
        #[arg(long)]
        to: Option<String>,
        /// Checkpoint directory [default: logship.data_dir].
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Serve /metrics here [default: the config file's admin_listen; none without a file].
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// Worker threads of the async runtime (1 = single-threaded).
        #[arg(long, env = "MINIRAG_AGENT_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
        worker_threads: Option<u16>,
    },
    /// Add the agent sidecar to Kubernetes manifests (multi-document YAML, List, Pod,
    /// Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob). Writes the result
    /// on stdout and one report line per resource on stderr.
    Inject {
        /// A file, a directory (its *.yaml / *.yml / *.json files, sorted) or - for stdin.
        #[arg(short = 'f', long = "filename", default_value = "-")]
        file: PathBuf,
        /// Agent image [default: ghcr.io/minirag/minirag-agent:<version>].
        #[arg(long)]
        image: Option<String>,
        /// Add the agent as a regular container (clusters before 1.29) instead of a
        /// native sidecar (an init container with restartPolicy: Always).
        #[arg(long)]
        classic: bool,
        /// ConfigMap holding agent.yaml [default: minirag-agent-config].
        #[arg(long)]
        config_map: Option<String>,
    },
    /// Mutating admission webhook (HTTPS): the same injection as `inject`, answered to
    /// the API server as a JSON Patch. Never blocks a pod on its own errors.
    Webhook {
        #[arg(long, default_value = "0.0.0.0:8443")]
        listen: SocketAddr,
        /// PEM certificate chain (reloaded when it changes).
        #[arg(long)]
        tls_cert: PathBuf,
        /// PEM private key.
        #[arg(long)]
        tls_key: PathBuf,
        #[arg(long)]
        image: Option<String>,
        #[arg(long)]
        classic: bool,
        #[arg(long)]
        config_map: Option<String>,
    },
    /// On-call tools over the local log files.
    Logs {
        #[command(subcommand)]
        command: LogsCommand,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Prometheus alerting and recording rules (alerts/*.yaml).
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// The shipped observability artifacts (rules, dashboards, renderings) as one
    /// versioned archive.
    Artifacts {
        #[command(subcommand)]
        command: ArtifactsCommand,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum ArtifactsCommand {
    /// Write minirag-observability-<version>.tar.gz (byte-identical for the same inputs).
    Bundle {
        /// Directory the archive is written to (created if needed).
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// The repository checkout holding alerts/, dashboards/ and config/k8s/.
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
    /// Check a bundle: archive readable, one versioned top directory, safe paths and
    /// every file matching SHA256SUMS (exit 1 on any problem).
    Verify { file: PathBuf },
}

#[derive(Subcommand)]
enum LogsCommand {
    /// Print every local log line (agent and rag-core; live, rotated and gzipped) that
    /// carries REQUEST_ID, in time order.
    Sample {
        request_id: String,
        /// Files to search (globs, repeatable) [default: logship.paths and the access log
        /// of --config, else data/logs/*.log*].
        #[arg(long = "path")]
        paths: Vec<String>,
        #[arg(long, env = "MINIRAG_AGENT_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Validate rule files like `promtool check rules` (exit 1 on any error).
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run rule unit tests in `promtool test rules` format (exit 1 on any failure).
    Test {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Evaluate rules continuously: scrape, alert, serve /metrics and /api/v1/* on
    /// --admin-listen. Flags override the config file's `rules` section.
    Run {
        #[arg(long, env = "MINIRAG_AGENT_CONFIG")]
        config: Option<PathBuf>,
        /// Metrics URL to scrape (repeatable; added to rules.scrape.targets).
        #[arg(long = "scrape")]
        scrape: Vec<String>,
        /// Rule file or glob (repeatable) [default: rules.rule_files].
        #[arg(long = "rules")]
        rules: Vec<String>,
        /// Alertmanager base URL (repeatable).
        #[arg(long = "alertmanager")]
        alertmanagers: Vec<String>,
        /// URL receiving Alertmanager webhook JSON (repeatable).
        #[arg(long = "webhook")]
        webhooks: Vec<String>,
        /// /metrics, /healthz and the API [default: admin_listen, 127.0.0.1:9901].
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// Scrape interval, e.g. 1s [default: rules.scrape.interval, 15s].
        #[arg(long)]
        scrape_interval: Option<minirag_agent::rules::config::Dur>,
        /// Interval of groups that set none [default: rules.evaluation_interval, 1m].
        #[arg(long)]
        eval_interval: Option<minirag_agent::rules::config::Dur>,
        #[arg(long, env = "MINIRAG_AGENT_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
        worker_threads: Option<u16>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file and print the effective configuration as JSON.
    Check { file: PathBuf },
}

/// `MINIRAG_INTERNAL_TOKEN`, or the contents of the file `MINIRAG_INTERNAL_TOKEN_FILE` names.
fn internal_token() -> anyhow::Result<Option<String>> {
    if let Ok(t) = std::env::var("MINIRAG_INTERNAL_TOKEN") {
        return Ok(Some(t.trim().to_string()).filter(|t| !t.is_empty()));
    }
    match std::env::var("MINIRAG_INTERNAL_TOKEN_FILE") {
        Ok(path) => {
            let t = std::fs::read_to_string(&path)
                .with_context(|| format!("MINIRAG_INTERNAL_TOKEN_FILE: cannot read {path}"))?;
            Ok(Some(t.trim().to_string()).filter(|t| !t.is_empty()))
        }
        Err(_) => Ok(None),
    }
}

/// The injection defaults with the `inject` / `webhook` flags applied.
fn inject_options(
    image: Option<String>,
    classic: bool,
    config_map: Option<String>,
) -> minirag_agent::inject::Options {
    let defaults = minirag_agent::inject::Options::default();
    minirag_agent::inject::Options {
        classic,
        image: image.unwrap_or(defaults.image.clone()),
        config_map: config_map.unwrap_or(defaults.config_map.clone()),
        ..defaults
    }
}

/// A file, every *.yaml / *.yml / *.json file of a directory (sorted), or stdin for `-`.
fn read_manifests(path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read;
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading manifests from stdin")?;
        return Ok(s);
    }
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading directory {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            })
            .collect();
        files.sort();
        let mut docs = Vec::new();
        for f in files {
            docs.push(
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?,
            );
        }
        return Ok(docs.join("\n---\n"));
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_with(None)
}

fn runtime_with(worker_threads: Option<u16>) -> anyhow::Result<tokio::runtime::Runtime> {
    // tokio's own TOKIO_WORKER_THREADS means the same as the flag; a value of 1 gets the
    // single-threaded scheduler too (a one-worker pool still pays for cross-thread
    // wake-ups: measured ~15% more CPU per proxied request).
    let worker_threads = worker_threads.or_else(|| {
        std::env::var("TOKIO_WORKER_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<u16>().ok())
            .filter(|n| *n == 1)
    });
    let mut builder = match worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(usize::from(n));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run {
            config,
            listen,
            admin_listen,
            upstream,
            quotas,
            worker_threads,
        } => {
            let source = minirag_agent::reload::ConfigSource {
                file: config,
                listen,
                admin_listen,
                upstream,
                quotas,
                internal_token: internal_token()?,
                fixed: None,
            };
            // Fail fast, before any socket is bound, on a bad file or flag.
            source.load()?;
            runtime_with(worker_threads)?.block_on(minirag_agent::run(source, None))?;
        }
        Command::Up {
            data_dir,
            listen,
            admin_listen,
            rag_core,
        } => {
            let opts = minirag_agent::up::UpOptions {
                data_dir,
                listen,
                admin_listen,
                rag_core,
            };
            runtime()?.block_on(minirag_agent::up::up(opts))?;
        }
        Command::Ship {
            config,
            files,
            to,
            state_dir,
            admin_listen,
            worker_threads,
        } => {
            let opts = minirag_agent::ship::ShipOptions {
                config,
                files,
                to,
                state_dir,
                admin_listen,
            };
            minirag_agent::ship::effective(&opts)?;
            runtime_with(worker_threads)?.block_on(minirag_agent::ship::ship(opts))?;
        }
        Command::Inject {
            file,
            image,
            classic,
            config_map,
        } => {
            let opts = inject_options(image, classic, config_map);
            let input = read_manifests(&file)?;
            let (out, reports) = minirag_agent::inject::inject_stream(&input, &opts)
                .with_context(|| format!("{}", file.display()))?;
            for r in &reports {
                eprintln!("{r}");
            }
            use std::io::Write;
            std::io::stdout().lock().write_all(out.as_bytes())?;
        }
        Command::Webhook {
            listen,
            tls_cert,
            tls_key,
            image,
            classic,
            config_map,
        } => {
            let opts = inject_options(image, classic, config_map);
            let tls = minirag_agent::config::TlsConfig {
                cert_file: tls_cert,
                key_file: tls_key,
                reload_interval_ms: 5_000,
            };
            runtime()?
                .block_on(minirag_agent::inject::webhook::run(listen, &tls, opts))
                .map_err(anyhow::Error::msg)?;
        }
        Command::Logs {
            command:
                LogsCommand::Sample {
                    request_id,
                    paths,
                    config,
                },
        } => {
            let patterns = if !paths.is_empty() {
                paths
            } else if let Some(file) = config {
                let cfg = AgentConfig::load(Some(&file))?;
                let mut p = cfg.logship.paths.clone();
                if let Some(a) = &cfg.access_log.file {
                    p.push(minirag_agent::logship::access_log_glob(a));
                }
                p
            } else {
                vec!["data/logs/*.log*".to_string()]
            };
            let (found, files) = minirag_agent::logship::sample::sample(&request_id, &patterns)?;
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            for f in &found {
                writeln!(out, "{}", f.line)?;
            }
            eprintln!(
                "{} line(s) with request_id {request_id} in {files} file(s)",
                found.len()
            );
            if found.is_empty() {
                return Err(anyhow::anyhow!("no line carries request_id {request_id}"));
            }
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let cfg = AgentConfig::load(Some(&file))?;
            println!("{}", serde_json::to_string_pretty(&cfg)?);
            eprintln!("{}: OK", file.display());
        }
        Command::Rules {
            command: RulesCommand::Check { files },
        } => {
            let report = minirag_rules::rules::check_files(
                &files,
                minirag_rules::rules::LoadOptions::default(),
            );
            let (out, err) = report.render();
            print!("{out}");
            eprint!("{err}");
            anyhow::ensure!(report.success(), "rule files have errors");
        }
        Command::Rules {
            command: RulesCommand::Test { files },
        } => {
            let engine = minirag_rules::promql::Engine::default();
            let report = minirag_rules::unittest::run_files(&engine, &files);
            let (out, err) = report.render();
            print!("{out}");
            eprint!("{err}");
            anyhow::ensure!(report.passed(), "rule unit tests failed");
        }
        Command::Rules {
            command:
                RulesCommand::Run {
                    config,
                    scrape,
                    rules,
                    alertmanagers,
                    webhooks,
                    admin_listen,
                    scrape_interval,
                    eval_interval,
                    worker_threads,
                },
        } => {
            let opts = minirag_agent::rules::standalone::RunOptions {
                config,
                scrape,
                rules,
                alertmanagers,
                webhooks,
                admin_listen,
                scrape_interval,
                eval_interval,
            };
            minirag_agent::rules::standalone::effective(&opts)?;
            runtime_with(worker_threads)?.block_on(minirag_agent::rules::standalone::run(opts))?;
        }
        Command::Artifacts {
            command: ArtifactsCommand::Bundle { out, root },
        } => {
            let b = minirag_agent::artifacts::bundle(&root, &out)?;
            println!(
                "{}: version {}, {} files, {} bytes, sha256 {}",
                b.path.display(),
                b.version,
                b.files,
                b.bytes,
                b.sha256
            );
        }
        Command::Artifacts {
            command: ArtifactsCommand::Verify { file },
        } => {
            let v = minirag_agent::artifacts::verify(&file)?;
            println!(
                "{}: OK: version {}, {} files ({} bytes) match SHA256SUMS, sha256 {}",
                file.display(),
                v.version,
                v.files,
                v.bytes,
                v.sha256
            );
        }
        Command::Version => println!("minirag-agent {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("minirag-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
