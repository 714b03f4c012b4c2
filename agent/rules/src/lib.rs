//! Rule evaluation without a Prometheus server (DESIGN §3, issue #7).
//!
//! Pure logic, no I/O runtime: the agent's `rules` module drives scraping, the clock and
//! notifications; this crate holds what must behave exactly like Prometheus and is
//! therefore tested against Prometheus's own files.
//!
//! - [`model`]: labels, samples, stale markers.
//! - [`storage`]: the bounded in-memory series store and the [`storage::Queryable`]
//!   interface the engine reads through.
//! - [`promql`]: PromQL evaluation on top of `promql-parser`'s AST.

pub mod model;
pub mod promql;
pub mod storage;
