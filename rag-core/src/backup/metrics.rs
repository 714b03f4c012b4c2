//! Backup metrics, registered into rag-core's registry (catalogue: `docs/metrics.md`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub struct BackupMetrics {
    /// Unix time of the newest backup known to this process: set at startup from the
    /// newest file in the backup directory, then by each scheduled success. 0 = none.
    pub last_success: Gauge,
    pub failures: Counter,
}

impl BackupMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            last_success: Gauge::default(),
            failures: Counter::default(),
        };
        registry.register(
            "backup_last_success_timestamp_seconds",
            "Unix time of the newest successful scheduled backup (0 = none yet)",
            m.last_success.clone(),
        );
        registry.register(
            "backup_failures",
            "Scheduled backups that failed",
            m.failures.clone(),
        );
        m
    }
}
