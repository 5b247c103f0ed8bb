//! The PostgreSQL schema: an ordered list of migrations, applied at
//! [`PgStore::connect`](super::PgStore::connect) in one transaction under
//! an advisory lock, so nodes starting together migrate exactly once (the
//! others wait on the lock, then find the work done).

use deadpool_postgres::Object;

use crate::StoreError;

/// `pg_advisory_xact_lock` key held while migrating ("flick_m1").
const MIGRATION_LOCK: i64 = i64::from_be_bytes(*b"flick_m1");

/// Migrations in order: entry `i` takes `flick_schema_version.version`
/// from `i` to `i + 1`. Append only; never edit one that has shipped.
///
/// The columns are those of the SQLite schema (as of its migration 10),
/// so `rows.rs` reads and writes both; the differences: BIGINT/DOUBLE
/// PRECISION/BOOLEAN for SQLite's INTEGER/REAL, the response as BYTEA (a
/// TEXT value cannot hold a NUL byte, which a response may), text compared
/// byte-wise (`COLLATE "C"`, SQLite's BINARY: listings sort as there), and
/// `activations.bytes`, each record's estimated size, summed in
/// `activation_bytes` by statement triggers so the size budget is one read.
const MIGRATIONS: &[&str] = &[
    // 1: everything the SQLite store had at its version 10.
    r#"
    CREATE TABLE functions (
        name             TEXT COLLATE "C" PRIMARY KEY,
        current_revision BIGINT NOT NULL,
        created_ms       BIGINT NOT NULL,
        updated_ms       BIGINT NOT NULL
    );
    CREATE TABLE revisions (
        id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        function      TEXT COLLATE "C" NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
        number        BIGINT NOT NULL,
        hash          TEXT COLLATE "C" NOT NULL,
        manifest_json TEXT NOT NULL,
        created_ms    BIGINT NOT NULL,
        code_size     BIGINT NOT NULL,
        archive       TEXT COLLATE "C",
        UNIQUE (function, number)
    );
    -- No foreign key to functions: an invocation that finishes just after its
    -- function was deleted must still be able to write its record.
    CREATE TABLE activations (
        seq                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id                 TEXT COLLATE "C" NOT NULL UNIQUE,
        function           TEXT COLLATE "C" NOT NULL,
        revision           BIGINT NOT NULL,
        start_ms           BIGINT NOT NULL,
        end_ms             BIGINT NOT NULL,
        duration_ms        DOUBLE PRECISION NOT NULL,
        init_ms            DOUBLE PRECISION NOT NULL,
        wait_ms            DOUBLE PRECISION NOT NULL,
        cold               BOOLEAN NOT NULL,
        status             TEXT NOT NULL,
        http_status        BIGINT NOT NULL,
        response           BYTEA NOT NULL,
        response_truncated BOOLEAN NOT NULL,
        logs               BYTEA NOT NULL,
        logs_truncated     BOOLEAN NOT NULL,
        exec_ms            DOUBLE PRECISION NOT NULL,
        prewarmed          BOOLEAN NOT NULL,
        revision_id        BIGINT NOT NULL,
        cause              TEXT COLLATE "C" NOT NULL,
        trigger            TEXT COLLATE "C",
        attempt            BIGINT NOT NULL,
        max_attempts       BIGINT NOT NULL,
        attempts_json      TEXT NOT NULL,
        parent             TEXT COLLATE "C",
        caller_gave_up_ms  DOUBLE PRECISION,
        callback_json      TEXT,
        memory_mb          BIGINT NOT NULL,
        cpu_ms             DOUBLE PRECISION,
        memory_peak_bytes  BIGINT,
        trace_id           TEXT,
        span_id            TEXT,
        parent_span_id     TEXT,
        traceparent        TEXT,
        bytes              BIGINT NOT NULL
    );
    CREATE INDEX activations_function_seq ON activations(function, seq);
    CREATE INDEX activations_start_ms ON activations(start_ms);
    CREATE INDEX activations_cause_seq ON activations(cause, seq);
    CREATE INDEX activations_trigger_seq ON activations(trigger, seq) WHERE trigger IS NOT NULL;
    CREATE INDEX activations_parent_seq ON activations(parent, seq) WHERE parent IS NOT NULL;

    -- The sum of activations.bytes, kept by whatever inserts or deletes
    -- records (one row; writers already take the activations lock).
    CREATE TABLE activation_bytes (total BIGINT NOT NULL);
    INSERT INTO activation_bytes VALUES (0);
    CREATE FUNCTION flick_activation_bytes_added() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE activation_bytes SET total = total + (SELECT COALESCE(SUM(bytes), 0) FROM changed);
        RETURN NULL;
    END $$;
    CREATE FUNCTION flick_activation_bytes_removed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE activation_bytes SET total = total - (SELECT COALESCE(SUM(bytes), 0) FROM changed);
        RETURN NULL;
    END $$;
    CREATE TRIGGER activations_bytes_added AFTER INSERT ON activations
        REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION flick_activation_bytes_added();
    CREATE TRIGGER activations_bytes_removed AFTER DELETE ON activations
        REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION flick_activation_bytes_removed();

    CREATE TABLE trigger_ticks (
        function TEXT COLLATE "C" NOT NULL,
        trigger  TEXT COLLATE "C" NOT NULL,
        schedule TEXT NOT NULL,
        tick_ms  BIGINT NOT NULL,
        PRIMARY KEY (function, trigger)
    );
    CREATE TABLE usage_daily (
        function         TEXT COLLATE "C" NOT NULL,
        day              TEXT COLLATE "C" NOT NULL,
        invocations      BIGINT NOT NULL,
        errors           BIGINT NOT NULL,
        cold_starts      BIGINT NOT NULL,
        billed_ms        BIGINT NOT NULL,
        billed_mib_ms    BIGINT NOT NULL,
        measured_byte_ms DOUBLE PRECISION NOT NULL,
        cpu_ms           DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (function, day)
    );
    CREATE TABLE rule_triggers (
        name             TEXT COLLATE "C" PRIMARY KEY,
        params_json      TEXT NOT NULL,
        annotations_json TEXT NOT NULL,
        feed_json        TEXT,
        created_ms       BIGINT NOT NULL,
        updated_ms       BIGINT NOT NULL
    );
    CREATE TABLE rules (
        name             TEXT COLLATE "C" PRIMARY KEY,
        trigger          TEXT COLLATE "C" NOT NULL,
        action           TEXT COLLATE "C" NOT NULL,
        active           BOOLEAN NOT NULL,
        annotations_json TEXT NOT NULL,
        created_ms       BIGINT NOT NULL,
        updated_ms       BIGINT NOT NULL
    );
    CREATE INDEX rules_trigger ON rules(trigger);
    "#,
    // 2: what nodes sharing the store coordinate (`cluster.rs`): members
    // and their heartbeats, leases, settings made once for all (the admin
    // key), every revision's installed code, and a notice on each change
    // of a function's current revision, sent at commit (NOTIFY is
    // transactional), which every node LISTENs for.
    r#"
    CREATE TABLE nodes (
        id           TEXT COLLATE "C" PRIMARY KEY,
        address      TEXT NOT NULL,
        started_ms   BIGINT NOT NULL,
        heartbeat_ms BIGINT NOT NULL,
        inflight     BIGINT NOT NULL,
        instances    BIGINT NOT NULL,
        version      TEXT NOT NULL
    );
    CREATE TABLE leases (
        name     TEXT COLLATE "C" PRIMARY KEY,
        holder   TEXT COLLATE "C" NOT NULL,
        until_ms BIGINT NOT NULL
    );
    CREATE TABLE settings (
        name  TEXT COLLATE "C" PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE code (
        hash       TEXT COLLATE "C" PRIMARY KEY,
        sha256     TEXT NOT NULL,
        archive    BYTEA NOT NULL,
        created_ms BIGINT NOT NULL
    );
    CREATE FUNCTION flick_function_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            PERFORM pg_notify('flick_changes', OLD.name);
        ELSE
            PERFORM pg_notify('flick_changes', NEW.name);
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER functions_changed AFTER INSERT OR UPDATE OR DELETE ON functions
        FOR EACH ROW EXECUTE FUNCTION flick_function_changed();
    -- Rule triggers and rules (their alarm feeds): one notice per statement,
    -- named `#rules` (no function name starts with `#`).
    CREATE FUNCTION flick_rules_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('flick_changes', '#rules');
        RETURN NULL;
    END $$;
    CREATE TRIGGER rule_triggers_changed AFTER INSERT OR UPDATE OR DELETE ON rule_triggers
        FOR EACH STATEMENT EXECUTE FUNCTION flick_rules_changed();
    CREATE TRIGGER rules_changed AFTER INSERT OR UPDATE OR DELETE ON rules
        FOR EACH STATEMENT EXECUTE FUNCTION flick_rules_changed();
    "#,
];

/// The schema version this build writes.
pub(super) const VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the schema up to date (or refuses a newer one). The lock is the
/// transaction's first statement, so even the version table is created by
/// one node only (`CREATE TABLE IF NOT EXISTS` alone races).
pub(super) async fn migrate(client: &mut Object, target: &str) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS flick_schema_version (version BIGINT NOT NULL)").await?;
    let found = match tx.query_opt("SELECT version FROM flick_schema_version", &[]).await? {
        Some(row) => row.try_get::<_, i64>(0)?,
        None => {
            tx.execute("INSERT INTO flick_schema_version VALUES (0)", &[]).await?;
            0
        }
    };
    if found > VERSION {
        return Err(StoreError::SchemaTooNew { path: target.to_string(), found, supported: VERSION });
    }
    if found == VERSION {
        return Ok(());
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tracing::info!(database = target, version = i + 1, "migrating the PostgreSQL schema");
        tx.batch_execute(step).await?;
    }
    tx.execute("UPDATE flick_schema_version SET version = $1", &[&VERSION]).await?;
    tx.commit().await?;
    Ok(())
}

/// The version recorded in the database (tests).
#[cfg(test)]
pub(super) async fn version(client: &Object) -> Result<i64, StoreError> {
    Ok(client.query_one("SELECT version FROM flick_schema_version", &[]).await?.try_get(0)?)
}
