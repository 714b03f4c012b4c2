//! Accept loop: HTTP/1.1 and HTTP/2 (h2c prior knowledge) on one port, with the head
//! limits and timeouts of `limits`, connections tracked for a graceful drain. Plain-TCP
//! connections start on the HTTP/1.1 fast path (`super::h1`), which hands anything else
//! to hyper; TLS connections go to hyper directly.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::service::{ConnInfo, Proxy, handle};
use crate::config::Limits;

fn connection_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32);
    builder
}

/// Serves until `stop` turns true, then returns the tracker of open connections so the
/// caller can drain them within its grace period.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    proxy: Arc<Proxy>,
    mut stop: watch::Receiver<bool>,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                crate::log::warn("proxy.accept_failed", &format!("accept failed: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let info = ConnInfo {
            remote,
            tls: tls.is_some(),
        };
        let watcher = graceful.watcher();
        match &tls {
            None => {
                tokio::spawn(super::h1::serve(
                    stream,
                    info,
                    Arc::clone(&proxy),
                    stop.clone(),
                    watcher,
                ));
            }
            Some(acceptor) => {
                // The handshake gets the same budget as a request head.
                let budget =
                    Duration::from_millis(proxy.current().cfg.limits.header_read_timeout_ms);
                let handshake = tokio::time::timeout(budget, acceptor.accept(stream));
                let proxy = Arc::clone(&proxy);
                tokio::spawn(async move {
                    let Ok(Ok(tls_stream)) = handshake.await else {
                        return;
                    };
                    serve_hyper(tls_stream, info, proxy, watcher).await;
                });
            }
        }
    }
    graceful
}

/// Serves a connection with hyper (HTTP/1.1 or HTTP/2, upgrades allowed) until it ends
/// or the graceful drain closes it. Limits come from the current config, so a reload
/// applies to new connections.
pub(super) async fn serve_hyper<I>(io: I, info: ConnInfo, proxy: Arc<Proxy>, watcher: Watcher)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let builder = connection_builder(&proxy.current().cfg.limits);
    let service = service_fn(move |req| handle(Arc::clone(&proxy), info, req));
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    let _ = watcher.watch(conn).await;
}
