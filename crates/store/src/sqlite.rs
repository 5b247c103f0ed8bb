//! [`SqliteStore`]: the embedded [`Store`], one SQLite file in the data directory.
//!
//! One connection behind a mutex does every write, which sidesteps SQLite's
//! writer contention entirely (records arrive in batches, see the platform's
//! record writer); activation records are read on a second connection, so a
//! read never waits behind a batch being written or retried (WAL lets one
//! writer and readers work at once). Every call runs on tokio's blocking pool
//! so the runtime threads never wait on disk.
//!
//! Space: the database uses incremental auto-vacuum, record inserts enforce
//! [`RecordLimits`] in their own transaction, [`Store::maintain`] hands
//! freed pages back to the file system and truncates the write-ahead log,
//! and `journal_size_limit` bounds the log between checkpoints.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use flick_core::{
    Activation, ActivationId, ActivationStatus, AttemptOutcome, CallbackOutcome, Cause, FunctionInfo, LogLine,
    Revision, now_ms,
};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use crate::{
    ActivationQuery, Inserted, Maintenance, NewRevision, PutOutcome, RecordLimits, Rule, RuleTrigger, Store,
    StoreError, UsageDay, logcodec,
};

/// Schema migrations in order: entry `i` takes `user_version` from `i` to
/// `i + 1`. Append only; never edit a migration that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: functions, revisions, activations.
    "
    CREATE TABLE functions (
        name             TEXT PRIMARY KEY NOT NULL,
        current_revision INTEGER NOT NULL,
        created_ms       INTEGER NOT NULL,
        updated_ms       INTEGER NOT NULL
    );
    CREATE TABLE revisions (
        function      TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
        number        INTEGER NOT NULL,
        hash          TEXT NOT NULL,
        manifest_json TEXT NOT NULL,
        created_ms    INTEGER NOT NULL,
        code_size     INTEGER NOT NULL,
        PRIMARY KEY (function, number)
    );
    -- No foreign key to functions: an invocation that finishes just after its
    -- function was deleted must still be able to write its record.
    CREATE TABLE activations (
        seq                INTEGER PRIMARY KEY AUTOINCREMENT,
        id                 TEXT NOT NULL UNIQUE,
        function           TEXT NOT NULL,
        revision           INTEGER NOT NULL,
        start_ms           INTEGER NOT NULL,
        end_ms             INTEGER NOT NULL,
        duration_ms        REAL NOT NULL,
        init_ms            REAL NOT NULL,
        wait_ms            REAL NOT NULL,
        cold               INTEGER NOT NULL,
        status             TEXT NOT NULL,
        http_status        INTEGER NOT NULL,
        response           TEXT NOT NULL,
        response_truncated INTEGER NOT NULL,
        logs_json          TEXT NOT NULL,
        logs_truncated     INTEGER NOT NULL,
        exec_ms            REAL NOT NULL,
        prewarmed          INTEGER NOT NULL
    );
    CREATE INDEX activations_function_seq ON activations(function, seq);
    CREATE INDEX activations_start_ms ON activations(start_ms);
    ",
    // 2: logs as a compact blob (see `logcodec`) instead of JSON, which
    // grew control characters sixfold. Old rows keep their JSON bytes (a
    // blob starting with `[`), which the decoder still reads.
    "
    ALTER TABLE activations ADD COLUMN logs BLOB NOT NULL DEFAULT x'';
    UPDATE activations SET logs = CAST(logs_json AS BLOB);
    ALTER TABLE activations DROP COLUMN logs_json;
    ",
    // 3: revision ids that never repeat (AUTOINCREMENT keeps the highest id
    // ever used even after every row is gone), the archive each revision
    // came from (to delete it with the revision) and the revision id of
    // each activation record.
    "
    CREATE TABLE revisions_v2 (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        function      TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
        number        INTEGER NOT NULL,
        hash          TEXT NOT NULL,
        manifest_json TEXT NOT NULL,
        created_ms    INTEGER NOT NULL,
        code_size     INTEGER NOT NULL,
        archive       TEXT,
        UNIQUE (function, number)
    );
    INSERT INTO revisions_v2 (function, number, hash, manifest_json, created_ms, code_size)
        SELECT function, number, hash, manifest_json, created_ms, code_size
        FROM revisions ORDER BY created_ms, function, number;
    DROP TABLE revisions;
    ALTER TABLE revisions_v2 RENAME TO revisions;
    ALTER TABLE activations ADD COLUMN revision_id INTEGER NOT NULL DEFAULT 0;
    ",
    // 4: what caused each activation (issue 9): cause, trigger, attempt n
    // of m with the earlier attempts' outcomes (JSON), and the parent
    // activation (sequences). Partial indexes: most records have no
    // trigger or parent, and those do not pay for the index.
    "
    ALTER TABLE activations ADD COLUMN cause TEXT NOT NULL DEFAULT 'http';
    ALTER TABLE activations ADD COLUMN trigger TEXT;
    ALTER TABLE activations ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE activations ADD COLUMN max_attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE activations ADD COLUMN attempts_json TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE activations ADD COLUMN parent TEXT;
    CREATE INDEX activations_cause_seq ON activations(cause, seq);
    CREATE INDEX activations_trigger_seq ON activations(trigger, seq) WHERE trigger IS NOT NULL;
    CREATE INDEX activations_parent_seq ON activations(parent, seq) WHERE parent IS NOT NULL;
    ",
    // 5: when the caller gave up on an invocation that ran on (NULL: it
    // waited for the answer).
    "
    ALTER TABLE activations ADD COLUMN caller_gave_up_ms REAL;
    ",
    // 6: the outcome of an async call's callback delivery (JSON), written
    // after the record itself.
    "
    ALTER TABLE activations ADD COLUMN callback_json TEXT;
    ",
    // 7: the last tick each cron trigger fired, with the schedule it
    // belonged to (flick-triggers' catch-up rule after downtime).
    "
    CREATE TABLE trigger_ticks (
        function TEXT NOT NULL,
        trigger  TEXT NOT NULL,
        schedule TEXT NOT NULL,
        tick_ms  INTEGER NOT NULL,
        PRIMARY KEY (function, trigger)
    );
    ",
    // 8: measured usage on each record (configured memory, CPU time,
    // memory peak), and the daily usage per function, kept apart from the
    // records so pruning them does not lose the bill.
    "
    ALTER TABLE activations ADD COLUMN memory_mb INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE activations ADD COLUMN cpu_ms REAL;
    ALTER TABLE activations ADD COLUMN memory_peak_bytes INTEGER;
    CREATE TABLE usage_daily (
        function      TEXT NOT NULL,
        day           TEXT NOT NULL,
        invocations   INTEGER NOT NULL,
        errors        INTEGER NOT NULL,
        cold_starts   INTEGER NOT NULL,
        billed_ms     INTEGER NOT NULL,
        billed_mib_ms INTEGER NOT NULL,
        measured_byte_ms REAL NOT NULL,
        cpu_ms        REAL NOT NULL,
        PRIMARY KEY (function, day)
    ) WITHOUT ROWID;
    ",
    // 9: triggers that fire rules, and the rules (OpenWhisk's model, made
    // through its API). JSON columns hold what only the surface reads.
    "
    CREATE TABLE rule_triggers (
        name             TEXT PRIMARY KEY NOT NULL,
        params_json      TEXT NOT NULL,
        annotations_json TEXT NOT NULL,
        feed_json        TEXT,
        created_ms       INTEGER NOT NULL,
        updated_ms       INTEGER NOT NULL
    );
    CREATE TABLE rules (
        name             TEXT PRIMARY KEY NOT NULL,
        trigger          TEXT NOT NULL,
        action           TEXT NOT NULL,
        active           INTEGER NOT NULL,
        annotations_json TEXT NOT NULL,
        created_ms       INTEGER NOT NULL,
        updated_ms       INTEGER NOT NULL
    );
    CREATE INDEX rules_trigger ON rules(trigger);
    ",
    // 10: the W3C trace of each call (ids as lowercase hex).
    "
    ALTER TABLE activations ADD COLUMN trace_id TEXT;
    ALTER TABLE activations ADD COLUMN span_id TEXT;
    ALTER TABLE activations ADD COLUMN parent_span_id TEXT;
    ALTER TABLE activations ADD COLUMN traceparent TEXT;
    ",
];

/// How long a statement waits for another process holding the database
/// (e.g. a backup or `sqlite3` shell) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

/// The write-ahead log is checkpointed once it holds this many pages (4 KiB
/// each: 4 MiB), and cut back to [`WAL_SIZE_LIMIT`] when it restarts.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 1000;
const WAL_SIZE_LIMIT: u64 = 4 << 20;

/// Freed pages up to this many are left for the next inserts to reuse;
/// beyond it, [`Store::maintain`] gives them back to the file system.
const KEEP_FREE_PAGES: i64 = 256;
/// Pages one maintenance pass vacuums: moved pages go through the WAL, so
/// this bounds the log's growth per pass (8 MiB at 4 KiB pages).
const VACUUM_STEP_PAGES: i64 = 2048;

/// Per-record bytes on top of response and logs (columns, index entries),
/// for estimating how much room a batch needs. Errs high, so a batch fits.
const RECORD_OVERHEAD: u64 = 512;

#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// Every write, and reads of functions and revisions.
    conn: Arc<Mutex<Connection>>,
    /// Reads of activation records: never queued behind the writer.
    reader: Arc<Mutex<Connection>>,
    /// Members and leases of a cluster of one.
    local: Arc<crate::cluster::Local>,
}

