//! The durable queue of accepted async invocations: one trait, [`Queue`],
//! its embedded implementation, [`SqliteQueue`] (its own SQLite file,
//! `queue.db` in the data directory), and [`JetStreamQueue`], a NATS
//! JetStream work queue that several flick nodes share.
//!
//! An item is a stored [`Invocation`] with its delivery state. Whoever
//! accepts an async call (the API's `X-Flick-Async`, a trigger) enqueues it
//! and answers only after `enqueue` returned `Ok`: from then on the item
//! survives a crash of flick at any moment. The dispatcher leases due items,
//! runs them and acks, nacks (retry later) or buries (dead letter) each.
//! Delivery is at-least-once: a lease held when flick died, or one that
//! expired because its dispatcher hung, is handed out again.
//!
//! This crate knows nothing of HTTP, pools or records; it is a seam that a
//! NATS JetStream work queue can replace without touching its callers.
//!
//! # Layout
//! - `lib.rs`: the trait and the types it speaks.
//! - `error.rs`: [`QueueError`].
//! - `sqlite.rs`: [`SqliteQueue`]: opening, schema, recovery, reads.
//! - `writer.rs`: the writer thread: every write, group-committed.
//! - `jetstream.rs`: [`JetStreamQueue`]: streams, consumers, leases held in
//!   memory, what is exact across nodes and what is not.
//! - `conformance.rs`: the trait's contract as checks any implementation runs.

use std::time::Duration;

use async_trait::async_trait;
use flick_core::{ActivationId, Invocation};
use serde::{Deserialize, Serialize};

pub mod conformance;
mod error;
mod jetstream;
mod sqlite;
mod writer;

pub use error::QueueError;
pub use jetstream::{JetStreamConfig, JetStreamQueue};
pub use sqlite::{QueueConfig, SqliteQueue, WriterStats};

/// How an invocation is enqueued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnqueueOptions {
    /// Attempts before the item goes to the dead-letter list (at least 1).
    pub max_attempts: u32,
    /// `(key, window)`: an `Idempotency-Key` and how long it is remembered.
    /// A second enqueue with the same key for the same function inside the
    /// window stores nothing and returns [`Enqueued::Existing`].
    pub idempotency: Option<(String, Duration)>,
    /// The function's backlog bound (`max_queued`): the enqueue is refused
    /// with [`QueueError::Full`] when the function already has this many
    /// ready or leased items. Dead letters do not count.
    pub max_queued: u64,
}

impl Default for EnqueueOptions {
    /// 3 attempts, no idempotency key, no backlog bound (callers set one).
    fn default() -> Self {
        Self { max_attempts: 3, idempotency: None, max_queued: u64::MAX }
    }
}

/// The outcome of an accepted enqueue.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Enqueued {
    /// Stored (durably) under this id.
    New(ActivationId),
    /// The idempotency key was seen inside its window: nothing was stored,
    /// and this is the id of the first invocation that used it.
    Existing(ActivationId),
}

impl Enqueued {
    pub fn id(&self) -> &ActivationId {
        match self {
            Self::New(id) | Self::Existing(id) => id,
        }
    }

    pub fn is_new(&self) -> bool {
        matches!(self, Self::New(_))
    }
}

/// Where an item is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemState {
    /// Waiting to run (perhaps not before a retry time).
    Ready,
    /// Handed to a dispatcher until its lease runs out.
    Leased,
    /// Out of attempts: kept in the dead-letter list until redriven or purged.
    Dead,
}

impl ItemState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Leased => "leased",
            Self::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Ready, Self::Leased, Self::Dead].into_iter().find(|c| c.as_str() == s)
    }

    pub(crate) fn code(self) -> i64 {
        match self {
            Self::Ready => 0,
            Self::Leased => 1,
            Self::Dead => 2,
        }
    }

    pub(crate) fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(Self::Ready),
            1 => Some(Self::Leased),
            2 => Some(Self::Dead),
            _ => None,
        }
    }
}

