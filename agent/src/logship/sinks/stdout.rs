//! Writes records to standard output as NDJSON (debugging, or a container log driver).

use std::io::Write;
use std::sync::Arc;

use crate::logship::chunk::Chunk;
use crate::logship::sinks::{Delivered, Sink, SinkError};

pub struct StdoutSink;

impl Sink for StdoutSink {
    async fn deliver(&self, batch: &[Arc<Chunk>]) -> Result<Delivered, SinkError> {
        let batch: Vec<Arc<Chunk>> = batch.to_vec();
        let written = tokio::task::spawn_blocking(move || {
            let mut out = std::io::stdout().lock();
            for c in &batch {
                out.write_all(&c.data)?;
            }
            out.flush()
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(Delivered::default()),
            Ok(Err(e)) => Err(SinkError::Retry {
                reason: format!("stdout: {e}"),
                after: None,
            }),
            Err(e) => Err(SinkError::Retry {
                reason: format!("stdout writer: {e}"),
                after: None,
            }),
        }
    }
}
