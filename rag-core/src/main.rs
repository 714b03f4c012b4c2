//! `rag-core` command line (DESIGN §8). Wiring only.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rag_core::config::Config;
use rag_core::store::Store;
use rag_core::tenancy;

#[derive(Parser)]
#[command(
    name = "rag-core",
    version,
    about = "Mini-RAG core service: ingest documents, ask questions, get cited answers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service.
    Serve {
        /// YAML config file (see config/rag-core.yaml).
        #[arg(long, env = "RAG_CORE_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:8000; env RAG_CORE_LISTEN].
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Directory for the database and logs [default: data; env RAG_CORE_DATA_DIR].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Administrative commands that work on the store directly.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// On an empty store, create an organization, a workspace and an admin key.
    Bootstrap {
        #[arg(long, env = "RAG_CORE_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Print {"organization_id", "workspace_id", "api_key"} as JSON.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "default")]
        org_name: String,
        #[arg(long, default_value = "admin@localhost")]
        email: String,
    },
}

fn load(config: Option<PathBuf>, data_dir: Option<PathBuf>) -> anyhow::Result<Config> {
    let mut cfg = Config::load(config.as_deref())?;
    if let Some(d) = data_dir {
        cfg.data_dir = d;
    }
    Ok(cfg)
}

fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve {
            config,
            listen,
            data_dir,
        } => {
            let mut cfg = load(config, data_dir)?;
            if let Some(l) = listen {
                cfg.listen = l;
            }
            rag_core::server::init_logging(&cfg)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(rag_core::server::serve(cfg))?;
        }
        Command::Admin {
            command:
                AdminCommand::Bootstrap {
                    config,
                    data_dir,
                    json,
                    org_name,
                    email,
                },
        } => {
            let cfg = load(config, data_dir)?;
            let store = Store::open(&cfg.data_dir, &cfg.store)?;
            if !store.write_blocking(|c| tenancy::is_empty(c))? {
                anyhow::bail!(
                    "the store in {} already has organizations; bootstrap only runs on an empty store",
                    cfg.data_dir.display()
                );
            }
            let t = &cfg.tenancy;
            let b = store.write_blocking(|c| {
                tenancy::bootstrap_org(
                    c,
                    &org_name,
                    &email,
                    "free",
                    t.chunk_limit_free,
                    t.trial_days,
                )
            })?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"organization_id": b.organization_id, "workspace_id": b.workspace_id, "user_id": b.user_id, "api_key": b.api_key})
                );
            } else {
                println!(
                    "organization_id: {}\nworkspace_id:    {}\nuser_id:         {}\napi_key:         {}",
                    b.organization_id, b.workspace_id, b.user_id, b.api_key
                );
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rag-core: {e:#}");
            ExitCode::FAILURE
        }
    }
}
