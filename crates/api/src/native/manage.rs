//! `/v1/…`: the management API (functions, revisions, activations,
//! instances, dead letters).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use flick_core::{ActivationId, Cause};
use flick_store::ActivationQuery;
use serde::Deserialize;
use serde_json::{Value, json};

use super::admin;
use crate::caller::Caller;
use crate::{ApiError, AppState};

type ApiResult = Result<axum::response::Response, ApiError>;

pub(crate) fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/v1/functions", get(list_functions).post(deploy))
        .route("/v1/functions/{name}", get(get_function).delete(delete_function))
        .route("/v1/functions/{name}/revisions", get(list_revisions))
        .route("/v1/functions/{name}/rollback", post(rollback))
        .route("/v1/activations", get(list_activations))
        .route("/v1/activations/{id}", get(get_activation))
        .route("/v1/instances", get(list_instances))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/dlq", get(list_dead).delete(purge_dead))
        .route("/v1/dlq/redrive", post(redrive_all))
        .route("/v1/dlq/{id}", get(get_dead))
        .route("/v1/dlq/{id}/redrive", post(redrive_dead))
}

async fn list_functions(State(s): State<AppState>, caller: Caller) -> ApiResult {
    admin(&caller)?;
    let functions = s.platform.functions().await?;
    Ok(Json(json!({ "functions": functions })).into_response())
}

/// `POST /v1/functions` with a `.tar.gz` package as the body.
async fn deploy(State(s): State<AppState>, caller: Caller, req: Request<Body>) -> ApiResult {
    admin(&caller)?;
    let limit = s.limits.max_archive_bytes;
    let body = crate::read_body(req.into_body(), limit, &s.limits).await?;
    if body.is_empty() {
        return Err(ApiError::BadRequest("empty body: send the function package (.tar.gz)".into()));
    }
    let outcome = s.platform.deploy(body).await?;
    let status = if outcome.unchanged { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(outcome)).into_response())
}

#[derive(Deserialize)]
struct FunctionParams {
    /// `?env=values`: include the values of `[env]`, not only their names.
    env: Option<String>,
}

/// `GET /v1/functions/{name}`: the names of `[env]` always, its values
/// (often secrets) only when asked for with `?env=values`.
async fn get_function(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(p): Query<FunctionParams>,
) -> ApiResult {
    admin(&caller)?;
    let with_values = match p.env.as_deref() {
        None | Some("names") => false,
        Some("values") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!("`env` must be `names` or `values`, got `{other}`")));
        }
    };
    let (info, revision) = s.platform.function(&name).await?;
    let mut value = serde_json::to_value(&info).unwrap_or(Value::Null);
    let mut manifest = serde_json::to_value(&revision.manifest).unwrap_or(Value::Null);
    if !with_values && let Some(m) = manifest.as_object_mut() {
        m.remove("env");
    }
    value["manifest"] = manifest;
    value["env_names"] = json!(revision.manifest.env.keys().collect::<Vec<_>>());
    value["url"] = json!(format!("/fn/{name}"));
    // Its async calls: waiting (ready), running (leased), dead letters.
    let depth = s.platform.queue_depth(&name).await?;
    value["queue"] = json!({ "ready": depth.ready, "leased": depth.leased, "dead": depth.dead });
    Ok(Json(value).into_response())
}

async fn delete_function(State(s): State<AppState>, caller: Caller, Path(name): Path<String>) -> ApiResult {
    admin(&caller)?;
    s.platform.delete(&name).await?;
    Ok(Json(json!({ "deleted": name })).into_response())
}

async fn list_revisions(State(s): State<AppState>, caller: Caller, Path(name): Path<String>) -> ApiResult {
    admin(&caller)?;
    let revisions = s.platform.revisions(&name).await?;
    // The route table holds the current revision: no second store query.
    let current = s.platform.route(&name).map(|r| r.revision.number);
    Ok(Json(json!({ "current_revision": current, "revisions": revisions })).into_response())
}

#[derive(Deserialize)]
struct RollbackBody {
    revision: Option<u32>,
}

/// Largest rollback body: `{"revision": N}` needs a few bytes.
const MAX_ROLLBACK_BODY: usize = 4 << 10;

async fn rollback(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    req: Request<Body>,
) -> ApiResult {
    // The key first: nobody without it gets flick to read a body.
    admin(&caller)?;
    let body = crate::read_body(req.into_body(), MAX_ROLLBACK_BODY, &s.limits).await?;
    let parsed: RollbackBody = if body.is_empty() {
        RollbackBody { revision: None }
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("rollback body must be {{\"revision\": N}}: {e}")))?
    };
    let rev = s.platform.rollback(&name, parsed.revision).await?;
    Ok(Json(json!({ "function": name, "revision": rev.number, "hash": rev.hash })).into_response())
}

#[derive(Deserialize)]
struct ActivationParams {
    function: Option<String>,
    limit: Option<u32>,
    after_seq: Option<i64>,
    cause: Option<String>,
    trigger: Option<String>,
    parent: Option<String>,
}

