//! An optional disk buffer in front of a sink, for outages longer than the log files
//! last (rotation deletes `*.5` whether or not it was shipped).
//!
//! Chunks from the reader are appended to segment files and fsynced; only then are they
//! acknowledged, so checkpoints advance and rotated files may go. A delivery task reads
//! the segments in order, delivers batches with the usual retries, and records how far
//! it got in `position.json` (written atomically) before deleting finished segments.
//! A crash re-delivers at most the batch in flight; a frame torn by a crash at the end
//! of the last segment is cut off on the next start.
//!
//! Frame: `u32 header length (LE)`, header JSON `{path, fp, offsets}`, `u32 data
//! length`, data (the chunk's NDJSON records).

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};

use crate::logship::checkpoint::Tracker;
use crate::logship::chunk::{Chunk, RecordMeta};
use crate::logship::config::{BatchConfig, DiskBufferConfig, RetryConfig, WhenFull};
use crate::logship::sinks::{Sink, deliver};
use crate::logship::stats::SinkStats;

const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Serialize, Deserialize)]
struct Header {
    path: String,
    fp: u64,
    offsets: Vec<u64>,
}

#[derive(Serialize, Deserialize, Default, Clone, Copy, PartialEq, Eq, Debug)]
struct Position {
    segment: u64,
    offset: u64,
}

struct Dir {
    dir: PathBuf,
}

impl Dir {
    fn segment(&self, n: u64) -> PathBuf {
        self.dir.join(format!("{n:020}.seg"))
    }

