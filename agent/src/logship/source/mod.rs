//! The file source: finds files by glob (on an interval and on inotify events), follows
//! each by identity across renames, and feeds chunks of records to every sink's
//! bounded queue, waiting when one is full (backpressure: reading stops, nothing is
//! dropped). Runs on its own thread: file reads are blocking and cheap from page cache.

pub mod tail;

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::logship::checkpoint::{Entry, FileIdentity, Store, Tracker};
use crate::logship::chunk::Chunk;
use crate::logship::config::{LogshipConfig, ReadFrom};
use crate::logship::record::Enrichment;
use crate::logship::stats::{ReaderStats, SinkStats};
use tail::{Read, TailLimits, Tailer, head_matches, identify};

/// One sink's queue as the reader sees it.
pub struct Output {
    pub tx: tokio::sync::mpsc::Sender<Arc<Chunk>>,
    pub stats: Arc<SinkStats>,
}

pub struct Reader {
    patterns: Vec<String>,
    exclude: Vec<glob::Pattern>,
    cfg: Arc<LogshipConfig>,
    limits: TailLimits,
    static_fields: Vec<(String, String)>,
    tailers: Vec<Tailer>,
    tracker: Arc<Tracker>,
    store: Arc<Store>,
    stats: Arc<crate::logship::stats::Stats>,
    outputs: Vec<Output>,
    /// Checkpoint entries not matched to a file yet (only until the first discovery).
    resume: Vec<Entry>,
    first_start: bool,
    /// Files let go recently: a copy of one (copytruncate) continues where it stopped.
    recent: VecDeque<(FileIdentity, u64)>,
    stop: Arc<AtomicBool>,
    wake: Arc<Wake>,
    next_discover: Instant,
}

/// Wake-ups from inotify; `structure` asks for a discovery pass (created, renamed,
/// removed), anything else only for a read pass.
#[derive(Default)]
pub struct Wake {
    pub structure: AtomicBool,
    lock: std::sync::Mutex<bool>,
    cond: std::sync::Condvar,
}

impl Wake {
    pub fn notify(&self, structure: bool) {
        if structure {
            self.structure.store(true, Relaxed);
        }
        let mut g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        *g = true;
        self.cond.notify_one();
    }

    fn wait(&self, timeout: Duration) {
        let g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let (mut g, _) = self
            .cond
            .wait_timeout_while(g, timeout, |woken| !*woken)
            .unwrap_or_else(|p| p.into_inner());
        *g = false;
    }
}

pub struct ReaderParts {
    pub cfg: Arc<LogshipConfig>,
    pub patterns: Vec<String>,
    pub static_fields: Vec<(String, String)>,
    pub tracker: Arc<Tracker>,
    pub store: Arc<Store>,
    pub stats: Arc<crate::logship::stats::Stats>,
    pub outputs: Vec<Output>,
    pub resume: Option<Vec<Entry>>,
    pub stop: Arc<AtomicBool>,
    pub wake: Arc<Wake>,
}

const RECENT_FILES: usize = 64;

impl Reader {
    pub fn new(p: ReaderParts) -> Self {
        let limits = TailLimits {
            read_bytes: p.cfg.read_chunk_bytes,
            max_line_bytes: p.cfg.max_line_bytes,
            partial_timeout: Duration::from_millis(p.cfg.partial_line_timeout_ms),
        };
        let exclude = p
            .cfg
            .exclude
            .iter()
            .filter_map(|e| glob::Pattern::new(e).ok())
            .collect();
        Self {
            patterns: p.patterns,
            exclude,
            limits,
            static_fields: p.static_fields,
            tailers: Vec::new(),
            tracker: p.tracker,
            store: p.store,
            stats: p.stats,
            outputs: p.outputs,
            first_start: p.resume.is_none(),
            resume: p.resume.unwrap_or_default(),
            recent: VecDeque::new(),
            stop: p.stop,
            wake: p.wake,
            next_discover: Instant::now(),
            cfg: p.cfg,
        }
    }

    fn rs(&self) -> &ReaderStats {
        &self.stats.reader
    }

    fn enrichment(&self, path: &Path) -> Enrichment {
        Enrichment::new(
            &self.static_fields,
            &path.display().to_string(),
            &self.cfg.redact,
        )
    }

