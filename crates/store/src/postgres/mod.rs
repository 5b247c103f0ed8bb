//! [`PgStore`]: the [`Store`] in PostgreSQL, for nodes that share one
//! database; callers see exactly what [`SqliteStore`](crate::SqliteStore)
//! gives them (`conformance` holds both to that).
//!
//! - **Connections**: a pool of [`POOL_SIZE`] (deadpool), plain TCP or a
//!   unix socket, no TLS. Cloning a store clones the pool handle.
//! - **Schema**: migrations in `schema.rs`, run by
//!   [`PgStore::connect`] in one transaction holding an advisory lock, so
//!   nodes starting at once migrate exactly once.
//! - **Follow cursors**: an identity column hands out `seq` at insert, not
//!   at commit, so without care a reader could see seq 6 committed while 5
//!   is still in flight, move its `after_seq` cursor past 5 and never see
//!   it. Every transaction that inserts (or deletes) records therefore
//!   first takes one advisory lock, [`ACTIVATIONS_LOCK`]: numbers are
//!   allocated, and committed, one transaction after another, so seq order
//!   is commit order. That serialises record writes across nodes — they
//!   come in batches (the platform's writer), so it costs little.
//! - **Record limits**: `per_function` as in SQLite; `max_bytes` bounds the
//!   records' estimated size (response + logs + 512 bytes each, summed in
//!   the `activation_bytes` row by triggers), not the table's size on disk:
//!   `pg_total_relation_size` does not fall when rows are deleted (the
//!   space is reused after autovacuum, the file rarely shrinks), so
//!   enforcing it would delete every record once the table had reached the
//!   budget. The disk holds the budget plus what autovacuum has yet to
//!   reclaim.
//! - **Maintenance**: autovacuum reclaims space and there is no WAL file of
//!   ours to truncate, so [`Store::maintain`] and [`Store::checkpoint`] do
//!   nothing.

mod cluster;
mod schema;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime};
use flick_core::{Activation, ActivationId, CallbackOutcome, FunctionInfo, Revision, now_ms};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::rows::{
    ACTIVATION_INSERT_COLUMNS, ACTIVATION_VALUES, ActivationRow, FUNCTION_SELECT, FunctionRow, REVISION_COLUMNS,
    RULE_SELECT, RULE_TRIGGER_SELECT, RevisionRow, RuleRow, RuleTriggerRow, UsageDelta, activation_row,
    activation_values, corrupt, effective_limit, record_bytes, rule_trigger_json,
};
use crate::{
    ActivationQuery, Inserted, Maintenance, NewRevision, PutOutcome, RecordLimits, Rule, RuleTrigger, Store,
    StoreError, UsageDay,
};

/// Connections kept: a few nodes' worth of concurrent requests each,
/// well under PostgreSQL's default 100 connections.
const POOL_SIZE: usize = 8;
/// How long making one connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a caller waits for a pooled connection to come free.
const WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// `pg_advisory_xact_lock` key of every transaction that inserts or
/// deletes activation records ("flick_a1"); see the module doc.
pub(crate) const ACTIVATIONS_LOCK: i64 = i64::from_be_bytes(*b"flick_a1");
/// First key of the two-key advisory lock on one function (the second is
/// `hashtext(name)`): deploys, rollbacks and deletes of it take turns.
const FUNCTION_LOCK: i32 = i32::from_be_bytes(*b"flkf");

/// The oldest and newest ms `to_timestamp` can turn into a day (years 1
/// and 9999), for usage days.
const DAY_MS_RANGE: (i64, i64) = (-62_135_596_800_000, 253_402_300_799_999);

/// The UTC day (`YYYY-MM-DD`) of a ms timestamp, as SQLite's `date(ms / 1000, 'unixepoch')`.
macro_rules! day_of {
    ($param:literal) => {
        concat!("to_char(to_timestamp(", $param, "::bigint / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD')")
    };
}

