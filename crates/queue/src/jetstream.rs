//! [`JetStreamQueue`]: the [`Queue`] on a NATS JetStream server (2.9 or
//! newer) that several flick nodes share, so any node can accept an async
//! call and any node can run it.
//!
//! # Streams, subjects, consumers
//! With `prefix` `flick` (see [`JetStreamConfig::prefix`]):
//! - `FLICK_QUEUE` (work-queue retention, file storage) holds ready and
//!   leased items on `flick.q.<function>.<id>`: one subject per item, so
//!   an item is found by id with one server-side subject lookup, and
//!   "insert if absent" is the publish header
//!   `Nats-Expected-Last-Subject-Sequence: 0` (a duplicate id is refused
//!   atomically, whatever the duplicate window). The cost: the server keeps
//!   a per-subject record in memory per queued item (not measured here).
//! - One durable pull consumer per function on that stream, named after the
//!   function (filter `flick.q.<function>.*`, explicit ack, `ack_wait`),
//!   shared by every node: JetStream hands each message to one node at a
//!   time. It is created on the first enqueue or lease of the function.
//! - `FLICK_DEAD` (limits retention, one message per subject) holds dead
//!   letters on `flick.dead.<function>.<id>`, with one never-read durable
//!   consumer per function whose `num_pending` is its dead-letter count.
//! - `FLICK_IDEM` (limits retention, one message per subject) holds
//!   idempotency keys on `flick.idem.<function>.<sha256(key)>`; the value
//!   says which id used the key and until when. Claims are compare-and-set
//!   on the subject's last sequence, so two nodes cannot both win a key.
//! - `flick.wake` (core NATS, not stored): the sender's random id, at most
//!   every 2 ms while a node enqueues, nacks, redrives or releases leases,
//!   so every other node's [`Queue::changes`] moves when any node adds work
//!   (a node's own changes move its watch directly; it skips its wakes).
//!
//! A message is the item's metadata as JSON (invocation without its body,
//! attempts, errors, times), a newline, then the raw body. Messages are
//! never changed: a nack publishes the next attempt on the same subject
//! (compare-and-set on the old message's sequence) and then removes the old
//! one; a dead letter is published to the dead stream and then removed.
//!
//! # Leases and delivery
//! `lease` fetches from the function's consumer without waiting. The node
//! keeps each leased message in memory; a background task sends
//! "in progress" for it every `ack_wait / 3`, so a long invocation is not
//! handed to another node while this one is alive, until the local lease
//! (`lease_for`) runs out: then the message is nak'ed and handed out again.
//! A node that dies stops sending progress, and JetStream hands its
//! messages to another node `ack_wait` later, `deliveries` showing it. So
//! delivery is at-least-once, as with SQLite: an invocation runs twice if
//! its node died between running it and acking, or if a nack or dead was
//! cut between its publish and the removal of the old message.
//!
//! A retry not yet due (nack's `retry_at`) is fetched by whichever node
//! leases next and nak'ed with the delay left (2.9 has no scheduled
//! messages); JetStream redelivers it when due.
//!
//! # Exact and approximate
//! Exact on every node: enqueue, duplicate refusal, ack/nack/dead/redrive,
//! idempotency keys, dead-letter counts and the total of a function's
//! ready plus leased items (the consumer's pending plus ack-pending).
//! `max_queued` is exact among the enqueues of one node (its own enqueues
//! are counted as they go; see `Backlog`); nodes enqueueing to one function
//! can overshoot it by what the others accepted since this node's last
//! count (every 100 ms, or 20 times what the last count took).
//!
//! `ready_functions` is an estimate between counts (see `Census`): a
//! function may be listed with more than a lease then finds, and a retry
//! that comes due on a function whose last fetch came back short is listed
//! at the next count.
//!
//! What a node cannot see is another node's memory: which of the messages
//! JetStream counts as "ack pending" are leases, retries waiting for their
//! time (nak'ed with a delay) or expired leases waiting to be redelivered.
//! This node knows its own exactly. So `depth`'s split between ready and
//! leased, `ready_functions`' due counts and `items`' state of an item
//! another node fetched may count a waiting retry or released lease of
//! another node as leased (never the other way: an item not yet due is
//! always reported ready). With one node all of it is exact. `next_due_ms`
//! polls once a second while other nodes hold items this node cannot time.
//! `deliveries` may count one extra when a retry was fetched before its
//! time by another node.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::{
    self, AckKind,
    consumer::{self, AckPolicy, PullConsumer},
    message::{Acker, PublishMessage, StreamMessage},
    stream::{self, RetentionPolicy, StorageType, Stream},
};
use async_trait::async_trait;
use bytes::Bytes;
use flick_core::{ActivationId, Cause, Invocation, now_ms};
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{
    AttemptError, Depth, EnqueueOptions, Enqueued, Item, ItemState, MAX_ERRORS, Queue, QueueError, READY_COUNT_CAP,
};

/// How often held leases are checked (expiry, progress).
const TICK: Duration = Duration::from_millis(100);
/// Expired idempotency keys are pruned this often (by every node).
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// `next_due_ms` when other nodes hold items this node cannot time.
const REMOTE_POLL_MS: i64 = 1000;
/// Longest a fetch may take, end to end (see `lease`).
const FETCH_DEADLINE: Duration = Duration::from_secs(5);
/// The most often a node tells the others it added work: enqueues within
/// this share one wake message.
const WAKE_COALESCE: Duration = Duration::from_millis(2);
/// How long a NATS request may take before it counts as unavailable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The JetStream queue's knobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JetStreamConfig {
    /// Names the streams (`<PREFIX>_QUEUE`, `_DEAD`, `_IDEM`) and subjects
    /// (`<prefix>.q.…`): nodes of one cluster share it; tests use their own.
    /// Letters, digits, `_` and `-`.
    pub prefix: String,
    /// How long JetStream waits for a node that holds a message and stopped
    /// answering (it died) before handing the message to another node.
    pub ack_wait: Duration,
    /// Stream replicas (1 for a single server; 3 on a JetStream cluster).
    pub replicas: usize,
    /// Dead letters kept per function; the oldest beyond it are dropped.
    pub max_dead_per_function: u64,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self { prefix: "flick".into(), ack_wait: Duration::from_secs(30), replicas: 1, max_dead_per_function: 10_000 }
    }
}

/// The queue on NATS JetStream. Cheap to clone; dropping the last clone
/// stops its background tasks (its held messages go back to JetStream
/// after `ack_wait`, as if the node had died).
#[derive(Clone)]
pub struct JetStreamQueue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for JetStreamQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamQueue")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.config.prefix)
            .finish()
    }
}

struct Inner {
    url: String,
    config: JetStreamConfig,
    /// One context for every publish (each context runs a task of its own).
    js: jetstream::Context,
    queue: Stream,
    dead: Stream,
    idem: Stream,
    /// `queue` and `dead` on a second connection, for consumer counts.
    queue_counts: Stream,
    dead_counts: Stream,
    consumers: Mutex<HashMap<String, PullConsumer>>,
    dead_counters: Mutex<std::collections::HashSet<String>>,
    /// Per-function gates of enqueues with an idempotency key (check the
    /// key, then publish): held across awaits.
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Per-function backlog estimates for `max_queued` (see `Backlog`).
    backlogs: Mutex<HashMap<String, Backlog>>,
    local: Mutex<Local>,
    changes: watch::Sender<u64>,
    /// Wakes the task that tells other nodes about new work, and the
    /// functions to name in its next message (`None`: all may have).
    wake_others: Arc<tokio::sync::Notify>,
    wake_names: Arc<Mutex<Option<std::collections::BTreeSet<String>>>>,
    /// Sent in this node's wake messages, so that it skips its own.
    wake_id: Bytes,
    census: Mutex<Census>,
    /// How long the server took to answer the last count (see `count_every`).
    count_took: Mutex<Duration>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self.tasks.get_mut().drain(..) {
            task.abort();
        }
    }
}