impl SqliteStore {
    /// Opens the database at `path`, creating it (and its directory) and
    /// bringing its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::io("create", dir, e))?;
        }
        private_db_files(path)?;
        let label = path.display().to_string();
        let open_err = |source| StoreError::Open { path: label.clone(), source };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // Freed pages can only be handed back to the file system with
        // auto-vacuum, which must be chosen before the first table exists;
        // a database made without it is converted by one VACUUM below.
        let auto_vacuum: i64 = conn.pragma_query_value(None, "auto_vacuum", |r| r.get(0)).map_err(open_err)?;
        let converting = auto_vacuum != AUTO_VACUUM_INCREMENTAL;
        if converting {
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL").map_err(open_err)?;
        }
        // WAL lets readers (`sqlite3` on a live server, backups) work during
        // writes; NORMAL sync in WAL mode can lose the last commits on power
        // loss but never corrupts, a fair trade for activation logs, and a
        // process crash loses nothing committed.
        let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)).map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %label, mode, "database did not switch to WAL journal mode");
        }
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(open_err)?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES).map_err(open_err)?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT as i64).map_err(open_err)?;
        let fresh = conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0)).map_err(open_err)? == 0
            && conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get::<_, i64>(0)).map_err(open_err)? == 0;
        let conn = Self::init_conn(conn, &label)?;
        if converting && !fresh {
            convert_to_incremental_vacuum(&conn, &label);
        }
        let reader = Connection::open(path).map_err(open_err)?;
        reader.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        reader.pragma_update(None, "query_only", true).map_err(open_err)?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)), reader: Arc::new(Mutex::new(reader)), local: Arc::default() })
    }

    /// A private database that lives as long as the store (for tests).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let conn =
            Connection::open_in_memory().map_err(|source| StoreError::Open { path: ":memory:".into(), source })?;
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(|source| StoreError::Open { path: ":memory:".into(), source })?;
        let conn = Arc::new(Mutex::new(Self::init_conn(conn, ":memory:")?));
        // A second connection would open a different, empty database.
        Ok(Self { conn: conn.clone(), reader: conn, local: Arc::default() })
    }

    fn init_conn(mut conn: Connection, label: &str) -> Result<Connection, StoreError> {
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(|source| StoreError::Open { path: label.into(), source })?;
        // Deleted rows are overwritten, not left in free pages: a deleted
        // function's environment and records must not stay on disk.
        conn.pragma_update(None, "secure_delete", true)
            .map_err(|source| StoreError::Open { path: label.into(), source })?;
        migrate(&mut conn, label).map_err(|e| match e {
            StoreError::Sqlite(source) => StoreError::Open { path: label.into(), source },
            e => e,
        })?;
        Ok(conn)
    }

    /// Runs `f` with the reading connection on the blocking pool.
    async fn with_reader<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.reader);
        tokio::task::spawn_blocking(move || f(&mut conn.lock().unwrap_or_else(PoisonError::into_inner)))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic mid-call leaves the connection usable (an open
            // transaction rolls back on drop), so poisoning is not fatal.
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// Owner-only `flick.db` (and `-wal`/`-shm`) before SQLite opens it: it
/// holds environment values, responses and logs.
fn private_db_files(path: &Path) -> Result<(), StoreError> {
    flick_sqlite::private_db_files(path).map(drop).map_err(|e| StoreError::io(e.action, &e.path, e.source))
}

/// `PRAGMA auto_vacuum` value of incremental mode.
const AUTO_VACUUM_INCREMENTAL: i64 = 2;

/// Rewrites a database made before flick used auto-vacuum so that it has
/// it (and gives back whatever space it had freed): once, at the first
/// start of a flick that wants it. Failing here (a full disk: VACUUM needs
/// room for a copy) costs only the reclaiming, so it is a warning, and the
/// next start tries again.
fn convert_to_incremental_vacuum(conn: &Connection, label: &str) {
    let size = |conn: &Connection| -> rusqlite::Result<i64> {
        let pages: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
        let page: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        Ok(pages * page)
    };
    let before = size(conn).unwrap_or(0);
    tracing::info!(path = label, bytes = before, "converting the database to incremental vacuum (one VACUUM)");
    match conn.execute_batch("VACUUM").and_then(|()| size(conn)) {
        Ok(after) => tracing::info!(path = label, before, after, "database converted to incremental vacuum"),
        Err(e) => tracing::warn!(path = label, error = %e, "could not VACUUM the database; will try at the next start"),
    }
}

const RULE_TRIGGER_SELECT: &str =
    "SELECT name, params_json, annotations_json, feed_json, created_ms, updated_ms FROM rule_triggers";
const RULE_SELECT: &str = "SELECT name, trigger, action, active, annotations_json, created_ms, updated_ms FROM rules";

fn json_column(what: &str, text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt { what: what.into(), detail: e.to_string() })
}

/// A row of `rule_triggers` (the outer error: SQLite's; the inner: a JSON
/// column that does not parse).
fn rule_trigger_row(r: &Row<'_>) -> rusqlite::Result<Result<RuleTrigger, StoreError>> {
    let name: String = r.get(0)?;
    let (params, annotations, feed): (String, String, Option<String>) = (r.get(1)?, r.get(2)?, r.get(3)?);
    let (created_ms, updated_ms) = (r.get(4)?, r.get(5)?);
    Ok((|| {
        Ok(RuleTrigger {
            params: match json_column("trigger parameters", &params)? {
                serde_json::Value::Object(m) => m,
                _ => {
                    return Err(StoreError::Corrupt {
                        what: "trigger parameters".into(),
                        detail: "not an object".into(),
                    });
                }
            },
            annotations: json_column("trigger annotations", &annotations)?,
            feed: feed.as_deref().map(|f| json_column("trigger feed", f)).transpose()?,
            name,
            created_ms,
            updated_ms,
        })
    })())
}

fn rule_row(r: &Row<'_>) -> rusqlite::Result<Result<Rule, StoreError>> {
    let annotations: String = r.get(4)?;
    let rule = Rule {
        name: r.get(0)?,
        trigger: r.get(1)?,
        action: r.get(2)?,
        active: r.get(3)?,
        annotations: serde_json::Value::Null,
        created_ms: r.get(5)?,
        updated_ms: r.get(6)?,
    };
    Ok(json_column("rule annotations", &annotations).map(|annotations| Rule { annotations, ..rule }))
}

fn migrate(conn: &mut Connection, label: &str) -> Result<(), StoreError> {
    flick_sqlite::migrate(conn, MIGRATIONS, label, "database").map_err(|e| match e {
        flick_sqlite::MigrateError::TooNew { found, supported } => {
            StoreError::SchemaTooNew { path: label.into(), found, supported }
        }
        flick_sqlite::MigrateError::Sqlite(e) => e.into(),
    })
}

fn corrupt(what: String, detail: impl ToString) -> StoreError {
    StoreError::Corrupt { what, detail: detail.to_string() }
}

/// Row readers return the conversion result inside the rusqlite one, so a
/// bad JSON column becomes `Corrupt` naming the record rather than a generic
/// conversion error.
type Decoded<T> = rusqlite::Result<Result<T, StoreError>>;

fn flatten<T>(r: Decoded<T>) -> Result<T, StoreError> {
    r?
}

const REVISION_COLUMNS: &str = "id, function, number, hash, manifest_json, created_ms, code_size";

fn read_revision(row: &Row<'_>) -> Decoded<Revision> {
    let id: i64 = row.get(0)?;
    let function: String = row.get(1)?;
    let number: u32 = row.get(2)?;
    let json: String = row.get(4)?;
    let manifest = match serde_json::from_str(&json) {
        Ok(m) => m,
        Err(e) => return Ok(Err(corrupt(format!("manifest of `{function}` revision {number}"), e))),
    };
    Ok(Ok(Revision {
        id: id as u64,
        function,
        number,
        hash: row.get(3)?,
        manifest,
        created_ms: row.get(5)?,
        code_size: row.get(6)?,
    }))
}

fn load_revision(conn: &Connection, name: &str, number: u32) -> Result<Option<Revision>, StoreError> {
    conn.query_row(
        &format!("SELECT {REVISION_COLUMNS} FROM revisions WHERE function = ?1 AND number = ?2"),
        params![name, number],
        read_revision,
    )
    .optional()?
    .transpose()
}

const FUNCTION_SELECT: &str = "
    SELECT f.name, f.current_revision, f.created_ms, f.updated_ms,
           (SELECT MAX(number) FROM revisions WHERE function = f.name),
           r.hash, r.manifest_json
    FROM functions f
    LEFT JOIN revisions r ON r.function = f.name AND r.number = f.current_revision";

fn read_function(row: &Row<'_>) -> Decoded<FunctionInfo> {
    let name: String = row.get(0)?;
    let current_revision: u32 = row.get(1)?;
    let (latest, hash, json): (Option<u32>, Option<String>, Option<String>) = (row.get(4)?, row.get(5)?, row.get(6)?);
    let (Some(latest_revision), Some(hash), Some(json)) = (latest, hash, json) else {
        let what = format!("function `{name}`");
        return Ok(Err(corrupt(what, format!("current revision {current_revision} is missing"))));
    };
    let manifest: flick_core::Manifest = match serde_json::from_str(&json) {
        Ok(m) => m,
        Err(e) => return Ok(Err(corrupt(format!("manifest of `{name}` revision {current_revision}"), e))),
    };
    Ok(Ok(FunctionInfo {
        runtime: manifest.runtime,
        public: manifest.public,
        current_revision,
        latest_revision,
        hash,
        created_ms: row.get(2)?,
        updated_ms: row.get(3)?,
        name,
    }))
}

const ACTIVATION_COLUMNS: &str = "seq, id, function, revision, start_ms, end_ms, duration_ms, \
     init_ms, wait_ms, cold, status, http_status, response, response_truncated, logs, logs_truncated, exec_ms, prewarmed, \
     revision_id, cause, trigger, attempt, max_attempts, attempts_json, parent, caller_gave_up_ms, callback_json, \
     memory_mb, cpu_ms, memory_peak_bytes, trace_id, span_id, parent_span_id, traceparent";

