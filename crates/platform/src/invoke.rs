//! The invocation path: route → scheduler lease → instance → activation record.
//!
//! Each invocation runs in its own task, so a caller that hangs up (or
//! whose `X-Flick-Deadline` passes) does not cancel it half-way: it
//! finishes, frees its slot and leaves its record, which says when the
//! caller gave up.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use flick_core::{Activation, ActivationId, ActivationStatus, AttemptOutcome, Cause, Invocation, Trace, now_ms};
use flick_runtime::{Captured, Failure, Request, Response, StartError};
use flick_scheduler::AcquireError;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::{Outcome, Platform, PlatformError, Route};

/// What the caller gets back, and the record it left. Each surface
/// renders [`InvokeResponse::outcome`] in its own shapes.
#[derive(Debug)]
pub struct InvokeResponse {
    pub activation_id: ActivationId,
    /// The function called (for a sequence, the sequence).
    pub function: String,
    pub status: ActivationStatus,
    pub timing: Timing,
    pub outcome: Outcome,
}

impl InvokeResponse {
    /// The native surface's answer (also what the record stores).
    pub fn native_response(&self) -> Response {
        self.outcome.native_response(&self.function, &self.activation_id)
    }
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

/// One call's clocks and who answers it. The invocation runs in its own
/// task to the function's `timeout`; the caller waits at most until its own
/// deadline (`X-Flick-Deadline`). Whichever side settles first answers:
/// the task with the outcome, or the caller with a 504. The record is
/// always the task's, written when the invocation ends, so it holds what
/// really happened (and, if the caller settled, when it gave up).
#[derive(Clone)]
struct Call {
    id: ActivationId,
    start_ms: i64,
    started: Instant,
    /// Where the function's `timeout` ends: the only deadline that stops an instance.
    function_deadline: Instant,
    /// The caller's own deadline, when it is earlier than the function's.
    caller_deadline: Option<Instant>,
    settled: Arc<OnceLock<Settled>>,
    /// Where the call came from, for its record.
    origin: Arc<Origin>,
}

/// Who answered the caller.
#[derive(Clone, Copy, Debug)]
enum Settled {
    Task,
    /// The caller's deadline, this long after the start.
    CallerGaveUp(Duration),
}

struct Origin {
    cause: Cause,
    trigger: Option<String>,
    attempt: u32,
    parent: Option<ActivationId>,
    /// The call's trace; a new one for a queued item from before traces.
    trace: Trace,
}

impl Origin {
    fn of(inv: &Invocation) -> Arc<Self> {
        Arc::new(Self {
            cause: inv.cause,
            trigger: inv.trigger.clone(),
            attempt: inv.attempt,
            parent: inv.parent.clone(),
            trace: inv.trace.clone().unwrap_or_else(Trace::start),
        })
    }
}

impl Call {
    /// Claims the answer for the task; false if the caller already gave up.
    fn settle(&self) -> bool {
        self.settled.set(Settled::Task).is_ok() || matches!(self.settled.get(), Some(Settled::Task))
    }

    /// Claims the answer for the caller's deadline; false if the task
    /// answered first.
    fn give_up(&self) -> bool {
        let at = self.started.elapsed();
        self.settled.set(Settled::CallerGaveUp(at)).is_ok()
    }

    /// When the caller gave up, if it did.
    fn gave_up(&self) -> Option<Duration> {
        match self.settled.get() {
            Some(Settled::CallerGaveUp(at)) => Some(*at),
            _ => None,
        }
    }

    /// The caller no longer waits: its deadline has passed, whether or not
    /// the timer that ends its wait has fired yet.
    fn caller_is_gone(&self) -> bool {
        self.gave_up().is_some() || self.caller_deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// Who made a call: a caller without the key may only ever reach a
/// public revision, also when the call moves to a newer one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Anonymous,
}

/// How often one call follows its function to a newer revision before
/// giving up (each time, a deploy retired the pool it was about to use).
/// A burst of deploys can retire the pool once per deploy (CI saw more
/// than three in a row with twelve racing deploys), and each reroute moves to a newer
/// revision, so the bound only stops a call that never catches up.
const MAX_REROUTES: u32 = 32;

impl Platform {
    /// Runs a call on `route`, the one route the caller resolved (with
    /// [`Platform::route`]) and was authorised against. If that revision
    /// is retired before the call gets an instance, the call moves to the
    /// function's current revision, provided `caller` may call that one.
    pub async fn invoke(
        self: &Arc<Self>,
        route: Arc<Route>,
        caller: Caller,
        inv: Invocation,
    ) -> Result<InvokeResponse, PlatformError> {
        match self.place(&route, caller, &inv).await {
            Some(answered) => answered,
            None => self.invoke_here(route, caller, inv).await,
        }
    }

