//! Admin listener: `/metrics`, `/healthz`, `/readyz`, `/config`, `POST /shutdown`.
//! Bound to loopback by default; it exposes operations, never user data.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::proxy::service::Proxy;

pub struct AdminState {
    pub proxy: Arc<Proxy>,
    /// False from the moment shutdown starts.
    pub accepting: AtomicBool,
    pub shutdown: Arc<Notify>,
    /// Serves `/api/v1/*` (rules, alerts, query) when rule evaluation is on.
    pub rules: Option<Arc<crate::rules::Runtime>>,
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Asks rag-core's `/readyz` (1 s budget): the agent is only as ready as its upstream.
async fn upstream_ready(proxy: &Proxy) -> bool {
    let Ok(uri) = proxy.current().upstream.uri_for("/readyz") else {
        return false;
    };
    let Ok(req) = Request::get(uri).body(
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed(),
    ) else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), proxy.client.request(req)).await,
        Ok(Ok(r)) if r.status().is_success()
    )
}

async fn route(
    state: Arc<AdminState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path().starts_with("/api/v1/")
        && let Some(rt) = state.rules.clone()
    {
        let r = crate::rules::api::handle(&rt, req).await;
        return Ok(r.unwrap_or_else(crate::rules::api::not_found));
    }
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(state.proxy.metrics.encode())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (&Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        (&Method::GET, "/readyz") => {
            if !state.accepting.load(Ordering::Relaxed) {
                state.proxy.metrics.ready.set(0);
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "shutting_down"}),
                )
            } else if upstream_ready(&state.proxy).await {
                state.proxy.metrics.ready.set(1);
                json(StatusCode::OK, serde_json::json!({"status": "ready"}))
            } else {
                state.proxy.metrics.ready.set(0);
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "upstream_not_ready"}),
                )
            }
        }
        (&Method::GET, "/config") => {
            // The config holds no secrets today (they are env-only); serialising the
            // effective config keeps this true by construction.
            json(StatusCode::OK, redacted_config(&state.proxy.current().cfg))
        }
        (&Method::POST, "/shutdown") => {
            state.shutdown.notify_one();
            json(
                StatusCode::ACCEPTED,
                serde_json::json!({"status": "shutting_down"}),
            )
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not_found", "message": "no such admin route", "request_id": null}),
        ),
    };
    Ok(resp)
}

pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let svc = service_fn(move |req| route(Arc::clone(&state), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The effective config with credentials in URLs masked (a Redis URL may carry a
/// password when set through the environment).
fn redacted_config(cfg: &crate::config::AgentConfig) -> serde_json::Value {
    let mut v = serde_json::to_value(cfg).unwrap_or_default();
    if let Some(url) = v.pointer_mut("/quotas/redis_url")
        && let Some(s) = url.as_str()
        && let Some((scheme, rest)) = s.split_once("://")
        && let Some((_, host)) = rest.rsplit_once('@')
    {
        *url = serde_json::Value::from(format!("{scheme}://***@{host}"));
    }
    // Sink headers carry credentials (Authorization, API keys), and sink URLs may too.
    if let Some(sinks) = v
        .pointer_mut("/logship/sinks")
        .and_then(|s| s.as_array_mut())
    {
        for sink in sinks {
            if let Some(h) = sink.get_mut("headers").and_then(|h| h.as_object_mut()) {
                for value in h.values_mut() {
                    *value = serde_json::Value::from("***");
                }
            }
            for key in ["url", "endpoint"] {
                if let Some(url) = sink.get_mut(key)
                    && let Some(s) = url.as_str()
                    && let Some((scheme, rest)) = s.split_once("://")
                    && let Some((userinfo, host)) = rest.split_once('@')
                    && !userinfo.contains('/')
                {
                    *url = serde_json::Value::from(format!("{scheme}://***@{host}"));
                }
            }
        }
    }
    v
}

/// An admin listener without a proxy (`ship`, `rules run`): `/metrics`, `/healthz`,
/// `/readyz`, and the rules API (`/api/v1/*`) when a rules runtime is given.
pub async fn serve_metrics(
    listener: TcpListener,
    registry: Arc<prometheus_client::registry::Registry>,
    rules: Option<Arc<crate::rules::Runtime>>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let registry = Arc::clone(&registry);
        let rules = rules.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let registry = Arc::clone(&registry);
                let rules = rules.clone();
                async move {
                    let resp = match (req.method(), req.uri().path()) {
                        (&Method::GET, "/metrics") => {
                            let mut out = String::new();
                            if prometheus_client::encoding::text::encode(&mut out, &registry)
                                .is_err()
                            {
                                out.clear();
                            }
                            let mut r = Response::new(Full::new(Bytes::from(out)));
                            r.headers_mut().insert(
                                header::CONTENT_TYPE,
                                http::HeaderValue::from_static(
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                ),
                            );
                            r
                        }
                        (&Method::GET, "/healthz" | "/readyz") => {
                            json(StatusCode::OK, serde_json::json!({"status": "ok"}))
                        }
                        _ => {
                            let api = match &rules {
                                Some(rt) => crate::rules::api::handle(rt, req).await,
                                None => None,
                            };
                            api.unwrap_or_else(|| {
                                json(
                                    StatusCode::NOT_FOUND,
                                    serde_json::json!({"error": "not_found", "message": "no such admin route", "request_id": null}),
                                )
                            })
                        }
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
