//! Log tailing and shipping with no loss.
//!
//! ```text
//! files ──► source (reader thread: discover, tail, parse, enrich)
//!              │ Arc<Chunk> into every sink's bounded queue (full ⇒ reading waits)
//!              ▼
//!           sinks (batch, deliver, retry) ──ack──► checkpoint tracker ──► checkpoints.json
//! ```
//! A file's checkpoint advances only over chunks every sink acknowledged, and is
//! written atomically; after a crash the shipper re-reads from there, so nothing is
//! lost and duplicates are bounded by what was in flight.

pub mod checkpoint;
pub mod chunk;
pub mod config;
pub mod record;
pub mod retention;
pub mod sample;
pub mod sinks;
pub mod source;
pub mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

pub use config::LogshipConfig;

use checkpoint::{Loaded, Store, Tracker};
use source::{Output, Reader, ReaderParts, Wake};
use stats::Stats;

#[derive(Debug, thiserror::Error)]
pub enum LogshipError {
    #[error("log shipping: {0}")]
    Config(String),
    // Wrapped without `#[from]`/source so the message is printed once.
    #[error("log shipping: {0}")]
    Checkpoint(checkpoint::CheckpointError),
    #[error("log shipping: {0}")]
    Sink(sinks::BuildError),
}

impl From<checkpoint::CheckpointError> for LogshipError {
    fn from(e: checkpoint::CheckpointError) -> Self {
        Self::Checkpoint(e)
    }
}

impl From<sinks::BuildError> for LogshipError {
    fn from(e: sinks::BuildError) -> Self {
        Self::Sink(e)
    }
}