/// A function's backlog as this node counts it for `max_queued`, without
/// a round trip per enqueue: `known` is the consumer's count (ready +
/// leased) at the last refresh, `added` the publishes this node finished
/// since that refresh was asked for, `in_flight` those not yet answered.
/// Their sum never undercounts this node's own enqueues, so `max_queued`
/// is exact on one node; enqueues by other nodes since the refresh are
/// missed, so across nodes it can be overshot by what they accept within
/// `BACKLOG_REFRESH`. Acks, nacks and removals done here mark the estimate
/// `freed` (it may overcount): an enqueue it would refuse asks JetStream
/// first, so a slot freed here is seen by the next enqueue here. (Asking
/// after every ack cost a round trip per enqueue while the dispatcher
/// worked, and JetStream's count of a filtered consumer grows with the
/// stream.)
#[derive(Default)]
struct Backlog {
    known: u64,
    added: u64,
    in_flight: u64,
    refreshed: Option<std::time::Instant>,
    freed: bool,
}

/// How old the consumers' counts may be before the dispatcher's next look
/// asks the server again. The server counts a filtered consumer's backlog
/// by walking the stream's messages, and the asking connection waits
/// meanwhile: asked at every look (every accept wakes the dispatcher), it
/// cut acceptance from ~11,000/s to ~4,000/s once 100,000 calls waited.
const CENSUS_EVERY: Duration = Duration::from_millis(100);

/// Every function's consumer counts as last read, and what this node has
/// learned since: which functions got work (here, or named in another
/// node's wake) and which came back short from a fetch (nothing more is
/// ready there). Between reads the dispatcher looks at these alone.
#[derive(Default)]
struct Census {
    taken: Option<std::time::Instant>,
    infos: Vec<consumer::Info>,
    /// Function → the number of its latest mark, and how many items
    /// were added (a wake from another node counts one).
    added: HashMap<String, (u64, u64)>,
    drained: std::collections::HashSet<String>,
    marks: u64,
}

impl Census {
    /// Work was added to `function` (`None`: to any, read again).
    fn added(&mut self, function: Option<&str>) {
        match function {
            Some(f) => {
                self.marks += 1;
                let entry = self.added.entry(f.to_owned()).or_default();
                *entry = (self.marks, entry.1 + 1);
            }
            None => self.taken = None,
        }
    }

    /// A fetch of `function` asked when the marks stood at `mark` came
    /// back short: work marked since may not have been in it.
    fn drained(&mut self, function: &str, mark: u64) {
        self.drained.insert(function.to_owned());
        if self.added.get(function).is_some_and(|(m, _)| *m <= mark) {
            self.added.remove(function);
        }
    }
}

/// What `census` gives: the counts, the functions with work added since
/// (and how many items), those drained since.
type CensusView = (Vec<consumer::Info>, Vec<(String, u64)>, std::collections::HashSet<String>);

/// How old a backlog estimate may be before an enqueue asks JetStream again.
const BACKLOG_REFRESH: Duration = Duration::from_millis(100);

/// What this node knows that JetStream does not say.
#[derive(Default)]
struct Local {
    held: HashMap<ActivationId, Held>,
    /// function → stream sequence → a message known not to be due yet.
    delayed: HashMap<String, BTreeMap<u64, Delay>>,
    /// function → stream sequence → when this node released it (its local
    /// lease ran out), until it is fetched again.
    released: HashMap<String, HashMap<u64, i64>>,
}

struct Held {
    function: String,
    seq: u64,
    acker: Arc<Acker>,
    item: Item,
    progress_ms: i64,
}

#[derive(Clone, Copy)]
struct Delay {
    due_ms: i64,
    /// Nak'ed with a delay by this node (JetStream counts it ack-pending);
    /// `false`: published by this node's nack, not yet fetched.
    fetched: bool,
}

/// The stored form of an item: everything but the body (and the state,
/// which is where the message is).
#[derive(Serialize, Deserialize)]
struct Meta {
    invocation: Invocation,
    max_attempts: u32,
    not_before_ms: i64,
    enqueued_ms: i64,
    #[serde(default)]
    deliveries: u32,
    #[serde(default)]
    errors: Vec<AttemptError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dead_ms: Option<i64>,
}

/// An idempotency key's value.
#[derive(Serialize, Deserialize)]
struct KeyHold {
    id: ActivationId,
    expires_ms: i64,
}

fn encode(item: &mut Item) -> Result<Bytes, QueueError> {
    let body = std::mem::take(&mut item.invocation.body);
    let meta = Meta {
        invocation: item.invocation.clone(),
        max_attempts: item.max_attempts,
        not_before_ms: item.not_before_ms,
        enqueued_ms: item.enqueued_ms,
        deliveries: item.deliveries,
        errors: std::mem::take(&mut item.errors),
        dead_ms: item.dead_ms,
    };
    let json = serde_json::to_vec(&meta);
    item.invocation.body = body;
    item.errors = meta.errors;
    let mut out = json.map_err(|e| QueueError::Invalid { what: "invocation", detail: e.to_string() })?;
    out.push(b'\n');
    out.extend_from_slice(&item.invocation.body);
    Ok(out.into())
}

fn decode(payload: &[u8], state: ItemState) -> Result<Item, QueueError> {
    let corrupt = |detail: String| QueueError::Corrupt { what: "queued message".into(), detail };
    let split = payload.iter().position(|&b| b == b'\n').ok_or_else(|| corrupt("no metadata line".into()))?;
    let meta: Meta = serde_json::from_slice(&payload[..split]).map_err(|e| corrupt(e.to_string()))?;
    let mut invocation = meta.invocation;
    invocation.body = payload[split + 1..].to_vec();
    Ok(Item {
        invocation,
        max_attempts: meta.max_attempts,
        state,
        not_before_ms: meta.not_before_ms,
        lease_until_ms: None,
        dead_ms: if state == ItemState::Dead { meta.dead_ms } else { None },
        deliveries: meta.deliveries,
        errors: meta.errors,
        enqueued_ms: meta.enqueued_ms,
    })
}

/// `(function, id)` of a subject `<prefix>.<kind>.<function>.<id>`.
fn split_subject(subject: &str) -> Option<(&str, &str)> {
    let (rest, id) = subject.rsplit_once('.')?;
    let (_, function) = rest.rsplit_once('.')?;
    Some((function, id))
}

