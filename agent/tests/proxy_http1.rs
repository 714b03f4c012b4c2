//! The HTTP/1.1 fast path against an upstream that speaks raw bytes, so every framing the
//! protocol allows (and some misbehaviour) can be produced exactly: chunked with trailers,
//! close-delimited, interim 1xx, HEAD, 204, hop-by-hop headers, connections the upstream
//! drops while pooled, pipelined clients, and what the fast path hands to hyper.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::Value;

type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// What the raw upstream sends back for one request: exact bytes, then close or not.
type Answer = dyn Fn(&str, &[u8]) -> (Vec<u8>, bool) + Send + Sync;

struct RawUpstream {
    addr: SocketAddr,
    seen: Seen,
    connections: Arc<AtomicUsize>,
}

fn raw_upstream(
    answer: impl Fn(&str, &[u8]) -> (Vec<u8>, bool) + Send + Sync + 'static,
) -> RawUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let connections = Arc::new(AtomicUsize::new(0));
    let answer: Arc<Answer> = Arc::new(answer);
    let (s, n) = (Arc::clone(&seen), Arc::clone(&connections));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            n.fetch_add(1, Ordering::SeqCst);
            let (s, answer) = (Arc::clone(&s), Arc::clone(&answer));
            std::thread::spawn(move || serve_raw(stream, &s, &*answer));
        }
    });
    RawUpstream {
        addr,
        seen,
        connections,
    }
}

fn serve_raw(stream: TcpStream, seen: &Seen, answer: &Answer) {
    let mut out = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let lower = head.to_ascii_lowercase();
        let mut body = Vec::new();
        if lower.contains("transfer-encoding: chunked") {
            loop {
                let mut size = String::new();
                r.read_line(&mut size).unwrap();
                let n = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0u8; n + 2];
                r.read_exact(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(l) = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
        {
            body = vec![0u8; l.trim().parse().unwrap()];
            r.read_exact(&mut body).unwrap();
        }
        let (bytes, close) = answer(&head, &body);
        seen.lock().unwrap().push((head, body));
        if out.write_all(&bytes).is_err() || close {
            return;
        }
    }
}

fn request_line(head: &str) -> (&str, &str) {
    let mut parts = head.split(' ');
    (parts.next().unwrap_or(""), parts.next().unwrap_or(""))
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads one response with a Content-Length body from a raw client connection.
fn read_response(r: &mut BufReader<TcpStream>) -> (String, String) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "connection closed mid-head: {head}"
        );
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let len: usize = head
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
    (head, String::from_utf8(body).unwrap())
}

const BIG: usize = 3 * 1024 * 1024 + 7;

