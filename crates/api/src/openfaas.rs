//! The OpenFaaS gateway API: `/system/*` (functions, scale, info, logs),
//! `/function/{name}` and `/async-function/{name}`, as faas-cli and plain
//! HTTP clients of an OpenFaaS gateway send them, mapped onto the
//! platform's own deploy, invoke, queue and records. Errors are OpenFaaS's:
//! a status code and a plain-text message.
//!
//! # Images
//! flick runs no container images. A FunctionDeployment's `image` is one of
//! - `flick:NAME`: the package of the flick function NAME (deployed with
//!   `flick deploy`, e.g. an OpenFaaS handler directory with
//!   `shape = "openfaas"`), with the deployment's settings on top; NAME may
//!   be the deployed function itself (a configuration update) or another
//!   one (a copy under the new name);
//! - a classic-watchdog base image (`functions/alpine`,
//!   `ghcr.io/openfaas/alpine`, `ghcr.io/openfaas/classic-watchdog`) with
//!   `envProcess`: an `exec` function that runs that command once per
//!   request, body on stdin, stdout the response — the classic watchdog's
//!   contract, with the host's programs instead of the image's.
//!
//! Anything else is refused (400) with a message saying what to do instead.
//!
//! # Who may call what
//! `/system/*` needs the admin key: `Basic admin:<key>` (faas-cli login) or
//! `Bearer <key>`; 401 otherwise. `/function/*` keeps flick's rule (a
//! function is callable without the key only if it is `public`), where
//! OpenFaaS would serve every function to anyone: the invoke path is the
//! native one (`invoke.rs`), reached with the path rewritten to `/fn/…`.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use flick_core::timefmt::{parse_rfc3339, rfc3339};
use flick_core::{ActivationId, FunctionInfo, FunctionName, Manifest, Revision, RuntimeKind};
use flick_platform::PlatformError;
use flick_store::ActivationQuery;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::caller::{Caller, Keys};
use crate::{ApiError, AppState};

/// The one namespace flick's functions are in, as OpenFaaS names it.
const NAMESPACE: &str = "openfaas-fn";
/// Largest JSON body of a `/system/*` call (a deployment with 64 KiB of
/// `envVars` and labels fits many times over).
const MAX_JSON_BODY: usize = 1 << 20;
/// Most log lines `/system/logs` returns.
const MAX_LOG_LINES: usize = 10_000;
/// Activation records `/system/logs` reads its lines from (newest first).
const LOG_RECORDS: u32 = 1000;
/// Classic-watchdog base images: they hold only a shell's tools and the
/// watchdog, so a command of theirs maps onto an `exec` function.
const WATCHDOG_IMAGES: [&str; 4] =
    ["functions/alpine", "ghcr.io/openfaas/alpine", "ghcr.io/openfaas/classic-watchdog", "openfaas/classic-watchdog"];
/// Most instances a manifest may hold warm (its `min_instances` range).
const MAX_REPLICAS: u32 = 1000;
/// Labels OpenFaaS reads for scaling, and flick's own for `public`.
const LABEL_SCALE_MIN: &str = "com.openfaas.scale.min";
const LABEL_SCALE_MAX: &str = "com.openfaas.scale.max";
const LABEL_PUBLIC: &str = "flick.public";

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/system/functions", get(list).post(create).put(update).delete(remove))
        .route("/system/function/{name}", get(describe))
        .route("/system/scale-function/{name}", post(scale))
        .route("/system/info", get(info))
        .route("/system/logs", get(logs))
        .route("/system/namespaces", get(namespaces))
        .route("/system/{*rest}", any(no_route))
        .route("/function/{name}", any(invoke_root))
        .route("/function/{name}/", any(invoke_root))
        .route("/function/{name}/{*rest}", any(invoke_path))
        .route("/async-function/{name}", post(async_root))
        .route("/async-function/{name}/", post(async_root))
        .route("/async-function/{name}/{*rest}", post(async_path))
}

