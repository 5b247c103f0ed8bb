//! Async calls: accepting them into the durable queue ([`Platform::submit`])
//! and running them from it (the dispatcher), with retries, dead letters,
//! idempotency keys and callbacks.
//!
//! # Flow of one queued call
//! lease → (a record with its id exists? then only finish: callback, ack or
//! dead) → run through the same invoke path as a sync call (same pools,
//! limits, deadlines) → on a retryable failure with attempts left: `nack`
//! with a backoff, no record (its usage is counted all the same) → otherwise the final record (carrying the
//! earlier attempts) is **stored**, then the callback is delivered and its
//! outcome noted on the record, then `ack` (success) or `dead` (failure).
//!
//! Record before ack: a crash after the record and before the ack leases
//! the item again, finds the record and only finishes. The one window in
//! which a call runs twice is a crash between the function's completion
//! and its record being committed (at-least-once; README, ARCHITECTURE.md).
//!
//! # Fairness
//! Async calls of a function use at most `async_share` of its
//! `max_instances` (times its `concurrency`, at least one call), so a
//! backlog never takes every instance from synchronous callers. The
//! dispatcher sleeps until the queue changes, a call finishes, or the next
//! retry falls due; it never polls an idle queue.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use flick_core::{
    Activation, ActivationId, ActivationStatus, AttemptOutcome, CallbackOutcome, Invocation, Manifest, now_ms,
};
use flick_queue::{AttemptError, EnqueueOptions, Enqueued, Item, ItemState};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::invoke::{Caller, InvokeResponse, Tries};
use crate::{Platform, PlatformError, Route};

/// Knobs of async calls (`[async]`-ish keys of config.toml; see the CLI's config).
#[derive(Clone, Debug)]
pub struct AsyncConfig {
    /// Share of a function's `max_instances` its async calls may use (at
    /// least one call at a time).
    pub async_share: f64,
    /// Calls that may wait per function when its manifest names no `max_queued`.
    pub max_queued: u64,
    /// Backoff between attempts: full jitter over `base * 2^(attempt-1)`, capped.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_window: Duration,
    /// One callback delivery try waits this long for an answer.
    pub callback_timeout: Duration,
    /// Callback delivery tries in all.
    pub callback_attempts: u32,
    /// On shutdown, running async calls get this long to finish.
    pub shutdown_grace: Duration,
}

/// How long a dispatcher retries the check for an earlier record of a
/// leased call while the store is unreachable, before leaving the call to
/// its lease.
const RECORD_CHECK_PATIENCE: Duration = Duration::from_secs(30);

