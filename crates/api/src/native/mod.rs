//! flick's own surface: the invoke path `/fn/{name}[/{rest}]`, the
//! management API under `/v1/` (which the CLI uses), `/v1/usage` (the
//! bill), its live views (`/v1/logs` over server-sent events, `/v1/stats`)
//! and `/healthz`.
//!
//! Its error shape is [`crate::ApiError`] (`{"error": {"code", "message"}}`,
//! defined in `error.rs` because `events.rs`, `triggers.rs` and the body
//! reader answer in it too); an invocation's outcome is rendered with
//! [`flick_platform::InvokeResponse::native_response`], the same rendering
//! the activation records keep.

pub(crate) mod invoke;
mod live;
mod manage;
mod usage;

use axum::Router;
use axum::routing::get;

use crate::caller::Caller;
use crate::{ApiError, AppState};

/// The native surface's rule for everything but calls of public
/// functions: the caller proved a key, or gets a 401.
pub(crate) fn admin(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_admin() { Ok(()) } else { Err(ApiError::Unauthorized) }
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }))
        .merge(invoke::routes())
        .merge(manage::routes())
        .merge(usage::routes())
        .merge(live::routes())
}
