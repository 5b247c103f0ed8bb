//! The AWS Lambda REST API (`/2015-03-31/functions…`), so boto3, the aws
//! CLI and other AWS SDKs pointed at flick manage and invoke functions
//! unchanged. Every request is SigV4-verified (`sigv4`); functions map to
//! flick packages (`config`) deployed through `Platform::deploy`, and
//! invocations run through `Platform::invoke` / `submit` with the event as
//! the body (`Presentation::Direct`). Errors are Lambda's: the status, an
//! `x-amzn-ErrorType` header and `{"Type", "message"}`.

mod code;
mod config;
mod sigv4;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, get, post, put};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use flick_core::{ActivationId, Cause, Invocation, Presentation, Revision};
use flick_package::{PackedFile, UnpackLimits};
use flick_platform::{Caller, Outcome, Platform, PlatformError, Route};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use config::{Meta, Settings};

/// Lambda's payload limits: 6 MB for a synchronous invoke, 256 KB queued.
const SYNC_PAYLOAD: usize = 6 * 1024 * 1024;
const ASYNC_PAYLOAD: usize = 256 * 1024;
/// Management requests other than code uploads are small JSON.
const SMALL_BODY: usize = 1 << 20;
/// What `X-Amz-Log-Result` carries of an invocation's log.
const LOG_TAIL: usize = 4096;
const LATEST: &str = "$LATEST";

/// The dated prefixes of Lambda's API: an unknown path under any of them is
/// an unknown Lambda operation (answered in Lambda's shape), not flick's 404.
const API_PREFIXES: [&str; 14] = [
    "2014-11-13",
    "2015-03-31",
    "2016-08-19",
    "2017-03-31",
    "2017-10-31",
    "2018-10-31",
    "2019-09-25",
    "2019-09-30",
    "2020-04-22",
    "2020-06-30",
    "2021-07-20",
    "2021-10-31",
    "2021-11-15",
    "2022-10-31",
];

pub(crate) fn routes() -> Router<AppState> {
    let f = "/2015-03-31/functions";
    let mut router = Router::new()
        .route(f, or_unknown(get(list_functions).post(create_function)))
        .route(&format!("{f}/"), or_unknown(get(list_functions).post(create_function)))
        .route(&format!("{f}/{{name}}"), or_unknown(get(get_function).delete(delete_function)))
        .route(&format!("{f}/{{name}}/configuration"), or_unknown(get(get_configuration).put(update_configuration)))
        .route(&format!("{f}/{{name}}/code"), or_unknown(put(update_code)))
        .route(&format!("{f}/{{name}}/code.zip"), or_unknown(get(code::download)))
        .route(&format!("{f}/{{name}}/invocations"), or_unknown(post(invoke)))
        .route(&format!("{f}/{{name}}/versions"), or_unknown(get(list_versions).post(publish_version)))
        .route(&format!("{f}/{{name}}/aliases"), any(aliases))
        .route(&format!("{f}/{{name}}/aliases/{{alias}}"), any(aliases))
        .route("/2014-11-13/functions/{name}/invoke-async", or_unknown(post(invoke_async)))
        .route("/2014-11-13/functions/{name}/invoke-async/", or_unknown(post(invoke_async)));
    router = router
        .route("/2017-03-31/tags/{arn}", or_unknown(get(list_tags)))
        .route("/2019-09-30/functions/{name}/concurrency", or_unknown(get(get_concurrency)))
        .route("/2016-08-19/account-settings", or_unknown(get(account_settings)))
        .route("/2016-08-19/account-settings/", or_unknown(get(account_settings)));
    for prefix in API_PREFIXES {
        router = router.route(&format!("/{prefix}/{{*rest}}"), any(unknown_operation));
    }
    router
}

fn or_unknown(route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    route.fallback(unknown_operation)
}

// --- errors --------------------------------------------------------------

/// A Lambda error: status, `x-amzn-ErrorType` and `{"Type", "message"}`.
#[derive(Debug)]
pub(crate) struct LambdaError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// SigV4 refusals carry only `{"message"}`, as Lambda's do.
    bare: bool,
}

