//! Observability: JSON logs in the shared schema, Prometheus metrics, request context.

pub mod context;
pub mod healthcheck;
pub mod log;
pub mod metrics;
pub mod trace;

pub use minirag_contracts::rotate;