fn read_activation(row: &Row<'_>) -> Decoded<Activation> {
    let seq: i64 = row.get(0)?;
    let id: String = row.get(1)?;
    let what = || format!("activation {id}");
    let Some(parsed_id) = ActivationId::parse(&id) else {
        return Ok(Err(corrupt(what(), "malformed id")));
    };
    let status: String = row.get(10)?;
    let Some(status) = ActivationStatus::parse(&status) else {
        return Ok(Err(corrupt(what(), format!("unknown status `{status}`"))));
    };
    let cause: String = row.get(19)?;
    let Some(cause) = Cause::parse(&cause) else {
        return Ok(Err(corrupt(what(), format!("unknown cause `{cause}`"))));
    };
    let attempts: String = row.get(23)?;
    let attempts: Vec<AttemptOutcome> = match serde_json::from_str(&attempts) {
        Ok(a) => a,
        Err(e) => return Ok(Err(corrupt(what(), format!("attempts: {e}")))),
    };
    let parent = match row.get::<_, Option<String>>(24)? {
        None => None,
        Some(p) => match ActivationId::parse(&p) {
            Some(p) => Some(p),
            None => return Ok(Err(corrupt(what(), "malformed parent id"))),
        },
    };
    let callback = match row.get::<_, Option<String>>(26)? {
        None => None,
        Some(text) => match serde_json::from_str(&text) {
            Ok(c) => Some(c),
            Err(e) => return Ok(Err(corrupt(what(), format!("callback: {e}")))),
        },
    };
    let blob: Vec<u8> = row.get(14)?;
    let logs: Vec<LogLine> = match logcodec::decode(&blob) {
        Ok(l) => l,
        Err(e) => return Ok(Err(corrupt(what(), format!("logs: {e}")))),
    };
    Ok(Ok(Activation {
        id: parsed_id,
        seq,
        function: row.get(2)?,
        revision: row.get(3)?,
        start_ms: row.get(4)?,
        end_ms: row.get(5)?,
        duration_ms: row.get(6)?,
        init_ms: row.get(7)?,
        wait_ms: row.get(8)?,
        cold: row.get(9)?,
        status,
        http_status: row.get(11)?,
        response: row.get(12)?,
        response_truncated: row.get(13)?,
        logs,
        logs_truncated: row.get(15)?,
        exec_ms: row.get(16)?,
        prewarmed: row.get(17)?,
        revision_id: row.get::<_, i64>(18)? as u64,
        cause,
        trigger: row.get(20)?,
        attempt: row.get(21)?,
        max_attempts: row.get(22)?,
        attempts,
        parent,
        caller_gave_up_ms: row.get(25)?,
        callback,
        memory_mb: row.get(27)?,
        cpu_ms: row.get(28)?,
        memory_peak_bytes: row.get::<_, Option<i64>>(29)?.map(|b| b.max(0) as u64),
        trace_id: row.get(30)?,
        span_id: row.get(31)?,
        parent_span_id: row.get(32)?,
        traceparent: row.get(33)?,
    }))
}

#[async_trait]
impl Store for SqliteStore {
    async fn heartbeat(
        &self,
        node: &crate::NodeRecord,
        expire_after: Duration,
    ) -> Result<Vec<crate::NodeRecord>, StoreError> {
        Ok(self.local.heartbeat(node, expire_after))
    }

    async fn nodes(&self) -> Result<Vec<crate::NodeRecord>, StoreError> {
        Ok(self.local.nodes())
    }

    async fn leave(&self, node_id: &str) -> Result<(), StoreError> {
        self.local.leave(node_id);
        Ok(())
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        Ok(self.local.acquire_lease(name, holder, ttl))
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.local.release_lease(name, holder);
        Ok(())
    }

    async fn setting(&self, name: &str, proposed: &str) -> Result<String, StoreError> {
        Ok(self.local.setting(name, proposed))
    }

