//! HTTP surfaces of flick: the invoke path `/fn/{name}`, the management API
//! under `/v1/` (which the CLI uses; it has no private path) and `/healthz`.
//!
//! Handlers only parse requests into calls on [`flick_platform::Platform`]
//! and render the result; errors become HTTP statuses in one place
//! ([`error`]).
//!
//! # Layout
//! - `auth`: the admin API key and the bearer check;
//! - `invoke`: `ANY /fn/{name}[/{rest}]`;
//! - `manage`: `/v1/functions…`, `/v1/activations…`, `/v1/instances`;
//! - `error`: [`ApiError`] and its mapping to status codes;
//! - `handshake`: `GET /v1/handshake`, how the CLI recognises the flick of
//!   its data dir before it sends the key (merged in by the binary).

mod auth;
mod error;
pub mod handshake;
mod invoke;
mod manage;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::routing::{any, get, post};
use flick_platform::Platform;

pub use auth::AdminKey;
pub use error::ApiError;

/// Limits the API enforces before the platform sees a request.
#[derive(Clone, Debug)]
pub struct ApiLimits {
    /// Largest invocation body (413 above it).
    pub max_body_bytes: usize,
    /// Largest deploy archive.
    pub max_archive_bytes: usize,
}

#[derive(Clone)]
pub(crate) struct AppState {
    platform: Arc<Platform>,
    key: AdminKey,
    limits: ApiLimits,
}

/// The whole HTTP surface as one router.
pub fn router(platform: Arc<Platform>, key: AdminKey, limits: ApiLimits) -> Router {
    let state = AppState { platform, key, limits };
    Router::new()
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }))
        .route("/fn/{name}", any(invoke::invoke_root))
        .route("/fn/{name}/", any(invoke::invoke_root))
        .route("/fn/{name}/{*rest}", any(invoke::invoke_path))
        .route("/v1/functions", get(manage::list_functions).post(manage::deploy))
        .route("/v1/functions/{name}", get(manage::get_function).delete(manage::delete_function))
        .route("/v1/functions/{name}/revisions", get(manage::list_revisions))
        .route("/v1/functions/{name}/rollback", post(manage::rollback))
        .route("/v1/activations", get(manage::list_activations))
        .route("/v1/activations/{id}", get(manage::get_activation))
        .route("/v1/instances", get(manage::list_instances))
        .fallback(|| async { ApiError::NoRoute })
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}