/// An OpenFaaS error: a status and a plain-text message (the gateway's
/// `http.Error`), which faas-cli prints as it is.
#[derive(Debug)]
pub(crate) struct FaasError {
    status: StatusCode,
    message: String,
}

impl FaasError {
    fn bad(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into() }
    }

    fn not_found(name: &str) -> Self {
        Self { status: StatusCode::NOT_FOUND, message: format!("function `{name}` not found") }
    }
}

impl From<ApiError> for FaasError {
    fn from(e: ApiError) -> Self {
        Self { status: e.status_and_code().0, message: e.to_string() }
    }
}

impl From<PlatformError> for FaasError {
    fn from(e: PlatformError) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for FaasError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(error = %self.message, "OpenFaaS request failed");
        }
        let mut resp = (self.status, format!("{}\n", self.message)).into_response();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        match self.status {
            StatusCode::UNAUTHORIZED => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"Restricted\""));
            }
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}

type FaasResult = Result<Response, FaasError>;

/// `/system/*` needs a proved key (`Basic admin:<key>` as faas-cli sends,
/// or `Bearer <key>`; `caller.rs` reads both).
fn require_admin(keys: &Keys, headers: &HeaderMap) -> Result<(), FaasError> {
    if Caller::of(keys, headers).is_admin() {
        return Ok(());
    }
    Err(FaasError {
        status: StatusCode::UNAUTHORIZED,
        message: "invalid credentials: send Basic auth admin:<key> (faas-cli login -u admin) or \
                  Authorization: Bearer <key>"
            .into(),
    })
}

#[derive(Deserialize)]
struct NamespaceQuery {
    namespace: Option<String>,
}

/// flick has one namespace: OpenFaaS's default, `openfaas-fn` (or none named).
fn check_namespace(namespace: Option<&str>) -> Result<(), FaasError> {
    match namespace {
        None | Some("") | Some(NAMESPACE) => Ok(()),
        Some(other) => Err(FaasError::bad(format!(
            "namespace `{}` not found: flick has one namespace, `{NAMESPACE}`",
            shown(other)
        ))),
    }
}

/// A caller's value in an error message: cut, control characters escaped.
fn shown(v: &str) -> String {
    v.chars().take(128).flat_map(char::escape_default).collect()
}

async fn json_body<T: serde::de::DeserializeOwned>(s: &AppState, body: Body, what: &str) -> Result<T, FaasError> {
    let bytes = crate::read_body(body, MAX_JSON_BODY, &s.limits).await?;
    if bytes.is_empty() {
        return Err(FaasError::bad(format!("empty body: send a {what} as JSON")));
    }
    serde_json::from_slice(&bytes).map_err(|e| FaasError::bad(format!("malformed {what} JSON: {e}")))
}

async fn no_route() -> FaasError {
    FaasError { status: StatusCode::NOT_FOUND, message: "no such endpoint in flick's OpenFaaS API".into() }
}

// ---- functions ----

/// `GET /system/functions`: every function as a FunctionStatus.
async fn list(State(s): State<AppState>, headers: HeaderMap, Query(q): Query<NamespaceQuery>) -> FaasResult {
    require_admin(&s.keys, &headers)?;
    check_namespace(q.namespace.as_deref())?;
    let counts: HashMap<String, u64> = s.platform.activation_counts().await?.into_iter().collect();
    let mut out = Vec::new();
    for f in s.platform.functions().await? {
        // Deleted meanwhile: not listed.
        let Some(route) = s.platform.route(&f.name) else { continue };
        let count = counts.get(&f.name).copied().unwrap_or(0);
        out.push(function_status(&f, &route.revision, count, running(&s, &route.revision)));
    }
    Ok(Json(out).into_response())
}

/// `GET /system/function/{name}`
async fn describe(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<NamespaceQuery>,
) -> FaasResult {
    require_admin(&s.keys, &headers)?;
    check_namespace(q.namespace.as_deref())?;
    let (info, revision) = s.platform.function(&name).await.map_err(|e| match e {
        PlatformError::FunctionNotFound(_) => FaasError::not_found(&name),
        e => e.into(),
    })?;
    let count = s.platform.activation_counts().await?.into_iter().find(|(f, _)| *f == name).map_or(0, |(_, n)| n);
    Ok(Json(function_status(&info, &revision, count, running(&s, &revision))).into_response())
}

