//! `/api/v1/namespaces/{ns}/actions[/{name}]`: list, create or update
//! (`?overwrite=true`), get (`?code=false`) and delete actions.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::IntoResponse;
use base64::Engine as _;
use flick_core::{Revision, RuntimeKind};
use flick_package::{PackedFile, UnpackLimits};
use serde::Deserialize;
use serde_json::{Value, json};

use super::package::{self, Action, Code, KeyValue, Kind, Limits, Meta};
use super::{OwError, OwResult, authorize, function_name, shown};
use crate::AppState;

/// Default and largest page of a list (OpenWhisk's).
const DEFAULT_LIMIT: usize = 30;
const MAX_LIMIT: usize = 200;

#[derive(Deserialize)]
pub(crate) struct ListParams {
    pub(super) limit: Option<String>,
    pub(super) skip: Option<String>,
    pub(super) count: Option<String>,
}

/// A non-negative number from the query, named in the error.
pub(super) fn number(name: &str, v: Option<&str>) -> Result<Option<u64>, OwError> {
    match v {
        None | Some("") => Ok(None),
        Some(t) => t.parse::<u64>().map(Some).map_err(|_| {
            OwError::BadRequest(format!("parameter '{name}' must be a non-negative integer, got '{}'", shown(t)))
        }),
    }
}

/// A `true`/`false` query flag.
pub(super) fn flag(name: &str, v: Option<&str>) -> Result<Option<bool>, OwError> {
    match v {
        None | Some("") => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(t) => Err(OwError::BadRequest(format!("parameter '{name}' must be true or false, got '{}'", shown(t)))),
    }
}

/// `limit` and `skip` (`limit=0` means the largest page).
pub(super) fn page(limit: Option<&str>, skip: Option<&str>) -> Result<(usize, usize), OwError> {
    let limit = match number("limit", limit)? {
        None => DEFAULT_LIMIT,
        Some(0) => MAX_LIMIT,
        Some(n) if n as usize <= MAX_LIMIT => n as usize,
        Some(n) => {
            return Err(OwError::BadRequest(format!("The value '{n}' is not in the range of 0 to {MAX_LIMIT}.")));
        }
    };
    Ok((limit, number("skip", skip)?.unwrap_or(0) as usize))
}

pub(crate) async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(ns): Path<String>,
    Query(p): Query<ListParams>,
) -> OwResult {
    let id = authorize(&s, &headers, &ns)?;
    let (limit, skip) = page(p.limit.as_deref(), p.skip.as_deref())?;
    let mut names: Vec<String> = s.platform.functions().await?.into_iter().map(|f| f.name).collect();
    names.sort();
    if flag("count", p.count.as_deref())? == Some(true) {
        return Ok(Json(json!({ "actions": names.len() })).into_response());
    }
    let mut out = Vec::new();
    for name in names.into_iter().skip(skip).take(limit) {
        // Deleted since the listing: left out.
        let Some(route) = s.platform.route(&name) else { continue };
        let meta = read_meta(&s, &route.revision).await?;
        out.push(document(&id, &route.revision, meta.as_ref(), None, false));
    }
    Ok(Json(out).into_response())
}

#[derive(Deserialize)]
pub(crate) struct GetParams {
    code: Option<String>,
}

pub(crate) async fn get(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    Query(p): Query<GetParams>,
) -> OwResult {
    let id = authorize(&s, &headers, &ns)?;
    let with_code = flag("code", p.code.as_deref())?.unwrap_or(true);
    let name = function_name(&name)?;
    let route = s.platform.route(&name).ok_or(OwError::NotFound)?;
    let meta = read_meta(&s, &route.revision).await?;
    let code = if with_code { read_code(&s, &route.revision).await? } else { None };
    Ok(Json(document(&id, &route.revision, meta.as_ref(), code, true)).into_response())
}

