//! [`SqliteQueue`]: the embedded [`Queue`], its own SQLite file.
//!
//! Durability: WAL with `synchronous = FULL`, so a commit is on disk (the
//! log fsync'd) before any caller hears `Ok`. Throughput comes from group
//! commit: one writer thread (`writer.rs`) owns the only writing
//! connection and runs everything that arrived while it was busy in one
//! transaction, so one fsync covers up to [`QueueConfig::max_batch`]
//! requests. Reads (`item`, `items`, `ready_functions`, `next_due_ms`) use a
//! second connection and see the last commit without waiting for the writer
//! (WAL lets one writer and readers work at once). `depth` comes from
//! per-function counts the writer keeps in memory (loaded at open), which
//! is also how `max_queued` is enforced without a `COUNT(*)` per enqueue.
//!
//! At open, every leased item is made ready again: the process that held
//! the leases is gone (a file lock keeps a second process from opening the
//! same queue), so those invocations may or may not have run, and running
//! them again is the at-least-once promise.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use flick_core::{ActivationId, Invocation, now_ms};
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, Row};
use tokio::sync::{mpsc, oneshot, watch};

use crate::writer::{Answer, Op, Request, Writer};
use crate::{AttemptError, Depth, EnqueueOptions, Enqueued, Item, ItemState, Queue, QueueError, READY_COUNT_CAP};

/// Schema migrations in order: entry `i` takes `user_version` from `i` to
/// `i + 1`. Append only; never edit a migration that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: items and idempotency keys.
    "
    -- `due_ms` is the one time the dispatcher orders by: a ready item's
    -- not-before time, a leased item's lease end (when it is handed out
    -- again), a dead item's time of death. The invocation is JSON without
    -- its body; the body is a blob (no base64 on disk).
    CREATE TABLE items (
        seq           INTEGER PRIMARY KEY,
        id            TEXT NOT NULL UNIQUE,
        function      TEXT NOT NULL,
        state         INTEGER NOT NULL,
        due_ms        INTEGER NOT NULL,
        not_before_ms INTEGER NOT NULL,
        attempt       INTEGER NOT NULL,
        max_attempts  INTEGER NOT NULL,
        deliveries    INTEGER NOT NULL DEFAULT 0,
        enqueued_ms   INTEGER NOT NULL,
        invocation    TEXT NOT NULL,
        body          BLOB NOT NULL,
        errors        TEXT NOT NULL DEFAULT '[]'
    );
    -- Partial indexes: the dispatcher's scans never walk dead letters, and
    -- dead-letter listings and trimming never walk the backlog.
    CREATE INDEX items_due ON items(function, due_ms, seq) WHERE state < 2;
    CREATE INDEX items_next ON items(due_ms) WHERE state < 2;
    CREATE INDEX items_dead ON items(function, due_ms, seq) WHERE state = 2;
    CREATE TABLE idempotency (
        function   TEXT NOT NULL,
        key        TEXT NOT NULL,
        id         TEXT NOT NULL,
        expires_ms INTEGER NOT NULL,
        PRIMARY KEY (function, key)
    ) WITHOUT ROWID;
    CREATE INDEX idempotency_expires ON idempotency(expires_ms);
    ",
];

/// How long a statement waits for another connection holding the database
/// (a backup, an `sqlite3` shell) before failing with `Busy`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The write-ahead log is checkpointed once it holds this many pages (4 KiB
/// each: 4 MiB), and cut back to [`WAL_SIZE_LIMIT`] when it restarts.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 1000;
const WAL_SIZE_LIMIT: i64 = 4 << 20;

/// Requests waiting for the writer; beyond this, callers wait to send
/// (backpressure instead of unbounded memory).
const CHANNEL_CAPACITY: usize = 16 * 1024;

/// The queue's knobs (defaults fit `flick up`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Dead letters kept per function. When one more item dies, the
    /// function's oldest dead letters beyond this are deleted (with a
    /// warning), so a flood of failing events cannot fill the disk.
    pub max_dead_per_function: u64,
    /// Requests committed together in one transaction (one fsync), at most.
    pub max_batch: usize,
    /// A cap on the database's size (SQLite's `max_page_count`): beyond
    /// it, writes fail with [`QueueError::DiskFull`] as if the disk were
    /// full (nothing of them stored) until acks and purges free pages.
    /// `None`: the file system is the limit.
    pub max_bytes: Option<u64>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self { max_dead_per_function: 10_000, max_batch: 1024, max_bytes: None }
    }
}

