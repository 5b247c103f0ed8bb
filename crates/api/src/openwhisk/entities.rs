//! Packages: OpenWhisk entities flick has no counterpart for (functions
//! live in one flat namespace). The list is empty, a name is not found,
//! and creating or changing one answers 501 saying what to do instead.
//! Triggers or rules named with a `/` (a package path) are refused the
//! same way; any other collection is OpenWhisk's 404.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method};
use axum::response::IntoResponse;

use super::actions::no_packages;
use super::{OwError, OwResult, authorize};
use crate::AppState;

pub(crate) async fn collection(
    State(s): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Path((ns, entity)): Path<(String, String)>,
) -> OwResult {
    authorize(&s, &headers, &ns)?;
    if entity != "packages" {
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
    Path((ns, entity, name)): Path<(String, String, String)>,
) -> OwResult {
    authorize(&s, &headers, &ns)?;
    match (entity.as_str(), method) {
        // `triggers/pkg/name`: the single-name routes took every other.
        ("triggers" | "rules", _) => Err(no_packages(name.split('/').next().unwrap_or_default())),
        // None exists, so none can be read or deleted.
        ("packages", Method::GET | Method::DELETE) => Err(OwError::NotFound),
        ("packages", _) => {
            Err(OwError::NotImplemented("flick has no packages: create actions in the default package".into()))
        }
        _ => Err(OwError::NotFound),
    }
}
