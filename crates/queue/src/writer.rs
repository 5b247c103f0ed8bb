//! The writer thread: the only connection that writes, and group commit.
//!
//! Callers send [`Request`]s over a channel. The writer takes the first
//! one and everything else already waiting (up to `max_batch`), runs them
//! in one `BEGIN IMMEDIATE … COMMIT` (one fsync for all), and only then
//! answers each. Every request runs inside its own savepoint, so one that
//! fails (a duplicate id, a full backlog) is rolled back alone and the
//! others still commit. If SQLite aborts the whole transaction (disk full,
//! I/O error) or the commit fails, every request of the batch gets the
//! error: nothing of it was acknowledged.
//!
//! The writer also keeps each function's counts (ready, leased, dead):
//! `max_queued` is checked against them, and they are published to
//! [`Shared`] after each commit (changes of a failed batch are dropped).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flick_core::ActivationId;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use crate::sqlite::{ITEM_COLUMNS, QueueConfig, Shared, decode_item_at};
use crate::{AttemptError, Depth, EnqueueOptions, Enqueued, Item, ItemState, MAX_ERRORS, QueueError};

/// The longest the writer waits for more requests before a commit, and
/// the step it waits in (see `Writer::run`).
const MAX_LINGER: Duration = Duration::from_millis(2);
const LINGER_STEP: Duration = Duration::from_micros(50);
/// Expired idempotency keys are pruned, and freed pages handed back, this often.
const MAINTAIN_EVERY: Duration = Duration::from_secs(60);
/// Free pages beyond this are given back to the file system by maintenance.
const KEEP_FREE_PAGES: i64 = 1024;
/// Pages one maintenance pass vacuums (they go through the log: this bounds it).
const VACUUM_STEP_PAGES: i64 = 2048;

pub(crate) enum Op {
    Enqueue { id: ActivationId, function: String, attempt: u32, json: String, body: Vec<u8>, opts: EnqueueOptions },
    Lease { function: String, n: usize, lease_ms: i64 },
    Ack { id: ActivationId },
    Nack { id: ActivationId, retry_at_ms: i64, error: AttemptError },
    Dead { id: ActivationId, error: AttemptError },
    Redrive { id: ActivationId },
    RedriveAll { function: Option<String> },
    PurgeDead { function: Option<String> },
    RemoveFunction { function: String },
    Claim { function: String, key: String, id: ActivationId, window: Duration },
    Prune,
}

impl Op {
    /// Whether the request changes the database with at most one
    /// statement (reads before it do not count).
    fn writes_once(&self) -> bool {
        match self {
            Self::Enqueue { opts, .. } => opts.idempotency.is_none(),
            Self::Ack { .. }
            | Self::Nack { .. }
            | Self::Redrive { .. }
            | Self::RedriveAll { .. }
            | Self::PurgeDead { .. }
            | Self::Claim { .. }
            | Self::Prune => true,
            Self::Lease { .. } | Self::Dead { .. } | Self::RemoveFunction { .. } => false,
        }
    }
}

pub(crate) enum Answer {
    Enqueued(Enqueued),
    Items(Vec<Item>),
    Bool(bool),
    Count(u64),
    Claimed(Option<ActivationId>),
}

pub(crate) struct Request {
    pub(crate) op: Op,
    pub(crate) reply: oneshot::Sender<Result<Answer, QueueError>>,
}

pub(crate) struct Writer {
    conn: Connection,
    counts: HashMap<String, Depth>,
    shared: Arc<Shared>,
    config: QueueConfig,
    last_maintenance: Instant,
}

