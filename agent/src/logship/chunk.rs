//! The unit that flows from the reader to every sink: consecutive records of one file.

use std::sync::Arc;

use crate::logship::checkpoint::{FileKey, Tracker};

/// Where one record sits in [`Chunk::data`] and in its file.
#[derive(Debug, Clone, Copy)]
pub struct RecordMeta {
    pub start: u32,
    /// Exclusive, before the newline.
    pub end: u32,
    /// Byte offset of the line in its file (deterministic ids for idempotent sinks).
    pub offset: u64,
}

pub struct Chunk {
    pub file: FileKey,
    pub seq: u64,
    /// Path when read (a later rotation does not change it).
    pub path: Arc<str>,
    /// The file's content fingerprint: with `offset` it names a line across renames.
    pub fingerprint: u64,
    /// Records as NDJSON: each is one JSON object followed by `\n`.
    pub data: Vec<u8>,
    pub records: Vec<RecordMeta>,
    pub(crate) tracker: Arc<Tracker>,
}

impl Chunk {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Each record's JSON (without the newline) with its metadata.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &RecordMeta)> {
        self.records
            .iter()
            .map(|m| (&self.data[m.start as usize..m.end as usize], m))
    }

    /// One sink is done with this chunk (delivered, or refused for good and counted).
    pub fn ack(&self) {
        self.tracker.ack(self.file, self.seq);
    }

    /// A stable id for the record: file fingerprint + line offset.
    pub fn record_id(&self, meta: &RecordMeta) -> String {
        format!("{:016x}-{:x}", self.fingerprint, meta.offset)
    }
}