    /// [`Platform::invoke`] on this node, wherever the function's home is.
    pub(crate) async fn invoke_here(
        self: &Arc<Self>,
        route: Arc<Route>,
        caller: Caller,
        inv: Invocation,
    ) -> Result<InvokeResponse, PlatformError> {
        let span = call_span(&inv);
        if route.revision.manifest.runtime == flick_core::RuntimeKind::Sequence {
            // Its steps are calls of their own (`sequence.rs`); boxed, as
            // a step may be a sequence again.
            return Box::pin(self.invoke_sequence(route, inv, Vec::new())).instrument(span).await;
        }
        let timeout = route.revision.manifest.timeout;
        let started = Instant::now();
        let budget = inv.budget_ms.map(Duration::from_millis);
        let call = Call {
            id: inv.id.clone(),
            start_ms: now_ms(),
            started,
            function_deadline: started + timeout,
            caller_deadline: budget.filter(|b| *b < timeout).map(|b| started + b),
            settled: Arc::default(),
            origin: Origin::of(&inv),
        };
        let (this, task_route, task_call) = (self.clone(), route.clone(), call.clone());
        let mut task = tokio::spawn(
            async move {
                let (done, activation) = this.run(task_route, caller, inv, task_call, Tries::ONE).await?;
                // Stored off the request path; reads flush first, so the caller
                // can still read its record right after this response. Waits
                // only when the writer's backlog is full: that bounds memory
                // under a flood.
                this.record(activation).await;
                Ok(done)
            }
            .instrument(span),
        );
        let joined = match call.caller_deadline {
            None => task.await,
            Some(deadline) => match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(joined) => joined,
                // The caller's deadline ends its wait, not the invocation:
                // that runs on (the instance may serve others) to its end
                // or the function's own timeout, and records what it did.
                Err(_) if call.give_up() => return Ok(caller_gave_up(&call, &route.revision.function)),
                Err(_) => task.await,
            },
        };
        joined.map_err(|e| PlatformError::Internal(format!("invocation task: {e}")))?
    }

    /// The current route of the function `stale` belonged to, for a call
    /// whose revision was retired before it started.
    fn reroute(&self, stale: &Route, caller: Caller) -> Result<Arc<Route>, PlatformError> {
        let name = &stale.revision.function;
        let route = self.route(name).ok_or_else(|| PlatformError::FunctionNotFound(name.clone()))?;
        if caller == Caller::Anonymous && !route.revision.manifest.public {
            return Err(PlatformError::NotPublic(name.clone()));
        }
        Ok(route)
    }

    /// Runs one attempt of `inv` without a caller deadline (queued calls:
    /// nobody waits), returning its answer and its record, which the
    /// caller stores (or not, when the attempt is retried).
    pub(crate) async fn run_attempt(
        &self,
        route: Arc<Route>,
        caller: Caller,
        inv: Invocation,
        tries: Tries,
    ) -> Result<(InvokeResponse, Activation), PlatformError> {
        let started = Instant::now();
        let call = Call {
            id: inv.id.clone(),
            start_ms: now_ms(),
            started,
            function_deadline: started + route.revision.manifest.timeout,
            caller_deadline: None,
            settled: Arc::default(),
            origin: Origin::of(&inv),
        };
        self.run(route, caller, inv, call, tries).await
    }