impl LambdaError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), bare: false }
    }
    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidParameterValueException", message)
    }
    fn not_found(identity: &flick_core::LambdaIdentity, name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            format!("Function not found: {}", identity.function_arn(name)),
        )
    }
    fn too_large(limit: usize, operation: &str) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestTooLargeException",
            format!("Request must be smaller than {limit} bytes for the {operation} operation"),
        )
    }
    fn bad_json(e: serde_json::Error) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            format!("Could not parse request body into json: {e}"),
        )
    }
    fn service(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "ServiceException", message)
    }

    fn platform(e: PlatformError, identity: &flick_core::LambdaIdentity) -> Self {
        use PlatformError as P;
        match e {
            P::FunctionNotFound(name) | P::NotPublic(name) => Self::not_found(identity, &name),
            P::RevisionNotFound { function, number } => Self::new(
                StatusCode::NOT_FOUND,
                "ResourceNotFoundException",
                format!("Function not found: {}:{number}", identity.function_arn(&function)),
            ),
            P::Name(_) | P::Package(_) | P::Manifest(_) | P::DependencyRefused { .. } | P::BadRequest(_) => {
                Self::invalid(e.to_string())
            }
            P::Dependencies { .. } => Self::invalid(e.to_string()),
            P::Overloaded { .. } | P::HostFull { .. } | P::QueueFull { .. } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequestsException", format!("Rate Exceeded. {e}"))
            }
            P::StorageFull(_) => Self::new(StatusCode::BAD_REQUEST, "CodeStorageExceededException", e.to_string()),
            P::InProgress(_) => Self::new(StatusCode::CONFLICT, "ResourceConflictException", e.to_string()),
            other => {
                // The detail (paths, store errors) is for the operator's log.
                tracing::error!(error = %other, "lambda api: platform error");
                Self::service("flick could not complete the request; see its log")
            }
        }
    }
}

impl From<sigv4::SigError> for LambdaError {
    fn from(e: sigv4::SigError) -> Self {
        Self { status: StatusCode::FORBIDDEN, code: e.error_type(), message: e.to_string(), bare: true }
    }
}