    fn segments(&self) -> io::Result<Vec<u64>> {
        let mut v: Vec<u64> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    fn load_position(&self) -> Position {
        std::fs::read(self.dir.join("position.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save_position(&self, p: Position) -> io::Result<()> {
        let tmp = self.dir.join("position.json.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(&p).map_err(io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join("position.json"))?;
        File::open(&self.dir)?.sync_all()
    }

    /// Bytes not yet delivered.
    fn pending_bytes(&self, pos: Position) -> u64 {
        self.segments()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| *n >= pos.segment)
            .map(|n| {
                let len = std::fs::metadata(self.segment(n)).map_or(0, |m| m.len());
                if n == pos.segment {
                    len.saturating_sub(pos.offset)
                } else {
                    len
                }
            })
            .sum()
    }
}

/// Reads one frame at the reader's position; `Ok(None)` at the end of what is complete.
fn read_frame(r: &mut impl Read) -> io::Result<Option<(Header, Vec<u8>, u64)>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let hlen = u32::from_le_bytes(len) as usize;
    if hlen > 64 * 1024 * 1024 {
        return Ok(None);
    }
    let mut h = vec![0u8; hlen];
    if r.read_exact(&mut h).is_err() {
        return Ok(None);
    }
    let Ok(header) = serde_json::from_slice::<Header>(&h) else {
        return Ok(None);
    };
    if r.read_exact(&mut len).is_err() {
        return Ok(None);
    }
    let dlen = u32::from_le_bytes(len) as usize;
    if dlen > 256 * 1024 * 1024 {
        return Ok(None);
    }
    let mut data = vec![0u8; dlen];
    if r.read_exact(&mut data).is_err() {
        return Ok(None);
    }
    Ok(Some((header, data, (8 + hlen + dlen) as u64)))
}

/// Length of the complete frames at the start of `path` (a crash may tear the last).
fn complete_len(path: &Path) -> io::Result<u64> {
    let mut r = BufReader::new(File::open(path)?);
    let mut total = 0;
    while let Some((_, _, n)) = read_frame(&mut r)? {
        total += n;
    }
    Ok(total)
}

pub struct DiskBuffered<S: Sink> {
    pub sink: S,
    pub cfg: DiskBufferConfig,
    pub dir: PathBuf,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
    pub stats: Arc<SinkStats>,
}

/// Opens (and repairs) a buffer directory; fails the start if it is unusable.
pub fn prepare(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let d = Dir {
        dir: dir.to_path_buf(),
    };
    if let Some(last) = d.segments()?.last() {
        let path = d.segment(*last);
        let good = complete_len(&path)?;
        let f = OpenOptions::new().write(true).open(&path)?;
        if f.metadata()?.len() > good {
            f.set_len(good)?;
            f.sync_all()?;
        }
    }
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"ok")?;
    std::fs::remove_file(&probe)
}

impl<S: Sink> DiskBuffered<S> {
    pub async fn run(self, rx: mpsc::Receiver<Arc<Chunk>>) {
        let dir = Arc::new(Dir {
            dir: self.dir.clone(),
        });
        let written = Arc::new(Notify::new());
        let writer = tokio::spawn(write_loop(
            Arc::clone(&dir),
            rx,
            self.cfg.clone(),
            Arc::clone(&self.stats),
            Arc::clone(&written),
        ));
        let mut writer = writer;
        let sink = self.sink;
        let tracker = Arc::new(Tracker::default());
        let mut pos = dir.load_position();
        loop {
            let d = Arc::clone(&dir);
            let batch = self.batch.clone();
            let tr = Arc::clone(&tracker);
            let read = tokio::task::spawn_blocking(move || read_batch(&d, pos, &batch, &tr)).await;
            let (chunks, next) = match read {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    crate::log::error(
                        "logship.disk_buffer_failed",
                        &format!("reading the disk buffer {}: {e}", dir.dir.display()),
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(_) => return,
            };
            if chunks.is_empty() {
                if writer.is_finished() {
                    let _ = (&mut writer).await;
                    // The queue closed and everything written was delivered.
                    if dir.pending_bytes(pos) == 0 {
                        return;
                    }
                }
                tokio::select! {
                    _ = written.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(self.batch.timeout_ms.max(10))) => {}
                }
                continue;
            }
            deliver(&sink, &chunks, &self.retry, &self.stats).await;
            pos = next;
            let d = Arc::clone(&dir);
            let saved = tokio::task::spawn_blocking(move || -> io::Result<()> {
                d.save_position(pos)?;
                for n in d.segments()? {
                    if n < pos.segment {
                        std::fs::remove_file(d.segment(n))?;
                    }
                }
                Ok(())
            })
            .await;
            if let Ok(Err(e)) = saved {
                crate::log::error(
                    "logship.disk_buffer_failed",
                    &format!("recording progress in {}: {e}", dir.dir.display()),
                );
            }
            let left = dir.pending_bytes(pos);
            self.stats.disk_bytes.store(left, Relaxed);
        }
    }
}

/// Up to one batch of frames from `pos`; returns them and the position after them.
fn read_batch(
    dir: &Dir,
    mut pos: Position,
    batch: &BatchConfig,
    tracker: &Arc<Tracker>,
) -> io::Result<(Vec<Arc<Chunk>>, Position)> {
    let mut out = Vec::new();
    let (mut events, mut bytes) = (0usize, 0usize);
    let segments = dir.segments()?;
    let from = pos.segment;
    for n in segments.into_iter().filter(|n| *n >= from) {
        if n > pos.segment {
            pos = Position {
                segment: n,
                offset: 0,
            };
        }
        let mut f = File::open(dir.segment(n))?;
        f.seek(SeekFrom::Start(pos.offset))?;
        let mut r = BufReader::new(f);
        while events < batch.max_events && bytes < batch.max_bytes {
            let Some((h, data, len)) = read_frame(&mut r)? else {
                break;
            };
            pos.offset += len;
            let mut records = Vec::with_capacity(h.offsets.len());
            let mut start = 0usize;
            for (i, nl) in memchr::memchr_iter(b'\n', &data).enumerate() {
                records.push(RecordMeta {
                    start: start as u32,
                    end: nl as u32,
                    offset: h.offsets.get(i).copied().unwrap_or(0),
                });
                start = nl + 1;
            }
            events += records.len();
            bytes += data.len();
            out.push(Arc::new(Chunk {
                file: 0,
                seq: 0,
                path: Arc::from(h.path),
                fingerprint: h.fp,
                data,
                records,
                tracker: Arc::clone(tracker),
            }));
        }
        if events >= batch.max_events || bytes >= batch.max_bytes {
            break;
        }
    }
    Ok((out, pos))
}

/// Appends chunks to the newest segment, fsyncs, then acknowledges them.
async fn write_loop(
    dir: Arc<Dir>,
    mut rx: mpsc::Receiver<Arc<Chunk>>,
    cfg: DiskBufferConfig,
    stats: Arc<SinkStats>,
    written: Arc<Notify>,
) {
    let mut full_logged = false;
    while let Some(first) = rx.recv().await {
        let mut chunks = vec![first];
        while chunks.len() < 64 {
            match rx.try_recv() {
                Ok(c) => chunks.push(c),
                Err(_) => break,
            }
        }
        loop {
            let pending = {
                let d = Arc::clone(&dir);
                let p = d.load_position();
                tokio::task::spawn_blocking(move || d.pending_bytes(p))
                    .await
                    .unwrap_or(0)
            };
            stats.disk_bytes.store(pending, Relaxed);
            if pending < cfg.max_bytes {
                break;
            }
            match cfg.when_full {
                WhenFull::Block => {
                    if !full_logged {
                        full_logged = true;
                        crate::log::warn(
                            "logship.disk_buffer_full",
                            &format!(
                                "sink {}: disk buffer at its max_bytes={}; reading waits until the sink drains it",
                                stats.name, cfg.max_bytes
                            ),
                        );
                    }
                    tokio::select! {
                        _ = written.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
                WhenFull::DropNewest => {
                    let n: u64 = chunks.iter().map(|c| c.len() as u64).sum();
                    stats.lines_dropped_full.fetch_add(n, Relaxed);
                    if !full_logged {
                        full_logged = true;
                        crate::log::error(
                            "logship.disk_buffer_full",
                            &format!(
                                "sink {}: disk buffer at its max_bytes={}; dropping new records (when_full: drop_newest), counted in minirag_agent_logship_dropped_lines_total{{reason=\"buffer_full\"}}",
                                stats.name, cfg.max_bytes
                            ),
                        );
                    }
                    for c in &chunks {
                        stats.buffer_bytes.fetch_sub(c.data.len() as u64, Relaxed);
                        c.ack();
                    }
                    chunks.clear();
                    break;
                }
            }
        }
        if chunks.is_empty() {
            continue;
        }
        full_logged = false;
        // Acknowledged only once on disk. A failing disk keeps the reader waiting
        // (backpressure) until a write succeeds; nothing is dropped.
        loop {
            let d = Arc::clone(&dir);
            let batch = chunks.clone();
            match tokio::task::spawn_blocking(move || append(&d, &batch)).await {
                Ok(Ok(())) => break,
                Ok(Err(e)) => {
                    crate::log::error(
                        "logship.disk_buffer_failed",
                        &format!(
                            "sink {}: writing the disk buffer {}: {e}; retrying",
                            stats.name,
                            dir.dir.display()
                        ),
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(_) => return,
            }
        }
        for c in &chunks {
            stats.buffer_bytes.fetch_sub(c.data.len() as u64, Relaxed);
            c.ack();
        }
        written.notify_one();
    }
}

fn append(dir: &Dir, chunks: &[Arc<Chunk>]) -> io::Result<()> {
    let segments = dir.segments()?;
    let mut n = segments.last().copied().unwrap_or(1);
    let path = dir.segment(n);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() >= SEGMENT_BYTES) {
        n += 1;
    }
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.segment(n))?;
    let mut buf = Vec::new();
    for c in chunks {
        let header = serde_json::to_vec(&Header {
            path: c.path.to_string(),
            fp: c.fingerprint,
            offsets: c.records.iter().map(|m| m.offset).collect(),
        })
        .map_err(io::Error::other)?;
        buf.extend_from_slice(&(header.len() as u32).to_le_bytes());
        buf.extend_from_slice(&header);
        buf.extend_from_slice(&(c.data.len() as u32).to_le_bytes());
        buf.extend_from_slice(&c.data);
    }
    f.write_all(&buf)?;
    f.sync_data()
}