/// A change to a function's counts: (ready, leased, dead) deltas.
type Delta = [i64; 3];

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        counts: HashMap<String, Depth>,
        shared: Arc<Shared>,
        config: QueueConfig,
    ) -> Self {
        Self { conn, counts, shared, config, last_maintenance: Instant::now() }
    }

    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let max_batch = self.config.max_batch.max(1);
        let mut batch = Vec::with_capacity(max_batch);
        // The previous batch: its size and how long it took.
        let (mut last_len, mut last_took) = (0usize, Duration::ZERO);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            // Linger: the callers just answered are on their way back with
            // their next requests, and starting the commit before they
            // arrive would cost each of them a whole fsync more. So wait,
            // for at most a quarter of the last batch's time (bounding the
            // latency this adds) and only while fewer requests are here than
            // the last batch had (a lone caller never waits).
            let linger_until = Instant::now() + (last_took / 4).min(MAX_LINGER);
            let target = last_len.min(max_batch);
            loop {
                match rx.try_recv() {
                    Ok(request) => {
                        batch.push(request);
                        if batch.len() >= max_batch {
                            break;
                        }
                    }
                    Err(_) if batch.len() < target && Instant::now() < linger_until => {
                        std::thread::sleep(LINGER_STEP);
                    }
                    Err(_) => break,
                }
            }
            last_len = batch.len();
            let started = Instant::now();
            // A bug must not stop every later enqueue: a batch that panics
            // is rolled back, its callers get an error (their senders are
            // dropped: `Closed`), and the writer carries on with the counts
            // of the last commit.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_batch(&mut batch)));
            if ran.is_err() {
                tracing::error!(
                    path = self.shared.path,
                    requests = batch.len(),
                    "queue writer panicked in a batch; it was rolled back"
                );
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                batch.clear();
            }
            last_took = started.elapsed();
            if self.last_maintenance.elapsed() >= MAINTAIN_EVERY {
                self.last_maintenance = Instant::now();
                self.maintain();
            }
        }
    }

    /// Runs `batch` in one transaction and answers every request in it.
    fn run_batch(&mut self, batch: &mut Vec<Request>) {
        let started = Instant::now();
        let shared = Arc::clone(&self.shared);
        shared.stats.batches.fetch_add(1, Ordering::Relaxed);
        shared.stats.requests.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.run_batch_inner(batch);
        shared.stats.busy_us.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    fn run_batch_inner(&mut self, batch: &mut Vec<Request>) {
        let path = self.shared.path.clone();
        let now = self.shared.clock.now();
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            let e = QueueError::sqlite(&path, &e);
            for request in batch.drain(..) {
                let _ = request.reply.send(Err(e.clone()));
            }
            return;
        }
        let mut tx = Tx {
            conn: &self.conn,
            path: &path,
            counts: &self.counts,
            delta: HashMap::new(),
            now,
            config: &self.config,
            wake: false,
        };
        let mut results: Vec<Result<Answer, QueueError>> = Vec::with_capacity(batch.len());
        let mut aborted: Option<QueueError> = None;
        for request in batch.iter_mut() {
            if let Some(e) = &aborted {
                results.push(Err(e.clone()));
                continue;
            }
            let op = std::mem::replace(&mut request.op, Op::Prune);
            results.push(tx.savepoint(op));
            if tx.conn.is_autocommit() {
                // SQLite rolled the whole transaction back (disk full, I/O
                // error): every request of the batch failed, answered alike.
                let e = match results.last() {
                    Some(Err(e)) => e.clone(),
                    _ => QueueError::Database {
                        path: path.clone(),
                        code: None,
                        detail: "transaction ended early".into(),
                    },
                };
                aborted = Some(e);
            }
        }
        let Tx { delta, wake, .. } = tx;
        let outcome = match aborted {
            Some(e) => Err(e),
            None => {
                let committing = Instant::now();
                let r = self.conn.execute_batch("COMMIT").map_err(|e| QueueError::sqlite(&path, &e));
                self.shared.stats.commit_us.fetch_add(committing.elapsed().as_micros() as u64, Ordering::Relaxed);
                r
            }
        };
        match outcome {
            Ok(()) => {
                self.apply(delta);
                if wake {
                    self.shared.changes.send_modify(|n| *n = n.wrapping_add(1));
                }
                for (request, result) in batch.drain(..).zip(results) {
                    let _ = request.reply.send(result);
                }
            }
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                tracing::warn!(path, error = %e, requests = batch.len(), "queue batch not committed: every request in it failed");
                for request in batch.drain(..) {
                    let _ = request.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Folds a committed batch's count changes in and publishes them.
    fn apply(&mut self, delta: HashMap<String, Delta>) {
        if delta.is_empty() {
            return;
        }
        let mut shared = self.shared.counts.lock();
        for (function, [ready, leased, dead]) in delta {
            let depth = self.counts.entry(function.clone()).or_default();
            depth.ready = add(depth.ready, ready);
            depth.leased = add(depth.leased, leased);
            depth.dead = add(depth.dead, dead);
            if *depth == Depth::default() {
                self.counts.remove(&function);
                shared.remove(&function);
            } else {
                shared.insert(function, *depth);
            }
        }
    }

    /// Periodic upkeep in its own transaction: expired idempotency keys go,
    /// and free pages beyond a reserve are handed back.
    fn maintain(&mut self) {
        let (tx, reply) = oneshot::channel();
        let mut batch = vec![Request { op: Op::Prune, reply: tx }];
        self.run_batch(&mut batch);
        if let Ok(Err(e)) = reply.blocking_recv() {
            tracing::warn!(path = self.shared.path, error = %e, "pruning expired idempotency keys failed");
        }
        let free: i64 = self.conn.pragma_query_value(None, "freelist_count", |r| r.get(0)).unwrap_or(0);
        if free > KEEP_FREE_PAGES {
            let step = (free - KEEP_FREE_PAGES).min(VACUUM_STEP_PAGES);
            if let Err(e) = self.conn.execute_batch(&format!("PRAGMA incremental_vacuum({step})")) {
                tracing::warn!(path = self.shared.path, error = %e, "queue vacuum step failed");
            }
        }
    }
}

fn add(n: u64, d: i64) -> u64 {
    if d >= 0 { n.saturating_add(d as u64) } else { n.saturating_sub(d.unsigned_abs()) }
}

/// One batch's transaction: the connection and the count changes so far.
struct Tx<'a> {
    conn: &'a Connection,
    path: &'a str,
    /// Counts as of the last commit.
    counts: &'a HashMap<String, Depth>,
    /// This batch's changes to them (of the requests that succeeded).
    delta: HashMap<String, Delta>,
    now: i64,
    config: &'a QueueConfig,
    /// Something may have become due: wake dispatchers after the commit.
    wake: bool,
}

impl Tx<'_> {
    fn db<T>(&self, r: rusqlite::Result<T>) -> Result<T, QueueError> {
        r.map_err(|e| QueueError::sqlite(self.path, &e))
    }

    /// Runs `op` so that on error only its own changes are undone: in a
    /// savepoint, unless it writes with one statement (SQLite undoes a
    /// failed statement by itself), which spares most requests the cost.
    fn savepoint(&mut self, op: Op) -> Result<Answer, QueueError> {
        let guarded = !op.writes_once();
        if guarded {
            self.exec_cached("SAVEPOINT op")?;
        }
        let mut changes = Vec::new();
        let result = self.run(op, &mut changes);
        if self.conn.is_autocommit() {
            return result; // the transaction is gone (see run_batch)
        }
        match &result {
            Ok(_) => {
                if guarded {
                    self.exec_cached("RELEASE op")?;
                }
                for (function, d) in changes {
                    let e = self.delta.entry(function).or_default();
                    for i in 0..3 {
                        e[i] += d[i];
                    }
                }
            }
            Err(_) if guarded => {
                self.exec_cached("ROLLBACK TO op")?;
                self.exec_cached("RELEASE op")?;
            }
            Err(_) => {}
        }
        result
    }

    fn exec_cached(&self, sql: &str) -> Result<(), QueueError> {
        let mut stmt = self.db(self.conn.prepare_cached(sql))?;
        self.db(stmt.execute([]))?;
        Ok(())
    }

    /// A function's counts including this batch's changes so far.
    fn current(&self, function: &str) -> [i64; 3] {
        let base = self.counts.get(function).copied().unwrap_or_default();
        let d = self.delta.get(function).copied().unwrap_or_default();
        [base.ready as i64 + d[0], base.leased as i64 + d[1], base.dead as i64 + d[2]]
    }

    fn run(&mut self, op: Op, changes: &mut Vec<(String, Delta)>) -> Result<Answer, QueueError> {
        match op {
            Op::Enqueue { id, function, attempt, json, body, opts } => {
                self.enqueue(id, function, attempt, json, body, opts, changes).map(Answer::Enqueued)
            }
            Op::Lease { function, n, lease_ms } => self.lease(function, n, lease_ms, changes).map(Answer::Items),
            Op::Ack { id } => {
                let mut stmt = self.db(self
                    .conn
                    .prepare_cached("DELETE FROM items WHERE id = ?1 AND state < 2 RETURNING function, state"))?;
                let row = self.db(stmt.query_row([id.as_str()], |r| Ok((r.get(0)?, r.get(1)?))).optional())?;
                Ok(Answer::Bool(match row {
                    Some((function, state)) => {
                        changes.push((function, from_state(state, -1)));
                        true
                    }
                    None => false,
                }))
            }
            Op::Nack { id, retry_at_ms, error } => {
                let Some((function, state, attempt)) = self.live(&id)? else { return Ok(Answer::Bool(false)) };
                let error = error_json(error, attempt);
                let mut stmt = self.db(self.conn.prepare_cached(&format!(
                    "UPDATE items SET state = 0, due_ms = ?2, not_before_ms = ?2, attempt = attempt + 1,
                     errors = {APPEND_ERROR} WHERE id = ?1"
                )))?;
                self.db(stmt.execute(params![id.as_str(), retry_at_ms, error]))?;
                changes.push((function.clone(), from_state(state, -1)));
                changes.push((function, from_state(0, 1)));
                self.wake = true;
                Ok(Answer::Bool(true))
            }
            Op::Dead { id, error } => {
                let Some((function, state, attempt)) = self.live(&id)? else { return Ok(Answer::Bool(false)) };
                let error = error_json(error, attempt);
                let mut stmt = self.db(self.conn.prepare_cached(&format!(
                    "UPDATE items SET state = 2, due_ms = ?2, errors = {APPEND_ERROR} WHERE id = ?1"
                )))?;
                self.db(stmt.execute(params![id.as_str(), self.now, error]))?;
                changes.push((function.clone(), from_state(state, -1)));
                changes.push((function.clone(), from_state(2, 1)));
                self.trim_dead(&function, 1, changes)?;
                Ok(Answer::Bool(true))
            }
            Op::Redrive { id } => {
                let mut stmt = self.db(self.conn.prepare_cached(&format!(
                    "UPDATE items SET {REDRIVE_SET} WHERE id = ?2 AND state = 2 RETURNING function"
                )))?;
                let function: Option<String> =
                    self.db(stmt.query_row(params![self.now, id.as_str()], |r| r.get(0)).optional())?;
                Ok(Answer::Bool(match function {
                    Some(function) => {
                        changes.push((function, [1, 0, -1]));
                        self.wake = true;
                        true
                    }
                    None => false,
                }))
            }
            Op::RedriveAll { function } => {
                let mut stmt = self.db(self.conn.prepare_cached(&format!(
                    "UPDATE items SET {REDRIVE_SET} WHERE state = 2 AND (?2 IS NULL OR function = ?2) RETURNING function"
                )))?;
                let n = self.per_function(&mut stmt, params![self.now, function], [1, 0, -1], changes)?;
                self.wake |= n > 0;
                Ok(Answer::Count(n))
            }
            Op::PurgeDead { function } => {
                let mut stmt = self.db(self.conn.prepare_cached(
                    "DELETE FROM items WHERE state = 2 AND (?1 IS NULL OR function = ?1) RETURNING function",
                ))?;
                let n = self.per_function(&mut stmt, params![function], [0, 0, -1], changes)?;
                Ok(Answer::Count(n))
            }
            Op::RemoveFunction { function } => {
                let n = self.db(self.conn.execute("DELETE FROM items WHERE function = ?1", [&function]))?;
                self.db(self.conn.execute("DELETE FROM idempotency WHERE function = ?1", [&function]))?;
                let [r, l, d] = self.current(&function);
                changes.push((function, [-r, -l, -d]));
                Ok(Answer::Count(n as u64))
            }
            Op::Claim { function, key, id, window } => {
                if let Some(first) = self.idempotent(&function, &key)? {
                    return Ok(Answer::Claimed(Some(first)));
                }
                self.hold_key(&function, &key, &id, window)?;
                Ok(Answer::Claimed(None))
            }
            Op::Prune => {
                let n = self.db(self.conn.execute("DELETE FROM idempotency WHERE expires_ms <= ?1", [self.now]))?;
                Ok(Answer::Count(n as u64))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &mut self,
        id: ActivationId,
        function: String,
        attempt: u32,
        json: String,
        body: Vec<u8>,
        opts: EnqueueOptions,
        changes: &mut Vec<(String, Delta)>,
    ) -> Result<Enqueued, QueueError> {
        if let Some((key, _)) = &opts.idempotency
            && let Some(first) = self.idempotent(&function, key)?
        {
            return Ok(Enqueued::Existing(first));
        }
        let [ready, leased, _] = self.current(&function);
        let queued = (ready + leased).max(0) as u64;
        if queued >= opts.max_queued {
            return Err(QueueError::Full { function, queued, limit: opts.max_queued });
        }
        let mut stmt = self.db(self.conn.prepare_cached(
            "INSERT INTO items (id, function, state, due_ms, not_before_ms, attempt, max_attempts,
                                enqueued_ms, invocation, body)
             VALUES (?1, ?2, 0, ?3, ?3, ?4, ?5, ?3, ?6, ?7)",
        ))?;
        let inserted =
            stmt.execute(params![id.as_str(), function, self.now, attempt, opts.max_attempts.max(1), json, body]);
        match inserted {
            Ok(_) => {}
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) => {
                return Err(QueueError::Duplicate { id });
            }
            Err(e) => return Err(QueueError::sqlite(self.path, &e)),
        }
        if let Some((key, window)) = &opts.idempotency {
            self.hold_key(&function, key, &id, *window)?;
        }
        changes.push((function, [1, 0, 0]));
        self.wake = true;
        Ok(Enqueued::New(id))
    }

    fn lease(
        &mut self,
        function: String,
        n: usize,
        lease_ms: i64,
        changes: &mut Vec<(String, Delta)>,
    ) -> Result<Vec<Item>, QueueError> {
        let until = self.now.saturating_add(lease_ms);
        let rows: Vec<(i64, i64, Result<Item, QueueError>)> = {
            let mut stmt = self.db(self.conn.prepare_cached(&format!(
                "SELECT seq, state, {ITEM_COLUMNS} FROM items
                 WHERE function = ?1 AND state < 2 AND due_ms <= ?2 ORDER BY due_ms, seq LIMIT ?3"
            )))?;
            let rows = self.db(stmt.query_map(params![function, self.now, n as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, decode_item_at(r, 2)?))
            }))?;
            rows.collect::<rusqlite::Result<_>>().map_err(|e| QueueError::sqlite(self.path, &e))?
        };
        let mut items = Vec::with_capacity(rows.len());
        for (seq, state, item) in rows {
            match item {
                Ok(mut item) => {
                    let mut stmt = self.db(self.conn.prepare_cached(
                        "UPDATE items SET state = 1, due_ms = ?2, deliveries = deliveries + 1 WHERE seq = ?1",
                    ))?;
                    self.db(stmt.execute(params![seq, until]))?;
                    if state == 0 {
                        changes.push((function.clone(), [-1, 1, 0]));
                    }
                    item.state = ItemState::Leased;
                    item.lease_until_ms = Some(until);
                    item.deliveries += 1;
                    items.push(item);
                }
                Err(e) => {
                    // It can never run: bury it with the reason rather than
                    // hand it out (and fail) forever.
                    tracing::error!(path = self.path, function, error = %e, "unreadable queued invocation moved to the dead-letter list");
                    let error = error_json(
                        AttemptError { message: e.to_string(), status: "corrupt".into(), ..AttemptError::default() },
                        0,
                    );
                    let mut stmt = self.db(self.conn.prepare_cached(
                        "UPDATE items SET state = 2, due_ms = ?2,
                         errors = json_insert(CASE WHEN json_valid(errors) THEN errors ELSE '[]' END, '$[#]', json(?3))
                         WHERE seq = ?1",
                    ))?;
                    self.db(stmt.execute(params![seq, self.now, error]))?;
                    changes.push((function.clone(), from_state(state, -1)));
                    changes.push((function.clone(), [0, 0, 1]));
                    self.trim_dead(&function, 1, changes)?;
                }
            }
        }
        Ok(items)
    }

    /// A ready or leased item's function, state and attempt.
    fn live(&self, id: &ActivationId) -> Result<Option<(String, i64, u32)>, QueueError> {
        let mut stmt = self
            .db(self.conn.prepare_cached("SELECT function, state, attempt FROM items WHERE id = ?1 AND state < 2"))?;
        self.db(stmt.query_row([id.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional())
    }

    /// Keeps at most `max_dead_per_function` dead letters of `function`
    /// (counting `pending` just added in `changes`): the oldest go.
    fn trim_dead(
        &mut self,
        function: &str,
        pending: i64,
        changes: &mut Vec<(String, Delta)>,
    ) -> Result<(), QueueError> {
        let dead = self.current(function)[2] + pending;
        let max = i64::try_from(self.config.max_dead_per_function).unwrap_or(i64::MAX);
        if dead <= max {
            return Ok(());
        }
        let excess = dead - max;
        let mut stmt = self.db(self.conn.prepare_cached(
            "DELETE FROM items WHERE seq IN
               (SELECT seq FROM items WHERE function = ?1 AND state = 2 ORDER BY due_ms, seq LIMIT ?2)",
        ))?;
        let n = self.db(stmt.execute(params![function, excess]))? as i64;
        tracing::warn!(
            path = self.path,
            function,
            dropped = n,
            max,
            "dead-letter list of the function is full: its oldest dead letters were dropped"
        );
        changes.push((function.to_owned(), [0, 0, -n]));
        Ok(())
    }

    /// Runs a `… RETURNING function` statement and records `delta` per row.
    fn per_function(
        &self,
        stmt: &mut rusqlite::CachedStatement<'_>,
        params: impl rusqlite::Params,
        delta: Delta,
        changes: &mut Vec<(String, Delta)>,
    ) -> Result<u64, QueueError> {
        let mut by_function: HashMap<String, i64> = HashMap::new();
        let rows = self.db(stmt.query_map(params, |r| r.get::<_, String>(0)))?;
        for function in rows {
            *by_function.entry(self.db(function)?).or_default() += 1;
        }
        let total = by_function.values().sum::<i64>() as u64;
        for (function, n) in by_function {
            changes.push((function, delta.map(|d| d * n)));
        }
        Ok(total)
    }

    /// The first id of a live idempotency key, if any.
    fn idempotent(&self, function: &str, key: &str) -> Result<Option<ActivationId>, QueueError> {
        let mut stmt = self.db(self
            .conn
            .prepare_cached("SELECT id FROM idempotency WHERE function = ?1 AND key = ?2 AND expires_ms > ?3"))?;
        let id: Option<String> = self.db(stmt.query_row(params![function, key, self.now], |r| r.get(0)).optional())?;
        match id {
            None => Ok(None),
            Some(text) => ActivationId::parse(&text).map(Some).ok_or_else(|| QueueError::Corrupt {
                what: format!("idempotency key of function `{function}`"),
                detail: format!("`{text}` is not an activation id"),
            }),
        }
    }

    fn hold_key(&self, function: &str, key: &str, id: &ActivationId, window: Duration) -> Result<(), QueueError> {
        let expires = self.now.saturating_add(i64::try_from(window.as_millis()).unwrap_or(i64::MAX));
        let mut stmt = self.db(self.conn.prepare_cached(
            "INSERT OR REPLACE INTO idempotency (function, key, id, expires_ms) VALUES (?1, ?2, ?3, ?4)",
        ))?;
        self.db(stmt.execute(params![function, key, id.as_str(), expires]))?;
        Ok(())
    }
}

/// SQL appending the JSON error `?3` to `errors`, keeping the newest [`MAX_ERRORS`].
const APPEND_ERROR: &str = "json_insert(
        CASE WHEN json_array_length(errors) >= 32 THEN json_remove(errors, '$[0]') ELSE errors END,
        '$[#]', json(?3))";
const _: () = assert!(MAX_ERRORS == 32, "APPEND_ERROR spells MAX_ERRORS out");

/// SQL making a dead item ready again as a redrive (`?1`: now).
const REDRIVE_SET: &str =
    "state = 0, due_ms = ?1, not_before_ms = ?1, attempt = 1, invocation = json_set(invocation, '$.cause', 'redrive')";

/// The delta of one item leaving (`sign` -1) or entering (+1) `state`.
fn from_state(state: i64, sign: i64) -> Delta {
    let mut d = [0; 3];
    d[state.clamp(0, 2) as usize] = sign;
    d
}

/// `error` as stored: its attempt filled in, its message cut to size.
fn error_json(error: AttemptError, attempt: u32) -> String {
    let mut error = error.kept(attempt);
    if !error.duration_ms.is_finite() {
        error.duration_ms = 0.0;
    }
    serde_json::to_string(&error).unwrap_or_else(|_| "{}".into())
}
