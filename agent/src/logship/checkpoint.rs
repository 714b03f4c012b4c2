//! Where each file has been shipped to, and the file that remembers it.
//!
//! The reader hands out chunks in file order; each sink acknowledges a chunk once the
//! peer accepted it. A file's committed offset advances only over a contiguous run of
//! chunks every sink acknowledged, so a restart resumes at a line no sink is missing.
//! The checkpoint file is written atomically (temp file, fsync, rename, fsync of the
//! directory): a `kill -9` leaves the previous or the next version, never a torn one.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub type FileKey = u64;

/// Bytes of a file's head hashed into its fingerprint.
pub const FINGERPRINT_BYTES: u32 = 256;

/// Who a file is: its inode, and a hash of its first bytes so a reused inode (or a
/// copy of a file, as copytruncate makes) is told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    /// How many head bytes `fp` covers (fewer than FINGERPRINT_BYTES while the file is
    /// that small).
    pub fp_len: u32,
    #[serde(with = "hex_u64")]
    pub fp: u64,
}

impl FileIdentity {
    /// A full fingerprint is trusted to recognise the same content under another inode.
    pub fn full(&self) -> bool {
        self.fp_len >= FINGERPRINT_BYTES
    }
}

pub fn fingerprint(head: &[u8]) -> u64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(head);
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:016x}"))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        u64::from_str_radix(&s, 16).map_err(serde::de::Error::custom)
    }
}

/// One line of the checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(flatten)]
    pub id: FileIdentity,
    pub path: PathBuf,
    /// Every byte before this was acknowledged by every sink.
    pub offset: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    files: Vec<Entry>,
}

struct Pending {
    seq: u64,
    end: u64,
    remaining: usize,
    created: Instant,
}

struct Tracked {
    id: FileIdentity,
    path: PathBuf,
    committed: u64,
    /// Last size the reader saw, for lag.
    size: u64,
    pending: VecDeque<Pending>,
    /// The reader let the file go: forget it once nothing is pending.
    released: bool,
}

#[derive(Default)]
struct Inner {
    files: HashMap<FileKey, Tracked>,
    next_key: FileKey,
    next_seq: u64,
    /// Bumped on every change worth persisting.
    version: u64,
}

/// Per-file acknowledgement state shared by the reader, the sinks and the writer.
#[derive(Default)]
pub struct Tracker {
    inner: Mutex<Inner>,
    pub changed: tokio::sync::Notify,
}

/// A file's lag for metrics.
#[derive(Debug, Clone)]
pub struct Lag {
    pub path: PathBuf,
    pub bytes: u64,
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves consistent data (every
        // update is a single assignment), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, id: FileIdentity, path: PathBuf, offset: u64, size: u64) -> FileKey {
        let mut g = self.lock();
        g.next_key += 1;
        let key = g.next_key;
        g.files.insert(
            key,
            Tracked {
                id,
                path,
                committed: offset,
                size,
                pending: VecDeque::new(),
                released: false,
            },
        );
        g.version += 1;
        drop(g);
        self.changed.notify_one();
        key
    }

    /// The reader observed the file again (renamed, grown, re-fingerprinted).
    pub fn observe(&self, key: FileKey, path: Option<&Path>, id: FileIdentity, size: u64) {
        let mut g = self.lock();
        let mut changed = false;
        if let Some(t) = g.files.get_mut(&key) {
            if let Some(p) = path
                && t.path != p
            {
                t.path = p.to_path_buf();
                changed = true;
            }
            if t.id != id {
                t.id = id;
                changed = true;
            }
            t.size = size;
        }
        if changed {
            g.version += 1;
            drop(g);
            self.changed.notify_one();
        }
    }

    /// A chunk ending at `end` is about to go to `sinks` sinks; returns its sequence.
    /// With no sinks to wait for (a chunk with no records) it commits in order at once.
    pub fn begin(&self, key: FileKey, end: u64, sinks: usize) -> u64 {
        let mut g = self.lock();
        g.next_seq += 1;
        let seq = g.next_seq;
        if let Some(t) = g.files.get_mut(&key) {
            t.pending.push_back(Pending {
                seq,
                end,
                remaining: sinks,
                created: Instant::now(),
            });
            if sinks == 0 && advance(t) {
                g.version += 1;
                drop(g);
                self.changed.notify_one();
            }
        }
        seq
    }