fn subject_safe(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_function(function: &str) -> Result<(), QueueError> {
    if function.is_empty() {
        return Err(QueueError::Invalid { what: "function name", detail: "it is empty".into() });
    }
    if !subject_safe(function) {
        return Err(QueueError::Invalid {
            what: "function name",
            detail: format!("`{function}` is not 1 to 64 letters, digits, `_` or `-`"),
        });
    }
    Ok(())
}

/// Appends `error` (its attempt filled in) keeping the newest [`MAX_ERRORS`].
fn push_error(errors: &mut Vec<AttemptError>, error: AttemptError, attempt: u32) {
    errors.push(error.kept(attempt));
    if errors.len() > MAX_ERRORS {
        let excess = errors.len() - MAX_ERRORS;
        errors.drain(..excess);
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// Whether an error of async-nats is of the connection or a timeout (the
/// server may answer later) rather than a refusal. async-nats' error kinds
/// differ per call, so this reads the kind's name.
fn is_unavailable(debug: &str) -> bool {
    ["TimedOut", "Request", "BrokenPipe", "NoResponders", "Offline", "Disconnected", "MaxAckPending"]
        .iter()
        .any(|k| debug.contains(k))
}

/// "No such message" (JetStream error 10037), not a missing stream.
fn not_found(debug: &str) -> bool {
    debug.contains("NoMessageFound") || debug.contains("ErrorCode(10037)")
}

impl Inner {
    fn err(&self, action: &'static str, e: impl std::fmt::Display + std::fmt::Debug) -> QueueError {
        let debug = format!("{e:?}");
        if is_unavailable(&debug) {
            QueueError::Unavailable { url: self.url.clone(), action, detail: e.to_string() }
        } else {
            QueueError::Nats { url: self.url.clone(), action, detail: e.to_string() }
        }
    }

    fn p(&self) -> &str {
        &self.config.prefix
    }

    fn q_subject(&self, function: &str, id: &ActivationId) -> String {
        format!("{}.q.{function}.{id}", self.p())
    }

    fn q_filter(&self, function: &str) -> String {
        format!("{}.q.{function}.*", self.p())
    }

    fn dead_subject(&self, function: &str, id: &ActivationId) -> String {
        format!("{}.dead.{function}.{id}", self.p())
    }

    fn dead_filter(&self, function: &str) -> String {
        format!("{}.dead.{function}.*", self.p())
    }

    /// The dead letters of `function`, or of every function.
    fn dead_filter_of(&self, function: Option<&str>) -> String {
        match function {
            Some(f) => self.dead_filter(f),
            None => format!("{}.dead.>", self.p()),
        }
    }

    fn idem_subject(&self, function: &str, key: &str) -> String {
        format!("{}.idem.{function}.{}", self.p(), hex::encode(Sha256::digest(key.as_bytes())))
    }

    fn wake_subject(&self) -> String {
        format!("{}.wake", self.p())
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// [`Inner::wake`] for each of `functions` once.
    fn wake_all<'a>(&self, functions: impl Iterator<Item = &'a str>) {
        let mut functions: Vec<&str> = functions.collect();
        functions.sort_unstable();
        functions.dedup();
        for f in functions {
            self.wake(Some(f));
        }
    }

    /// Work was added to `function` (`None`: to any): marks it in the
    /// census, bumps this node's watch and has the other nodes told (by the
    /// wake task, once for however many wakes came in `WAKE_COALESCE`: one
    /// message per enqueue doubled what the server carried per accept).
    fn wake(&self, function: Option<&str>) {
        self.census.lock().added(function);
        self.bump();
        {
            let mut names = self.wake_names.lock();
            match (names.as_mut(), function) {
                (Some(set), Some(f)) => {
                    set.insert(f.to_owned());
                }
                _ => *names = None,
            }
        }
        self.wake_others.notify_one();
    }

    /// Counts one more enqueue of `function` against `max`, or refuses it
    /// (see `Backlog`). Refreshes a stale estimate first.
    async fn reserve(&self, function: &str, max: u64) -> Result<(), QueueError> {
        let every = self.count_every(BACKLOG_REFRESH);
        let stale = self.backlogs.lock().get(function).is_none_or(|b| {
            b.refreshed.is_none_or(|at| at.elapsed() >= every) || (b.freed && b.known + b.added + b.in_flight >= max)
        });
        if stale {
            self.refresh_backlog(function).await?;
        }
        let mut all = self.backlogs.lock();
        let b = all.entry(function.to_owned()).or_default();
        let queued = b.known + b.added + b.in_flight;
        if queued >= max {
            // The next enqueue asks again: room may have been made elsewhere.
            b.refreshed = None;
            return Err(QueueError::Full { function: function.to_owned(), queued, limit: max });
        }
        b.in_flight += 1;
        Ok(())
    }

    /// How often counts may be asked for, at `least`: the server counts a
    /// filtered consumer's backlog by walking its messages, so a count of a
    /// long backlog takes it milliseconds; asking at most every 20 times
    /// the last answer's time keeps counting to ~5% of this node's use of
    /// the server, whatever the backlog.
    fn count_every(&self, least: Duration) -> Duration {
        least.max(*self.count_took.lock() * 20)
    }

    /// Asks JetStream for `function`'s backlog (ready + leased).
    async fn refresh_backlog(&self, function: &str) -> Result<(), QueueError> {
        // Publishes finished before the request are in its answer.
        let asked = std::time::Instant::now();
        let before = {
            let mut all = self.backlogs.lock();
            let b = all.entry(function.to_owned()).or_default();
            b.refreshed = Some(asked);
            b.freed = false;
            b.added
        };
        let info = self.consumer_info(&self.queue_counts, function).await?;
        *self.count_took.lock() = asked.elapsed();
        let known = info.map_or(0, |i| i.num_pending + i.num_ack_pending as u64);
        let mut all = self.backlogs.lock();
        let b = all.entry(function.to_owned()).or_default();
        b.known = known;
        b.added = b.added.saturating_sub(before);
        Ok(())
    }

    /// Ends a reservation: the publish was stored (`added`) or not.
    fn settle_reservation(&self, function: &str, stored: bool) {
        let mut all = self.backlogs.lock();
        let b = all.entry(function.to_owned()).or_default();
        b.in_flight = b.in_flight.saturating_sub(1);
        if stored {
            b.added += 1;
        }
    }

    /// Room was made for `function` here (ack, nack, dead, removal): an
    /// enqueue the estimate would refuse counts afresh.
    fn recount(&self, function: &str) {
        if let Some(b) = self.backlogs.lock().get_mut(function) {
            b.freed = true;
        }
    }

    fn gate(&self, function: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.gates.lock().entry(function.to_owned()).or_default().clone()
    }

    /// The function's consumer, created on first use (and cached).
    async fn consumer(&self, function: &str) -> Result<PullConsumer, QueueError> {
        if let Some(c) = self.consumers.lock().get(function).cloned() {
            return Ok(c);
        }
        let config = consumer::pull::Config {
            durable_name: Some(function.to_owned()),
            filter_subject: self.q_filter(function),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.config.ack_wait,
            max_ack_pending: -1,
            max_deliver: -1,
            ..Default::default()
        };
        let c: PullConsumer = self
            .queue
            .get_or_create_consumer(function, config)
            .await
            .map_err(|e| self.err("creating the function's consumer", e))?;
        self.consumers.lock().insert(function.to_owned(), c.clone());
        Ok(c)
    }

    /// The function's consumer's state, `None` if it has none (never used).
    async fn consumer_info(&self, stream: &Stream, function: &str) -> Result<Option<consumer::Info>, QueueError> {
        match stream.consumer_info(function).await {
            Ok(info) => Ok(Some(info)),
            Err(e) if matches!(e.kind(), jetstream::context::ConsumerInfoErrorKind::NotFound) => Ok(None),
            Err(e) => Err(self.err("reading a consumer", e)),
        }
    }

    async fn dead_count(&self, function: &str) -> Result<u64, QueueError> {
        Ok(self.consumer_info(&self.dead_counts, function).await?.map_or(0, |i| i.num_pending))
    }

    async fn ensure_dead_counter(&self, function: &str) -> Result<(), QueueError> {
        if self.dead_counters.lock().contains(function) {
            return Ok(());
        }
        let config = consumer::pull::Config {
            durable_name: Some(function.to_owned()),
            filter_subject: self.dead_filter(function),
            ack_policy: AckPolicy::None,
            ..Default::default()
        };
        let _: PullConsumer = self
            .dead
            .get_or_create_consumer(function, config)
            .await
            .map_err(|e| self.err("creating the dead-letter counter", e))?;
        self.dead_counters.lock().insert(function.to_owned());
        Ok(())
    }

    /// The first message at or after `seq` matching `filter`.
    async fn next(&self, stream: &Stream, filter: &str, seq: u64) -> Result<Option<StreamMessage>, QueueError> {
        match stream.raw_message_builder().sequence(seq).next_by_subject(filter).send().await {
            Ok(m) => Ok(Some(m)),
            Err(e) if not_found(&format!("{e:?}")) => Ok(None),
            Err(e) => Err(self.err("reading a message", e)),
        }
    }

    async fn last(&self, stream: &Stream, subject: &str) -> Result<Option<StreamMessage>, QueueError> {
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if not_found(&format!("{e:?}")) => Ok(None),
            Err(e) => Err(self.err("reading a message", e)),
        }
    }

    /// The newest message of item `id` in `stream` (`kind`: `q` or `dead`),
    /// whatever its function: a server-side match of `<prefix>.<kind>.*.<id>`
    /// (the server walks its subject index), then a read of that subject.
    async fn find(&self, stream: &Stream, kind: &str, id: &ActivationId) -> Result<Option<StreamMessage>, QueueError> {
        if !subject_safe(id.as_str()) {
            return Ok(None);
        }
        let Some(first) = self.next(stream, &format!("{}.{kind}.*.{id}", self.p()), 1).await? else {
            return Ok(None);
        };
        Ok(Some(self.last(stream, &first.subject).await?.unwrap_or(first)))
    }

    async fn publish(&self, subject: String, payload: Bytes, expect_last: u64) -> Result<Option<u64>, QueueError> {
        let msg = PublishMessage::build().payload(payload).expected_last_subject_sequence(expect_last);
        let ack = self.js.send_publish(subject, msg).await.map_err(|e| self.err("publishing", e))?;
        match ack.await {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => Ok(None),
            Err(e) => Err(self.err("publishing (waiting for the stream's ack)", e)),
        }
    }

    async fn delete(&self, stream: &Stream, seq: u64) -> Result<bool, QueueError> {
        match stream.delete_message(seq).await {
            Ok(done) => Ok(done),
            // Gone already (acked, or removed by another node).
            Err(e)
                if not_found(&format!("{e:?}"))
                    || (format!("{e:?}").contains("ErrorCode(10057)")
                        && e.to_string().contains("no message found")) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.err("deleting a message", e)),
        }
    }

    /// A ready or leased item by id: held here, or found in the stream.
    /// Takes it out of `held` (the caller is about to replace or remove it).
    async fn live(&self, id: &ActivationId) -> Result<Option<Live>, QueueError> {
        let held = self.local.lock().held.remove(id);
        if let Some(h) = held {
            return Ok(Some(Live { function: h.function, seq: h.seq, item: h.item, acker: Some(h.acker) }));
        }
        let Some(m) = self.find(&self.queue, "q", id).await? else { return Ok(None) };
        let Some((function, _)) = split_subject(&m.subject) else { return Ok(None) };
        let item = decode(&m.payload, ItemState::Ready)?;
        Ok(Some(Live { function: function.to_owned(), seq: m.sequence, item, acker: None }))
    }

    /// Removes the message a [`Live`] came from (ack if held, else delete).
    async fn remove(&self, live: &Live) -> Result<(), QueueError> {
        self.forget(&live.function, live.seq);
        self.recount(&live.function);
        match &live.acker {
            Some(acker) => acker.double_ack().await.map_err(|e| self.err("acking", e)),
            None => self.delete(&self.queue, live.seq).await.map(drop),
        }
    }

    fn forget(&self, function: &str, seq: u64) {
        let mut local = self.local.lock();
        if let Some(d) = local.delayed.get_mut(function) {
            d.remove(&seq);
        }
        if let Some(r) = local.released.get_mut(function) {
            r.remove(&seq);
        }
    }

    /// Releases held messages whose local lease ran out (nak: JetStream
    /// hands them out again) and drops stale local notes.
    async fn sweep(&self) {
        let now = now_ms();
        let expired: Vec<(String, u64, Arc<Acker>)> = {
            let mut local = self.local.lock();
            let ids: Vec<ActivationId> = local
                .held
                .iter()
                .filter(|(_, h)| h.item.lease_until_ms.is_some_and(|until| until <= now))
                .map(|(id, _)| id.clone())
                .collect();
            let mut out = Vec::new();
            for id in ids {
                if let Some(h) = local.held.remove(&id) {
                    local.released.entry(h.function.clone()).or_default().insert(h.seq, now);
                    out.push((h.function, h.seq, h.acker));
                }
            }
            // Notes this node can no longer vouch for (another node fetched
            // the message meanwhile, most likely).
            let stale = now - ms(self.config.ack_wait) - 1000;
            for d in local.delayed.values_mut() {
                d.retain(|_, d| d.due_ms > stale);
            }
            for r in local.released.values_mut() {
                r.retain(|_, at| *at > stale);
            }
            local.delayed.retain(|_, d| !d.is_empty());
            local.released.retain(|_, r| !r.is_empty());
            out
        };
        if expired.is_empty() {
            return;
        }
        for (function, seq, acker) in &expired {
            if let Err(e) = acker.double_ack_with(AckKind::Nak(None)).await {
                // JetStream hands it out after ack_wait anyway.
                tracing::warn!(function, seq, error = %e, "queue: releasing an expired lease failed");
            }
        }
        self.wake_all(expired.iter().map(|(f, _, _)| f.as_str()));
    }

    /// Tells JetStream the held messages are still being worked on.
    async fn progress(&self) {
        let now = now_ms();
        let every = (ms(self.config.ack_wait) / 3).max(1);
        let due: Vec<Arc<Acker>> = {
            let mut local = self.local.lock();
            local
                .held
                .values_mut()
                .filter(|h| now - h.progress_ms >= every)
                .map(|h| {
                    h.progress_ms = now;
                    h.acker.clone()
                })
                .collect()
        };
        for acker in due {
            if let Err(e) = acker.ack_with(AckKind::Progress).await {
                tracing::debug!(error = %e, "queue: sending progress failed");
            }
        }
    }

    /// Counts of this node's notes for `function`: (not-due unfetched,
    /// fetched-and-delayed, fetched-and-delayed now due, released).
    fn notes(&self, function: &str, now: i64) -> (u64, u64, u64, u64) {
        let local = self.local.lock();
        let (mut unfetched, mut fetched, mut fetched_due) = (0, 0, 0);
        if let Some(d) = local.delayed.get(function) {
            for d in d.values() {
                match (d.fetched, d.due_ms <= now) {
                    (false, false) => unfetched += 1,
                    (false, true) => {}
                    (true, due) => {
                        fetched += 1;
                        fetched_due += u64::from(due);
                    }
                }
            }
        }
        let released = local.released.get(function).map_or(0, |r| r.len() as u64);
        (unfetched, fetched, fetched_due, released)
    }

    /// Due items of a function from its consumer's counts and this node's notes.
    fn due(&self, info: &consumer::Info, now: i64) -> u64 {
        let (unfetched, _, fetched_due, released) = self.notes(&info.name, now);
        info.num_pending.saturating_sub(unfetched) + fetched_due + released
    }

    /// A function's items another node has fetched (leased, or waiting
    /// there for a retry): any of them may be handed out again at any
    /// moment (its node died and its ack wait ran out), and JetStream only
    /// redelivers to a node that asks, so they count as possibly due.
    fn held_elsewhere(&self, info: &consumer::Info, now: i64) -> u64 {
        let (_, fetched, _, released) = self.notes(&info.name, now);
        let held = self.local.lock().held.values().filter(|h| h.function == info.name).count() as u64;
        (info.num_ack_pending as u64).saturating_sub(fetched + released + held)
    }

    fn depth_of(&self, info: &consumer::Info, dead: u64) -> Depth {
        let total = info.num_pending + info.num_ack_pending as u64;
        let (_, fetched, _, released) = self.notes(&info.name, now_ms());
        let leased = (info.num_ack_pending as u64).saturating_sub(fetched + released);
        Depth { ready: total - leased, leased, dead }
    }

    /// Every function's consumer counts (read again when older than
    /// `CENSUS_EVERY`), the functions with work added since and those
    /// drained since (see `Census`).
    async fn census(&self) -> Result<CensusView, QueueError> {
        let mark = {
            let c = self.census.lock();
            if c.taken.is_some_and(|t| t.elapsed() < self.count_every(CENSUS_EVERY)) {
                let added = c.added.iter().map(|(f, (_, n))| (f.clone(), *n)).collect();
                return Ok((c.infos.clone(), added, c.drained.clone()));
            }
            c.marks
        };
        let asked = std::time::Instant::now();
        let infos = self.all_consumers(&self.queue_counts).await?;
        *self.count_took.lock() = asked.elapsed();
        let mut c = self.census.lock();
        c.infos = infos.clone();
        c.taken = Some(asked);
        c.added.retain(|_, (m, _)| *m > mark);
        c.drained.clear();
        let added = c.added.iter().map(|(f, (_, n))| (f.clone(), *n)).collect();
        Ok((infos, added, Default::default()))
    }

    async fn all_consumers(&self, stream: &Stream) -> Result<Vec<consumer::Info>, QueueError> {
        let mut list = stream.consumers();
        let mut out = Vec::new();
        while let Some(info) = list.next().await {
            out.push(info.map_err(|e| self.err("listing consumers", e))?);
        }
        Ok(out)
    }

    /// An idempotency key's live holder and the subject's last sequence.
    async fn key_holder(&self, subject: &str) -> Result<(Option<ActivationId>, u64), QueueError> {
        let Some(m) = self.last(&self.idem, subject).await? else { return Ok((None, 0)) };
        let hold: KeyHold = serde_json::from_slice(&m.payload)
            .map_err(|e| QueueError::Corrupt { what: format!("idempotency key {subject}"), detail: e.to_string() })?;
        Ok(((hold.expires_ms > now_ms()).then_some(hold.id), m.sequence))
    }

    /// Claims `key` for `id`: `Ok(None)` if claimed, else the live holder.
    async fn claim(
        &self,
        function: &str,
        key: &str,
        id: &ActivationId,
        window: Duration,
    ) -> Result<Option<ActivationId>, QueueError> {
        let subject = self.idem_subject(function, key);
        for _ in 0..8 {
            let (holder, last) = self.key_holder(&subject).await?;
            if let Some(holder) = holder {
                return Ok(Some(holder));
            }
            let hold = KeyHold { id: id.clone(), expires_ms: now_ms().saturating_add(ms(window)) };
            let value = serde_json::to_vec(&hold)
                .map_err(|e| QueueError::Invalid { what: "idempotency key", detail: e.to_string() })?;
            if self.publish(subject.clone(), value.into(), last).await?.is_some() {
                return Ok(None);
            }
            // Another node claimed or renewed it meanwhile: read again.
        }
        Err(QueueError::Unavailable {
            url: self.url.clone(),
            action: "claiming an idempotency key",
            detail: "it kept changing under concurrent claims".into(),
        })
    }

    /// Items of one function, stream order, up to `limit` matching `state`.
    async fn scan_function(
        &self,
        function: &str,
        state: Option<ItemState>,
        limit: usize,
    ) -> Result<Vec<Item>, QueueError> {
        let mut out = Vec::new();
        if state != Some(ItemState::Dead) {
            let info = self.consumer_info(&self.queue_counts, function).await?;
            let delivered = info.as_ref().map_or(0, |i| i.delivered.stream_sequence);
            let acked = info.as_ref().map_or(0, |i| i.ack_floor.stream_sequence);
            let filter = self.q_filter(function);
            let mut seq = acked + 1;
            while out.len() < limit {
                let Some(m) = self.next(&self.queue, &filter, seq).await? else { break };
                seq = m.sequence + 1;
                let item = match self.classify(function, &m, delivered) {
                    Ok(item) => item,
                    Err(e) => {
                        tracing::warn!(function, seq = m.sequence, error = %e, "queue: unreadable message skipped");
                        continue;
                    }
                };
                if state.is_none_or(|s| s == item.state) {
                    out.push(item);
                }
            }
        }
        if state.is_none_or(|s| s == ItemState::Dead) {
            let filter = self.dead_filter(function);
            let mut seq = 1;
            while out.len() < limit {
                let Some(m) = self.next(&self.dead, &filter, seq).await? else { break };
                seq = m.sequence + 1;
                match decode(&m.payload, ItemState::Dead) {
                    Ok(item) => out.push(item),
                    Err(e) => {
                        tracing::warn!(function, seq = m.sequence, error = %e, "queue: unreadable dead letter skipped")
                    }
                }
            }
        }
        Ok(out)
    }

    /// The state of a queued message as well as this node can tell.
    fn classify(&self, function: &str, m: &StreamMessage, delivered: u64) -> Result<Item, QueueError> {
        let mut item = decode(&m.payload, ItemState::Ready)?;
        let now = now_ms();
        let local = self.local.lock();
        if let Some(h) = local.held.get(&item.invocation.id).filter(|h| h.seq == m.sequence) {
            return Ok(h.item.clone());
        }
        let released = local.released.get(function).is_some_and(|r| r.contains_key(&m.sequence));
        // Not yet due is never leased; a message JetStream has not delivered
        // yet, or one released here, is ready; else another node has it.
        if item.not_before_ms <= now && !released && m.sequence <= delivered {
            item.state = ItemState::Leased;
        }
        Ok(item)
    }

    /// Publishes a dead letter for `item` (of `function`) and trims the list.
    async fn bury(&self, function: &str, mut item: Item) -> Result<(), QueueError> {
        self.ensure_dead_counter(function).await?;
        item.state = ItemState::Dead;
        item.dead_ms = Some(now_ms());
        item.lease_until_ms = None;
        let subject = self.dead_subject(function, &item.invocation.id);
        let payload = encode(&mut item)?;
        // One message per subject: a second death of the id replaces it.
        let msg = PublishMessage::build().payload(payload);
        self.js
            .send_publish(subject, msg)
            .await
            .map_err(|e| self.err("publishing a dead letter", e))?
            .await
            .map_err(|e| self.err("publishing a dead letter (waiting for the stream's ack)", e))?;
        let count = self.dead_count(function).await?;
        let max = self.config.max_dead_per_function;
        if count > max {
            let mut dropped = 0;
            let filter = self.dead_filter(function);
            for _ in 0..count - max {
                let Some(oldest) = self.next(&self.dead, &filter, 1).await? else { break };
                dropped += u64::from(self.delete(&self.dead, oldest.sequence).await?);
            }
            tracing::warn!(
                function,
                dropped,
                max,
                "dead-letter list of the function is full: its oldest dead letters were dropped"
            );
        }
        Ok(())
    }

    /// A dead letter (as read) back to the queue; `false` if it is gone or
    /// its id is queued again already.
    async fn redrive_message(&self, m: &StreamMessage) -> Result<bool, QueueError> {
        let Some((function, _)) = split_subject(&m.subject) else { return Ok(false) };
        let function = function.to_owned();
        // Not bounded by `max_queued`, but counted by the next enqueue.
        self.recount(&function);
        let mut item = decode(&m.payload, ItemState::Ready)?;
        let now = now_ms();
        item.invocation.attempt = 1;
        item.invocation.cause = Cause::Redrive;
        item.not_before_ms = now;
        item.dead_ms = None;
        self.consumer(&function).await?;
        let subject = self.q_subject(&function, &item.invocation.id);
        if self.publish(subject, encode(&mut item)?, 0).await?.is_none() {
            return Ok(false);
        }
        self.delete(&self.dead, m.sequence).await?;
        Ok(true)
    }
}

/// A ready or leased item located for a change.
struct Live {
    function: String,
    seq: u64,
    item: Item,
    acker: Option<Arc<Acker>>,
}

impl JetStreamQueue {
    /// Connects to NATS at `url`, creates the streams if missing, and starts
    /// the background tasks (lease upkeep, wake-ups from other nodes,
    /// pruning of expired idempotency keys).
    pub async fn connect(url: &str, config: JetStreamConfig) -> Result<Self, QueueError> {
        if !subject_safe(&config.prefix) {
            return Err(QueueError::Invalid {
                what: "queue prefix",
                detail: format!("`{}` is not 1 to 64 letters, digits, `_` or `-`", config.prefix),
            });
        }
        let unavailable = |action, detail: String| QueueError::Unavailable { url: url.into(), action, detail };
        let connect = |name: &'static str| async move {
            let client = async_nats::ConnectOptions::new()
                .name(name)
                .request_timeout(Some(REQUEST_TIMEOUT))
                .retry_on_initial_connect()
                .connect(url);
            // `retry_on_initial_connect` keeps trying forever: bound the first.
            tokio::time::timeout(REQUEST_TIMEOUT, client)
                .await
                .map_err(|_| unavailable("connecting", format!("no answer in {REQUEST_TIMEOUT:?}")))?
                .map_err(|e| unavailable("connecting", e.to_string()))
        };
        let client = connect("flick-queue").await?;
        let js = jetstream::new(client.clone());
        let upper = config.prefix.to_uppercase();
        let stream = |name: String, subjects: String, retention, per_subject| stream::Config {
            name,
            subjects: vec![subjects],
            retention,
            storage: StorageType::File,
            num_replicas: config.replicas.max(1),
            max_messages_per_subject: per_subject,
            ..Default::default()
        };
        let p = &config.prefix;
        let mut streams = Vec::new();
        for cfg in [
            stream(format!("{upper}_QUEUE"), format!("{p}.q.>"), RetentionPolicy::WorkQueue, -1),
            stream(format!("{upper}_DEAD"), format!("{p}.dead.>"), RetentionPolicy::Limits, 1),
            stream(format!("{upper}_IDEM"), format!("{p}.idem.>"), RetentionPolicy::Limits, 1),
        ] {
            let name = cfg.name.clone();
            let s = js.get_or_create_stream(cfg).await.map_err(|e| {
                let debug = format!("{e:?}");
                if is_unavailable(&debug) || debug.contains("JetStreamNotEnabled") {
                    unavailable("creating the queue's streams", format!("{name}: {e}"))
                } else {
                    QueueError::Nats {
                        url: url.into(),
                        action: "creating the queue's streams",
                        detail: format!("{name}: {e}"),
                    }
                }
            })?;
            streams.push(s);
        }
        let [queue, dead, idem]: [Stream; 3] = streams.try_into().map_err(|_| QueueError::Nats {
            url: url.into(),
            action: "creating the queue's streams",
            detail: "not three streams".into(),
        })?;
        // Consumer counts on a connection of their own: the server answers
        // them on the asking connection's reader, in time that grows with
        // the backlog, and publishes queued behind them would wait.
        let counting = jetstream::new(connect("flick-queue-counts").await?);
        let handle = |name: String| {
            let counting = counting.clone();
            async move {
                counting.get_stream(&name).await.map_err(|e| QueueError::Nats {
                    url: url.into(),
                    action: "opening the queue's streams",
                    detail: format!("{name}: {e}"),
                })
            }
        };
        let (queue_counts, dead_counts) =
            (handle(format!("{upper}_QUEUE")).await?, handle(format!("{upper}_DEAD")).await?);
        let inner = Arc::new(Inner {
            url: url.into(),
            config,
            js: js.clone(),
            queue,
            dead,
            idem,
            queue_counts,
            dead_counts,
            consumers: Mutex::default(),
            dead_counters: Mutex::default(),
            gates: Mutex::default(),
            backlogs: Mutex::default(),
            local: Mutex::default(),
            changes: watch::Sender::new(0),
            wake_others: Arc::default(),
            wake_names: Arc::new(Mutex::new(Some(std::collections::BTreeSet::new()))),
            census: Mutex::default(),
            count_took: Mutex::default(),
            wake_id: Bytes::from(ActivationId::generate().as_str().to_owned()),
            tasks: Mutex::default(),
        });
        let mut wake = client
            .subscribe(inner.wake_subject())
            .await
            .map_err(|e| unavailable("subscribing to wake-ups", e.to_string()))?;
        let weak: Weak<Inner> = Arc::downgrade(&inner);
        let waker = tokio::spawn(async move {
            while let Some(message) = wake.next().await {
                let Some(inner) = weak.upgrade() else { break };
                let text = String::from_utf8_lossy(&message.payload);
                let mut lines = text.lines();
                if lines.next().is_some_and(|id| id.as_bytes() == inner.wake_id.as_ref()) {
                    continue;
                }
                {
                    let mut census = inner.census.lock();
                    let mut named = false;
                    for name in lines {
                        named = true;
                        census.added(Some(name).filter(|n| *n != "*"));
                    }
                    if !named {
                        census.added(None);
                    }
                }
                inner.bump();
            }
        });
        // Ends when `Inner` is dropped (it aborts its tasks).
        let (publisher, subject, id) = (client.clone(), inner.wake_subject(), inner.wake_id.clone());
        let (wanted, names) = (inner.wake_others.clone(), inner.wake_names.clone());
        let teller = tokio::spawn(async move {
            loop {
                wanted.notified().await;
                // The sender's id, then the functions with new work, one a
                // line (`*`: any function).
                let named = names.lock().replace(std::collections::BTreeSet::new());
                if named.as_ref().is_some_and(|set| set.is_empty()) {
                    // Its names went out in the last message.
                    continue;
                }
                let mut payload = id.to_vec();
                match named {
                    Some(set) => set.iter().for_each(|f| {
                        payload.push(b'\n');
                        payload.extend_from_slice(f.as_bytes());
                    }),
                    None => payload.extend_from_slice(b"\n*"),
                }
                if let Err(e) = publisher.publish(subject.clone(), payload.into()).await {
                    tracing::debug!(error = %e, "queue: telling other nodes about new work failed");
                }
                tokio::time::sleep(WAKE_COALESCE).await;
            }
        });
        let weak = Arc::downgrade(&inner);
        let upkeep = tokio::spawn(async move {
            let mut last_prune = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(TICK).await;
                let Some(inner) = weak.upgrade() else { break };
                inner.sweep().await;
                inner.progress().await;
                if last_prune.elapsed() >= PRUNE_EVERY {
                    last_prune = tokio::time::Instant::now();
                    let q = JetStreamQueue { inner };
                    if let Err(e) = q.prune().await {
                        tracing::warn!(error = %e, "queue: pruning idempotency keys failed");
                    }
                }
            }
        });
        inner.tasks.lock().extend([waker, teller, upkeep]);
        Ok(Self { inner })
    }

    /// The server's URL, as given.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Deletes this prefix's streams (and so every item, dead letter, key
    /// and consumer): for tests, and for an operator starting over.
    pub async fn delete_streams(&self) -> Result<(), QueueError> {
        let js = &self.inner.js;
        let upper = self.inner.config.prefix.to_uppercase();
        for suffix in ["QUEUE", "DEAD", "IDEM"] {
            js.delete_stream(format!("{upper}_{suffix}")).await.map_err(|e| self.inner.err("deleting a stream", e))?;
        }
        Ok(())
    }
}

