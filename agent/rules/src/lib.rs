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
//! - [`rules`]: rule files, group evaluation, alert state, `rules check`.
//! - [`template`]: the Go `text/template` subset of alert labels and annotations.
//! - [`unittest`]: promtool-format rule unit tests (`rules test`).

pub mod chunkenc;
pub mod model;
pub mod promql;
pub mod retention;
pub mod rules;
pub mod storage;
pub mod template;
pub mod textparse;
pub mod unittest;
