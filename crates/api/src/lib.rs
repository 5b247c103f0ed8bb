//! HTTP surfaces of flick: its own (the invoke path `/fn/{name}`, the
//! management API under `/v1/` which the CLI uses, `/healthz`) and the
//! compatibility surfaces of other platforms' APIs.
//!
//! One module per surface, each exposing `routes()`, merged here. A
//! surface parses its wire format into calls on
//! [`flick_platform::Platform`] and renders what comes back (errors, and an
//! invocation's [`flick_platform::Outcome`]) in its own shapes: status
//! codes, error bodies and headers are the surface's, never the core's.
//!
//! # Layout
//! - `auth`: the admin API key (its file);
//! - `caller`: flick's keys ([`Keys`]: id → secret) and the `Caller`
//!   extractor every surface uses (Bearer, Basic `id:key`, or a dashboard
//!   session's cookie with its `X-Flick-CSRF` token);
//! - `session`: the dashboard's sessions (in memory, each with a CSRF token);
//! - `ui`: the web dashboard at `/ui` (login, logout, the page shell and
//!   the assets embedded by `flick-ui`) on a listener of its own
//!   ([`dashboard_router`]), its own browser origin; its data comes from
//!   `/v1/`;
//! - `native`: flick's own surface: `invoke` (`ANY /fn/{name}[/{rest}]`),
//!   `manage` (`/v1/functions…`, `/v1/activations…`, `/v1/instances`,
//!   `/v1/dlq…`), `usage` (`/v1/usage`, usage per function and day,
//!   priced), `live` (`/v1/logs` as server-sent events, `/v1/stats`,
//!   `/v1/stats/series`) and `/healthz`; its errors are [`ApiError`];
//! - `events`: `POST /events`, CloudEvents in binary, structured and batched mode;
//! - `openwhisk`: OpenWhisk's REST API under `/api/v1/` (actions,
//!   activations, web actions), with its own auth and error shape;
//! - `error`: [`ApiError`], the native surface's errors (also `events`' and
//!   `triggers`'), and its mapping to status codes;
//! - `handshake`: `GET /v1/handshake`, how the CLI recognises the flick of
//!   its data dir before it sends the key (merged in by the binary);
//! - `cluster`: `POST /v1/cluster/invoke`, calls forwarded by other nodes;
//! - `triggers`: `GET /v1/triggers[/{function}]`, the triggers' state
//!   (merged in by the binary, which runs the triggers manager);
//! - `lambda`: the AWS Lambda REST API (`/2015-03-31/functions…`, SigV4);
//! - `openfaas`: the OpenFaaS gateway API (`/system/*`, `/function/*`,
//!   `/async-function/*`) in OpenFaaS's shapes;
//! - `metrics`: `GET /metrics` (merged in by the binary, on the main or
//!   its own listener) and the layer counting responses by surface;
//! - `serve`: the server loop (connection limit, header and body deadlines).

mod auth;
mod caller;
mod cluster;
mod error;
mod events;
pub mod handshake;
mod lambda;
pub mod metrics;
mod native;
mod openfaas;
mod openwhisk;
mod serve;
mod session;
pub mod triggers;
mod ui;

use std::sync::Arc;

use axum::Router;
use axum::routing::post;
use flick_platform::Platform;

pub use auth::AdminKey;
pub use caller::{ADMIN_KEY_ID, Keys};
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

/// How much of an oversized body is read and dropped before the 413.
const DRAIN_LIMIT: usize = 64 << 20;

/// Reads a request body of at most `limit` bytes within the body deadline.
/// An oversized body is still read (and dropped) up to [`DRAIN_LIMIT`]
/// within that deadline, so a client that is still sending it reads the
/// 413 instead of a reset connection.
pub(crate) async fn read_body(
    body: axum::body::Body,
    limit: usize,
    limits: &ApiLimits,
) -> Result<axum::body::Bytes, ApiError> {
    // A broken body (the client went away) is refused like an oversized one.
    let read = async move { read_limited(body, limit).await.ok().flatten() };
    match tokio::time::timeout(limits.body_read_timeout, read).await {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => Err(ApiError::TooLarge { limit }),
        Err(_) => Err(ApiError::BodyTimeout { after: limits.body_read_timeout }),
    }
}

/// The body, or `None` when it is over `limit`. An oversized body is still
/// read (and dropped) up to [`DRAIN_LIMIT`], so the client, which is still
/// sending it, reads the 413 instead of a reset connection.
pub(crate) async fn read_limited(
    mut body: axum::body::Body,
    limit: usize,
) -> Result<Option<axum::body::Bytes>, axum::Error> {
    use http_body_util::BodyExt as _;
    let mut kept = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        total = total.saturating_add(data.len());
        if total <= limit {
            kept.extend_from_slice(&data);
        } else if total > DRAIN_LIMIT {
            break;
        }
    }
    Ok((total <= limit).then(|| axum::body::Bytes::from(kept)))
}

/// The W3C trace a request asks to continue (its `traceparent` and
/// `tracestate` headers), or a new one: an invalid header is ignored, never
/// an error (`flick_core::trace`). Every invoke surface starts here.
pub(crate) fn trace_of(headers: &axum::http::HeaderMap) -> flick_core::Trace {
    flick_core::Trace::from_headers(
        headers.get_all("traceparent").iter().map(|v| v.as_bytes()),
        headers.get_all("tracestate").iter().map(|v| v.as_bytes()),
    )
}

#[derive(Clone)]
pub(crate) struct AppState {
    platform: Arc<Platform>,
    /// The keys callers prove (`caller.rs`).
    keys: Keys,
    limits: ApiLimits,
}

impl axum::extract::FromRef<AppState> for Keys {
    fn from_ref(s: &AppState) -> Self {
        s.keys.clone()
    }
}

/// The main listener's router: every surface but the dashboard, whose
/// `/ui` points at `dashboard` (its own listener), when there is one. A
/// dashboard session proves nothing here: a function's page, served from
/// this origin, could be what sends its cookie.
pub fn router(
    platform: Arc<Platform>,
    key: AdminKey,
    limits: ApiLimits,
    dashboard: Option<std::net::SocketAddr>,
) -> Router {
    let keys = Keys::new(&key);
    let state = AppState { platform, keys, limits };
    let router = Router::new()
        .merge(native::routes())
        .merge(cluster::routes())
        .route("/events", post(events::post_events))
        .merge(openwhisk::routes())
        .merge(lambda::routes())
        .merge(openfaas::routes());
    let router = match dashboard {
        Some(at) => router.merge(ui::elsewhere(at)),
        None => router,
    };
    router.fallback(|| async { ApiError::NoRoute }).with_state(state)
}

/// The dashboard's own listener: its pages (`/ui`), the native API its
/// script calls (`/v1`) and functions for its invoke panel (`/fn`). Its
/// sessions count here only. No answer but the dashboard's own may run
/// script on this origin: everything else carries
/// `Content-Security-Policy: sandbox`.
pub fn dashboard_router(platform: Arc<Platform>, key: AdminKey, limits: ApiLimits) -> Router {
    let keys = Keys::new(&key).with_sessions();
    let state = AppState { platform, keys, limits };
    Router::new()
        .merge(native::routes())
        .merge(ui::routes())
        .route("/", axum::routing::get(ui::home))
        .fallback(|| async { ApiError::NoRoute })
        .with_state(state)
        .layer(axum::middleware::from_fn(ui::sandbox_all_but_ui))
}
