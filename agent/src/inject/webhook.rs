//! `minirag-agent webhook`: a mutating admission webhook over TLS. It takes an
//! `AdmissionReview` (admission.k8s.io/v1) for a Pod, runs the same mutation as the CLI
//! and answers with a JSON Patch. It never blocks pod creation on its own problems: a
//! request it cannot use is allowed unchanged, with the reason in the answer's status
//! message and in the log.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::pod::{Options, Outcome, inject_template};

/// Admission requests are small; anything bigger is not one.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Binds, loads the certificate (reloaded when the files change) and serves until
/// SIGTERM.
pub async fn run(
    listen: std::net::SocketAddr,
    tls: &crate::config::TlsConfig,
    opts: Options,
) -> Result<(), String> {
    let acceptor = crate::tls::acceptor(tls).map_err(|e| format!("TLS: {e}"))?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let bound = listener.local_addr().unwrap_or(listen);
    crate::log::info_with(
        "webhook.started",
        &format!("admission webhook on https://{bound}"),
        json!({"listen": bound.to_string(), "image": opts.image, "mode": if opts.classic { "classic" } else { "native" }}),
    );
    tokio::select! {
        _ = serve(listener, acceptor, Arc::new(opts)) => {}
        _ = crate::shutdown_signal() => {}
    }
    crate::log::info("webhook.stopped", "shutdown requested; exiting");
    Ok(())
}

pub async fn serve(listener: TcpListener, tls: tokio_rustls::TlsAcceptor, opts: Arc<Options>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let tls = tls.clone();
        let opts = Arc::clone(&opts);
        tokio::spawn(async move {
            let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp)).await
            else {
                return;
            };
            let svc = service_fn(move |req| handle(Arc::clone(&opts), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    opts: Arc<Options>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, v: Value| {
        let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz" | "/readyz") => {
            Ok(reply(StatusCode::OK, json!({"status": "ok"})))
        }
        (&Method::POST, _) => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Ok(reply(
                        StatusCode::BAD_REQUEST,
                        json!({"error": "bad_request", "message": format!("cannot read the body: {e}"), "request_id": null}),
                    ));
                }
            };
            Ok(reply(StatusCode::OK, review(&body, &opts)))
        }
        _ => Ok(reply(
            StatusCode::NOT_FOUND,
            json!({"error": "not_found", "message": "POST an AdmissionReview", "request_id": null}),
        )),
    }
}

/// The AdmissionReview answer for `body`.
pub fn review(body: &[u8], opts: &Options) -> Value {
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return answer("", Err(format!("not JSON: {e}"))),
    };
    let uid = parsed["request"]["uid"].as_str().unwrap_or("").to_string();
    let api = parsed["apiVersion"].as_str().unwrap_or("");
    if api != "admission.k8s.io/v1" || parsed["kind"] != "AdmissionReview" {
        return answer(
            &uid,
            Err(format!(
                "expected an admission.k8s.io/v1 AdmissionReview, got {api:?}"
            )),
        );
    }
    let req = &parsed["request"];
    if req["kind"]["kind"] != "Pod" {
        return answer(&uid, Ok(None));
    }
    let object = &req["object"];
    let name = object["metadata"]["name"]
        .as_str()
        .or(object["metadata"]["generateName"].as_str())
        .unwrap_or("?");
    let namespace = req["namespace"].as_str().unwrap_or("default");
    let resource = format!("Pod/{namespace}/{name}");
    let mut pod: serde_yaml::Value = match serde_yaml::to_value(object) {
        Ok(v) => v,
        Err(e) => return answer(&uid, Err(format!("{resource}: {e}"))),
    };
    match inject_template(&mut pod, opts, None) {
        Outcome::Injected { mode } => {
            let new = match serde_json::to_value(&pod) {
                Ok(v) => v,
                Err(e) => return answer(&uid, Err(format!("{resource}: {e}"))),
            };
            let ops = super::patch::diff(object, &new);
            crate::log::info_with(
                "webhook.injected",
                &format!("{resource}: injected ({mode})"),
                json!({"resource": resource, "mode": mode, "uid": uid}),
            );
            answer(&uid, Ok(Some(Value::Array(ops))))
        }
        Outcome::Skipped(reason) => {
            crate::log::info_with(
                "webhook.skipped",
                &format!("{resource}: skipped: {reason}"),
                json!({"resource": resource, "reason": reason, "uid": uid}),
            );
            answer(&uid, Ok(None))
        }
    }
}

/// Always allowed: a patch when there is one; a problem goes to the status message.
fn answer(uid: &str, outcome: Result<Option<Value>, String>) -> Value {
    let mut response = json!({"uid": uid, "allowed": true});
    match outcome {
        Ok(Some(patch)) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
            response["patchType"] = json!("JSONPatch");
            response["patch"] = json!(encoded);
        }
        Ok(None) => {}
        Err(message) => {
            crate::log::warn(
                "webhook.request_failed",
                &format!("allowed unchanged: {message}"),
            );
            response["status"] = json!({"code": 200, "message": format!("minirag-agent injector: {message}; allowed unchanged")});
        }
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}
