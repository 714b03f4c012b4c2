//! Rate quotas per workspace (DESIGN §2: the agent owns rate quotas, rag-core storage).
//! The policy says how much each plan may do, with per-organization and per-workspace
//! overrides; the limiter enforces it exactly with GCRA.

pub mod events;
pub mod limiter;
pub mod policy;

pub use limiter::{Decision, Limiter};
pub use policy::{Metric, Policy};