impl Default for AsyncConfig {
    fn default() -> Self {
        Self {
            async_share: 0.5,
            max_queued: 100_000,
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(300),
            idempotency_window: Duration::from_secs(24 * 3600),
            callback_timeout: Duration::from_secs(10),
            callback_attempts: 3,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// The answer to a sync call with an `Idempotency-Key`.
#[derive(Debug)]
pub enum Idempotent {
    /// The call ran now.
    Ran(InvokeResponse),
    /// The key was used before: the first call's record.
    Replay(Box<Activation>),
}

/// An accepted async call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submitted {
    pub id: ActivationId,
    /// The idempotency key was seen in its window: this is the first call's id.
    pub existing: bool,
}

/// How long a throttled attempt (pool overloaded, host full) keeps trying
/// before it counts as a failed attempt.
const THROTTLE_BUDGET: Duration = Duration::from_secs(30);
/// Added to a lease beyond the function's timeout, throttling and callback.
const LEASE_MARGIN: Duration = Duration::from_secs(60);
/// The dispatcher looks at the queue at least this often when idle (a
/// safety net: it is woken by every enqueue, finish and due retry).
const IDLE_WAKE: Duration = Duration::from_secs(30);
/// How long after a look at the queue new work waits for more to gather
/// before the next look (see `run_dispatcher`).
const NEW_WORK_GATHER: Duration = Duration::from_millis(5);
/// While a function is at its async share, look again this often at latest
/// (a finishing call wakes the dispatcher sooner).
const BLOCKED_WAKE: Duration = Duration::from_secs(1);
/// Most of a failed attempt's answer kept with the queued item.
const ERROR_MESSAGE_BYTES: usize = 1024;

/// The dispatcher's shared state.
pub(crate) struct Dispatch {
    /// Async calls running per function.
    inflight: parking_lot::Mutex<HashMap<String, usize>>,
    /// A call finished (room for another).
    finished: Notify,
    stop: watch::Sender<bool>,
    /// Built on first use (callbacks are rare).
    http: OnceLock<reqwest::Client>,
    /// Sync calls with an idempotency key now running, by activation id.
    running_sync: parking_lot::Mutex<std::collections::HashSet<ActivationId>>,
}

impl Dispatch {
    pub fn new() -> Self {
        Self {
            inflight: parking_lot::Mutex::default(),
            finished: Notify::new(),
            stop: watch::Sender::new(false),
            http: OnceLock::new(),
            running_sync: parking_lot::Mutex::default(),
        }
    }
}

/// One running async call's place in its function's share.
struct Slot {
    platform: Arc<Platform>,
    function: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inflight = self.platform.dispatch.inflight.lock();
        if let Some(n) = inflight.get_mut(&self.function) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inflight.remove(&self.function);
            }
        }
        drop(inflight);
        self.platform.dispatch.finished.notify_one();
    }
}

/// Async calls a function may run at once.
pub(crate) fn async_limit(m: &Manifest, share: f64) -> usize {
    let instances = ((f64::from(m.max_instances) * share).floor() as usize).max(1);
    instances * m.concurrency.max(1) as usize
}

/// Whether an outcome is worth another attempt: function errors, timeouts,
/// running out of memory, platform errors and any 5xx answer. A 4xx (the
/// function, or flick, refused the request on purpose), 2xx and 3xx are
/// final.
pub fn retryable(status: ActivationStatus, http_status: u16) -> bool {
    if (400..500).contains(&http_status) {
        return false;
    }
    status != ActivationStatus::Success || http_status >= 500
}

/// Full-jitter exponential backoff before attempt `attempt + 1`: a random
/// time up to `base * 2^(attempt-1)`, capped, so retries of many calls
/// that failed together spread out.
fn backoff(config: &AsyncConfig, attempt: u32) -> Duration {
    let exp = config.retry_base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let cap = exp.min(config.retry_cap);
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return cap / 2;
    }
    let frac = (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
    cap.mul_f64(frac)
}

fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let end = (0..=max).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    format!("{}…", &text[..end])
}

fn attempt_outcome(e: &AttemptError) -> AttemptOutcome {
    AttemptOutcome {
        attempt: e.attempt,
        status: ActivationStatus::parse(&e.status).unwrap_or(ActivationStatus::PlatformError),
        http_status: 0,
        message: e.message.clone(),
        start_ms: e.start_ms,
        duration_ms: e.duration_ms,
    }
}

/// A call handed out more often than it has had attempts was delivered
/// before and never finished there (its node stopped mid-call, or its lease
/// ran out; a finished one would have left its record): shown among the
/// earlier tries, so that a call run again after a crash is visibly so.
fn lost_delivery(item: &Item) -> Option<AttemptOutcome> {
    let attempt = item.invocation.attempt.max(1);
    let lost = item.deliveries.saturating_sub(attempt);
    (lost > 0).then(|| AttemptOutcome {
        attempt,
        status: ActivationStatus::PlatformError,
        http_status: 0,
        message: format!(
            "delivered {} times for this attempt: an earlier delivery did not finish (its node stopped, or its lease \
             ran out); run again under the same id",
            item.deliveries
        ),
        start_ms: 0,
        duration_ms: 0.0,
    })
}

