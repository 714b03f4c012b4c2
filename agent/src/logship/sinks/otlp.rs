//! PLACEHOLDER — being written.

use std::sync::Arc;

use crate::logship::chunk::Chunk;
use crate::logship::config::OtlpSinkConfig;
use crate::logship::sinks::{Delivered, Sink, SinkError};

pub struct OtlpSink;

impl OtlpSink {
    pub fn new(_c: &OtlpSinkConfig) -> Result<Self, String> {
        Err("not built yet".into())
    }
}

impl Sink for OtlpSink {
    async fn deliver(&self, _batch: &[Arc<Chunk>]) -> Result<Delivered, SinkError> {
        Err(SinkError::Rejected {
            reason: "not built yet".into(),
        })
    }
}
