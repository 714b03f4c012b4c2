//! `config/quotas.yaml`: limits per plan, overridden per organization, then per workspace.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::proxy::routes::RouteClass;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    RequestsPerMinute,
    RequestsPerDay,
    AskPerMinute,
    IngestPerHour,
    /// Request body bytes of ingest calls (their declared Content-Length).
    IngestBytesPerDay,
}

impl Metric {
    pub const COUNT: usize = 5;

    pub fn index(self) -> usize {
        match self {
            Self::RequestsPerMinute => 0,
            Self::RequestsPerDay => 1,
            Self::AskPerMinute => 2,
            Self::IngestPerHour => 3,
            Self::IngestBytesPerDay => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::RequestsPerMinute => "requests_per_minute",
            Self::RequestsPerDay => "requests_per_day",
            Self::AskPerMinute => "ask_per_minute",
            Self::IngestPerHour => "ingest_per_hour",
            Self::IngestBytesPerDay => "ingest_bytes_per_day",
        }
    }

    pub fn window(self) -> Duration {
        match self {
            Self::RequestsPerMinute | Self::AskPerMinute => Duration::from_secs(60),
            Self::IngestPerHour => Duration::from_secs(3600),
            Self::RequestsPerDay | Self::IngestBytesPerDay => Duration::from_secs(86_400),
        }
    }

    /// Counted in bytes (the request's Content-Length) rather than in requests.
    pub fn counts_bytes(self) -> bool {
        self == Self::IngestBytesPerDay
    }

    /// The metrics a request of this class counts against.
    pub fn for_class(class: RouteClass) -> &'static [Metric] {
        match class {
            RouteClass::Ask => &[
                Self::RequestsPerMinute,
                Self::RequestsPerDay,
                Self::AskPerMinute,
            ],
            RouteClass::Ingest => &[
                Self::RequestsPerMinute,
                Self::RequestsPerDay,
                Self::IngestPerHour,
                Self::IngestBytesPerDay,
            ],
            _ => &[Self::RequestsPerMinute, Self::RequestsPerDay],
        }
    }
}

/// Limits of one plan or override; unset = unlimited (or inherited, for overrides).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub requests_per_minute: Option<u64>,
    pub requests_per_day: Option<u64>,
    pub ask_per_minute: Option<u64>,
    pub ingest_per_hour: Option<u64>,
    pub ingest_bytes_per_day: Option<u64>,
    /// Requests of one workspace in flight at once (per agent replica).
    pub concurrent_requests: Option<u64>,
    /// Totals for all workspaces of one organization together (on a plan or an
    /// organization override; not allowed on workspace overrides).
    pub organization: Option<Totals>,
}

/// Organization-wide aggregate limits, on top of the per-workspace ones.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Totals {
    pub requests_per_minute: Option<u64>,
    pub requests_per_day: Option<u64>,
    pub ask_per_minute: Option<u64>,
    pub ingest_per_hour: Option<u64>,
    pub ingest_bytes_per_day: Option<u64>,
}

impl Totals {
    fn get(&self, m: Metric) -> Option<u64> {
        match m {
            Metric::RequestsPerMinute => self.requests_per_minute,
            Metric::RequestsPerDay => self.requests_per_day,
            Metric::AskPerMinute => self.ask_per_minute,
            Metric::IngestPerHour => self.ingest_per_hour,
            Metric::IngestBytesPerDay => self.ingest_bytes_per_day,
        }
    }
}

impl Limits {
    fn get(&self, m: Metric) -> Option<u64> {
        match m {
            Metric::RequestsPerMinute => self.requests_per_minute,
            Metric::RequestsPerDay => self.requests_per_day,
            Metric::AskPerMinute => self.ask_per_minute,
            Metric::IngestPerHour => self.ingest_per_hour,
            Metric::IngestBytesPerDay => self.ingest_bytes_per_day,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Billing statuses for which ingest is refused at the edge with 402 (rag-core stays
    /// the final judge).
    pub billing_blocked_statuses: Vec<String>,
    /// Share of a quota at which `quota.threshold` is logged, once per upward crossing
    /// (re-armed when usage falls below 0.8 of this).
    pub threshold_ratio: f64,
    /// Plan name (as rag-core reports it) → limits.
    pub plans: crate::FastMap<String, Limits>,
    /// Used for a plan the policy does not name.
    pub default_plan: Option<String>,
    /// organization_id → limits that replace the plan's, metric by metric.
    pub organizations: crate::FastMap<String, Limits>,
    /// workspace_id → limits that replace the organization's and plan's.
    pub workspaces: crate::FastMap<String, Limits>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            // Every status rag-core refuses ingest for (its principal reports an ended
            // trial or subscription as `expired`), so the edge and the core agree.
            billing_blocked_statuses: [
                "past_due",
                "canceled",
                "expired",
                "incomplete",
                "unpaid",
                "paused",
            ]
            .map(String::from)
            .to_vec(),
            threshold_ratio: 0.9,
            plans: crate::FastMap::default(),
            default_plan: None,
            organizations: crate::FastMap::default(),
            workspaces: crate::FastMap::default(),
        }
    }
}

impl Policy {
    pub fn load(path: &Path) -> Result<Self, String> {
        let p: Policy = minirag_contracts::yaml::from_file(path).map_err(|e| e.to_string())?;
        if let Some((ws, _)) = p.workspaces.iter().find(|(_, l)| l.organization.is_some()) {
            return Err(format!(
                "{}: workspaces: {ws}: organization totals belong on a plan or under organizations",
                path.display()
            ));
        }
        for (name, l) in p.plans.iter().chain(&p.organizations).chain(&p.workspaces) {
            let totals = l.organization.clone().unwrap_or_default();
            for v in [
                l.requests_per_minute,
                l.requests_per_day,
                l.ask_per_minute,
                l.ingest_per_hour,
                l.ingest_bytes_per_day,
                l.concurrent_requests,
                totals.requests_per_minute,
                totals.requests_per_day,
                totals.ask_per_minute,
                totals.ingest_per_hour,
                totals.ingest_bytes_per_day,
            ]
            .into_iter()
            .flatten()
            {
                if v == 0 {
                    return Err(format!(
                        "{}: {name}: a limit of 0 would refuse everything; remove the key or use 1",
                        path.display()
                    ));
                }
            }
        }
        if !(p.threshold_ratio > 0.0 && p.threshold_ratio <= 1.0) {
            return Err(format!(
                "{}: threshold_ratio must be within (0, 1]",
                path.display()
            ));
        }
        if let Some(d) = &p.default_plan
            && !p.plans.contains_key(d)
        {
            return Err(format!(
                "{}: default_plan {d:?} is not among plans",
                path.display()
            ));
        }
        Ok(p)
    }

