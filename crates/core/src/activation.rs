//! Activation records: what one invocation did, kept for `flick activations`.

use serde::{Deserialize, Serialize};

use crate::id::ActivationId;
use crate::invocation::{Cause, Invocation};
use crate::trace::Trace;

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
    /// Accepted (async, trigger) and waiting in the queue. Shown for items
    /// still in the queue; never stored as a record.
    Queued,
    /// Leased from the queue and running now. Shown, never stored.
    Running,
}

impl ActivationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::OutOfMemory => "out_of_memory",
            Self::PlatformError => "platform_error",
            Self::Queued => "queued",
            Self::Running => "running",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Success, Self::Error, Self::Timeout, Self::OutOfMemory, Self::PlatformError, Self::Queued, Self::Running]
            .into_iter()
            .find(|k| k.as_str() == s)
    }

    /// The call is over (a record exists): not queued or running.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

/// One earlier attempt of an activation that was retried: what went wrong.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptOutcome {
    /// 1-based.
    pub attempt: u32,
    pub status: ActivationStatus,
    /// The HTTP status the attempt answered with (0 when it never ran).
    #[serde(default)]
    pub http_status: u16,
    /// What went wrong, short (the error message or response head).
    pub message: String,
    pub start_ms: i64,
    pub duration_ms: f64,
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
    /// The HTTP status the caller received: 504 when the caller gave up
    /// first (see `caller_gave_up_ms`), whatever the function answered.
    pub http_status: u16,
    /// The response body (or error), lossily decoded and capped: the
    /// function's own answer, also when its caller no longer waited for it.
    pub response: String,
    pub response_truncated: bool,
    pub logs: Vec<LogLine>,
    pub logs_truncated: bool,
    /// What made the call (`http` for records written before causes existed).
    #[serde(default)]
    pub cause: Cause,
    /// The trigger that fired it, by name (cron, mqtt, nats, cloudevent causes).
    #[serde(default)]
    pub trigger: Option<String>,
    /// This attempt (1-based); 0 in records written before attempts existed.
    #[serde(default)]
    pub attempt: u32,
    /// Attempts it may take in all (1 for a sync call).
    #[serde(default)]
    pub max_attempts: u32,
    /// The earlier attempts of a retried call, oldest first.
    #[serde(default)]
    pub attempts: Vec<AttemptOutcome>,
    /// The activation this one is part of (a sequence's steps).
    #[serde(default)]
    pub parent: Option<ActivationId>,
    /// When the caller's own deadline (`X-Flick-Deadline`) ended its wait,
    /// in milliseconds after `start_ms`; `None` if it waited for the end.
    /// The invocation ran on regardless: `status`, `logs` and timings are
    /// what it really did (or, with `exec_ms` 0, that it was abandoned
    /// while still waiting for an instance and never ran).
    #[serde(default)]
    pub caller_gave_up_ms: Option<f64>,
    /// What became of the `X-Callback-Url` delivery of the outcome, if one
    /// was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<CallbackOutcome>,
    /// The function's configured memory in MiB, what the call is billed
    /// for (0 when it never reached a revision, and in older records).
    #[serde(default)]
    pub memory_mb: u32,
    /// CPU time (user + system) the instance's cgroup used during the
    /// call, in milliseconds; `None` when not measured (no cgroup, the
    /// call never ran, a record from before measuring). With
    /// `concurrency` > 1 it is the instance's, shared with overlapping calls.
    #[serde(default)]
    pub cpu_ms: Option<f64>,
    /// The highest memory use of the instance's cgroup during the call
    /// (for exec, over the call's process's life), in bytes.
    #[serde(default)]
    pub memory_peak_bytes: Option<u64>,
    /// The W3C trace the call belongs to (32 hex digits); `None` in
    /// records written before traces existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// flick's span for this call (16 hex digits): the parent id the
    /// function, its callback and the calls it caused were sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    /// The span this call continues: the caller's (its `traceparent`), or
    /// the sequence's or replying activation's; `None` when flick started the trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
    /// `00-<trace_id>-<span_id>-<flags>`: what the function was sent as
    /// `traceparent`, and the native caller got back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// The delivery of an async call's outcome to its `X-Callback-Url`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackOutcome {
    pub url: String,
    /// The receiver answered 2xx.
    pub delivered: bool,
    /// Tries made (bounded, with backoff).
    pub attempts: u32,
    /// The receiver's last HTTP status, if it answered at all.
    #[serde(default)]
    pub http_status: Option<u16>,
    /// Why the last try failed (connection refused, timeout, a non-2xx).
    #[serde(default)]
    pub error: Option<String>,
    pub end_ms: i64,
}

