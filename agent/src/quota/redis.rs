//! Budgets in Redis, shared by every agent replica: the same GCRA as the memory limiter,
//! run as one server-side script so checking and advancing all of a request's budgets is
//! atomic across replicas, on Redis's clock (replicas' clocks need not agree). On a Redis
//! failure the configured choice applies — let through uncounted, or refuse — counted in
//! `minirag_agent_quota_backend_errors_total` and logged once per transition.
//!
//! Checks are batched like a group commit: one task owns the connection and has at most
//! one script call in flight; checks that arrive meanwhile queue and go together in the
//! next call. An idle agent pays one round trip per request, as before; a busy one pays
//! one per batch, and the script reads and writes each key once per batch instead of once
//! per request. Every check is still decided exactly, in arrival order, inside one atomic
//! script run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

use super::limiter::{Budget, Decision};
use crate::config::{OnBackendError, QuotasConfig};
use crate::metrics::Metrics;

/// Most checks in one script call: bounds the script's run time (Redis runs nothing else
/// meanwhile) and the size of one request.
const MAX_BATCH: usize = 128;

/// KEYS: the distinct budget keys of the batch.
/// ARGV: the number of distinct budgets S, then S × (key index, limit, window µs); then
/// the number of groups G, then per group: m (how many consecutive checks are alike), n
/// (budgets per check), n × (budget index, cost). Consecutive checks of one workspace are
/// alike, so a busy batch is a few groups and the script parses little per check.
/// Returns four integers per check, in order: {1, tightest index, remaining, µs until
/// full} or {0, refused index, µs to wait, 0}. A refused check spends nothing. Each key
/// is read at most once and written at most once per call.
///
/// GCRA kept as "level at stamp": the budget's used units at a time in µs, draining at
/// limit/window per µs. It is the TAT form rearranged (TAT = stamp + level × window/limit)
/// so that no emission interval is rounded to whole µs — a limit of a billion a minute is
/// 0.06 µs per request — while Redis's µs clock stays exact in a double. A bare number
/// is a TAT in µs written by an earlier version and is read as such.
const GCRA_BATCH: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local a = 1
local nspec = tonumber(ARGV[a]); a = a + 1
local skey, slimit, swin, sper = {}, {}, {}, {}
for s = 1, nspec do
  skey[s], slimit[s], swin[s] = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  sper[s] = slimit[s] / swin[s]
  a = a + 3
end
local level, dirty, out = {}, {}, {}
local function load(k, per_us)
  local v = redis.call('GET', KEYS[k])
  if not v then return 0 end
  local cur
  local sp = string.find(v, ' ', 1, true)
  if sp then
    cur = tonumber(string.sub(v, 1, sp - 1)) - (now - tonumber(string.sub(v, sp + 1))) * per_us
  else
    cur = (tonumber(v) - now) * per_us
  end
  if cur < 0 then return 0 end
  return cur
end
local bs, bc = {}, {}
local o = 0
local ngroups = tonumber(ARGV[a]); a = a + 1
for _ = 1, ngroups do
  local m, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  for i = 1, n do
    bs[i], bc[i] = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    a = a + 2
  end
  for _ = 1, m do
    local refused, wait = 0, 0
    local ti, trem, treset = 0, -1, 0
    for i = 1, n do
      local s = bs[i]
      local k = skey[s]
      local cur = level[k]
      if cur == nil then
        cur = load(k, sper[s])
        level[k] = cur
      end
      local nl = cur + bc[i]
      if nl > slimit[s] then
        -- A cost above the whole limit never fits: the hint is one window.
        refused, wait = i, math.min(math.ceil((nl - slimit[s]) / sper[s]), swin[s])
        break
      end
      local rem = math.floor(slimit[s] - nl)
      if trem < 0 or rem < trem then ti, trem, treset = i, rem, math.ceil(nl / sper[s]) end
    end
    if refused > 0 then
      out[o + 1], out[o + 2], out[o + 3], out[o + 4] = 0, refused, wait, 0
    else
      for i = 1, n do
        local s = bs[i]
        local k = skey[s]
        level[k] = level[k] + bc[i]
        dirty[k] = sper[s]
      end
      out[o + 1], out[o + 2], out[o + 3], out[o + 4] = 1, ti, trem, treset
    end
    o = o + 4
  end
end
for k, per_us in pairs(dirty) do
  redis.call('SET', KEYS[k], string.format('%.17g %d', level[k], now), 'PX', math.ceil(level[k] / per_us / 1000) + 1000)
end
return out
"#;

/// One request's budgets as the script needs them.
struct Check {
    budgets: Vec<ScriptBudget>,
    reply: oneshot::Sender<Result<[i64; 4], String>>,
}

struct ScriptBudget {
    key: String,
    limit: u64,
    window_us: u64,
    cost: u64,
}