    /// Everything that applies to one principal, from three map lookups (the request path
    /// asks once, not once per metric).
    pub fn resolve<'a>(
        &'a self,
        plan: &str,
        organization_id: &str,
        workspace_id: &str,
    ) -> Resolved<'a> {
        Resolved {
            plan: self
                .plans
                .get(plan)
                .or_else(|| self.default_plan.as_ref().and_then(|d| self.plans.get(d))),
            organization: self.organizations.get(organization_id),
            workspace: self.workspaces.get(workspace_id),
        }
    }

    /// The limit for one metric, most specific first: workspace, organization, plan.
    pub fn limit(
        &self,
        plan: &str,
        organization_id: &str,
        workspace_id: &str,
        m: Metric,
    ) -> Option<u64> {
        self.resolve(plan, organization_id, workspace_id).limit(m)
    }
}

/// The limits of one principal: workspace override, organization override, plan.
pub struct Resolved<'a> {
    plan: Option<&'a Limits>,
    organization: Option<&'a Limits>,
    workspace: Option<&'a Limits>,
}

impl Resolved<'_> {
    /// The workspace's own limit for `m`, most specific first.
    pub fn limit(&self, m: Metric) -> Option<u64> {
        [self.workspace, self.organization, self.plan]
            .into_iter()
            .flatten()
            .find_map(|l| l.get(m))
    }

    /// The organization-wide total for `m`: the organization's override, else the plan's.
    pub fn organization_total(&self, m: Metric) -> Option<u64> {
        [self.organization, self.plan]
            .into_iter()
            .flatten()
            .find_map(|l| l.organization.as_ref().and_then(|t| t.get(m)))
    }

    /// Whether any organization-wide total applies (for any metric).
    pub fn has_organization_totals(&self) -> bool {
        [self.organization, self.plan]
            .into_iter()
            .flatten()
            .any(|l| l.organization.is_some())
    }

    pub fn concurrency(&self) -> Option<u64> {
        [self.workspace, self.organization, self.plan]
            .into_iter()
            .flatten()
            .find_map(|l| l.concurrent_requests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_policy_example_loads() {
        let p = Policy::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/quotas.yaml"
        )))
        .unwrap();
        assert_eq!(p.limit("free", "o", "w", Metric::AskPerMinute), Some(30));
        assert_eq!(
            p.limit("mystery", "o", "w", Metric::RequestsPerMinute),
            Some(120)
        );
    }

    #[test]
    fn most_specific_limit_wins() {
        let p: Policy = serde_yaml::from_str(
            "plans:\n  free: {requests_per_minute: 10, ask_per_minute: 2}\ndefault_plan: free\norganizations:\n  org_a: {requests_per_minute: 100}\nworkspaces:\n  ws_b: {ask_per_minute: 50}\n",
        )
        .unwrap();
        assert_eq!(
            p.limit("free", "org_x", "ws_x", Metric::RequestsPerMinute),
            Some(10)
        );
        assert_eq!(
            p.limit("free", "org_a", "ws_x", Metric::RequestsPerMinute),
            Some(100)
        );
        assert_eq!(
            p.limit("free", "org_a", "ws_b", Metric::AskPerMinute),
            Some(50)
        );
        assert_eq!(
            p.limit("unknown_plan", "org_x", "ws_x", Metric::AskPerMinute),
            Some(2)
        );
        assert_eq!(
            p.limit("free", "org_x", "ws_x", Metric::IngestPerHour),
            None
        );
    }
}
