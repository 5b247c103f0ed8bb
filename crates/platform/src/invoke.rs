//! The invocation path: route → scheduler lease → instance → activation record.
//!
//! Each invocation runs in its own task, so a caller that hangs up does not
//! cancel it half-way: it finishes, frees its slot and leaves its record.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flick_core::{Activation, ActivationId, ActivationStatus, now_ms};
use flick_runtime::{Captured, Failure, FunctionError, Request, Response, StartError};
use flick_scheduler::AcquireError;
use tokio::time::Instant;

use crate::{Platform, PlatformError, Route};

/// An HTTP request for a function, as the API parsed it.
#[derive(Debug)]
pub struct InvokeRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// The caller's own time budget (`X-Flick-Deadline`), if shorter than
    /// the function's `timeout`.
    pub budget: Option<Duration>,
}

/// What the caller gets back, and the record it left.
#[derive(Debug)]
pub struct InvokeResponse {
    pub activation_id: ActivationId,
    pub status: ActivationStatus,
    pub timing: Timing,
    pub response: Response,
}

/// Where the time of one invocation went, in milliseconds (as recorded).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub wait_ms: f64,
    pub init_ms: f64,
    pub exec_ms: f64,
    pub total_ms: f64,
    /// The cold start took a prewarmed stem cell.
    pub prewarmed: bool,
}

impl Platform {
    pub async fn invoke(self: &Arc<Self>, name: &str, req: InvokeRequest) -> Result<InvokeResponse, PlatformError> {
        let route = self.route(name).ok_or_else(|| PlatformError::FunctionNotFound(name.into()))?;
        let this = self.clone();
        tokio::spawn(async move { this.run(route, req).await })
            .await
            .map_err(|e| PlatformError::Internal(format!("invocation task: {e}")))?
    }

    async fn run(&self, route: Arc<Route>, req: InvokeRequest) -> Result<InvokeResponse, PlatformError> {
        let manifest = &route.revision.manifest;
        let id = ActivationId::generate();
        let start_ms = now_ms();
        let started = Instant::now();
        // One deadline for the whole request: queueing, cold start and
        // execution all spend from it.
        let budget = req.budget.map_or(manifest.timeout, |b| b.min(manifest.timeout));
        let deadline = started + budget;
        let request = Request {
            id: id.to_string(),
            method: req.method,
            path: req.path,
            query: req.query,
            headers: req.headers,
            body: req.body,
            deadline,
            deadline_ms: start_ms + budget.as_millis() as i64,
        };

        let mut record =
            Record { cold: false, prewarmed: false, init: Duration::ZERO, wait: Duration::ZERO, exec: Duration::ZERO };
        let function = || route.revision.function.clone();
        let (outcome, logs) = match route.pool.acquire(deadline).await {
            Ok(mut lease) => {
                let exec_started = Instant::now();
                let invoked = lease.instance().invoke(request).await;
                record = Record {
                    cold: lease.cold,
                    prewarmed: lease.prewarmed || invoked.prewarmed,
                    init: lease.init,
                    wait: lease.wait,
                    exec: exec_started.elapsed(),
                };
                if !invoked.reusable {
                    lease.discard();
                }
                (invoked.outcome, invoked.logs)
            }
            Err(e @ (AcquireError::Overloaded { .. } | AcquireError::QueueFull { .. })) => {
                return Err(PlatformError::Overloaded { function: function(), reason: e.to_string() });
            }
            Err(AcquireError::HostFull) => return Err(PlatformError::HostFull { function: function() }),
            Err(AcquireError::Start(e)) => {
                record.cold = true;
                record.init = started.elapsed();
                match e {
                    StartError::Init { error, logs } => (Err(Failure::Function(error)), logs),
                    StartError::Timeout { logs } => (Err(Failure::Timeout), logs),
                    StartError::Platform(m) => (Err(Failure::Platform(m)), Captured::default()),
                }
            }
        };

        let (status, response) = self.respond(&route, &id, outcome);
        let cap = self.config.response_capture_bytes;
        let activation = Activation {
            id,
            seq: 0,
            function: route.revision.function.clone(),
            revision: route.revision.number,
            start_ms,
            end_ms: now_ms(),
            duration_ms: ms(started.elapsed()),
            init_ms: ms(record.init),
            wait_ms: ms(record.wait),
            exec_ms: ms(record.exec),
            cold: record.cold,
            prewarmed: record.prewarmed,
            status,
            http_status: response.status,
            response: String::from_utf8_lossy(&response.body[..response.body.len().min(cap)]).into_owned(),
            response_truncated: response.body.len() > cap,
            logs: logs.lines,
            logs_truncated: logs.truncated,
        };
        let done = InvokeResponse {
            activation_id: activation.id.clone(),
            status: activation.status,
            timing: Timing {
                wait_ms: activation.wait_ms,
                init_ms: activation.init_ms,
                exec_ms: activation.exec_ms,
                total_ms: activation.duration_ms,
                prewarmed: activation.prewarmed,
            },
            response,
        };
        // Stored off the request path; reads flush first, so the caller can
        // still read its record right after this response.
        self.records.record(activation);
        Ok(done)
    }

    /// The HTTP answer for an outcome: the function's own response, or an
    /// error body in the shape Lambda clients parse.
    fn respond(
        &self,
        route: &Route,
        id: &ActivationId,
        outcome: Result<Response, Failure>,
    ) -> (ActivationStatus, Response) {
        let function = &route.revision.function;
        let error = |status: u16, kind: &str, message: String, trace: Vec<String>| Response {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from(
                serde_json::json!({
                    "errorType": kind,
                    "errorMessage": message,
                    "stackTrace": trace,
                    "activationId": id.as_str(),
                })
                .to_string(),
            ),
        };
        match outcome {
            Ok(resp) => (ActivationStatus::Success, resp),
            Err(Failure::Function(FunctionError { kind, message, trace })) => {
                (ActivationStatus::Error, error(500, &kind, message, trace))
            }
            Err(Failure::Timeout) => {
                let t = flick_core::units::format_duration(route.revision.manifest.timeout);
                let message = format!("function `{function}` timed out after {t}");
                (ActivationStatus::Timeout, error(504, "Function.Timeout", message, vec![]))
            }
            Err(Failure::OutOfMemory) => {
                let limit = flick_core::units::format_size(route.revision.manifest.memory);
                let message = format!("function `{function}` ran out of memory (limit {limit}) and was stopped");
                (ActivationStatus::OutOfMemory, error(500, "Runtime.OutOfMemory", message, vec![]))
            }
            Err(Failure::Platform(m)) => {
                // The detail names host paths and interpreters: it is for
                // the operator's log, not for whoever called (perhaps
                // without a key).
                tracing::warn!(function = %function, activation = %id, error = %m, "platform error");
                let message = format!(
                    "flick could not run function `{function}` (a platform fault, not the function's); \
                     the operator's log has the detail under activation {id}"
                );
                (ActivationStatus::PlatformError, error(502, "Platform.Error", message, vec![]))
            }
        }
    }
}

struct Record {
    cold: bool,
    prewarmed: bool,
    init: Duration,
    wait: Duration,
    exec: Duration,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