fn attempt_error(a: &Activation) -> AttemptError {
    AttemptError {
        attempt: a.attempt,
        status: a.status.as_str().to_string(),
        message: format!("HTTP {}: {}", a.http_status, cut(&a.response, ERROR_MESSAGE_BYTES)),
        start_ms: a.start_ms,
        duration_ms: a.duration_ms,
    }
}

impl Platform {
    /// Accepts an async call durably: once this returns `Ok`, the call
    /// survives a crash and will run (or end in the dead-letter list).
    /// `inv.id` is the activation id to answer with. With an idempotency
    /// key seen inside its window, nothing is stored and the first call's
    /// id comes back (`existing`). Errors: [`PlatformError::QueueFull`]
    /// (429), `StorageFull` (507), `Busy` (503).
    pub async fn submit(
        self: &Arc<Self>,
        route: Arc<Route>,
        caller: Caller,
        mut inv: Invocation,
        idempotency_key: Option<String>,
    ) -> Result<Submitted, PlatformError> {
        let m = &route.revision.manifest;
        if caller == Caller::Anonymous && !m.public {
            return Err(PlatformError::NotPublic(route.revision.function.clone()));
        }
        inv.function = route.revision.function.clone();
        if inv.accepted_ms == 0 {
            inv.accepted_ms = now_ms();
        }
        let opts = EnqueueOptions {
            max_attempts: m.retries + 1,
            idempotency: idempotency_key.map(|k| (k, self.config.asynchronous.idempotency_window)),
            max_queued: m.max_queued.unwrap_or(self.config.asynchronous.max_queued),
        };
        let (function, cause) = (inv.function.clone(), inv.cause);
        let trace_id = inv.trace.as_ref().map(|t| t.context.trace_id_hex()).unwrap_or_default();
        let submitted = match self.queue.enqueue(inv, opts).await? {
            Enqueued::New(id) => Submitted { id, existing: false },
            Enqueued::Existing(id) => Submitted { id, existing: true },
        };
        tracing::debug!(
            activation_id = %submitted.id, function, cause = cause.as_str(), existing = submitted.existing, trace_id,
            "async call accepted"
        );
        Ok(submitted)
    }

    /// Idempotency for a sync call: `None` if `key` is new for the
    /// function (it is now held by `id`), else the first call's id.
    pub async fn claim_idempotency(
        &self,
        route: &Route,
        key: &str,
        id: &ActivationId,
    ) -> Result<Option<ActivationId>, PlatformError> {
        let window = self.config.asynchronous.idempotency_window;
        Ok(self.queue.claim_idempotency(&route.revision.function, key, id, window).await?)
    }

    /// A sync call with an `Idempotency-Key`: runs it, unless the key was
    /// used inside its window, then the first call's outcome comes back
    /// ([`Idempotent::Replay`]); while that first call still runs,
    /// [`PlatformError::InProgress`] (409). A first call that never left a
    /// record (refused before it ran, or lost in a crash) is run now, under
    /// its id.
    pub async fn invoke_idempotent(
        self: &Arc<Self>,
        route: Arc<Route>,
        caller: Caller,
        mut inv: Invocation,
        key: &str,
    ) -> Result<Idempotent, PlatformError> {
        let window = self.config.asynchronous.idempotency_window;
        if let Some(first) = self.queue.claim_idempotency(&route.revision.function, key, &inv.id, window).await? {
            if self.dispatch.running_sync.lock().contains(&first) {
                return Err(PlatformError::InProgress(first));
            }
            match self.activation(first.as_str()).await {
                Ok(a) if a.status.is_final() => return Ok(Idempotent::Replay(Box::new(a))),
                Ok(_) => return Err(PlatformError::InProgress(first)),
                Err(PlatformError::ActivationNotFound(_)) => inv.id = first,
                Err(e) => return Err(e),
            }
        }
        if !self.dispatch.running_sync.lock().insert(inv.id.clone()) {
            return Err(PlatformError::InProgress(inv.id));
        }
        let id = inv.id.clone();
        let ran = self.invoke(route, caller, inv).await;
        self.dispatch.running_sync.lock().remove(&id);
        Ok(Idempotent::Ran(ran?))
    }

