//! Generic HTTP sink: POSTs the batch as NDJSON (one record per line), optionally gzip.

use std::sync::Arc;

use crate::logship::chunk::Chunk;
use crate::logship::config::HttpSinkConfig;
use crate::logship::sinks::{Delivered, Sink, SinkError, net};

pub struct HttpSink {
    endpoint: net::Endpoint,
}

impl HttpSink {
    pub fn new(c: &HttpSinkConfig) -> Result<Self, String> {
        Ok(Self {
            endpoint: net::Endpoint::new(c.url.clone(), net::headers(&c.headers)?, c.compression)?,
        })
    }
}

impl Sink for HttpSink {
    async fn deliver(&self, batch: &[Arc<Chunk>]) -> Result<Delivered, SinkError> {
        let size: usize = batch.iter().map(|c| c.data.len()).sum();
        let mut body = Vec::with_capacity(size);
        for c in batch {
            body.extend_from_slice(&c.data);
        }
        let resp = self.endpoint.post("application/x-ndjson", body).await?;
        net::classify(resp).await?;
        Ok(Delivered::default())
    }
}
