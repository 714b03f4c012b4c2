//! Rule files, rule groups and alert state (Prometheus's `rules` package).
//!
//! The agent runtime uses this API:
//! - [`load_files`] reads and validates rule files into [`Group`]s; every problem is
//!   reported with file, line, group, rule and cause ([`LoadError`]).
//! - [`Group::eval`] evaluates a group at one timestamp, writing recorded series and
//!   `ALERTS` / `ALERTS_FOR_STATE` back into the [`MemStore`](crate::storage::MemStore).
//! - [`Group::alerts_to_send`] yields what to POST to Alertmanager.
//! - [`Group::rules`], [`Rule`] and [`Alert`] accessors feed `/api/v1/rules` and
//!   `/api/v1/alerts`.
//!
//! `rules check` is [`check_files`].

mod check;
pub mod duration;
mod file;
mod group;
mod rule;

pub use check::{CheckReport, FileCheck, check_files};
pub use file::{LoadError, LoadOptions, RuleFileError, load_files, load_files_with};
pub use group::{EvalContext, Group, GroupEvalReport, OutgoingAlert};
pub use rule::{Alert, AlertState, Health, RESOLVED_RETENTION_MS, Rule};

#[cfg(test)]
mod tests;
