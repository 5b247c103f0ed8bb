//! Sequences (`runtime = "sequence"`, `steps = ["a", "b", "c"]`): each step
//! is an ordinary invocation of its function through the normal invoke path
//! (cause `sequence`, `parent` = the sequence's activation), given the
//! previous step's response body and content type; the last step's
//! response is the sequence's.
//!
//! - A sequence has no instances: its pool is never asked for one, so
//!   deploying one starts nothing.
//! - One parent activation per call, recorded when the chain ends, with one
//!   log line per step naming the step's activation (and each child's
//!   record names the parent: `GET /v1/activations?parent=ID`).
//! - A step that does not succeed (status other than `success`) or answers
//!   HTTP 400 or above stops the chain; the sequence answers with that
//!   step's HTTP status and a `Sequence.StepFailed` error naming the step.
//! - The sequence's `timeout` (or the caller's shorter `X-Flick-Deadline`)
//!   bounds the whole chain: each step gets what is left of it.
//! - Steps run with the sequence's authority (as the admin): a public sequence may call
//!   private functions (that is how an operator exposes a composition
//!   without exposing its parts).
//! - A sequence that reaches itself again, through other sequences, fails
//!   with `Sequence.Recursion`; nesting deeper than [`MAX_DEPTH`] fails too.

use std::sync::Arc;

use bytes::Bytes;
use flick_core::{
    Activation, ActivationId, ActivationStatus, Cause, Invocation, LogLine, LogStream, RuntimeKind, now_ms,
};
use flick_runtime::Response;
use tokio::time::Instant;

use crate::invoke::{InvokeResponse, Timing, ms};
use crate::{Caller, Outcome, Platform, PlatformError, Route, SequenceFailure};

/// How deeply sequences may nest (a sequence whose step is a sequence…).
pub const MAX_DEPTH: usize = 8;

/// How one step ended, for the parent's record.
struct Step {
    function: String,
    activation: Option<ActivationId>,
    status: ActivationStatus,
    http_status: u16,
    millis: f64,
}

impl Platform {
    /// Runs a sequence call and stores its parent record.
    pub(crate) async fn invoke_sequence(
        self: &Arc<Self>,
        route: Arc<Route>,
        inv: Invocation,
        chain: Vec<String>,
    ) -> Result<InvokeResponse, PlatformError> {
        let (done, activation) = self.run_sequence(route, inv, chain).await;
        self.record(activation).await;
        Ok(done)
    }

