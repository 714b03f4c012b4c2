//! Ingest of every supported type, dedupe, retrieval quality, ask with citations and
//! abstention, and every kind of bad input — against the real binary over HTTP.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use common::*;
use serde_json::{Value, json};

async fn source_count(c: &reqwest::Client, s: &Server, key: &str) -> i64 {
    let (st, v) = json(c.get(s.url("/api/v1/sources")).bearer_auth(key)).await;
    assert_eq!(st, 200);
    v["total"].as_i64().unwrap()
}

#[tokio::test]
async fn every_file_type_is_ingested_with_sections() {
    let dir = temp_dir("types");
    let b = bootstrap(&dir);
    let s = Server::start(&dir);
    let c = client();
    let pdf = make_pdf(&[
        "Quarterly revenue grew by forty percent in the northern region.",
        "Second page mentions glaciers.",
    ]);
    let files = vec![
        ("notes.txt", b"Plain text notes about the aurora borealis over Tromso.".to_vec()),
        ("guide.md", b"# Install Guide\nIntro.\n## Requirements\nYou need a kettle and loose tea leaves.\n".to_vec()),
        ("page.html", b"<html><head><title>Pricing page</title></head><body><h1>Pricing</h1><p>The starter plan costs nine euros.</p><script>evil()</script></body></html>".to_vec()),
        ("report.pdf", pdf),
        ("talk.srt", b"1\n00:00:01,000 --> 00:00:03,000\nWelcome to the volcano lecture.\n\n2\n00:00:04,000 --> 00:00:06,000\nMagma rises slowly.\n".to_vec()),
        ("clip.vtt", b"WEBVTT\n\n00:01:00.000 --> 00:01:02.500\nPenguins huddle for warmth.\n".to_vec()),
    ];
    let (st, v) = upload(&c, &s, &b.api_key, files).await;
    assert_eq!(st, 200, "{v}");
    let docs = v["documents"].as_array().unwrap();
    assert_eq!(docs.len(), 6);
    for d in docs {
        assert_eq!(d["status"], "ingested", "{d}");
        assert!(d["chunks"].as_u64().unwrap() >= 1);
    }
    assert_eq!(docs[2]["title"], "Pricing page");

    // Each type answers its own question with the right section / page / timecode.
    let cases = [
        (
            "How much does the starter plan cost?",
            "page.html",
            Some("Pricing"),
        ),
        (
            "What do I need, a kettle?",
            "guide.md",
            Some("Requirements"),
        ),
        ("How much did quarterly revenue grow?", "report.pdf", None),
        (
            "What rises slowly in the volcano lecture?",
            "talk.srt",
            Some("00:00:01.000 --> 00:00:06.000"),
        ),
        (
            "Why do penguins huddle?",
            "clip.vtt",
            Some("00:01:00.000 --> 00:01:02.500"),
        ),
        ("Where was the aurora borealis seen?", "notes.txt", None),
    ];
    let (_, list) = json(c.get(s.url("/api/v1/sources")).bearer_auth(&b.api_key)).await;
    for (q, file, section) in cases {
        let (st, a) = ask(&c, &s, &b.api_key, json!({"question": q, "k": 3})).await;
        assert_eq!(st, 200);
        assert_eq!(a["abstained"], false, "{q}: {a}");
        let top = &a["citations"][0];
        let src = list["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["source_id"] == top["source_id"])
            .unwrap();
        assert_eq!(src["uri"], file, "{q}: {a}");
        if let Some(sec) = section {
            assert_eq!(top["section"], sec, "{q}: {a}");
        }
    }
    let (_, a) = ask(
        &c,
        &s,
        &b.api_key,
        json!({"question": "How much did quarterly revenue grow?"}),
    )
    .await;
    assert!(
        a["answer"].as_str().unwrap().contains("forty percent"),
        "{a}"
    );
    assert!(
        a["citations"][0]["section"]
            .as_str()
            .unwrap()
            .starts_with("page "),
        "{a}"
    );
}

#[tokio::test]
async fn text_ingest_dedupe_and_metadata() {
    let dir = temp_dir("dedupe");
    let b = bootstrap(&dir);
    let s = Server::start(&dir);
    let c = client();
    let doc = json!([{"title": "Handbook", "text": "Employees get twenty five vacation days per year.", "metadata": {"team": "hr"}}]);
    let (st, v) = ingest_text(&c, &s, &b.api_key, doc.clone()).await;
    assert_eq!(st, 200);
    assert_eq!(v["documents"][0]["status"], "ingested");
    let id = v["documents"][0]["source_id"].clone();
    // Same content again (also with different whitespace, and inside the same batch): skipped.
    let again = json!([{"title": "Copy", "text": "Employees  get twenty five\nvacation days per year."}, {"title": "Handbook", "text": "Employees get twenty five vacation days per year."}]);
    let (st, v) = ingest_text(&c, &s, &b.api_key, again).await;
    assert_eq!(st, 200);
    for d in v["documents"].as_array().unwrap() {
        assert_eq!(d["status"], "skipped");
        assert_eq!(d["source_id"], id);
    }
    assert_eq!(source_count(&c, &s, &b.api_key).await, 1);
    // A batch with two identical new documents stores one.
    let twins =
        json!([{"text": "The office opens at eight."}, {"text": "The office opens at eight."}]);
    let (_, v) = ingest_text(&c, &s, &b.api_key, twins).await;
    assert_eq!(v["documents"][0]["status"], "ingested");
    assert_eq!(v["documents"][1]["status"], "skipped");
    assert_eq!(source_count(&c, &s, &b.api_key).await, 2);
    let (_, src) = json(
        c.get(s.url(&format!("/api/v1/sources/{}", id.as_str().unwrap())))
            .bearer_auth(&b.api_key),
    )
    .await;
    assert_eq!(src["metadata"]["team"], "hr");
}

#[tokio::test]
async fn retrieval_puts_the_relevant_document_first_and_ask_abstains() {
    let dir = temp_dir("retrieval");
    let b = bootstrap(&dir);
    let s = Server::start(&dir);
    let c = client();
    let corpus = json!([
        {"title": "Refund policy", "text": "Refunds: customers on annual plans may request a full refund within 30 days of purchase. Monthly plans are not refundable."},
        {"title": "Shipping", "text": "Orders ship from our warehouse in Lyon. Standard delivery takes five business days within the EU."},
        {"title": "Security", "text": "All data is encrypted at rest with AES-256 and in transit with TLS 1.3. We rotate keys every ninety days."},
        {"title": "Support hours", "text": "Our support desk is staffed Monday to Friday from 9:00 to 18:00 Central European Time."},
        {"title": "Onboarding", "text": "New administrators invite teammates from the settings page and assign each one a role."},
        {"title": "Pricing", "text": "The team plan costs twelve euros per seat per month, billed annually or monthly."}
    ]);
    let (st, _) = ingest_text(&c, &s, &b.api_key, corpus).await;
    assert_eq!(st, 200);
    let expectations = [
        ("Can I get a refund on an annual plan?", "Refund policy"),
        ("How long does delivery take?", "Shipping"),
        ("Is data encrypted at rest?", "Security"),
        ("When is the support desk open?", "Support hours"),
        ("How do I invite teammates?", "Onboarding"),
        ("How much does a seat cost per month?", "Pricing"),
    ];
    for (q, title) in expectations {
        let (st, v) = json(
            c.get(s.url("/api/v1/search"))
                .query(&[("q", q), ("k", "3")])
                .bearer_auth(&b.api_key),
        )
        .await;
        assert_eq!(st, 200);
        assert_eq!(v["results"][0]["title"], title, "{q}: {v}");
        let (_, a) = ask(&c, &s, &b.api_key, json!({"question": q})).await;
        assert_eq!(a["abstained"], false);
        assert_eq!(a["citations"][0]["title"], title, "{q}: {a}");
        let cit = &a["citations"][0];
        for key in [
            "source_id",
            "title",
            "chunk_index",
            "section",
            "score",
            "snippet",
        ] {
            assert!(cit.get(key).is_some(), "citation lacks {key}: {cit}");
        }
        assert!(a["answer"].as_str().unwrap().contains("[1]"), "{a}");
        assert!(a["request_id"].is_string());
    }
    for q in [
        "What is the capital of Mongolia?",
        "Explain quantum chromodynamics gluon confinement",
    ] {
        let (st, a) = ask(&c, &s, &b.api_key, json!({"question": q})).await;
        assert_eq!(st, 200);
        assert_eq!(a["abstained"], true, "{q}: {a}");
        assert_eq!(a["citations"].as_array().unwrap().len(), 0);
    }
    // source_ids restricts the answer to the named documents.
    let (_, list) = json(c.get(s.url("/api/v1/sources")).bearer_auth(&b.api_key)).await;
    let shipping = list["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["title"] == "Shipping")
        .unwrap()["source_id"]
        .clone();
    let (_, a) = ask(
        &c,
        &s,
        &b.api_key,
        json!({"question": "Can I get a refund on an annual plan?", "source_ids": [shipping]}),
    )
    .await;
    assert!(
        a["citations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["source_id"] == shipping),
        "{a}"
    );
}

/// Serves one fixed HTTP response per connection on 127.0.0.1 (a real TCP peer).
fn tiny_http(body: &'static str, content_type: &'static str) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in l.incoming().take(8) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes());
        }
    });
    format!("http://{addr}/doc")
}

