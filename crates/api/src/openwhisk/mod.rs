//! OpenWhisk's REST API under `/api/v1/`, so the `openwhisk` npm client
//! (and wsk-style tools) work against flick unchanged: namespaces, actions
//! (PUT/GET/DELETE/list, invoke blocking and not), activations (list, get,
//! logs, result), web actions, triggers and rules (the platform's rule
//! triggers: CRUD, fire, enable/disable) and the `/whisk.system/alarms`
//! feeds (the platform's alarms). Packages have no counterpart: the list
//! is empty, changes get 501 saying so.
//!
//! An action is a flick function of the same name (`package.rs` turns a PUT
//! into a package); an activation is a flick activation record rendered
//! as OpenWhisk's document (`activations.rs`). Errors are OpenWhisk's
//! `{"error", "code"}` (`error.rs`).

mod actions;
mod activations;
mod auth;
mod entities;
mod error;
mod feeds;
mod invoke;
mod package;
mod rules;
mod triggers;
mod web;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, get};

pub(crate) use error::OwError;

use crate::AppState;

type OwResult = Result<Response, OwError>;

/// Every route answers an unknown method with OpenWhisk's 405 shape.
fn methods(router: MethodRouter<AppState>) -> MethodRouter<AppState> {
    router.fallback(|| async { OwError::MethodNotAllowed })
}

pub(crate) fn routes() -> Router<AppState> {
    let ns = "/api/v1/namespaces/{ns}";
    Router::new()
        .route("/api/v1/namespaces", methods(get(namespaces)))
        .route(&format!("{ns}/actions"), methods(get(actions::list)))
        .route(
            &format!("{ns}/actions/{{name}}"),
            methods(get(actions::get).put(actions::put).delete(actions::delete).post(invoke::invoke)),
        )
        .route(&format!("{ns}/actions/{{package}}/{{name}}"), any(feeds::package_action))
        .route(&format!("{ns}/triggers"), methods(get(triggers::list)))
        .route(
            &format!("{ns}/triggers/{{name}}"),
            methods(get(triggers::get).put(triggers::put).delete(triggers::delete).post(triggers::fire)),
        )
        .route(&format!("{ns}/rules"), methods(get(rules::list)))
        .route(
            &format!("{ns}/rules/{{name}}"),
            methods(get(rules::get).put(rules::put).delete(rules::delete).post(rules::set_status)),
        )
        .route(&format!("{ns}/activations"), methods(get(activations::list)))
        .route(&format!("{ns}/activations/{{id}}"), methods(get(activations::get)))
        .route(&format!("{ns}/activations/{{id}}/logs"), methods(get(activations::logs)))
        .route(&format!("{ns}/activations/{{id}}/result"), methods(get(activations::result)))
        .route(&format!("{ns}/{{entity}}"), any(entities::collection))
        .route(&format!("{ns}/{{entity}}/{{*name}}"), any(entities::one))
        .route("/api/v1/web/{ns}/{package}/{*action}", any(web::web))
        // Anything else under /api/v1 is OpenWhisk's 404, not the native shape.
        .route("/api/v1", any(|| async { OwError::NotFound }))
        .route("/api/v1/{*rest}", any(|| async { OwError::NotFound }))
}

/// `GET /api/v1/namespaces`: the caller's one namespace.
async fn namespaces(State(s): State<AppState>, headers: HeaderMap) -> OwResult {
    let id = auth::require_key(&headers, &s.keys)?;
    Ok(axum::Json(vec![id]).into_response())
}

/// The key id of an authenticated caller of `namespace`, or OpenWhisk's
/// refusal: 401 without a valid key, 403 for another namespace.
fn authorize(s: &AppState, headers: &HeaderMap, namespace: &str) -> Result<String, OwError> {
    let id = auth::require_key(headers, &s.keys)?;
    auth::check_namespace(namespace, &id)?;
    Ok(id)
}

/// What a PUT replaces: the entity as it is, `None` when there is none,
/// or OpenWhisk's 409 when there is one and the PUT did not say
/// `overwrite=true`.
async fn replaced<T>(
    lookup: impl std::future::Future<Output = Result<T, flick_platform::PlatformError>>,
    overwrite: bool,
) -> Result<Option<T>, OwError> {
    match lookup.await {
        Ok(_) if !overwrite => Err(OwError::Conflict),
        Ok(old) => Ok(Some(old)),
        Err(flick_platform::PlatformError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A caller's value in an error message: cut, control characters escaped.
fn shown(v: &str) -> String {
    v.chars().take(64).flat_map(char::escape_default).collect()
}

/// The function an action name means. OpenWhisk's packages (`pkg/name`)
/// have no flick counterpart and are refused where they are named.
fn function_name(name: &str) -> Result<String, OwError> {
    flick_core::FunctionName::new(name)
        .map(|n| n.as_str().to_string())
        .map_err(|e| OwError::BadRequest(format!("action name '{}': {e}", shown(name))))
}