    async fn run(
        &self,
        mut route: Arc<Route>,
        caller: Caller,
        inv: Invocation,
        call: Call,
        tries: Tries,
    ) -> Result<(InvokeResponse, Activation), PlatformError> {
        let Call { ref id, start_ms, started, .. } = call;
        let mut headers = inv.headers;
        // Which attempt this is, so a function can tell a retry from a first
        // call; flick's to set, never the caller's. So is the trace context:
        // the function is sent flick's span as its parent, and only what
        // flick formatted or validated (the caller's raw header could be
        // anything, `trace.rs`).
        headers
            .retain(|(n, _)| ![ATTEMPT_HEADER, "traceparent", "tracestate"].iter().any(|h| n.eq_ignore_ascii_case(h)));
        headers.push((ATTEMPT_HEADER.into(), inv.attempt.to_string()));
        let trace = &call.origin.trace;
        let traceparent = trace.traceparent();
        headers.push(("traceparent".into(), traceparent.clone()));
        if let Some(state) = &trace.tracestate {
            headers.push(("tracestate".into(), state.clone()));
        }
        let request = Request {
            id: id.to_string(),
            method: inv.method,
            path: inv.path,
            raw_path: inv.raw_path,
            query: inv.query,
            headers,
            body: Bytes::from(inv.body),
            deadline: call.function_deadline,
            // What the function is told is the earlier of the two: past the
            // caller's deadline nobody waits for its answer.
            deadline_ms: start_ms
                + call.caller_deadline.unwrap_or(call.function_deadline).duration_since(started).as_millis() as i64,
            presentation: inv.presentation,
            client_context: inv.client_context,
            traceparent: Some(traceparent),
            tracestate: trace.tracestate.clone(),
            log_sink: Some(self.live.sink(&route.revision.function, id.as_str())),
        };
        let mut record = Record::default();
        let function = |route: &Route| route.revision.function.clone();
        let mut reroutes = 0;
        let mut redelivered = false;
        // Queueing ends at the caller's deadline; a cold start it causes
        // runs to the function's (the instance is the pool's, not the caller's).
        let (outcome, logs) = loop {
            match route.pool.acquire(call.caller_deadline.unwrap_or(call.function_deadline)).await {
                // Nobody waits for it any more: the lease goes back unused,
                // and the record says the call never ran.
                Ok(lease) if call.caller_is_gone() => {
                    let record = Record { cold: lease.cold, prewarmed: lease.prewarmed, init: lease.init, ..record };
                    return Ok(self.abandoned_in_queue(&route, &call, record, &tries));
                }
                Ok(mut lease) => {
                    if lease.cold {
                        tracing::debug!(
                            init_ms = ms(lease.init),
                            prewarmed = lease.prewarmed,
                            wait_ms = ms(lease.wait),
                            "cold start: new instance"
                        );
                    } else {
                        tracing::debug!(wait_ms = ms(lease.wait), "warm instance");
                    }
                    let exec_started = Instant::now();
                    let invoked = lease.instance().invoke(request.clone()).await;
                    record = Record {
                        cold: lease.cold,
                        prewarmed: lease.prewarmed || invoked.prewarmed,
                        init: lease.init,
                        wait: lease.wait,
                        exec: exec_started.elapsed(),
                        usage: invoked.usage,
                    };
                    if !invoked.reusable {
                        lease.discard();
                    }
                    // The instance died while idle and the request never
                    // reached it: once, another instance takes it.
                    if let Err(Failure::NotDelivered(why)) = &invoked.outcome
                        && !redelivered
                    {
                        tracing::debug!(function = %route.revision.function, %why, "instance was gone; retrying on another");
                        redelivered = true;
                        continue;
                    }
                    break (invoked.outcome, invoked.logs);
                }
                Err(AcquireError::Retired { .. }) if reroutes < MAX_REROUTES => {
                    reroutes += 1;
                    route = match self.reroute(&route, caller) {
                        Ok(r) => r,
                        Err(e) => return self.refuse(&route, &call, e, &tries),
                    };
                }
                // The wait ended because the caller's deadline did: a 504
                // for the caller, not the pool's 429 or 503.
                Err(AcquireError::Overloaded { .. } | AcquireError::HostFull) if call.caller_is_gone() => {
                    let record = Record { wait: started.elapsed(), ..record };
                    return Ok(self.abandoned_in_queue(&route, &call, record, &tries));
                }
                Err(
                    e @ (AcquireError::Retired { .. }
                    | AcquireError::Overloaded { .. }
                    | AcquireError::QueueFull { .. }),
                ) => {
                    let e = PlatformError::Overloaded { function: function(&route), reason: e.to_string() };
                    return self.refuse(&route, &call, e, &tries);
                }
                Err(AcquireError::HostFull) => {
                    return self.refuse(&route, &call, PlatformError::HostFull { function: function(&route) }, &tries);
                }
                Err(AcquireError::Start(e)) => {
                    record.cold = true;
                    record.init = started.elapsed();
                    // The failed start's output was never attributed to a
                    // call as it was read: followers get it now.
                    if let (StartError::Init { logs, .. } | StartError::Timeout { logs }, Some(sink)) =
                        (&e, &request.log_sink)
                    {
                        logs.lines.iter().for_each(|l| sink.send(l));
                    }
                    break match e {
                        StartError::Init { error, logs } => (Err(Failure::Function(error)), logs),
                        StartError::Timeout { logs } => (Err(Failure::Timeout), logs),
                        StartError::Platform(m) => (Err(Failure::Platform(m)), Captured::default()),
                    };
                }
            }
        };

        if !call.settle() {
            tracing::debug!(function = %route.revision.function, activation = %id, "answer after the caller's deadline: recorded only");
        }
        let (status, outcome) = self.outcome(&route, id, outcome);
        Ok(self.finish(&route, &call, status, outcome, logs, record, &tries))
    }