#[tokio::test]
async fn url_ingest_fetches_allowed_pages_and_refuses_private_ones() {
    let page = tiny_http(
        "<html><title>Lighthouse facts</title><body><p>The lighthouse beam reaches forty kilometres.</p></body></html>",
        "text/html; charset=utf-8",
    );
    let dir = temp_dir("urls");
    let b = bootstrap(&dir);
    // Loopback is refused by default.
    {
        let s = Server::start(&dir);
        let c = client();
        let (st, v) = json(
            c.post(s.url("/api/v1/ingest/urls"))
                .bearer_auth(&b.api_key)
                .json(&json!({"urls": [page]})),
        )
        .await;
        assert_eq!(st, 200);
        assert_eq!(v["documents"][0]["status"], "failed", "{v}");
        assert_eq!(v["documents"][0]["error"]["code"], "forbidden_address");
        let (st, v) = json(
            c.post(s.url("/api/v1/ingest/urls"))
                .bearer_auth(&b.api_key)
                .json(&json!({"urls": ["ftp://example.com/x"]})),
        )
        .await;
        assert_eq!(st, 400, "{v}");
        assert_eq!(v["error"], "invalid_url");
    }
    let opts = Options {
        config_yaml: Some("ingest:\n  url:\n    allow_private: [\"127.0.0.1/32\"]\n".into()),
        ..Options::default()
    };
    let s = Server::start_with(&dir, opts);
    let c = client();
    let (st, v) = json(
        c.post(s.url("/api/v1/ingest/urls"))
            .bearer_auth(&b.api_key)
            .json(&json!({"urls": [page]})),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["documents"][0]["status"], "ingested", "{v}");
    assert_eq!(v["documents"][0]["title"], "Lighthouse facts");
    let (_, a) = ask(
        &c,
        &s,
        &b.api_key,
        json!({"question": "How far does the lighthouse beam reach?"}),
    )
    .await;
    assert_eq!(a["citations"][0]["title"], "Lighthouse facts", "{a}");
}

