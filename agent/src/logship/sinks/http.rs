//! Generic HTTP sink: POSTs the batch as NDJSON (one record per line), optionally gzip.

use std::sync::Arc;

use crate::logship::chunk::Chunk;
use crate::logship::config::{Compression, HttpSinkConfig};
use crate::logship::sinks::{Delivered, Sink, SinkError, net};

pub struct HttpSink {
    client: reqwest::Client,
    url: String,
    headers: reqwest::header::HeaderMap,
    gzip: bool,
}

impl HttpSink {
    pub fn new(c: &HttpSinkConfig) -> Result<Self, String> {
        Ok(Self {
            client: net::client()?,
            url: c.url.clone(),
            headers: net::headers(&c.headers)?,
            gzip: c.compression == Compression::Gzip,
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
        let mut req = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson");
        if self.gzip {
            body = net::gzip(&body);
            req = req.header(reqwest::header::CONTENT_ENCODING, "gzip");
        }
        let resp = req.body(body).send().await.map_err(net::transport)?;
        net::classify(resp).await?;
        Ok(Delivered::default())
    }
}
