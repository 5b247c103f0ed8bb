//! The OpenWhisk surface's errors and their rendering: `{"error": "<message>",
//! "code": "<transaction id>"}` with the status OpenWhisk's controller uses,
//! which is what the `openwhisk` npm client reads (`body.error`).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flick_platform::PlatformError;

use crate::ApiError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum OwError {
    #[error("The resource requires authentication, which was not supplied with the request")]
    NoAuth,
    #[error("The supplied authentication is invalid")]
    BadAuth,
    /// Authenticated, but not allowed this (the message says what).
    #[error("{0}")]
    Forbidden(String),
    #[error("The requested resource does not exist.")]
    NotFound,
    /// Not found, and the message says what (a rule's missing action).
    #[error("{0}")]
    Missing(String),
    #[error("resource already exists")]
    Conflict,
    #[error("The request content was malformed:\n{0}")]
    Malformed(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("The request content exceeds the maximum allowed size ({limit} bytes).")]
    TooLarge { limit: usize },
    #[error("The request body did not arrive in time.")]
    BodyTimeout,
    #[error("Method not allowed.")]
    MethodNotAllowed,
    /// A part of OpenWhisk's API flick has no counterpart for (the message
    /// says what to use instead).
    #[error("{0}")]
    NotImplemented(String),
    #[error(transparent)]
    Platform(#[from] PlatformError),
}

impl From<ApiError> for OwError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::TooLarge { limit } => Self::TooLarge { limit },
            ApiError::BodyTimeout { .. } => Self::BodyTimeout,
            ApiError::Unauthorized => Self::BadAuth,
            ApiError::Platform(p) => Self::Platform(p),
            ApiError::Forbidden(m) => Self::Forbidden(m),
            other => Self::BadRequest(other.to_string()),
        }
    }
}

impl OwError {
    fn status(&self) -> StatusCode {
        use PlatformError as P;
        match self {
            Self::NoAuth | Self::BadAuth => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound | Self::Missing(_) => StatusCode::NOT_FOUND,
            Self::Conflict => StatusCode::CONFLICT,
            Self::Malformed(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Self::Platform(p) => match p {
                P::FunctionNotFound(_) | P::RevisionNotFound { .. } | P::ActivationNotFound(_) => StatusCode::NOT_FOUND,
                P::DeadLetterNotFound(_) | P::NotFound { .. } => StatusCode::NOT_FOUND,
                P::Name(_) | P::Package(_) | P::Manifest(_) | P::BadRequest(_) => StatusCode::BAD_REQUEST,
                P::Dependencies { .. } | P::DependencyRefused { .. } => StatusCode::BAD_REQUEST,
                P::Overloaded { .. } | P::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
                P::HostFull { .. } | P::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
                P::NotPublic(_) => StatusCode::UNAUTHORIZED,
                P::StorageFull(_) => StatusCode::INSUFFICIENT_STORAGE,
                P::InProgress(_) => StatusCode::CONFLICT,
                P::Store(_) | P::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// What the caller reads: a missing thing is OpenWhisk's one sentence
    /// (whatever the platform called it); internal detail stays in the log.
    fn message(&self) -> String {
        match self {
            Self::Platform(
                PlatformError::FunctionNotFound(_)
                | PlatformError::RevisionNotFound { .. }
                | PlatformError::ActivationNotFound(_),
            ) => Self::NotFound.to_string(),
            Self::Platform(PlatformError::NotPublic(_)) => Self::NoAuth.to_string(),
            Self::Platform(PlatformError::Store(_) | PlatformError::Internal(_)) => {
                "An internal error occurred: the operator's log has the detail.".into()
            }
            other => other.to_string(),
        }
    }
}

/// A transaction id for the `code` field, as OpenWhisk puts one on every
/// error (32 hex characters, so it also finds the line in flick's log).
pub(crate) fn transaction_id() -> String {
    flick_core::ActivationId::generate().as_str().to_string()
}

impl IntoResponse for OwError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = transaction_id();
        if status.is_server_error() && !matches!(self, Self::NotImplemented(_)) {
            tracing::error!(error = %self, code, "openwhisk request failed");
        }
        let mut resp = (status, Json(serde_json::json!({ "error": self.message(), "code": code }))).into_response();
        match status {
            StatusCode::UNAUTHORIZED => {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"flick\""));
            }
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}
