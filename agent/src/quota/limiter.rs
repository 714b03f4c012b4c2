//! GCRA (generic cell rate algorithm): each budget is one number, the theoretical arrival
//! time (TAT). A limit of L per window W admits a burst of L, then one request every W/L.
//! All the budgets a request counts against (its workspace's and, when the policy sets
//! them, its organization's totals) are checked and advanced under one lock, so
//! concurrent requests can never overshoot and a refused request consumes nothing.

use std::borrow::Cow;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::policy::Metric;

/// Whose budget: one workspace, or all workspaces of an organization together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Workspace,
    Organization,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Self::Workspace => "workspace",
            Self::Organization => "organization",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Budget<'a> {
    /// The budget's owner: a workspace id, or `org:<organization id>` (borrowed from the
    /// request where it can be: this is built for every request).
    pub key: Cow<'a, str>,
    pub scope: Scope,
    pub metric: Metric,
    pub limit: u64,
    /// Units this request spends: 1, or its body bytes for byte budgets.
    pub cost: u64,
}

/// At most one budget per metric and scope.
pub const MAX_BUDGETS: usize = 2 * Metric::COUNT;

#[derive(Debug, Clone)]
pub enum Decision<'a> {
    /// Allowed; the tightest budget's (limit, remaining, seconds until full).
    Allowed {
        tightest: Option<(Budget<'a>, u64, u64)>,
    },
    Refused {
        budget: Budget<'a>,
        retry_after: Duration,
    },
    /// The shared backend is unreachable and configured to fail closed.
    BackendDown,
}

pub struct Limiter {
    start: Instant,
    /// budget key → TAT per metric (nanoseconds since `start`; 0 = untouched). Keyed by
    /// the owner alone so the hot path looks up by `&str` without allocating.
    tat: Mutex<crate::FastMap<String, Tats>>,
    max_workspaces: usize,
}

type Tats = [u64; Metric::COUNT];

/// The owners one request can spend from: its workspace and its organization.
const MAX_OWNERS: usize = 2;

impl Limiter {
    pub fn new(max_budgets: usize) -> Self {
        Self {
            start: Instant::now(),
            tat: Mutex::new(crate::FastMap::default()),
            max_workspaces: (max_budgets / Metric::COUNT).max(1),
        }
    }

    pub fn check<'a>(&self, budgets: &[Budget<'a>]) -> Decision<'a> {
        self.check_at(budgets, Instant::now())
    }

    pub fn check_at<'a>(&self, budgets: &[Budget<'a>], now: Instant) -> Decision<'a> {
        // u64 nanoseconds last 584 years; 128-bit division is a library call per request.
        let now = u64::try_from(now.saturating_duration_since(self.start).as_nanos())
            .unwrap_or(u64::MAX / 2);
        let mut map = match self.tat.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        // Each owner is looked up once: its TATs are copied, advanced on the copy, and
        // written back only when every budget of the request allows it.
        let mut owners: [Option<(&str, Tats, bool)>; MAX_OWNERS] = [None; MAX_OWNERS];
        let mut tightest: Option<(Budget<'a>, u64, u64)> = None;
        for b in budgets.iter().take(MAX_BUDGETS) {
            let key = b.key.as_ref();
            let slot = match owners.iter().position(|o| o.is_some_and(|o| o.0 == key)) {
                Some(i) => i,
                None => match owners.iter().position(Option::is_none) {
                    Some(i) => {
                        let stored = map.get(key);
                        owners[i] =
                            Some((key, stored.copied().unwrap_or_default(), stored.is_some()));
                        i
                    }
                    // More owners than a request can have: not counted, like a full table.
                    None => continue,
                },
            };
            let Some((_, tats, _)) = owners[slot].as_mut() else {
                continue;
            };
            let window = window_nanos(b.metric);
            let interval = (window / b.limit.max(1)).max(1);
            let new_tat = tats[b.metric.index()]
                .max(now)
                .saturating_add(interval.saturating_mul(b.cost.max(1)));
            // Allowed while the new TAT stays within one window of now.
            let horizon = now + window;
            if new_tat > horizon {
                // A cost above the whole limit never fits: the hint is one window.
                let retry = (new_tat - horizon).min(window);
                return Decision::Refused {
                    budget: b.clone(),
                    retry_after: Duration::from_nanos(retry),
                };
            }
            let remaining = (horizon - new_tat) / interval;
            let reset = (new_tat - now).div_ceil(1_000_000_000);
            if tightest.as_ref().is_none_or(|t| remaining < t.1) {
                tightest = Some((b.clone(), remaining, reset));
            }
            tats[b.metric.index()] = new_tat;
        }
        for (key, tats, existed) in owners.into_iter().flatten() {
            if existed {
                if let Some(entry) = map.get_mut(key) {
                    *entry = tats;
                }
                continue;
            }
            if map.len() >= self.max_workspaces {
                // A TAT in the past is the same as no entry: drop those first.
                map.retain(|_, t| t.iter().any(|v| *v > now));
                if map.len() >= self.max_workspaces {
                    // Still full: this owner goes uncounted rather than grow memory.
                    continue;
                }
            }
            map.insert(key.to_owned(), tats);
        }
        Decision::Allowed { tightest }
    }
}

