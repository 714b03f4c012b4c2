//! The `lifecycle:` section of the configuration.

use serde::Deserialize;

use crate::jobs::config::{JobsConfig, ScheduleConfig};

/// Name of the built-in schedule that runs the `retention` job.
pub const SCHEDULE_NAME: &str = "lifecycle";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    /// Hours an export stays downloadable; then its file is deleted (1..=8760).
    pub export_ttl_hours: u64,
    /// Retention (days) of workspaces that set none of their own; null keeps content
    /// until it is deleted.
    pub default_retention_days: Option<u32>,
    /// How often the `retention` job runs (content retention, rotated logs, expired
    /// exports, finished jobs): `<n>s|m|h|d`. Null: only as listed in `jobs.schedules`.
    /// Not added when `jobs.schedules` already runs `retention`.
    pub schedule_every: Option<String>,
    /// Chunks removed per transaction by deletions and retention: the writer connection
    /// is released between batches, so ingest and jobs keep going meanwhile.
    pub delete_batch_size: usize,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            export_ttl_hours: 24,
            default_retention_days: None,
            schedule_every: Some("1h".into()),
            delete_batch_size: 500,
        }
    }
}

impl LifecycleConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=8760).contains(&self.export_ttl_hours) {
            return Err("lifecycle.export_ttl_hours must be within 1..=8760".into());
        }
        if let Some(d) = self.default_retention_days
            && !(1..=36_500).contains(&d)
        {
            return Err("lifecycle.default_retention_days must be within 1..=36500 or null".into());
        }
        if let Some(every) = &self.schedule_every {
            crate::jobs::schedule::parse_every(every)
                .map_err(|e| format!("lifecycle.schedule_every: {e}"))?;
        }
        if !(1..=100_000).contains(&self.delete_batch_size) {
            return Err("lifecycle.delete_batch_size must be within 1..=100000".into());
        }
        Ok(())
    }

    /// The jobs configuration with the built-in `lifecycle` schedule added, unless it is
    /// switched off or the operator already schedules `retention` (it would run twice).
    pub fn with_schedule(&self, jobs: &JobsConfig) -> JobsConfig {
        let mut out = jobs.clone();
        if let Some(every) = &self.schedule_every
            && !jobs.schedules.iter().any(|s| s.job == "retention")
            && !jobs.schedules.iter().any(|s| s.name == SCHEDULE_NAME)
        {
            out.schedules.push(ScheduleConfig {
                name: SCHEDULE_NAME.into(),
                job: "retention".into(),
                every: every.clone(),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_schedule_is_added_once() {
        let cfg = LifecycleConfig::default();
        let jobs = cfg.with_schedule(&JobsConfig::default());
        assert_eq!(jobs.schedules.len(), 1);
        assert_eq!(jobs.schedules[0].job, "retention");
        let again = cfg.with_schedule(&jobs);
        assert_eq!(
            again.schedules.len(),
            1,
            "an existing retention schedule wins"
        );
        let off = LifecycleConfig {
            schedule_every: None,
            ..LifecycleConfig::default()
        };
        assert!(
            off.with_schedule(&JobsConfig::default())
                .schedules
                .is_empty()
        );
    }

    #[test]
    fn bounds_are_checked() {
        assert!(LifecycleConfig::default().validate().is_ok());
        for bad in [
            LifecycleConfig {
                export_ttl_hours: 0,
                ..Default::default()
            },
            LifecycleConfig {
                default_retention_days: Some(0),
                ..Default::default()
            },
            LifecycleConfig {
                schedule_every: Some("soon".into()),
                ..Default::default()
            },
            LifecycleConfig {
                delete_batch_size: 0,
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
