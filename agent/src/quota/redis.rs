//! Budgets in Redis, shared by every agent replica: the same GCRA as the memory limiter,
//! run as one server-side script so checking and advancing all of a request's budgets is
//! atomic across replicas, on Redis's clock (replicas' clocks need not agree). On a Redis
//! failure the configured choice applies — let through uncounted, or refuse — counted in
//! `minirag_agent_quota_backend_errors_total` and logged once per transition.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use super::limiter::{Budget, Decision};
use crate::config::{OnBackendError, QuotasConfig};
use crate::metrics::Metrics;

/// KEYS: budget keys. ARGV: interval and window (µs) per key.
/// Returns {1, tightest index, remaining, µs until full} or {0, refused index, µs to wait}.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local news = {}
local ti, trem, treset = 0, -1, 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[3 * i - 2])
  local window = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local nt = tat + interval * cost
  if nt > now + window then
    return {0, i, nt - window - now}
  end
  news[i] = nt
  local rem = math.floor((now + window - nt) / interval)
  if trem < 0 or rem < trem then ti, trem, treset = i, rem, nt - now end
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%.0f', news[i]), 'PX', math.ceil((news[i] - now) / 1000) + 1000)
end
return {1, ti, trem, treset}
"#;

pub struct RedisLimiter {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    script: redis::Script,
    timeout: Duration,
    prefix: String,
    fail_open: bool,
    healthy: AtomicBool,
    metrics: Arc<Metrics>,
}

impl RedisLimiter {
    pub fn new(cfg: &QuotasConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        let url = cfg
            .redis_url
            .as_deref()
            .ok_or("quotas.redis_url is not set")?;
        let client = redis::Client::open(url).map_err(|e| format!("quotas.redis_url: {e}"))?;
        Ok(Self {
            client,
            conn: OnceCell::new(),
            script: redis::Script::new(GCRA),
            timeout: Duration::from_millis(cfg.redis_timeout_ms),
            prefix: cfg.redis_key_prefix.clone(),
            fail_open: cfg.on_backend_error == OnBackendError::Allow,
            healthy: AtomicBool::new(true),
            metrics,
        })
    }

    async fn run(&self, budgets: &[Budget<'_>]) -> Result<Vec<i64>, String> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                tokio::time::timeout(
                    self.timeout * 10,
                    ConnectionManager::new(self.client.clone()),
                )
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| e.to_string())
            })
            .await?;
        let mut conn = conn.clone();
        let mut inv = self.script.prepare_invoke();
        for b in budgets {
            inv.key(format!("{}{}:{}", self.prefix, b.key, b.metric.name()));
            let window = b.metric.window().as_micros() as u64;
            inv.arg((window / b.limit.max(1)).max(1))
                .arg(window)
                .arg(b.cost.max(1));
        }
        tokio::time::timeout(self.timeout, inv.invoke_async::<Vec<i64>>(&mut conn))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())
    }

    pub async fn check<'a>(&self, budgets: &[Budget<'a>]) -> Decision<'a> {
        match self.run(budgets).await {
            Ok(r) => {
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    crate::log::info(
                        "quota.backend_recovered",
                        "Redis answers again; quotas are enforced",
                    );
                }
                self.metrics.quota_backend_up.set(1);
                decode(budgets, &r)
            }
            Err(e) => {
                self.metrics.quota_backend_errors.inc();
                self.metrics.quota_backend_up.set(0);
                if self.healthy.swap(false, Ordering::Relaxed) {
                    crate::log::error(
                        "quota.backend_down",
                        &format!(
                            "Redis quota backend failed ({e}); requests are {} until it recovers",
                            if self.fail_open {
                                "let through uncounted"
                            } else {
                                "refused with 503"
                            }
                        ),
                    );
                }
                if self.fail_open {
                    Decision::Allowed { tightest: None }
                } else {
                    Decision::BackendDown
                }
            }
        }
    }
}

fn decode<'a>(budgets: &[Budget<'a>], r: &[i64]) -> Decision<'a> {
    let pick = |i: i64| budgets.get((i.max(1) - 1) as usize).cloned();
    match r {
        [1, i, remaining, reset_us] => Decision::Allowed {
            tightest: pick(*i).map(|b| {
                (
                    b,
                    (*remaining).max(0) as u64,
                    ((*reset_us).max(0) as u64).div_ceil(1_000_000),
                )
            }),
        },
        [0, i, wait_us] => match pick(*i) {
            Some(budget) => Decision::Refused {
                budget,
                retry_after: Duration::from_micros((*wait_us).max(0) as u64),
            },
            None => Decision::Allowed { tightest: None },
        },
        _ => Decision::Allowed { tightest: None },
    }
}
