//! What became of a call, independent of the surface that made it.
//!
//! The core says *what* happened ([`Outcome`]); each surface of the api
//! crate decides how to say it (status codes, error bodies, headers). The
//! one rendering that lives here is the native one
//! ([`Outcome::native_status`], [`Outcome::native_response`]): activation
//! records store what the native surface answered, and the async
//! dispatcher's retry decision, callbacks and sequences reason in those
//! terms, so the core and the native surface must agree on it byte for
//! byte. Other surfaces use [`Outcome::error_kind`] and
//! [`Outcome::error_message`] and render them in their own shapes.

use std::time::Duration;

use bytes::Bytes;
use flick_core::ActivationId;
use flick_runtime::{FunctionError, Response};

/// How a call ended, as its caller should learn it.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The function answered (any status it chose: a 404 of its own is an
    /// answer, not a failure of the call).
    Response(Response),
    /// The function raised an error (an exception, a failed import, a crash).
    FunctionError(FunctionError),
    /// The function ran past its `timeout` and was stopped.
    Timeout { after: Duration },
    /// The function ran out of its memory limit (bytes) and was stopped.
    OutOfMemory { limit: u64 },
    /// The request could not be handed to the function as it was (say, a
    /// header its HTTP server cannot take); the message says why.
    BadRequest(String),
    /// flick could not run the function. The detail names host paths and
    /// interpreters, so it went to the operator's log only.
    PlatformFault,
    /// The caller's own deadline (`X-Flick-Deadline`) ended its wait after
    /// `waited`. `abandoned`: the call was still waiting for an instance
    /// and never ran; otherwise it runs on and records what it did.
    CallerGaveUp { waited: Duration, abandoned: bool },
    /// A sequence stopped (`sequence.rs`): see [`SequenceFailure`].
    SequenceFailed(SequenceFailure),
}

/// Why a sequence stopped: a stable kind (`Sequence.StepFailed`,
/// `Sequence.Timeout`, `Sequence.StepNotFound`, `Sequence.Recursion`) and a
/// message naming the step.
#[derive(Clone, Debug)]
pub struct SequenceFailure {
    pub kind: &'static str,
    pub message: String,
    /// The native status the sequence answers with: the failed step's own
    /// (so a sequence answers as its failing step did), 504 when the
    /// sequence ran out of time, 500 for a missing step or a recursion.
    pub status: u16,
}

impl Outcome {
    /// The function's own answer, if it gave one.
    pub fn response(&self) -> Option<&Response> {
        match self {
            Self::Response(r) => Some(r),
            _ => None,
        }
    }

    /// The HTTP status the native surface answers with (and the record's
    /// `http_status`).
    pub fn native_status(&self) -> u16 {
        match self {
            Self::Response(r) => r.status,
            Self::FunctionError(_) | Self::OutOfMemory { .. } => 500,
            Self::Timeout { .. } | Self::CallerGaveUp { .. } => 504,
            Self::BadRequest(_) => 400,
            Self::PlatformFault => 502,
            Self::SequenceFailed(f) => f.status,
        }
    }

    /// A stable name of the error (`None` for the function's answer): the
    /// function's own exception type, or flick's `Area.Reason`.
    pub fn error_kind(&self) -> Option<&str> {
        Some(match self {
            Self::Response(_) => return None,
            Self::FunctionError(e) => &e.kind,
            Self::Timeout { .. } => "Function.Timeout",
            Self::OutOfMemory { .. } => "Runtime.OutOfMemory",
            Self::BadRequest(_) => "Request.Invalid",
            Self::PlatformFault => "Platform.Error",
            Self::CallerGaveUp { .. } => "Caller.DeadlineExceeded",
            Self::SequenceFailed(f) => f.kind,
        })
    }

