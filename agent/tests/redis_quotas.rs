//! Shared budgets: two agents on one Redis enforce one budget; Redis loss behaves as
//! configured. Needs `redis-server` (CI installs it); elsewhere the test says why it skips.

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