#[async_trait]
impl Queue for JetStreamQueue {
    async fn enqueue(&self, inv: Invocation, opts: EnqueueOptions) -> Result<Enqueued, QueueError> {
        let q = &self.inner;
        check_function(&inv.function)?;
        if !subject_safe(inv.id.as_str()) {
            return Err(QueueError::Invalid {
                what: "activation id",
                detail: format!("`{}` is not subject-safe", inv.id),
            });
        }
        if let Some((key, _)) = &opts.idempotency {
            crate::check_key(key)?;
        }
        let function = inv.function.clone();
        // Only a keyed enqueue takes turns (the key's check and claim must
        // not interleave with another's); plain ones run side by side.
        let gate = opts.idempotency.as_ref().map(|_| q.gate(&function));
        let _gate = match &gate {
            Some(g) => Some(g.lock().await),
            None => None,
        };
        if let Some((key, _)) = &opts.idempotency
            && let (Some(first), _) = q.key_holder(&q.idem_subject(&function, key)).await?
        {
            return Ok(Enqueued::Existing(first));
        }
        q.consumer(&function).await?;
        let counted = opts.max_queued < u64::MAX;
        if counted {
            q.reserve(&function, opts.max_queued).await?;
        }
        let now = now_ms();
        let id = inv.id.clone();
        let mut item = Item {
            invocation: Invocation { attempt: inv.attempt.max(1), ..inv },
            max_attempts: opts.max_attempts.max(1),
            state: ItemState::Ready,
            not_before_ms: now,
            lease_until_ms: None,
            dead_ms: None,
            deliveries: 0,
            errors: Vec::new(),
            enqueued_ms: now,
        };
        let published = match encode(&mut item) {
            Ok(payload) => q.publish(q.q_subject(&function, &id), payload, 0).await,
            Err(e) => Err(e),
        };
        if counted {
            q.settle_reservation(&function, matches!(published, Ok(Some(_))));
        }
        let Some(seq) = published? else {
            return Err(QueueError::Duplicate { id });
        };
        if let Some((key, window)) = &opts.idempotency
            && let Some(first) = q.claim(&function, key, &id, *window).await?
        {
            // Another node took the key between our read and our claim.
            q.delete(&q.queue, seq).await?;
            return Ok(Enqueued::Existing(first));
        }
        drop(_gate);
        q.wake(Some(&function));
        Ok(Enqueued::New(id))
    }

