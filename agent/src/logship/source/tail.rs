//! Follows one open file: reads at an offset (pread, so renames do not matter), cuts
//! complete lines into records, and keeps a partial last line until its newline comes
//! or `partial_line_timeout_ms` passes.

use std::fs::File;
use std::io::{self, Read as _, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::logship::checkpoint::{FINGERPRINT_BYTES, FileIdentity, FileKey, fingerprint};
use crate::logship::chunk::RecordMeta;
use crate::logship::record::{Enrichment, LineFlags};
use crate::logship::stats::ReaderStats;

/// Limits the tailer applies (from the config).
#[derive(Debug, Clone, Copy)]
pub struct TailLimits {
    pub read_bytes: usize,
    pub max_line_bytes: usize,
    pub partial_timeout: Duration,
}

/// Records cut from one read, ready to become a chunk.
pub struct Parts {
    pub data: Vec<u8>,
    pub records: Vec<RecordMeta>,
    /// Resume point: every byte before it is in `data` (or was in earlier parts).
    pub end_offset: u64,
}

pub enum Read {
    Parts(Parts),
    /// Nothing new.
    Idle,
    /// The file is shorter than what was read: truncated (copytruncate) or rewritten.
    Truncated {
        size: u64,
    },
}

pub struct Tailer {
    pub key: FileKey,
    pub file: File,
    pub path: PathBuf,
    pub path_label: Arc<str>,
    pub id: FileIdentity,
    enrich: Enrichment,
    /// File offset of `buf[0]`; everything before it is in records already.
    consumed: u64,
    /// Bytes read but not yet a record (a partial line).
    buf: Vec<u8>,
    /// Inside an over-long line whose cut head was shipped: drop bytes to the newline.
    /// Holds the line's start, where a restart must resume.
    skipping_from: Option<u64>,
    partial_since: Option<Instant>,
    pub at_eof: bool,
    /// The fingerprint grew; the tracker must learn it before the next chunk commits.
    pub id_changed: bool,
    /// A gzip file's decoder, positioned at `position()` of the decompressed content.
    gzip: Option<flate2::read::MultiGzDecoder<File>>,
    /// Set when the file left the globs (renamed away or deleted).
    pub gone_since: Option<Instant>,
    pub seen: bool,
}

/// Gzip files (rotated and compressed) are read through a decoder, whole and once:
/// they never grow. Their offsets and fingerprints are of the decompressed content, so
/// `app.log.1` compressed into `app.log.2.gz` is recognised and not shipped twice.
pub fn is_gzip(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "gz")
}

/// A second handle at offset 0 (clones share the offset, so it is set explicitly).
pub fn from_start(file: &File) -> io::Result<File> {
    let mut f = file.try_clone()?;
    f.seek(SeekFrom::Start(0))?;
    Ok(f)
}

/// Up to `len` head bytes (decompressed for gzip).
fn read_head(file: &File, len: usize, gzip: bool) -> io::Result<Vec<u8>> {
    let mut head = vec![0u8; len];
    let mut got = 0;
    if gzip {
        let mut dec = flate2::read::MultiGzDecoder::new(from_start(file)?);
        while got < len {
            let n = dec.read(&mut head[got..])?;
            if n == 0 {
                break;
            }
            got += n;
        }
    } else {
        while got < len {
            let n = file.read_at(&mut head[got..], got as u64)?;
            if n == 0 {
                break;
            }
            got += n;
        }
    }
    head.truncate(got);
    Ok(head)
}

/// Identity of an open file from its head bytes.
pub fn identify(file: &File, gzip: bool) -> io::Result<(FileIdentity, u64)> {
    let md = file.metadata()?;
    let size = md.len();
    let head = read_head(file, FINGERPRINT_BYTES as usize, gzip)?;
    Ok((
        FileIdentity {
            dev: md.dev(),
            ino: md.ino(),
            fp_len: head.len() as u32,
            fp: fingerprint(&head),
        },
        size,
    ))
}