/// Instances running for a revision now.
fn running(s: &AppState, rev: &Revision) -> usize {
    s.platform.scheduler().status().iter().filter(|p| p.revision_id == rev.id).map(|p| p.instances).sum()
}

/// OpenFaaS's FunctionStatus; zero values are left out, as Go's `omitempty`
/// does. `replicas` is what flick holds (running, at least `min_instances`),
/// `availableReplicas` what runs now; `invocationCount` counts the kept
/// activation records.
fn function_status(info: &FunctionInfo, rev: &Revision, invocations: u64, running: usize) -> Value {
    let m = &rev.manifest;
    let mut v = json!({
        "name": info.name,
        "image": format!("flick:{}", info.name),
        "namespace": NAMESPACE,
        // Code is always mounted read-only.
        "readOnlyRootFilesystem": true,
        "createdAt": rfc3339(info.created_ms),
    });
    if matches!(m.runtime, RuntimeKind::Exec | RuntimeKind::Http) {
        v["envProcess"] = json!(m.handler);
    }
    if !m.env.is_empty() {
        v["envVars"] = json!(m.env);
    }
    if !m.labels.is_empty() {
        v["labels"] = json!(m.labels);
    }
    if !m.annotations.is_empty() {
        v["annotations"] = json!(m.annotations);
    }
    if m.runtime != RuntimeKind::Sequence {
        v["limits"] = json!({ "memory": quantity(m.memory) });
    }
    let replicas = running.max(m.min_instances as usize);
    if replicas > 0 {
        v["replicas"] = json!(replicas);
    }
    if running > 0 {
        v["availableReplicas"] = json!(running);
    }
    if invocations > 0 {
        v["invocationCount"] = json!(invocations as f64);
    }
    v
}