    async fn put_revision(&self, new: NewRevision) -> Result<PutOutcome, StoreError> {
        self.with_conn(move |conn| {
            let name = new.manifest.name.as_str().to_string();
            let manifest_json =
                serde_json::to_string(&new.manifest).map_err(|e| corrupt(format!("manifest of `{name}`"), e))?;
            // IMMEDIATE takes the write lock up front: reading the current
            // revision and then writing must not interleave with another writer.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current: Option<u32> = tx
                .query_row("SELECT current_revision FROM functions WHERE name = ?1", [&name], |r| r.get(0))
                .optional()?;
            if let Some(number) = current {
                let rev = load_revision(&tx, &name, number)?.ok_or_else(|| {
                    corrupt(format!("function `{name}`"), format!("current revision {number} is missing"))
                })?;
                if rev.hash == new.hash {
                    return Ok(PutOutcome::Unchanged(rev));
                }
            }
            let number: u32 =
                tx.query_row("SELECT COALESCE(MAX(number), 0) + 1 FROM revisions WHERE function = ?1", [&name], |r| {
                    r.get(0)
                })?;
            let now = now_ms();
            if current.is_some() {
                tx.execute(
                    "UPDATE functions SET current_revision = ?2, updated_ms = ?3 WHERE name = ?1",
                    params![name, number, now],
                )?;
            } else {
                tx.execute(
                    "INSERT INTO functions (name, current_revision, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?3)",
                    params![name, number, now],
                )?;
            }
            tx.execute(
                "INSERT INTO revisions (function, number, hash, manifest_json, created_ms, code_size, archive) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![name, number, new.hash, manifest_json, now, new.code_size, new.archive],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(PutOutcome::Created(Revision {
                id: id as u64,
                function: name,
                number,
                hash: new.hash,
                manifest: new.manifest,
                created_ms: now,
                code_size: new.code_size,
            }))
        })
        .await
    }

    async fn function(&self, name: &str) -> Result<Option<FunctionInfo>, StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            conn.query_row(&format!("{FUNCTION_SELECT} WHERE f.name = ?1"), [&name], read_function)
                .optional()?
                .transpose()
        })
        .await
    }

    async fn functions(&self) -> Result<Vec<FunctionInfo>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare(&format!("{FUNCTION_SELECT} ORDER BY f.name"))?;
            stmt.query_map([], read_function)?.map(flatten).collect()
        })
        .await
    }

    async fn current_revision(&self, name: &str) -> Result<Option<Revision>, StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            let current: Option<u32> = conn
                .query_row("SELECT current_revision FROM functions WHERE name = ?1", [&name], |r| r.get(0))
                .optional()?;
            match current {
                Some(number) => load_revision(conn, &name, number),
                None => Ok(None),
            }
        })
        .await
    }

    async fn revision(&self, name: &str, number: u32) -> Result<Option<Revision>, StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| load_revision(conn, &name, number)).await
    }

    async fn revisions(&self, name: &str) -> Result<Vec<Revision>, StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {REVISION_COLUMNS} FROM revisions WHERE function = ?1 ORDER BY number DESC"
            ))?;
            stmt.query_map([&name], read_revision)?.map(flatten).collect()
        })
        .await
    }

    async fn set_current(&self, name: &str, number: u32) -> Result<Revision, StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let exists =
                tx.query_row("SELECT 1 FROM functions WHERE name = ?1", [&name], |_| Ok(())).optional()?.is_some();
            if !exists {
                return Err(StoreError::FunctionNotFound(name));
            }
            let rev = load_revision(&tx, &name, number)?
                .ok_or_else(|| StoreError::RevisionNotFound { function: name.clone(), number })?;
            tx.execute(
                "UPDATE functions SET current_revision = ?2, updated_ms = ?3 WHERE name = ?1",
                params![name, number, now_ms()],
            )?;
            tx.commit()?;
            Ok(rev)
        })
        .await
    }

    async fn delete_function(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute("DELETE FROM activations WHERE function = ?1", [&name])?;
            tx.execute("DELETE FROM revisions WHERE function = ?1", [&name])?;
            tx.execute("DELETE FROM trigger_ticks WHERE function = ?1", [&name])?;
            let deleted = tx.execute("DELETE FROM functions WHERE name = ?1", [&name])?;
            tx.commit()?;
            Ok(deleted > 0)
        })
        .await
    }

    async fn referenced_hashes(&self) -> Result<Vec<String>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare("SELECT DISTINCT hash FROM revisions ORDER BY hash")?;
            let hashes = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
            Ok(hashes)
        })
        .await
    }

    async fn referenced_archives(&self) -> Result<Vec<String>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt =
                conn.prepare("SELECT DISTINCT archive FROM revisions WHERE archive IS NOT NULL ORDER BY archive")?;
            let archives = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
            Ok(archives)
        })
        .await
    }

    async fn revision_archive(&self, revision_id: u64) -> Result<Option<String>, StoreError> {
        self.with_conn(move |conn| {
            let archive = conn
                .query_row("SELECT archive FROM revisions WHERE id = ?1", [revision_id as i64], |r| {
                    r.get::<_, Option<String>>(0)
                })
                .optional()?;
            Ok(archive.flatten())
        })
        .await
    }

    async fn prune_revisions(&self, name: &str, keep: u32) -> Result<Vec<Revision>, StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some(current) = tx
                .query_row("SELECT current_revision FROM functions WHERE name = ?1", [&name], |r| r.get::<_, u32>(0))
                .optional()?
            else {
                return Ok(Vec::new());
            };
            // The newest `keep`, the current one and the one a plain
            // rollback would pick (the newest before the current) stay.
            let doomed: Vec<Revision> = {
                let mut stmt = tx.prepare(&format!(
                    "SELECT {REVISION_COLUMNS} FROM revisions WHERE function = ?1
                       AND number <> ?2
                       AND number <> COALESCE((SELECT MAX(number) FROM revisions WHERE function = ?1 AND number < ?2), 0)
                       AND number NOT IN (SELECT number FROM revisions WHERE function = ?1 ORDER BY number DESC LIMIT ?3)
                     ORDER BY number"
                ))?;
                stmt.query_map(params![name, current, keep], read_revision)?.map(flatten).collect::<Result<_, _>>()?
            };
            for rev in &doomed {
                tx.execute("DELETE FROM revisions WHERE id = ?1", [rev.id as i64])?;
            }
            tx.commit()?;
            Ok(doomed)
        })
        .await
    }

    async fn checkpoint(&self) -> Result<(), StoreError> {
        self.with_conn(|conn| {
            // TRUNCATE also empties the -wal file, so what a delete removed
            // is gone from the WAL too, not only from the main file.
            let (busy, _, _): (i64, i64, i64) =
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            if busy != 0 {
                tracing::debug!("WAL checkpoint could not complete: a reader holds an old snapshot");
            }
            Ok(())
        })
        .await
    }

    async fn insert_activation(&self, activation: &Activation) -> Result<i64, StoreError> {
        let mut results = self.insert_activations(std::slice::from_ref(activation), RecordLimits::UNLIMITED).await?;
        results.pop().expect("one result per record")
    }

    async fn insert_activations(
        &self,
        batch: &[Activation],
        limits: RecordLimits,
    ) -> Result<Vec<Inserted>, StoreError> {
        let batch = batch.to_vec();
        self.with_conn(move |conn| insert_batch(conn, &batch, limits)).await
    }

    async fn activation(&self, id: &ActivationId) -> Result<Option<Activation>, StoreError> {
        let id = id.as_str().to_string();
        self.with_reader(move |conn| {
            conn.query_row(
                &format!("SELECT {ACTIVATION_COLUMNS} FROM activations WHERE id = ?1"),
                [&id],
                read_activation,
            )
            .optional()?
            .transpose()
        })
        .await
    }

    async fn delete_activation(&self, id: &ActivationId) -> Result<bool, StoreError> {
        let id = id.as_str().to_string();
        self.with_conn(move |conn| Ok(conn.execute("DELETE FROM activations WHERE id = ?1", [&id])? > 0)).await
    }

    async fn set_callback(&self, id: &ActivationId, outcome: &CallbackOutcome) -> Result<bool, StoreError> {
        let id = id.as_str().to_string();
        let json = serde_json::to_string(outcome).map_err(|e| corrupt(format!("activation {id}"), e))?;
        self.with_conn(move |conn| {
            Ok(conn.execute("UPDATE activations SET callback_json = ?2 WHERE id = ?1", params![id, json])? > 0)
        })
        .await
    }

    async fn activations(&self, query: &ActivationQuery) -> Result<Vec<Activation>, StoreError> {
        let query = query.clone();
        self.with_reader(move |conn| {
            // Built per query rather than `?1 IS NULL OR …`, which would keep
            // SQLite from using the (function, seq) index.
            let mut filters = Vec::new();
            let mut args: Vec<Value> = Vec::new();
            if let Some(function) = query.function {
                args.push(Value::Text(function));
                filters.push(format!("function = ?{}", args.len()));
            }
            if let Some(cause) = query.cause {
                args.push(Value::Text(cause.as_str().into()));
                filters.push(format!("cause = ?{}", args.len()));
            }
            if let Some(trigger) = query.trigger {
                args.push(Value::Text(trigger));
                filters.push(format!("trigger = ?{}", args.len()));
            }
            if let Some(parent) = query.parent {
                args.push(Value::Text(parent.as_str().into()));
                filters.push(format!("parent = ?{}", args.len()));
            }
            if let Some(seq) = query.after_seq {
                args.push(Value::Integer(seq));
                filters.push(format!("seq > ?{}", args.len()));
            }
            let filter = if filters.is_empty() { String::new() } else { format!("WHERE {}", filters.join(" AND ")) };
            let order = if query.after_seq.is_some() { "ASC" } else { "DESC" };
            let limit = match query.limit {
                0 => DEFAULT_LIMIT,
                n => n.min(MAX_LIMIT),
            };
            args.push(Value::Integer(limit.into()));
            let sql = format!(
                "SELECT {ACTIVATION_COLUMNS} FROM activations {filter} ORDER BY seq {order} LIMIT ?{}",
                args.len()
            );
            let mut stmt = conn.prepare(&sql)?;
            stmt.query_map(rusqlite::params_from_iter(args), read_activation)?.map(flatten).collect()
        })
        .await
    }

    async fn activation_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.with_reader(|conn| {
            let mut stmt =
                conn.prepare("SELECT function, count(*) FROM activations GROUP BY function ORDER BY function")?;
            let counts = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?;
            Ok(counts.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn prune_activations(&self, older_than_ms: i64, keep_per_function: u32) -> Result<u64, StoreError> {
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let old = tx.execute("DELETE FROM activations WHERE start_ms < ?1", [older_than_ms])?;
            let surplus = tx.execute(
                "DELETE FROM activations WHERE seq IN (
                     SELECT seq FROM (
                         SELECT seq, ROW_NUMBER() OVER (PARTITION BY function ORDER BY seq DESC) AS rank
                         FROM activations
                     ) WHERE rank > ?1
                 )",
                [keep_per_function],
            )?;
            tx.commit()?;
            Ok((old + surplus) as u64)
        })
        .await
    }

    async fn trigger_tick(&self, function: &str, trigger: &str) -> Result<Option<(String, i64)>, StoreError> {
        let (function, trigger) = (function.to_string(), trigger.to_string());
        self.with_conn(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT schedule, tick_ms FROM trigger_ticks WHERE function = ?1 AND trigger = ?2",
                    params![function, trigger],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?)
        })
        .await
    }

    async fn count_usage(&self, activation: &Activation) -> Result<(), StoreError> {
        let activation = activation.clone();
        self.with_conn(move |conn| count_usage(conn, &activation)).await
    }

    async fn usage(&self, function: Option<&str>, since_ms: i64) -> Result<Vec<UsageDay>, StoreError> {
        let function = function.map(str::to_owned);
        self.with_reader(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT function, day, invocations, errors, cold_starts, billed_ms, billed_mib_ms, measured_byte_ms, \
                 cpu_ms FROM usage_daily WHERE (?1 IS NULL OR function = ?1) AND day >= date(?2 / 1000, 'unixepoch') \
                 ORDER BY day, function",
            )?;
            let rows = stmt.query_map(params![function, since_ms], |r| {
                Ok(UsageDay {
                    function: r.get(0)?,
                    day: r.get(1)?,
                    invocations: r.get::<_, i64>(2)?.max(0) as u64,
                    errors: r.get::<_, i64>(3)?.max(0) as u64,
                    cold_starts: r.get::<_, i64>(4)?.max(0) as u64,
                    billed_ms: r.get::<_, i64>(5)?.max(0) as u64,
                    billed_mib_ms: r.get::<_, i64>(6)?.max(0) as u64,
                    measured_byte_ms: r.get(7)?,
                    cpu_ms: r.get(8)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn put_rule_trigger(&self, t: &RuleTrigger, overwrite: bool) -> Result<bool, StoreError> {
        let t = t.clone();
        self.with_conn(move |conn| {
            let params = serde_json::Value::Object(t.params.clone()).to_string();
            let annotations = t.annotations.to_string();
            let feed = t.feed.as_ref().map(|f| f.to_string());
            let sql = if overwrite {
                "INSERT INTO rule_triggers (name, params_json, annotations_json, feed_json, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (name) DO UPDATE SET params_json = excluded.params_json,
                     annotations_json = excluded.annotations_json, feed_json = excluded.feed_json,
                     updated_ms = excluded.updated_ms"
            } else {
                "INSERT INTO rule_triggers (name, params_json, annotations_json, feed_json, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (name) DO NOTHING"
            };
            let n = conn.execute(sql, params![t.name, params, annotations, feed, t.created_ms, t.updated_ms])?;
            Ok(n > 0)
        })
        .await
    }

    async fn rule_trigger(&self, name: &str) -> Result<Option<RuleTrigger>, StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(&format!("{RULE_TRIGGER_SELECT} WHERE name = ?1"))?;
            stmt.query_row([name], rule_trigger_row).optional()?.transpose()
        })
        .await
    }

    async fn rule_triggers(&self) -> Result<Vec<RuleTrigger>, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(&format!("{RULE_TRIGGER_SELECT} ORDER BY name"))?;
            let rows = stmt.query_map([], rule_trigger_row)?.collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().collect()
        })
        .await
    }

    async fn delete_rule_trigger(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| Ok(conn.execute("DELETE FROM rule_triggers WHERE name = ?1", [name])? > 0)).await
    }

    async fn put_rule(&self, r: &Rule, overwrite: bool) -> Result<bool, StoreError> {
        let r = r.clone();
        self.with_conn(move |conn| {
            let sql = if overwrite {
                "INSERT INTO rules (name, trigger, action, active, annotations_json, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (name) DO UPDATE SET trigger = excluded.trigger, action = excluded.action,
                     active = excluded.active, annotations_json = excluded.annotations_json,
                     updated_ms = excluded.updated_ms"
            } else {
                "INSERT INTO rules (name, trigger, action, active, annotations_json, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (name) DO NOTHING"
            };
            let n = conn.execute(
                sql,
                params![r.name, r.trigger, r.action, r.active, r.annotations.to_string(), r.created_ms, r.updated_ms],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn rule(&self, name: &str) -> Result<Option<Rule>, StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(&format!("{RULE_SELECT} WHERE name = ?1"))?;
            stmt.query_row([name], rule_row).optional()?.transpose()
        })
        .await
    }

    async fn rules(&self, trigger: Option<&str>) -> Result<Vec<Rule>, StoreError> {
        let trigger = trigger.map(str::to_owned);
        self.with_conn(move |conn| {
            let mut stmt =
                conn.prepare_cached(&format!("{RULE_SELECT} WHERE ?1 IS NULL OR trigger = ?1 ORDER BY name"))?;
            let rows = stmt.query_map([trigger], rule_row)?.collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().collect()
        })
        .await
    }

    async fn delete_rule(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| Ok(conn.execute("DELETE FROM rules WHERE name = ?1", [name])? > 0)).await
    }

    async fn set_rule_active(&self, name: &str, active: bool) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            Ok(conn.execute(
                "UPDATE rules SET active = ?2, updated_ms = ?3 WHERE name = ?1",
                params![name, active, now_ms()],
            )? > 0)
        })
        .await
    }

    async fn set_trigger_tick(
        &self,
        function: &str,
        trigger: &str,
        schedule: &str,
        tick_ms: i64,
    ) -> Result<(), StoreError> {
        let (function, trigger, schedule) = (function.to_string(), trigger.to_string(), schedule.to_string());
        self.with_conn(move |conn| {
            conn.execute(
                "INSERT INTO trigger_ticks (function, trigger, schedule, tick_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (function, trigger) DO UPDATE SET schedule = excluded.schedule, tick_ms = excluded.tick_ms",
                params![function, trigger, schedule, tick_ms],
            )?;
            Ok(())
        })
        .await
    }

    async fn maintain(&self) -> Result<Maintenance, StoreError> {
        self.with_conn(|conn| {
            let free: i64 = conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
            let mut reclaimed_bytes = 0;
            if free > KEEP_FREE_PAGES {
                let before = conn.pragma_query_value(None, "page_count", |r| r.get::<_, i64>(0))?;
                // It frees one page per result row: step it to the end.
                let mut stmt = conn.prepare(&format!("PRAGMA incremental_vacuum({})", free.min(VACUUM_STEP_PAGES)))?;
                let mut rows = stmt.query([])?;
                while rows.next()?.is_some() {}
                drop(rows);
                drop(stmt);
                let after = conn.pragma_query_value(None, "page_count", |r| r.get::<_, i64>(0))?;
                let page: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
                reclaimed_bytes = ((before - after).max(0) * page) as u64;
            }
            // TRUNCATE also copies the vacuumed pages home, which is when
            // the database file actually shrinks. In memory there is no log.
            let (busy, _, _): (i64, i64, i64) =
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(Maintenance { reclaimed_bytes, checkpointed: busy == 0 })
        })
        .await
    }
}

/// Bytes of the database's pages in use (not on the free list). Read
/// before every batch of records: one cached statement, not three pragmas
/// parsed afresh each time.
fn used_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    let mut stmt =
        conn.prepare_cached("SELECT * FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()")?;
    let (pages, free, page): (i64, i64, i64) = stmt.query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(((pages - free).max(0) * page) as u64)
}

/// About what a record takes in the database.
fn record_bytes(a: &Activation) -> u64 {
    let logs: usize = a.logs.iter().map(|l| l.text.len() + 13).sum();
    (a.response.len() + logs) as u64 + RECORD_OVERHEAD
}

