//! `GET /v1/triggers[/{function}]`: every trigger's state and counts (admin
//! key). Merged in by the binary, which owns the triggers manager.

use std::sync::Arc;

use axum::extract::FromRef;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use flick_platform::{Platform, PlatformError};
use flick_triggers::Manager;
use serde_json::json;

use crate::ApiError;
use crate::caller::{Caller, Keys};
use crate::native::admin;

#[derive(Clone)]
struct TriggersState {
    manager: Arc<Manager>,
    platform: Arc<Platform>,
    keys: Keys,
}

impl FromRef<TriggersState> for Keys {
    fn from_ref(s: &TriggersState) -> Self {
        s.keys.clone()
    }
}

/// `keys`: the listener's ([`Keys::with_sessions`] on the dashboard's).
pub fn router(manager: Arc<Manager>, platform: Arc<Platform>, keys: Keys) -> Router {
    Router::new()
        .route("/v1/triggers", get(list))
        .route("/v1/triggers/{function}", get(one))
        .with_state(TriggersState { manager, platform, keys })
}

async fn list(State(s): State<TriggersState>, caller: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    admin(&caller)?;
    Ok(Json(json!({ "triggers": s.manager.statuses(None) })))
}

async fn one(
    State(s): State<TriggersState>,
    caller: Caller,
    Path(function): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    admin(&caller)?;
    if s.platform.route(&function).is_none() {
        return Err(PlatformError::FunctionNotFound(function).into());
    }
    Ok(Json(json!({ "triggers": s.manager.statuses(Some(&function)) })))
}