#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// `host:port/database`, for errors (never the password).
    target: Arc<str>,
    /// Other nodes' changes, as the database notifies them (`cluster.rs`).
    notices: Arc<cluster::Notices>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("target", &self.target).finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@host:port/db`,
    /// or key=value pairs), checks that it answers and brings its schema up
    /// to date. TLS is not supported: use a private network or a unix
    /// socket (`host=/run/postgresql`).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e: tokio_postgres::Error| StoreError::InvalidUrl(e.to_string()))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("flick");
        }
        let target: Arc<str> = describe(&config).into();
        // A connection the server closed is noticed (and replaced) at
        // checkout; a round trip per checkout is not worth it.
        let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
        let notices = Arc::new(cluster::Notices::start(config.clone(), target.clone()));
        let manager = Manager::from_config(config, NoTls, manager_config);
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(CONNECT_TIMEOUT))
            .wait_timeout(Some(WAIT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Connect { target: target.to_string(), detail: e.to_string() })?;
        let store = Self { pool, target, notices };
        let mut client = store.client().await?;
        schema::migrate(&mut client, &store.target).await?;
        Ok(store)
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(|e| {
            let target = self.target.to_string();
            match e {
                PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
                    StoreError::PoolTimeout { target, waited_s: WAIT_TIMEOUT.as_secs() }
                }
                PoolError::Timeout(_) => {
                    StoreError::Connect { target, detail: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()) }
                }
                PoolError::Backend(e) => StoreError::Connect { target, detail: error_detail(&e) },
                e => StoreError::Connect { target, detail: e.to_string() },
            }
        })
    }
}

/// A connection failure with its cause (tokio-postgres's own message is
/// often just "error connecting to server").
fn error_detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.to_string(),
        None => e.to_string(),
    }
}

/// `host:port/database` of a connection config, for messages.
fn describe(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => format!("{h}:{port}"),
        Some(Host::Unix(dir)) => format!("{}/.s.PGSQL.{port}", dir.display()),
        None => format!("localhost:{port}"),
    };
    let db = config.get_dbname().or(config.get_user()).unwrap_or("postgres");
    format!("{host}/{db}")
}

/// Takes the lock of one function's deploys for the transaction.
async fn lock_function(tx: &impl GenericClient, name: &str) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", &[&FUNCTION_LOCK, &name]).await?;
    Ok(())
}

async fn lock_activations(tx: &impl GenericClient) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ACTIVATIONS_LOCK]).await?;
    Ok(())
}

fn revision_row(r: &Row) -> Result<Revision, StoreError> {
    RevisionRow {
        id: r.try_get(0)?,
        function: r.try_get(1)?,
        number: r.try_get(2)?,
        hash: r.try_get(3)?,
        manifest_json: r.try_get(4)?,
        created_ms: r.try_get(5)?,
        code_size: r.try_get(6)?,
    }
    .decode()
}

fn function_row(r: &Row) -> Result<FunctionInfo, StoreError> {
    FunctionRow {
        name: r.try_get(0)?,
        current_revision: r.try_get(1)?,
        created_ms: r.try_get(2)?,
        updated_ms: r.try_get(3)?,
        latest_revision: r.try_get(4)?,
        hash: r.try_get(5)?,
        manifest_json: r.try_get(6)?,
    }
    .decode()
}

fn activation(r: &Row) -> Result<Activation, StoreError> {
    let response: Vec<u8> = r.try_get(12)?;
    let id = || r.try_get::<_, String>(1).unwrap_or_default();
    let response = String::from_utf8(response).map_err(|e| corrupt(format!("activation {}", id()), e))?;
    activation_row!(r.try_get, response = response).decode()
}

fn rule_trigger_row(r: &Row) -> Result<RuleTrigger, StoreError> {
    RuleTriggerRow {
        name: r.try_get(0)?,
        params_json: r.try_get(1)?,
        annotations_json: r.try_get(2)?,
        feed_json: r.try_get(3)?,
        created_ms: r.try_get(4)?,
        updated_ms: r.try_get(5)?,
    }
    .decode()
}

fn rule_row(r: &Row) -> Result<Rule, StoreError> {
    RuleRow {
        name: r.try_get(0)?,
        trigger: r.try_get(1)?,
        action: r.try_get(2)?,
        active: r.try_get(3)?,
        annotations_json: r.try_get(4)?,
        created_ms: r.try_get(5)?,
        updated_ms: r.try_get(6)?,
    }
    .decode()
}

async fn load_revision(c: &impl GenericClient, name: &str, number: i64) -> Result<Option<Revision>, StoreError> {
    let sql = format!("SELECT {REVISION_COLUMNS} FROM revisions WHERE function = $1 AND number = $2");
    c.query_opt(&sql, &[&name, &number]).await?.as_ref().map(revision_row).transpose()
}

async fn current_number(c: &impl GenericClient, name: &str) -> Result<Option<i64>, StoreError> {
    let row = c.query_opt("SELECT current_revision FROM functions WHERE name = $1", &[&name]).await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

fn number_u32(function: &str, number: i64) -> Result<u32, StoreError> {
    u32::try_from(number).map_err(|_| corrupt(format!("function `{function}`"), format!("revision {number}")))
}

/// Adds the calls of `records` to their functions' `usage_daily` rows of
/// the days they started: one statement, grouped in the database so that
/// no row is touched twice by it.
async fn count_usage(c: &impl GenericClient, records: &[&Activation]) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let stmt = c
        .prepare_cached(concat!(
            "INSERT INTO usage_daily (function, day, invocations, errors, cold_starts, billed_ms, billed_mib_ms, \
             measured_byte_ms, cpu_ms) \
             SELECT function, ",
            day_of!("start_ms"),
            ", COUNT(*), SUM(errors), SUM(cold_starts), SUM(billed_ms), SUM(billed_mib_ms), \
             SUM(measured_byte_ms), SUM(cpu_ms) \
             FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], \
                         $7::float8[], $8::float8[]) \
                  AS u(function, start_ms, errors, cold_starts, billed_ms, billed_mib_ms, measured_byte_ms, cpu_ms) \
             GROUP BY 1, 2 \
             ON CONFLICT (function, day) DO UPDATE SET invocations = usage_daily.invocations + EXCLUDED.invocations, \
             errors = usage_daily.errors + EXCLUDED.errors, cold_starts = usage_daily.cold_starts + EXCLUDED.cold_starts, \
             billed_ms = usage_daily.billed_ms + EXCLUDED.billed_ms, \
             billed_mib_ms = usage_daily.billed_mib_ms + EXCLUDED.billed_mib_ms, \
             measured_byte_ms = usage_daily.measured_byte_ms + EXCLUDED.measured_byte_ms, \
             cpu_ms = usage_daily.cpu_ms + EXCLUDED.cpu_ms"
        ))
        .await?;
    let deltas: Vec<UsageDelta> = records.iter().map(|a| UsageDelta::of(a)).collect();
    let functions: Vec<&str> = records.iter().map(|a| a.function.as_str()).collect();
    let starts: Vec<i64> = records.iter().map(|a| a.start_ms.clamp(DAY_MS_RANGE.0, DAY_MS_RANGE.1)).collect();
    let column = |f: fn(&UsageDelta) -> i64| deltas.iter().map(f).collect::<Vec<i64>>();
    let (errors, colds, billed, mib) =
        (column(|d| d.errors), column(|d| d.cold_starts), column(|d| d.billed_ms), column(|d| d.billed_mib_ms));
    let measured: Vec<f64> = deltas.iter().map(|d| d.measured_byte_ms).collect();
    let cpu: Vec<f64> = deltas.iter().map(|d| d.cpu_ms).collect();
    c.execute(&stmt, &[&functions, &starts, &errors, &colds, &billed, &mib, &measured, &cpu]).await?;
    Ok(())
}

/// The most records one `INSERT` carries: 128 × 34 parameters stays far
/// under PostgreSQL's 65,535.
const INSERT_ROWS: usize = 128;
const _: () = assert!(INSERT_ROWS.is_power_of_two(), "insert_sql makes one text per power of two");

/// Stores `records` in as few statements as it can: one multi-row
/// `INSERT` per [`INSERT_ROWS`], the remainder in power-of-two pieces, so
/// that a handful of prepared statements serve every batch size. (One
/// statement per record cost a round trip and a run of the byte-count
/// trigger each, and capped a node at ~2,000 records/s.) The `seq` of
/// each, in order.
async fn insert_rows(c: &impl GenericClient, records: &[Activation]) -> Result<Vec<i64>, StoreError> {
    let mut seqs = Vec::with_capacity(records.len());
    let mut rest = records;
    while !rest.is_empty() {
        let n = if rest.len() >= INSERT_ROWS { INSERT_ROWS } else { 1 << rest.len().ilog2() };
        let (chunk, tail) = rest.split_at(n);
        seqs.extend(insert_chunk(c, chunk).await?);
        rest = tail;
    }
    Ok(seqs)
}

/// The `INSERT` of `rows` records (a power of two up to [`INSERT_ROWS`]),
/// each text made once: a 128-row one has 4,352 placeholders.
fn insert_sql(rows: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let per_row = ACTIVATION_VALUES + 1;
    let all = SQL.get_or_init(|| {
        (0..=INSERT_ROWS.ilog2())
            .map(|power| {
                let tuples: Vec<String> = (0..1usize << power)
                    .map(|r| {
                        let cells: Vec<String> = (1..=per_row).map(|i| format!("${}", r * per_row + i)).collect();
                        format!("({})", cells.join(", "))
                    })
                    .collect();
                format!(
                    "INSERT INTO activations ({ACTIVATION_INSERT_COLUMNS}, bytes) VALUES {} RETURNING id, seq",
                    tuples.join(", ")
                )
            })
            .collect()
    });
    debug_assert!(rows.is_power_of_two() && rows <= INSERT_ROWS);
    &all[rows.ilog2() as usize]
}

async fn insert_chunk(c: &impl GenericClient, chunk: &[Activation]) -> Result<Vec<i64>, StoreError> {
    let per_row = ACTIVATION_VALUES + 1;
    let stmt = c.prepare_cached(insert_sql(chunk.len())).await?;
    let rows: Vec<ActivationRow> = chunk.iter().map(ActivationRow::encode).collect();
    let bytes: Vec<i64> = chunk.iter().map(|a| record_bytes(a).min(i64::MAX as u64) as i64).collect();
    let responses: Vec<&[u8]> = rows.iter().map(|r| r.response.as_bytes()).collect();
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(chunk.len() * per_row);
    for ((row, response), bytes) in rows.iter().zip(&responses).zip(&bytes) {
        let values: [&(dyn ToSql + Sync); ACTIVATION_VALUES] = activation_values!(row, response = response);
        params.extend(values);
        params.push(bytes);
    }
    // `RETURNING` order is not promised to follow `VALUES` order: match by id.
    let returned = c.query(&stmt, &params).await?;
    let mut seq_of = std::collections::HashMap::with_capacity(returned.len());
    for r in &returned {
        seq_of.insert(r.try_get::<_, String>(0)?, r.try_get::<_, i64>(1)?);
    }
    rows.iter()
        .map(|r| seq_of.get(&r.id).copied().ok_or_else(|| corrupt(format!("activation {}", r.id), "no seq returned")))
        .collect()
}

/// One batch in the caller's transaction: take the activations lock (the
/// cursor guarantee, see the module doc) before any `seq` is allocated,
/// make room under the size budget, insert the records (one the database
/// refuses alone is reported, not fatal to the others), count them in
/// usage, then cut each touched function back to its record count.
pub(crate) async fn insert_batch(
    tx: &impl GenericClient,
    batch: &[Activation],
    limits: RecordLimits,
) -> Result<Vec<Inserted>, StoreError> {
    lock_activations(tx).await?;
    if limits.max_bytes != u64::MAX {
        let incoming = batch.iter().map(record_bytes).sum();
        make_room(tx, incoming, limits.max_bytes).await?;
    }
    // A failed statement aborts a PostgreSQL transaction, so records go in
    // under a savepoint: all at once first; if one is refused, again one
    // savepoint each, so that only it is left out.
    tx.batch_execute("SAVEPOINT batch").await?;
    let results: Vec<Inserted> = match insert_rows(tx, batch).await {
        Ok(seqs) => seqs.into_iter().map(Ok).collect(),
        Err(e) if e.is_transient() => return Err(e),
        Err(_) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT batch").await?;
            let mut results = Vec::with_capacity(batch.len());
            for a in batch {
                tx.batch_execute("SAVEPOINT record").await?;
                match insert_rows(tx, std::slice::from_ref(a)).await {
                    Ok(seqs) => {
                        tx.batch_execute("RELEASE SAVEPOINT record").await?;
                        results.push(Ok(seqs[0]));
                    }
                    Err(e) if e.is_transient() => return Err(e),
                    Err(e) => {
                        tx.batch_execute("ROLLBACK TO SAVEPOINT record").await?;
                        results.push(Err(e));
                    }
                }
            }
            results
        }
    };
    tx.batch_execute("RELEASE SAVEPOINT batch").await?;
    let stored: Vec<&Activation> = batch.iter().zip(&results).filter(|(_, r)| r.is_ok()).map(|(a, _)| a).collect();
    count_usage(tx, &stored).await?;
    if limits.per_function != u32::MAX {
        let mut functions: Vec<&str> = stored.iter().map(|a| a.function.as_str()).collect();
        functions.sort_unstable();
        functions.dedup();
        let keep = i64::from(limits.per_function);
        let stmt = tx
            .prepare_cached(
                "DELETE FROM activations a USING (
                     SELECT f, (SELECT seq FROM activations WHERE function = f ORDER BY seq DESC LIMIT 1 OFFSET $2)
                         AS cut
                     FROM UNNEST($1::text[]) AS f
                 ) c WHERE a.function = c.f AND a.seq <= c.cut",
            )
            .await?;
        tx.execute(&stmt, &[&functions, &keep]).await?;
    }
    Ok(results)
}

/// Deletes the oldest records until `incoming` more bytes fit under
/// `max_bytes`, going down to 7/8 of it so that not every batch has to
/// prune: one statement, which walks the records oldest first only as far
/// as the bytes to free.
async fn make_room(tx: &impl GenericClient, incoming: u64, max_bytes: u64) -> Result<u64, StoreError> {
    let used: i64 = tx.query_one("SELECT total FROM activation_bytes", &[]).await?.try_get(0)?;
    let used = used.max(0) as u64;
    if used.saturating_add(incoming) <= max_bytes {
        return Ok(0);
    }
    let low_water = max_bytes - max_bytes / 8;
    let free = used.saturating_add(incoming).saturating_sub(low_water).min(i64::MAX as u64) as i64;
    let deleted = tx
        .execute(
            "DELETE FROM activations WHERE seq <= COALESCE(
                 (SELECT seq FROM (
                      SELECT seq, SUM(bytes) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) AS freed
                      FROM activations ORDER BY seq
                  ) oldest WHERE freed >= $1::bigint LIMIT 1),
                 (SELECT MAX(seq) FROM activations))",
            &[&free],
        )
        .await?;
    Ok(deleted)
}

#[async_trait]
impl Store for PgStore {
    fn is_shared(&self) -> bool {
        true
    }

    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<crate::Change>> {
        Some(self.notices.subscribe())
    }

    async fn heartbeat(
        &self,
        node: &crate::NodeRecord,
        expire_after: Duration,
    ) -> Result<Vec<crate::NodeRecord>, StoreError> {
        self.pg_heartbeat(node, expire_after).await
    }

    async fn nodes(&self) -> Result<Vec<crate::NodeRecord>, StoreError> {
        self.pg_nodes().await
    }

    async fn leave(&self, node_id: &str) -> Result<(), StoreError> {
        self.pg_leave(node_id).await
    }

    async fn acquire_leases(&self, names: &[String], holder: &str, ttl: Duration) -> Result<Vec<String>, StoreError> {
        self.pg_acquire_leases(names, holder, ttl).await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.pg_release_lease(name, holder).await
    }

    async fn setting(&self, name: &str, proposed: &str) -> Result<String, StoreError> {
        self.pg_setting(name, proposed).await
    }

    async fn put_code(&self, hash: &str, archive: &[u8]) -> Result<(), StoreError> {
        self.pg_put_code(hash, archive).await
    }

    async fn code(&self, hash: &str) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        self.pg_code(hash).await
    }

    async fn sweep_code(&self) -> Result<u64, StoreError> {
        self.pg_sweep_code().await
    }

    async fn put_revision(&self, new: NewRevision) -> Result<PutOutcome, StoreError> {
        let name = new.manifest.name.as_str().to_string();
        let manifest_json =
            serde_json::to_string(&new.manifest).map_err(|e| corrupt(format!("manifest of `{name}`"), e))?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Reading the current revision and then writing must not
        // interleave with another deploy of the same function.
        lock_function(&tx, &name).await?;
        let current = current_number(&tx, &name).await?;
        if let Some(number) = current {
            let rev = load_revision(&tx, &name, number).await?.ok_or_else(|| {
                corrupt(format!("function `{name}`"), format!("current revision {number} is missing"))
            })?;
            if rev.hash == new.hash {
                return Ok(PutOutcome::Unchanged(rev));
            }
        }
        let number: i64 = tx
            .query_one("SELECT COALESCE(MAX(number), 0) + 1 FROM revisions WHERE function = $1", &[&name])
            .await?
            .try_get(0)?;
        let now = now_ms();
        if current.is_some() {
            tx.execute(
                "UPDATE functions SET current_revision = $2, updated_ms = $3 WHERE name = $1",
                &[&name, &number, &now],
            )
            .await?;
        } else {
            tx.execute(
                "INSERT INTO functions (name, current_revision, created_ms, updated_ms) VALUES ($1, $2, $3, $3)",
                &[&name, &number, &now],
            )
            .await?;
        }
        let code_size = new.code_size.min(i64::MAX as u64) as i64;
        let id: i64 = tx
            .query_one(
                "INSERT INTO revisions (function, number, hash, manifest_json, created_ms, code_size, archive) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                &[&name, &number, &new.hash, &manifest_json, &now, &code_size, &new.archive],
            )
            .await?
            .try_get(0)?;
        tx.commit().await?;
        Ok(PutOutcome::Created(Revision {
            id: id as u64,
            number: number_u32(&name, number)?,
            function: name,
            hash: new.hash,
            manifest: new.manifest,
            created_ms: now,
            code_size: new.code_size,
        }))
    }

    async fn function(&self, name: &str) -> Result<Option<FunctionInfo>, StoreError> {
        let client = self.client().await?;
        let row = client.query_opt(&format!("{FUNCTION_SELECT} WHERE f.name = $1"), &[&name]).await?;
        row.as_ref().map(function_row).transpose()
    }

    async fn functions(&self) -> Result<Vec<FunctionInfo>, StoreError> {
        let client = self.client().await?;
        let rows = client.query(&format!("{FUNCTION_SELECT} ORDER BY f.name"), &[]).await?;
        rows.iter().map(function_row).collect()
    }

    async fn current_revision(&self, name: &str) -> Result<Option<Revision>, StoreError> {
        let client = self.client().await?;
        match current_number(&client, name).await? {
            Some(number) => load_revision(&client, name, number).await,
            None => Ok(None),
        }
    }

    async fn revision(&self, name: &str, number: u32) -> Result<Option<Revision>, StoreError> {
        let client = self.client().await?;
        load_revision(&client, name, number.into()).await
    }

    async fn revisions(&self, name: &str) -> Result<Vec<Revision>, StoreError> {
        let client = self.client().await?;
        let sql = format!("SELECT {REVISION_COLUMNS} FROM revisions WHERE function = $1 ORDER BY number DESC");
        client.query(&sql, &[&name]).await?.iter().map(revision_row).collect()
    }

    async fn set_current(&self, name: &str, number: u32) -> Result<Revision, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        lock_function(&tx, name).await?;
        if current_number(&tx, name).await?.is_none() {
            return Err(StoreError::FunctionNotFound(name.to_string()));
        }
        let rev = load_revision(&tx, name, number.into())
            .await?
            .ok_or_else(|| StoreError::RevisionNotFound { function: name.to_string(), number })?;
        tx.execute(
            "UPDATE functions SET current_revision = $2, updated_ms = $3 WHERE name = $1",
            &[&name, &i64::from(number), &now_ms()],
        )
        .await?;
        tx.commit().await?;
        Ok(rev)
    }

    async fn delete_function(&self, name: &str) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        lock_function(&tx, name).await?;
        lock_activations(&tx).await?;
        tx.execute("DELETE FROM activations WHERE function = $1", &[&name]).await?;
        tx.execute("DELETE FROM revisions WHERE function = $1", &[&name]).await?;
        tx.execute("DELETE FROM trigger_ticks WHERE function = $1", &[&name]).await?;
        let deleted = tx.execute("DELETE FROM functions WHERE name = $1", &[&name]).await?;
        tx.commit().await?;
        Ok(deleted > 0)
    }

    async fn referenced_hashes(&self) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows = client.query("SELECT DISTINCT hash FROM revisions ORDER BY hash", &[]).await?;
        Ok(rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?)
    }

    async fn referenced_archives(&self) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let sql = "SELECT DISTINCT archive FROM revisions WHERE archive IS NOT NULL ORDER BY archive";
        let rows = client.query(sql, &[]).await?;
        Ok(rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?)
    }

    async fn revision_archive(&self, revision_id: u64) -> Result<Option<String>, StoreError> {
        let Ok(id) = i64::try_from(revision_id) else {
            return Ok(None);
        };
        let client = self.client().await?;
        let row = client.query_opt("SELECT archive FROM revisions WHERE id = $1", &[&id]).await?;
        Ok(row.map(|r| r.try_get::<_, Option<String>>(0)).transpose()?.flatten())
    }

    async fn prune_revisions(&self, name: &str, keep: u32) -> Result<Vec<Revision>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        lock_function(&tx, name).await?;
        let Some(current) = current_number(&tx, name).await? else {
            return Ok(Vec::new());
        };
        // The newest `keep`, the current one and the one a plain rollback
        // would pick (the newest before the current) stay.
        let sql = format!(
            "SELECT {REVISION_COLUMNS} FROM revisions WHERE function = $1
               AND number <> $2
               AND number <> COALESCE((SELECT MAX(number) FROM revisions WHERE function = $1 AND number < $2), 0)
               AND number NOT IN (SELECT number FROM revisions WHERE function = $1 ORDER BY number DESC LIMIT $3)
             ORDER BY number"
        );
        let rows = tx.query(&sql, &[&name, &current, &i64::from(keep)]).await?;
        let doomed: Vec<Revision> = rows.iter().map(revision_row).collect::<Result<_, _>>()?;
        let ids: Vec<i64> = doomed.iter().map(|r| r.id as i64).collect();
        tx.execute("DELETE FROM revisions WHERE id = ANY($1)", &[&ids]).await?;
        tx.commit().await?;
        Ok(doomed)
    }

    /// Nothing to do: PostgreSQL manages its own write-ahead log.
    async fn checkpoint(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn insert_activation(&self, activation: &Activation) -> Result<i64, StoreError> {
        let results = self.insert_activations(std::slice::from_ref(activation), RecordLimits::UNLIMITED).await?;
        results.into_iter().next().unwrap_or_else(|| Err(StoreError::Task("a batch of one gave no result".into())))
    }

    async fn insert_activations(
        &self,
        batch: &[Activation],
        limits: RecordLimits,
    ) -> Result<Vec<Inserted>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let results = insert_batch(&tx, batch, limits).await?;
        tx.commit().await?;
        Ok(results)
    }

    async fn activation(&self, id: &ActivationId) -> Result<Option<Activation>, StoreError> {
        let client = self.client().await?;
        let sql = format!("SELECT seq, {ACTIVATION_INSERT_COLUMNS} FROM activations WHERE id = $1");
        client.query_opt(&sql, &[&id.as_str()]).await?.as_ref().map(activation).transpose()
    }

    async fn activations(&self, query: &ActivationQuery) -> Result<Vec<Activation>, StoreError> {
        // Built per query, as in SQLite, so each filter can use its index.
        let mut filters = Vec::new();
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut filter = |column: &str, value: Box<dyn ToSql + Sync + Send>| {
            args.push(value);
            filters.push(format!("{column} ${}", args.len()));
        };
        if let Some(function) = &query.function {
            filter("function =", Box::new(function.clone()));
        }
        if let Some(cause) = query.cause {
            filter("cause =", Box::new(cause.as_str().to_string()));
        }
        if let Some(trigger) = &query.trigger {
            filter("trigger =", Box::new(trigger.clone()));
        }
        if let Some(parent) = &query.parent {
            filter("parent =", Box::new(parent.as_str().to_string()));
        }
        if let Some(seq) = query.after_seq {
            filter("seq >", Box::new(seq));
        }
        let filter = if filters.is_empty() { String::new() } else { format!("WHERE {}", filters.join(" AND ")) };
        let order = if query.after_seq.is_some() { "ASC" } else { "DESC" };
        args.push(Box::new(i64::from(effective_limit(query.limit))));
        let sql = format!(
            "SELECT seq, {ACTIVATION_INSERT_COLUMNS} FROM activations {filter} ORDER BY seq {order} LIMIT ${}",
            args.len()
        );
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| &**a as &(dyn ToSql + Sync)).collect();
        let client = self.client().await?;
        client.query(&sql, &params).await?.iter().map(activation).collect()
    }

    async fn activation_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let client = self.client().await?;
        let sql = "SELECT function, count(*) FROM activations GROUP BY function ORDER BY function";
        let rows = client.query(sql, &[]).await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get::<_, i64>(1)?.max(0) as u64))).collect()
    }

    async fn delete_activation(&self, id: &ActivationId) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        lock_activations(&tx).await?;
        let deleted = tx.execute("DELETE FROM activations WHERE id = $1", &[&id.as_str()]).await?;
        tx.commit().await?;
        Ok(deleted > 0)
    }

    async fn set_callback(&self, id: &ActivationId, outcome: &CallbackOutcome) -> Result<bool, StoreError> {
        let json = serde_json::to_string(outcome).map_err(|e| corrupt(format!("activation {id}"), e))?;
        let client = self.client().await?;
        let sql = "UPDATE activations SET callback_json = $2 WHERE id = $1";
        Ok(client.execute(sql, &[&id.as_str(), &json]).await? > 0)
    }

    async fn prune_activations(&self, older_than_ms: i64, keep_per_function: u32) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        lock_activations(&tx).await?;
        let old = tx.execute("DELETE FROM activations WHERE start_ms < $1", &[&older_than_ms]).await?;
        let surplus = tx
            .execute(
                "DELETE FROM activations WHERE seq IN (
                     SELECT seq FROM (
                         SELECT seq, ROW_NUMBER() OVER (PARTITION BY function ORDER BY seq DESC) AS rank
                         FROM activations
                     ) ranked WHERE rank > $1
                 )",
                &[&i64::from(keep_per_function)],
            )
            .await?;
        tx.commit().await?;
        Ok(old + surplus)
    }

    /// Autovacuum gives space back and PostgreSQL checkpoints on its own:
    /// nothing for flick to do.
    async fn maintain(&self) -> Result<Maintenance, StoreError> {
        Ok(Maintenance::default())
    }

    async fn trigger_tick(&self, function: &str, trigger: &str) -> Result<Option<(String, i64)>, StoreError> {
        let client = self.client().await?;
        let sql = "SELECT schedule, tick_ms FROM trigger_ticks WHERE function = $1 AND trigger = $2";
        let row = client.query_opt(sql, &[&function, &trigger]).await?;
        Ok(row.map(|r| Ok::<_, tokio_postgres::Error>((r.try_get(0)?, r.try_get(1)?))).transpose()?)
    }

    async fn usage(&self, function: Option<&str>, since_ms: i64) -> Result<Vec<UsageDay>, StoreError> {
        let client = self.client().await?;
        let since = since_ms.clamp(DAY_MS_RANGE.0, DAY_MS_RANGE.1);
        let sql = concat!(
            "SELECT function, day, invocations, errors, cold_starts, billed_ms, billed_mib_ms, measured_byte_ms, \
             cpu_ms FROM usage_daily WHERE ($1::text IS NULL OR function = $1) AND day >= ",
            day_of!("$2"),
            " ORDER BY day, function"
        );
        let rows = client.query(sql, &[&function, &since]).await?;
        let count = |r: &Row, i: usize| r.try_get::<_, i64>(i).map(|n| n.max(0) as u64);
        let days = rows.iter().map(|r| {
            Ok::<_, tokio_postgres::Error>(UsageDay {
                function: r.try_get(0)?,
                day: r.try_get(1)?,
                invocations: count(r, 2)?,
                errors: count(r, 3)?,
                cold_starts: count(r, 4)?,
                billed_ms: count(r, 5)?,
                billed_mib_ms: count(r, 6)?,
                measured_byte_ms: r.try_get(7)?,
                cpu_ms: r.try_get(8)?,
            })
        });
        Ok(days.collect::<Result<_, _>>()?)
    }

    async fn count_usage(&self, activation: &Activation) -> Result<(), StoreError> {
        let client = self.client().await?;
        count_usage(&client, &[activation]).await
    }

    async fn put_rule_trigger(&self, t: &RuleTrigger, overwrite: bool) -> Result<bool, StoreError> {
        let (params, annotations, feed) = rule_trigger_json(t);
        let sql = if overwrite {
            "INSERT INTO rule_triggers (name, params_json, annotations_json, feed_json, created_ms, updated_ms)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (name) DO UPDATE SET params_json = EXCLUDED.params_json,
                 annotations_json = EXCLUDED.annotations_json, feed_json = EXCLUDED.feed_json,
                 updated_ms = EXCLUDED.updated_ms"
        } else {
            "INSERT INTO rule_triggers (name, params_json, annotations_json, feed_json, created_ms, updated_ms)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING"
        };
        let client = self.client().await?;
        let n = client.execute(sql, &[&t.name, &params, &annotations, &feed, &t.created_ms, &t.updated_ms]).await?;
        Ok(n > 0)
    }

    async fn rule_trigger(&self, name: &str) -> Result<Option<RuleTrigger>, StoreError> {
        let client = self.client().await?;
        let row = client.query_opt(&format!("{RULE_TRIGGER_SELECT} WHERE name = $1"), &[&name]).await?;
        row.as_ref().map(rule_trigger_row).transpose()
    }

    async fn rule_triggers(&self) -> Result<Vec<RuleTrigger>, StoreError> {
        let client = self.client().await?;
        client.query(&format!("{RULE_TRIGGER_SELECT} ORDER BY name"), &[]).await?.iter().map(rule_trigger_row).collect()
    }

    async fn delete_rule_trigger(&self, name: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        Ok(client.execute("DELETE FROM rule_triggers WHERE name = $1", &[&name]).await? > 0)
    }

    async fn put_rule(&self, r: &Rule, overwrite: bool) -> Result<bool, StoreError> {
        let sql = if overwrite {
            "INSERT INTO rules (name, trigger, action, active, annotations_json, created_ms, updated_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (name) DO UPDATE SET trigger = EXCLUDED.trigger, action = EXCLUDED.action,
                 active = EXCLUDED.active, annotations_json = EXCLUDED.annotations_json,
                 updated_ms = EXCLUDED.updated_ms"
        } else {
            "INSERT INTO rules (name, trigger, action, active, annotations_json, created_ms, updated_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING"
        };
        let annotations = r.annotations.to_string();
        let client = self.client().await?;
        let values: [&(dyn ToSql + Sync); 7] =
            [&r.name, &r.trigger, &r.action, &r.active, &annotations, &r.created_ms, &r.updated_ms];
        Ok(client.execute(sql, &values).await? > 0)
    }

    async fn rule(&self, name: &str) -> Result<Option<Rule>, StoreError> {
        let client = self.client().await?;
        let row = client.query_opt(&format!("{RULE_SELECT} WHERE name = $1"), &[&name]).await?;
        row.as_ref().map(rule_row).transpose()
    }

    async fn rules(&self, trigger: Option<&str>) -> Result<Vec<Rule>, StoreError> {
        let client = self.client().await?;
        let sql = format!("{RULE_SELECT} WHERE $1::text IS NULL OR trigger = $1 ORDER BY name");
        client.query(&sql, &[&trigger]).await?.iter().map(rule_row).collect()
    }

    async fn delete_rule(&self, name: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        Ok(client.execute("DELETE FROM rules WHERE name = $1", &[&name]).await? > 0)
    }

    async fn set_rule_active(&self, name: &str, active: bool) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let sql = "UPDATE rules SET active = $2, updated_ms = $3 WHERE name = $1";
        Ok(client.execute(sql, &[&name, &active, &now_ms()]).await? > 0)
    }

    async fn set_trigger_tick(
        &self,
        function: &str,
        trigger: &str,
        schedule: &str,
        tick_ms: i64,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO trigger_ticks (function, trigger, schedule, tick_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (function, trigger) DO UPDATE SET schedule = EXCLUDED.schedule, tick_ms = EXCLUDED.tick_ms",
                &[&function, &trigger, &schedule, &tick_ms],
            )
            .await?;
        Ok(())
    }
}
