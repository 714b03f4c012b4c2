//! TLS termination: ALPN h2, HSTS only over TLS, and certificate rotation while serving.

mod common;

use std::time::Duration;

use common::*;

fn self_signed() -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

fn client_trusting(pems: &[&str]) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs: Vec<reqwest::Certificate> = pems
        .iter()
        .map(|p| reqwest::Certificate::from_pem(p.as_bytes()).unwrap())
        .collect();
    reqwest::Client::builder()
        .tls_certs_only(certs)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test]
async fn tls_with_alpn_and_rotation_without_dropping_connections() {
    let up = start_upstream().await;
    let dir = temp_dir("tls");
    let (cert_a, key_a) = self_signed();
    let (cert_b, key_b) = self_signed();
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, &cert_a).unwrap();
    std::fs::write(&key_path, &key_a).unwrap();
    let yaml = format!(
        "tls:\n  cert_file: {}\n  key_file: {}\n  reload_interval_ms: 200\n",
        cert_path.display(),
        key_path.display()
    );
    let agent = Agent::start(&format!("http://{}", up.addr), &yaml);
    let port = agent.base.rsplit(':').next().unwrap().to_string();
    let url = format!("https://localhost:{port}/api/v1/sources");

    let old = client_trusting(&[&cert_a]);
    let r = old.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "ALPN negotiates h2");
    assert!(
        r.headers()["strict-transport-security"]
            .to_str()
            .unwrap()
            .starts_with("max-age=")
    );
    assert_eq!(
        up.seen.lock().unwrap().last().unwrap().1["x-forwarded-proto"],
        "https"
    );
    let only_b = client_trusting(&[&cert_b]);
    assert!(
        only_b.get(&url).send().await.is_err(),
        "B is not served yet"
    );

    // Keep the old connection busy while the files are replaced.
    let busy = {
        let old = old.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..60 {
                let r = old
                    .get(&url)
                    .send()
                    .await
                    .expect("request on the existing connection");
                assert_eq!(r.status(), 200);
                ok += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ok
        })
    };
    // A half-written pair is refused and the old certificate stays in service.
    std::fs::write(&cert_path, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(old.get(&url).send().await.unwrap().status(), 200);
    std::fs::write(&key_path, &key_b).unwrap();
    std::fs::write(&cert_path, &cert_b).unwrap();
    let mut served_b = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if client_trusting(&[&cert_b]).get(&url).send().await.is_ok() {
            served_b = true;
            break;
        }
    }
    assert!(served_b, "new handshakes get the rotated certificate");
    assert_eq!(
        busy.await.unwrap(),
        60,
        "no request on the existing connection failed"
    );
}