/// State the writer publishes for the async side: counts after each
/// commit, and the change counter dispatchers wait on.
pub(crate) struct Shared {
    pub(crate) path: String,
    pub(crate) counts: Mutex<HashMap<String, Depth>>,
    pub(crate) changes: watch::Sender<u64>,
    pub(crate) stats: WriterCounters,
    pub(crate) clock: Clock,
}

/// The queue's time: the wall clock (ms since the epoch), except that it
/// never goes back. Items are due at the time they were accepted, so if
/// the system clock were stepped back an hour, an hour of accepted items
/// would wait for it to catch up; instead the queue's time stands still
/// until it does (retries and lease expiries are late by that much, never
/// fresh items). Carried across restarts by the newest item's stamp. A
/// wall clock more than [`MAX_STANDSTILL_MS`] behind is taken as it is
/// (a clock that had been set far ahead, now corrected): standing still
/// for longer would hold every retry and expired lease that long.
pub(crate) struct Clock(AtomicI64);

/// How far the queue's time may run ahead of the wall clock (a day).
const MAX_STANDSTILL_MS: i64 = 24 * 3600 * 1000;

impl Clock {
    pub(crate) fn now(&self) -> i64 {
        let wall = now_ms();
        let ahead = self.0.load(Ordering::Relaxed);
        if ahead - wall > MAX_STANDSTILL_MS {
            tracing::warn!(ahead_ms = ahead - wall, "the system clock went back more than a day: the queue follows it");
            self.0.store(wall, Ordering::Relaxed);
            return wall;
        }
        self.0.fetch_max(wall, Ordering::Relaxed).max(wall)
    }
}

/// Running totals of the writer (diagnostics and the benchmark).
#[derive(Default)]
pub(crate) struct WriterCounters {
    pub(crate) batches: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) busy_us: AtomicU64,
    pub(crate) commit_us: AtomicU64,
}

/// What the writer has done since the queue was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions run (each one fsync when it changed something).
    pub batches: u64,
    /// Requests answered (requests ÷ batches is the mean group size).
    pub requests: u64,
    /// Time spent in batches, from `BEGIN` to the last answer (µs).
    pub busy_us: u64,
    /// Of which in `COMMIT` (the fsync), µs.
    pub commit_us: u64,
}

/// The embedded queue. Cheap to clone (all clones share one writer).
#[derive(Clone)]
pub struct SqliteQueue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteQueue").field("path", &self.inner.shared.path).finish()
    }
}

