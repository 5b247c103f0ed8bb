//! `GET /v1/triggers[/{function}]`: every trigger's state and counts (admin
//! key). Merged in by the binary, which owns the triggers manager.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use flick_platform::{Platform, PlatformError};
use flick_triggers::Manager;
use serde_json::json;

use crate::{AdminKey, ApiError};

#[derive(Clone)]
struct TriggersState {
    manager: Arc<Manager>,
    platform: Arc<Platform>,
    key: AdminKey,
}

pub fn router(manager: Arc<Manager>, platform: Arc<Platform>, key: AdminKey) -> Router {
    Router::new()
        .route("/v1/triggers", get(list))
        .route("/v1/triggers/{function}", get(one))
        .with_state(TriggersState { manager, platform, key })
}

async fn list(State(s): State<TriggersState>, headers: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    s.key.check(&headers)?;
    Ok(Json(json!({ "triggers": s.manager.statuses(None) })))
}

async fn one(
    State(s): State<TriggersState>,
    headers: HeaderMap,
    Path(function): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    s.key.check(&headers)?;
    if s.platform.route(&function).is_none() {
        return Err(PlatformError::FunctionNotFound(function).into());
    }
    Ok(Json(json!({ "triggers": s.manager.statuses(Some(&function)) })))
}