/// The access lines once one for each of `paths` has been written (the log is flushed
/// about every second; a loaded machine may take longer).
async fn access_lines_for(agent: &Agent, paths: &[&str]) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let lines = agent.access_lines();
        let all = paths.iter().all(|p| {
            lines
                .iter()
                .any(|l| l["event"] == "http.access" && l["path"] == *p)
        });
        if all || std::time::Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn every_response_framing_passes_through_and_connections_are_reused() {
    let up = raw_upstream(|head, _| {
        let (method, path) = request_line(head);
        let bytes = match path {
            "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n".to_vec(),
            "/close" => return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the upstream closes".to_vec(), true),
            "/head" if method == "HEAD" => b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n".to_vec(),
            "/nocontent" => b"HTTP/1.1 204 No Content\r\nX-Up: 1\r\n\r\n".to_vec(),
            "/early" => b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            "/hop" => b"HTTP/1.1 200 OK\r\nConnection: x-secret, keep-alive\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\nX-Up: 1\r\nx-frame-options: SAMEORIGIN\r\nX-Request-Id: from-upstream\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            "/big" => {
                let mut v = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n").into_bytes();
                v.extend((0..BIG).map(|i| (i % 251) as u8));
                v
            }
            other => ok(other),
        };
        (bytes, false)
    });
    let agent = Agent::start(&format!("http://{}", up.addr), "");
    let c = client();

    for _ in 0..20 {
        let r = c.get(agent.url("/chunked")).send().await.unwrap();
        assert_eq!(r.headers()["x-up"], "1");
        assert!(r.headers().contains_key("x-request-id"));
        assert_eq!(r.text().await.unwrap(), "hello world");
    }
    assert!(
        up.connections.load(Ordering::SeqCst) <= 2,
        "sequential requests reuse the upstream connection ({} opened)",
        up.connections.load(Ordering::SeqCst)
    );

    let r = c.get(agent.url("/close")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "until the upstream closes");

    let r = c.head(agent.url("/head")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "42");

    let r = c.get(agent.url("/nocontent")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["x-up"], "1");

    let r = c.get(agent.url("/early")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");

    let r = c.get(agent.url("/hop")).send().await.unwrap();
    assert_eq!(r.headers()["x-up"], "1");
    assert!(!r.headers().contains_key("x-secret"), "named by Connection");
    assert!(!r.headers().contains_key("keep-alive"));
    // The upstream's own security header wins over the agent's default; the request id
    // is always the agent's.
    let frame: Vec<_> = r.headers().get_all("x-frame-options").iter().collect();
    assert_eq!(frame, ["SAMEORIGIN"]);
    let ids: Vec<_> = r.headers().get_all("x-request-id").iter().collect();
    assert_eq!(ids.len(), 1);
    assert_ne!(ids[0], "from-upstream");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.text().await.unwrap(), "ok");

    let body = c
        .get(agent.url("/big"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len(), BIG);
    assert!(body.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));

    // Still one working connection after all of that.
    assert_eq!(
        c.get(agent.url("/after"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "/after"
    );

    let lines = access_lines_for(
        &agent,
        &["/chunked", "/big", "/close", "/nocontent", "/early"],
    )
    .await;
    let line = |path: &str| -> Value {
        lines
            .iter()
            .rev()
            .find(|l| l["event"] == "http.access" && l["path"] == path)
            .cloned()
            .unwrap_or_else(|| panic!("access line for {path}"))
    };
    assert_eq!(
        line("/chunked")["bytes_out"],
        11,
        "payload bytes, not framing"
    );
    assert_eq!(line("/big")["bytes_out"], BIG as u64);
    assert_eq!(line("/close")["bytes_out"], 25);
    assert_eq!(line("/nocontent")["status_code"], 204);
    assert_eq!(line("/early")["status_code"], 200);
}

#[tokio::test]
async fn pipelined_requests_http10_and_chunked_uploads() {
    let up = raw_upstream(|head, body| {
        let (_, path) = request_line(head);
        let text = format!("{path} {}", String::from_utf8_lossy(body));
        (ok(text.trim_end()), false)
    });
    let agent = Agent::start(&format!("http://{}", up.addr), "");
    let addr = agent.base.trim_start_matches("http://").to_string();

    let got = tokio::task::spawn_blocking(move || {
        // Two requests in one write: answered in order on the same connection.
        let s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = s.try_clone().unwrap();
        w.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody").unwrap();
        let mut r = BufReader::new(s);
        let first = read_response(&mut r);
        let second = read_response(&mut r);

        // HTTP/1.0 is served by hyper after the hand-off.
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /old HTTP/1.0\r\n\r\n").unwrap();
        let mut old = String::new();
        let _ = s.read_to_string(&mut old);

        // A chunked upload is hyper's too; the upstream gets the whole body.
        let s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = s.try_clone().unwrap();
        w.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").unwrap();
        let mut r = BufReader::new(s);
        let chunked = read_response(&mut r);
        (first, second, old, chunked)
    })
    .await
    .unwrap();
    let (first, second, old, chunked) = got;
    assert!(first.0.starts_with("HTTP/1.1 200"), "{first:?}");
    assert_eq!(first.1, "/a");
    assert_eq!(second.1, "/b body");
    assert!(
        first.0.to_ascii_lowercase().contains("x-request-id:"),
        "{first:?}"
    );
    assert!(
        old.starts_with("HTTP/1.0 200") || old.starts_with("HTTP/1.1 200"),
        "{old}"
    );
    assert!(old.ends_with("/old"), "{old}");
    assert!(chunked.0.starts_with("HTTP/1.1 200"), "{chunked:?}");
    assert_eq!(chunked.1, "/up hello world");
    // Every request reached the upstream with the agent's headers.
    for (head, _) in up.seen.lock().unwrap().iter() {
        let h = head.to_ascii_lowercase();
        assert!(h.contains("x-request-id: "), "{head}");
        assert!(h.contains("traceparent: 00-"), "{head}");
        assert!(h.contains("x-forwarded-for: 127.0.0.1"), "{head}");
    }
}

#[tokio::test]
async fn large_uploads_stream_and_dropped_pooled_connections_are_retried() {
    // Answers every request, then closes without saying so: each pooled connection is
    // dead by the time it is reused.
    let up = raw_upstream(|head, body| {
        let (_, path) = request_line(head);
        let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
        (ok(&format!("{path} {} {sum}", body.len())), true)
    });
    let agent = Agent::start(&format!("http://{}", up.addr), "");
    let c = client();
    for i in 0..30 {
        let r = c.get(agent.url(&format!("/n{i}"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(r.text().await.unwrap(), format!("/n{i} 0 0"));
    }
    let upload: Vec<u8> = (0..5 * 1024 * 1024 + 3).map(|i| (i % 7) as u8).collect();
    let expected: u64 = upload.iter().map(|b| u64::from(*b)).sum();
    let r = c
        .post(agent.url("/api/v1/ingest/files"))
        .body(upload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        format!("/api/v1/ingest/files {} {expected}", upload.len())
    );
    let line = access_lines_for(&agent, &["/api/v1/ingest/files"])
        .await
        .into_iter()
        .find(|l| l["path"] == "/api/v1/ingest/files")
        .expect("access line");
    assert_eq!(line["bytes_in"], upload.len() as u64);
    assert_eq!(line["route"], "ingest");
}

#[tokio::test]
async fn broken_upstreams_and_refused_uploads_get_json_answers() {
    let up = raw_upstream(|head, _| {
        let (_, path) = request_line(head);
        match path {
            "/garbage" => (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), true),
            "/short" => (
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this".to_vec(),
                true,
            ),
            other => (ok(other), false),
        }
    });
    let agent = Agent::start(&format!("http://{}", up.addr), "");
    let c = client();
    let r = c.get(agent.url("/garbage")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "upstream_error");
    assert!(v["request_id"].is_string());

    // A body cut short by the upstream reaches the client cut short, never "complete".
    let r = c.get(agent.url("/short")).send().await.unwrap();
    assert!(
        r.bytes().await.is_err(),
        "a truncated body is an error for the client"
    );

    // Refused before its 2 MiB body is read: the client still gets the answer.
    let r = c
        .post(agent.url("/internal/v1/anything"))
        .body(vec![b'x'; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "not_found");
    // And the agent is fine afterwards.
    assert_eq!(c.get(agent.url("/ok")).send().await.unwrap().status(), 200);

    let lines = access_lines_for(&agent, &["/short"]).await;
    let short = lines
        .iter()
        .find(|l| l["path"] == "/short")
        .expect("access line for /short");
    assert_eq!(short["error"], "upstream_body_error");
    assert_eq!(short["bytes_out"], 9);
}
