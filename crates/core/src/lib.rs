//! Domain types of flick, shared by every other crate: what a function is
//! (its [`FunctionName`] and [`Manifest`]), what a deploy produces (a
//! [`Revision`]) and what an invocation leaves behind (an [`Activation`]).
//!
//! This crate holds data and the rules that validate it, nothing that does
//! I/O: parsing a manifest is pure, so it is cheap to test and the same rules
//! apply in the CLI (early feedback) and on the server (the authority).

pub mod activation;
pub mod aws;
pub mod cloudevent;
pub mod id;
pub mod invocation;
pub mod manifest;
pub mod name;
pub mod revision;
pub mod timefmt;
pub mod trace;
pub mod trigger;
pub mod units;

pub use activation::{Activation, ActivationStatus, AttemptOutcome, CallbackOutcome, LogLine, LogStream, billed_ms};
pub use aws::LambdaIdentity;
pub use cloudevent::CloudEvent;
pub use id::ActivationId;
pub use invocation::{Cause, Invocation, Presentation};
pub use manifest::{MANIFEST_FILE, Manifest, ManifestError, Network, RuntimeKind, Scaling, Shape};
pub use name::{FunctionName, NameError};
pub use revision::{FunctionInfo, Revision};
pub use trace::{Trace, TraceContext};
pub use trigger::{TriggerKind, TriggerSpec};

/// Milliseconds since the Unix epoch: the one timestamp format of records and the API.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