    /// Runs a sequence call: the steps in order (each recorded as it
    /// ends). Returns the answer and the parent record, not yet stored (the
    /// dispatcher stores an async call's record itself). `chain` holds the
    /// sequences this call is nested in (outermost first).
    pub(crate) async fn run_sequence(
        self: &Arc<Self>,
        route: Arc<Route>,
        inv: Invocation,
        chain: Vec<String>,
    ) -> (InvokeResponse, Activation) {
        let mut inv = inv;
        // A queued call from before traces had none: its steps share one.
        let trace = inv.trace.get_or_insert_with(flick_core::Trace::start).clone();
        let m = &route.revision.manifest;
        let name = route.revision.function.clone();
        let started = Instant::now();
        let start_ms = now_ms();
        let budget = inv.budget_ms.map(std::time::Duration::from_millis).filter(|b| *b < m.timeout);
        let deadline = started + budget.unwrap_or(m.timeout);
        let id = inv.id.clone();
        let mut chain = chain;
        chain.push(name.clone());

        let mut steps: Vec<Step> = Vec::new();
        let mut input = inv.clone();
        let mut last: Option<Response> = None;
        let mut failure: Option<(ActivationStatus, Outcome)> = None;
        for (i, step) in m.steps.iter().enumerate() {
            let n = i + 1;
            let fail = |status: ActivationStatus, http: u16, kind: &'static str, message: String| {
                (status, Outcome::SequenceFailed(SequenceFailure { kind, message, status: http }))
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let t = flick_core::units::format_duration(budget.unwrap_or(m.timeout));
                failure = Some(fail(
                    ActivationStatus::Timeout,
                    504,
                    "Sequence.Timeout",
                    format!("sequence `{name}` ran out of time ({t}) before step {n} (`{step}`)"),
                ));
                break;
            }
            let Some(step_route) = self.route(step.as_str()) else {
                failure = Some(fail(
                    ActivationStatus::Error,
                    500,
                    "Sequence.StepNotFound",
                    format!("step {n} of sequence `{name}`: function `{step}` does not exist"),
                ));
                break;
            };
            let step_started = Instant::now();
            // The first step sees the caller's request as sent; later ones
            // the previous step's answer.
            let mut step_inv = input.clone();
            step_inv.id = ActivationId::generate();
            step_inv.function = step.to_string();
            step_inv.cause = Cause::Sequence;
            step_inv.trigger = Some(name.clone());
            step_inv.parent = Some(id.clone());
            step_inv.attempt = 1;
            step_inv.callback_url = None;
            step_inv.budget_ms = Some(left.as_millis().max(1) as u64);
            // Same trace, a span of its own under the sequence's.
            step_inv.trace = Some(trace.child());
            tracing::debug!(step = n, function = %step, activation = %step_inv.id, "sequence step");
            let result = if step_route.revision.manifest.runtime == RuntimeKind::Sequence {
                if chain.iter().any(|c| c == step.as_str()) || chain.len() >= MAX_DEPTH {
                    let path = format!("{} → {step}", chain.join(" → "));
                    let why = if chain.len() >= MAX_DEPTH {
                        format!("sequences nest deeper than {MAX_DEPTH}: {path}")
                    } else {
                        format!("sequence `{step}` calls itself: {path}")
                    };
                    failure = Some(fail(ActivationStatus::Error, 500, "Sequence.Recursion", why));
                    break;
                }
                Box::pin(self.invoke_sequence(step_route, step_inv, chain.clone())).await
            } else {
                self.invoke(step_route, Caller::Admin, step_inv).await
            };
            let millis = ms(step_started.elapsed());
            match result {
                Ok(done) => {
                    let http_status = done.outcome.native_status();
                    let ok = done.status == ActivationStatus::Success && http_status < 400;
                    steps.push(Step {
                        function: step.to_string(),
                        activation: Some(done.activation_id.clone()),
                        status: done.status,
                        http_status,
                        millis,
                    });
                    if !ok {
                        let status = if done.status == ActivationStatus::Success {
                            ActivationStatus::Error
                        } else {
                            done.status
                        };
                        let body = done.native_response().body;
                        let detail = String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned();
                        let message = format!(
                            "step {n} of sequence `{name}` (`{step}`, activation {}) failed: {}, HTTP {http_status}: {detail}",
                            done.activation_id,
                            done.status.as_str(),
                        );
                        failure = Some(fail(status, http_status, "Sequence.StepFailed", message));
                        break;
                    }
                    let Outcome::Response(response) = done.outcome else {
                        unreachable!("a call that succeeded has the function's answer")
                    };
                    input = next_input(&inv, &response);
                    last = Some(response);
                }
                Err(e) => {
                    steps.push(Step {
                        function: step.to_string(),
                        activation: None,
                        status: ActivationStatus::PlatformError,
                        http_status: 0,
                        millis,
                    });
                    let (status, http) = match &e {
                        PlatformError::Overloaded { .. } => (ActivationStatus::PlatformError, 429),
                        PlatformError::HostFull { .. } => (ActivationStatus::PlatformError, 503),
                        PlatformError::FunctionNotFound(_) => (ActivationStatus::Error, 500),
                        _ => (ActivationStatus::PlatformError, 502),
                    };
                    let message = format!("step {n} of sequence `{name}` (`{step}`) could not run: {e}");
                    failure = Some(fail(status, http, "Sequence.StepFailed", message));
                    break;
                }
            }
        }

        let (status, outcome) = match failure {
            Some(f) => f,
            None => (
                ActivationStatus::Success,
                Outcome::Response(last.unwrap_or_else(|| Response {
                    status: 200,
                    headers: vec![],
                    body: Bytes::new(),
                })),
            ),
        };
        let response = outcome.native_body(&name, &id);
        let elapsed = started.elapsed();
        let logs = steps
            .iter()
            .enumerate()
            .map(|(i, s)| LogLine {
                ts_ms: now_ms(),
                stream: LogStream::Stdout,
                text: format!(
                    "flick: step {} `{}`: {} HTTP {} in {:.1} ms, activation {}",
                    i + 1,
                    s.function,
                    s.status.as_str(),
                    s.http_status,
                    s.millis,
                    s.activation.as_ref().map(|a| a.as_str()).unwrap_or("none")
                ),
            })
            .collect();
        let cap = self.config.response_capture_bytes;
        let activation = Activation {
            id: id.clone(),
            function: name.clone(),
            revision: route.revision.number,
            revision_id: route.revision.id,
            end_ms: now_ms(),
            duration_ms: ms(elapsed),
            exec_ms: ms(elapsed),
            http_status: outcome.native_status(),
            response: String::from_utf8_lossy(&response[..response.len().min(cap)]).into_owned(),
            response_truncated: response.len() > cap,
            logs,
            ..Activation::of(&inv, status, start_ms)
        };
        crate::invoke::log_finished(&activation);
        let done = InvokeResponse {
            activation_id: id,
            function: name,
            status,
            timing: Timing {
                wait_ms: 0.0,
                init_ms: 0.0,
                exec_ms: ms(elapsed),
                total_ms: ms(elapsed),
                prewarmed: false,
            },
            outcome,
        };
        (done, activation)
    }
}

/// The request for the step after `step`: `POST /` with the response's
/// body and content type (nothing else of the caller's request travels on).
fn next_input(original: &Invocation, response: &Response) -> Invocation {
    let mut inv = Invocation::post(original.function.clone(), Cause::Sequence, response.body.to_vec());
    inv.headers =
        response.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("content-type")).take(1).cloned().collect();
    inv.accepted_ms = original.accepted_ms;
    // A chain called with an event passes events along: each step's
    // answer is the next one's event, as it was the first one's.
    inv.presentation = original.presentation;
    inv
}
