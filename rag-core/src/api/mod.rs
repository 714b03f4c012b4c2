//! HTTP API: routes and the layers around them.

mod admin;
mod ask;
pub mod cors;
pub mod error;
pub(crate) mod extract;
pub(crate) mod ingest;
mod internal;
mod middleware;
mod ops;
mod sources;
pub mod state;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, patch, post};

pub use state::{AppState, Inner};

pub fn router(state: AppState) -> Router {
    let body_limit = state.cfg.limits.max_request_bytes;
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route("/api/v1/ingest/text", post(ingest::ingest_text))
        .route("/api/v1/ingest/files", post(ingest::ingest_files))
        .route("/api/v1/ingest/urls", post(ingest::ingest_urls))
        .route("/api/v1/sources", get(sources::list))
        .route("/api/v1/sources/delete", post(sources::batch_delete))
        .route(
            "/api/v1/sources/{id}",
            get(sources::show).delete(sources::delete),
        )
        .route("/api/v1/sources/{id}/chunks", get(sources::chunks))
        .route("/api/v1/sources/{id}/preview", get(sources::preview))
        .route("/api/v1/search", get(ask::search))
        .route(
            "/api/v1/jobs",
            get(crate::jobs::api::list).post(crate::jobs::api::submit),
        )
        .route("/api/v1/jobs/{id}", get(crate::jobs::api::show))
        .route("/api/v1/jobs/{id}/cancel", post(crate::jobs::api::cancel))
        .route("/api/v1/jobs/{id}/retry", post(crate::jobs::api::retry))
        .route("/api/v1/dedupe", post(crate::jobs::api::dedupe))
        .route("/api/v1/rebuild", post(crate::jobs::api::rebuild))
        .route("/api/v1/ask", post(ask::ask))
        .route("/api/v1/admin/organization", get(admin::organization))
        .route(
            "/api/v1/admin/organizations",
            post(admin::create_organization),
        )
        .route(
            "/api/v1/admin/workspaces",
            get(admin::list_workspaces).post(admin::create_workspace),
        )
        .route(
            "/api/v1/admin/users",
            get(admin::list_users).post(admin::create_user),
        )
        .route("/api/v1/admin/users/{id}", patch(admin::change_role))
        .route(
            "/api/v1/admin/users/{id}/data",
            delete(crate::lifecycle::api::delete_user_data),
        )
        .route(
            "/api/v1/admin/workspaces/{id}",
            delete(crate::lifecycle::api::delete_workspace),
        )
        .route(
            "/api/v1/admin/workspaces/{id}/export",
            post(crate::lifecycle::api::export_workspace),
        )
        .route(
            "/api/v1/admin/workspaces/{id}/retention",
            get(crate::lifecycle::api::get_retention).put(crate::lifecycle::api::set_retention),
        )
        .route(
            "/api/v1/admin/exports/{id}",
            get(crate::lifecycle::api::show_export),
        )
        .route(
            "/api/v1/admin/exports/{id}/download",
            get(crate::lifecycle::api::download_export),
        )
        .route(
            "/api/v1/admin/keys",
            get(admin::list_keys).post(admin::create_key),
        )
        .route("/api/v1/admin/keys/{id}", delete(admin::revoke_key))
        .route("/api/v1/admin/audit", get(crate::audit::api::list))
        .route(
            "/api/v1/admin/billing",
            get(crate::billing::api::show).patch(crate::billing::api::update),
        )
        .route(
            "/api/v1/billing/checkout",
            post(crate::billing::api::checkout),
        )
        .route("/api/v1/billing/portal", post(crate::billing::api::portal))
        .route(
            "/api/v1/billing/stripe/webhook",
            post(crate::billing::api::stripe_webhook),
        )
        .route("/internal/v1/principal", get(internal::principal))
        .route_layer(axum::middleware::from_fn(middleware::record_route))
        .layer(DefaultBodyLimit::max(body_limit))
        // Inside the request layer: preflights get a request id, an access line and the
        // error shape. Validated at startup; a policy that still fails closes CORS.
        .layer(axum::middleware::from_fn_with_state(
            std::sync::Arc::new(
                cors::CorsPolicy::from_config(&state.cfg.cors)
                    .unwrap_or_else(|_| cors::CorsPolicy::disabled()),
            ),
            cors::handle,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::request_layer,
        ))
        .with_state(state)
}