    /// What a queued item looks like as an activation (status `queued` or
    /// `running`, attempt n of m, the earlier attempts' errors).
    pub(crate) fn queued_activation(&self, item: &Item) -> Activation {
        let inv = &item.invocation;
        let route = self.route(&inv.function);
        let status = match item.state {
            ItemState::Ready => ActivationStatus::Queued,
            ItemState::Leased => ActivationStatus::Running,
            ItemState::Dead => {
                item.errors.last().map_or(ActivationStatus::PlatformError, |e| attempt_outcome(e).status)
            }
        };
        Activation {
            revision: route.as_ref().map_or(0, |r| r.revision.number),
            revision_id: route.as_ref().map_or(0, |r| r.revision.id),
            end_ms: 0,
            max_attempts: item.max_attempts,
            attempts: item.errors.iter().map(attempt_outcome).collect(),
            ..Activation::of(inv, status, item.enqueued_ms)
        }
    }

    /// Runs queued calls until [`Platform::stop_dispatch`], then lets the
    /// running ones finish (bounded by the shutdown grace).
    pub(crate) async fn run_dispatcher(self: Arc<Self>) {
        let mut stop = self.dispatch.stop.subscribe();
        let mut changes = self.queue.changes();
        let mut tasks = JoinSet::new();
        loop {
            if *stop.borrow_and_update() {
                break;
            }
            changes.borrow_and_update();
            let wait = match self.lease_round(&mut tasks).await {
                Ok(true) => BLOCKED_WAKE,
                Ok(false) => match self.queue.next_due_ms().await {
                    Ok(Some(due)) => {
                        Duration::from_millis((due - now_ms()).clamp(5, IDLE_WAKE.as_millis() as i64) as u64)
                    }
                    Ok(None) => IDLE_WAKE,
                    Err(e) => {
                        tracing::warn!(error = %e, "dispatcher: reading the queue failed; trying again");
                        BLOCKED_WAKE
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "dispatcher: leasing from the queue failed; trying again");
                    BLOCKED_WAKE
                }
            };
            let looked = tokio::time::Instant::now();
            let new_work = tokio::select! {
                _ = changes.changed() => true,
                _ = self.dispatch.finished.notified() => false,
                _ = tokio::time::sleep(wait) => false,
                _ = stop.changed() => false,
                Some(_) = tasks.join_next() => false,
            };
            // Every accepted call moves `changes`: under a burst of accepts
            // the enqueues of a few ms share one look at the queue, which
            // (JetStream: one request counting every function's backlog)
            // would otherwise be made once per accept.
            if new_work {
                tokio::select! {
                    _ = tokio::time::sleep_until(looked + NEW_WORK_GATHER) => {}
                    _ = stop.changed() => {}
                }
            }
        }
        let grace = self.config.asynchronous.shutdown_grace;
        let running = tasks.len();
        if running > 0 {
            tracing::info!(running, "waiting for async calls in flight");
        }
        let drained = tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            // Their leases are made ready again when the queue next opens.
            tracing::warn!(left = tasks.len(), "async calls still running after the grace period; they will run again");
            tasks.abort_all();
        }
    }

    /// Stops the dispatcher leasing (it finishes what it runs).
    pub(crate) fn stop_dispatch(&self) {
        let _ = self.dispatch.stop.send(true);
    }

    /// Leases what each function's share allows; `true` if some function
    /// had more due calls than room.
    async fn lease_round(self: &Arc<Self>, tasks: &mut JoinSet<()>) -> Result<bool, PlatformError> {
        let mut blocked = false;
        for (function, due) in self.queue.ready_functions().await? {
            let route = self.resolve(&function).await;
            let (limit, lease_for) = match &route {
                Some(r) => {
                    let m = &r.revision.manifest;
                    let callback =
                        self.config.asynchronous.callback_timeout * self.config.asynchronous.callback_attempts;
                    (
                        async_limit(m, self.config.asynchronous.async_share),
                        m.timeout + THROTTLE_BUDGET + callback + LEASE_MARGIN,
                    )
                }
                // Not deployed (deleted meanwhile): its items are dropped one by one.
                None => (16, LEASE_MARGIN),
            };
            let free = {
                let inflight = self.dispatch.inflight.lock();
                limit.saturating_sub(inflight.get(&function).copied().unwrap_or(0))
            };
            if free == 0 {
                blocked = true;
                continue;
            }
            let n = free.min(due as usize);
            if (due as usize) > n {
                blocked = true;
            }
            for item in self.queue.lease(&function, n, lease_for).await? {
                *self.dispatch.inflight.lock().entry(function.clone()).or_default() += 1;
                let slot = Slot { platform: self.clone(), function: function.clone() };
                let span = crate::invoke::call_span(&item.invocation);
                tasks.spawn(self.clone().deliver(item, slot).instrument(span));
            }
        }
        Ok(blocked)
    }

    /// Runs one leased item to its end (see the module docs).
    async fn deliver(self: Arc<Self>, item: Item, slot: Slot) {
        let id = item.id().clone();
        let function = item.invocation.function.clone();
        // Ran before a crash, up to its record: only finish it. A store
        // that is down for a moment (a restart) is waited for, a while.
        let mut pause = Duration::from_millis(100);
        let checking_since = tokio::time::Instant::now();
        loop {
            match self.store.activation(&id).await {
                Ok(Some(record)) => {
                    drop(slot);
                    return self.finish_queued(&item, record, None).await;
                }
                Ok(None) => break,
                Err(e) if e.is_transient() && checking_since.elapsed() < RECORD_CHECK_PATIENCE => {
                    tracing::debug!(activation = %id, function, error = %e, "checking for an earlier record; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    // Left leased: handed out again when the lease runs out.
                    tracing::warn!(activation = %id, function, error = %e, "could not check for an earlier record; the call waits for its lease to run out");
                    return;
                }
            }
        }
        let Some(route) = self.resolve(&function).await else {
            tracing::warn!(activation = %id, function, "queued call of a function that no longer exists: dropped");
            self.settle(self.queue.ack(&id).await, &id, "ack");
            return;
        };
        if route.revision.manifest.runtime == flick_core::RuntimeKind::Sequence {
            return self.deliver_sequence(route, item, slot).await;
        }
        let mut earlier: Vec<AttemptOutcome> = item.errors.iter().map(attempt_outcome).collect();
        earlier.extend(lost_delivery(&item));
        let tries = Tries { max: item.max_attempts, earlier };
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(50);
        let result = loop {
            match self.run_attempt(route.clone(), Caller::Admin, item.invocation.clone(), tries.clone()).await {
                // Throttled: not the call's fault, so no attempt is spent
                // (up to a bound); the slot is held meanwhile.
                Err(PlatformError::Overloaded { .. } | PlatformError::HostFull { .. })
                    if started.elapsed() + pause < THROTTLE_BUDGET =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                other => break other,
            }
        };
        let (done, mut activation) = match result {
            Ok((done, activation)) => (Some(done), activation),
            Err(PlatformError::FunctionNotFound(_)) => {
                tracing::warn!(activation = %id, function, "function deleted while its call was queued: dropped");
                self.settle(self.queue.ack(&id).await, &id, "ack");
                return;
            }
            Err(e) => (None, self.failed_attempt(&route, &item, &tries, &e)),
        };
        drop(slot);
        let failed = retryable(activation.status, activation.http_status);
        let attempt = item.invocation.attempt;
        if failed && attempt < item.max_attempts {
            // The attempt ran (and is billed, as Lambda bills each retry)
            // but leaves no record: count its usage on its own.
            self.count_attempt_usage(&activation).await;
            let retry_at = now_ms() + backoff(&self.config.asynchronous, attempt).as_millis() as i64;
            tracing::info!(
                attempt,
                max_attempts = item.max_attempts,
                status = activation.status.as_str(),
                http_status = activation.http_status,
                retry_in_ms = retry_at - now_ms(),
                "attempt failed; retrying later"
            );
            self.settle(self.queue.nack(&id, retry_at, attempt_error(&activation)).await, &id, "nack");
            return;
        }
        // A CloudEvent's function may answer with an event: routed on
        // (events.rs) before the record is stored, with a note on it.
        if let Some(done) = &done
            && activation.status == ActivationStatus::Success
            && let Some(r) = done.outcome.response()
        {
            activation.logs.extend(self.route_reply(&item.invocation, r.status, &r.headers, &r.body).await);
        }
        if !self.record_stored(activation.clone()).await {
            tracing::warn!(activation = %id, function, "the final record of an async call was not stored");
        }
        self.finish_queued(&item, activation, done.as_ref()).await;
    }

    /// A queued call of a sequence: one attempt (its steps are recorded as
    /// they end and are not retried one by one); the parent's record, with
    /// a note on any reply event its answer carried (routed as for any
    /// function's, `events.rs`), decides ack or dead letter.
    async fn deliver_sequence(self: &Arc<Self>, route: Arc<Route>, item: Item, slot: Slot) {
        let id = item.id().clone();
        let (done, mut record) = self.run_sequence(route, item.invocation.clone(), Vec::new()).await;
        drop(slot);
        if record.status == ActivationStatus::Success
            && let Some(r) = done.outcome.response()
        {
            record.logs.extend(self.route_reply(&item.invocation, r.status, &r.headers, &r.body).await);
        }
        if !self.record_stored(record.clone()).await {
            tracing::warn!(activation = %id, "the record of a queued sequence was not stored");
        }
        self.finish_queued(&item, record, Some(&done)).await;
    }

    /// The last steps once a call's record is stored: callback, then ack
    /// (success) or dead letter (failure).
    async fn finish_queued(&self, item: &Item, record: Activation, done: Option<&InvokeResponse>) {
        let id = item.id();
        if let Some(url) = &item.invocation.callback_url
            && record.callback.is_none()
        {
            let outcome = self.callback(url, &record, done, &item.invocation).await;
            if let Err(e) = self.store.set_callback(id, &outcome).await {
                tracing::warn!(activation = %id, error = %e, "could not note the callback outcome on the record");
            }
        }
        if retryable(record.status, record.http_status) {
            self.settle(self.queue.dead(id, attempt_error(&record)).await, id, "dead");
        } else {
            self.settle(self.queue.ack(id).await, id, "ack");
        }
    }

    fn settle(&self, r: Result<bool, flick_queue::QueueError>, id: &ActivationId, what: &str) {
        match r {
            Ok(true) => {}
            // Removed meanwhile (its function was deleted): nothing to do.
            Ok(false) => tracing::debug!(activation = %id, what, "queued item was already gone"),
            Err(e) => {
                tracing::warn!(activation = %id, what, error = %e, "queue update failed; the item runs again after its lease")
            }
        }
    }

    /// A record for an attempt flick could not run at all.
    fn failed_attempt(&self, route: &Route, item: &Item, tries: &Tries, e: &PlatformError) -> Activation {
        let inv = &item.invocation;
        Activation {
            function: route.revision.function.clone(),
            revision: route.revision.number,
            revision_id: route.revision.id,
            http_status: 503,
            response: serde_json::json!({ "errorType": "Platform.Unavailable", "errorMessage": e.to_string() })
                .to_string(),
            max_attempts: item.max_attempts,
            attempts: tries.earlier.clone(),
            ..Activation::of(inv, ActivationStatus::PlatformError, now_ms())
        }
    }

    /// POSTs the outcome to the caller's `X-Callback-Url`, a bounded number
    /// of tries with backoff, never following redirects. As OpenFaaS's queue
    /// worker does: the function's body and headers, with `X-Call-Id` (the
    /// call's, when it had one), `X-Function-Status`, `X-Function-Name` and
    /// `X-Duration-Seconds`; flick's own `X-Flick-*` on top.
    async fn callback(
        &self,
        url: &str,
        record: &Activation,
        done: Option<&InvokeResponse>,
        inv: &Invocation,
    ) -> CallbackOutcome {
        let cfg = &self.config.asynchronous;
        let http = self.dispatch.http.get_or_init(|| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(cfg.callback_timeout)
                .build()
                .unwrap_or_else(|_| reqwest::Client::new())
        });
        let (http_status, headers, body): (u16, Vec<(String, String)>, Vec<u8>) = match done {
            Some(d) => {
                let r = d.native_response();
                (r.status, r.headers, r.body.to_vec())
            }
            None => (record.http_status, vec![], record.response.clone().into_bytes()),
        };
        let mut outcome = CallbackOutcome {
            url: url.to_string(),
            delivered: false,
            attempts: 0,
            http_status: None,
            error: None,
            end_ms: 0,
        };
        let mut pause = Duration::from_millis(500);
        for attempt in 1..=cfg.callback_attempts.max(1) {
            outcome.attempts = attempt;
            let mut rb = http.post(url);
            for (name, value) in headers.iter().filter(|(n, _)| passes_to_callback(n)) {
                rb = rb.header(name.as_str(), value.as_str());
            }
            if let Some((_, id)) = inv.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("x-call-id")) {
                rb = rb.header("x-call-id", id.as_str());
            }
            // The trace goes on: the receiver's span is a child of the call's.
            if let Some(tp) = &record.traceparent {
                rb = rb.header("traceparent", tp.as_str());
                if let Some(state) = inv.trace.as_ref().and_then(|t| t.tracestate.as_deref()) {
                    rb = rb.header("tracestate", state);
                }
            }
            let rb = rb
                .header("x-flick-activation-id", record.id.as_str())
                .header("x-flick-status", record.status.as_str())
                .header("x-function-status", http_status.to_string())
                .header("x-function-name", record.function.as_str())
                .header("x-duration-seconds", format!("{:.6}", record.duration_ms / 1000.0))
                .body(body.clone());
            match rb.send().await {
                Ok(resp) if resp.status().is_success() => {
                    outcome.http_status = Some(resp.status().as_u16());
                    outcome.delivered = true;
                    outcome.error = None;
                    break;
                }
                Ok(resp) => {
                    outcome.http_status = Some(resp.status().as_u16());
                    outcome.error = Some(format!("the receiver answered HTTP {}", resp.status().as_u16()));
                }
                Err(e) => {
                    outcome.http_status = None;
                    outcome.error = Some(if e.is_timeout() {
                        format!("no answer within {}s", cfg.callback_timeout.as_secs_f64())
                    } else {
                        // Without the URL (it is in `url`) and the source chain's noise.
                        format!("could not deliver: {}", e.without_url())
                    });
                }
            }
            if attempt < cfg.callback_attempts {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
        outcome.end_ms = now_ms();
        if outcome.delivered {
            tracing::debug!(attempts = outcome.attempts, http_status = ?outcome.http_status, "callback delivered");
        } else {
            tracing::warn!(activation = %record.id, attempts = outcome.attempts, error = ?outcome.error, "callback not delivered");
        }
        outcome
    }

    /// Dead letters, oldest first (of one function, or all).
    pub async fn dead_letters(&self, function: Option<&str>, limit: u32) -> Result<Vec<Item>, PlatformError> {
        Ok(self.queue.items(function, Some(ItemState::Dead), limit).await?)
    }

    pub async fn dead_letter(&self, id: &str) -> Result<Item, PlatformError> {
        let parsed = ActivationId::parse(id).ok_or_else(|| PlatformError::DeadLetterNotFound(id.into()))?;
        match self.queue.item(&parsed).await? {
            Some(item) if item.state == ItemState::Dead => Ok(item),
            _ => Err(PlatformError::DeadLetterNotFound(id.into())),
        }
    }

    /// Sends a dead letter back to its function (attempt 1, cause
    /// `redrive`). Its old record goes first: the call records again
    /// under its id.
    pub async fn redrive(&self, id: &str) -> Result<(), PlatformError> {
        let item = self.dead_letter(id).await?;
        self.records.flush(crate::records::READ_WAIT).await;
        self.store.delete_activation(item.id()).await?;
        if !self.queue.redrive(item.id()).await? {
            return Err(PlatformError::DeadLetterNotFound(id.into()));
        }
        Ok(())
    }

    /// Redrives every dead letter (of one function, or all); returns how many.
    pub async fn redrive_all(&self, function: Option<&str>) -> Result<u64, PlatformError> {
        // One by one (each record goes before its item is redriven), and
        // each at most once: a redriven call that fails at once is dead
        // again before this loop ends.
        let mut done = std::collections::HashSet::new();
        loop {
            let items = self.queue.items(function, Some(ItemState::Dead), 1000).await?;
            let fresh: Vec<Item> = items.into_iter().filter(|i| !done.contains(i.id())).collect();
            if fresh.is_empty() {
                return Ok(done.len() as u64);
            }
            for item in fresh {
                self.store.delete_activation(item.id()).await?;
                if self.queue.redrive(item.id()).await? {
                    done.insert(item.id().clone());
                }
            }
        }
    }

    /// Deletes dead letters (of one function, or all); returns how many.
    pub async fn purge_dead_letters(&self, function: Option<&str>) -> Result<u64, PlatformError> {
        Ok(self.queue.purge_dead(function).await?)
    }

    /// A function's queued calls by state.
    pub async fn queue_depth(&self, function: &str) -> Result<flick_queue::Depth, PlatformError> {
        Ok(self.queue.depth(function).await?)
    }
}