async fn list_activations(State(s): State<AppState>, caller: Caller, Query(p): Query<ActivationParams>) -> ApiResult {
    admin(&caller)?;
    let cause = match p.cause.as_deref() {
        None => None,
        Some(c) => Some(Cause::parse(c).ok_or_else(|| {
            let known: Vec<&str> = Cause::ALL.iter().map(|c| c.as_str()).collect();
            ApiError::BadRequest(format!("cause must be one of {}, got `{c}`", known.join(", ")))
        })?),
    };
    let parent = match p.parent.as_deref() {
        None => None,
        Some(id) => Some(
            ActivationId::parse(id)
                .ok_or_else(|| ApiError::BadRequest(format!("parent `{id}` is not an activation id")))?,
        ),
    };
    let query = ActivationQuery {
        function: p.function,
        cause,
        trigger: p.trigger,
        parent,
        after_seq: p.after_seq,
        limit: p.limit.unwrap_or(0),
    };
    let activations = s.platform.activations(&query).await?;
    Ok(Json(json!({ "activations": activations })).into_response())
}

async fn get_activation(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult {
    admin(&caller)?;
    Ok(Json(s.platform.activation(&id).await?).into_response())
}

/// `GET /v1/nodes`: the members of the cluster as their latest heartbeats
/// described them (one, this node, with the embedded store).
async fn list_nodes(State(s): State<AppState>, caller: Caller) -> ApiResult {
    admin(&caller)?;
    let nodes = s.platform.store().nodes().await.map_err(flick_platform::PlatformError::from)?;
    let now = flick_core::now_ms();
    let nodes: Vec<Value> = nodes
        .into_iter()
        .map(|n| {
            json!({ "id": n.id, "address": n.address, "started_ms": n.started_ms, "heartbeat_ms": n.heartbeat_ms,
                    "heartbeat_age_ms": (now - n.heartbeat_ms).max(0), "inflight": n.inflight,
                    "instances": n.instances, "version": n.version })
        })
        .collect();
    Ok(Json(json!({ "nodes": nodes })).into_response())
}

async fn list_instances(State(s): State<AppState>, caller: Caller) -> ApiResult {
    admin(&caller)?;
    let scheduler = s.platform.scheduler();
    let instances: Vec<Value> = scheduler
        .status()
        .into_iter()
        .map(|p| {
            json!({ "function": p.function, "revision": p.revision, "revision_id": p.revision_id, "instances": p.instances,
                    "starting": p.starting, "inflight": p.inflight, "waiting": p.waiting })
        })
        .collect();
    let ((used, memory), limits) = scheduler.budget();
    let counts = scheduler.stem_cells();
    let stems: serde_json::Map<String, Value> = counts.iter().map(|c| (c.kind.clone(), json!(c.ready))).collect();
    let died: serde_json::Map<String, Value> = counts.iter().map(|c| (c.kind.clone(), json!(c.died))).collect();
    Ok(Json(json!({
        "instances": instances,
        "stem_cells": stems,
        "stem_cells_died": died,
        "fork_templates": scheduler.fork_templates(),
        "budget": { "instances": used, "memory": memory,
                    "max_instances": limits.max_instances, "max_memory": limits.max_memory },
    }))
    .into_response())
}

#[derive(Deserialize)]
struct DlqParams {
    function: Option<String>,
    limit: Option<u32>,
}

/// A dead letter as the API shows it: the stored call (its body as base64,
/// as it would be retried) and every failed attempt.
fn dead_letter_json(item: &flick_platform::Item, with_request: bool) -> Value {
    let inv = &item.invocation;
    let mut v = json!({
        "id": inv.id.as_str(),
        "function": inv.function,
        "cause": inv.cause,
        "trigger": inv.trigger,
        "attempts": item.errors.len().max(inv.attempt as usize),
        "max_attempts": item.max_attempts,
        "enqueued_ms": item.enqueued_ms,
        "dead_ms": item.dead_ms,
        "last_error": item.errors.last(),
    });
    if with_request {
        v["errors"] = json!(item.errors);
        v["request"] = json!({
            "method": inv.method, "path": inv.path, "query": inv.query,
            "headers": inv.headers, "body_bytes": inv.body.len(),
        });
        v["invocation"] = serde_json::to_value(inv).unwrap_or(Value::Null);
    }
    v
}

/// `GET /v1/dlq[?function=NAME]`
async fn list_dead(State(s): State<AppState>, caller: Caller, Query(p): Query<DlqParams>) -> ApiResult {
    admin(&caller)?;
    let items = s.platform.dead_letters(p.function.as_deref(), p.limit.unwrap_or(100)).await?;
    let dead: Vec<Value> = items.iter().map(|i| dead_letter_json(i, false)).collect();
    Ok(Json(json!({ "dead_letters": dead })).into_response())
}

/// `GET /v1/dlq/{id}`
async fn get_dead(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult {
    admin(&caller)?;
    let item = s.platform.dead_letter(&id).await?;
    Ok(Json(dead_letter_json(&item, true)).into_response())
}

/// `POST /v1/dlq/{id}/redrive`
async fn redrive_dead(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult {
    admin(&caller)?;
    s.platform.redrive(&id).await?;
    Ok(Json(json!({ "redriven": 1, "id": id })).into_response())
}

/// `POST /v1/dlq/redrive[?function=NAME]`: every dead letter (of one function).
async fn redrive_all(State(s): State<AppState>, caller: Caller, Query(p): Query<DlqParams>) -> ApiResult {
    admin(&caller)?;
    let n = s.platform.redrive_all(p.function.as_deref()).await?;
    Ok(Json(json!({ "redriven": n })).into_response())
}

/// `DELETE /v1/dlq[?function=NAME]`
async fn purge_dead(State(s): State<AppState>, caller: Caller, Query(p): Query<DlqParams>) -> ApiResult {
    admin(&caller)?;
    let n = s.platform.purge_dead_letters(p.function.as_deref()).await?;
    Ok(Json(json!({ "purged": n })).into_response())
}