/// Bytes as a Kubernetes quantity (`128Mi`), exact.
fn quantity(bytes: u64) -> String {
    for (suffix, unit) in [("Ti", 1u64 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// A Kubernetes memory quantity (`128Mi`, `1G`, `512000k`, `134217728`) in bytes.
fn parse_quantity(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let unit: f64 = match suffix {
        "" => 1.0,
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1_048_576.0,
        "Gi" => 1_073_741_824.0,
        "Ti" => 1_099_511_627_776.0,
        _ => return Err(format!("limits.memory `{}` has an unknown unit (use e.g. 128Mi or 1Gi)", shown(text))),
    };
    match num.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 && n * unit < 1e15 => Ok((n * unit).round() as u64),
        _ => Err(format!("limits.memory `{}` is not a memory quantity (e.g. 128Mi)", shown(text))),
    }
}

/// OpenFaaS's FunctionDeployment (`POST`/`PUT /system/functions`). Fields
/// flick has no use for (`constraints`, `requests`,
/// `readOnlyRootFilesystem`) are accepted and ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FunctionDeployment {
    service: String,
    #[serde(default)]
    image: String,
    namespace: Option<String>,
    env_process: Option<String>,
    env_vars: Option<BTreeMap<String, String>>,
    secrets: Option<Vec<String>>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    limits: Option<Resources>,
}

#[derive(Deserialize)]
struct Resources {
    memory: Option<String>,
    // `cpu` is read and ignored: each instance gets one core.
}

/// `POST /system/functions`: create (or replace) a function.
async fn create(State(s): State<AppState>, req: Request<Body>) -> FaasResult {
    deploy(s, req, false).await
}

/// `PUT /system/functions`: update a function; 404 if there is none (faas-cli
/// then creates it with `POST`).
async fn update(State(s): State<AppState>, req: Request<Body>) -> FaasResult {
    deploy(s, req, true).await
}

async fn deploy(s: AppState, req: Request<Body>, update: bool) -> FaasResult {
    require_admin(&s.keys, req.headers())?;
    let dep: FunctionDeployment = json_body(&s, req.into_body(), "FunctionDeployment").await?;
    let (base, manifest) = plan(&s, dep, update).await?;
    let outcome = s.platform.deploy_with_manifest(base, &manifest).await?;
    tracing::info!(function = %outcome.function, revision = outcome.revision, "deployed through the OpenFaaS API");
    Ok(StatusCode::ACCEPTED.into_response())
}

/// What a deployment deploys: the package it starts from (none: a
/// `flick.toml` alone) and the manifest. Changes nothing.
async fn plan(s: &AppState, dep: FunctionDeployment, update: bool) -> Result<(Option<Bytes>, Manifest), FaasError> {
    check_namespace(dep.namespace.as_deref())?;
    let name = FunctionName::new(&dep.service).map_err(|e| FaasError::bad(format!("service: {e}")))?;
    if update && s.platform.route(name.as_str()).is_none() {
        return Err(FaasError::not_found(name.as_str()));
    }
    if dep.secrets.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(FaasError::bad(
            "secrets: flick has no secret store; pass the values in envVars (kept in the function's [env], \
             shown only to the admin)",
        ));
    }
    let image = dep.image.trim();
    let process = dep.env_process.as_deref().map(str::trim).filter(|p| !p.is_empty());
    let (base, mut m) = if let Some(source) = image.strip_prefix("flick:") {
        let (rev, archive) = s.platform.package(source).await.map_err(|e| match e {
            PlatformError::FunctionNotFound(_) => FaasError::bad(format!(
                "image `{}`: no flick function `{}` is deployed; deploy its code first with `flick deploy DIR`",
                shown(image),
                shown(source)
            )),
            e => e.into(),
        })?;
        let mut m = rev.manifest.clone();
        match (process, m.runtime) {
            (None, _) => {}
            (Some(p), RuntimeKind::Exec | RuntimeKind::Http) => m.handler = p.to_string(),
            (Some(p), _) if p == m.handler => {}
            (Some(_), runtime) => {
                return Err(FaasError::bad(format!(
                    "envProcess sets the command of exec and http functions; `{source}` is a {runtime} function"
                )));
            }
        }
        (Some(archive), m)
    } else if is_watchdog_image(image) {
        let process = process.ok_or_else(|| {
            FaasError::bad(format!(
                "image `{}` is a watchdog base image: give envProcess, the command to run for each request",
                shown(image)
            ))
        })?;
        let mut m = Manifest::parse("name = \"x\"\nruntime = \"exec\"\nhandler = \"cat\"\n")
            .map_err(|e| PlatformError::Internal(format!("exec template: {e}")))?;
        m.handler = process.to_string();
        (None, m)
    } else {
        return Err(FaasError::bad(format!(
            "image `{}`: flick runs no container images. Deploy the function's code with `flick deploy DIR` \
             (an OpenFaaS handler directory needs a flick.toml with shape = \"openfaas\") and use image \
             `flick:NAME`, or run a command with image `functions/alpine` and envProcess",
            shown(image)
        )));
    };
    m.name = name;
    if let Some(vars) = dep.env_vars {
        m.env.extend(vars);
    }
    if let Some(labels) = dep.labels {
        m.labels = labels;
    }
    if let Some(annotations) = dep.annotations {
        m.annotations = annotations;
    }
    apply_labels(&mut m)?;
    if let Some(memory) = dep.limits.and_then(|l| l.memory) {
        m.memory = parse_quantity(&memory).map_err(FaasError::bad)?;
    }
    // Checked here so the message names the deployment's field, not a line
    // of the generated flick.toml.
    Manifest::parse(&m.to_toml()).map_err(|e| FaasError::bad(format!("the deployment is not valid for flick: {e}")))?;
    Ok((base, m))
}