#[tokio::test]
async fn bad_input_is_rejected_with_json_errors_and_leaves_the_store_unchanged() {
    let dir = temp_dir("badinput");
    let b = bootstrap(&dir);
    let opts = Options {
        config_yaml: Some(
            "limits:\n  max_document_bytes: 2000\n  max_documents_per_request: 3\n".into(),
        ),
        ..Options::default()
    };
    let s = Server::start_with(&dir, opts);
    let c = client();
    let k = &b.api_key;
    let (st, _) = ingest_text(&c, &s, k, json!([{"text": "baseline document"}])).await;
    assert_eq!(st, 200);

    let good = ("ok.txt", b"fine text".to_vec());
    type Files<'a> = Vec<(&'a str, Vec<u8>)>;
    let cases: Vec<(Files, u16, &str)> = vec![
        (
            vec![good.clone(), ("virus.exe", b"MZ".to_vec())],
            415,
            "unsupported_media_type",
        ),
        (
            vec![good.clone(), ("bad.txt", b"caf\xe9 \xff".to_vec())],
            422,
            "invalid_utf8",
        ),
        (
            vec![good.clone(), ("empty.md", b"  \n\n ".to_vec())],
            422,
            "empty_document",
        ),
        (
            vec![good.clone(), ("big.txt", vec![b'a'; 2001])],
            413,
            "payload_too_large",
        ),
        (
            vec![
                good.clone(),
                ("a.txt", b"a".to_vec()),
                ("b.txt", b"b".to_vec()),
                ("c.txt", b"c".to_vec()),
            ],
            413,
            "payload_too_large",
        ),
        (
            vec![good.clone(), ("broken.pdf", b"%PDF-1.4 garbage".to_vec())],
            422,
            "invalid_pdf",
        ),
        (vec![], 400, "malformed_multipart"),
    ];
    for (files, status, code) in cases {
        let names: Vec<String> = files.iter().map(|f| f.0.to_string()).collect();
        let (st, v) = upload(&c, &s, k, files).await;
        assert_eq!(
            (st, v["error"].as_str().unwrap_or("")),
            (status, code),
            "{names:?}: {v}"
        );
    }
    let only_field = reqwest::multipart::Form::new().text("note", "no files here");
    let (st, v) = json(
        c.post(s.url("/api/v1/ingest/files"))
            .bearer_auth(k)
            .multipart(only_field),
    )
    .await;
    assert_eq!((st, v["error"].as_str().unwrap()), (422, "empty_request"));
    let raw = |body: &'static str| {
        c.post(s.url("/api/v1/ingest/text"))
            .bearer_auth(k)
            .header("content-type", "application/json")
            .body(body)
    };
    let (st, v) = json(raw("{\"documents\": [")).await;
    assert_eq!((st, v["error"].as_str().unwrap()), (400, "malformed_json"));
    let (st, v) = json(raw("{\"documents\": [{\"title\": 5}]}")).await;
    assert_eq!((st, v["error"].as_str().unwrap()), (422, "invalid_request"));
    let (st, _) = json(
        c.post(s.url("/api/v1/ingest/text"))
            .bearer_auth(k)
            .body("{}"),
    )
    .await;
    assert_eq!(st, 415);
    let (st, v) = ingest_text(&c, &s, k, json!([{"text": "ok"}, {"text": "   "}])).await;
    assert_eq!((st, v["error"].as_str().unwrap()), (422, "empty_document"));
    let (st, v) = ingest_text(&c, &s, k, json!([{"text": "x".repeat(2001)}])).await;
    assert_eq!(
        (st, v["error"].as_str().unwrap()),
        (413, "payload_too_large")
    );
    let (st, v) = ingest_text(&c, &s, k, json!([{"text": "a", "metadata": [1]}])).await;
    assert_eq!((st, v["error"].as_str().unwrap()), (422, "invalid_request"));

    // Unknown sources.
    for path in [
        "/api/v1/sources/src_nope",
        "/api/v1/sources/src_nope/chunks",
        "/api/v1/sources/src_nope/preview",
    ] {
        let (st, v) = json(c.get(s.url(path)).bearer_auth(k)).await;
        assert_eq!(
            (st, v["error"].as_str().unwrap()),
            (404, "not_found"),
            "{path}"
        );
    }
    let (st, _) = json(c.delete(s.url("/api/v1/sources/src_nope")).bearer_auth(k)).await;
    assert_eq!(st, 404);
    let (st, v) = ask(
        &c,
        &s,
        k,
        json!({"question": "baseline?", "source_ids": ["src_nope"]}),
    )
    .await;
    assert_eq!((st, v["error"].as_str().unwrap()), (404, "not_found"));
    let (st, _) = ask(&c, &s, k, json!({"question": "   "})).await;
    assert_eq!(st, 422);
    let (st, _) = ask(&c, &s, k, json!({"question": "x", "k": 0})).await;
    assert_eq!(st, 422);
    let (st, v) = json(c.get(s.url("/api/v1/nothing-here")).bearer_auth(k)).await;
    assert_eq!((st, v["error"].as_str().unwrap()), (404, "not_found"));
    let (st, _) = json(c.put(s.url("/api/v1/ask")).bearer_auth(k)).await;
    assert_eq!(st, 405);

    assert_eq!(
        source_count(&c, &s, k).await,
        1,
        "rejected requests must not store anything"
    );
}