/// Why one attempt of an item failed (kept with the item; the latest
/// [`MAX_ERRORS`] of them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AttemptError {
    /// The attempt that failed (1-based). `0` on `nack`/`dead` means "the
    /// item's current attempt", filled in by the queue.
    #[serde(default)]
    pub attempt: u32,
    /// The outcome's kind as the activation record names it (`error`,
    /// `timeout`, …).
    #[serde(default)]
    pub status: String,
    /// What went wrong; longer than [`MAX_ERROR_BYTES`] is cut.
    pub message: String,
    #[serde(default)]
    pub start_ms: i64,
    #[serde(default)]
    pub duration_ms: f64,
}

impl AttemptError {
    /// As kept with an item: `attempt` filled in when it is `0`, the
    /// message cut to [`MAX_ERROR_BYTES`] at a character boundary.
    pub(crate) fn kept(mut self, attempt: u32) -> Self {
        if self.attempt == 0 {
            self.attempt = attempt;
        }
        if self.message.len() > MAX_ERROR_BYTES {
            let mut cut = MAX_ERROR_BYTES;
            while !self.message.is_char_boundary(cut) {
                cut -= 1;
            }
            self.message.truncate(cut);
        }
        self
    }
}

/// Idempotency keys are stored as given: bounded, so a caller cannot make
/// each one cost more than a small row.
pub(crate) fn check_key(key: &str) -> Result<(), QueueError> {
    if key.is_empty() {
        return Err(QueueError::Invalid { what: "idempotency key", detail: "it is empty".into() });
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(QueueError::Invalid {
            what: "idempotency key",
            detail: format!("it is {} bytes long, more than {MAX_KEY_BYTES}", key.len()),
        });
    }
    Ok(())
}

/// Errors kept per item (the oldest go first).
pub const MAX_ERRORS: usize = 32;
/// An error message is cut to this many bytes (at a character boundary).
pub const MAX_ERROR_BYTES: usize = 4096;

/// A queued invocation with its delivery state.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// The stored call; its `attempt` is the attempt the next (or current)
    /// delivery is, and its `cause` is `redrive` after a redrive.
    pub invocation: Invocation,
    pub max_attempts: u32,
    pub state: ItemState,
    /// Not to run before this time (ms since the epoch): the accept time,
    /// or a nack's retry time.
    pub not_before_ms: i64,
    /// `Leased` items: when the lease runs out and the item is handed out
    /// again.
    pub lease_until_ms: Option<i64>,
    /// `Dead` items: when the item went to the dead-letter list.
    pub dead_ms: Option<i64>,
    /// How many times it was leased (more than `attempt` after a crash or
    /// an expired lease: the at-least-once redeliveries).
    pub deliveries: u32,
    /// The failed attempts, oldest first (at most [`MAX_ERRORS`]).
    pub errors: Vec<AttemptError>,
    pub enqueued_ms: i64,
}

impl Item {
    pub fn id(&self) -> &ActivationId {
        &self.invocation.id
    }
}

/// A function's items by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Depth {
    pub ready: u64,
    pub leased: u64,
    pub dead: u64,
}

impl Depth {
    /// Items counted against `max_queued`.
    pub fn queued(&self) -> u64 {
        self.ready + self.leased
    }
}

/// Idempotency keys longer than this are refused ([`QueueError::Invalid`]).
pub const MAX_KEY_BYTES: usize = 1024;

/// Counts returned by [`Queue::ready_functions`] are capped at this.
pub const READY_COUNT_CAP: u64 = 1024;