pub(crate) async fn delete(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> OwResult {
    let id = authorize(&s, &headers, &ns)?;
    let name = function_name(&name)?;
    let route = s.platform.route(&name).ok_or(OwError::NotFound)?;
    let meta = read_meta(&s, &route.revision).await?;
    let doc = document(&id, &route.revision, meta.as_ref(), None, true);
    s.platform.delete(&name).await?;
    Ok(Json(doc).into_response())
}

pub(super) fn no_packages(package: &str) -> OwError {
    OwError::BadRequest(format!(
        "package '{}': flick has no packages; create the action in the default package (no '/' in its name)",
        shown(package)
    ))
}

#[derive(Deserialize)]
pub(crate) struct PutParams {
    pub(super) overwrite: Option<String>,
}

#[derive(Deserialize)]
struct PutBody {
    exec: Option<ExecBody>,
    parameters: Option<Vec<KeyValue>>,
    annotations: Option<Vec<KeyValue>>,
    limits: Option<LimitsBody>,
}

#[derive(Deserialize)]
struct ExecBody {
    kind: String,
    code: Option<String>,
    binary: Option<bool>,
    main: Option<String>,
    components: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct LimitsBody {
    timeout: Option<u64>,
    memory: Option<u64>,
    logs: Option<u64>,
    concurrency: Option<u64>,
}

/// Room for a base64 zip of the largest archive flick takes, plus JSON.
fn put_limit(s: &AppState) -> usize {
    s.limits.max_archive_bytes / 3 * 4 + (64 << 10)
}

pub(crate) async fn put(
    State(s): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    Query(p): Query<PutParams>,
    req: Request<Body>,
) -> OwResult {
    let (parts, body) = req.into_parts();
    let id = authorize(&s, &parts.headers, &ns)?;
    let overwrite = flag("overwrite", p.overwrite.as_deref())?.unwrap_or(false);
    let name = function_name(&name)?;
    let body = crate::read_body(body, put_limit(&s), &s.limits).await?;
    let put: PutBody = serde_json::from_slice(&body).map_err(|e| OwError::Malformed(e.to_string()))?;
    let existing = s.platform.route(&name);
    if existing.is_some() && !overwrite {
        return Err(OwError::Conflict);
    }
    let old = match &existing {
        Some(route) => Some((route.revision.clone(), read_meta(&s, &route.revision).await?)),
        None => None,
    };
    let action = action_from(&s, &id, &name, put, old.as_ref()).await?;
    let files = action.files()?;
    let archive = tokio::task::spawn_blocking(move || package::pack(&files))
        .await
        .map_err(|e| OwError::Platform(flick_platform::PlatformError::Internal(e.to_string())))??;
    s.platform.deploy(archive.into()).await?;
    let route = s.platform.route(&name).ok_or(OwError::NotFound)?;
    let doc = document(&id, &route.revision, Some(&action.meta), None, true);
    Ok((StatusCode::OK, Json(doc)).into_response())
}

/// The action a PUT describes; on an update, what it leaves out is kept.
async fn action_from(
    s: &AppState,
    key_id: &str,
    name: &str,
    put: PutBody,
    old: Option<&(Revision, Option<Meta>)>,
) -> Result<Action, OwError> {
    let old_meta = old.and_then(|(_, m)| m.clone());
    let old_limits = old_meta.as_ref().map(|m| m.limits).unwrap_or_default();
    let limits = match put.limits {
        None => old_limits,
        Some(l) => check_limits(l, old_limits)?,
    };
    let annotations = match put.annotations {
        Some(a) => dedup(a),
        None => old_meta.as_ref().map(|m| m.annotations.clone()).unwrap_or_default(),
    };
    let params: BTreeMap<String, Value> = match put.parameters {
        Some(p) => dedup(p).into_iter().map(|kv| (kv.key, kv.value)).collect(),
        None => old.map(|(r, _)| r.manifest.params.clone()).unwrap_or_default(),
    };
    let web = annotations.iter().any(|a| a.key == "web-export" && (a.value == json!(true) || a.value == json!("true")));
    let (kind, kind_name, main, binary, code, components) = match put.exec {
        Some(exec) => {
            let kind = package::kind_of(&exec.kind)?;
            let main = exec.main.unwrap_or_else(|| "main".into());
            package::check_main(&main)?;
            if kind == Kind::Sequence {
                let components = exec.components.unwrap_or_default();
                let steps = sequence_steps(key_id, &components)?;
                (kind, exec.kind, main, false, Code::Steps(steps), components)
            } else {
                let text = exec.code.ok_or_else(|| OwError::BadRequest("exec.code is missing".into()))?;
                let (binary, code) = match code_of(text, exec.binary)? {
                    Sent::Text(t) => (false, Code::Text(t)),
                    Sent::Zip(bytes) => (true, Code::Files(read_zip(bytes, s.limits.max_archive_bytes).await?)),
                };
                (kind, exec.kind, main, binary, code, Vec::new())
            }
        }
        // An update that leaves out `exec` keeps the code, if flick kept it.
        None => {
            let (rev, meta) = old.ok_or_else(|| OwError::BadRequest("exec is missing".into()))?;
            let meta = meta.as_ref().ok_or_else(|| {
                OwError::BadRequest(format!("'{name}' was not created through this API: send exec to update it"))
            })?;
            let kind = package::kind_of(&meta.kind)?;
            let code = if kind == Kind::Sequence {
                Code::Steps(rev.manifest.steps.iter().map(|s| s.as_str().to_string()).collect())
            } else if meta.binary {
                return Err(OwError::BadRequest(
                    "this action's code came as a zip, which flick does not keep twice: send exec again to update it"
                        .into(),
                ));
            } else {
                Code::Text(
                    read_code(s, rev).await?.ok_or_else(|| OwError::BadRequest("send exec to update it".into()))?,
                )
            };
            (kind, meta.kind.clone(), meta.main.clone(), meta.binary, code, meta.components.clone())
        }
    };
    let meta = Meta { kind: kind_name, main, binary, components, annotations, limits };
    Ok(Action { name: name.to_string(), kind, meta, code, params, web })
}

/// Later keys win, as OpenWhisk's key/value lists do.
fn dedup(list: Vec<KeyValue>) -> Vec<KeyValue> {
    let mut out: Vec<KeyValue> = Vec::new();
    for kv in list {
        out.retain(|o| o.key != kv.key);
        out.push(kv);
    }
    out
}

/// OpenWhisk's limits in flick's ranges (timeout up to flick's 15 minutes).
fn check_limits(l: LimitsBody, old: Limits) -> Result<Limits, OwError> {
    let range = |name: &str, v: Option<u64>, default: u64, min: u64, max: u64, unit: &str| match v {
        None => Ok(default),
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(n) => Err(OwError::BadRequest(format!("limits.{name} {n} {unit} is out of range {min}..={max} {unit}"))),
    };
    Ok(Limits {
        timeout: range("timeout", l.timeout, old.timeout, 100, 15 * 60 * 1000, "ms")?,
        memory: range("memory", l.memory, old.memory, 16, 64 << 10, "MB")?,
        logs: range("logs", l.logs, old.logs, 0, 10, "MB")?,
        concurrency: range("concurrency", l.concurrency, old.concurrency, 1, 1000, "")?,
    })
}

/// A sequence's components (`/ns/action`) as flick function names.
fn sequence_steps(key_id: &str, components: &[String]) -> Result<Vec<String>, OwError> {
    if components.is_empty() {
        return Err(OwError::BadRequest("exec.components of a sequence must name at least one action".into()));
    }
    components
        .iter()
        .map(|c| {
            let parts: Vec<&str> = c.trim_start_matches('/').split('/').collect();
            match parts.as_slice() {
                [name] => function_name(name),
                [ns, name] => {
                    super::auth::check_namespace(ns, key_id)?;
                    function_name(name)
                }
                [_, package, _] => Err(no_packages(package)),
                _ => Err(OwError::BadRequest(format!("component '{}' is not /namespace/action", shown(c)))),
            }
        })
        .collect()
}

/// What `exec.code` holds.
enum Sent {
    Text(String),
    Zip(Vec<u8>),
}

/// String code, or a base64 zip (`exec.binary`, or code that decodes to
/// a zip: OpenWhisk infers `binary` as well).
fn code_of(text: String, binary: Option<bool>) -> Result<Sent, OwError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let decoded = if binary == Some(false) { None } else { b64.decode(text.trim()).ok() };
    match decoded {
        Some(bytes) if binary == Some(true) || bytes.starts_with(b"PK\x03\x04") => Ok(Sent::Zip(bytes)),
        None if binary == Some(true) => {
            Err(OwError::BadRequest("exec.code is not base64, but exec.binary is true".into()))
        }
        _ => Ok(Sent::Text(text)),
    }
}

/// The files of a zip action, read as untrusted input by flick's zip
/// reader (no `..`, absolute paths or links out; size, count and ratio
/// bounds), off the async threads.
async fn read_zip(zip: Vec<u8>, max_archive: usize) -> Result<Vec<PackedFile>, OwError> {
    let limits = UnpackLimits { max_archive_bytes: max_archive as u64, ..UnpackLimits::default() };
    tokio::task::spawn_blocking(move || flick_package::zip::read(&zip, &limits))
        .await
        .map_err(|e| OwError::Platform(flick_platform::PlatformError::Internal(e.to_string())))?
        .map_err(|e| OwError::BadRequest(format!("the action's zip was refused: {e}")))
}

pub(super) async fn read_meta(s: &AppState, rev: &Revision) -> Result<Option<Meta>, OwError> {
    let bytes = s.platform.code_file(rev, package::META_FILE, package::MAX_META_BYTES).await?;
    // A package made elsewhere (or a damaged file) has none: shown as flick sees it.
    Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
}

async fn read_code(s: &AppState, rev: &Revision) -> Result<Option<String>, OwError> {
    let bytes = s.platform.code_file(rev, package::CODE_FILE, s.limits.max_archive_bytes as u64).await?;
    Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// The kind OpenWhisk would show for a function.
pub(super) fn kind_label(rev: &Revision, meta: Option<&Meta>) -> String {
    if let Some(m) = meta {
        return m.kind.clone();
    }
    match rev.manifest.runtime {
        RuntimeKind::Python3 => "python:3",
        RuntimeKind::Node => "nodejs:default",
        RuntimeKind::Sequence => "sequence",
        // Any program: OpenWhisk's name for an action that is not a runtime's.
        RuntimeKind::Exec | RuntimeKind::Http | RuntimeKind::Provided => "blackbox",
    }
    .into()
}

/// The limits OpenWhisk would show for a function.
pub(super) fn limits_of(rev: &Revision, meta: Option<&Meta>) -> Value {
    let m = &rev.manifest;
    json!({
        "timeout": m.timeout.as_millis() as u64,
        "memory": m.memory >> 20,
        "logs": meta.map_or(10, |m| m.limits.logs),
        "concurrency": m.concurrency,
    })
}

/// OpenWhisk's action document for a function's current revision.
pub(super) fn document(key_id: &str, rev: &Revision, meta: Option<&Meta>, code: Option<String>, full: bool) -> Value {
    let m = &rev.manifest;
    let kind = kind_label(rev, meta);
    let mut exec = json!({ "kind": kind, "binary": meta.is_some_and(|m| m.binary) });
    if full {
        if m.runtime != RuntimeKind::Sequence {
            exec["main"] = json!(meta.map_or("main", |m| m.main.as_str()));
        } else {
            let steps: Vec<String> = m.steps.iter().map(|s| format!("/{key_id}/{}", s.as_str())).collect();
            exec["components"] = json!(steps);
        }
        if let Some(code) = code {
            exec["code"] = json!(code);
        }
    }
    let mut annotations: Vec<Value> = meta
        .map(|m| m.annotations.iter().map(|a| json!({"key": a.key, "value": a.value})).collect())
        .unwrap_or_default();
    if meta.is_none() && m.web {
        annotations.push(json!({"key": "web-export", "value": true}));
    }
    annotations.push(json!({"key": "exec", "value": kind}));
    let parameters: Vec<Value> = m.params.iter().map(|(k, v)| json!({"key": k, "value": v})).collect();
    json!({
        "namespace": key_id,
        "name": rev.function,
        "version": format!("0.0.{}", rev.number),
        "publish": false,
        "exec": exec,
        "annotations": annotations,
        "parameters": parameters,
        "limits": limits_of(rev, meta),
        "updated": rev.created_ms,
    })
}