struct Inner {
    shared: Arc<Shared>,
    /// `None` once dropping: closing the channel stops the writer.
    tx: Option<mpsc::Sender<Request>>,
    writer: Option<std::thread::JoinHandle<()>>,
    reader: Mutex<Connection>,
    /// Held (flock) for the queue's lifetime: one process per queue file,
    /// because opening resets every lease.
    _lock: std::fs::File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Close the channel and wait for the writer to finish its batch and
        // close its connection, so the file can be opened again at once.
        self.tx.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl SqliteQueue {
    /// Opens the queue at `path` with the default [`QueueConfig`].
    pub fn open(path: &Path) -> Result<Self, QueueError> {
        Self::open_with(path, QueueConfig::default())
    }

    /// Opens (creating it and its directory, mode 0600) the queue at
    /// `path`, brings its schema up to date, makes leased items ready again
    /// and starts the writer thread.
    pub fn open_with(path: &Path, config: QueueConfig) -> Result<Self, QueueError> {
        let label = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| QueueError::io("create", dir, e))?;
        }
        let lock = private_db_files(path)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(QueueError::Locked { path: label }),
            Err(std::fs::TryLockError::Error(e)) => return Err(QueueError::io("lock", path, e)),
        }
        let open_err = |e: rusqlite::Error| match QueueError::sqlite(&label, &e) {
            e @ (QueueError::DiskFull { .. } | QueueError::Busy { .. }) => e,
            _ => QueueError::Open { path: label.clone(), detail: e.to_string() },
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // Incremental auto-vacuum must be chosen before the first table
        // exists; it lets the writer hand a drained backlog's pages back.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL").map_err(open_err)?;
        let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)).map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(QueueError::Open { path: label, detail: format!("journal mode is {mode}, not WAL") });
        }
        // FULL: the log is fsync'd at every commit, so an acknowledged
        // enqueue survives power loss too, not only a crash of flick.
        conn.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES).map_err(open_err)?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT).map_err(open_err)?;
        // Request bodies may hold secrets: acked rows are overwritten where
        // that costs no extra I/O (FAST), not left readable in free space.
        conn.pragma_update(None, "secure_delete", "FAST").map_err(open_err)?;
        conn.set_prepared_statement_cache_capacity(64);
        migrate(&mut conn, &label)?;
        if let Some(max) = config.max_bytes {
            let page: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0)).map_err(open_err)?;
            let pages = i64::try_from(max).unwrap_or(i64::MAX) / page.max(512);
            // SQLite never sets it below the current size; it only stops growth.
            conn.pragma_update(None, "max_page_count", pages.max(1)).map_err(open_err)?;
        }
        let (counts, clock) = recover(&conn, &label)?;

        let reader = Connection::open(path).map_err(open_err)?;
        reader.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        reader.pragma_update(None, "query_only", true).map_err(open_err)?;

        let shared = Arc::new(Shared {
            path: label.clone(),
            counts: Mutex::new(counts.clone()),
            changes: watch::Sender::new(0),
            stats: WriterCounters::default(),
            clock: Clock(AtomicI64::new(clock)),
        });
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let writer = Writer::new(conn, counts, Arc::clone(&shared), config);
        let writer = std::thread::Builder::new()
            .name("flick-queue-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| QueueError::Open { path: label, detail: format!("start the writer thread: {e}") })?;
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                tx: Some(tx),
                writer: Some(writer),
                reader: Mutex::new(reader),
                _lock: lock,
            }),
        })
    }

    /// The writer's running totals: batches, requests, time.
    pub fn writer_stats(&self) -> WriterStats {
        let s = &self.inner.shared.stats;
        WriterStats {
            batches: s.batches.load(Ordering::Relaxed),
            requests: s.requests.load(Ordering::Relaxed),
            busy_us: s.busy_us.load(Ordering::Relaxed),
            commit_us: s.commit_us.load(Ordering::Relaxed),
        }
    }

    /// The database file.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(&self.inner.shared.path)
    }

    fn closed(&self) -> QueueError {
        QueueError::Closed { path: self.inner.shared.path.clone() }
    }

    /// Hands `op` to the writer and waits for its committed answer.
    async fn write(&self, op: Op) -> Result<Answer, QueueError> {
        let (reply, answer) = oneshot::channel();
        let tx = self.inner.tx.as_ref().ok_or_else(|| self.closed())?;
        tx.send(Request { op, reply }).await.map_err(|_| self.closed())?;
        answer.await.map_err(|_| self.closed())?
    }

    /// Runs `f` with the reading connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &str) -> Result<T, QueueError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner.reader.lock(), &inner.shared.path)).await.map_err(|e| {
            QueueError::Database { path: self.inner.shared.path.clone(), code: None, detail: e.to_string() }
        })?
    }
}

fn private_db_files(path: &Path) -> Result<std::fs::File, QueueError> {
    flick_sqlite::private_db_files(path).map_err(|e| QueueError::io(e.action, &e.path, e.source))
}

fn migrate(conn: &mut Connection, label: &str) -> Result<(), QueueError> {
    flick_sqlite::migrate(conn, MIGRATIONS, label, "queue").map_err(|e| match e {
        flick_sqlite::MigrateError::TooNew { found, supported } => {
            QueueError::SchemaTooNew { path: label.into(), found, supported }
        }
        flick_sqlite::MigrateError::Sqlite(e) => QueueError::sqlite(label, &e),
    })
}