/// A running shipper. Dropping it does not stop it; call [`Logship::shutdown`].
pub struct Logship {
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    wake: Arc<Wake>,
    reader: Option<std::thread::JoinHandle<()>>,
    sinks: Vec<sinks::SinkHandle>,
    writer: tokio::task::JoinHandle<()>,
    writer_stop: Arc<tokio::sync::Notify>,
    retention: Option<tokio::task::JoinHandle<()>>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Logship {
    /// Starts reading `cfg.paths` plus `extra_paths` (e.g. the agent's own access log).
    /// Must run inside a tokio runtime.
    pub fn start(cfg: &LogshipConfig, extra_paths: &[String]) -> Result<Self, LogshipError> {
        cfg.validate().map_err(LogshipError::Config)?;
        let cfg = Arc::new(cfg.clone());
        let (store, loaded) = Store::open(&cfg.data_dir)?;
        let store = Arc::new(store);
        let tracker = Arc::new(Tracker::default());
        let mut handles = Vec::new();
        for s in &cfg.sinks {
            handles.push(sinks::spawn(s, cfg.read_chunk_bytes, &cfg.data_dir)?);
        }
        let stats = Arc::new(Stats {
            reader: stats::ReaderStats::default(),
            sinks: handles.iter().map(|h| Arc::clone(&h.stats)).collect(),
            tracker: Arc::clone(&tracker),
        });
        let outputs = handles
            .iter()
            .map(|h| Output {
                tx: h.tx.clone(),
                stats: Arc::clone(&h.stats),
            })
            .collect();
        let mut patterns = cfg.paths.clone();
        patterns.extend(extra_paths.iter().cloned());
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(Wake::default());
        let watcher = watch_dirs(&patterns, Arc::clone(&wake));
        let reader = Reader::new(ReaderParts {
            cfg: Arc::clone(&cfg),
            patterns: patterns.clone(),
            static_fields: record::static_fields(&cfg.fields, |k| std::env::var(k).ok()),
            tracker: Arc::clone(&tracker),
            store: Arc::clone(&store),
            stats: Arc::clone(&stats),
            outputs,
            resume: match loaded {
                Loaded::FirstStart => None,
                Loaded::Entries(e) => Some(e),
            },
            stop: Arc::clone(&stop),
            wake: Arc::clone(&wake),
        });
        let reader = std::thread::Builder::new()
            .name("logship-reader".into())
            .spawn(move || reader.run())
            .map_err(|e| LogshipError::Config(format!("cannot start the reader thread: {e}")))?;
        let writer_stop = Arc::new(tokio::sync::Notify::new());
        let writer = tokio::spawn(write_checkpoints(
            Arc::clone(&store),
            Arc::clone(&tracker),
            Arc::clone(&stats),
            Duration::from_millis(cfg.checkpoint_interval_ms.max(1)),
            Arc::clone(&writer_stop),
        ));
        let retention = (cfg.retention.days > 0).then(|| {
            tokio::spawn(retention::run(
                cfg.retention.clone(),
                retention::Scope {
                    patterns,
                    exclude: cfg
                        .exclude
                        .iter()
                        .filter_map(|e| glob::Pattern::new(e).ok())
                        .collect(),
                    read_gzip: cfg.read_gzip,
                },
                Arc::clone(&tracker),
            ))
        });
        crate::log::info_with(
            "logship.started",
            &format!(
                "shipping {} to {}",
                cfg.paths.join(", "),
                cfg.sinks
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            serde_json::json!({"checkpoints": store.path().display().to_string(), "sinks": cfg.sinks.len()}),
        );
        Ok(Self {
            stats,
            stop,
            wake,
            reader: Some(reader),
            sinks: handles,
            writer,
            writer_stop,
            retention,
            _watcher: watcher,
        })
    }

    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// Stops reading, gives the sinks up to `grace` to deliver what they hold, then
    /// writes the final checkpoint. Undelivered records stay unacknowledged and are
    /// read again on the next start.
    pub async fn shutdown(mut self, grace: Duration) {
        self.stop.store(true, Relaxed);
        self.wake.notify(false);
        if let Some(r) = &self.retention {
            r.abort();
        }
        let deadline = tokio::time::Instant::now() + grace;
        // The reader may be blocked on a full queue; closing the queues (dropping the
        // last senders once it exits, or aborting the sinks) releases it.
        let reader = self.reader.take();
        let reader_done = tokio::task::spawn_blocking(move || {
            if let Some(r) = reader {
                let _ = r.join();
            }
        });
        let mut reader_done = Box::pin(reader_done);
        if tokio::time::timeout_at(deadline, &mut reader_done)
            .await
            .is_err()
        {
            for s in &self.sinks {
                s.task.abort();
            }
            let _ = reader_done.await;
        }
        for s in self.sinks.drain(..) {
            let sinks::SinkHandle {
                name, tx, mut task, ..
            } = s;
            drop(tx);
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                let name = &name;
                crate::log::warn(
                    "logship.shutdown_undelivered",
                    &format!(
                        "sink {name}: records still undelivered at shutdown; they will be read again on the next start"
                    ),
                );
            }
        }
        self.writer_stop.notify_one();
        let _ = (&mut self.writer).await;
    }
}

/// Writes the checkpoint after acknowledgements, at most every `interval`.
async fn write_checkpoints(
    store: Arc<Store>,
    tracker: Arc<Tracker>,
    stats: Arc<Stats>,
    interval: Duration,
    stop: Arc<tokio::sync::Notify>,
) {
    let mut written = 0u64;
    let mut failing = false;
    loop {
        let stopping = tokio::select! {
            _ = tracker.changed.notified() => false,
            _ = stop.notified() => true,
        };
        if !stopping {
            tokio::time::sleep(interval).await;
        }
        let (version, entries) = tracker.snapshot();
        if version != written || failing {
            let s = Arc::clone(&store);
            let saved = tokio::task::spawn_blocking(move || s.save(&entries)).await;
            match saved {
                Ok(Ok(())) => {
                    written = version;
                    stats.reader.checkpoint_writes.fetch_add(1, Relaxed);
                    if failing {
                        failing = false;
                        crate::log::info(
                            "logship.checkpoint_recovered",
                            "checkpoints are written again",
                        );
                    }
                }
                Ok(Err(e)) => {
                    stats.reader.checkpoint_errors.fetch_add(1, Relaxed);
                    if !failing {
                        failing = true;
                        crate::log::error(
                            "logship.checkpoint_failed",
                            &format!(
                                "{e}; shipping goes on, a restart now would re-send what was shipped since the last good write"
                            ),
                        );
                    }
                    tracker.changed.notify_one();
                }
                Err(_) => {}
            }
        }
        if stopping {
            return;
        }
    }
}

/// The glob that matches a log file and its rotated siblings (`access.log`, `.1`, …).
pub fn access_log_glob(file: &std::path::Path) -> String {
    format!("{}*", glob::Pattern::escape(&file.display().to_string()))
}

/// Watches the fixed directory part of each glob (inotify) to wake the reader early.
fn watch_dirs(patterns: &[String], wake: Arc<Wake>) -> Option<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            use notify::EventKind;
            let structure = matches!(ev.kind, EventKind::Create(_) | EventKind::Remove(_))
                || matches!(
                    ev.kind,
                    EventKind::Modify(notify::event::ModifyKind::Name(_))
                );
            wake.notify(structure);
        }
    })
    .ok()?;
    for p in patterns {
        let dir = fixed_dir(p);
        if dir.is_dir() {
            let _ = watcher.watch(&dir, RecursiveMode::NonRecursive);
        }
    }
    Some(watcher)
}

/// The leading path components of a glob that contain no wildcard.
fn fixed_dir(pattern: &str) -> std::path::PathBuf {
    let mut dir = std::path::PathBuf::new();
    let parts: Vec<&str> = pattern.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() || part.contains(['*', '?', '[']) {
            break;
        }
        if part.is_empty() && i == 0 {
            dir.push("/");
        } else {
            dir.push(part);
        }
    }
    if dir.as_os_str().is_empty() {
        dir.push(".");
    }
    dir
}

#[cfg(test)]
mod tests {
    #[test]
    fn fixed_dir_of_globs() {
        assert_eq!(
            super::fixed_dir("/var/log/rag.log*"),
            std::path::PathBuf::from("/var/log")
        );
        assert_eq!(
            super::fixed_dir("data/logs/*/x.log"),
            std::path::PathBuf::from("data/logs")
        );
        assert_eq!(super::fixed_dir("rag.log"), std::path::PathBuf::from("."));
    }
}
