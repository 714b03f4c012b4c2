//! rag-core: the Mini-RAG service. `main.rs` only parses the command line; the pieces
//! live in one module per capability.

pub mod answer;
pub mod api;
pub mod audit;
pub mod backup;
pub mod billing;
pub mod config;
pub mod ingest;
pub mod jobs;
pub mod lifecycle;
pub mod obs;
pub mod retrieval;
pub mod server;
pub mod store;
pub mod tenancy;