    /// What went wrong, for a person (`None` for the function's answer).
    /// `function` and `id` are the call's.
    pub fn error_message(&self, function: &str, id: &ActivationId) -> Option<String> {
        Some(match self {
            Self::Response(_) => return None,
            Self::FunctionError(e) => e.message.clone(),
            Self::Timeout { after } => {
                format!("function `{function}` timed out after {}", flick_core::units::format_duration(*after))
            }
            Self::OutOfMemory { limit } => format!(
                "function `{function}` ran out of memory (limit {}) and was stopped",
                flick_core::units::format_size(*limit)
            ),
            Self::BadRequest(m) => m.clone(),
            Self::PlatformFault => format!(
                "flick could not run function `{function}` (a platform fault, not the function's); \
                 the operator's log has the detail under activation {id}"
            ),
            Self::CallerGaveUp { waited, abandoned: true } => format!(
                "the caller's deadline (X-Flick-Deadline) passed after {} ms while the call was waiting for an \
                 instance; it was abandoned and never ran",
                waited.as_millis()
            ),
            Self::CallerGaveUp { waited, abandoned: false } => format!(
                "the caller's deadline (X-Flick-Deadline) passed after {} ms and ended its wait, not the \
                 invocation: what that does is recorded under activation {id} when it ends",
                waited.as_millis()
            ),
            Self::SequenceFailed(f) => f.message.clone(),
        })
    }

    /// The stack trace the function reported, if any.
    pub fn error_trace(&self) -> &[String] {
        match self {
            Self::FunctionError(e) => &e.trace,
            _ => &[],
        }
    }

    /// The whole native answer: the function's response as it gave it, or
    /// `{errorType, errorMessage, stackTrace, activationId}` (the shape
    /// Lambda clients parse) with [`Outcome::native_status`].
    pub fn native_response(&self, function: &str, id: &ActivationId) -> Response {
        if let Self::Response(r) = self {
            return r.clone();
        }
        Response {
            status: self.native_status(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: self.native_body(function, id),
        }
    }

    /// The body of [`Outcome::native_response`].
    pub fn native_body(&self, function: &str, id: &ActivationId) -> Bytes {
        if let Self::Response(r) = self {
            return r.body.clone();
        }
        Bytes::from(
            serde_json::json!({
                "errorType": self.error_kind().unwrap_or_default(),
                "errorMessage": self.error_message(function, id).unwrap_or_default(),
                "stackTrace": self.error_trace(),
                "activationId": id.as_str(),
            })
            .to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_native_rendering_is_the_function_answer_or_an_error_body() {
        let id = ActivationId::generate();
        let answer = Response { status: 404, headers: vec![("x-a".into(), "1".into())], body: Bytes::from("nope") };
        let r = Outcome::Response(answer.clone()).native_response("f", &id);
        assert_eq!((r.status, r.headers, r.body), (answer.status, answer.headers, answer.body));

        let cases = [
            (Outcome::Timeout { after: Duration::from_secs(5) }, 504, "Function.Timeout", "timed out after 5s"),
            (Outcome::OutOfMemory { limit: 64 << 20 }, 500, "Runtime.OutOfMemory", "(limit 64MiB)"),
            (Outcome::BadRequest("bad header".into()), 400, "Request.Invalid", "bad header"),
            (Outcome::PlatformFault, 502, "Platform.Error", id.as_str()),
            (
                Outcome::CallerGaveUp { waited: Duration::from_millis(250), abandoned: true },
                504,
                "Caller.DeadlineExceeded",
                "after 250 ms while the call was waiting",
            ),
            (
                Outcome::SequenceFailed(SequenceFailure {
                    kind: "Sequence.StepFailed",
                    message: "step 2 failed".into(),
                    status: 429,
                }),
                429,
                "Sequence.StepFailed",
                "step 2 failed",
            ),
        ];
        for (outcome, status, kind, said) in cases {
            let r = outcome.native_response("f", &id);
            assert_eq!(r.status, status, "{outcome:?}");
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["errorType"], kind, "{v}");
            assert!(v["errorMessage"].as_str().unwrap().contains(said), "{v}");
            assert_eq!(v["activationId"], id.as_str(), "{v}");
            assert_eq!(r.headers, vec![("content-type".to_string(), "application/json".to_string())]);
        }

        let raised = FunctionError { kind: "ValueError".into(), message: "boom".into(), trace: vec!["line 1".into()] };
        let r = Outcome::FunctionError(raised).native_response("f", &id);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!((r.status, &v["errorType"], &v["errorMessage"]), (500, &"ValueError".into(), &"boom".into()));
        assert_eq!(v["stackTrace"], serde_json::json!(["line 1"]));
    }
}
