//! Shared budgets: two agents on one Redis enforce one budget; Redis loss behaves as
//! configured; the Redis limiter itself decides batched concurrent checks exactly. Needs
//! `redis-server` (CI installs it); elsewhere the tests say why they skip.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

struct RedisServer(Child, u16);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server() -> Option<RedisServer> {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server is required in CI (.ci/run installs it)"
        );
        eprintln!("skipping: redis-server is not installed (apt-get install redis-server)");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = RedisServer(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
        port,
    );
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(server);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("redis-server did not start");
}

#[tokio::test]
async fn two_agents_share_one_budget_and_redis_loss_follows_the_configured_choice() {
    let Some(redis) = redis_server() else { return };
    let rag = start_rag_core();
    let dir = temp_dir("redis-policy");
    let policy = dir.join("quotas.yaml");
    std::fs::write(&policy, "plans:\n  free:\n    requests_per_minute: 6\n").unwrap();
    let yaml = |on_error: &str| {
        format!(
            "identity:\n  provider: introspect\nquotas:\n  policy_file: {}\n  backend: redis\n  redis_url: redis://127.0.0.1:{}/\n  redis_timeout_ms: 300\n  on_backend_error: {on_error}\n",
            policy.display(),
            redis.1
        )
    };
    let env = [("MINIRAG_INTERNAL_TOKEN", TOKEN)];
    let open = Agent::start_env(&rag.base, &yaml("allow"), &env);
    let closed = Agent::start_env(&rag.base, &yaml("deny"), &env);
    let c = client();

    // 16 concurrent requests spread over both replicas: 6 pass in all.
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let url = if i % 2 == 0 {
                open.url("/api/v1/sources")
            } else {
                closed.url("/api/v1/sources")
            };
            tokio::spawn(c.get(url).bearer_auth(&rag.key).send())
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap().unwrap().status().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        6,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        10,
        "{statuses:?}"
    );

    // Redis goes away: fail-open lets requests through, fail-closed refuses with 503.
    drop(redis);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = c
        .get(open.url("/api/v1/sources"))
        .bearer_auth(&rag.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "allow: let through uncounted");
    let r = c
        .get(closed.url("/api/v1/sources"))
        .bearer_auth(&rag.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "quota_backend_unavailable");
    let _ = c
        .get(open.url("/api/v1/sources"))
        .bearer_auth(&rag.key)
        .send()
        .await
        .unwrap();
    let m = scrape(&c, &open).await;
    assert!(m.contains("minirag_agent_quota_backend_up 0"), "{m}");
    assert!(
        !m.contains("minirag_agent_quota_backend_errors_total 0\n"),
        "{m}"
    );
    let downs = open
        .stderr
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("\"quota.backend_down\""))
        .count();
    assert_eq!(downs, 1, "logged once per transition");
}

// The Redis limiter on its own (no proxy): exactness of batched checks, refusals, the
// stored form and large limits.

use std::sync::Arc;

use minirag_agent::config::QuotasConfig;
use minirag_agent::metrics::Metrics;
use minirag_agent::quota::redis::RedisLimiter;
use minirag_agent::quota::{Budget, Decision, Metric, Scope};

fn limiter(port: u16) -> Arc<RedisLimiter> {
    let cfg = QuotasConfig {
        redis_url: Some(format!("redis://127.0.0.1:{port}/")),
        redis_timeout_ms: 2_000,
        ..QuotasConfig::default()
    };
    Arc::new(RedisLimiter::new(&cfg, Arc::new(Metrics::new(None))).unwrap())
}

fn budget(key: &str, scope: Scope, limit: u64, cost: u64) -> Budget<'static> {
    Budget {
        key: key.to_owned().into(),
        scope,
        metric: Metric::RequestsPerMinute,
        limit,
        cost,
    }
}

