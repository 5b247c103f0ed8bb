//! Activation records: what one invocation did, kept for `flick activations`.

use serde::{Deserialize, Serialize};

use crate::id::ActivationId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationStatus {
    /// The function ran and answered (whatever HTTP status it chose).
    Success,
    /// The function raised, exited non-zero or failed to initialise.
    Error,
    /// The function ran past its deadline and was stopped.
    Timeout,
    /// The instance exceeded its memory limit and was killed.
    OutOfMemory,
    /// flick could not run the function (instance crashed, could not start,
    /// answered something that is not the wire protocol).
    PlatformError,
}

impl ActivationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::OutOfMemory => "out_of_memory",
            Self::PlatformError => "platform_error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Success, Self::Error, Self::Timeout, Self::OutOfMemory, Self::PlatformError]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub ts_ms: i64,
    pub stream: LogStream,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Activation {
    pub id: ActivationId,
    /// Order in which the store recorded it (0 until stored): a cursor for
    /// following new records, since ids order by start, not by finish.
    #[serde(default)]
    pub seq: i64,
    pub function: String,
    pub revision: u32,
    /// The unique id of that revision (see `Revision::id`); 0 in records
    /// written before revision ids existed.
    #[serde(default)]
    pub revision_id: u64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub duration_ms: f64,
    /// Time spent starting an instance for this call (zero when warm).
    pub init_ms: f64,
    /// Time spent waiting for a free instance slot.
    pub wait_ms: f64,
    /// Time the instance spent on the request itself.
    #[serde(default)]
    pub exec_ms: f64,
    pub cold: bool,
    /// The cold start took a prewarmed stem cell (interpreter and sandbox
    /// already up) instead of starting from nothing.
    #[serde(default)]
    pub prewarmed: bool,
    pub status: ActivationStatus,
    /// The HTTP status the caller received.
    pub http_status: u16,
    /// The response body (or error), lossily decoded and capped.
    pub response: String,
    pub response_truncated: bool,
    pub logs: Vec<LogLine>,
    pub logs_truncated: bool,
}