    /// One sink is done with the chunk (delivered, or refused for good and counted).
    pub fn ack(&self, key: FileKey, seq: u64) {
        let mut g = self.lock();
        let Some(t) = g.files.get_mut(&key) else {
            return;
        };
        if let Ok(i) = t.pending.binary_search_by_key(&seq, |p| p.seq) {
            let p = &mut t.pending[i];
            p.remaining = p.remaining.saturating_sub(1);
        }
        let moved = advance(t);
        let forget = t.released && t.pending.is_empty();
        if forget {
            g.files.remove(&key);
        }
        if moved || forget {
            g.version += 1;
            drop(g);
            self.changed.notify_one();
        }
    }

    /// The reader stopped following the file; it disappears once fully acknowledged.
    pub fn release(&self, key: FileKey) {
        let mut g = self.lock();
        if let Some(t) = g.files.get_mut(&key) {
            t.released = true;
            if t.pending.is_empty() {
                g.files.remove(&key);
            }
            g.version += 1;
            drop(g);
            self.changed.notify_one();
        }
    }

    pub fn committed(&self, key: FileKey) -> Option<u64> {
        self.lock().files.get(&key).map(|t| t.committed)
    }

    /// Whether a file (by inode) is followed and fully acknowledged up to `size`.
    pub fn shipped(&self, dev: u64, ino: u64, size: u64) -> Option<bool> {
        let g = self.lock();
        g.files
            .values()
            .find(|t| t.id.dev == dev && t.id.ino == ino)
            .map(|t| t.committed >= size)
    }

    pub fn version(&self) -> u64 {
        self.lock().version
    }

    pub fn snapshot(&self) -> (u64, Vec<Entry>) {
        let g = self.lock();
        let mut files: Vec<Entry> = g
            .files
            .values()
            .map(|t| Entry {
                id: t.id,
                path: t.path.clone(),
                offset: t.committed,
            })
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        (g.version, files)
    }

    pub fn lags(&self) -> Vec<Lag> {
        let g = self.lock();
        g.files
            .values()
            .filter(|t| !t.released)
            .map(|t| Lag {
                path: t.path.clone(),
                bytes: t.size.saturating_sub(t.committed),
            })
            .collect()
    }

    /// Age of the oldest chunk some sink has not acknowledged yet.
    pub fn oldest_unacked_seconds(&self) -> f64 {
        let g = self.lock();
        g.files
            .values()
            .filter_map(|t| t.pending.front().map(|p| p.created.elapsed().as_secs_f64()))
            .fold(0.0, f64::max)
    }
}

/// Pops fully acknowledged chunks off the front; true if the commit moved.
fn advance(t: &mut Tracked) -> bool {
    let mut moved = false;
    while let Some(front) = t.pending.front() {
        if front.remaining > 0 {
            break;
        }
        t.committed = t.committed.max(front.end);
        t.pending.pop_front();
        moved = true;
    }
    moved
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    // `cause`, not `source`: the message already carries it, and a source would make
    // error-chain printers repeat it.
    #[error("checkpoint directory {dir}: {cause}")]
    Dir { dir: PathBuf, cause: std::io::Error },
    #[error("checkpoint file {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
}

/// `checkpoints.json` in the data directory.
pub struct Store {
    dir: PathBuf,
    path: PathBuf,
    tmp: PathBuf,
}

/// What `Store::open` found.
pub enum Loaded {
    /// No checkpoint file: the very first start.
    FirstStart,
    Entries(Vec<Entry>),
}