/// The durable queue. Every method that changes something returns `Ok`
/// only once the change is committed and synced to disk; an `Err` means
/// it did not happen (nothing half-done).
///
/// Ordering: items of a function are leased in order of the time they
/// became due (accept or retry time), then of enqueue. There is no order
/// across functions.
///
/// Crashes: a lease held when flick dies is not lost: opening the queue
/// makes every leased item ready again (its attempt count kept, its
/// `deliveries` showing the redelivery), and a lease that simply runs out
/// (a hung dispatcher) is handed out again by the next `lease`. So an item
/// runs at least once, and twice only if flick died (or its lease ran out)
/// between the function finishing and the `ack`.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Stores `inv` (its id made by the caller) for its function. Refused
    /// with [`QueueError::Full`] beyond `opts.max_queued`, with
    /// [`QueueError::DiskFull`] when there is no room (nothing stored),
    /// [`QueueError::Duplicate`] if the id is already queued.
    async fn enqueue(&self, inv: Invocation, opts: EnqueueOptions) -> Result<Enqueued, QueueError>;

    /// Up to `n` due items of `function` (ready and not before now, or
    /// leased with their lease run out), oldest due first, each leased until
    /// now + `lease_for`. An item whose stored invocation cannot be read is
    /// moved to the dead-letter list instead (with the reason).
    async fn lease(&self, function: &str, n: usize, lease_for: Duration) -> Result<Vec<Item>, QueueError>;

    /// Functions with due items and how many (capped at [`READY_COUNT_CAP`]).
    /// Read from the last commit: may lag a concurrent write. (JetStream:
    /// an estimate between its counts, which a lease may find short.)
    async fn ready_functions(&self) -> Result<Vec<(String, u64)>, QueueError>;

    /// When the next item becomes due (its retry time, or when a lease runs
    /// out); `None` when nothing is ready or leased. A dispatcher sleeps
    /// until then or until [`Queue::changes`] moves.
    async fn next_due_ms(&self) -> Result<Option<i64>, QueueError>;

    /// Bumped after every commit that may have made items due (enqueue,
    /// nack, redrive). Cheap; never blocks.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Done: the item is deleted. `false` if there was no ready or leased
    /// item with that id (already acked, removed, or dead).
    async fn ack(&self, id: &ActivationId) -> Result<bool, QueueError>;

    /// Failed, to be retried: the attempt count goes up by one, `error` is
    /// kept, and the item is ready again from `retry_at_ms`. `false` if
    /// there was no ready or leased item with that id.
    async fn nack(&self, id: &ActivationId, retry_at_ms: i64, error: AttemptError) -> Result<bool, QueueError>;

    /// Failed for the last time: the item goes to the dead-letter list with
    /// `error`. The list keeps at most [`QueueConfig::max_dead_per_function`]
    /// items per function; beyond it the oldest are dropped (with a warning).
    /// `false` if there was no ready or leased item with that id.
    async fn dead(&self, id: &ActivationId, error: AttemptError) -> Result<bool, QueueError>;

    /// A dead letter back to ready: attempt 1, cause `redrive`, errors kept.
    /// `false` if there is no dead item with that id. Not bounded by
    /// `max_queued` (an operator asked for it).
    async fn redrive(&self, id: &ActivationId) -> Result<bool, QueueError>;

    /// Every dead letter (of `function`, or of all functions) back to ready;
    /// returns how many.
    async fn redrive_all(&self, function: Option<&str>) -> Result<u64, QueueError>;

    /// Deletes dead letters (of `function`, or all); returns how many.
    async fn purge_dead(&self, function: Option<&str>) -> Result<u64, QueueError>;

    async fn item(&self, id: &ActivationId) -> Result<Option<Item>, QueueError>;

    /// Items oldest first (by enqueue), optionally of one function and one
    /// state; `limit` is clamped to 1..=1000.
    async fn items(
        &self,
        function: Option<&str>,
        state: Option<ItemState>,
        limit: u32,
    ) -> Result<Vec<Item>, QueueError>;

    /// A function's items by state (kept in memory: no scan).
    async fn depth(&self, function: &str) -> Result<Depth, QueueError>;

    /// The function was deleted: its items (any state) and idempotency keys
    /// go. Returns how many items.
    async fn remove_function(&self, function: &str) -> Result<u64, QueueError>;

    /// Idempotency for sync calls: records `key` for `function` as used by
    /// `id` for `window` and returns `None`; or, if the key is already held
    /// inside its window, stores nothing and returns the first id.
    async fn claim_idempotency(
        &self,
        function: &str,
        key: &str,
        id: &ActivationId,
        window: Duration,
    ) -> Result<Option<ActivationId>, QueueError>;

    /// Forgets idempotency keys whose window has passed; returns how many.
    /// (The queue also does this by itself about once a minute.)
    async fn prune(&self) -> Result<u64, QueueError>;
}