    async fn lease(&self, function: &str, n: usize, lease_for: Duration) -> Result<Vec<Item>, QueueError> {
        let q = &self.inner;
        if n == 0 || check_function(function).is_err() {
            return Ok(Vec::new());
        }
        q.sweep().await;
        let consumer = q.consumer(function).await?;
        let mark = q.census.lock().marks;
        // A pull request the server lost (it restarted while answering) is
        // never ended by it: the batch is bounded by a deadline of ours, so
        // a dispatcher never waits forever on a fetch.
        let deadline = tokio::time::Instant::now() + FETCH_DEADLINE;
        let mut batch =
            match tokio::time::timeout_at(deadline, consumer.fetch().max_messages(n.min(10_000)).messages()).await {
                Ok(batch) => batch.map_err(|e| q.err("fetching", e))?,
                Err(_) => {
                    return Err(QueueError::Unavailable {
                        url: q.url.clone(),
                        action: "fetching",
                        detail: format!("no answer within {} s", FETCH_DEADLINE.as_secs()),
                    });
                }
            };
        let mut items = Vec::new();
        let mut received = 0;
        let mut complete = false;
        loop {
            let m = match tokio::time::timeout_at(deadline, batch.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(None) => {
                    complete = true;
                    break;
                }
                Ok(Some(Err(e))) => {
                    tracing::warn!(function, error = %e, "queue: fetch ended early");
                    break;
                }
                Err(_) => {
                    tracing::warn!(function, "queue: a fetch got no end from the server in time; keeping what arrived");
                    break;
                }
            };
            received += 1;
            let (seq, delivered) = match m.info() {
                Ok(info) => (info.stream_sequence, info.delivered),
                Err(e) => {
                    tracing::warn!(function, error = %e, "queue: message without JetStream metadata skipped");
                    continue;
                }
            };
            let now = now_ms();
            let early = {
                let mut local = q.local.lock();
                if let Some(r) = local.released.get_mut(function) {
                    r.remove(&seq);
                }
                local.delayed.get_mut(function).and_then(|d| d.remove(&seq)).is_some_and(|d| d.fetched)
            };
            let subject = m.message.subject.to_string();
            let (message, acker) = m.split();
            let acker = Arc::new(acker);
            let mut item = match decode(&message.payload, ItemState::Leased) {
                Ok(item) => item,
                Err(e) => {
                    // It can never run: bury it with the reason (and the
                    // raw bytes as its body) rather than fail it forever.
                    tracing::error!(function, seq, error = %e, "unreadable queued invocation moved to the dead-letter list");
                    let id = split_subject(&subject).and_then(|(_, id)| ActivationId::parse(id));
                    let mut inv = Invocation::post(function, Cause::Async, message.payload.to_vec());
                    if let Some(id) = id {
                        inv.id = id;
                    }
                    let mut errors = Vec::new();
                    push_error(
                        &mut errors,
                        AttemptError { message: e.to_string(), status: "corrupt".into(), ..Default::default() },
                        0,
                    );
                    let dead = Item {
                        invocation: inv,
                        max_attempts: 1,
                        state: ItemState::Dead,
                        not_before_ms: now,
                        lease_until_ms: None,
                        dead_ms: None,
                        deliveries: 1,
                        errors,
                        enqueued_ms: now,
                    };
                    // A failure here leaves it to be fetched (and buried) again.
                    if let Err(e) = q.bury(function, dead).await {
                        tracing::warn!(function, seq, error = %e, "queue: burying an unreadable message failed");
                    } else if let Err(e) = acker.double_ack().await {
                        tracing::warn!(function, seq, error = %e, "queue: acking a buried message failed");
                    }
                    continue;
                }
            };
            if item.not_before_ms > now {
                let wait = Duration::from_millis((item.not_before_ms - now) as u64);
                if let Err(e) = acker.ack_with(AckKind::Nak(Some(wait))).await {
                    // JetStream hands it out again after ack_wait; leased
                    // then, it is only put off again.
                    tracing::warn!(function, seq, error = %e, "queue: putting off a retry not yet due failed");
                }
                q.local
                    .lock()
                    .delayed
                    .entry(function.to_owned())
                    .or_default()
                    .insert(seq, Delay { due_ms: item.not_before_ms, fetched: true });
                continue;
            }
            let js_deliveries = u32::try_from(delivered.max(1)).unwrap_or(u32::MAX) - u32::from(early && delivered > 1);
            item.deliveries = item.deliveries.saturating_add(js_deliveries);
            item.lease_until_ms = Some(now.saturating_add(ms(lease_for).max(1)));
            q.local.lock().held.insert(
                item.invocation.id.clone(),
                Held { function: function.to_owned(), seq, acker, item: item.clone(), progress_ms: now },
            );
            items.push(item);
        }
        if complete && received < n.min(10_000) {
            q.census.lock().drained(function, mark);
        }
        Ok(items)
    }

