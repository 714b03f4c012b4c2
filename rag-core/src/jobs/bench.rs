//! `rag-core bench-jobs`: throughput of trivial jobs through the real queue and worker
//! pool, then one large ingest job reporting progress while it runs. Uses a private
//! temporary data directory, removed at the end.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{JobKind, Jobs, Origin};
use crate::config::Config;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Queue(#[from] super::QueueError),
    #[error(transparent)]
    Serve(#[from] crate::server::ServeError),
    #[error("{0}")]
    Other(String),
}

pub struct BenchOptions {
    pub jobs: usize,
    pub concurrency: usize,
    pub documents: usize,
}

async fn wait_all(
    jobs: &Arc<Jobs>,
    name: &'static str,
    expect: i64,
    limit: Duration,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + limit;
    loop {
        let counts = jobs.call(|q| q.counts()).await?;
        let finished: i64 = counts
            .iter()
            .filter(|(n, s, _)| n == name && (s == "succeeded" || s == "dead_lettered"))
            .map(|(_, _, c)| c)
            .sum();
        if finished >= expect {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Other(format!(
                "{finished} of {expect} {name} jobs finished before the time limit"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(opts: BenchOptions, out: &mut dyn Write) -> Result<(), BenchError> {
    let dir = std::env::temp_dir().join(format!("rag-core-bench-jobs-{}", std::process::id()));
    let result = run_in(&dir, opts, out).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(
    dir: &std::path::Path,
    opts: BenchOptions,
    out: &mut dyn Write,
) -> Result<(), BenchError> {
    let mut cfg = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    cfg.jobs.enabled = true;
    cfg.jobs.concurrency = opts.concurrency.max(1);
    cfg.jobs.poll_interval_ms = 10;
    cfg.jobs.testing.enabled = true;
    cfg.jobs.max_pending = (opts.jobs as u64).max(1) + 10;
    // Only the measured jobs: no built-in retention schedule in the queue.
    cfg.lifecycle.schedule_every = None;
    cfg.tenancy.chunk_limit_free = i64::MAX / 4;
    let cfg = Arc::new(cfg);
    let store = Store::open(&cfg.data_dir, &cfg.store)?;
    let b = store.write_blocking(|c| {
        crate::tenancy::bootstrap_org(
            c,
            "bench",
            "bench@localhost",
            "free",
            i64::MAX / 4,
            30,
            &crate::audit::Origin::new(crate::audit::Actor::cli("bench-jobs"), None),
        )
    })?;
    let ws_id = b.workspace_id.clone();
    let ws_seq: i64 = store.write_blocking(move |c| {
        Ok(
            c.query_row("SELECT seq FROM workspaces WHERE id = ?1", [&ws_id], |r| {
                r.get(0)
            })?,
        )
    })?;
    let state = crate::server::build_state(Arc::clone(&cfg), store).await?;
    let jobs = Arc::clone(&state.jobs);
    let origin = Origin {
        organization_id: b.organization_id.clone(),
        workspace_id: b.workspace_id.clone(),
        ws_seq,
        ..Origin::default()
    };
    let w = |out: &mut dyn Write, s: String| {
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    };

    // 1. Trivial jobs: submit all (batched), then drain with the worker pool.
    let t = Instant::now();
    for chunk in (0..opts.jobs).collect::<Vec<_>>().chunks(1000) {
        let payloads = chunk.iter().map(|_| json!({})).collect();
        jobs.submit_many(JobKind::Test, origin.clone(), payloads)
            .await?;
    }
    let submit = t.elapsed();
    w(
        out,
        format!(
            "submitted {} trivial jobs in {:.3}s: {:.0} jobs/s",
            opts.jobs,
            submit.as_secs_f64(),
            opts.jobs as f64 / submit.as_secs_f64()
        ),
    );
    let t = Instant::now();
    Jobs::start(state.clone());
    wait_all(&jobs, "test", opts.jobs as i64, Duration::from_secs(600)).await?;
    let drain = t.elapsed();
    w(
        out,
        format!(
            "ran {} trivial jobs with concurrency {} in {:.3}s: {:.0} jobs/s (claim, run, record outcome)",
            opts.jobs,
            opts.concurrency,
            drain.as_secs_f64(),
            opts.jobs as f64 / drain.as_secs_f64()
        ),
    );

    // 2. One ingest job of many small documents; progress is read back from the queue.
    if opts.documents > 0 {
        let docs: Vec<_> = (0..opts.documents)
            .map(|i| json!({"title": format!("Bench document {i}"), "text": format!("Benchmark document {i}. It mentions token{i} and the shared words queue, progress and ingest.")}))
            .collect();
        let t = Instant::now();
        let (job, _) = jobs
            .submit(
                JobKind::IngestText,
                origin.clone(),
                json!({"documents": docs}),
            )
            .await?;
        let id = job.id.clone();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let i = id.clone();
            let Some((_, j)) = jobs.call(move |q| q.get(&i)).await? else {
                return Err(BenchError::Other("the ingest job disappeared".into()));
            };
            w(
                out,
                format!(
                    "  t={:>6.1}s ingest job {}: {} progress {}/{}",
                    t.elapsed().as_secs_f64(),
                    j.id,
                    j.status,
                    j.progress_done,
                    j.progress_total
                ),
            );
            if j.is_finished() {
                let el = t.elapsed().as_secs_f64();
                w(
                    out,
                    format!(
                        "ingest job {}: {} documents in {el:.1}s ({:.0} documents/s); result {}",
                        j.status,
                        opts.documents,
                        opts.documents as f64 / el,
                        j.result.unwrap_or_default()
                    ),
                );
                break;
            }
        }
    }
    Ok(())
}