pub struct RedisLimiter {
    client: redis::Client,
    timeout: Duration,
    prefix: String,
    max_pending: usize,
    fail_open: bool,
    healthy: AtomicBool,
    metrics: Arc<Metrics>,
    /// The batcher's queue, started with the first check (a runtime exists by then).
    queue: OnceLock<mpsc::Sender<Check>>,
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
            timeout: Duration::from_millis(cfg.redis_timeout_ms),
            prefix: cfg.redis_key_prefix.clone(),
            max_pending: cfg.redis_max_pending.max(1),
            fail_open: cfg.on_backend_error == OnBackendError::Allow,
            healthy: AtomicBool::new(true),
            metrics,
            queue: OnceLock::new(),
        })
    }

    fn queue(&self) -> &mpsc::Sender<Check> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(self.max_pending);
            tokio::spawn(batcher(self.client.clone(), self.timeout, rx));
            tx
        })
    }

    async fn run(&self, budgets: &[Budget<'_>]) -> Result<[i64; 4], String> {
        let (reply, answer) = oneshot::channel();
        let check = Check {
            budgets: budgets
                .iter()
                .map(|b| {
                    let window_us = u64::try_from(b.metric.window().as_micros()).unwrap_or(0);
                    ScriptBudget {
                        key: format!("{}{}:{}", self.prefix, b.key, b.metric.name()),
                        limit: b.limit.max(1),
                        window_us,
                        cost: b.cost.max(1),
                    }
                })
                .collect(),
            reply,
        };
        // At most one batch runs ahead of this check, then its own: two round-trip budgets.
        let waited = tokio::time::timeout(self.timeout * 2, async {
            self.queue()
                .send(check)
                .await
                .map_err(|_| "quota batcher stopped".to_string())?;
            answer
                .await
                .map_err(|_| "quota batcher stopped".to_string())?
        })
        .await;
        waited.map_err(|_| "timed out".to_string())?
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

/// Owns the connection: takes every queued check (up to `MAX_BATCH`), runs them in one
/// script call, answers each. Ends when the limiter (the queue's sender) is dropped.
async fn batcher(client: redis::Client, timeout: Duration, mut rx: mpsc::Receiver<Check>) {
    let script = redis::Script::new(GCRA_BATCH);
    let mut conn: Option<ConnectionManager> = None;
    let mut batch: Vec<Check> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // A caller that gave up (timed out, or its client left) is not counted.
        batch.retain(|c| !c.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let result = match connection(&client, &mut conn, timeout).await {
            Ok(c) => tokio::time::timeout(timeout, invoke(&script, c, &batch))
                .await
                .unwrap_or_else(|_| Err("timed out".to_string())),
            Err(e) => Err(e),
        };
        match result {
            Ok(r) if r.len() == 4 * batch.len() => {
                for (check, answer) in batch.drain(..).zip(r.chunks_exact(4)) {
                    let _ = check
                        .reply
                        .send(Ok([answer[0], answer[1], answer[2], answer[3]]));
                }
            }
            Ok(r) => {
                let e = format!(
                    "script answered {} values for {} checks",
                    r.len(),
                    batch.len()
                );
                for check in batch.drain(..) {
                    let _ = check.reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                for check in batch.drain(..) {
                    let _ = check.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

async fn connection<'c>(
    client: &redis::Client,
    conn: &'c mut Option<ConnectionManager>,
    timeout: Duration,
) -> Result<&'c mut ConnectionManager, String> {
    if conn.is_none() {
        // Connecting includes the handshake; allow it more than one round trip.
        let c = tokio::time::timeout(timeout * 10, ConnectionManager::new(client.clone()))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        *conn = Some(c);
    }
    conn.as_mut().ok_or_else(|| "no connection".to_string())
}

async fn invoke(
    script: &redis::Script,
    conn: &mut ConnectionManager,
    batch: &[Check],
) -> Result<Vec<i64>, String> {
    let mut inv = script.prepare_invoke();
    // Distinct keys go to KEYS once (Redis Cluster needs every key declared) and distinct
    // (key, limit, window) once to ARGV; checks refer to them by 1-based index.
    let mut keys: crate::FastMap<&str, u64> = crate::FastMap::default();
    let mut specs: crate::FastMap<(&str, u64, u64), u64> = crate::FastMap::default();
    let mut spec_args: Vec<u64> = vec![0];
    // Per check: (budget index, cost) pairs, then grouped into runs of equal checks.
    let mut groups: Vec<(u64, Vec<(u64, u64)>)> = Vec::new();
    for check in batch {
        let mut this: Vec<(u64, u64)> = Vec::with_capacity(check.budgets.len());
        for b in &check.budgets {
            let next_key = keys.len() as u64 + 1;
            let k = *keys.entry(b.key.as_str()).or_insert_with(|| {
                inv.key(b.key.as_str());
                next_key
            });
            let next_spec = specs.len() as u64 + 1;
            let s = *specs
                .entry((b.key.as_str(), b.limit, b.window_us))
                .or_insert_with(|| {
                    spec_args.extend([k, b.limit, b.window_us]);
                    next_spec
                });
            this.push((s, b.cost));
        }
        match groups.last_mut() {
            Some((m, last)) if *last == this => *m += 1,
            _ => groups.push((1, this)),
        }
    }
    spec_args[0] = specs.len() as u64;
    inv.arg(spec_args);
    let mut group_args: Vec<u64> = Vec::with_capacity(1 + groups.len() * 6);
    group_args.push(groups.len() as u64);
    for (m, budgets) in &groups {
        group_args.extend([*m, budgets.len() as u64]);
        for (s, cost) in budgets {
            group_args.extend([*s, *cost]);
        }
    }
    inv.arg(group_args);
    inv.invoke_async::<Vec<i64>>(conn)
        .await
        .map_err(|e| e.to_string())
}

fn decode<'a>(budgets: &[Budget<'a>], r: &[i64; 4]) -> Decision<'a> {
    let pick = |i: i64| budgets.get((i.max(1) - 1) as usize).cloned();
    match *r {
        [1, i, remaining, reset_us] => Decision::Allowed {
            tightest: pick(i).map(|b| {
                (
                    b,
                    remaining.max(0) as u64,
                    (reset_us.max(0) as u64).div_ceil(1_000_000),
                )
            }),
        },
        [0, i, wait_us, _] => match pick(i) {
            Some(budget) => Decision::Refused {
                budget,
                retry_after: Duration::from_micros(wait_us.max(0) as u64),
            },
            None => Decision::Allowed { tightest: None },
        },
        _ => Decision::Allowed { tightest: None },
    }
}