    /// Runs until `stop` is set or every sink queue is closed.
    pub fn run(mut self) {
        let poll = Duration::from_millis(self.cfg.poll_interval_ms.max(1));
        let mut first = true;
        while !self.stop.load(Relaxed) {
            if Instant::now() >= self.next_discover || self.wake.structure.swap(false, Relaxed) {
                self.discover();
                if first {
                    first = false;
                    // From now on files are known: persist that before reading, so a crash
                    // right now does not make the next start a "first start" again.
                    let (_, entries) = self.tracker.snapshot();
                    if let Err(e) = self.store.save(&entries) {
                        self.rs().checkpoint_errors.fetch_add(1, Relaxed);
                        crate::log::error("logship.checkpoint_failed", &e.to_string());
                    }
                    self.resume.clear();
                    self.first_start = false;
                }
            }
            let progressed = match self.read_pass() {
                Ok(p) => p,
                Err(Closed) => return,
            };
            self.release_pass();
            if !progressed {
                let until_discover = self.next_discover.saturating_duration_since(Instant::now());
                self.wake
                    .wait(poll.min(until_discover).max(Duration::from_millis(1)));
            }
        }
    }

    /// One chunk from every file with new data (round robin keeps big files from
    /// starving small ones).
    fn read_pass(&mut self) -> Result<bool, Closed> {
        let mut progressed = false;
        for i in 0..self.tailers.len() {
            let flush = self.tailers[i].gone_since.is_some();
            let read = self.tailers[i].read(&self.limits, &self.stats.reader, flush);
            match read {
                Ok(Read::Parts(parts)) => {
                    progressed = true;
                    self.emit(i, parts)?;
                }
                Ok(Read::Idle) => {}
                Ok(Read::Truncated { size }) => {
                    progressed = true;
                    self.truncated(i, size);
                }
                Err(e) => {
                    self.rs().read_errors.fetch_add(1, Relaxed);
                    crate::log::warn(
                        "logship.read_failed",
                        &format!("reading {}: {e}", self.tailers[i].path.display()),
                    );
                }
            }
        }
        Ok(progressed)
    }