/// Makes every leased item ready again (their dispatcher died with the
/// last process) and counts the items of each function.
/// Returns them with the queue's clock (see [`Clock`]).
fn recover(conn: &Connection, label: &str) -> Result<(HashMap<String, Depth>, i64), QueueError> {
    let err = |e: rusqlite::Error| QueueError::sqlite(label, &e);
    // The newest item was stamped with the clock as it last was.
    let newest: Option<i64> = conn
        .query_row("SELECT enqueued_ms FROM items ORDER BY seq DESC LIMIT 1", [], |r| r.get(0))
        .optional()
        .map_err(err)?;
    let now = now_ms().max(newest.unwrap_or(0));
    let reclaimed = conn.execute("UPDATE items SET state = 0, due_ms = ?1 WHERE state = 1", [now]).map_err(err)?;
    if reclaimed > 0 {
        tracing::warn!(
            path = label,
            items = reclaimed,
            "invocations leased when flick stopped are queued again (they may have run: at-least-once)"
        );
    }
    let mut counts: HashMap<String, Depth> = HashMap::new();
    let mut stmt = conn.prepare("SELECT function, state, count(*) FROM items GROUP BY function, state").map_err(err)?;
    let rows =
        stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))).map_err(err)?;
    for row in rows {
        let (function, state, n) = row.map_err(err)?;
        let depth = counts.entry(function).or_default();
        match ItemState::from_code(state) {
            Some(ItemState::Ready) => depth.ready += n as u64,
            Some(ItemState::Leased) => depth.leased += n as u64,
            Some(ItemState::Dead) => depth.dead += n as u64,
            None => {
                return Err(QueueError::Corrupt {
                    what: "item state".into(),
                    detail: format!("unknown state {state}"),
                });
            }
        }
    }
    Ok((counts, now))
}

/// The columns [`decode_item`] reads, in order.
pub(crate) const ITEM_COLUMNS: &str = "id, state, due_ms, not_before_ms, attempt, max_attempts, deliveries, enqueued_ms, invocation, body, errors, function";

/// Fields of a stored invocation's JSON that live in columns of their own
/// (or, for `body`, as a blob): left out of the JSON, put back on reading.
const COLUMN_FIELDS: [&str; 4] = ["id", "function", "body", "attempt"];

/// An invocation (its body already taken out) as stored: JSON without the
/// fields that have columns and without nulls (absent means the same to
/// its deserialiser), about a quarter fewer bytes to write and fsync per
/// item than its full JSON.
fn encode_invocation(inv: &Invocation) -> Result<String, QueueError> {
    let invalid = |e: serde_json::Error| QueueError::Invalid { what: "invocation", detail: e.to_string() };
    let mut value = serde_json::to_value(inv).map_err(invalid)?;
    if let serde_json::Value::Object(fields) = &mut value {
        fields.retain(|name, v| !v.is_null() && !COLUMN_FIELDS.contains(&name.as_str()));
    }
    serde_json::to_string(&value).map_err(invalid)
}

/// One row as an [`Item`]; a row that does not decode is `Err(Corrupt)`
/// inside the rusqlite result (so a caller can skip or bury just that row).
pub(crate) fn decode_item(row: &Row<'_>) -> rusqlite::Result<Result<Item, QueueError>> {
    decode_item_at(row, 0)
}

/// [`decode_item`] on a row whose item columns start at column `at`.
pub(crate) fn decode_item_at(row: &Row<'_>, at: usize) -> rusqlite::Result<Result<Item, QueueError>> {
    let id: String = row.get(at)?;
    let state: i64 = row.get(at + 1)?;
    let due_ms: i64 = row.get(at + 2)?;
    let not_before_ms: i64 = row.get(at + 3)?;
    let attempt: u32 = row.get(at + 4)?;
    let max_attempts: u32 = row.get(at + 5)?;
    let deliveries: u32 = row.get(at + 6)?;
    let enqueued_ms: i64 = row.get(at + 7)?;
    let json: String = row.get(at + 8)?;
    let body: Vec<u8> = row.get(at + 9)?;
    let errors: String = row.get(at + 10)?;
    let function: String = row.get(at + 11)?;
    let corrupt = |what: &str, detail: String| QueueError::Corrupt { what: format!("{what} of item {id}"), detail };
    let Some(state) = ItemState::from_code(state) else {
        return Ok(Err(corrupt("state", format!("unknown state {state}"))));
    };
    // The column fields go back in (rows written before they were left
    // out carry them in the JSON too: the columns win).
    let fields = match serde_json::from_str::<serde_json::Value>(&json) {
        Ok(serde_json::Value::Object(mut fields)) => {
            fields.insert("id".into(), id.clone().into());
            fields.insert("function".into(), function.into());
            fields.insert("body".into(), "".into());
            fields.insert("attempt".into(), attempt.into());
            serde_json::Value::Object(fields)
        }
        Ok(_) => return Ok(Err(corrupt("invocation", "not a JSON object".into()))),
        Err(e) => return Ok(Err(corrupt("invocation", e.to_string()))),
    };
    let mut invocation: Invocation = match serde_json::from_value(fields) {
        Ok(inv) => inv,
        Err(e) => return Ok(Err(corrupt("invocation", e.to_string()))),
    };
    let errors: Vec<AttemptError> = match serde_json::from_str(&errors) {
        Ok(errors) => errors,
        Err(e) => return Ok(Err(corrupt("errors", e.to_string()))),
    };
    invocation.body = body;
    invocation.attempt = attempt;
    Ok(Ok(Item {
        invocation,
        max_attempts,
        state,
        not_before_ms,
        lease_until_ms: (state == ItemState::Leased).then_some(due_ms),
        dead_ms: (state == ItemState::Dead).then_some(due_ms),
        deliveries,
        errors,
        enqueued_ms,
    }))
}

