//! Dead-man's-switch pings (`HEALTHCHECKS_PING_URL`): an external monitor that hears
//! nothing, or hears `/fail`, alerts even when this process cannot send alerts itself.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::Instrument;

use crate::api::AppState;

/// Pings until shutdown: `<url>` while the database answers, `<url>/fail` when not.
pub async fn run(state: AppState, url: String, interval: Duration, timeout: Duration) {
    let client = match reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("minirag-rag-core/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(event = "healthcheck.ping_failed", error = %e, "cannot build the ping client; pings disabled");
            return;
        }
    };
    let fail_url = format!("{}/fail", url.trim_end_matches('/'));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if state.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        let healthy = state
            .store
            .read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
            .await
            .is_ok();
        let target = if healthy { &url } else { &fail_url };
        let span = crate::obs::trace::client_span("GET", target);
        let sent = client
            .get(target)
            .headers(span.in_scope(crate::obs::trace::outbound_headers))
            .send()
            .instrument(span.clone())
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => {
                crate::obs::trace::client_status(&span, resp.status().as_u16());
                tracing::info!(
                    event = "healthcheck.ping_sent",
                    healthy,
                    status_code = resp.status().as_u16(),
                    "healthcheck ping sent"
                );
            }
            Ok(resp) => {
                crate::obs::trace::client_status(&span, resp.status().as_u16());
                state.metrics.healthcheck_ping_failed.inc();
                tracing::warn!(
                    event = "healthcheck.ping_failed",
                    healthy,
                    status_code = resp.status().as_u16(),
                    "healthcheck ping refused"
                );
            }
            Err(e) => {
                crate::obs::trace::client_failed(&span, "transport");
                state.metrics.healthcheck_ping_failed.inc();
                tracing::warn!(event = "healthcheck.ping_failed", healthy, error = %e.without_url(), "healthcheck ping did not get through");
            }
        }
    }
}
