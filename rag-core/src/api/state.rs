//! Everything a handler may use, built once at startup.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::sync::Semaphore;

use crate::answer::llm::ChatClient;
use crate::config::Config;
use crate::ingest::Chunker;
use crate::ingest::fetch::Fetcher;
use crate::obs::metrics::Metrics;
use crate::retrieval::{Embedder, Searcher};
use crate::store::Store;

pub struct Inner {
    pub cfg: Arc<Config>,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub searcher: Searcher,
    pub embedder: Arc<Embedder>,
    pub chat: Option<ChatClient>,
    pub fetcher: Fetcher,
    pub chunker: Chunker,
    pub jobs: Arc<crate::jobs::Jobs>,
    /// Set on SIGTERM: readiness fails so load balancers stop sending work.
    pub shutting_down: AtomicBool,
    /// Bounds concurrent requests; past it new requests are shed with 503.
    pub inflight: Semaphore,
}

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