    /// One request listing every function's consumer (pending and
    /// ack-pending counts), plus this node's notes: no per-item work.
    async fn ready_functions(&self) -> Result<Vec<(String, u64)>, QueueError> {
        let q = &self.inner;
        q.sweep().await;
        let now = now_ms();
        let (infos, added, drained) = q.census().await?;
        let mut out: BTreeMap<String, u64> = infos
            .iter()
            .filter(|info| !drained.contains(&info.name))
            .map(|info| (info.name.clone(), q.due(info, now) + q.held_elsewhere(info, now)))
            .collect();
        // The counts may already hold what was added since: an estimate,
        // which a lease may find short of.
        for (function, n) in added {
            let due = out.entry(function).or_default();
            *due = (*due).max(n);
        }
        Ok(out.into_iter().map(|(f, n)| (f, n.min(READY_COUNT_CAP))).filter(|(_, n)| *n > 0).collect())
    }

    async fn next_due_ms(&self) -> Result<Option<i64>, QueueError> {
        let q = &self.inner;
        q.sweep().await;
        let now = now_ms();
        let mut next: Option<i64> = {
            let local = q.local.lock();
            let leases = local.held.values().filter_map(|h| h.item.lease_until_ms);
            let delays = local.delayed.values().flat_map(|d| d.values().map(|d| d.due_ms));
            leases.chain(delays).min()
        };
        let (infos, added, drained) = q.census().await?;
        if !added.is_empty() {
            return Ok(Some(now));
        }
        for info in &infos {
            if !drained.contains(&info.name) && q.due(info, now) > 0 {
                next = Some(now);
                break;
            }
            let (unfetched, _, _, _) = q.notes(&info.name, now);
            if info.num_pending > unfetched || q.held_elsewhere(info, now) > 0 {
                // Held by other nodes (or waiting there): poll for them.
                next = Some(next.map_or(now + REMOTE_POLL_MS, |n| n.min(now + REMOTE_POLL_MS)));
            }
        }
        Ok(next)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    async fn ack(&self, id: &ActivationId) -> Result<bool, QueueError> {
        let q = &self.inner;
        let Some(live) = q.live(id).await? else { return Ok(false) };
        q.remove(&live).await?;
        Ok(true)
    }

    async fn nack(&self, id: &ActivationId, retry_at_ms: i64, error: AttemptError) -> Result<bool, QueueError> {
        let q = &self.inner;
        let Some(live) = q.live(id).await? else { return Ok(false) };
        let mut item = live.item.clone();
        let attempt = item.invocation.attempt;
        push_error(&mut item.errors, error, attempt);
        item.invocation.attempt = attempt.saturating_add(1);
        item.not_before_ms = retry_at_ms;
        item.state = ItemState::Ready;
        item.lease_until_ms = None;
        let subject = q.q_subject(&live.function, id);
        let Some(seq) = q.publish(subject, encode(&mut item)?, live.seq).await? else {
            // Changed by another node meanwhile (its nack or dead won).
            return Ok(false);
        };
        if retry_at_ms > now_ms() {
            q.local
                .lock()
                .delayed
                .entry(live.function.clone())
                .or_default()
                .insert(seq, Delay { due_ms: retry_at_ms, fetched: false });
        }
        q.remove(&live).await?;
        q.wake(Some(&live.function));
        Ok(true)
    }

    async fn dead(&self, id: &ActivationId, error: AttemptError) -> Result<bool, QueueError> {
        let q = &self.inner;
        let Some(live) = q.live(id).await? else { return Ok(false) };
        let mut item = live.item.clone();
        let attempt = item.invocation.attempt;
        push_error(&mut item.errors, error, attempt);
        q.bury(&live.function, item).await?;
        q.remove(&live).await?;
        Ok(true)
    }

    async fn redrive(&self, id: &ActivationId) -> Result<bool, QueueError> {
        let q = &self.inner;
        let Some(m) = q.find(&q.dead, "dead", id).await? else { return Ok(false) };
        let done = q.redrive_message(&m).await?;
        if done {
            q.wake(None);
        }
        Ok(done)
    }

    /// Walks the dead letters (one request each) and redrives them.
    async fn redrive_all(&self, function: Option<&str>) -> Result<u64, QueueError> {
        let q = &self.inner;
        let filter = q.dead_filter_of(function);
        let mut seq = 1;
        let mut n = 0;
        while let Some(m) = q.next(&q.dead, &filter, seq).await? {
            seq = m.sequence + 1;
            n += u64::from(q.redrive_message(&m).await?);
        }
        if n > 0 {
            q.wake(None);
        }
        Ok(n)
    }

    async fn purge_dead(&self, function: Option<&str>) -> Result<u64, QueueError> {
        let q = &self.inner;
        let filter = q.dead_filter_of(function);
        let purged = q.dead.purge().filter(filter).await.map_err(|e| q.err("purging dead letters", e))?;
        Ok(purged.purged)
    }

    /// Held here: from memory. Else three requests: one to find the item's
    /// subject among the queue's (the server matches `<prefix>.q.*.<id>`
    /// against its subject index in memory: work in proportion to the
    /// queued items, none per item on the wire), one to read it and one for
    /// its consumer's delivered sequence; then the same two among the dead
    /// letters if it is not queued. Not timed on large queues yet.
    async fn item(&self, id: &ActivationId) -> Result<Option<Item>, QueueError> {
        let q = &self.inner;
        if let Some(h) = q.local.lock().held.get(id) {
            return Ok(Some(h.item.clone()));
        }
        if let Some(m) = q.find(&q.queue, "q", id).await? {
            let Some((function, _)) = split_subject(&m.subject) else { return Ok(None) };
            let info = q.consumer_info(&q.queue_counts, function).await?;
            let acked = info.as_ref().map_or(0, |i| i.ack_floor.stream_sequence);
            if m.sequence > acked {
                let delivered = info.as_ref().map_or(0, |i| i.delivered.stream_sequence);
                return q.classify(function, &m, delivered).map(Some);
            }
            // Acked, yet still in the stream: a server that died just after
            // an ack can come back with the consumer's ack recorded and the
            // message not yet removed. It is done; tidy it away.
            if let Err(e) = q.delete(&q.queue, m.sequence).await {
                tracing::debug!(seq = m.sequence, error = %e, "queue: removing an acked message left by a restart failed");
            }
        }
        match q.find(&q.dead, "dead", id).await? {
            Some(m) => decode(&m.payload, ItemState::Dead).map(Some),
            None => Ok(None),
        }
    }

    /// One request per item read (at most `limit` per function, each
    /// function's in stream order), then sorted by enqueue time.
    async fn items(
        &self,
        function: Option<&str>,
        state: Option<ItemState>,
        limit: u32,
    ) -> Result<Vec<Item>, QueueError> {
        let q = &self.inner;
        let limit = limit.clamp(1, 1000) as usize;
        let functions: Vec<String> = match function {
            Some(f) if check_function(f).is_err() => return Ok(Vec::new()),
            Some(f) => vec![f.to_owned()],
            None => {
                let mut names: Vec<String> =
                    q.all_consumers(&q.queue_counts).await?.into_iter().map(|i| i.name).collect();
                names.extend(q.all_consumers(&q.dead_counts).await?.into_iter().map(|i| i.name));
                names.sort();
                names.dedup();
                names
            }
        };
        let mut out = Vec::new();
        for f in functions {
            out.extend(q.scan_function(&f, state, limit).await?);
        }
        out.sort_by(|a, b| (a.enqueued_ms, a.id().as_str()).cmp(&(b.enqueued_ms, b.id().as_str())));
        out.truncate(limit);
        Ok(out)
    }

    /// Two requests (the function's consumer in each stream).
    async fn depth(&self, function: &str) -> Result<Depth, QueueError> {
        let q = &self.inner;
        if check_function(function).is_err() {
            return Ok(Depth::default());
        }
        let dead = q.dead_count(function).await?;
        Ok(match q.consumer_info(&q.queue_counts, function).await? {
            Some(info) => q.depth_of(&info, dead),
            None => Depth { dead, ..Depth::default() },
        })
    }

    async fn remove_function(&self, function: &str) -> Result<u64, QueueError> {
        let q = &self.inner;
        if check_function(function).is_err() {
            return Ok(0);
        }
        let purge = |stream: &Stream, filter: String| {
            let stream = stream.clone();
            async move { stream.purge().filter(filter).await }
        };
        q.backlogs.lock().remove(function);
        let items = purge(&q.queue, q.q_filter(function)).await.map_err(|e| q.err("purging items", e))?.purged;
        let dead = purge(&q.dead, q.dead_filter(function)).await.map_err(|e| q.err("purging dead letters", e))?.purged;
        purge(&q.idem, format!("{}.idem.{function}.*", q.p()))
            .await
            .map_err(|e| q.err("purging idempotency keys", e))?;
        for stream in [&q.queue, &q.dead] {
            if let Err(e) = stream.delete_consumer(function).await
                && !format!("{e:?}").contains("NotFound")
                && !e.to_string().contains("not found")
            {
                return Err(q.err("deleting a consumer", e));
            }
        }
        q.consumers.lock().remove(function);
        q.dead_counters.lock().remove(function);
        {
            let mut local = q.local.lock();
            local.held.retain(|_, h| h.function != function);
            local.delayed.remove(function);
            local.released.remove(function);
        }
        Ok(items + dead)
    }

    async fn claim_idempotency(
        &self,
        function: &str,
        key: &str,
        id: &ActivationId,
        window: Duration,
    ) -> Result<Option<ActivationId>, QueueError> {
        check_function(function)?;
        crate::check_key(key)?;
        self.inner.claim(function, key, id, window).await
    }

    /// Reads every key with an ordered consumer (one stream of messages)
    /// and deletes the expired ones by sequence (so a key renewed
    /// meanwhile, a new sequence, is kept).
    async fn prune(&self) -> Result<u64, QueueError> {
        let q = &self.inner;
        let config =
            consumer::pull::OrderedConfig { filter_subject: format!("{}.idem.>", q.p()), ..Default::default() };
        let consumer = q.idem.create_consumer(config).await.map_err(|e| q.err("reading idempotency keys", e))?;
        let pending = consumer.cached_info().num_pending;
        let mut expired = Vec::new();
        if pending > 0 {
            let mut messages = consumer.messages().await.map_err(|e| q.err("reading idempotency keys", e))?;
            let now = now_ms();
            while let Some(m) = tokio::time::timeout(REQUEST_TIMEOUT, messages.next()).await.ok().flatten() {
                let m = m.map_err(|e| q.err("reading idempotency keys", e))?;
                let Ok(info) = m.info() else { continue };
                let (seq, left) = (info.stream_sequence, info.pending);
                match serde_json::from_slice::<KeyHold>(&m.payload) {
                    Ok(hold) if hold.expires_ms > now => {}
                    _ => expired.push(seq),
                }
                if left == 0 {
                    break;
                }
            }
        }
        let mut n = 0;
        for seq in expired {
            n += u64::from(q.delete(&q.idem, seq).await?);
        }
        Ok(n)
    }
}
