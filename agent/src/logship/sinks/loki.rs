//! PLACEHOLDER — being written.

use std::sync::Arc;

use crate::logship::chunk::Chunk;
use crate::logship::config::LokiSinkConfig;
use crate::logship::sinks::{Delivered, Sink, SinkError};

pub struct LokiSink;

impl LokiSink {
    pub fn new(_c: &LokiSinkConfig) -> Result<Self, String> {
        Err("not built yet".into())
    }
}

impl Sink for LokiSink {
    async fn deliver(&self, _batch: &[Arc<Chunk>]) -> Result<Delivered, SinkError> {
        Err(SinkError::Rejected {
            reason: "not built yet".into(),
        })
    }
}
