//! API errors and their one mapping to HTTP statuses.
//!
//! Bodies are `{"error": {"code": "...", "message": "..."}}`: a stable code
//! for programs, a message a person can act on.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flick_platform::PlatformError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("request body is over the {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error("the request body did not arrive within {}s", after.as_secs_f64())]
    BodyTimeout { after: std::time::Duration },
    #[error("{0}")]
    BadRequest(String),
    #[error("no such endpoint")]
    NoRoute,
    /// Allowed in, but not to do this (what, and why, in the message).
    #[error("{0}")]
    Forbidden(String),
    /// A malformed CloudEvent (`POST /events`): the body names the
    /// attribute and, in a batch, the index.
    #[error("malformed CloudEvent: {0}")]
    Event(#[from] flick_core::cloudevent::EventError),
    /// A bounded resource of the API is all in use (503, retry later).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Platform(#[from] PlatformError),
}

impl ApiError {
    pub(crate) fn status_and_code(&self) -> (StatusCode, &'static str) {
        use PlatformError as P;
        match self {
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Self::BodyTimeout { .. } => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::NoRoute => (StatusCode::NOT_FOUND, "no_route"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::Event(_) => (StatusCode::BAD_REQUEST, "invalid_event"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Platform(e) => match e {
                P::FunctionNotFound(_)
                | P::RevisionNotFound { .. }
                | P::ActivationNotFound(_)
                | P::DeadLetterNotFound(_)
                | P::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
                P::Name(_) | P::Package(_) | P::Manifest(_) | P::BadRequest(_) => {
                    (StatusCode::BAD_REQUEST, "bad_request")
                }
                P::Dependencies { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "dependencies_failed"),
                P::DependencyRefused { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "dependencies_refused"),
                P::Overloaded { .. } => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
                P::HostFull { .. } => (StatusCode::SERVICE_UNAVAILABLE, "host_full"),
                P::NotPublic(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
                P::StorageFull(_) => (StatusCode::INSUFFICIENT_STORAGE, "storage_full"),
                P::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
                P::QueueFull { .. } => (StatusCode::TOO_MANY_REQUESTS, "queue_full"),
                P::InProgress(_) => (StatusCode::CONFLICT, "in_progress"),
                P::Store(_) | P::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let in_progress = match &self {
            Self::Platform(PlatformError::InProgress(id)) => HeaderValue::try_from(id.as_str()).ok(),
            _ => None,
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut error = serde_json::json!({ "code": code, "message": self.to_string() });
        if let Self::Event(e) = &self {
            error["attribute"] = e.attribute.clone().into();
            error["index"] = e.index.into();
        }
        let body = Json(serde_json::json!({ "error": error }));
        let mut resp = (status, body).into_response();
        match status {
            StatusCode::UNAUTHORIZED => {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        if let Some(id) = in_progress {
            resp.headers_mut().insert("x-flick-activation-id", id);
        }
        resp
    }
}