fn db<T>(path: &str, r: rusqlite::Result<T>) -> Result<T, QueueError> {
    r.map_err(|e| QueueError::sqlite(path, &e))
}

fn unexpected(path: &str, op: &str) -> QueueError {
    QueueError::Database { path: path.into(), code: None, detail: format!("writer answered {op} with another kind") }
}

#[async_trait]
impl Queue for SqliteQueue {
    async fn enqueue(&self, mut inv: Invocation, opts: EnqueueOptions) -> Result<Enqueued, QueueError> {
        if inv.function.is_empty() {
            return Err(QueueError::Invalid { what: "function name", detail: "it is empty".into() });
        }
        if let Some((key, _)) = &opts.idempotency {
            crate::check_key(key)?;
        }
        // Serialised here, on the caller's task, so the writer thread only
        // writes: it is the one thread every enqueue waits on.
        let body = std::mem::take(&mut inv.body);
        let json = encode_invocation(&inv)?;
        let op = Op::Enqueue { id: inv.id, function: inv.function, attempt: inv.attempt.max(1), json, body, opts };
        match self.write(op).await? {
            Answer::Enqueued(e) => Ok(e),
            _ => Err(unexpected(&self.inner.shared.path, "enqueue")),
        }
    }

    async fn lease(&self, function: &str, n: usize, lease_for: Duration) -> Result<Vec<Item>, QueueError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let lease_ms = i64::try_from(lease_for.as_millis()).unwrap_or(i64::MAX / 4).max(1);
        match self.write(Op::Lease { function: function.into(), n: n.min(10_000), lease_ms }).await? {
            Answer::Items(items) => Ok(items),
            _ => Err(unexpected(&self.inner.shared.path, "lease")),
        }
    }

    async fn ready_functions(&self) -> Result<Vec<(String, u64)>, QueueError> {
        // Only functions with ready or leased items can have due ones; the
        // counts in memory say which, so this never scans the whole table.
        let candidates: Vec<String> = {
            let counts = self.inner.shared.counts.lock();
            let mut names: Vec<String> =
                counts.iter().filter(|(_, d)| d.queued() > 0).map(|(f, _)| f.clone()).collect();
            names.sort();
            names
        };
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.inner.shared.clock.now();
        self.read(move |conn, path| {
            let mut stmt = db(
                path,
                conn.prepare_cached(
                    "SELECT count(*) FROM (SELECT 1 FROM items
                     WHERE function = ?1 AND state < 2 AND due_ms <= ?2 LIMIT ?3)",
                ),
            )?;
            let mut out = Vec::new();
            for function in candidates {
                let n: i64 =
                    db(path, stmt.query_row(rusqlite::params![function, now, READY_COUNT_CAP as i64], |r| r.get(0)))?;
                if n > 0 {
                    out.push((function, n as u64));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn next_due_ms(&self) -> Result<Option<i64>, QueueError> {
        self.read(|conn, path| {
            db(path, conn.query_row("SELECT min(due_ms) FROM items WHERE state < 2", [], |r| r.get(0)))
        })
        .await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.shared.changes.subscribe()
    }

    async fn ack(&self, id: &ActivationId) -> Result<bool, QueueError> {
        self.write_bool(Op::Ack { id: id.clone() }, "ack").await
    }

    async fn nack(&self, id: &ActivationId, retry_at_ms: i64, error: AttemptError) -> Result<bool, QueueError> {
        self.write_bool(Op::Nack { id: id.clone(), retry_at_ms, error }, "nack").await
    }

    async fn dead(&self, id: &ActivationId, error: AttemptError) -> Result<bool, QueueError> {
        self.write_bool(Op::Dead { id: id.clone(), error }, "dead").await
    }

    async fn redrive(&self, id: &ActivationId) -> Result<bool, QueueError> {
        self.write_bool(Op::Redrive { id: id.clone() }, "redrive").await
    }

    async fn redrive_all(&self, function: Option<&str>) -> Result<u64, QueueError> {
        self.write_count(Op::RedriveAll { function: function.map(str::to_owned) }, "redrive_all").await
    }

    async fn purge_dead(&self, function: Option<&str>) -> Result<u64, QueueError> {
        self.write_count(Op::PurgeDead { function: function.map(str::to_owned) }, "purge_dead").await
    }

    async fn item(&self, id: &ActivationId) -> Result<Option<Item>, QueueError> {
        let id = id.clone();
        self.read(move |conn, path| {
            let sql = format!("SELECT {ITEM_COLUMNS} FROM items WHERE id = ?1");
            let mut stmt = db(path, conn.prepare_cached(&sql))?;
            db(path, stmt.query_row([id.as_str()], decode_item).optional())?.transpose()
        })
        .await
    }

    async fn items(
        &self,
        function: Option<&str>,
        state: Option<ItemState>,
        limit: u32,
    ) -> Result<Vec<Item>, QueueError> {
        let function = function.map(str::to_owned);
        let limit = i64::from(limit.clamp(1, 1000));
        self.read(move |conn, path| {
            // Spelled out per case so SQLite can use the partial indexes
            // (it only does when the query names their condition).
            let filter = match state {
                None => "1",
                Some(ItemState::Dead) => "state = 2",
                Some(_) => "state < 2 AND state = ?2",
            };
            let function_filter = if function.is_some() { "function = ?1" } else { "?1 IS NULL" };
            let sql =
                format!("SELECT {ITEM_COLUMNS} FROM items WHERE {function_filter} AND {filter} ORDER BY seq LIMIT ?3");
            let mut stmt = db(path, conn.prepare_cached(&sql))?;
            let code = state.map(ItemState::code).unwrap_or(-1);
            let rows = db(path, stmt.query_map(rusqlite::params![function, code, limit], decode_item))?;
            let mut out = Vec::new();
            for row in rows {
                out.push(db(path, row)??);
            }
            Ok(out)
        })
        .await
    }

    async fn depth(&self, function: &str) -> Result<Depth, QueueError> {
        Ok(self.inner.shared.counts.lock().get(function).copied().unwrap_or_default())
    }

    async fn remove_function(&self, function: &str) -> Result<u64, QueueError> {
        self.write_count(Op::RemoveFunction { function: function.into() }, "remove_function").await
    }

    async fn claim_idempotency(
        &self,
        function: &str,
        key: &str,
        id: &ActivationId,
        window: Duration,
    ) -> Result<Option<ActivationId>, QueueError> {
        crate::check_key(key)?;
        let op = Op::Claim { function: function.into(), key: key.into(), id: id.clone(), window };
        match self.write(op).await? {
            Answer::Claimed(first) => Ok(first),
            _ => Err(unexpected(&self.inner.shared.path, "claim_idempotency")),
        }
    }

    async fn prune(&self) -> Result<u64, QueueError> {
        self.write_count(Op::Prune, "prune").await
    }
}

impl SqliteQueue {
    async fn write_bool(&self, op: Op, name: &str) -> Result<bool, QueueError> {
        match self.write(op).await? {
            Answer::Bool(b) => Ok(b),
            _ => Err(unexpected(&self.inner.shared.path, name)),
        }
    }

    async fn write_count(&self, op: Op, name: &str) -> Result<u64, QueueError> {
        match self.write(op).await? {
            Answer::Count(n) => Ok(n),
            _ => Err(unexpected(&self.inner.shared.path, name)),
        }
    }
}