/// Whether `file` starts with the bytes `id` fingerprinted.
pub fn head_matches(file: &File, id: &FileIdentity, gzip: bool) -> bool {
    match read_head(file, id.fp_len as usize, gzip) {
        Ok(head) => head.len() == id.fp_len as usize && fingerprint(&head) == id.fp,
        Err(_) => false,
    }
}

impl Tailer {
    pub fn new(
        key: FileKey,
        file: File,
        path: PathBuf,
        id: FileIdentity,
        enrich: Enrichment,
        offset: u64,
    ) -> io::Result<Self> {
        let path_label: Arc<str> = Arc::from(path.display().to_string());
        let gzip = if is_gzip(&path) {
            let mut dec = flate2::read::MultiGzDecoder::new(from_start(&file)?);
            io::copy(&mut (&mut dec).take(offset), &mut io::sink())?;
            Some(dec)
        } else {
            None
        };
        Ok(Self {
            key,
            file,
            path,
            path_label,
            id,
            enrich,
            consumed: offset,
            buf: Vec::new(),
            skipping_from: None,
            partial_since: None,
            at_eof: false,
            id_changed: false,
            gzip,
            gone_since: None,
            seen: true,
        })
    }

    pub fn is_gzip(&self) -> bool {
        self.gzip.is_some()
    }

    pub fn position(&self) -> u64 {
        self.consumed + self.buf.len() as u64
    }

    /// Where a restart would have to resume to lose nothing.
    pub fn resume_offset(&self) -> u64 {
        self.skipping_from.unwrap_or(self.consumed)
    }

    pub fn set_path(&mut self, path: PathBuf, enrich: Enrichment) {
        self.path_label = Arc::from(path.display().to_string());
        self.path = path;
        self.enrich = enrich;
    }

    /// Starts over at offset 0 as a new file (after a truncation).
    pub fn restart(&mut self, key: FileKey, id: FileIdentity) {
        self.key = key;
        self.id = id;
        self.consumed = 0;
        self.buf.clear();
        self.skipping_from = None;
        self.partial_since = None;
        self.at_eof = false;
    }

