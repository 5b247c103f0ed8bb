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
use flick_core::{Activation, ActivationId, CallbackOutcome, FunctionInfo, Revision, now_ms};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use crate::rows::{
    ACTIVATION_INSERT_COLUMNS, ACTIVATION_VALUES, ActivationRow, FUNCTION_SELECT, FunctionRow, REVISION_COLUMNS,
    RULE_SELECT, RULE_TRIGGER_SELECT, RevisionRow, RuleRow, RuleTriggerRow, UsageDelta, activation_row,
    activation_values, corrupt, effective_limit, record_bytes, rule_trigger_json,
};
use crate::{
    ActivationQuery, Inserted, Maintenance, NewRevision, PutOutcome, RecordLimits, Rule, RuleTrigger, Store,
    StoreError, UsageDay,
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

/// A row of `rule_triggers` (the outer error: SQLite's; the inner: a JSON
/// column that does not parse).
fn rule_trigger_row(r: &Row<'_>) -> Decoded<RuleTrigger> {
    let row = RuleTriggerRow {
        name: r.get(0)?,
        params_json: r.get(1)?,
        annotations_json: r.get(2)?,
        feed_json: r.get(3)?,
        created_ms: r.get(4)?,
        updated_ms: r.get(5)?,
    };
    Ok(row.decode())
}

fn rule_row(r: &Row<'_>) -> Decoded<Rule> {
    let row = RuleRow {
        name: r.get(0)?,
        trigger: r.get(1)?,
        action: r.get(2)?,
        active: r.get(3)?,
        annotations_json: r.get(4)?,
        created_ms: r.get(5)?,
        updated_ms: r.get(6)?,
    };
    Ok(row.decode())
}

fn migrate(conn: &mut Connection, label: &str) -> Result<(), StoreError> {
    flick_sqlite::migrate(conn, MIGRATIONS, label, "database").map_err(|e| match e {
        flick_sqlite::MigrateError::TooNew { found, supported } => {
            StoreError::SchemaTooNew { path: label.into(), found, supported }
        }
        flick_sqlite::MigrateError::Sqlite(e) => e.into(),
    })
}

/// Row readers return the conversion result inside the rusqlite one, so a
/// bad JSON column becomes `Corrupt` naming the record rather than a generic
/// conversion error.
type Decoded<T> = rusqlite::Result<Result<T, StoreError>>;

fn flatten<T>(r: Decoded<T>) -> Result<T, StoreError> {
    r?
}

fn read_revision(row: &Row<'_>) -> Decoded<Revision> {
    let row = RevisionRow {
        id: row.get(0)?,
        function: row.get(1)?,
        number: row.get(2)?,
        hash: row.get(3)?,
        manifest_json: row.get(4)?,
        created_ms: row.get(5)?,
        code_size: row.get(6)?,
    };
    Ok(row.decode())
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

fn read_function(row: &Row<'_>) -> Decoded<FunctionInfo> {
    let row = FunctionRow {
        name: row.get(0)?,
        current_revision: row.get(1)?,
        created_ms: row.get(2)?,
        updated_ms: row.get(3)?,
        latest_revision: row.get(4)?,
        hash: row.get(5)?,
        manifest_json: row.get(6)?,
    };
    Ok(row.decode())
}

fn read_activation(row: &Row<'_>) -> Decoded<Activation> {
    Ok(activation_row!(row.get, response = row.get(12)?).decode())
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

    async fn acquire_leases(&self, names: &[String], holder: &str, ttl: Duration) -> Result<Vec<String>, StoreError> {
        Ok(names.iter().filter(|n| self.local.acquire_lease(n, holder, ttl)).cloned().collect())
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
                &format!("SELECT seq, {ACTIVATION_INSERT_COLUMNS} FROM activations WHERE id = ?1"),
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
            let limit = effective_limit(query.limit);
            args.push(Value::Integer(limit.into()));
            let sql = format!(
                "SELECT seq, {ACTIVATION_INSERT_COLUMNS} FROM activations {filter} ORDER BY seq {order} LIMIT ?{}",
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
            let (params, annotations, feed) = rule_trigger_json(&t);
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

/// Adds one call to its function's `usage_daily` row of the day it started.
fn count_usage(conn: &Connection, a: &Activation) -> Result<(), StoreError> {
    let mut usage = conn.prepare_cached(
        "INSERT INTO usage_daily (function, day, invocations, errors, cold_starts, billed_ms, billed_mib_ms, \
         measured_byte_ms, cpu_ms) VALUES (?1, date(?2 / 1000, 'unixepoch'), 1, ?3, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT (function, day) DO UPDATE SET invocations = invocations + 1, errors = errors + ?3, \
         cold_starts = cold_starts + ?4, billed_ms = billed_ms + ?5, billed_mib_ms = billed_mib_ms + ?6, \
         measured_byte_ms = measured_byte_ms + ?7, cpu_ms = cpu_ms + ?8",
    )?;
    let d = UsageDelta::of(a);
    usage.execute(params![
        a.function,
        a.start_ms,
        d.errors,
        d.cold_starts,
        d.billed_ms,
        d.billed_mib_ms,
        d.measured_byte_ms,
        d.cpu_ms
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
        let mut stmt = tx.prepare_cached(&format!(
            "INSERT INTO activations ({ACTIVATION_INSERT_COLUMNS}) VALUES ({})",
            (1..=ACTIVATION_VALUES).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ")
        ))?;
        // Counted in the same transaction as the record: a stored record
        // is in the bill exactly once, and stays there when it is pruned.
        for a in batch {
            // `seq` is left to SQLite: AUTOINCREMENT never reuses a
            // number, even after pruning, so it stays a valid follow cursor.
            let row = ActivationRow::encode(a);
            let values: [&dyn rusqlite::ToSql; ACTIVATION_VALUES] = activation_values!(row, response = &row.response);
            let inserted = stmt.execute(&values[..]);
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
    //! What only the SQLite store has to show: files, reopening, old
    //! schemas, vacuum and the WAL. The trait's contract is `conformance`,
    //! run here on an in-memory store and in `tests/conformance.rs` on a file.

    use flick_core::{LogLine, LogStream};

    use super::*;
    use crate::conformance::{big_record as big, created, deploy, hash, manifest, record as activation};

    async fn insert(store: &SqliteStore, function: &str, start_ms: i64) -> i64 {
        store.insert_activation(&activation(function, start_ms)).await.unwrap()
    }

    async fn all_seqs(store: &SqliteStore) -> Vec<i64> {
        let query = ActivationQuery { after_seq: Some(0), ..Default::default() };
        store.activations(&query).await.unwrap().iter().map(|a| a.seq).collect()
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn file_size(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    fn stored(results: &[Inserted]) -> usize {
        results.iter().filter(|r| r.is_ok()).count()
    }

    #[tokio::test]
    async fn in_memory_store_keeps_the_store_contract() {
        crate::conformance::run(Arc::new(SqliteStore::open_in_memory().unwrap())).await;
    }

    #[tokio::test]
    async fn rule_triggers_and_rules_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flick.db");
        let t = RuleTrigger {
            name: "t".into(),
            params: serde_json::Map::new(),
            annotations: serde_json::json!([]),
            feed: Some(serde_json::json!({"cron": "* * * * * *"})),
            created_ms: 1,
            updated_ms: 1,
        };
        let r = Rule {
            name: "r".into(),
            trigger: "t".into(),
            action: "f".into(),
            active: false,
            annotations: serde_json::json!([]),
            created_ms: 2,
            updated_ms: 2,
        };
        {
            let store = SqliteStore::open(&path).unwrap();
            assert!(store.put_rule_trigger(&t, false).await.unwrap());
            assert!(store.put_rule(&r, false).await.unwrap());
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.rule_trigger("t").await.unwrap(), Some(t));
        assert_eq!(store.rule("r").await.unwrap(), Some(r));
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
