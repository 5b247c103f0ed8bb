//! Persistent state of flick behind one trait, [`Store`]: functions, their
//! immutable revisions and activation records. [`SqliteStore`] is the
//! embedded implementation `flick up` uses; [`PgStore`] keeps the same
//! state in PostgreSQL, for several nodes sharing it. Callers only ever see
//! `Arc<dyn Store>`, and [`conformance`] holds both to the same contract.
//!
//! Code itself is not in the store: [`CodeStore`] keeps uploaded archives and
//! unpacked code directories on disk, addressed by content hash.

mod cluster;
mod code;
pub mod conformance;
mod error;
mod logcodec;
mod postgres;
mod rows;
mod sqlite;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use async_trait::async_trait;
use flick_core::{Activation, ActivationId, CallbackOutcome, Cause, FunctionInfo, Manifest, Revision};

pub use cluster::{Change, NodeRecord};
pub use code::CodeStore;
pub use error::{StoreError, is_disk_full};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// A trigger that fires rules (OpenWhisk's model: a named channel of
/// events; each active [`Rule`] on it invokes one function). Flick's own
/// `[[triggers]]` live in manifests instead; these are made through an API.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleTrigger {
    pub name: String,
    /// Parameters every event of the trigger carries (under the event's own).
    pub params: serde_json::Map<String, serde_json::Value>,
    /// The surface's own metadata, kept as sent (OpenWhisk's key/value list).
    pub annotations: serde_json::Value,
    /// The event source that fires it (a feed's configuration), if any.
    pub feed: Option<serde_json::Value>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// A rule: while `active`, each event of `trigger` invokes `action` (a
/// function) asynchronously.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: String,
    pub trigger: String,
    pub action: String,
    pub active: bool,
    pub annotations: serde_json::Value,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// What a deploy hands the store: the validated manifest and content identity.
#[derive(Clone, Debug)]
pub struct NewRevision {
    pub manifest: Manifest,
    /// `sha256:<hex>` of the content.
    pub hash: String,
    pub code_size: u64,
    /// Hex sha256 of the uploaded archive (its name in `archives/`), if kept.
    pub archive: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PutOutcome {
    /// A new revision was created and made current.
    Created(Revision),
    /// The current revision already has this hash: nothing changed.
    Unchanged(Revision),
}

/// Which activation records to list. Results are newest first unless
/// `after_seq` is set, in which case they are oldest first (a cursor for
/// following logs).
/// One function's usage on one day (UTC): sums over the records stored
/// for calls that started that day.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UsageDay {
    pub function: String,
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub invocations: u64,
    /// Calls whose status was not `success`.
    pub errors: u64,
    pub cold_starts: u64,
    /// Σ billed duration (init + exec, each call rounded up to 1 ms).
    pub billed_ms: u64,
    /// Σ configured memory (MiB) × billed ms.
    pub billed_mib_ms: u64,
    /// Σ measured memory peak (bytes) × billed ms.
    pub measured_byte_ms: f64,
    /// Σ measured CPU time (user + system).
    pub cpu_ms: f64,
}

#[derive(Clone, Debug, Default)]
pub struct ActivationQuery {
    pub function: Option<String>,
    /// Only records of calls with this cause.
    pub cause: Option<Cause>,
    /// Only records of calls fired by the trigger of this name.
    pub trigger: Option<String>,
    /// Only records that are part of this activation (a sequence's steps).
    pub parent: Option<ActivationId>,
    /// Only records stored after this sequence number (see [`Activation::seq`]).
    pub after_seq: Option<i64>,
    pub limit: u32,
}

/// Bounds on the activation records kept, enforced by every batch insert
/// (not by a periodic sweep), so a flood of calls cannot outgrow them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordLimits {
    /// Records kept per function; older ones go first.
    pub per_function: u32,
    /// Size budget of the database: the oldest records (of any function)
    /// are deleted to keep its used pages under this many bytes.
    pub max_bytes: u64,
}

impl RecordLimits {
    /// No bounds (tests, tools).
    pub const UNLIMITED: Self = Self { per_function: u32::MAX, max_bytes: u64::MAX };
}

/// What one store maintenance pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Bytes given back to the file system by incremental vacuum.
    pub reclaimed_bytes: u64,
    /// The write-ahead log was checkpointed and truncated.
    pub checkpointed: bool,
}

