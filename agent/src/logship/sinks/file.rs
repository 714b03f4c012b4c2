//! NDJSON file sink (the embedded default), rotated like the logs it ships.

use std::sync::{Arc, Mutex};

use minirag_contracts::rotate::RotatingFile;

use crate::logship::chunk::Chunk;
use crate::logship::config::FileSinkConfig;
use crate::logship::sinks::{Delivered, Sink, SinkError};

pub struct FileSink {
    file: Arc<Mutex<RotatingFile>>,
    fsync: bool,
}

impl FileSink {
    pub fn open(c: &FileSinkConfig) -> std::io::Result<Self> {
        let file = RotatingFile::open(&c.path, c.rotation_max_bytes, c.rotation_backups, 0)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", c.path.display())))?;
        Ok(Self {
            file: Arc::new(Mutex::new(file)),
            fsync: c.fsync,
        })
    }
}

impl Sink for FileSink {
    async fn deliver(&self, batch: &[Arc<Chunk>]) -> Result<Delivered, SinkError> {
        let batch: Vec<Arc<Chunk>> = batch.to_vec();
        let file = Arc::clone(&self.file);
        let fsync = self.fsync;
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
            for c in &batch {
                // A chunk is whole lines and is never split across files; a file may
                // exceed the rotation size by at most one chunk.
                f.write_line(&c.data)?;
            }
            if fsync { f.sync() } else { Ok(()) }
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(Delivered::default()),
            Ok(Err(e)) => Err(SinkError::Retry {
                reason: format!("file sink: {e}"),
                after: None,
            }),
            Err(e) => Err(SinkError::Retry {
                reason: format!("file sink writer: {e}"),
                after: None,
            }),
        }
    }
}