    /// A call refused before it reached an instance: the error for its
    /// caller, or, if that caller had already given up, a record that the
    /// call was abandoned.
    fn refuse(
        &self,
        route: &Route,
        call: &Call,
        error: PlatformError,
        tries: &Tries,
    ) -> Result<(InvokeResponse, Activation), PlatformError> {
        if call.settle() {
            return Err(error);
        }
        let record = Record { wait: call.started.elapsed(), ..Record::default() };
        Ok(self.abandoned_in_queue(route, call, record, tries))
    }

    /// The answer and record of a call whose caller's deadline passed
    /// before it reached an instance: it never runs.
    fn abandoned_in_queue(
        &self,
        route: &Route,
        call: &Call,
        record: Record,
        tries: &Tries,
    ) -> (InvokeResponse, Activation) {
        // The timer that ends the caller's wait may not have fired yet.
        call.give_up();
        let waited = call.gave_up().unwrap_or_else(|| call.started.elapsed());
        let outcome = Outcome::CallerGaveUp { waited, abandoned: true };
        self.finish(route, call, ActivationStatus::Timeout, outcome, Captured::default(), record, tries)
    }

    /// The answer and the record of what an invocation did. If its caller
    /// gave up first, the record keeps the real outcome and says when.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        route: &Route,
        call: &Call,
        status: ActivationStatus,
        outcome: Outcome,
        logs: Captured,
        record: Record,
        tries: &Tries,
    ) -> (InvokeResponse, Activation) {
        let cap = self.config.response_capture_bytes;
        let gave_up = call.gave_up();
        let origin = &call.origin;
        let function = &route.revision.function;
        let response = outcome.native_body(function, &call.id);
        let activation = Activation {
            id: call.id.clone(),
            seq: 0,
            function: route.revision.function.clone(),
            revision: route.revision.number,
            revision_id: route.revision.id,
            start_ms: call.start_ms,
            end_ms: now_ms(),
            duration_ms: ms(call.started.elapsed()),
            init_ms: ms(record.init),
            wait_ms: ms(record.wait),
            exec_ms: ms(record.exec),
            cold: record.cold,
            prewarmed: record.prewarmed,
            status,
            // What the caller saw: its own 504 if it gave up first.
            http_status: if gave_up.is_some() { 504 } else { outcome.native_status() },
            response: String::from_utf8_lossy(&response[..response.len().min(cap)]).into_owned(),
            response_truncated: response.len() > cap,
            logs: logs.lines,
            logs_truncated: logs.truncated,
            cause: origin.cause,
            trigger: origin.trigger.clone(),
            attempt: origin.attempt,
            max_attempts: tries.max.max(origin.attempt),
            attempts: tries.earlier.clone(),
            parent: origin.parent.clone(),
            caller_gave_up_ms: gave_up.map(ms),
            callback: None,
            memory_mb: (route.revision.manifest.memory >> 20) as u32,
            cpu_ms: record.usage.and_then(|u| u.cpu_ns).map(|ns| ns as f64 / 1e6),
            memory_peak_bytes: record.usage.and_then(|u| u.memory_peak),
            trace_id: None,
            span_id: None,
            parent_span_id: None,
            traceparent: None,
        }
        .traced(Some(&origin.trace));
        log_finished(&activation);
        let done = InvokeResponse {
            activation_id: activation.id.clone(),
            function: function.clone(),
            status: activation.status,
            timing: Timing {
                wait_ms: activation.wait_ms,
                init_ms: activation.init_ms,
                exec_ms: activation.exec_ms,
                total_ms: activation.duration_ms,
                prewarmed: activation.prewarmed,
            },
            outcome,
        };
        (done, activation)
    }