/// Adds one call to its function's `usage_daily` row of the day it started.
fn count_usage(conn: &Connection, a: &Activation) -> Result<(), StoreError> {
    let mut usage = conn.prepare_cached(
        "INSERT INTO usage_daily (function, day, invocations, errors, cold_starts, billed_ms, billed_mib_ms, \
         measured_byte_ms, cpu_ms) VALUES (?1, date(?2 / 1000, 'unixepoch'), 1, ?3, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT (function, day) DO UPDATE SET invocations = invocations + 1, errors = errors + ?3, \
         cold_starts = cold_starts + ?4, billed_ms = billed_ms + ?5, billed_mib_ms = billed_mib_ms + ?6, \
         measured_byte_ms = measured_byte_ms + ?7, cpu_ms = cpu_ms + ?8",
    )?;
    let billed = a.billed_ms() as i64;
    usage.execute(params![
        a.function,
        a.start_ms,
        a.status != ActivationStatus::Success,
        a.cold,
        billed,
        i64::from(a.memory_mb) * billed,
        a.memory_peak_bytes.unwrap_or(0) as f64 * billed as f64,
        a.cpu_ms.unwrap_or(0.0),
    ])?;
    Ok(())
}

/// One batch in one transaction: make room under the size budget, insert
/// each record (one the database refuses alone is reported, not fatal to
/// the others), then cut each touched function back to its record count.
fn insert_batch(
    conn: &mut Connection,
    batch: &[Activation],
    limits: RecordLimits,
) -> Result<Vec<Inserted>, StoreError> {
    // IMMEDIATE: take the write lock before reading sizes, so they hold
    // until the commit.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if limits.max_bytes != u64::MAX {
        let incoming = batch.iter().map(record_bytes).sum();
        make_room(&tx, incoming, limits.max_bytes)?;
    }
    let mut results = Vec::with_capacity(batch.len());
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO activations (id, function, revision, start_ms, end_ms, duration_ms, init_ms, \
             wait_ms, cold, status, http_status, response, response_truncated, logs, logs_truncated, \
             exec_ms, prewarmed, revision_id, cause, trigger, attempt, max_attempts, attempts_json, parent, \
             caller_gave_up_ms, callback_json, memory_mb, cpu_ms, memory_peak_bytes, trace_id, span_id, \
             parent_span_id, traceparent) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, \
                     ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33)",
        )?;
        // Counted in the same transaction as the record: a stored record
        // is in the bill exactly once, and stays there when it is pruned.
        for a in batch {
            // `seq` is left to SQLite: AUTOINCREMENT never reuses a
            // number, even after pruning, so it stays a valid follow cursor.
            let inserted = stmt.execute(params![
                a.id.as_str(),
                a.function,
                a.revision,
                a.start_ms,
                a.end_ms,
                a.duration_ms,
                a.init_ms,
                a.wait_ms,
                a.cold,
                a.status.as_str(),
                a.http_status,
                a.response,
                a.response_truncated,
                logcodec::encode(&a.logs),
                a.logs_truncated,
                a.exec_ms,
                a.prewarmed,
                a.revision_id as i64,
                a.cause.as_str(),
                a.trigger,
                a.attempt,
                a.max_attempts,
                serde_json::to_string(&a.attempts).unwrap_or_else(|_| "[]".into()),
                a.parent.as_ref().map(|p| p.as_str()),
                a.caller_gave_up_ms,
                a.callback.as_ref().and_then(|c| serde_json::to_string(c).ok()),
                a.memory_mb,
                a.cpu_ms,
                a.memory_peak_bytes.map(|b| b.min(i64::MAX as u64) as i64),
                a.trace_id,
                a.span_id,
                a.parent_span_id,
                a.traceparent,
            ]);
            let inserted = inserted.map_err(StoreError::from).and_then(|_| {
                let seq = tx.last_insert_rowid();
                count_usage(&tx, a)?;
                Ok(seq)
            });
            match inserted {
                Ok(seq) => results.push(Ok(seq)),
                // A full disk or a lost lock may have rolled the whole
                // transaction back: nothing of the batch is stored, say so.
                Err(e) if e.is_transient() => return Err(e),
                // A failed statement undoes only itself; the batch goes on.
                Err(e) => results.push(Err(e)),
            }
        }
    }
    if limits.per_function != u32::MAX {
        let mut functions: Vec<&str> = batch.iter().map(|a| a.function.as_str()).collect();
        functions.sort_unstable();
        functions.dedup();
        let mut stmt = tx.prepare_cached(
            "DELETE FROM activations WHERE function = ?1 AND seq <= (
                 SELECT seq FROM activations WHERE function = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2
             )",
        )?;
        for function in functions {
            stmt.execute(params![function, limits.per_function])?;
        }
    }
    tx.commit()?;
    Ok(results)
}