#[tokio::test]
async fn delete_and_batch_delete_remove_sources_from_answers() {
    let dir = temp_dir("delete");
    let b = bootstrap(&dir);
    let s = Server::start(&dir);
    let c = client();
    let k = &b.api_key;
    let (_, v) = ingest_text(
        &c,
        &s,
        k,
        json!([
            {"title": "Zebra", "text": "Zebras have black and white stripes."},
            {"title": "Giraffe", "text": "Giraffes have very long necks."},
            {"title": "Walrus", "text": "Walruses have long tusks."}
        ]),
    )
    .await;
    let ids: Vec<Value> = v["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["source_id"].clone())
        .collect();
    let (st, _) = json(
        c.delete(s.url(&format!("/api/v1/sources/{}", ids[0].as_str().unwrap())))
            .bearer_auth(k),
    )
    .await;
    assert_eq!(st, 200);
    let (_, a) = ask(&c, &s, k, json!({"question": "Which animal has stripes?"})).await;
    assert!(
        a["citations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["source_id"] != ids[0]),
        "{a}"
    );
    let (st, v) = json(
        c.post(s.url("/api/v1/sources/delete"))
            .bearer_auth(k)
            .json(&json!({"source_ids": [ids[1], "src_missing"]})),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["deleted"], json!([ids[1]]));
    assert_eq!(v["not_found"], json!(["src_missing"]));
    assert_eq!(source_count(&c, &s, k).await, 1);
    let (_, m) = (200, scrape(&c, &s).await);
    assert!(m.contains("chunk_records_total 1"), "{m}");
}

#[tokio::test]
async fn chat_failure_falls_back_to_the_extractive_answer_and_is_counted() {
    // A port nobody listens on: the OpenAI-compatible chat call fails for real.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = temp_dir("fallback");
    let b = bootstrap(&dir);
    let mut opts = Options {
        config_yaml: Some("answer:\n  mode: openai\nopenai:\n  timeout_seconds: 5\n".into()),
        ..Options::default()
    };
    opts.env.push((
        "OPENAI_BASE_URL".into(),
        format!("http://127.0.0.1:{port}/v1"),
    ));
    let s = Server::start_with(&dir, opts);
    let c = client();
    let _ = ingest_text(&c, &s, &b.api_key, json!([{"title": "Tea", "text": "Green tea should steep for two minutes at eighty degrees."}])).await;
    let (st, a) = ask(
        &c,
        &s,
        &b.api_key,
        json!({"question": "How long should green tea steep?"}),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(a["mode"], "extractive", "{a}");
    assert!(a["answer"].as_str().unwrap().contains("two minutes"));
    assert_eq!(a["citations"][0]["title"], "Tea");
    let m = scrape(&c, &s).await;
    assert!(
        m.contains("external_request_errors_total{service=\"openai\",operation=\"chat\"} 1"),
        "{m}"
    );
    let logged = s
        .log_lines()
        .iter()
        .any(|l| l["event"] == "external.request_failed" && l["operation"] == "chat");
    assert!(logged);
}