/// One record of a batch: stored with its sequence number, or refused on
/// its own (the rest of the batch is still stored).
pub type Inserted = Result<i64, StoreError>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Records a deploy. Creates the function on its first deploy; returns
    /// `Unchanged` when the current revision has the same hash.
    async fn put_revision(&self, new: NewRevision) -> Result<PutOutcome, StoreError>;

    async fn function(&self, name: &str) -> Result<Option<FunctionInfo>, StoreError>;

    /// All functions, by name.
    async fn functions(&self) -> Result<Vec<FunctionInfo>, StoreError>;

    /// The revision a function currently serves.
    async fn current_revision(&self, name: &str) -> Result<Option<Revision>, StoreError>;

    async fn revision(&self, name: &str, number: u32) -> Result<Option<Revision>, StoreError>;

    /// All revisions of a function, newest first.
    async fn revisions(&self, name: &str) -> Result<Vec<Revision>, StoreError>;

    /// Points a function at one of its existing revisions (rollback).
    async fn set_current(&self, name: &str, number: u32) -> Result<Revision, StoreError>;

    /// Deletes a function with its revisions and activations; `false` if it did not exist.
    async fn delete_function(&self, name: &str) -> Result<bool, StoreError>;

    /// Content hashes still referenced by any revision (to sweep unused code).
    async fn referenced_hashes(&self) -> Result<Vec<String>, StoreError>;

    /// Stores a finished activation, without record limits; returns its sequence number.
    /// Archive names (hex sha256) still referenced by any revision.
    async fn referenced_archives(&self) -> Result<Vec<String>, StoreError>;

    /// The archive (hex sha256) a revision was deployed from, by the
    /// revision's id; `None` for an unknown id or a revision without one.
    async fn revision_archive(&self, revision_id: u64) -> Result<Option<String>, StoreError>;

    /// Deletes a function's revisions beyond the newest `keep`, except the
    /// current one and the one a plain rollback would go back to; returns
    /// the deleted revisions, oldest first.
    async fn prune_revisions(&self, name: &str, keep: u32) -> Result<Vec<Revision>, StoreError>;

    /// Copies the write-ahead log into the database and empties it, so
    /// deleted rows do not linger in the log file.
    async fn checkpoint(&self) -> Result<(), StoreError>;

    /// Stores a finished activation; returns its sequence number.
    async fn insert_activation(&self, activation: &Activation) -> Result<i64, StoreError>;

    /// Stores a batch of finished activations in one transaction and
    /// enforces `limits` in it (room is made before the batch goes in).
    /// A record the database refuses on its own (say, a duplicate id) is
    /// reported in its slot and the others are stored; `Err` means nothing
    /// was stored — see [`StoreError::is_transient`] for whether to retry.
    async fn insert_activations(&self, batch: &[Activation], limits: RecordLimits)
    -> Result<Vec<Inserted>, StoreError>;

    async fn activation(&self, id: &ActivationId) -> Result<Option<Activation>, StoreError>;

    async fn activations(&self, query: &ActivationQuery) -> Result<Vec<Activation>, StoreError>;

    /// How many activation records each function has (those still kept).
    async fn activation_counts(&self) -> Result<Vec<(String, u64)>, StoreError>;

    /// Deletes one record (a dead letter being redriven runs again under
    /// its id); `false` if there was none.
    async fn delete_activation(&self, id: &ActivationId) -> Result<bool, StoreError>;

    /// Notes on a stored record how its callback delivery went; `false` if
    /// there is no such record.
    async fn set_callback(&self, id: &ActivationId, outcome: &CallbackOutcome) -> Result<bool, StoreError>;

    /// Retention: deletes activations that started before `older_than_ms`, and
    /// all but the newest `keep_per_function` of each function. Returns how many went.
    async fn prune_activations(&self, older_than_ms: i64, keep_per_function: u32) -> Result<u64, StoreError>;

    /// Gives freed space back to the file system (a bounded step of
    /// incremental vacuum) and checkpoints the write-ahead log, truncating it.
    async fn maintain(&self) -> Result<Maintenance, StoreError>;

    /// The last tick a cron trigger fired: the schedule (with its zone) it
    /// belonged to and its time in ms. Deleted with the function.
    async fn trigger_tick(&self, function: &str, trigger: &str) -> Result<Option<(String, i64)>, StoreError>;

    /// Usage per function and day (UTC), from the day of `since_ms` on,
    /// for one function or all; ordered by day, then function. Summed as
    /// records were stored, so pruning records leaves it as it was.
    async fn usage(&self, function: Option<&str>, since_ms: i64) -> Result<Vec<UsageDay>, StoreError>;

    /// Counts a call that ran but stores no record of its own (an async
    /// attempt that will be retried) in `usage`, as a stored record is.
    async fn count_usage(&self, activation: &Activation) -> Result<(), StoreError>;

    /// Stores a rule trigger; with `overwrite` false an existing one is
    /// left alone and `false` comes back. An overwrite keeps `created_ms`.
    async fn put_rule_trigger(&self, trigger: &RuleTrigger, overwrite: bool) -> Result<bool, StoreError>;

    async fn rule_trigger(&self, name: &str) -> Result<Option<RuleTrigger>, StoreError>;

    /// All rule triggers, by name.
    async fn rule_triggers(&self) -> Result<Vec<RuleTrigger>, StoreError>;

    /// `false` if there was none. Its rules stay (they fire again if a
    /// trigger of that name comes back), as OpenWhisk's do.
    async fn delete_rule_trigger(&self, name: &str) -> Result<bool, StoreError>;

    /// Stores a rule; as [`Store::put_rule_trigger`].
    async fn put_rule(&self, rule: &Rule, overwrite: bool) -> Result<bool, StoreError>;

    async fn rule(&self, name: &str) -> Result<Option<Rule>, StoreError>;

    /// All rules (of one trigger, or all), by name.
    async fn rules(&self, trigger: Option<&str>) -> Result<Vec<Rule>, StoreError>;

    /// `false` if there was none.
    async fn delete_rule(&self, name: &str) -> Result<bool, StoreError>;

    /// Turns a rule on or off; `false` if there is no such rule.
    async fn set_rule_active(&self, name: &str, active: bool) -> Result<bool, StoreError>;

    /// Records the last tick a cron trigger fired.
    async fn set_trigger_tick(
        &self,
        function: &str,
        trigger: &str,
        schedule: &str,
        tick_ms: i64,
    ) -> Result<(), StoreError>;

    // ---- Nodes sharing this store (`cluster.rs`) ----

    /// Other nodes may use this store at once: code must be shared through
    /// it and cached routes must follow [`Store::changes`].
    fn is_shared(&self) -> bool {
        false
    }

    /// Notices of what other nodes changed; `None` when nothing else writes
    /// this store.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        None
    }

    /// Says `node` is alive (its `heartbeat_ms` is set by the store's own
    /// clock, so nodes' clocks need not agree), forgets members silent for
    /// longer than `expire_after`, and returns the live members by id.
    async fn heartbeat(
        &self,
        node: &NodeRecord,
        expire_after: std::time::Duration,
    ) -> Result<Vec<NodeRecord>, StoreError>;

    /// The members as last seen (live or not yet expired), by id.
    async fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;

    /// A node that stops cleanly leaves at once.
    async fn leave(&self, node_id: &str) -> Result<(), StoreError>;

    /// Takes or renews the lease `name` for `holder` until `ttl` from now
    /// (the store's clock); `false` while another holder's lease runs.
    async fn acquire_lease(&self, name: &str, holder: &str, ttl: std::time::Duration) -> Result<bool, StoreError> {
        Ok(self.acquire_leases(&[name.to_string()], holder, ttl).await?.iter().any(|n| n == name))
    }

    /// [`Store::acquire_lease`] for many leases at once (one statement: a
    /// node renews all its trigger leases every second); the names now
    /// held by `holder`.
    async fn acquire_leases(
        &self,
        names: &[String],
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Vec<String>, StoreError>;

    /// Gives a lease up early (only if `holder` holds it).
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;

    /// A value made once for every node (the admin key, the cluster's id):
    /// stores `proposed` if `name` has none yet and returns the stored one.
    async fn setting(&self, name: &str, proposed: &str) -> Result<String, StoreError>;

    /// Keeps a revision's runnable code (a packed archive of the code
    /// directory, dependencies installed) under its content hash, for
    /// other nodes. A store that is not shared keeps nothing.
    async fn put_code(&self, _hash: &str, _archive: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }

    /// The archive [`Store::put_code`] kept under `hash`, with the hex
    /// sha256 the store computed when it was put (for the reader to check
    /// what arrived).
    async fn code(&self, _hash: &str) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        Ok(None)
    }

    /// Forgets archives no revision references any more; returns how many.
    async fn sweep_code(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
}