/// Many concurrent checks go in a few batched calls; exactly the limit passes, per
/// workspace and for the organization total across them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_checks_are_exact_under_concurrency() {
    let Some(s) = redis_server() else { return };
    let l = limiter(s.1);
    let tasks: Vec<_> = (0..600)
        .map(|i| {
            let l = Arc::clone(&l);
            tokio::spawn(async move {
                // Workspaces a (limit 100) and b (limit 1000) share org o (limit 250).
                let (ws, limit) = if i % 2 == 0 { ("a", 100) } else { ("b", 1000) };
                let b = [
                    budget(ws, Scope::Workspace, limit, 1),
                    budget("org:o", Scope::Organization, 250, 1),
                ];
                match l.check(&b).await {
                    Decision::Allowed { tightest: Some(_) } => Some(ws),
                    Decision::Refused { .. } => None,
                    d => panic!("{d:?}"),
                }
            })
        })
        .collect();
    let mut allowed = std::collections::HashMap::new();
    for t in tasks {
        if let Some(ws) = t.await.unwrap() {
            *allowed.entry(ws).or_insert(0) += 1;
        }
    }
    assert_eq!(allowed.values().sum::<i32>(), 250, "{allowed:?}");
    assert_eq!(allowed["a"], 100, "{allowed:?}");
    assert_eq!(allowed["b"], 150, "{allowed:?}");

    // One workspace only: consecutive checks are alike and go as groups.
    let tasks: Vec<_> = (0..400)
        .map(|_| {
            let l = Arc::clone(&l);
            tokio::spawn(async move {
                let b = [budget("c", Scope::Workspace, 120, 1)];
                matches!(l.check(&b).await, Decision::Allowed { .. })
            })
        })
        .collect();
    let mut passed = 0;
    for t in tasks {
        passed += usize::from(t.await.unwrap());
    }
    assert_eq!(passed, 120);
}

#[tokio::test]
async fn a_refused_check_spends_nothing_and_says_when_to_retry() {
    let Some(s) = redis_server() else { return };
    let l = limiter(s.1);
    // Cost 3 of a limit of 4: the second such check is refused, and one of cost 1
    // still fits after it.
    let big = [budget("w", Scope::Workspace, 4, 3)];
    let small = [budget("w", Scope::Workspace, 4, 1)];
    assert!(matches!(
        l.check(&big).await,
        Decision::Allowed {
            tightest: Some((_, 1, _))
        }
    ));
    match l.check(&big).await {
        Decision::Refused { retry_after, .. } => {
            assert!(retry_after > Duration::from_secs(25), "{retry_after:?}");
            assert!(retry_after <= Duration::from_secs(30), "{retry_after:?}");
        }
        d => panic!("{d:?}"),
    }
    assert!(matches!(
        l.check(&small).await,
        Decision::Allowed {
            tightest: Some((_, 0, _))
        }
    ));
    assert!(matches!(l.check(&small).await, Decision::Refused { .. }));
    // A cost above the whole limit: refused, with a one-window hint at most.
    match l
        .check(&[budget("w2", Scope::Workspace, 4, u64::MAX)])
        .await
    {
        Decision::Refused { retry_after, .. } => {
            assert!(retry_after <= Duration::from_secs(60), "{retry_after:?}")
        }
        d => panic!("{d:?}"),
    }
}

/// A key an earlier version wrote (a bare TAT in µs) is read as that TAT.
#[tokio::test]
async fn an_earlier_versions_tat_is_honoured() {
    let Some(s) = redis_server() else { return };
    let l = limiter(s.1);
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", s.1)).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    // Limit 4 a minute: a TAT 30 s ahead is 2 used; one more leaves 1.
    let key = format!(
        "{}old:requests_per_minute",
        QuotasConfig::default().redis_key_prefix
    );
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(now_us + 30_000_000)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(matches!(
        l.check(&[budget("old", Scope::Workspace, 4, 1)]).await,
        Decision::Allowed {
            tightest: Some((_, 1, _))
        }
    ));
}

/// Limits far above a µs per request stay exact: a whole-µs emission interval would
/// make a billion a minute into sixty million (and the usage ratio 0.94 at once).
#[tokio::test]
async fn huge_limits_are_not_rounded_to_whole_microseconds() {
    let Some(s) = redis_server() else { return };
    let l = limiter(s.1);
    let b = [budget("big", Scope::Workspace, 1_000_000_000, 1)];
    for expected in [999_999_999, 999_999_998] {
        match l.check(&b).await {
            Decision::Allowed {
                tightest: Some((_, remaining, reset)),
            } => {
                // A few units drain back between the two calls at most.
                assert!(
                    remaining >= expected && remaining <= expected + 1,
                    "{remaining}"
                );
                assert!(reset <= 1, "{reset}");
            }
            d => panic!("{d:?}"),
        }
    }
    // Byte budgets: a day's window, a cost of many units.
    let bytes = |cost| Budget {
        key: "bytes".into(),
        scope: Scope::Workspace,
        metric: Metric::IngestBytesPerDay,
        limit: 10_000_000_000,
        cost,
    };
    assert!(matches!(
        l.check(&[bytes(9_000_000_000)]).await,
        Decision::Allowed {
            tightest: Some((_, 1_000_000_000, _))
        }
    ));
    // 100 kB over: the bucket drains ~0.12 bytes/µs, far less between these calls.
    assert!(matches!(
        l.check(&[bytes(1_000_100_000)]).await,
        Decision::Refused { .. }
    ));
}