/// A function's response header that its callback carries too: not the
/// framing or connection headers (the callback is a request of its own),
/// nor the names the callback sets itself.
fn passes_to_callback(name: &str) -> bool {
    const NOT: [&str; 14] = [
        "connection",
        "content-length",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "x-call-id",
        "x-function-status",
        "x-function-name",
        "x-duration-seconds",
        // The callback carries the call's own trace context.
        "traceparent",
        "tracestate",
    ];
    let lower = name.to_ascii_lowercase();
    !NOT.contains(&lower.as_str()) && !lower.starts_with("proxy-") && !lower.starts_with("x-flick-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_rule() {
        use ActivationStatus as S;
        assert!(retryable(S::Error, 500));
        assert!(retryable(S::Timeout, 504));
        assert!(retryable(S::OutOfMemory, 500));
        assert!(retryable(S::PlatformError, 502));
        assert!(retryable(S::Success, 503), "a 5xx the function returned");
        assert!(!retryable(S::Success, 200));
        assert!(!retryable(S::Success, 302));
        assert!(!retryable(S::Success, 404), "a 4xx on purpose");
        assert!(!retryable(S::Error, 400), "a request the runtime refused");
    }

    #[test]
    fn backoff_is_jittered_under_its_cap() {
        let c = AsyncConfig {
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_secs(1),
            ..Default::default()
        };
        for attempt in 1..=12 {
            let cap = Duration::from_millis(100 * (1 << (attempt - 1))).min(Duration::from_secs(1));
            for _ in 0..50 {
                assert!(backoff(&c, attempt) <= cap);
            }
        }
        let spread: std::collections::HashSet<Duration> = (0..50).map(|_| backoff(&c, 5)).collect();
        assert!(spread.len() > 10, "jitter spreads retries");
    }

    #[test]
    fn share_leaves_sync_callers_room_but_never_zero() {
        let mut m = Manifest::parse("name = \"f\"\nruntime = \"exec\"\nhandler = \"run\"\n").unwrap();
        m.max_instances = 10;
        assert_eq!(async_limit(&m, 0.5), 5);
        m.max_instances = 1;
        assert_eq!(async_limit(&m, 0.5), 1);
        m.concurrency = 4;
        m.max_instances = 4;
        assert_eq!(async_limit(&m, 0.25), 4);
    }
}
