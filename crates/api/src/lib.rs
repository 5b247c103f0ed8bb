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
//! - `manage`: `/v1/functions…`, `/v1/activations…`, `/v1/instances`,
//!   `/v1/dlq…` (dead letters of async calls);
//! - `events`: `POST /events`, CloudEvents in binary, structured and batched mode;
//! - `openwhisk`: OpenWhisk's REST API under `/api/v1/` (actions,
//!   activations, web actions), with its own auth and error shape;
//! - `error`: [`ApiError`] and its mapping to status codes;
//! - `handshake`: `GET /v1/handshake`, how the CLI recognises the flick of
//!   its data dir before it sends the key (merged in by the binary);
//! - `triggers`: `GET /v1/triggers[/{function}]`, the triggers' state
//!   (merged in by the binary, which runs the triggers manager);
//! - `lambda`: the AWS Lambda REST API (`/2015-03-31/functions…`, SigV4);
//! - `serve`: the server loop (connection limit, header and body deadlines).

mod auth;
mod error;
mod events;
pub mod handshake;
mod invoke;
mod lambda;
mod manage;
mod openwhisk;
mod serve;
pub mod triggers;

use std::sync::Arc;

use axum::Router;
use axum::routing::{any, get, post};
use flick_platform::Platform;

pub use auth::AdminKey;
pub use error::ApiError;
pub use serve::{ConnectionLimits, serve};

/// Limits the API enforces before the platform sees a request.
#[derive(Clone, Debug)]
pub struct ApiLimits {
    /// Largest invocation body (413 above it).
    pub max_body_bytes: usize,
    /// Largest deploy archive.
    pub max_archive_bytes: usize,
    /// Time a client has to send a whole request body (408 past it).
    pub body_read_timeout: std::time::Duration,
}

/// Reads a request body of at most `limit` bytes within the body deadline.
pub(crate) async fn read_body(
    body: axum::body::Body,
    limit: usize,
    limits: &ApiLimits,
) -> Result<axum::body::Bytes, ApiError> {
    match tokio::time::timeout(limits.body_read_timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(ApiError::TooLarge { limit }),
        Err(_) => Err(ApiError::BodyTimeout { after: limits.body_read_timeout }),
    }
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
        .route("/events", post(events::post_events))
        .route("/v1/functions", get(manage::list_functions).post(manage::deploy))
        .route("/v1/functions/{name}", get(manage::get_function).delete(manage::delete_function))
        .route("/v1/functions/{name}/revisions", get(manage::list_revisions))
        .route("/v1/functions/{name}/rollback", post(manage::rollback))
        .route("/v1/activations", get(manage::list_activations))
        .route("/v1/activations/{id}", get(manage::get_activation))
        .route("/v1/instances", get(manage::list_instances))
        .route("/v1/dlq", get(manage::list_dead).delete(manage::purge_dead))
        .route("/v1/dlq/redrive", post(manage::redrive_all))
        .route("/v1/dlq/{id}", get(manage::get_dead))
        .route("/v1/dlq/{id}/redrive", post(manage::redrive_dead))
        .merge(openwhisk::routes())
        .merge(lambda::routes())
        .fallback(|| async { ApiError::NoRoute })
        .with_state(state)
}
