//! Rate quotas per workspace (DESIGN §2: the agent owns rate quotas, rag-core storage).
//! The policy says how much each plan may do, with per-organization and per-workspace
//! overrides; a backend enforces it exactly with GCRA — in memory for one replica, in
//! Redis when replicas must share one budget.

pub mod concurrency;
pub mod events;
pub mod limiter;
pub mod policy;
pub mod redis;

use std::sync::Arc;

pub use limiter::{Budget, Decision, Limiter, MAX_BUDGETS, Scope};
pub use policy::{Metric, Policy};

use crate::config::{QuotaBackend, QuotasConfig};
use crate::metrics::Metrics;

pub enum Backend {
    Memory(Limiter),
    Redis(Box<redis::RedisLimiter>),
}

impl Backend {
    pub fn new(cfg: &QuotasConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        Ok(match cfg.backend {
            QuotaBackend::Memory => Self::Memory(Limiter::new(cfg.max_tracked_budgets)),
            QuotaBackend::Redis => Self::Redis(Box::new(redis::RedisLimiter::new(cfg, metrics)?)),
        })
    }

    /// `now` is when the request arrived (one clock read serves the whole request); the
    /// Redis backend keeps time on the server.
    pub async fn check<'a>(&self, budgets: &[Budget<'a>], now: std::time::Instant) -> Decision<'a> {
        match self {
            Self::Memory(l) => l.check_at(budgets, now),
            Self::Redis(r) => r.check(budgets).await,
        }
    }
}