/// Deletes the oldest records until `incoming` more bytes fit under
/// `max_bytes`, going down to 7/8 of it so that not every batch has to
/// prune. Freed pages go on the free list, where the batch reuses them.
fn make_room(tx: &Connection, incoming: u64, max_bytes: u64) -> Result<u64, StoreError> {
    let mut used = used_bytes(tx)?;
    if used.saturating_add(incoming) <= max_bytes {
        return Ok(0);
    }
    let low_water = max_bytes - max_bytes / 8;
    let mut deleted = 0;
    let mut stmt =
        tx.prepare_cached("DELETE FROM activations WHERE seq IN (SELECT seq FROM activations ORDER BY seq LIMIT ?1)")?;
    // Small steps first (big records free a lot each), doubling so that a
    // budget full of small records takes a few rounds, not thousands; at
    // worst this deletes twice what was needed.
    let mut chunk = 16;
    while used.saturating_add(incoming) > low_water {
        let n = stmt.execute([chunk])?;
        chunk = (chunk * 2).min(4096);
        if n == 0 {
            // Nothing left to delete: the budget is smaller than the rest
            // of the database, or than this batch alone.
            break;
        }
        deleted += n as u64;
        used = used_bytes(tx)?;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use flick_core::{LogStream, Manifest, RuntimeKind};

    use super::*;

    fn manifest(name: &str, runtime: &str, public: bool) -> Manifest {
        Manifest::parse(&format!(
            "name = \"{name}\"\nruntime = \"{runtime}\"\nhandler = \"main.handler\"\npublic = {public}\n"
        ))
        .unwrap()
    }

    fn hash(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn deploy(name: &str, runtime: &str, public: bool, hash_char: char) -> NewRevision {
        NewRevision {
            manifest: manifest(name, runtime, public),
            hash: hash(hash_char),
            code_size: 1234,
            archive: Some(format!("{hash_char}{name}")),
        }
    }

    fn activation(function: &str, start_ms: i64) -> Activation {
        Activation {
            id: ActivationId::generate(),
            seq: 0,
            function: function.into(),
            revision: 1,
            revision_id: 1,
            start_ms,
            end_ms: start_ms + 12,
            duration_ms: 11.75,
            init_ms: 0.0,
            wait_ms: 0.25,
            exec_ms: 11.5,
            cold: false,
            prewarmed: false,
            status: ActivationStatus::Success,
            http_status: 200,
            response: "ok".into(),
            response_truncated: false,
            logs: Vec::new(),
            logs_truncated: false,
            cause: Cause::Http,
            trigger: None,
            attempt: 1,
            max_attempts: 1,
            attempts: Vec::new(),
            parent: None,
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
    }

    async fn insert(store: &SqliteStore, function: &str, start_ms: i64) -> i64 {
        store.insert_activation(&activation(function, start_ms)).await.unwrap()
    }

    async fn seqs(store: &SqliteStore, query: ActivationQuery) -> Vec<i64> {
        store.activations(&query).await.unwrap().iter().map(|a| a.seq).collect()
    }

    async fn all_seqs(store: &SqliteStore) -> Vec<i64> {
        seqs(store, ActivationQuery { after_seq: Some(0), ..Default::default() }).await
    }

    fn created(outcome: PutOutcome) -> Revision {
        match outcome {
            PutOutcome::Created(rev) => rev,
            other => panic!("expected a new revision, got {other:?}"),
        }
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[tokio::test]
    async fn activation_counts_per_function() {
        let store = SqliteStore::open_in_memory().unwrap();
        assert!(store.activation_counts().await.unwrap().is_empty());
        for (f, n) in [("b", 3), ("a", 1)] {
            for i in 0..n {
                insert(&store, f, i).await;
            }
        }
        assert_eq!(store.activation_counts().await.unwrap(), vec![("a".to_string(), 1), ("b".to_string(), 3)]);
    }

    #[tokio::test]
    async fn database_files_are_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("flick.db");
        let store = SqliteStore::open(&db).unwrap();
        store.put_revision(deploy("hello", "python3", false, 'a')).await.unwrap();
        for file in ["flick.db", "flick.db-wal", "flick.db-shm"] {
            assert_eq!(mode(&tmp.path().join(file)), 0o600, "{file}");
        }
        drop(store);

        // A data dir from before: world-readable files become owner-only.
        use std::os::unix::fs::PermissionsExt;
        for file in ["flick.db", "flick.db-wal", "flick.db-shm"] {
            let path = tmp.path().join(file);
            if !path.exists() {
                std::fs::write(&path, b"").unwrap();
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let store = SqliteStore::open(&db).unwrap();
        assert_eq!(store.revisions("hello").await.unwrap().len(), 1);
        for file in ["flick.db", "flick.db-wal", "flick.db-shm"] {
            assert_eq!(mode(&tmp.path().join(file)), 0o600, "{file}");
        }
    }

    #[tokio::test]
    async fn same_hash_is_unchanged() {
        let store = SqliteStore::open_in_memory().unwrap();
        let first = created(store.put_revision(deploy("hello", "python3", false, 'a')).await.unwrap());
        assert_eq!((first.function.as_str(), first.number), ("hello", 1));
        let again = store.put_revision(deploy("hello", "python3", false, 'a')).await.unwrap();
        assert_eq!(again, PutOutcome::Unchanged(first.clone()));
        assert_eq!(store.revisions("hello").await.unwrap(), vec![first]);
    }

    #[tokio::test]
    async fn new_hash_creates_next_revision_and_rollback_keeps_latest() {
        let store = SqliteStore::open_in_memory().unwrap();
        let r1 = created(store.put_revision(deploy("hello", "python3", false, 'a')).await.unwrap());
        let r2 = created(store.put_revision(deploy("hello", "exec", true, 'b')).await.unwrap());
        assert_eq!(r2.number, 2);
        assert_eq!(store.current_revision("hello").await.unwrap(), Some(r2.clone()));
        assert_eq!(store.revision("hello", 1).await.unwrap(), Some(r1.clone()));
        assert_eq!(store.revisions("hello").await.unwrap(), vec![r2.clone(), r1.clone()]);

        let info = store.function("hello").await.unwrap().unwrap();
        assert_eq!((info.current_revision, info.latest_revision), (2, 2));
        assert_eq!((info.runtime, info.public, info.hash.as_str()), (RuntimeKind::Exec, true, r2.hash.as_str()));

        assert_eq!(store.set_current("hello", 1).await.unwrap(), r1);
        let info = store.function("hello").await.unwrap().unwrap();
        assert_eq!((info.current_revision, info.latest_revision), (1, 2));
        assert_eq!((info.runtime, info.public, info.hash.as_str()), (RuntimeKind::Python3, false, r1.hash.as_str()));
        assert!(info.updated_ms >= info.created_ms);
        assert_eq!(store.current_revision("hello").await.unwrap(), Some(r1));

        // Compared with the current revision, not the latest: redeploying
        // what revision 2 had is a new deploy after a rollback.
        let r3 = created(store.put_revision(deploy("hello", "exec", true, 'b')).await.unwrap());
        assert_eq!(r3.number, 3);
        assert_eq!(store.referenced_hashes().await.unwrap(), vec![hash('a'), hash('b')]);
    }

    #[tokio::test]
    async fn set_current_errors() {
        let store = SqliteStore::open_in_memory().unwrap();
        store.put_revision(deploy("hello", "python3", false, 'a')).await.unwrap();
        match store.set_current("nope", 1).await {
            Err(StoreError::FunctionNotFound(name)) => assert_eq!(name, "nope"),
            other => panic!("expected FunctionNotFound, got {other:?}"),
        }
        match store.set_current("hello", 7).await {
            Err(StoreError::RevisionNotFound { function, number }) => {
                assert_eq!((function.as_str(), number), ("hello", 7))
            }
            other => panic!("expected RevisionNotFound, got {other:?}"),
        }
        assert_eq!(store.function("hello").await.unwrap().unwrap().current_revision, 1);
        assert_eq!(store.function("nope").await.unwrap(), None);
        assert_eq!(store.current_revision("nope").await.unwrap(), None);
    }

    #[tokio::test]
    async fn causes_attempts_and_parents_round_trip_and_filter() {
        let store = SqliteStore::open_in_memory().unwrap();
        let parent = activation("seq", 1_000);
        let mut a = activation("hello", 1_000);
        a.cause = Cause::Cron;
        a.trigger = Some("every-10s".into());
        a.attempt = 3;
        a.max_attempts = 3;
        a.attempts = (1..=2)
            .map(|n| AttemptOutcome {
                attempt: n,
                status: ActivationStatus::Error,
                http_status: 500,
                message: format!("boom {n}"),
                start_ms: 900 + i64::from(n),
                duration_ms: 1.5,
            })
            .collect();
        a.parent = Some(parent.id.clone());
        let seq = store.insert_activation(&a).await.unwrap();
        store.insert_activation(&parent).await.unwrap();
        assert_eq!(store.activation(&a.id).await.unwrap().unwrap(), Activation { seq, ..a.clone() });

        let ids = |q: ActivationQuery| {
            let store = &store;
            async move { store.activations(&q).await.unwrap().into_iter().map(|a| a.id).collect::<Vec<_>>() }
        };
        let only_a = vec![a.id.clone()];
        assert_eq!(ids(ActivationQuery { cause: Some(Cause::Cron), ..Default::default() }).await, only_a);
        assert_eq!(ids(ActivationQuery { trigger: Some("every-10s".into()), ..Default::default() }).await, only_a);
        assert_eq!(ids(ActivationQuery { parent: Some(parent.id.clone()), ..Default::default() }).await, only_a);
        assert_eq!(ids(ActivationQuery { cause: Some(Cause::Http), ..Default::default() }).await, vec![parent.id]);
        assert!(ids(ActivationQuery { trigger: Some("other".into()), ..Default::default() }).await.is_empty());

        let cb = CallbackOutcome {
            url: "http://127.0.0.1:9/cb".into(),
            delivered: false,
            attempts: 3,
            http_status: Some(500),
            error: Some("HTTP 500".into()),
            end_ms: 2_000,
        };
        assert!(store.set_callback(&a.id, &cb).await.unwrap());
        assert_eq!(store.activation(&a.id).await.unwrap().unwrap().callback, Some(cb.clone()));
        assert!(store.delete_activation(&a.id).await.unwrap());
        assert!(!store.delete_activation(&a.id).await.unwrap());
        assert!(!store.set_callback(&a.id, &cb).await.unwrap());
    }

    #[tokio::test]
    async fn functions_are_listed_by_name() {
        let store = SqliteStore::open_in_memory().unwrap();
        for name in ["zeta", "alpha", "mid"] {
            store.put_revision(deploy(name, "node", false, 'c')).await.unwrap();
        }
        let names: Vec<String> = store.functions().await.unwrap().into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["alpha", "mid", "zeta"]);
        assert_eq!(store.referenced_hashes().await.unwrap(), vec![hash('c')]);
    }

    #[tokio::test]
    async fn activation_round_trip() {
        let store = SqliteStore::open_in_memory().unwrap();
        let mut a = activation("hello", 1_000);
        a.cold = true;
        a.init_ms = 87.5;
        a.status = ActivationStatus::Timeout;
        a.http_status = 504;
        a.response = "timed out after 5s".into();
        a.response_truncated = true;
        a.logs = vec![
            LogLine { ts_ms: 1_001, stream: LogStream::Stdout, text: "starting".into() },
            LogLine { ts_ms: 1_002, stream: LogStream::Stderr, text: "ünïcode \"quoted\"\n".into() },
        ];
        a.logs_truncated = true;
        a.caller_gave_up_ms = Some(250.5);
        let inv = flick_core::Invocation::post("hello", Cause::Http, vec![]);
        a = a.traced(inv.trace.as_ref());
        assert!(a.trace_id.is_some() && a.span_id.is_some() && a.traceparent.is_some());
        let seq = store.insert_activation(&a).await.unwrap();
        assert!(seq > 0);

        let stored = store.activation(&a.id).await.unwrap().unwrap();
        assert_eq!(stored, Activation { seq, ..a.clone() });
        assert_eq!(store.activation(&ActivationId::generate()).await.unwrap(), None);
        assert!(store.insert_activation(&a).await.is_err(), "ids are unique");
    }

    #[tokio::test]
    async fn listing_order_cursor_filter_and_limit() {
        let store = SqliteStore::open_in_memory().unwrap();
        let mut s = Vec::new();
        for (i, f) in ["a", "b", "a", "b", "a"].into_iter().enumerate() {
            s.push(insert(&store, f, 100 + i as i64).await);
        }
        assert!(s.windows(2).all(|w| w[0] < w[1]));

        let all = ActivationQuery::default();
        assert_eq!(seqs(&store, all.clone()).await, [s[4], s[3], s[2], s[1], s[0]]);
        let after = ActivationQuery { after_seq: Some(s[1]), ..all.clone() };
        assert_eq!(seqs(&store, after).await, [s[2], s[3], s[4]]);

        let only_a = ActivationQuery { function: Some("a".into()), ..all.clone() };
        assert_eq!(seqs(&store, only_a.clone()).await, [s[4], s[2], s[0]]);
        let a_after = ActivationQuery { after_seq: Some(s[0]), ..only_a.clone() };
        assert_eq!(seqs(&store, a_after).await, [s[2], s[4]]);
        let none = ActivationQuery { function: Some("c".into()), ..all.clone() };
        assert!(seqs(&store, none).await.is_empty());

        let two = ActivationQuery { limit: 2, ..all.clone() };
        assert_eq!(seqs(&store, two).await, [s[4], s[3]]);
        let first_two = ActivationQuery { limit: 2, after_seq: Some(0), ..all };
        assert_eq!(seqs(&store, first_two).await, [s[0], s[1]]);
    }

    #[tokio::test]
    async fn limit_defaults_to_100_and_caps_at_1000() {
        let store = SqliteStore::open_in_memory().unwrap();
        // Direct inserts: 1001 async round trips would only slow the test.
        store
            .with_conn(|conn| {
                let tx = conn.transaction()?;
                for i in 0..1001 {
                    tx.execute(
                        "INSERT INTO activations (id, function, revision, start_ms, end_ms, duration_ms, init_ms, \
                         wait_ms, cold, status, http_status, response, response_truncated, logs, logs_truncated, \
                         exec_ms, prewarmed) VALUES (?1, 'f', 1, ?2, ?2, 0, 0, 0, 0, 'success', 200, '', 0, x'', 0, 0, 0)",
                        params![format!("{i:032x}"), i],
                    )?;
                }
                tx.commit()?;
                Ok(())
            })
            .await
            .unwrap();
        let count = |limit| {
            let store = store.clone();
            async move { store.activations(&ActivationQuery { limit, ..Default::default() }).await.unwrap().len() }
        };
        assert_eq!(count(0).await, 100);
        assert_eq!(count(5000).await, 1000);
        assert_eq!(count(1000).await, 1000);
    }

    #[tokio::test]
    async fn prune_by_age() {
        let store = SqliteStore::open_in_memory().unwrap();
        let _old_a = insert(&store, "a", 10).await;
        let new_a = insert(&store, "a", 50).await;
        let _old_b = insert(&store, "b", 49).await;
        let edge_b = insert(&store, "b", 50).await;
        assert_eq!(store.prune_activations(50, 100).await.unwrap(), 2);
        assert_eq!(all_seqs(&store).await, [new_a, edge_b]);
        assert_eq!(store.prune_activations(50, 100).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn prune_by_count_per_function() {
        let store = SqliteStore::open_in_memory().unwrap();
        let mut a = Vec::new();
        let mut b = Vec::new();
        for i in 0..5 {
            a.push(insert(&store, "a", 1_000 + i).await);
            if i < 2 {
                b.push(insert(&store, "b", 1_000 + i).await);
            }
        }
        // Ranked by seq, not start time: the latest-starting record of `c`
        // was stored first, so it is the one that goes.
        let late_start_early_seq = store.insert_activation(&activation("c", 9_000)).await.unwrap();
        let c2 = insert(&store, "c", 1_000).await;
        let c3 = insert(&store, "c", 1_000).await;

        assert_eq!(store.prune_activations(0, 2).await.unwrap(), 3 + 1);
        let mut expected = vec![a[3], a[4], b[0], b[1], c2, c3];
        expected.sort();
        assert_eq!(all_seqs(&store).await, expected);
        assert!(!all_seqs(&store).await.contains(&late_start_early_seq));

        // Age and count together in one call.
        assert_eq!(store.prune_activations(1_001, 1).await.unwrap(), 3 + 1);
        assert_eq!(all_seqs(&store).await, [b[1], a[4]]);
    }

    #[tokio::test]
    async fn usage_is_summed_per_function_and_day_and_survives_pruning() {
        let store = SqliteStore::open_in_memory().unwrap();
        let day = 86_400_000;
        let call = |f: &str, start: i64, status, exec_ms: f64| Activation {
            memory_mb: 256,
            exec_ms,
            cpu_ms: Some(exec_ms / 2.0),
            memory_peak_bytes: Some(100 << 20),
            cold: status != ActivationStatus::Success,
            status,
            ..activation(f, start)
        };
        let batch = vec![
            call("a", day + 5, ActivationStatus::Success, 200.0),
            call("a", day + 9, ActivationStatus::Error, 199.2),
            call("a", 2 * day + 1, ActivationStatus::Success, 10.0),
            call("b", day + 7, ActivationStatus::Success, 1.0),
        ];
        for r in store.insert_activations(&batch, RecordLimits::UNLIMITED).await.unwrap() {
            r.unwrap();
        }
        // The same record again is refused, and counted once.
        assert!(store.insert_activations(&batch[..1], RecordLimits::UNLIMITED).await.unwrap()[0].is_err());
        let all = store.usage(None, 0).await.unwrap();
        let days: Vec<_> = all.iter().map(|u| (u.function.as_str(), u.day.as_str())).collect();
        assert_eq!(days, [("a", "1970-01-02"), ("b", "1970-01-02"), ("a", "1970-01-03")]);
        let a1 = &all[0];
        assert_eq!((a1.invocations, a1.errors, a1.cold_starts, a1.billed_ms), (2, 1, 1, 400));
        assert_eq!(a1.billed_mib_ms, 256 * 400);
        assert_eq!(a1.measured_byte_ms, (100u64 << 20) as f64 * 400.0);
        assert!((a1.cpu_ms - 199.6).abs() < 1e-9, "{}", a1.cpu_ms);
        assert_eq!(store.usage(Some("a"), 2 * day).await.unwrap().len(), 1, "since a day, for one function");
        assert!(store.usage(Some("nope"), 0).await.unwrap().is_empty());
        assert_eq!(store.prune_activations(i64::MAX, 0).await.unwrap(), 4);
        assert_eq!(store.usage(None, 0).await.unwrap(), all, "pruning records keeps the bill");
        // A call that ran without a record of its own (a retried attempt).
        store.count_usage(&call("b", day + 8, ActivationStatus::Timeout, 99.5)).await.unwrap();
        let b1 = store.usage(Some("b"), day).await.unwrap();
        assert_eq!((b1[0].invocations, b1[0].errors, b1[0].billed_ms), (2, 1, 101), "{b1:?}");
        assert_eq!(store.activations(&ActivationQuery::default()).await.unwrap().len(), 0, "and stores no record");
    }

    #[tokio::test]
    async fn rule_triggers_and_rules_survive_a_reopen_and_overwrite_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flick.db");
        let mut params = serde_json::Map::new();
        params.insert("a".into(), serde_json::json!(1));
        let t = RuleTrigger {
            name: "t".into(),
            params,
            annotations: serde_json::json!([{"key": "feed", "value": "/whisk.system/alarms/alarm"}]),
            feed: Some(serde_json::json!({"cron": "* * * * * *"})),
            created_ms: 1,
            updated_ms: 1,
        };
        let r = Rule {
            name: "r".into(),
            trigger: "t".into(),
            action: "f".into(),
            active: true,
            annotations: serde_json::json!([]),
            created_ms: 2,
            updated_ms: 2,
        };
        {
            let store = SqliteStore::open(&path).unwrap();
            assert!(store.put_rule_trigger(&t, false).await.unwrap());
            let changed = RuleTrigger { feed: None, updated_ms: 5, ..t.clone() };
            assert!(!store.put_rule_trigger(&changed, false).await.unwrap(), "no overwrite: left alone");
            assert!(store.put_rule(&r, false).await.unwrap());
            assert!(!store.put_rule(&Rule { action: "g".into(), ..r.clone() }, false).await.unwrap());
            assert!(store.set_rule_active("r", false).await.unwrap());
            assert!(!store.set_rule_active("nope", false).await.unwrap());
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.rule_trigger("t").await.unwrap(), Some(t.clone()));
        let got = store.rule("r").await.unwrap().unwrap();
        assert_eq!((got.action.as_str(), got.active), ("f", false));
        assert_eq!(store.rules(Some("t")).await.unwrap().len(), 1);
        assert_eq!(store.rules(Some("other")).await.unwrap().len(), 0);
        let replaced = RuleTrigger { feed: None, created_ms: 9, updated_ms: 9, ..t.clone() };
        assert!(store.put_rule_trigger(&replaced, true).await.unwrap());
        let now = store.rule_trigger("t").await.unwrap().unwrap();
        assert_eq!((now.feed, now.created_ms, now.updated_ms), (None, 1, 9));
        assert_eq!(store.rule_triggers().await.unwrap().len(), 1);
        assert!(store.delete_rule_trigger("t").await.unwrap());
        assert!(!store.delete_rule_trigger("t").await.unwrap());
        // Its rule stays, as OpenWhisk's do.
        assert!(store.rule("r").await.unwrap().is_some());
        assert!(store.delete_rule("r").await.unwrap());
        assert_eq!(store.rules(None).await.unwrap(), vec![]);
    }

    #[tokio::test]
    async fn trigger_ticks_are_kept_per_trigger_and_go_with_the_function() {
        let store = SqliteStore::open_in_memory().unwrap();
        store.put_revision(deploy("cronned", "python3", false, 'a')).await.unwrap();
        assert_eq!(store.trigger_tick("cronned", "tick").await.unwrap(), None);
        store.set_trigger_tick("cronned", "tick", "* * * * * * UTC", 1000).await.unwrap();
        store.set_trigger_tick("cronned", "tick", "* * * * * * UTC", 2000).await.unwrap();
        store.set_trigger_tick("cronned", "other", "0 * * * * * UTC", 5).await.unwrap();
        assert_eq!(store.trigger_tick("cronned", "tick").await.unwrap(), Some(("* * * * * * UTC".into(), 2000)));
        assert!(store.delete_function("cronned").await.unwrap());
        assert_eq!(store.trigger_tick("cronned", "tick").await.unwrap(), None);
        assert_eq!(store.trigger_tick("cronned", "other").await.unwrap(), None);
    }

    #[tokio::test]
    async fn delete_function_removes_revisions_and_activations() {
        let store = SqliteStore::open_in_memory().unwrap();
        store.put_revision(deploy("gone", "python3", false, 'a')).await.unwrap();
        store.put_revision(deploy("gone", "python3", false, 'b')).await.unwrap();
        store.put_revision(deploy("kept", "python3", false, 'c')).await.unwrap();
        let gone = activation("gone", 1);
        store.insert_activation(&gone).await.unwrap();
        let kept = insert(&store, "kept", 2).await;

        assert!(store.delete_function("gone").await.unwrap());
        assert!(!store.delete_function("gone").await.unwrap());
        assert_eq!(store.function("gone").await.unwrap(), None);
        assert!(store.revisions("gone").await.unwrap().is_empty());
        assert_eq!(store.activation(&gone.id).await.unwrap(), None);
        assert_eq!(all_seqs(&store).await, [kept]);
        assert_eq!(store.referenced_hashes().await.unwrap(), vec![hash('c')]);

        // A new function of the same name starts over at revision 1, but
        // never at a revision id used before.
        let again = created(store.put_revision(deploy("gone", "python3", false, 'a')).await.unwrap());
        assert_eq!(again.number, 1);
        assert!(again.id > 3, "revision id {} was used before", again.id);
    }

    #[tokio::test]
    async fn revision_ids_never_repeat_even_when_every_revision_is_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("flick.db");
        let first = {
            let store = SqliteStore::open(&path).unwrap();
            let r = created(store.put_revision(deploy("f", "python3", false, 'a')).await.unwrap());
            assert!(store.delete_function("f").await.unwrap());
            r
        };
        let store = SqliteStore::open(&path).unwrap();
        let again = created(store.put_revision(deploy("f", "python3", false, 'a')).await.unwrap());
        assert_eq!((first.number, again.number), (1, 1));
        assert!(again.id > first.id, "{} reused after {}", again.id, first.id);
        assert_eq!(store.current_revision("f").await.unwrap().unwrap().id, again.id);
    }

    #[tokio::test]
    async fn prune_revisions_keeps_newest_current_and_rollback_target() {
        let store = SqliteStore::open_in_memory().unwrap();
        for c in ['a', 'b', 'c', 'd', 'e', 'f'] {
            store.put_revision(deploy("p", "python3", false, c)).await.unwrap();
        }
        let numbers = |store: SqliteStore| async move {
            store.revisions("p").await.unwrap().iter().map(|r| r.number).collect::<Vec<_>>()
        };
        // Current is 6 (the newest): keep 2 → 6 and 5 (also the rollback target).
        let gone: Vec<u32> = store.prune_revisions("p", 2).await.unwrap().iter().map(|r| r.number).collect();
        assert_eq!(gone, [1, 2, 3, 4]);
        assert_eq!(numbers(store.clone()).await, [6, 5]);
        assert_eq!(store.referenced_hashes().await.unwrap(), vec![hash('e'), hash('f')]);
        assert_eq!(store.referenced_archives().await.unwrap(), vec!["ep".to_string(), "fp".to_string()]);
        let current = store.current_revision("p").await.unwrap().unwrap();
        assert_eq!(store.revision_archive(current.id).await.unwrap().as_deref(), Some("fp"));
        assert_eq!(store.revision_archive(u64::MAX >> 1).await.unwrap(), None);

        // After a rollback to 5 and two deploys, current is 8 and the rollback
        // target 7; with keep 1 only those two stay.
        store.set_current("p", 5).await.unwrap();
        store.put_revision(deploy("p", "python3", false, 'g')).await.unwrap();
        store.put_revision(deploy("p", "python3", false, 'h')).await.unwrap();
        store.set_current("p", 5).await.unwrap();
        // Current 5 is old: it and its rollback target (none older) stay with the newest.
        assert!(store.prune_revisions("p", 1).await.unwrap().iter().map(|r| r.number).eq([6, 7]));
        assert_eq!(numbers(store.clone()).await, [8, 5]);
        assert!(store.prune_revisions("nope", 1).await.unwrap().is_empty());
        store.checkpoint().await.unwrap();
    }

    #[tokio::test]
    async fn version_1_database_gets_revision_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("flick.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            let m = serde_json::to_string(&manifest("old", "python3", false)).unwrap();
            conn.execute("INSERT INTO functions VALUES ('old', 2, 1, 2)", []).unwrap();
            for (n, h) in [(1, 'a'), (2, 'b')] {
                conn.execute(
                    "INSERT INTO revisions (function, number, hash, manifest_json, created_ms, code_size) \
                     VALUES ('old', ?1, ?2, ?3, ?1, 1)",
                    params![n, hash(h), m],
                )
                .unwrap();
            }
        }
        let store = SqliteStore::open(&path).unwrap();
        let revs = store.revisions("old").await.unwrap();
        assert_eq!(revs.iter().map(|r| (r.number, r.id)).collect::<Vec<_>>(), [(2, 2), (1, 1)]);
        let next = created(store.put_revision(deploy("old", "python3", false, 'c')).await.unwrap());
        assert_eq!((next.number, next.id), (3, 3));
    }

    #[tokio::test]
    async fn file_store_survives_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("nested/flick.db");
        let a = activation("hello", 5);
        let (rev, seq) = {
            let store = SqliteStore::open(&path).unwrap();
            let rev = created(store.put_revision(deploy("hello", "node", true, 'a')).await.unwrap());
            (rev, store.insert_activation(&a).await.unwrap())
        };

        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.current_revision("hello").await.unwrap(), Some(rev));
        assert_eq!(store.activation(&a.id).await.unwrap(), Some(Activation { seq, ..a }));
        // AUTOINCREMENT: numbers are not reused after a restart either.
        assert!(insert(&store, "hello", 6).await > seq);
        let (version, mode, fk) = store
            .with_conn(|conn| {
                let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
                let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
                let fk: bool = conn.pragma_query_value(None, "foreign_keys", |r| r.get(0))?;
                Ok((version, mode, fk))
            })
            .await
            .unwrap();
        assert_eq!((version, mode.as_str(), fk), (MIGRATIONS.len() as i64, "wal", true));
    }

    #[tokio::test]
    async fn newer_schema_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("flick.db");
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
        match SqliteStore::open(&path) {
            Err(e @ StoreError::SchemaTooNew { found: 99, supported, .. }) if supported == MIGRATIONS.len() as i64 => {
                assert!(e.to_string().contains("flick.db"), "{e}")
            }
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
    }

    fn big(function: &str, bytes: usize) -> Activation {
        let mut a = activation(function, now_ms());
        a.response = "r".repeat(bytes / 2);
        a.logs = vec![LogLine { ts_ms: 1, stream: LogStream::Stdout, text: "\u{1}".repeat(bytes / 2) }];
        a
    }

    fn file_size(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    fn stored(results: &[Inserted]) -> usize {
        results.iter().filter(|r| r.is_ok()).count()
    }

    #[tokio::test]
    async fn a_refused_record_does_not_take_its_batch_down() {
        let store = SqliteStore::open_in_memory().unwrap();
        let first = activation("f", 1);
        store.insert_activation(&first).await.unwrap();
        let (a, b) = (activation("f", 2), activation("f", 3));
        // The middle one reuses an id: the database refuses it alone.
        let results =
            store.insert_activations(&[a.clone(), first.clone(), b.clone()], RecordLimits::UNLIMITED).await.unwrap();
        assert_eq!(results.len(), 3);
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        let err = results[1].as_ref().unwrap_err();
        assert!(!err.is_transient(), "a duplicate is the record's own fault: {err}");
        assert!(err.to_string().contains("UNIQUE"), "{err}");
        for x in [&first, &a, &b] {
            assert!(store.activation(&x.id).await.unwrap().is_some());
        }
    }

    #[tokio::test]
    async fn inserts_keep_each_function_to_its_count() {
        let store = SqliteStore::open_in_memory().unwrap();
        let limits = RecordLimits { per_function: 3, max_bytes: u64::MAX };
        let mut kept = Vec::new();
        for i in 0..5 {
            let batch = [activation("a", i), activation("b", i)];
            let results = store.insert_activations(&batch, limits).await.unwrap();
            kept.push(*results[0].as_ref().unwrap());
        }
        let a = ActivationQuery { function: Some("a".into()), after_seq: Some(0), ..Default::default() };
        assert_eq!(seqs(&store, a).await, kept[2..]);
        let b = ActivationQuery { function: Some("b".into()), ..Default::default() };
        assert_eq!(seqs(&store, b).await.len(), 3);
    }

    #[tokio::test]
    async fn inserts_keep_the_database_under_its_size_budget() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("flick.db");
        let store = SqliteStore::open(&path).unwrap();
        let budget = 2 << 20;
        let limits = RecordLimits { per_function: u32::MAX, max_bytes: budget };
        let mut last = Vec::new();
        // 24 MiB of records through a 2 MiB budget, in batches of 8 x 32 KiB.
        for round in 0..96 {
            let batch: Vec<Activation> = (0..8).map(|i| big(if i % 2 == 0 { "a" } else { "b" }, 32 << 10)).collect();
            let results = store.insert_activations(&batch, limits).await.unwrap();
            assert_eq!(stored(&results), 8, "round {round}");
            last = batch;
            let used = store.with_conn(|c| Ok(used_bytes(c)?)).await.unwrap();
            assert!(used <= budget, "round {round}: {used} bytes in use, budget {budget}");
        }
        assert!(file_size(&path) <= budget + (64 << 10), "file {} bytes, budget {budget}", file_size(&path));
        // The newest records are the ones kept, whole.
        for a in &last {
            let got = store.activation(&a.id).await.unwrap().unwrap();
            assert_eq!((got.response.len(), got.logs[0].text.len()), (16 << 10, 16 << 10));
        }
        let kept = all_seqs(&store).await.len();
        assert!((32..96 * 8).contains(&kept), "{kept} records kept");
    }

    #[tokio::test]
    async fn maintain_gives_freed_space_back_and_truncates_the_wal() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("flick.db");
        let wal = tmp.path().join("flick.db-wal");
        let store = SqliteStore::open(&path).unwrap();
        store.put_revision(deploy("gone", "python3", false, 'a')).await.unwrap();
        for _ in 0..16 {
            let batch: Vec<Activation> = (0..8).map(|_| big("gone", 64 << 10)).collect();
            store.insert_activations(&batch, RecordLimits::UNLIMITED).await.unwrap();
        }
        store.maintain().await.unwrap();
        let full = file_size(&path);
        assert!(full > 8 << 20, "{full}");
        assert!(store.delete_function("gone").await.unwrap());
        let mut reclaimed = 0;
        // Each pass vacuums a bounded step; a few passes give back all of it.
        for _ in 0..8 {
            let m = store.maintain().await.unwrap();
            assert!(m.checkpointed);
            reclaimed += m.reclaimed_bytes;
        }
        assert!(reclaimed >= full - (2 << 20), "reclaimed {reclaimed} of {full}");
        assert!(file_size(&path) < 2 << 20, "{} bytes left", file_size(&path));
        assert_eq!(file_size(&wal), 0);
    }

    /// A database written by flick before logs became a blob and before
    /// auto-vacuum: schema version 1, JSON logs, no auto-vacuum.
    #[tokio::test]
    async fn an_old_database_is_migrated_and_converted_to_incremental_vacuum() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("flick.db");
        let id = ActivationId::generate();
        let logs = vec![LogLine { ts_ms: 5, stream: LogStream::Stderr, text: "old \u{1b}[31m".into() }];
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO activations (id, function, revision, start_ms, end_ms, duration_ms, init_ms, \
                 wait_ms, cold, status, http_status, response, response_truncated, logs_json, logs_truncated, \
                 exec_ms, prewarmed) VALUES (?1, 'f', 1, 1, 2, 1, 0, 0, 0, 'success', 200, 'hi', 0, ?2, 1, 0, 0)",
                params![id.as_str(), serde_json::to_string(&logs).unwrap()],
            )
            .unwrap();
            // Space freed before the upgrade, which only a VACUUM gives back.
            let filler = "x".repeat(1 << 20);
            for i in 0..4 {
                conn.execute(
                    "INSERT INTO activations (id, function, revision, start_ms, end_ms, duration_ms, init_ms, \
                     wait_ms, cold, status, http_status, response, response_truncated, logs_json, logs_truncated, \
                     exec_ms, prewarmed) VALUES (?1, 'g', 1, 1, 2, 1, 0, 0, 0, 'success', 200, ?2, 0, '[]', 0, 0, 0)",
                    params![format!("{i:032x}"), filler],
                )
                .unwrap();
            }
            conn.execute("DELETE FROM activations WHERE function = 'g'", []).unwrap();
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
            let av: i64 = conn.pragma_query_value(None, "auto_vacuum", |r| r.get(0)).unwrap();
            assert_eq!(av, 0);
        }
        let before = file_size(&path);
        assert!(before > 4 << 20, "{before}");

        let store = SqliteStore::open(&path).unwrap();
        let got = store.activation(&id).await.unwrap().unwrap();
        assert_eq!((got.logs, got.logs_truncated, got.response.as_str()), (logs, true, "hi"));
        let (version, av) = store
            .with_conn(|c| {
                let version: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
                let av: i64 = c.pragma_query_value(None, "auto_vacuum", |r| r.get(0))?;
                Ok((version, av))
            })
            .await
            .unwrap();
        assert_eq!((version, av), (MIGRATIONS.len() as i64, AUTO_VACUUM_INCREMENTAL));
        store.maintain().await.unwrap();
        assert!(file_size(&path) < 1 << 20, "{} bytes after the conversion, {before} before", file_size(&path));
        // New records take the blob format, and both read back.
        let mut fresh = activation("f", 3);
        fresh.logs = vec![LogLine { ts_ms: 6, stream: LogStream::Stdout, text: "new \u{0}".into() }];
        store.insert_activation(&fresh).await.unwrap();
        assert_eq!(store.activation(&fresh.id).await.unwrap().unwrap().logs, fresh.logs);
        assert_eq!(store.activations(&ActivationQuery::default()).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_new_database_uses_incremental_vacuum_from_the_start() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&tmp.path().join("flick.db")).unwrap();
        let av: i64 = store.with_conn(|c| Ok(c.pragma_query_value(None, "auto_vacuum", |r| r.get(0))?)).await.unwrap();
        assert_eq!(av, AUTO_VACUUM_INCREMENTAL);
    }
}