    fn emit(&mut self, i: usize, parts: tail::Parts) -> Result<(), Closed> {
        if self.tailers[i].id_changed {
            let t = &mut self.tailers[i];
            t.id_changed = false;
            self.tracker.observe(t.key, None, t.id, t.position());
        }
        let t = &self.tailers[i];
        let sinks = if parts.records.is_empty() {
            0
        } else {
            self.outputs.len()
        };
        let seq = self.tracker.begin(t.key, parts.end_offset, sinks);
        if sinks == 0 {
            return Ok(());
        }
        let bytes = parts.data.len() as u64;
        let chunk = Arc::new(Chunk {
            file: t.key,
            seq,
            path: Arc::clone(&t.path_label),
            fingerprint: t.id.fp,
            data: parts.data,
            records: parts.records,
            tracker: Arc::clone(&self.tracker),
        });
        for k in 0..self.outputs.len() {
            self.outputs[k].stats.buffer_bytes.fetch_add(bytes, Relaxed);
            let mut pending = Arc::clone(&chunk);
            // Waits while the sink's queue is full: that is the backpressure. Meanwhile
            // discovery goes on, so files created during an outage are opened (and
            // their content kept by the open descriptor even if rotation deletes them).
            loop {
                match self.outputs[k].tx.try_send(pending) {
                    Ok(()) => break,
                    Err(tokio::sync::mpsc::error::TrySendError::Full(c)) => {
                        pending = c;
                        if self.stop.load(Relaxed) {
                            self.outputs[k].stats.buffer_bytes.fetch_sub(bytes, Relaxed);
                            return Err(Closed);
                        }
                        if Instant::now() >= self.next_discover {
                            self.discover();
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                        self.outputs[k].stats.buffer_bytes.fetch_sub(bytes, Relaxed);
                        return Err(Closed);
                    }
                }
            }
        }
        Ok(())
    }

    fn truncated(&mut self, i: usize, size: u64) {
        self.rs().files_truncated.fetch_add(1, Relaxed);
        let t = &self.tailers[i];
        crate::log::warn(
            "logship.file_truncated",
            &format!(
                "{} shrank to {size} bytes below the read offset {}; reading it again from the start",
                t.path.display(),
                t.position()
            ),
        );
        // A copy of the old content (copytruncate) must resume where every sink has
        // acknowledged, not where we read: chunks in flight may yet fail, and the
        // original is gone.
        let (old_id, old_key) = (t.id, t.key);
        let old_offset = self.tracker.committed(old_key).unwrap_or(0);
        self.remember(old_id, old_offset);
        self.tracker.release(old_key);
        let (id, size) = match identify(&self.tailers[i].file, false) {
            Ok(v) => v,
            Err(_) => (self.tailers[i].id, size),
        };
        let key = self
            .tracker
            .register(id, self.tailers[i].path.clone(), 0, size);
        self.tailers[i].restart(key, id);
    }

    fn remember(&mut self, id: FileIdentity, offset: u64) {
        if id.full() {
            if self.recent.len() >= RECENT_FILES {
                self.recent.pop_front();
            }
            self.recent.push_back((id, offset));
        }
    }

    /// Lets go of files that left the globs once read to their end, or after
    /// `rotate_wait_seconds` (counting what was never read).
    fn release_pass(&mut self) {
        let wait = Duration::from_secs(self.cfg.rotate_wait_seconds);
        let mut i = 0;
        while i < self.tailers.len() {
            let t = &self.tailers[i];
            let Some(since) = t.gone_since else {
                i += 1;
                continue;
            };
            let done = t.at_eof && t.resume_offset() == t.position();
            if !done && since.elapsed() < wait {
                i += 1;
                continue;
            }
            let t = self.tailers.swap_remove(i);
            if !done {
                let md = t.file.metadata().ok();
                let unread = md
                    .as_ref()
                    .map_or(0, |m| m.len().saturating_sub(t.position()));
                let deleted = md.is_some_and(|m| m.nlink() == 0);
                let counter = if deleted {
                    &self.stats.reader.bytes_dropped_deleted
                } else {
                    &self.stats.reader.bytes_dropped_rotated
                };
                counter.fetch_add(unread, Relaxed);
                crate::log::error(
                    "logship.file_dropped",
                    &format!(
                        "{} left the watched paths and could not be shipped within rotate_wait_seconds={}; {unread} unread bytes dropped",
                        t.path.display(),
                        self.cfg.rotate_wait_seconds
                    ),
                );
            }
            self.stats.reader.files_released.fetch_add(1, Relaxed);
            crate::log::info_with(
                "logship.file_released",
                &format!(
                    "stopped following {} at offset {}",
                    t.path.display(),
                    t.position()
                ),
                serde_json::json!({"path": t.path.display().to_string(), "offset": t.position(), "inode": t.id.ino}),
            );
            let committed = self.tracker.committed(t.key).unwrap_or(0);
            self.remember(t.id, committed);
            self.tracker.release(t.key);
        }
    }

    fn matched_paths(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for p in &self.patterns {
            let Ok(paths) = glob::glob(p) else { continue };
            for path in paths.flatten() {
                if self.exclude.iter().any(|e| e.matches_path(&path)) {
                    continue;
                }
                if !self.cfg.read_gzip && path.extension().is_some_and(|e| e == "gz") {
                    continue;
                }
                out.push(path);
            }
        }
        out
    }

    fn discover(&mut self) {
        self.next_discover =
            Instant::now() + Duration::from_millis(self.cfg.discover_interval_ms.max(10));
        for t in &mut self.tailers {
            t.seen = false;
        }
        let mut candidates: Vec<(PathBuf, std::fs::Metadata)> = self
            .matched_paths()
            .into_iter()
            .filter_map(|p| {
                std::fs::metadata(&p)
                    .ok()
                    .filter(|m| m.is_file())
                    .map(|m| (p, m))
            })
            .collect();
        // Oldest first: after a restart rotated files are shipped before the live one.
        candidates.sort_by_key(|(_, m)| m.mtime());
        for (path, md) in candidates {
            if let Some(t) = self
                .tailers
                .iter_mut()
                .find(|t| t.id.dev == md.dev() && t.id.ino == md.ino())
            {
                if t.seen {
                    continue; // a second name for the same file (hard link, two globs)
                }
                t.seen = true;
                if t.path != path {
                    let e = Enrichment::new(
                        &self.static_fields,
                        &path.display().to_string(),
                        &self.cfg.redact,
                    );
                    t.set_path(path.clone(), e);
                }
                let size = md.len();
                if !t.id.full()
                    && !t.is_gzip()
                    && size > u64::from(t.id.fp_len)
                    && let Ok((id, _)) = identify(&t.file, false)
                    && id.dev == t.id.dev
                    && id.ino == t.id.ino
                {
                    t.id = id;
                }
                self.tracker.observe(t.key, Some(&path), t.id, size);
                continue;
            }
            if self.tailers.len() >= self.cfg.max_open_files {
                continue; // picked up when a slot frees
            }
            self.open(path);
        }
        let now = Instant::now();
        for t in &mut self.tailers {
            if t.seen {
                t.gone_since = None;
            } else if t.gone_since.is_none() {
                t.gone_since = Some(now);
            }
        }
    }

    fn open(&mut self, path: PathBuf) {
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                self.rs().read_errors.fetch_add(1, Relaxed);
                crate::log::warn(
                    "logship.open_failed",
                    &format!("cannot open {}: {e}", path.display()),
                );
                return;
            }
        };
        let gzip = tail::is_gzip(&path);
        let Ok((id, size)) = identify(&file, gzip) else {
            return;
        };
        // The path may have been rotated between the stat and the open.
        if self
            .tailers
            .iter()
            .any(|t| t.id.dev == id.dev && t.id.ino == id.ino)
        {
            return;
        }
        let (offset, why) = self.start_offset(&file, &id, size, &path, gzip);
        crate::log::info_with(
            "logship.file_opened",
            &format!("following {} from offset {offset} ({why})", path.display()),
            serde_json::json!({"path": path.display().to_string(), "offset": offset, "reason": why, "inode": id.ino, "size": size}),
        );
        let key = self.tracker.register(id, path.clone(), offset, size);
        let enrich = self.enrichment(&path);
        match Tailer::new(key, file, path.clone(), id, enrich, offset) {
            Ok(t) => {
                self.stats.reader.files_opened.fetch_add(1, Relaxed);
                self.tailers.push(t);
            }
            Err(e) => {
                self.tracker.release(key);
                self.rs().read_errors.fetch_add(1, Relaxed);
                crate::log::warn(
                    "logship.open_failed",
                    &format!("cannot read {}: {e}", path.display()),
                );
            }
        }
    }

    /// Where to start reading a file seen for the first time in this process.
    fn start_offset(
        &mut self,
        file: &File,
        id: &FileIdentity,
        size: u64,
        path: &Path,
        gzip: bool,
    ) -> (u64, &'static str) {
        // A gzip file's offsets count decompressed bytes: no bound from its size.
        let size = if gzip { u64::MAX } else { size };
        // 1. The same inode with the same head: resume where the checkpoint says.
        if let Some(i) = self.resume.iter().position(|e| {
            e.id.dev == id.dev && e.id.ino == id.ino && head_matches(file, &e.id, gzip)
        }) {
            let e = self.resume.swap_remove(i);
            if e.offset > size {
                self.rs().files_truncated.fetch_add(1, Relaxed);
                crate::log::warn(
                    "logship.file_truncated",
                    &format!(
                        "{} is shorter ({size}) than its checkpoint ({}); reading it from the start",
                        path.display(),
                        e.offset
                    ),
                );
                return (0, "checkpoint past the end: truncated");
            }
            return (e.offset, "checkpoint");
        }
        // 2. The same content under another inode: a copy (copytruncate) of a file we
        //    were reading continues where that file stopped.
        if id.full() {
            if let Some(i) = self
                .resume
                .iter()
                .position(|e| e.id.full() && e.id.fp == id.fp)
            {
                let e = self.resume.swap_remove(i);
                return (e.offset.min(size), "copy of a checkpointed file");
            }
            if let Some(t) = self
                .tailers
                .iter()
                .find(|t| t.id.full() && t.id.fp == id.fp)
            {
                // The acknowledged offset, not the read one: what is in flight for the
                // original may fail after the original was truncated.
                let committed = self.tracker.committed(t.key).unwrap_or(0);
                return (committed.min(size), "copy of a followed file");
            }
            if let Some((_, off)) = self.recent.iter().rev().find(|(r, _)| r.fp == id.fp) {
                return ((*off).min(size), "copy of a file let go");
            }
        }
        if self.first_start && self.cfg.read_from == ReadFrom::End {
            if gzip {
                // The decompressed length, once: only at the very first start.
                let mut dec = match tail::from_start(file) {
                    Ok(f) => flate2::read::MultiGzDecoder::new(f),
                    Err(_) => return (0, "new file"),
                };
                let len = std::io::copy(&mut dec, &mut std::io::sink()).unwrap_or(0);
                return (len, "first start, read_from: end");
            }
            return (size, "first start, read_from: end");
        }
        (0, "new file")
    }
}

/// Every sink queue is closed: the shipper is shutting down.
#[derive(Debug)]
pub struct Closed;
