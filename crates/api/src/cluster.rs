//! `POST /v1/cluster/invoke`: a sync call another node of the cluster
//! forwarded to this one (its function's home, or a spill candidate; see
//! `flick_platform::forward`). Only members may call it: they prove the
//! cluster's secret, kept in the shared store; anyone else gets a 404, as
//! if the route did not exist. The caller's own key was checked by the
//! node it called (the forward says whether it had the key).

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request};
use axum::response::IntoResponse;
use flick_platform::forward::{Forward, SECRET_HEADER};

use crate::caller::constant_time_eq;
use crate::{ApiError, AppState};

pub(crate) fn routes() -> axum::Router<AppState> {
    axum::Router::new().route("/v1/cluster/invoke", axum::routing::post(invoke))
}

async fn invoke(
    State(s): State<AppState>,
    headers: HeaderMap,
    req: Request<Body>,
) -> Result<axum::response::Response, ApiError> {
    let Some(secret) = s.platform.cluster_secret() else {
        return Err(ApiError::NoRoute);
    };
    let given = headers.get(SECRET_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
    if !constant_time_eq(given, secret.as_bytes()) {
        return Err(ApiError::NoRoute);
    }
    // The body as base64 in JSON (4/3 of it) with the request's fields.
    let limit = s.limits.max_body_bytes / 3 * 4 + (1 << 20);
    let body = crate::read_body(req.into_body(), limit, &s.limits).await?;
    let forward: Forward = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("a forwarded call that is not valid JSON: {e}")))?;
    Ok(Json(s.platform.accept_forwarded(forward).await).into_response())
}