impl Store {
    /// Creates the directory and proves it writable now, so a bad mount fails the start
    /// with a clear message instead of losing progress later.
    pub fn open(dir: &Path) -> Result<(Self, Loaded), CheckpointError> {
        let err = |cause| CheckpointError::Dir {
            dir: dir.to_path_buf(),
            cause,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let probe = dir.join(".write-test");
        std::fs::write(&probe, b"ok").map_err(err)?;
        let _ = std::fs::remove_file(&probe);
        let store = Self {
            dir: dir.to_path_buf(),
            path: dir.join("checkpoints.json"),
            tmp: dir.join("checkpoints.json.tmp"),
        };
        let loaded = match std::fs::read(&store.path) {
            Ok(bytes) => match serde_json::from_slice::<FileFormat>(&bytes) {
                Ok(f) => Loaded::Entries(f.files),
                Err(e) => {
                    // Never refuse to ship because of a damaged file: keep it for a
                    // post-mortem and re-read from the start (duplicates, not loss).
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    let aside = dir.join(format!("checkpoints.json.corrupt-{now}"));
                    let _ = std::fs::rename(&store.path, &aside);
                    crate::log::error(
                        "logship.checkpoint_corrupt",
                        &format!(
                            "{} is not a valid checkpoint file ({e}); moved to {} and starting over from the beginning of every file",
                            store.path.display(),
                            aside.display()
                        ),
                    );
                    Loaded::Entries(Vec::new())
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Loaded::FirstStart,
            Err(e) => {
                return Err(CheckpointError::Write {
                    path: store.path.clone(),
                    cause: e,
                });
            }
        };
        Ok((store, loaded))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn save(&self, files: &[Entry]) -> Result<(), CheckpointError> {
        let werr = |cause| CheckpointError::Write {
            path: self.path.clone(),
            cause,
        };
        let body = serde_json::to_vec_pretty(&FileFormat {
            version: 1,
            files: files.to_vec(),
        })
        .map_err(|e| werr(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&self.tmp).map_err(werr)?;
        f.write_all(&body).map_err(werr)?;
        f.sync_all().map_err(werr)?;
        drop(f);
        std::fs::rename(&self.tmp, &self.path).map_err(werr)?;
        // The rename is durable only once the directory entry is.
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> FileIdentity {
        FileIdentity {
            dev: 1,
            ino: 2,
            fp_len: 10,
            fp: 3,
        }
    }

    #[test]
    fn commits_only_contiguous_fully_acked_chunks() {
        let t = Tracker::default();
        let k = t.register(id(), "a".into(), 0, 0);
        let s1 = t.begin(k, 100, 2);
        let s2 = t.begin(k, 200, 2);
        t.ack(k, s2);
        t.ack(k, s2);
        assert_eq!(t.committed(k), Some(0), "chunk 1 still pending");
        t.ack(k, s1);
        assert_eq!(t.committed(k), Some(0), "one sink of two");
        t.ack(k, s1);
        assert_eq!(t.committed(k), Some(200));
        let s3 = t.begin(k, 250, 0);
        assert!(s3 > s2);
        assert_eq!(t.committed(k), Some(250), "empty chunk commits at once");
    }

    #[test]
    fn released_files_are_forgotten_when_acked() {
        let t = Tracker::default();
        let k = t.register(id(), "a".into(), 0, 0);
        let s = t.begin(k, 10, 1);
        t.release(k);
        assert_eq!(t.snapshot().1.len(), 1);
        t.ack(k, s);
        assert!(t.snapshot().1.is_empty());
    }

    #[test]
    fn store_round_trip_and_corrupt_file() {
        let dir = std::env::temp_dir().join(format!("ckpt-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (s, l) = Store::open(&dir).expect("open");
        assert!(matches!(l, Loaded::FirstStart));
        let e = Entry {
            id: id(),
            path: "x".into(),
            offset: 7,
        };
        s.save(std::slice::from_ref(&e)).expect("save");
        let (_, l) = Store::open(&dir).expect("open");
        match l {
            Loaded::Entries(v) => assert_eq!(v, vec![e]),
            Loaded::FirstStart => panic!("expected entries"),
        }
        std::fs::write(dir.join("checkpoints.json"), b"{not json").expect("write");
        let (_, l) = Store::open(&dir).expect("open");
        assert!(matches!(l, Loaded::Entries(v) if v.is_empty()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
