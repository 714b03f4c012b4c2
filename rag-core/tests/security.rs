//! Security posture: placeholder secrets stop `serve` (unless explicitly allowed), CORS
//! answers only configured origins, and API responses carry the hardening headers.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use reqwest::header::HeaderMap;

/// Runs `rag-core serve` expecting it to exit by itself; returns (exit code, stderr).
fn serve_expecting_exit(dir: &std::path::Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env_remove("RAG_CORE_LISTEN")
        .env_remove("RAG_CORE_DATA_DIR")
        .env_remove("RAG_CORE_ALLOW_PLACEHOLDER_SECRETS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn rag-core");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            return (status.code(), String::from_utf8_lossy(&out.stderr).into());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("rag-core serve kept running with a placeholder secret");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_refuses_a_placeholder_openai_key_and_names_the_variable() {
    let dir = temp_dir("placeholder");
    let (code, stderr) = serve_expecting_exit(
        &dir,
        &[
            ("OPENAI_API_KEY", "changeme"),
            ("MINIRAG_INTERNAL_TOKEN", INTERNAL_TOKEN),
        ],
    );
    assert_ne!(code, Some(0), "must exit non-zero; stderr: {stderr}");
    assert!(
        stderr.contains("OPENAI_API_KEY holds a placeholder value"),
        "{stderr}"
    );
    assert!(
        stderr.contains("RAG_CORE_ALLOW_PLACEHOLDER_SECRETS"),
        "the message names the opt-out: {stderr}"
    );

    // The value itself is never printed (a real key that merely looks odd must not leak).
    let (code, stderr) = serve_expecting_exit(
        &dir,
        &[("MINIRAG_INTERNAL_TOKEN", "<paste-the-internal-token-here>")],
    );
    assert_ne!(code, Some(0));
    assert!(stderr.contains("MINIRAG_INTERNAL_TOKEN"), "{stderr}");
    assert!(!stderr.contains("paste-the-internal"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn serve_starts_with_the_opt_out_and_warns_by_name() {
    let dir = temp_dir("placeholder-optout");
    let s = Server::start_with(
        &dir,
        Options {
            config_yaml: None,
            env: vec![
                ("MINIRAG_INTERNAL_TOKEN".into(), INTERNAL_TOKEN.into()),
                ("OPENAI_API_KEY".into(), "changeme".into()),
                ("RAG_CORE_ALLOW_PLACEHOLDER_SECRETS".into(), "true".into()),
            ],
        },
    );
    let c = client();
    let (status, _) = json(c.get(s.url("/healthz"))).await;
    assert_eq!(status, 200);
    let lines = s.log_lines();
    let warning = lines
        .iter()
        .find(|l| l["event"] == "security.placeholder_secret_allowed")
        .expect("a startup warning for the allowed placeholder");
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["variable"], "OPENAI_API_KEY");
    let raw = s.stdout.lock().unwrap().join("\n");
    assert!(!raw.contains("changeme"), "the value must never be logged");
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

const APP: &str = "https://app.example.com";

fn cors_server(tag: &str, cors_yaml: &str) -> (Server, Bootstrap, std::path::PathBuf) {
    let dir = temp_dir(tag);
    let a = bootstrap(&dir);
    let s = Server::start_with(
        &dir,
        Options {
            config_yaml: Some(format!("bootstrap_on_empty: false\n{cors_yaml}")),
            ..Options::default()
        },
    );
    (s, a, dir)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn vary_has(h: &HeaderMap, name: &str) -> bool {
    h.get_all("vary").iter().any(|v| {
        v.to_str()
            .unwrap_or_default()
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(name))
    })
}

fn no_cors_headers(h: &HeaderMap) {
    for name in [
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "access-control-allow-methods",
        "access-control-allow-headers",
        "access-control-expose-headers",
    ] {
        assert!(h.get(name).is_none(), "unexpected {name}: {h:?}");
    }
}

async fn preflight(
    c: &reqwest::Client,
    s: &Server,
    path: &str,
    origin: &str,
    method: &str,
    headers: &str,
) -> reqwest::Response {
    c.request(Method::OPTIONS, s.url(path))
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header("access-control-request-headers", headers)
        .send()
        .await
        .expect("preflight")
}

#[tokio::test]
async fn cors_answers_listed_origins_only() {
    let (s, a, dir) = cors_server(
        "cors-list",
        "cors:\n  allowed_origins: [https://app.example.com, 'http://localhost:3000']\n  allow_credentials: true\n",
    );
    let c = client();

    // Preflight from an allowed origin: 204, no API key needed, the configured lists.
    let r = preflight(
        &c,
        &s,
        "/api/v1/ask",
        APP,
        "POST",
        "authorization, content-type, traceparent",
    )
    .await;
    assert_eq!(r.status().as_u16(), 204);
    let h = r.headers();
    assert_eq!(header(h, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(h, "access-control-allow-credentials"), Some("true"));
    assert_eq!(
        header(h, "access-control-allow-methods"),
        Some("GET, POST, PUT, PATCH, DELETE")
    );
    let allowed = header(h, "access-control-allow-headers").unwrap_or_default();
    for name in ["authorization", "content-type", "x-api-key", "traceparent"] {
        assert!(allowed.contains(name), "{allowed}");
    }
    assert_eq!(header(h, "access-control-max-age"), Some("600"));
    assert!(vary_has(h, "origin"), "{h:?}");
    assert!(header(h, "x-request-id").is_some());
    assert_eq!(header(h, "x-content-type-options"), Some("nosniff"));

    // A path with a route parameter and a DELETE works the same.
    let r = preflight(&c, &s, "/api/v1/sources/src_1", APP, "DELETE", "x-api-key").await;
    assert_eq!(r.status().as_u16(), 204);

    // Another origin: 403 in the service's error shape, and no CORS header at all.
    let r = preflight(
        &c,
        &s,
        "/api/v1/ask",
        "https://evil.example.com",
        "POST",
        "content-type",
    )
    .await;
    no_cors_headers(r.headers());
    assert!(vary_has(r.headers(), "origin"));
    let (status, body) = json_of(r).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"], "cors_origin_not_allowed");
    assert!(
        !body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("evil"),
        "the caller's origin is not echoed: {body}"
    );

    // Look-alike origins are not prefixes or suffixes of an allowed one.
    for o in [
        "https://app.example.com.evil.test",
        "http://app.example.com",
        "null",
    ] {
        let r = preflight(&c, &s, "/api/v1/ask", o, "POST", "content-type").await;
        assert_eq!(r.status().as_u16(), 403, "{o}");
        no_cors_headers(r.headers());
    }

    // Allowed origin, but a method or header outside the lists: refused.
    let r = preflight(&c, &s, "/api/v1/ask", APP, "TRACE", "content-type").await;
    let (status, body) = json_of(r).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("cors_method_not_allowed"))
    );
    let r = preflight(&c, &s, "/api/v1/ask", APP, "POST", "content-type, x-custom").await;
    let (status, body) = json_of(r).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("cors_header_not_allowed"))
    );

    // The actual request from an allowed origin: its origin, the exposed headers, the
    // hardening headers.
    let r = c
        .get(s.url("/api/v1/sources"))
        .bearer_auth(&a.api_key)
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let h = r.headers();
    assert_eq!(
        header(h, "access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert_eq!(header(h, "access-control-allow-credentials"), Some("true"));
    let exposed = header(h, "access-control-expose-headers").unwrap_or_default();
    assert!(
        exposed.contains("x-request-id") && exposed.contains("retry-after"),
        "{exposed}"
    );
    assert!(vary_has(h, "origin"));
    assert_eq!(header(h, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(h, "cache-control"), Some("no-store"));

    // Errors carry CORS headers too, so the page can read why it failed.
    let r = c
        .get(s.url("/api/v1/sources"))
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        header(r.headers(), "access-control-allow-origin"),
        Some(APP)
    );

    // The actual request from another origin is served (CORS is enforced by browsers)
    // but names no origin, so a browser will not let that page read it.
    let r = c
        .get(s.url("/api/v1/sources"))
        .bearer_auth(&a.api_key)
        .header("origin", "https://evil.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    no_cors_headers(r.headers());
    assert!(vary_has(r.headers(), "origin"));

    // Preflights reach the access log like any request.
    let logged = s.log_lines().iter().any(|l| {
        l["event"] == "http.access"
            && l["method"] == "OPTIONS"
            && l["status_code"] == 204
            && l["route"] == "/api/v1/ask"
    });
    assert!(logged, "preflight missing from the access log");
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn cors_wildcard_answers_star_never_the_callers_origin() {
    let (s, a, dir) = cors_server("cors-any", "cors:\n  allowed_origins: ['*']\n");
    let c = client();
    let r = preflight(
        &c,
        &s,
        "/api/v1/ask",
        "https://anywhere.test",
        "POST",
        "content-type",
    )
    .await;
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(
        header(r.headers(), "access-control-allow-origin"),
        Some("*")
    );
    assert!(
        r.headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
    let r = c
        .get(s.url("/api/v1/sources"))
        .bearer_auth(&a.api_key)
        .header("origin", "https://anywhere.test")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(r.headers(), "access-control-allow-origin"),
        Some("*")
    );
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn cors_is_off_by_default() {
    let (s, a, dir) = cors_server("cors-off", "");
    let c = client();
    let r = preflight(&c, &s, "/api/v1/ask", APP, "POST", "content-type").await;
    no_cors_headers(r.headers());
    let (status, body) = json_of(r).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"], "cors_origin_not_allowed");
    let r = c
        .get(s.url("/api/v1/sources"))
        .bearer_auth(&a.api_key)
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    no_cors_headers(r.headers());
    assert!(
        !vary_has(r.headers(), "origin"),
        "no CORS header at all when off"
    );
    // The hardening headers are there regardless, including on errors.
    let r = c.get(s.url("/api/v1/nope")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(
        header(r.headers(), "x-content-type-options"),
        Some("nosniff")
    );
    assert_eq!(header(r.headers(), "cache-control"), Some("no-store"));
    // A plain OPTIONS (not a preflight) is not special-cased.
    let r = c
        .request(Method::OPTIONS, s.url("/api/v1/ask"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// (status, JSON body) with the error-shape checks of `common::json`.
async fn json_of(r: reqwest::Response) -> (u16, serde_json::Value) {
    let status = r.status().as_u16();
    let rid = header(r.headers(), "x-request-id").map(str::to_owned);
    let v: serde_json::Value = r.json().await.expect("JSON body");
    assert!(rid.is_some(), "missing X-Request-ID");
    if status >= 400 {
        assert!(v["error"].is_string() && v["message"].is_string(), "{v}");
        assert_eq!(v["request_id"].as_str(), rid.as_deref());
    }
    (status, v)
}

/// A PDF whose catalog holds an array nested `depth` levels deep (RUSTSEC-2026-0187: lopdf
/// before 0.42 recursed without bound and the stack overflow aborted the whole process,
/// which `catch_unwind` cannot stop).
fn deeply_nested_pdf(depth: usize) -> Vec<u8> {
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let objects = [
        format!("<< /Type /Catalog /Pages 2 0 R /X {nested} >>"),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>".to_string(),
    ];
    pdf_from_objects(&objects)
}

#[tokio::test]
async fn a_deeply_nested_pdf_fails_alone_and_the_service_stays_up() {
    let dir = temp_dir("nested-pdf");
    let a = bootstrap(&dir);
    let s = Server::start_with(
        &dir,
        Options {
            config_yaml: Some("bootstrap_on_empty: false\n".into()),
            ..Options::default()
        },
    );
    let c = client();
    let (status, body) = upload(
        &c,
        &s,
        &a.api_key,
        vec![("bomb.pdf", deeply_nested_pdf(20_000))],
    )
    .await;
    assert!(status < 500, "{status} {body}");
    let (status, _) = json(c.get(s.url("/healthz"))).await;
    assert_eq!(status, 200, "rag-core must survive a hostile PDF");
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}