fn is_watchdog_image(image: &str) -> bool {
    // `functions/alpine:latest`, `ghcr.io/openfaas/alpine@sha256:…`: the
    // repository without its tag or digest.
    let repo = image.split('@').next().unwrap_or("");
    let repo = match repo.rsplit_once(':') {
        Some((r, tag)) if !tag.contains('/') => r,
        _ => repo,
    };
    WATCHDOG_IMAGES.contains(&repo) || repo.strip_prefix("docker.io/").is_some_and(|r| WATCHDOG_IMAGES.contains(&r))
}

/// The labels flick acts on: OpenFaaS's scaling bounds and `flick.public`.
fn apply_labels(m: &mut Manifest) -> Result<(), FaasError> {
    let count = |key: &str| -> Result<Option<u32>, FaasError> {
        m.labels
            .get(key)
            .map(|v| {
                v.trim()
                    .parse::<u32>()
                    .map_err(|_| FaasError::bad(format!("label {key}: `{}` is not a count", shown(v))))
            })
            .transpose()
    };
    let (min, max) = (count(LABEL_SCALE_MIN)?, count(LABEL_SCALE_MAX)?);
    if let Some(min) = min {
        m.min_instances = min;
        m.max_instances = m.max_instances.max(min);
    }
    if let Some(max) = max {
        m.max_instances = max;
    }
    match m.labels.get(LABEL_PUBLIC).map(String::as_str) {
        None => {}
        Some("true") => m.public = true,
        Some("false") => m.public = false,
        Some(other) => {
            return Err(FaasError::bad(format!(
                "label {LABEL_PUBLIC} must be `true` or `false`, not `{}`",
                shown(other)
            )));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeleteRequest {
    function_name: String,
    namespace: Option<String>,
}

/// `DELETE /system/functions` with `{"functionName"}`.
async fn remove(State(s): State<AppState>, req: Request<Body>) -> FaasResult {
    require_admin(&s.keys, req.headers())?;
    let body: DeleteRequest = json_body(&s, req.into_body(), "DeleteFunctionRequest").await?;
    check_namespace(body.namespace.as_deref())?;
    let name = body.function_name;
    s.platform.delete(&name).await.map_err(|e| match e {
        PlatformError::FunctionNotFound(_) | PlatformError::Name(_) => FaasError::not_found(&name),
        e => e.into(),
    })?;
    Ok(StatusCode::ACCEPTED.into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScaleRequest {
    service_name: Option<String>,
    replicas: Option<u64>,
    namespace: Option<String>,
}

/// `POST /system/scale-function/{name}` with `{"replicas": n}`: n instances
/// kept warm (`min_instances`; `max_instances` raised to n if below); 0
/// lets the function scale to zero again. A new revision when it changes
/// something, as every configuration change in flick is.
async fn scale(State(s): State<AppState>, Path(name): Path<String>, req: Request<Body>) -> FaasResult {
    require_admin(&s.keys, req.headers())?;
    let body: ScaleRequest = json_body(&s, req.into_body(), "ScaleServiceRequest").await?;
    check_namespace(body.namespace.as_deref())?;
    if let Some(other) = body.service_name.as_deref().filter(|n| !n.is_empty() && *n != name) {
        return Err(FaasError::bad(format!(
            "serviceName `{}` is not the function in the path, `{name}`",
            shown(other)
        )));
    }
    let replicas =
        body.replicas.ok_or_else(|| FaasError::bad("replicas is required (a count, 0 allows scale to zero)"))?;
    let (rev, archive) = s.platform.package(&name).await.map_err(|e| match e {
        PlatformError::FunctionNotFound(_) => FaasError::not_found(&name),
        e => e.into(),
    })?;
    if rev.manifest.runtime == RuntimeKind::Sequence {
        return Err(FaasError::bad(format!("`{name}` is a sequence: it runs no instances of its own to scale")));
    }
    if replicas > u64::from(MAX_REPLICAS) {
        return Err(FaasError::bad(format!(
            "replicas {replicas} is over flick's limit of {MAX_REPLICAS} per function"
        )));
    }
    let mut m = rev.manifest.clone();
    m.min_instances = replicas as u32;
    m.max_instances = m.max_instances.max(m.min_instances);
    if m != rev.manifest {
        s.platform.deploy_with_manifest(Some(archive), &m).await?;
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `GET /system/info`
async fn info(State(s): State<AppState>, headers: HeaderMap) -> FaasResult {
    require_admin(&s.keys, &headers)?;
    let release = env!("CARGO_PKG_VERSION");
    Ok(Json(json!({
        "provider": { "provider": "flick", "orchestration": "flick", "version": { "sha": "", "release": release } },
        "version": { "sha": "", "release": release, "commit_message": "" },
        "arch": std::env::consts::ARCH,
    }))
    .into_response())
}

/// `GET /system/namespaces`: flick's one.
async fn namespaces(State(s): State<AppState>, headers: HeaderMap) -> FaasResult {
    require_admin(&s.keys, &headers)?;
    Ok(Json(json!([NAMESPACE])).into_response())
}

#[derive(Deserialize)]
struct LogsQuery {
    name: Option<String>,
    namespace: Option<String>,
    instance: Option<String>,
    tail: Option<String>,
    since: Option<String>,
}

/// `GET /system/logs?name=&tail=&since=&instance=`: the function's recorded
/// log lines as NDJSON, oldest first; `instance` is the activation id.
/// `follow` is not supported: the stream ends after the lines recorded so far.
async fn logs(State(s): State<AppState>, headers: HeaderMap, Query(q): Query<LogsQuery>) -> FaasResult {
    require_admin(&s.keys, &headers)?;
    check_namespace(q.namespace.as_deref())?;
    let name = q.name.filter(|n| !n.is_empty()).ok_or_else(|| FaasError::bad("name is required"))?;
    if s.platform.route(&name).is_none() {
        return Err(FaasError::not_found(&name));
    }
    let tail = match q.tail.as_deref().map(str::trim) {
        None | Some("") => MAX_LOG_LINES,
        Some(t) => match t.parse::<i64>() {
            Ok(n) if n < 0 => MAX_LOG_LINES,
            Ok(n) => (n as usize).min(MAX_LOG_LINES),
            Err(_) => return Err(FaasError::bad(format!("tail `{}` is not a number of lines", shown(t)))),
        },
    };
    let since = match q.since.as_deref().filter(|t| !t.is_empty()) {
        None => i64::MIN,
        Some(t) => {
            parse_rfc3339(t).ok_or_else(|| FaasError::bad(format!("since `{}` is not an RFC 3339 time", shown(t))))?
        }
    };
    let query = ActivationQuery { function: Some(name.clone()), limit: LOG_RECORDS, ..Default::default() };
    let records = s.platform.activations(&query).await?;
    let mut lines: Vec<(i64, &ActivationId, &str)> = records
        .iter()
        .filter(|a| q.instance.as_deref().is_none_or(|i| i.is_empty() || i == a.id.as_str()))
        .flat_map(|a| a.logs.iter().map(move |l| (l.ts_ms, &a.id, l.text.as_str())))
        .filter(|(ts, _, _)| *ts >= since)
        .collect();
    lines.sort_by_key(|(ts, _, _)| *ts);
    let skip = lines.len().saturating_sub(tail);
    let mut body = String::new();
    for (ts, id, text) in &lines[skip..] {
        let line = json!({ "name": name, "namespace": NAMESPACE, "instance": id.as_str(),
                           "timestamp": rfc3339(*ts), "text": text });
        body.push_str(&line.to_string());
        body.push('\n');
    }
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

// ---- invoke ----

async fn invoke_root(State(s): State<AppState>, Path(name): Path<String>, req: Request<Body>) -> Response {
    proxy(s, name, "/".into(), req, false).await
}

async fn invoke_path(
    State(s): State<AppState>,
    Path((name, rest)): Path<(String, String)>,
    req: Request<Body>,
) -> Response {
    proxy(s, name, format!("/{rest}"), req, false).await
}

async fn async_root(State(s): State<AppState>, Path(name): Path<String>, req: Request<Body>) -> Response {
    proxy(s, name, "/".into(), req, true).await
}

async fn async_path(
    State(s): State<AppState>,
    Path((name, rest)): Path<(String, String)>,
    req: Request<Body>,
) -> Response {
    proxy(s, name, format!("/{rest}"), req, true).await
}

/// `/function/{name}[/{path}]` (sync) and `/async-function/…` (the durable
/// queue, 202 with an empty body): the native invoke path with OpenFaaS's
/// headers — `X-Call-Id` (the caller's, or a new one) and `X-Start-Time`
/// (Unix ns) on the request the function gets and on the response.
async fn proxy(s: AppState, name: String, path: String, req: Request<Body>, is_async: bool) -> Response {
    let start_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let (mut parts, body) = req.into_parts();
    // The native route reads the raw sub-path after `/fn/{name}`.
    let prefix = if is_async { "/async-function/" } else { "/function/" };
    let mut target = format!("/fn/{}", parts.uri.path().strip_prefix(prefix).unwrap_or(""));
    if let Some(q) = parts.uri.query() {
        target.push('?');
        target.push_str(q);
    }
    match target.parse::<Uri>() {
        Ok(uri) => parts.uri = uri,
        Err(e) => return FaasError::bad(format!("request target: {e}")).into_response(),
    }
    let call_id = parts
        .headers
        .get("x-call-id")
        .filter(|v| !v.is_empty() && v.len() <= 256 && v.to_str().is_ok())
        .cloned()
        .unwrap_or_else(new_call_id);
    let start = HeaderValue::from(start_ns.min(u128::from(u64::MAX)) as u64);
    let h = &mut parts.headers;
    h.insert("x-call-id", call_id.clone());
    h.insert("x-start-time", start.clone());
    h.remove("x-flick-async");
    if is_async {
        h.insert("x-flick-async", HeaderValue::from_static("true"));
    } else {
        // OpenFaaS ignores a callback on a synchronous call.
        h.remove("x-callback-url");
    }
    let mut resp = match crate::native::invoke::invoke(s, name, path, Request::from_parts(parts, body)).await {
        Ok(resp) => resp,
        Err(e) => FaasError::from(e).into_response(),
    };
    if is_async && resp.status() == StatusCode::ACCEPTED {
        *resp.body_mut() = Body::empty();
        resp.headers_mut().remove(header::CONTENT_TYPE);
        resp.headers_mut().remove(header::CONTENT_LENGTH);
    }
    resp.headers_mut().insert("x-call-id", call_id);
    resp.headers_mut().insert("x-start-time", start);
    resp
}

/// A fresh call id in UUID form (random, like the gateway's).
fn new_call_id() -> HeaderValue {
    let h = ActivationId::generate();
    let h = h.as_str();
    let id = format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]);
    HeaderValue::try_from(id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("128Mi"), Ok(128 << 20));
        assert_eq!(parse_quantity("1Gi"), Ok(1 << 30));
        assert_eq!(parse_quantity("1G"), Ok(1_000_000_000));
        assert_eq!(parse_quantity("134217728"), Ok(134_217_728));
        assert_eq!(parse_quantity("0.5Gi"), Ok(512 << 20));
        for bad in ["", "Mi", "12Q", "-1Mi", "0", "1e400"] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
        assert_eq!(quantity(128 << 20), "128Mi");
        assert_eq!(quantity(3 << 30), "3Gi");
        assert_eq!(quantity(1000), "1000");
    }

    #[test]
    fn watchdog_images() {
        for ok in [
            "functions/alpine",
            "functions/alpine:latest",
            "ghcr.io/openfaas/alpine:3.19",
            "docker.io/functions/alpine",
        ] {
            assert!(is_watchdog_image(ok), "{ok}");
        }
        for no in ["ghcr.io/openfaas/figlet:latest", "alpine", "functions/alpine-extra", "evil/functions/alpine", ""] {
            assert!(!is_watchdog_image(no), "{no}");
        }
    }
}
