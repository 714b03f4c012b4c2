//! Organizations, workspaces, users, roles and API keys — the system of record.

pub mod keys;
pub mod model;

pub use model::*;
