//! Writing activation records off the request path, in bounded memory.
//!
//! Every invocation hands its record to one writer task, which stores
//! whatever has queued up in one transaction (a group commit: while one
//! batch commits the next gathers, and a batch waits up to [`LINGER`] for
//! more records), so a busy function costs a commit per batch, not per call. The records handed over but not yet committed are
//! bounded ([`BACKLOG_RECORDS`], [`BACKLOG_BYTES`]); when the backlog is
//! full, [`Recorder::record`] waits for room, so a flood slows its callers
//! instead of growing flick's memory. That backlog is also all a SIGKILL
//! can lose: a committed record survives a crash of the process.
//!
//! A batch the store cannot take *now* (another process holds the write
//! lock, the disk is full) is retried with backoff until it can, never
//! dropped; a record the store refuses on its own is logged and the rest of
//! its batch is stored. Reads flush first ([`Recorder::flush`]), waiting a
//! bounded time, so a client reads its own record right after the response
//! but never waits for a stuck writer.

use std::sync::Arc;
use std::time::Duration;

use flick_core::Activation;
use flick_store::{RecordLimits, Store};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

/// Records handed to the writer and not yet committed, at most. With the
/// byte bound, this is what a SIGKILL can lose (stated in ARCHITECTURE.md).
pub const BACKLOG_RECORDS: usize = 128;
/// Bytes of records (response + logs) handed over and not yet committed.
pub const BACKLOG_BYTES: usize = 8 << 20;
/// Most records, and bytes, stored in one transaction: a transaction goes
/// through the write-ahead log whole, so this also bounds the log.
const BATCH_RECORDS: usize = BACKLOG_RECORDS;
const BATCH_BYTES: usize = 2 << 20;
/// How long the writer, once it has a record, waits for more before it
/// commits them together. A commit (writing the touched pages to the WAL)
/// costs about as much for one record as for dozens, and was most of
/// flick's own CPU per warm call when each call committed alone. Reads and
/// flushes do not wait for it: a flush commits at once.
const LINGER: Duration = Duration::from_millis(5);
/// Longest a read of records waits for the writer's backlog.
pub const READ_WAIT: Duration = Duration::from_secs(1);
/// Retrying a batch: first pause, doubling up to the longest.
const RETRY_FIRST: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// Attempts for a batch failing with an error that is not transient (a bug
/// or a damaged database rather than a busy or full disk) before its
/// records are given up, so that callers do not wait forever behind it.
const PERMANENT_ATTEMPTS: u32 = 5;
/// After this long without records, or this long of steady writing, the
/// writer gives freed pages back and truncates the write-ahead log.
const MAINTAIN_IDLE: Duration = Duration::from_secs(1);
const MAINTAIN_EVERY: Duration = Duration::from_secs(10);

/// The backlog a record holds until it is committed.
struct Room {
    _record: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

enum Msg {
    /// A record, and who wants to know once it is stored (or refused).
    Record(Box<Activation>, Room, Option<oneshot::Sender<bool>>),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub(crate) struct Recorder {
    tx: mpsc::UnboundedSender<Msg>,
    records: Arc<Semaphore>,
    /// In KiB, so that a semaphore's `u32` acquire covers a record.
    kib: Arc<Semaphore>,
}

/// Bytes a record holds in the backlog (and about what it takes on disk).
fn record_bytes(a: &Activation) -> usize {
    a.response.len() + a.logs.iter().map(|l| l.text.len() + 16).sum::<usize>() + 512
}

impl Recorder {
    pub fn spawn(store: Arc<dyn Store>, limits: RecordLimits) -> Self {
        // The channel itself is unbounded, but every record in it holds
        // permits of the two semaphores until it is committed.
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_batches(store, rx, limits));
        Self {
            tx,
            records: Arc::new(Semaphore::new(BACKLOG_RECORDS)),
            kib: Arc::new(Semaphore::new(BACKLOG_BYTES >> 10)),
        }
    }

    /// Hands a record to the writer, first waiting for room in the backlog.
    pub async fn record(&self, activation: Activation) {
        self.hand_over(activation, None).await;
    }

    /// Hands a record over (waiting for room) and returns what tells when
    /// the writer is done with it: `true` once it is committed, `false` if
    /// the store refused it (say, a record with its id exists) or storing
    /// it kept failing. The dispatcher acks a queued call only after that.
    pub async fn record_stored(&self, activation: Activation) -> oneshot::Receiver<bool> {
        let (done, stored) = oneshot::channel();
        self.hand_over(activation, Some(done)).await;
        stored
    }

    async fn hand_over(&self, activation: Activation, done: Option<oneshot::Sender<bool>>) {
        let kib = (record_bytes(&activation).div_ceil(1024)).min(BACKLOG_BYTES >> 10) as u32;
        let (Ok(record), Ok(bytes)) =
            (self.records.clone().acquire_owned().await, self.kib.clone().acquire_many_owned(kib).await)
        else {
            unreachable!("the backlog semaphores are never closed");
        };
        let room = Room { _record: record, _bytes: bytes };
        if self.tx.send(Msg::Record(Box::new(activation), room, done)).is_err() {
            tracing::error!("activation writer is gone; a record was lost");
        }
    }