fn window_nanos(m: Metric) -> u64 {
    // Windows are at most a day: far inside u64 nanoseconds.
    u64::try_from(m.window().as_nanos()).unwrap_or(u64::MAX / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: u64) -> Budget<'static> {
        Budget {
            key: "ws".into(),
            scope: Scope::Workspace,
            metric: Metric::RequestsPerMinute,
            limit,
            cost: 1,
        }
    }

    #[test]
    fn burst_of_limit_then_one_per_interval() {
        let l = Limiter::new(100);
        let t0 = Instant::now();
        let b = [budget(6)];
        for i in 0..6 {
            assert!(
                matches!(l.check_at(&b, t0), Decision::Allowed { .. }),
                "request {i}"
            );
        }
        match l.check_at(&b, t0) {
            Decision::Refused { retry_after, .. } => assert!(
                retry_after <= Duration::from_secs(10) && retry_after > Duration::from_secs(9)
            ),
            d => panic!("{d:?}"),
        }
        // 60 s / 6 = 10 s later one more is allowed.
        assert!(matches!(
            l.check_at(&b, t0 + Duration::from_secs(10)),
            Decision::Allowed { .. }
        ));
        assert!(matches!(
            l.check_at(&b, t0 + Duration::from_secs(10)),
            Decision::Refused { .. }
        ));
    }

    #[test]
    fn an_organization_total_binds_across_its_workspaces() {
        let l = Limiter::new(100);
        let t0 = Instant::now();
        let req = |ws: &'static str| {
            [
                Budget {
                    key: ws.into(),
                    scope: Scope::Workspace,
                    metric: Metric::RequestsPerMinute,
                    limit: 3,
                    cost: 1,
                },
                Budget {
                    key: "org:o1".into(),
                    scope: Scope::Organization,
                    metric: Metric::RequestsPerMinute,
                    limit: 4,
                    cost: 1,
                },
            ]
        };
        for ws in ["a", "a", "a", "b"] {
            assert!(matches!(l.check_at(&req(ws), t0), Decision::Allowed { .. }));
        }
        // "a" is at its own limit; "b" has room but the organization does not.
        match l.check_at(&req("b"), t0) {
            Decision::Refused { budget, .. } => assert_eq!(budget.scope, Scope::Organization),
            d => panic!("{d:?}"),
        }
        match l.check_at(&req("a"), t0) {
            Decision::Refused { budget, .. } => assert_eq!(budget.scope, Scope::Workspace),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn byte_budgets_spend_the_request_size() {
        let l = Limiter::new(100);
        let t0 = Instant::now();
        let b = |cost| Budget {
            key: "ws".into(),
            scope: Scope::Workspace,
            metric: Metric::IngestBytesPerDay,
            limit: 1000,
            cost,
        };
        assert!(matches!(
            l.check_at(&[b(600)], t0),
            Decision::Allowed { .. }
        ));
        assert!(matches!(
            l.check_at(&[b(500)], t0),
            Decision::Refused { .. }
        ));
        match l.check_at(&[b(400)], t0) {
            Decision::Allowed {
                tightest: Some((_, remaining, _)),
            } => assert_eq!(remaining, 0),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn a_cost_above_the_whole_limit_is_refused_with_a_one_window_hint() {
        let l = Limiter::new(100);
        let t0 = Instant::now();
        let b = |limit, cost| Budget {
            key: "ws".into(),
            scope: Scope::Workspace,
            metric: Metric::IngestBytesPerDay,
            limit,
            cost,
        };
        // interval × cost overflows u64 here: saturates to a refusal, not a wrap.
        for (limit, cost) in [(1, u64::MAX), (1000, 1001), (3, u64::MAX / 2)] {
            match l.check_at(&[b(limit, cost)], t0) {
                Decision::Refused { retry_after, .. } => {
                    assert!(
                        retry_after <= Duration::from_secs(86_400),
                        "{retry_after:?}"
                    )
                }
                d => panic!("{limit} {cost}: {d:?}"),
            }
        }
        // Nothing was spent by those.
        assert!(matches!(
            l.check_at(&[b(1000, 1000)], t0),
            Decision::Allowed { .. }
        ));
    }

    #[test]
    fn a_refused_request_consumes_no_budget() {
        let l = Limiter::new(100);
        let t0 = Instant::now();
        let loose = Budget {
            key: "ws".into(),
            scope: Scope::Workspace,
            metric: Metric::RequestsPerDay,
            limit: 1000,
            cost: 1,
        };
        let tight = Budget {
            key: "ws".into(),
            scope: Scope::Workspace,
            metric: Metric::AskPerMinute,
            limit: 1,
            cost: 1,
        };
        assert!(matches!(
            l.check_at(&[loose.clone(), tight.clone()], t0),
            Decision::Allowed { .. }
        ));
        for _ in 0..5 {
            assert!(matches!(
                l.check_at(&[loose.clone(), tight.clone()], t0),
                Decision::Refused { .. }
            ));
        }
        match l.check_at(std::slice::from_ref(&loose), t0) {
            Decision::Allowed {
                tightest: Some((_, remaining, _)),
            } => assert_eq!(remaining, 998),
            d => panic!("{d:?}"),
        }
    }
}
