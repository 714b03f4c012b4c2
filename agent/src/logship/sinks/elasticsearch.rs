//! PLACEHOLDER — being written.

use std::sync::Arc;

use crate::logship::chunk::Chunk;
use crate::logship::config::ElasticsearchSinkConfig;
use crate::logship::sinks::{Delivered, Sink, SinkError};

pub struct ElasticsearchSink;

impl ElasticsearchSink {
    pub fn new(_c: &ElasticsearchSinkConfig) -> Result<Self, String> {
        Err("not built yet".into())
    }
}

impl Sink for ElasticsearchSink {
    async fn deliver(&self, _batch: &[Arc<Chunk>]) -> Result<Delivered, SinkError> {
        Err(SinkError::Rejected {
            reason: "not built yet".into(),
        })
    }
}