    /// Reads up to `read_bytes` and returns the complete lines as records. With
    /// `flush_partial` a pending partial line is shipped now (the file is being let go).
    pub fn read(
        &mut self,
        limits: &TailLimits,
        stats: &ReaderStats,
        flush_partial: bool,
    ) -> io::Result<Read> {
        use std::sync::atomic::Ordering::Relaxed;
        let pos = self.position();
        let keep = self.buf.len();
        self.buf.resize(keep + limits.read_bytes, 0);
        // Seek + read rather than pread: the descriptor's offset then shows progress in
        // /proc/<pid>/fdinfo to operators and tools.
        let read = match &mut self.gzip {
            Some(dec) => dec.read(&mut self.buf[keep..]),
            None => (&self.file)
                .seek(SeekFrom::Start(pos))
                .and_then(|_| (&self.file).read(&mut self.buf[keep..])),
        };
        let n = match read {
            Ok(n) => n,
            Err(e) => {
                self.buf.truncate(keep);
                return Err(e);
            }
        };
        self.buf.truncate(keep + n);
        // Truncated and rewritten past our offset (copytruncate with a fast writer)
        // leaves the size above the offset; only the head tells. Checked after the
        // read, so bytes read from the new content are thrown away, never shipped.
        if n > 0
            && self.gzip.is_none()
            && self.id.fp_len > 0
            && !head_matches(&self.file, &self.id, false)
        {
            self.buf.truncate(keep);
            let size = self.file.metadata()?.len();
            return Ok(Read::Truncated { size });
        }
        // Keep the fingerprint ahead of the offset: a checkpoint must never hold an
        // offset past the bytes its fingerprint covers, or a file rewritten while the
        // shipper is down could be taken for the old one and skipped into.
        if n > 0
            && self.gzip.is_none()
            && !self.id.full()
            && pos + n as u64 > u64::from(self.id.fp_len)
            && let Ok((id, _)) = identify(&self.file, false)
            && id.dev == self.id.dev
            && id.ino == self.id.ino
        {
            self.id = id;
            self.id_changed = true;
        }
        if n == 0 {
            self.at_eof = true;
            let size = self.file.metadata()?.len();
            if self.gzip.is_none()
                && (size < pos
                    || (self.id.fp_len > 0 && !head_matches(&self.file, &self.id, false)))
            {
                return Ok(Read::Truncated { size });
            }
            if self.buf.is_empty() {
                self.partial_since = None;
                return Ok(Read::Idle);
            }
            let since = *self.partial_since.get_or_insert_with(Instant::now);
            if !(flush_partial || since.elapsed() >= limits.partial_timeout) {
                return Ok(Read::Idle);
            }
            stats.partial_flushes.fetch_add(1, Relaxed);
            let mut parts = Parts {
                data: Vec::with_capacity(self.buf.len() + 256),
                records: Vec::with_capacity(1),
                end_offset: 0,
            };
            let line = std::mem::take(&mut self.buf);
            self.push(
                &line,
                self.consumed,
                LineFlags {
                    truncated: false,
                    partial: true,
                },
                &mut parts,
                stats,
            );
            stats.lines_read.fetch_add(1, Relaxed);
            self.consumed += line.len() as u64;
            self.partial_since = None;
            parts.end_offset = self.resume_offset();
            return Ok(Read::Parts(parts));
        }
        self.at_eof = false;
        self.partial_since = None;
        stats.bytes_read.fetch_add(n as u64, Relaxed);

        let buf = std::mem::take(&mut self.buf);
        let mut parts = Parts {
            data: Vec::with_capacity(buf.len() + buf.len() / 4 + 256),
            records: Vec::with_capacity(buf.len() / 128 + 1),
            end_offset: 0,
        };
        let mut start = 0usize;
        let mut lines = 0u64;
        while let Some(nl) = memchr::memchr(b'\n', &buf[start..]) {
            let line = &buf[start..start + nl];
            let offset = self.consumed + start as u64;
            // Blank lines carry nothing (and one ends a partial line already shipped).
            let blank = line.iter().all(|b| matches!(b, b'\r' | b' ' | b'\t'));
            if self.skipping_from.take().is_none() && !blank {
                let cut = line.len() > limits.max_line_bytes;
                let line = if cut {
                    stats.lines_truncated.fetch_add(1, Relaxed);
                    &line[..limits.max_line_bytes]
                } else {
                    line
                };
                self.push(
                    line,
                    offset,
                    LineFlags {
                        truncated: cut,
                        partial: false,
                    },
                    &mut parts,
                    stats,
                );
                lines += 1;
            }
            start += nl + 1;
        }
        // What is left has no newline yet.
        let rest = buf.len() - start;
        if self.skipping_from.is_some() {
            // Still inside the cut line: its bytes are dropped as they come.
            self.consumed += buf.len() as u64;
        } else if rest > limits.max_line_bytes {
            let line_start = self.consumed + start as u64;
            stats.lines_truncated.fetch_add(1, Relaxed);
            self.push(
                &buf[start..start + limits.max_line_bytes],
                line_start,
                LineFlags {
                    truncated: true,
                    partial: false,
                },
                &mut parts,
                stats,
            );
            lines += 1;
            self.skipping_from = Some(line_start);
            self.consumed += buf.len() as u64;
        } else {
            self.consumed += start as u64;
            let mut buf = buf;
            buf.drain(..start);
            self.buf = buf;
        }
        stats.lines_read.fetch_add(lines, Relaxed);
        parts.end_offset = self.resume_offset();
        Ok(Read::Parts(parts))
    }

    fn push(
        &self,
        line: &[u8],
        offset: u64,
        flags: LineFlags,
        parts: &mut Parts,
        stats: &ReaderStats,
    ) {
        let start = parts.data.len();
        let invalid_utf8 = self.enrich.encode(line, flags, &mut parts.data);
        let end = parts.data.len() - 1;
        if invalid_utf8 {
            stats
                .invalid_utf8
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        parts.records.push(RecordMeta {
            start: start as u32,
            end: end as u32,
            offset,
        });
    }
}