    /// Returns once every record handed over before this call is stored, or
    /// after `wait` (then `false`: the writer is retrying a batch).
    pub async fn flush(&self, wait: Duration) -> bool {
        let (done, stored) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).is_err() {
            return false;
        }
        match tokio::time::timeout(wait, stored).await {
            Ok(_) => true,
            Err(_) => {
                tracing::warn!(waited = ?wait, "activation records are still being written; reading without the newest");
                false
            }
        }
    }
}

async fn write_batches(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Msg>, limits: RecordLimits) {
    let mut batch: Vec<Activation> = Vec::new();
    let mut rooms: Vec<Room> = Vec::new();
    let mut waiters: Vec<Option<oneshot::Sender<bool>>> = Vec::new();
    let mut flushes = Vec::new();
    // Written since the last maintenance, and when that was.
    let mut dirty = false;
    let mut maintained = Instant::now();
    loop {
        let first = match tokio::time::timeout(MAINTAIN_IDLE, rx.recv()).await {
            Ok(Some(msg)) => msg,
            Ok(None) => break,
            Err(_idle) => {
                if dirty {
                    maintain(&*store).await;
                    dirty = false;
                    maintained = Instant::now();
                }
                continue;
            }
        };
        let mut next = Some(first);
        let mut bytes = 0;
        let linger_until = Instant::now() + LINGER;
        loop {
            // Take whatever else is already queued, up to a batch.
            while let Some(msg) = next {
                match msg {
                    Msg::Record(activation, room, done) => {
                        bytes += record_bytes(&activation);
                        batch.push(*activation);
                        rooms.push(room);
                        waiters.push(done);
                    }
                    Msg::Flush(done) => flushes.push(done),
                }
                next = if batch.len() < BATCH_RECORDS && bytes < BATCH_BYTES { rx.try_recv().ok() } else { None };
            }
            // A commit costs about the same for one record as for dozens:
            // under steady traffic, wait briefly for more. Not when the
            // batch is full, or someone is waiting to read.
            let full = batch.len() >= BATCH_RECORDS || bytes >= BATCH_BYTES;
            if full || batch.is_empty() || !flushes.is_empty() {
                break;
            }
            match tokio::time::timeout_at(linger_until, rx.recv()).await {
                Ok(Some(msg)) => next = Some(msg),
                // Closed (the next `recv` ends the writer) or lingered enough.
                Ok(None) | Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let stored = store_batch(&*store, &batch, limits).await;
            for (done, stored) in waiters.drain(..).zip(stored) {
                if let Some(done) = done {
                    let _ = done.send(stored);
                }
            }
            batch.clear();
            // Only now, committed, do they leave the backlog.
            rooms.clear();
            dirty = true;
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
        if dirty && maintained.elapsed() >= MAINTAIN_EVERY {
            maintain(&*store).await;
            dirty = false;
            maintained = Instant::now();
        }
    }
}

/// Stores one batch, retrying for as long as the failure is of the moment;
/// says of each record whether it is stored.
async fn store_batch(store: &dyn Store, batch: &[Activation], limits: RecordLimits) -> Vec<bool> {
    let mut delay = RETRY_FIRST;
    let mut failures = 0u32;
    loop {
        match store.insert_activations(batch, limits).await {
            Ok(results) => {
                let mut stored = Vec::with_capacity(batch.len());
                for (a, result) in batch.iter().zip(results) {
                    if let Err(e) = &result {
                        tracing::error!(activation = %a.id, function = %a.function, error = %e,
                            "the store refused this activation record; the rest of its batch is stored");
                    }
                    stored.push(result.is_ok());
                }
                if failures > 0 {
                    tracing::info!(records = batch.len(), failures, "stored activation records after retrying");
                }
                return stored;
            }
            Err(e) if e.is_transient() || failures + 1 < PERMANENT_ATTEMPTS => {
                failures += 1;
                // Once, then every so often: a lock held for minutes must
                // not flood the log.
                if failures == 1 || failures.is_power_of_two() {
                    let reason = if e.is_disk_full() { "the disk is full" } else { "the database is busy or failing" };
                    tracing::warn!(error = %e, records = batch.len(), failures, reason,
                        "could not store activation records yet; retrying (calls wait while the backlog is full)");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
            Err(e) => {
                tracing::error!(error = %e, records = batch.len(), failures = failures + 1,
                    "activation records lost: storing them keeps failing with an error that retrying does not fix");
                return vec![false; batch.len()];
            }
        }
    }
}

async fn maintain(store: &dyn Store) {
    match store.maintain().await {
        Ok(m) if m.reclaimed_bytes > 0 => tracing::debug!(reclaimed = m.reclaimed_bytes, "database space reclaimed"),
        Ok(_) => {}
        // Busy (another reader or writer) or full: the next pass tries again.
        Err(e) => tracing::debug!(error = %e, "database maintenance skipped"),
    }
}