impl IntoResponse for LambdaError {
    fn into_response(self) -> Response {
        let body = if self.bare {
            json!({ "message": self.message })
        } else {
            let kind = if self.status.is_server_error() { "Service" } else { "User" };
            json!({ "Type": kind, "message": self.message })
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        let h = resp.headers_mut();
        h.insert("x-amzn-errortype", HeaderValue::from_static(self.code));
        request_id(h, &ActivationId::generate());
        resp
    }
}

fn request_id(h: &mut HeaderMap, id: &ActivationId) {
    if let Ok(v) = HeaderValue::try_from(id.as_str()) {
        h.insert("x-amzn-requestid", v);
    }
}

async fn unknown_operation(State(state): State<AppState>, req: Request<Body>) -> Result<Response, LambdaError> {
    let operation = format!("{} {}", req.method(), req.uri().path());
    authenticate(&state, req, SMALL_BODY, "unknown").await?;
    Err(LambdaError::new(StatusCode::NOT_FOUND, "UnknownOperationException", format!("Unknown operation: {operation}")))
}

async fn aliases(State(state): State<AppState>, req: Request<Body>) -> Result<Response, LambdaError> {
    authenticate(&state, req, SMALL_BODY, "alias").await?;
    Err(LambdaError::invalid(
        "Aliases are not supported by flick: invoke $LATEST (or the current version number; flick runs the \
         current revision of a function)",
    ))
}

// --- authentication --------------------------------------------------------

struct Signed {
    parts: Parts,
    body: Bytes,
}

/// Reads the body (at most `limit` bytes) and verifies its SigV4 signature
/// against flick's keys (`Keys`: key id `admin`, secret the admin key).
async fn authenticate(
    state: &AppState,
    req: Request<Body>,
    limit: usize,
    operation: &str,
) -> Result<Signed, LambdaError> {
    let (parts, body) = req.into_parts();
    let body = match tokio::time::timeout(state.limits.body_read_timeout, crate::read_limited(body, limit)).await {
        Ok(Ok(Some(bytes))) => bytes,
        Ok(Ok(None)) => return Err(LambdaError::too_large(limit, operation)),
        Ok(Err(e)) => return Err(LambdaError::invalid(format!("the request body could not be read: {e}"))),
        Err(_) => {
            return Err(LambdaError::new(
                StatusCode::REQUEST_TIMEOUT,
                "RequestTimeoutException",
                format!("the request body did not arrive within {:?}", state.limits.body_read_timeout),
            ));
        }
    };
    let request = sigv4::SignedRequest {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        body: &body,
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    sigv4::verify(&request, "lambda", now, |id| state.keys.secret(id).map(str::to_string))?;
    Ok(Signed { parts, body })
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, LambdaError> {
    if body.is_empty() {
        return serde_json::from_slice(b"{}").map_err(LambdaError::bad_json);
    }
    serde_json::from_slice(body).map_err(LambdaError::bad_json)
}

// --- names -----------------------------------------------------------------

/// `name`, `name:qualifier`, `arn:aws:lambda:region:account:function:name[:qualifier]`
/// or `account:function:name[:qualifier]` → (name, qualifier).
fn parse_function_name(raw: &str) -> Result<(String, Option<String>), LambdaError> {
    let parts: Vec<&str> = raw.split(':').collect();
    let (name, qualifier) = match parts[..] {
        [name] => (name, None),
        [name, q] => (name, Some(q)),
        ["arn", _, "lambda", _, _, "function", name] | [_, "function", name] => (name, None),
        ["arn", _, "lambda", _, _, "function", name, q] | [_, "function", name, q] => (name, Some(q)),
        _ => return Err(LambdaError::invalid(format!("`{raw}` is not a function name or ARN"))),
    };
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(LambdaError::invalid(format!(
            "Function name `{name}` must be 1 to 64 letters, digits, `-` or `_`"
        )));
    }
    if qualifier.is_some_and(|q| q.is_empty()) {
        return Err(LambdaError::invalid(format!("`{raw}` has an empty qualifier")));
    }
    Ok((name.to_string(), qualifier.map(str::to_string)))
}

#[derive(Deserialize, Default)]
struct QualifierQuery {
    #[serde(rename = "Qualifier")]
    qualifier: Option<String>,
}

/// The version a request names: `$LATEST` or the current revision number.
/// flick runs only a function's current revision; older ones are kept for
/// rollback, not for calls.
fn resolve_version(revision: &Revision, qualifier: Option<&str>) -> Result<String, LambdaError> {
    match qualifier {
        None | Some(LATEST) => Ok(LATEST.to_string()),
        Some(q) if q == revision.number.to_string() => Ok(q.to_string()),
        Some(q) if q.bytes().all(|b| b.is_ascii_digit()) => Err(LambdaError::invalid(format!(
            "Version {q} of {} is not the current one ({}): flick runs only the current revision (use `flick \
             rollback` to make an older one current)",
            revision.function, revision.number
        ))),
        Some(q) => Err(LambdaError::invalid(format!(
            "Qualifier `{q}`: aliases are not supported by flick; use $LATEST or a version number"
        ))),
    }
}

struct Target {
    name: String,
    qualifier: Option<String>,
}

fn target(raw: &str, query: &QualifierQuery) -> Result<Target, LambdaError> {
    let (name, in_name) = parse_function_name(raw)?;
    let qualifier = match (in_name, query.qualifier.clone()) {
        (Some(a), Some(b)) if a != b => {
            return Err(LambdaError::invalid(format!("The qualifier in the name ({a}) and Qualifier ({b}) differ")));
        }
        (a, b) => a.or(b),
    };
    Ok(Target { name, qualifier })
}

async fn current(platform: &Platform, name: &str) -> Result<Revision, LambdaError> {
    match platform.function(name).await {
        Ok((_, revision)) => Ok(revision),
        Err(e) => Err(LambdaError::platform(e, platform.lambda_identity())),
    }
}

fn meta_of(platform: &Platform, revision: &Revision) -> Option<Meta> {
    config::read_meta(&platform.code_dir(revision))
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let mut resp = (status, axum::Json(body)).into_response();
    request_id(resp.headers_mut(), &ActivationId::generate());
    resp
}

fn configuration_response(platform: &Platform, status: StatusCode, revision: &Revision, version: &str) -> Response {
    let meta = meta_of(platform, revision);
    json_response(status, config::configuration(platform.lambda_identity(), revision, meta.as_ref(), version))
}

// --- create, update, delete ---------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct CodeBody {
    zip_file: Option<String>,
    s3_bucket: Option<String>,
    image_uri: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct EnvironmentBody {
    variables: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct FunctionBody {
    function_name: Option<String>,
    runtime: Option<String>,
    role: Option<String>,
    handler: Option<String>,
    code: Option<CodeBody>,
    description: Option<String>,
    timeout: Option<u64>,
    memory_size: Option<u64>,
    environment: Option<EnvironmentBody>,
    package_type: Option<String>,
    architectures: Option<Vec<String>>,
    revision_id: Option<String>,
    publish: Option<bool>,
    // UpdateFunctionCode's fields.
    zip_file: Option<String>,
    s3_bucket: Option<String>,
    image_uri: Option<String>,
    dry_run: Option<bool>,
}

fn decode_zip(zip: Option<&str>, s3: bool, image: bool) -> Result<Vec<u8>, LambdaError> {
    if image {
        return Err(LambdaError::invalid(
            "flick takes code as a zip (Code.ZipFile); container images are not supported",
        ));
    }
    if s3 {
        return Err(LambdaError::invalid("flick takes code as a zip in the request (ZipFile), not from S3"));
    }
    let zip =
        zip.ok_or_else(|| LambdaError::invalid("ZipFile is required: flick takes code as a zip in the request"))?;
    BASE64.decode(zip).map_err(|e| LambdaError::invalid(format!("ZipFile is not valid base64: {e}")))
}

/// Reads an uploaded zip as untrusted input (off the async threads).
async fn read_zip(zip: Vec<u8>, max_archive: usize) -> Result<Vec<PackedFile>, LambdaError> {
    let limits = UnpackLimits { max_archive_bytes: max_archive as u64, ..UnpackLimits::default() };
    let read = tokio::task::spawn_blocking(move || flick_package::zip::read(&zip, &limits))
        .await
        .map_err(|e| LambdaError::service(format!("reading the zip: {e}")))?;
    read.map_err(|e| LambdaError::invalid(format!("Could not unzip uploaded file: {e}")))
}

/// Checks `settings` against `code`, packs and deploys them; returns the
/// new current revision.
async fn deploy(platform: &Platform, settings: &Settings, code: Vec<PackedFile>) -> Result<Revision, LambdaError> {
    config::check_ranges(settings.timeout, settings.memory).map_err(LambdaError::invalid)?;
    config::check_env(&settings.env).map_err(LambdaError::invalid)?;
    config::check_handler(settings.kind, &settings.handler, &code).map_err(LambdaError::invalid)?;
    let files = config::package_files(settings, code);
    let archive = tokio::task::spawn_blocking(move || flick_package::pack_files(&files))
        .await
        .map_err(|e| LambdaError::service(format!("packing: {e}")))?
        .map_err(|e| LambdaError::invalid(e.to_string()))?;
    let identity = platform.lambda_identity();
    platform.deploy(archive.into()).await.map_err(|e| LambdaError::platform(e, identity))?;
    current(platform, &settings.name).await
}

fn max_upload(state: &AppState) -> usize {
    // Base64 grows a zip by 4/3; room for the JSON around it.
    state.limits.max_archive_bytes / 3 * 4 + 64 * 1024
}

async fn create_function(State(state): State<AppState>, req: Request<Body>) -> Result<Response, LambdaError> {
    let signed = authenticate(&state, req, max_upload(&state), "CreateFunction").await?;
    let body: FunctionBody = parse_json(&signed.body)?;
    let platform = &state.platform;
    let name = body.function_name.as_deref().ok_or_else(|| LambdaError::invalid("FunctionName is required"))?;
    let (name, qualifier) = parse_function_name(name)?;
    if qualifier.is_some() {
        return Err(LambdaError::invalid("FunctionName of CreateFunction takes no qualifier"));
    }
    if body.package_type.as_deref().is_some_and(|p| p != "Zip") {
        return Err(LambdaError::invalid("PackageType must be Zip: flick does not run container images"));
    }
    let runtime = body.runtime.ok_or_else(|| LambdaError::invalid("Runtime is required for a Zip package"))?;
    let kind = config::runtime_kind(&runtime).map_err(LambdaError::invalid)?;
    let handler = match body.handler {
        Some(handler) => handler,
        None if kind == flick_core::RuntimeKind::Provided => String::new(),
        None => return Err(LambdaError::invalid("Handler is required for a Zip package")),
    };
    let role = body.role.ok_or_else(|| LambdaError::invalid("Role is required"))?;
    let code = body.code.ok_or_else(|| LambdaError::invalid("Code is required"))?;
    let zip = decode_zip(code.zip_file.as_deref(), code.s3_bucket.is_some(), code.image_uri.is_some())?;
    if platform.route(&name).is_some() || platform.function(&name).await.is_ok() {
        return Err(LambdaError::new(
            StatusCode::CONFLICT,
            "ResourceConflictException",
            format!("Function already exist: {name}"),
        ));
    }
    let settings = Settings {
        name,
        kind,
        handler,
        timeout: body.timeout.unwrap_or(config::DEFAULT_TIMEOUT),
        memory: body.memory_size.unwrap_or(config::DEFAULT_MEMORY),
        env: body.environment.and_then(|e| e.variables).unwrap_or_default(),
        meta: Meta {
            runtime,
            role,
            description: body.description.unwrap_or_default(),
            code_sha256: config::code_sha256(&zip),
            code_size: zip.len() as u64,
            architectures: body.architectures.unwrap_or_default(),
        },
    };
    config::check_ranges(settings.timeout, settings.memory).map_err(LambdaError::invalid)?;
    let files = read_zip(zip, state.limits.max_archive_bytes).await?;
    let revision = deploy(platform, &settings, files).await?;
    let version = if body.publish == Some(true) { revision.number.to_string() } else { LATEST.to_string() };
    Ok(configuration_response(platform, StatusCode::CREATED, &revision, &version))
}

/// The settings of a function made through this API, for an update.
async fn lambda_settings(state: &AppState, name: &str) -> Result<(Revision, Settings), LambdaError> {
    let revision = current(&state.platform, name).await?;
    let meta = meta_of(&state.platform, &revision);
    let settings = config::settings_of(&revision, meta).ok_or_else(|| {
        LambdaError::invalid(format!(
            "Function {name} was deployed with `flick deploy`, not through the Lambda API: update it the same way"
        ))
    })?;
    Ok((revision, settings))
}

fn check_revision_id(revision: &Revision, wanted: Option<&str>) -> Result<(), LambdaError> {
    match wanted {
        Some(id) if id != config::revision_id(revision) => Err(LambdaError::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailedException",
            "The Revision Id provided does not match the latest Revision Id. Call the GetFunction/GetAlias API to \
             retrieve the latest Revision Id",
        )),
        _ => Ok(()),
    }
}

async fn update_code(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    req: Request<Body>,
) -> Result<Response, LambdaError> {
    let signed = authenticate(&state, req, max_upload(&state), "UpdateFunctionCode").await?;
    let body: FunctionBody = parse_json(&signed.body)?;
    let target = target(&raw, &QualifierQuery::default())?;
    let (revision, mut settings) = lambda_settings(&state, &target.name).await?;
    check_revision_id(&revision, body.revision_id.as_deref())?;
    let zip = decode_zip(body.zip_file.as_deref(), body.s3_bucket.is_some(), body.image_uri.is_some())?;
    settings.meta.code_sha256 = config::code_sha256(&zip);
    settings.meta.code_size = zip.len() as u64;
    if let Some(architectures) = body.architectures {
        settings.meta.architectures = architectures;
    }
    let files = read_zip(zip, state.limits.max_archive_bytes).await?;
    if body.dry_run == Some(true) {
        config::check_handler(settings.kind, &settings.handler, &files).map_err(LambdaError::invalid)?;
        return Ok(configuration_response(&state.platform, StatusCode::OK, &revision, LATEST));
    }
    let revision = deploy(&state.platform, &settings, files).await?;
    let version = if body.publish == Some(true) { revision.number.to_string() } else { LATEST.to_string() };
    Ok(configuration_response(&state.platform, StatusCode::OK, &revision, &version))
}

async fn update_configuration(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    req: Request<Body>,
) -> Result<Response, LambdaError> {
    let signed = authenticate(&state, req, SMALL_BODY, "UpdateFunctionConfiguration").await?;
    let body: FunctionBody = parse_json(&signed.body)?;
    let target = target(&raw, &QualifierQuery::default())?;
    let (revision, mut settings) = lambda_settings(&state, &target.name).await?;
    check_revision_id(&revision, body.revision_id.as_deref())?;
    if let Some(runtime) = body.runtime {
        settings.kind = config::runtime_kind(&runtime).map_err(LambdaError::invalid)?;
        settings.meta.runtime = runtime;
    }
    if let Some(handler) = body.handler {
        settings.handler = handler;
    }
    if let Some(role) = body.role {
        settings.meta.role = role;
    }
    if let Some(description) = body.description {
        settings.meta.description = description;
    }
    if let Some(timeout) = body.timeout {
        settings.timeout = timeout;
    }
    if let Some(memory) = body.memory_size {
        settings.memory = memory;
    }
    if let Some(environment) = body.environment {
        settings.env = environment.variables.unwrap_or_default();
    }
    config::check_ranges(settings.timeout, settings.memory).map_err(LambdaError::invalid)?;
    // The same code, read back from the revision being replaced.
    let dir = state.platform.code_dir(&revision);
    let code = tokio::task::spawn_blocking(move || config::read_code(&dir))
        .await
        .map_err(|e| LambdaError::service(format!("reading the code back: {e}")))?
        .map_err(|e| {
            tracing::error!(error = %e, "lambda api: reading a function's code back");
            LambdaError::service("flick could not read the function's code back; see its log")
        })?;
    let revision = deploy(&state.platform, &settings, code).await?;
    Ok(configuration_response(&state.platform, StatusCode::OK, &revision, LATEST))
}

async fn delete_function(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(query): Query<QualifierQuery>,
    req: Request<Body>,
) -> Result<Response, LambdaError> {
    authenticate(&state, req, SMALL_BODY, "DeleteFunction").await?;
    let target = target(&raw, &query)?;
    if target.qualifier.as_deref().is_some_and(|q| q != LATEST) {
        return Err(LambdaError::invalid("flick deletes whole functions only (no Qualifier)"));
    }
    let identity = state.platform.lambda_identity();
    state.platform.delete(&target.name).await.map_err(|e| LambdaError::platform(e, identity))?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    request_id(resp.headers_mut(), &ActivationId::generate());
    Ok(resp)
}

// --- reading -----------------------------------------------------------------

async fn get_function(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(query): Query<QualifierQuery>,
    req: Request<Body>,
) -> Result<Response, LambdaError> {
    let headers = req.headers().clone();
    authenticate(&state, req, SMALL_BODY, "GetFunction").await?;
    let target = target(&raw, &query)?;
    let revision = current(&state.platform, &target.name).await?;
    let version = resolve_version(&revision, target.qualifier.as_deref())?;
    let meta = meta_of(&state.platform, &revision);
    let configuration = config::configuration(state.platform.lambda_identity(), &revision, meta.as_ref(), &version);
    let mut code = json!({ "RepositoryType": "S3" });
    if let Some(url) = code::location(&headers, &state.keys, &revision.function, revision.number) {
        code["Location"] = json!(url);
    }
    Ok(json_response(StatusCode::OK, json!({ "Configuration": configuration, "Code": code, "Tags": {} })))
}

async fn get_configuration(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(query): Query<QualifierQuery>,
    req: Request<Body>,
) -> Result<Response, LambdaError> {
    authenticate(&state, req, SMALL_BODY, "GetFunctionConfiguration").await?;
    let target = target(&raw, &query)?;
    let revision = current(&state.platform, &target.name).await?;
    let version = resolve_version(&revision, target.qualifier.as_deref())?;
    Ok(configuration_response(&state.platform, StatusCode::OK, &revision, &version))
}

#[derive(Deserialize, Default)]
struct ListQuery {
    #[serde(rename = "Marker")]
    marker: Option<String>,
    #[serde(rename = "MaxItems")]
    max_items: Option<String>,
}

fn max_items(value: Option<&str>) -> Result<usize, LambdaError> {
    match value {
        None => Ok(50),
        Some(v) => match v.parse::<usize>() {
            Ok(n @ 1..=10_000) => Ok(n),
            _ => Err(LambdaError::invalid(format!("MaxItems `{v}` must be a number from 1 to 10000"))),
        },
    }
}

async fn list_functions(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
    req: Request<Body>,
) -> Result<Response, LambdaError> {
    authenticate(&state, req, SMALL_BODY, "ListFunctions").await?;
    let limit = max_items(query.max_items.as_deref())?;
    let platform = &state.platform;
    let identity = platform.lambda_identity();
    let mut names: Vec<String> = platform
        .functions()
        .await
        .map_err(|e| LambdaError::platform(e, identity))?
        .into_iter()
        .map(|f| f.name)
        .collect();
    names.sort();
    // The marker is the name the next page starts at.
    let start = match &query.marker {
        None => 0,
        Some(marker) => names.partition_point(|n| n < marker),
    };
    let page: Vec<&String> = names.iter().skip(start).take(limit).collect();
    let next = names.get(start + page.len()).cloned();
    let mut functions = Vec::new();
    for name in page {
        // A function deleted since the listing is left out.
        if let Ok((_, revision)) = platform.function(name).await {
            let meta = meta_of(platform, &revision);
            functions.push(config::configuration(identity, &revision, meta.as_ref(), LATEST));
        }
    }
    let mut body = json!({ "Functions": functions });
    if let Some(next) = next {
        body["NextMarker"] = json!(next);
    }
    Ok(json_response(StatusCode::OK, body))
}

async fn publish_version(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    req: Request<Body>,
) -> Result<Response, LambdaError> {
    let signed = authenticate(&state, req, SMALL_BODY, "PublishVersion").await?;
    let body: Value = parse_json(&signed.body)?;
    let target = target(&raw, &QualifierQuery::default())?;
    let revision = current(&state.platform, &target.name).await?;
    check_revision_id(&revision, body.get("RevisionId").and_then(Value::as_str))?;
    // flick revisions are immutable already: the current one is the version.
    Ok(configuration_response(&state.platform, StatusCode::CREATED, &revision, &revision.number.to_string()))
}

async fn list_versions(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    req: Request<Body>,
) -> Result<Response, LambdaError> {
    authenticate(&state, req, SMALL_BODY, "ListVersionsByFunction").await?;
    let target = target(&raw, &QualifierQuery::default())?;
    let platform = &state.platform;
    let identity = platform.lambda_identity();
    let latest = current(platform, &target.name).await?;
    let mut versions = vec![config::configuration(identity, &latest, meta_of(platform, &latest).as_ref(), LATEST)];
    let mut revisions = platform.revisions(&target.name).await.map_err(|e| LambdaError::platform(e, identity))?;
    revisions.sort_by_key(|r| r.number);
    for revision in &revisions {
        let meta = meta_of(platform, revision);
        versions.push(config::configuration(identity, revision, meta.as_ref(), &revision.number.to_string()));
    }
    Ok(json_response(StatusCode::OK, json!({ "Versions": versions })))
}

/// ListTags: flick keeps no tags, so every existing function has none.
async fn list_tags(
    State(state): State<AppState>,
    Path(arn): Path<String>,
    req: Request<Body>,
) -> Result<Response, LambdaError> {
    authenticate(&state, req, SMALL_BODY, "ListTags").await?;
    let target = target(&arn, &QualifierQuery::default())?;
    current(&state.platform, &target.name).await?;
    Ok(json_response(StatusCode::OK, json!({ "Tags": {} })))
}

/// GetFunctionConcurrency: no reserved concurrency (flick's per-function
/// bounds are `concurrency` and `max_instances` in `flick.toml`).
async fn get_concurrency(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    req: Request<Body>,
) -> Result<Response, LambdaError> {
    authenticate(&state, req, SMALL_BODY, "GetFunctionConcurrency").await?;
    let target = target(&raw, &QualifierQuery::default())?;
    current(&state.platform, &target.name).await?;
    Ok(json_response(StatusCode::OK, json!({})))
}

/// GetAccountSettings: flick's own limits, in Lambda's fields.
async fn account_settings(State(state): State<AppState>, req: Request<Body>) -> Result<Response, LambdaError> {
    authenticate(&state, req, SMALL_BODY, "GetAccountSettings").await?;
    let platform = &state.platform;
    let functions = platform.functions().await.map_err(|e| LambdaError::platform(e, platform.lambda_identity()))?;
    Ok(json_response(
        StatusCode::OK,
        json!({
            "AccountLimit": {
                "CodeSizeZipped": state.limits.max_archive_bytes,
                "CodeSizeUnzipped": UnpackLimits::default().max_unpacked_bytes,
                "ConcurrentExecutions": 1000,
                "UnreservedConcurrentExecutions": 1000,
            },
            "AccountUsage": { "FunctionCount": functions.len() },
        }),
    ))
}

// --- invoke ------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum InvocationType {
    RequestResponse,
    Event,
    DryRun,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn invoke(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(query): Query<QualifierQuery>,
    req: Request<Body>,
) -> Result<Response, LambdaError> {
    let kind = match header(req.headers(), "x-amz-invocation-type") {
        None | Some("RequestResponse") => InvocationType::RequestResponse,
        Some("Event") => InvocationType::Event,
        Some("DryRun") => InvocationType::DryRun,
        Some(other) => {
            return Err(LambdaError::invalid(format!(
                "X-Amz-Invocation-Type `{other}` must be RequestResponse, Event or DryRun"
            )));
        }
    };
    let tail = match header(req.headers(), "x-amz-log-type") {
        None | Some("None") => false,
        Some("Tail") => true,
        Some(other) => return Err(LambdaError::invalid(format!("X-Amz-Log-Type `{other}` must be None or Tail"))),
    };
    let limit =
        if kind == InvocationType::Event { ASYNC_PAYLOAD } else { SYNC_PAYLOAD.min(state.limits.max_body_bytes) };
    let operation = if kind == InvocationType::Event { "InvokeAsync" } else { "Invoke" };
    let signed = authenticate(&state, req, limit, operation).await?;
    let target = target(&raw, &query)?;
    let platform = &state.platform;
    let route = platform
        .resolve(&target.name)
        .await
        .ok_or_else(|| LambdaError::not_found(platform.lambda_identity(), &target.name))?;
    let version = resolve_version(&route.revision, target.qualifier.as_deref())?;
    let client_context = match header(&signed.parts.headers, "x-amz-client-context") {
        None => None,
        Some(text) => {
            let decoded = BASE64
                .decode(text)
                .ok()
                .filter(|bytes| serde_json::from_slice::<Value>(bytes).is_ok_and(|v| v.is_object()));
            if decoded.is_none() {
                return Err(LambdaError::invalid("X-Amz-Client-Context must be base64 of a JSON object"));
            }
            Some(text.to_string())
        }
    };
    match kind {
        InvocationType::DryRun => {
            let mut resp = StatusCode::NO_CONTENT.into_response();
            request_id(resp.headers_mut(), &ActivationId::generate());
            Ok(resp)
        }
        InvocationType::Event => {
            let trace = crate::trace_of(&signed.parts.headers);
            let id = enqueue(platform, route, signed.body, client_context, trace).await?;
            let mut resp = StatusCode::ACCEPTED.into_response();
            request_id(resp.headers_mut(), &id);
            Ok(resp)
        }
        InvocationType::RequestResponse => {
            let mut inv = Invocation::post(target.name.clone(), Cause::Http, signed.body.to_vec());
            inv.presentation = Presentation::Direct;
            inv.client_context = client_context;
            inv.trace = Some(crate::trace_of(&signed.parts.headers));
            let identity = platform.lambda_identity();
            let memory = route.revision.manifest.memory;
            let done =
                platform.invoke(route, Caller::Admin, inv).await.map_err(|e| LambdaError::platform(e, identity))?;
            let function = &done.function;
            let id = &done.activation_id;
            let (body, function_error) = match &done.outcome {
                Outcome::Response(answer) => (answer.body.clone(), false),
                Outcome::FunctionError(e) => (error_payload(&e.kind, &e.message, &e.trace, id), true),
                Outcome::Timeout { after } => {
                    let message = format!("Task timed out after {:.2} seconds", after.as_secs_f64());
                    (error_payload("Sandbox.Timedout", &message, &[], id), true)
                }
                Outcome::OutOfMemory { .. } | Outcome::SequenceFailed(_) => {
                    let kind = done.outcome.error_kind().unwrap_or("Runtime.Unknown");
                    let message = done.outcome.error_message(function, id).unwrap_or_default();
                    (error_payload(kind, &message, &[], id), true)
                }
                Outcome::BadRequest(message) => return Err(LambdaError::invalid(message.clone())),
                Outcome::PlatformFault | Outcome::CallerGaveUp { .. } => {
                    tracing::warn!(activation = %id.as_str(), "lambda invoke: platform fault");
                    return Err(LambdaError::service(format!(
                        "flick could not run the function (activation {})",
                        id.as_str()
                    )));
                }
            };
            let mut resp = (StatusCode::OK, body).into_response();
            let h = resp.headers_mut();
            h.insert("content-type", HeaderValue::from_static("application/json"));
            request_id(h, &done.activation_id);
            if let Ok(v) = HeaderValue::try_from(version.as_str()) {
                h.insert("x-amz-executed-version", v);
            }
            if function_error {
                h.insert("x-amz-function-error", HeaderValue::from_static("Unhandled"));
            }
            if tail {
                let memory_mb = memory.div_ceil(1 << 20);
                let log = log_tail(platform, &done.activation_id, &version, memory_mb).await;
                if let Ok(v) = HeaderValue::try_from(BASE64.encode(log)) {
                    h.insert("x-amz-log-result", v);
                }
            }
            Ok(resp)
        }
    }
}

async fn enqueue(
    platform: &Arc<Platform>,
    route: Arc<Route>,
    body: Bytes,
    client_context: Option<String>,
    trace: flick_core::Trace,
) -> Result<ActivationId, LambdaError> {
    let mut inv = Invocation::post(route.revision.function.clone(), Cause::Async, body.to_vec());
    inv.presentation = Presentation::Direct;
    inv.client_context = client_context;
    inv.trace = Some(trace);
    let identity = platform.lambda_identity();
    let submitted =
        platform.submit(route, Caller::Admin, inv, None).await.map_err(|e| LambdaError::platform(e, identity))?;
    Ok(submitted.id)
}

/// `POST /2014-11-13/functions/{name}/invoke-async/`: the legacy InvokeAsync.
async fn invoke_async(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    req: Request<Body>,
) -> Result<Response, LambdaError> {
    let signed = authenticate(&state, req, ASYNC_PAYLOAD, "InvokeAsync").await?;
    let target = target(&raw, &QualifierQuery::default())?;
    let platform = &state.platform;
    let route = platform
        .resolve(&target.name)
        .await
        .ok_or_else(|| LambdaError::not_found(platform.lambda_identity(), &target.name))?;
    let trace = crate::trace_of(&signed.parts.headers);
    let id = enqueue(platform, route, signed.body, None, trace).await?;
    let mut resp = (StatusCode::ACCEPTED, axum::Json(json!({ "Status": 202 }))).into_response();
    request_id(resp.headers_mut(), &id);
    Ok(resp)
}

/// Lambda's error payload `{errorMessage, errorType, requestId, stackTrace}`.
fn error_payload(kind: &str, message: &str, trace: &[String], id: &ActivationId) -> Bytes {
    let payload = json!({ "errorMessage": message, "errorType": kind, "requestId": id.as_str(), "stackTrace": trace });
    Bytes::from(serde_json::to_vec(&payload).expect("json serialises"))
}

/// The last 4 KB of an invocation's log, framed like Lambda's (START, the
/// function's lines, END, REPORT), cut at a character boundary.
async fn log_tail(platform: &Platform, id: &ActivationId, version: &str, memory_mb: u64) -> String {
    let mut text = format!("START RequestId: {} Version: {version}\n", id.as_str());
    match platform.activation(id.as_str()).await {
        Ok(record) => {
            for line in &record.logs {
                text.push_str(&line.text);
                if !line.text.ends_with('\n') {
                    text.push('\n');
                }
            }
            text.push_str(&format!("END RequestId: {}\n", id.as_str()));
            text.push_str(&format!(
                "REPORT RequestId: {}\tDuration: {:.2} ms\tBilled Duration: {} ms\tMemory Size: {} MB\t\n",
                id.as_str(),
                record.duration_ms,
                record.duration_ms.ceil() as u64,
                memory_mb
            ));
        }
        Err(e) => {
            tracing::warn!(error = %e, "lambda invoke: no record for the log tail");
            text.push_str(&format!("END RequestId: {}\n", id.as_str()));
        }
    }
    if text.len() <= LOG_TAIL {
        return text;
    }
    let mut cut = text.len() - LOG_TAIL;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    text[cut..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_in_every_form() {
        let parse = |raw: &str| parse_function_name(raw).map_err(|e| e.message);
        assert_eq!(parse("hello"), Ok(("hello".into(), None)));
        assert_eq!(parse("hello:3"), Ok(("hello".into(), Some("3".into()))));
        assert_eq!(parse("arn:aws:lambda:us-east-1:000000000000:function:My_fn"), Ok(("My_fn".into(), None)));
        assert_eq!(
            parse("arn:aws:lambda:eu-west-1:123456789012:function:f:$LATEST"),
            Ok(("f".into(), Some("$LATEST".into())))
        );
        assert_eq!(parse("123456789012:function:f"), Ok(("f".into(), None)));
        for bad in ["", "a/b", "../x", "a:b:c:d", "x:", &"a".repeat(65), "arn:aws:s3:::bucket"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn error_payloads_are_lambdas() {
        let id = ActivationId::generate();
        let trace = ["a".to_string(), "b".to_string()];
        let payload: Value = serde_json::from_slice(&error_payload("ValueError", "boom", &trace, &id)).unwrap();
        assert_eq!(payload["errorType"], "ValueError");
        assert_eq!(payload["errorMessage"], "boom");
        assert_eq!(payload["stackTrace"], json!(["a", "b"]));
        assert_eq!(payload["requestId"], id.as_str());
    }
}
