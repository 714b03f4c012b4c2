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
    /// Bulk-ingest files and folders (incremental: unchanged files are skipped).
    Ingest {
        #[arg(long, env = "RAG_CORE_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Workspace id; may be omitted when the store has exactly one workspace.
        #[arg(long)]
        workspace: Option<String>,
        /// Files per batch (one transaction, or one job when jobs are enabled).
        #[arg(long, default_value_t = 50)]
        batch: usize,
        /// Files or folders (walked recursively; hidden entries are skipped).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Benchmark the job queue on a temporary store: trivial jobs/s, then one large
    /// ingest job reporting progress.
    BenchJobs {
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Documents in the ingest job (0 skips it).
        #[arg(long, default_value_t = 10_000)]
        documents: usize,
    },
    /// The hash-chained audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Encrypted backups of the store: create, verify, restore (docs/backups.md).
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Administrative commands that work on the store directly.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

/// Keys are 64 hex characters or base64 of 32 bytes (`backup keygen` makes one).
#[derive(Subcommand)]
enum BackupCommand {
    /// Snapshot the store (safe while the server runs) into an encrypted file.
    Create {
        #[arg(long, env = "RAG_CORE_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Write exactly this file.
        #[arg(long, conflicts_with = "dir")]
        out: Option<PathBuf>,
        /// Write rag-<UTC time>.mrbak into this directory [default: backup.dir, <data_dir>/backups].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// File holding the backup key [else env RAG_CORE_BACKUP_KEY, RAG_CORE_BACKUP_KEY_FILE, backup.key_file].
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Decrypt into a temporary file, run the integrity check, print record counts.
    Verify {
        /// The backup (.mrbak).
        file: PathBuf,
        #[arg(long, env = "RAG_CORE_CONFIG")]
        config: Option<PathBuf>,
        /// File holding the backup key [else env RAG_CORE_BACKUP_KEY, RAG_CORE_BACKUP_KEY_FILE, backup.key_file].
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Restore a backup as <DIR>/rag.db (stop the server on DIR first).
    Restore {
        /// The backup (.mrbak).
        file: PathBuf,
        /// Data directory to restore into.
        #[arg(long)]
        data_dir: PathBuf,
        /// Replace an existing store (it is kept beside as rag.db.before-restore-<time>).
        #[arg(long)]
        force: bool,
        #[arg(long, env = "RAG_CORE_CONFIG")]
        config: Option<PathBuf>,
        /// File holding the backup key [else env RAG_CORE_BACKUP_KEY, RAG_CORE_BACKUP_KEY_FILE, backup.key_file].
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Print a new random key (hex), or write it to a new owner-only file.
    Keygen {
        /// Write the key to this new file (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check every record's hash and link; exit 1 naming the first broken records.
    Verify {
        #[arg(long, env = "RAG_CORE_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// A head seen earlier (the `audit_seq:audit_hash` of a shipped `audit.*` log
        /// line) that must still be present: catches records cut off the end.
        #[arg(long, value_name = "SEQ:HASH")]
        expect_head: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
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
        Command::Ingest {
            config,
            data_dir,
            workspace,
            batch,
            paths,
        } => {
            let cfg = std::sync::Arc::new(load(config, data_dir)?);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let summary = rt.block_on(async {
                let store = Store::open(&cfg.data_dir, &cfg.store)?;
                let state =
                    rag_core::server::build_state(std::sync::Arc::clone(&cfg), store).await?;
                let opts = rag_core::jobs::bulk::BulkOptions {
                    workspace,
                    paths,
                    batch_files: batch,
                };
                anyhow::Ok(rag_core::jobs::bulk::run(&state, opts).await?)
            })?;
            println!(
                "files: {}  ingested: {}  skipped (unchanged): {}  skipped (duplicate content): {}  failed: {}  chunks: {}  bytes read: {}",
                summary.files,
                summary.ingested,
                summary.unchanged,
                summary.duplicate,
                summary.failed.len(),
                summary.chunks,
                summary.bytes
            );
            for (path, why) in &summary.failed {
                println!("failed: {path}: {why}");
            }
            if !summary.jobs.is_empty() {
                println!("jobs: {}", summary.jobs.join(" "));
            }
            if !summary.failed.is_empty() {
                anyhow::bail!("{} file(s) failed", summary.failed.len());
            }
        }
        Command::BenchJobs {
            jobs,
            concurrency,
            documents,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(rag_core::jobs::bench::run(
                rag_core::jobs::bench::BenchOptions {
                    jobs,
                    concurrency,
                    documents,
                },
                &mut std::io::stdout(),
            ))?;
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    config,
                    data_dir,
                    expect_head,
                    json,
                },
        } => {
            let expect = expect_head
                .as_deref()
                .map(|h| {
                    let (seq, hash) = h
                        .split_once(':')
                        .context("--expect-head takes SEQ:HASH, e.g. 42:9f86d0…")?;
                    let seq: i64 = seq
                        .trim()
                        .parse()
                        .context("--expect-head: SEQ must be a record number")?;
                    anyhow::Ok((seq, hash.trim().to_string()))
                })
                .transpose()?;
            let cfg = load(config, data_dir)?;
            let store = Store::open(&cfg.data_dir, &cfg.store)?;
            let report = store.write_blocking(|c| {
                rag_core::audit::verify(c, expect.as_ref().map(|(s, h)| (*s, h.as_str())))
            })?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "audit log: {} records, head {}:{}",
                    report.records, report.head_seq, report.head_hash
                );
                for p in &report.problems {
                    println!("BROKEN at record {}: {} ({})", p.seq, p.kind, p.detail);
                }
            }
            if !report.ok() {
                anyhow::bail!(
                    "the audit log fails verification: {} problem(s), first at record {}",
                    report.problems.len(),
                    report.problems[0].seq
                );
            }
            if !json {
                println!("ok: the chain is intact");
            }
        }
        Command::Backup { command } => {
            use rag_core::backup::cli;
            let stdout = &mut std::io::stdout();
            match command {
                BackupCommand::Create {
                    config,
                    data_dir,
                    out,
                    dir,
                    key_file,
                } => {
                    let cfg = load(config, data_dir)?;
                    cli::create(&cfg, out, dir, key_file.as_deref(), stdout)?;
                }
                BackupCommand::Verify {
                    file,
                    config,
                    key_file,
                } => {
                    let cfg = load(config, None)?;
                    cli::verify(&cfg, &file, key_file.as_deref(), stdout)?;
                }
                BackupCommand::Restore {
                    file,
                    data_dir,
                    force,
                    config,
                    key_file,
                } => {
                    let cfg = load(config, None)?;
                    cli::restore(&cfg, &file, &data_dir, force, key_file.as_deref(), stdout)?;
                }
                BackupCommand::Keygen { out } => cli::keygen(out.as_deref(), stdout)?,
            }
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
                    &rag_core::audit::Origin::new(
                        rag_core::audit::Actor::cli("admin bootstrap"),
                        None,
                    ),
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
