//! A real WebSocket conversation through the agent, and load shedding at the limit.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket echo server (RFC 6455 handshake and framing by tungstenite).
async fn ws_echo_upstream() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() || m.is_binary() {
                        let _ = ws.send(m).await;
                    } else if m.is_close() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_echo_through_the_agent() {
    let upstream = ws_echo_upstream().await;
    let agent = Agent::start(&format!("http://{upstream}"), "");
    let addr = agent.base.trim_start_matches("http://").to_string();
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .expect("handshake through the agent");
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().get("x-request-id").is_some());
    for i in 0..5 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), format!("hello {i}"));
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn requests_over_the_concurrency_limit_are_shed_with_503() {
    let up = start_upstream().await;
    let agent = Agent::start(
        &format!("http://{}", up.addr),
        "limits:\n  max_concurrent_requests: 2\n",
    );
    let c = client();
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(c.get(agent.url("/slow")).send()))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = c.get(agent.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "overloaded");
    for s in slow {
        assert_eq!(s.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(
        c.get(agent.url("/x")).send().await.unwrap().status(),
        200,
        "capacity returns"
    );
    let m = scrape(&c, &agent).await;
    assert!(
        m.contains("minirag_agent_http_shed_requests_total 1"),
        "{m}"
    );
}
