//! GetFunction's `Code.Location`: a presigned URL on flick (Lambda's is a
//! presigned S3 URL) that serves a revision's code as a zip for ten
//! minutes, without credentials of its own, so
//! `curl -o f.zip "$(aws lambda get-function --function-name f --query Code.Location --output text)"`
//! works. It is signed with the admin key (HMAC-SHA256 over the function,
//! the revision and the expiry): it cannot be made for another function or
//! revision, stretched, or used after the key changes.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::{LambdaError, config};
use crate::AppState;
use crate::caller::Keys;

/// How long a code URL stays valid (S3's presigned URLs from Lambda: 10 min).
const VALID_S: i64 = 600;

fn mac(secret: &str, function: &str, revision: u32, expires: i64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(format!("flick-code-url\n{function}\n{revision}\n{expires}").as_bytes());
    mac
}

/// The URL for a revision's code, on the host the caller reached flick by
/// (`None` without a usable `Host`).
pub(super) fn location(headers: &HeaderMap, keys: &Keys, function: &str, revision: u32) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    // Only an authority: the caller's own header must not shape the URL's path.
    if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c)) {
        return None;
    }
    let secret = keys.secret(crate::caller::ADMIN_KEY_ID)?;
    let expires = flick_core::now_ms() / 1000 + VALID_S;
    let signature = hex::encode(mac(secret, function, revision, expires).finalize().into_bytes());
    Some(format!(
        "http://{host}/2015-03-31/functions/{function}/code.zip?Revision={revision}&Expires={expires}&Signature={signature}"
    ))
}

#[derive(Deserialize)]
pub(super) struct CodeQuery {
    #[serde(rename = "Revision")]
    revision: Option<u32>,
    #[serde(rename = "Expires")]
    expires: Option<i64>,
    #[serde(rename = "Signature")]
    signature: Option<String>,
}

fn denied(why: &str) -> LambdaError {
    LambdaError::new(StatusCode::FORBIDDEN, "AccessDeniedException", format!("the code URL {why}"))
}

/// `GET /2015-03-31/functions/{name}/code.zip?Revision&Expires&Signature`.
pub(super) async fn download(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<CodeQuery>,
) -> Result<Response, LambdaError> {
    let (Some(revision), Some(expires), Some(signature)) = (q.revision, q.expires, q.signature) else {
        return Err(denied("needs Revision, Expires and Signature (take it from GetFunction's Code.Location)"));
    };
    let secret = state.keys.secret(crate::caller::ADMIN_KEY_ID).ok_or_else(|| denied("cannot be checked"))?;
    let given = hex::decode(&signature).map_err(|_| denied("has a malformed signature"))?;
    mac(secret, &name, revision, expires)
        .verify_slice(&given)
        .map_err(|_| denied("has a signature that does not match"))?;
    if expires < flick_core::now_ms() / 1000 {
        return Err(denied("has expired: call GetFunction again"));
    }
    let identity = state.platform.lambda_identity();
    let revisions = state.platform.revisions(&name).await.map_err(|e| LambdaError::platform(e, identity))?;
    let rev =
        revisions.into_iter().find(|r| r.number == revision).ok_or_else(|| denied("names a revision that is gone"))?;
    let dir = state.platform.code_dir(&rev);
    let zip = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        let mut files = config::read_code(&dir).map_err(|e| e.to_string())?;
        files.sort_by(|a, b| a.path.cmp(&b.path));
        flick_package::zip::write(&files).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r)
    .map_err(|e| {
        tracing::error!(function = %name, error = %e, "lambda api: zipping a function's code");
        LambdaError::service("flick could not read the function's code; see its log")
    })?;
    let mut resp = (StatusCode::OK, zip).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/zip"));
    Ok(resp)
}