impl Activation {
    /// The record of `inv` before any of it ran: who and what caused it,
    /// with `status` and `start_ms`; revision, timings and outcome are for
    /// the caller to fill in (struct update syntax).
    pub fn of(inv: &Invocation, status: ActivationStatus, start_ms: i64) -> Self {
        Self {
            id: inv.id.clone(),
            seq: 0,
            function: inv.function.clone(),
            revision: 0,
            revision_id: 0,
            start_ms,
            end_ms: start_ms,
            duration_ms: 0.0,
            init_ms: 0.0,
            wait_ms: 0.0,
            exec_ms: 0.0,
            cold: false,
            prewarmed: false,
            status,
            http_status: 0,
            response: String::new(),
            response_truncated: false,
            logs: Vec::new(),
            logs_truncated: false,
            cause: inv.cause,
            trigger: inv.trigger.clone(),
            attempt: inv.attempt,
            max_attempts: inv.attempt,
            attempts: Vec::new(),
            parent: inv.parent.clone(),
            caller_gave_up_ms: None,
            callback: None,
            memory_mb: 0,
            cpu_ms: None,
            memory_peak_bytes: None,
            trace_id: None,
            span_id: None,
            parent_span_id: None,
            traceparent: None,
        }
        .traced(inv.trace.as_ref())
    }

    /// The record with `trace`'s ids (or none).
    pub fn traced(self, trace: Option<&Trace>) -> Self {
        let c = trace.map(|t| t.context);
        Self {
            trace_id: c.map(|c| c.trace_id_hex()),
            span_id: c.map(|c| c.span_id_hex()),
            parent_span_id: c.and_then(|c| c.parent_span_id_hex()),
            traceparent: c.map(|c| c.traceparent()),
            ..self
        }
    }
}

/// What a call is billed, as Lambda bills it: the configured memory in GB
/// (MiB / 1024) times the duration in seconds, rounded up to the
/// millisecond. The duration is the time an instance worked on the call:
/// its cold start (`init_ms`) and its run (`exec_ms`), not its wait in
/// the queue.
pub fn billed_ms(init_ms: f64, exec_ms: f64) -> u64 {
    (init_ms + exec_ms).max(0.0).ceil() as u64
}

impl Activation {
    /// Billed milliseconds (see [`billed_ms`]).
    pub fn billed_ms(&self) -> u64 {
        billed_ms(self.init_ms, self.exec_ms)
    }

    /// Billed GB-seconds: configured memory × billed duration.
    pub fn billed_gb_s(&self) -> f64 {
        self.memory_mb as f64 / 1024.0 * self.billed_ms() as f64 / 1000.0
    }
}

#[cfg(test)]
mod billing_tests {
    use super::*;

    #[test]
    fn a_200_ms_call_with_256_mib_is_billed_0_05_gb_s_and_rounds_up_to_the_ms() {
        assert_eq!(billed_ms(0.0, 200.0), 200);
        assert_eq!(billed_ms(0.0, 200.01), 201);
        assert_eq!(billed_ms(3.2, 0.0), 4);
        let inv = Invocation::post("f", Cause::Http, vec![]);
        let a = Activation { memory_mb: 256, exec_ms: 200.0, ..Activation::of(&inv, ActivationStatus::Success, 0) };
        assert!((a.billed_gb_s() - 0.05).abs() < 1e-12, "{}", a.billed_gb_s());
    }
}