    /// What became of a call that reached (or tried to start) an
    /// instance; each surface renders it (`outcome.rs`).
    fn outcome(
        &self,
        route: &Route,
        id: &ActivationId,
        outcome: Result<Response, Failure>,
    ) -> (ActivationStatus, Outcome) {
        match outcome {
            Ok(resp) => (ActivationStatus::Success, Outcome::Response(resp)),
            Err(Failure::Function(error)) => (ActivationStatus::Error, Outcome::FunctionError(error)),
            Err(Failure::Timeout) => {
                (ActivationStatus::Timeout, Outcome::Timeout { after: route.revision.manifest.timeout })
            }
            Err(Failure::OutOfMemory) => {
                (ActivationStatus::OutOfMemory, Outcome::OutOfMemory { limit: route.revision.manifest.memory })
            }
            Err(Failure::BadRequest(m)) => (ActivationStatus::Error, Outcome::BadRequest(m)),
            Err(Failure::Platform(m) | Failure::NotDelivered(m)) => {
                // The detail names host paths and interpreters: it is for
                // the operator's log, not for whoever called (perhaps
                // without a key).
                tracing::warn!(function = %route.revision.function, activation = %id, error = %m, "platform error");
                (ActivationStatus::PlatformError, Outcome::PlatformFault)
            }
        }
    }
}

/// The attempts a call may take and the outcomes of those before this one
/// (a sync call: one, none).
#[derive(Clone, Debug, Default)]
pub(crate) struct Tries {
    pub max: u32,
    pub earlier: Vec<AttemptOutcome>,
}

impl Tries {
    pub const ONE: Self = Self { max: 1, earlier: Vec::new() };
}

/// The header that tells a function which attempt it runs (1-based).
pub const ATTEMPT_HEADER: &str = "x-flick-attempt";

#[derive(Clone, Copy, Default)]
struct Record {
    cold: bool,
    prewarmed: bool,
    init: Duration,
    wait: Duration,
    exec: Duration,
    /// What the instance's cgroup measured for the call.
    usage: Option<flick_runtime::Usage>,
}

/// The answer for a caller whose own deadline passed first: for this
/// caller only. Nothing is recorded here: the invocation goes on (or is
/// dropped from the queue) and records what it did when it ends.
fn caller_gave_up(call: &Call, function: &str) -> InvokeResponse {
    let waited = call.gave_up().unwrap_or_else(|| call.started.elapsed());
    InvokeResponse {
        activation_id: call.id.clone(),
        function: function.to_string(),
        status: ActivationStatus::Timeout,
        timing: Timing { wait_ms: 0.0, init_ms: 0.0, exec_ms: 0.0, total_ms: ms(waited), prewarmed: false },
        outcome: Outcome::CallerGaveUp { waited, abandoned: false },
    }
}

/// The span every log line of one call is under: `grep <activation id>`
/// over flick's log finds them all (the JSON format puts it in `span`).
pub(crate) fn call_span(inv: &Invocation) -> tracing::Span {
    tracing::info_span!(
        "call",
        activation_id = %inv.id,
        function = %inv.function,
        cause = inv.cause.as_str(),
        attempt = inv.attempt,
    )
}

/// One line per finished call: at debug when it succeeded (a busy host
/// would otherwise log every request), at info when it did not.
pub(crate) fn log_finished(a: &Activation) {
    macro_rules! finished {
        ($level:expr) => {
            tracing::event!(
                $level,
                status = a.status.as_str(),
                http_status = a.http_status,
                duration_ms = a.duration_ms,
                init_ms = a.init_ms,
                cold = a.cold,
                trace_id = a.trace_id.as_deref().unwrap_or(""),
                "call finished"
            )
        };
    }
    if a.status == ActivationStatus::Success {
        finished!(tracing::Level::DEBUG);
    } else {
        finished!(tracing::Level::INFO);
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
