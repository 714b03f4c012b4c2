//! Config reload while serving: applied without a failed request; a bad file is refused.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;

#[tokio::test]
async fn config_reload_under_load_fails_no_request_and_refuses_bad_files() {
    let up = start_upstream().await;
    let agent = Agent::start(
        &format!("http://{}", up.addr),
        "security_headers:\n  frame_options: DENY\n",
    );
    let c = client();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (c, url, stop, ok, failed) = (
            c.clone(),
            agent.url("/api/v1/sources"),
            stop.clone(),
            ok.clone(),
            failed.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cfg = agent.dir.join("agent.yaml");
    // Write to a temp file and rename, as editors and ConfigMaps do.
    let tmp = agent.dir.join("agent.yaml.tmp");
    std::fs::write(&tmp, "security_headers:\n  frame_options: SAMEORIGIN\npath_guard:\n  blocked: [\"/metrics\", \"/internal/*\", \"/secret\"]\n").unwrap();
    std::fs::rename(&tmp, &cfg).unwrap();
    let mut applied = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = c.get(agent.url("/x")).send().await.unwrap();
        if r.headers()["x-frame-options"] == "SAMEORIGIN" {
            applied = true;
            break;
        }
    }
    assert!(applied, "new config applied");
    assert_eq!(
        c.get(agent.url("/secret")).send().await.unwrap().status(),
        404
    );

    // An invalid file is refused; the running config stays.
    std::fs::write(
        &cfg,
        "security_headers:\n  frame_options: DENY\nlimits:\n  bogus_key: 1\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = c.get(agent.url("/x")).send().await.unwrap();
    assert_eq!(r.headers()["x-frame-options"], "SAMEORIGIN");
    let rejected = agent
        .stderr
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("config.reload_rejected") && l.contains("bogus_key"));
    assert!(rejected, "{:?}", agent.stderr.lock().unwrap());

    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 200, "load ran: {ok}");
    assert_eq!(
        failed, 0,
        "{failed} requests failed during reloads ({ok} ok)"
    );
    let effective: serde_json::Value = c
        .get(format!("{}/config", agent.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(effective["security_headers"]["frame_options"], "SAMEORIGIN");
}
