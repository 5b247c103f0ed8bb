//! Triggers, rules and packages: OpenWhisk entities flick has no store for.
//! flick's triggers are declared with the function (`[[triggers]]` in
//! `flick.toml`: cron, MQTT, NATS, CloudEvents) and fire it directly, with
//! no rule in between; there are no packages. So lists are empty, a name is
//! not found, and creating, firing, toggling or deleting one answers 501
//! with what to use instead. Any other collection is OpenWhisk's 404.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method};
use axum::response::IntoResponse;

use super::{OwError, OwResult, authorize};
use crate::AppState;

fn known(entity: &str) -> bool {
    matches!(entity, "triggers" | "rules" | "packages")
}

fn not_implemented(entity: &str) -> OwError {
    OwError::NotImplemented(match entity {
        "packages" => "flick has no packages: create actions in the default package".into(),
        _ => format!(
            "flick has no OpenWhisk {entity}: declare triggers in the function's flick.toml ([[triggers]] of type \
             cron, mqtt, nats or cloudevents); they invoke the function directly"
        ),
    })
}

pub(crate) async fn collection(
    State(s): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Path((ns, entity)): Path<(String, String)>,
) -> OwResult {
    authorize(&s, &headers, &ns)?;
    if !known(&entity) {
        return Err(OwError::NotFound);
    }
    match method {
        Method::GET => Ok(Json(Vec::<serde_json::Value>::new()).into_response()),
        _ => Err(OwError::MethodNotAllowed),
    }
}

pub(crate) async fn one(
    State(s): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Path((ns, entity, _name)): Path<(String, String, String)>,
) -> OwResult {
    authorize(&s, &headers, &ns)?;
    if !known(&entity) {
        return Err(OwError::NotFound);
    }
    match method {
        // None exists, so none can be read or deleted.
        Method::GET | Method::DELETE => Err(OwError::NotFound),
        _ => Err(not_implemented(&entity)),
    }
}
