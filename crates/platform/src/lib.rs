//! The native core of flick: every action the platform takes, whatever
//! surface asked for it. The HTTP API (and, later, compatibility layers and
//! triggers) only parse requests into calls on [`Platform`].
//!
//! # Layout
//! - `deploy`: archive → unpacked, hashed, dependencies installed → revision;
//! - `invoke`: route → scheduler lease → instance → activation record;
//! - `outcome`: what became of a call ([`Outcome`]), for each surface to
//!   render, and the native rendering records store;
//! - `events`: CloudEvents to the functions whose triggers match, and
//!   reply events routed on with loop protection;
//! - `rules`: triggers that fire rules (OpenWhisk's model), firing them
//!   through the async queue, and their alarm feeds;
//! - `sequence`: `runtime = "sequence"`, its steps through `invoke`, one
//!   parent record;
//! - `usage`: the daily usage per function, priced as a bill;
//! - `metrics`: the Prometheus registry (observed at the record point,
//!   collectors read at scrape time);
//! - this file: the [`Platform`] itself, its routes (function → current
//!   revision's pool), rollback, delete, garbage collection of code and
//!   archives, and the read-only queries.
//!
//! # One truth for routes and revisions
//! Revisions are identified by [`Revision::id`], which never repeats in the
//! life of a data dir; pools, routes and activation records are keyed by
//! it. Every change of a function (deploy, rollback, delete) holds that
//! function's change lock from its store write through the route switch,
//! so the store and the route table never disagree, whatever the order in
//! which concurrent changes arrive.

mod deploy;
mod dispatch;
mod error;
mod events;
pub mod forward;
mod install;
mod invoke;
pub mod live;
pub mod metrics;
mod outcome;
mod records;
mod rules;
mod sequence;
mod sharing;
mod usage;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use flick_core::{Activation, ActivationId, FunctionInfo, FunctionName, Revision, now_ms};
use flick_package::UnpackLimits;
use flick_queue::{ItemState, Queue};
use flick_runtime::InstanceSpec;
use flick_sandbox::Sandbox;
use flick_scheduler::{Pool, Scheduler};
use flick_store::{ActivationQuery, CodeStore, RecordLimits, Store};
use tokio::sync::{Notify, OwnedMutexGuard};

pub use deploy::DeployOutcome;
pub use dispatch::{AsyncConfig, Idempotent, Submitted, retryable};
pub use error::PlatformError;
pub use events::{DEFAULT_MAX_HOPS, EventDelivery};
pub use flick_queue::{AttemptError, Item, ItemState as QueueItemState};
pub use install::InstallConfig;
pub use invoke::{ATTEMPT_HEADER, Caller, InvokeResponse, Timing};
pub use live::{Live, LiveConfig};
pub use outcome::{Outcome, SequenceFailure};
pub use rules::{Alarm, AlarmSchedule, Fired, FiredRule, Rule, RuleTrigger, Saved};
pub use usage::{Pricing, UsageDayRow, UsageFunctionRow, UsageReport, UsageSums};

/// How long activation records are kept, and how many and how much of them.
/// Count and size are enforced with every batch of records written; age
/// once a minute.
#[derive(Clone, Debug)]
pub struct Retention {
    pub max_age: Duration,
    pub per_function: u32,
    /// Size budget of the database; the oldest records go to stay under it.
    pub max_bytes: u64,
}

/// Longest shutdown waits for the record writer's backlog (which it may be
/// retrying against a full disk) before giving up on it.
const SHUTDOWN_RECORD_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct PlatformConfig {
    pub unpack_limits: UnpackLimits,
    pub retention: Retention,
    /// How much of a response body an activation record keeps.
    pub response_capture_bytes: usize,
    /// Deploy-time dependency installs (`install.rs`).
    pub install: InstallConfig,
    /// Revisions kept per function (the current one and the one a rollback
    /// would go back to are always kept); older ones, their code and
    /// archives are removed. 0 keeps every revision.
    pub revisions_kept: u32,
    /// Async calls: shares, backlog bounds, retries, callbacks.
    pub asynchronous: AsyncConfig,
    /// How many reply hops a CloudEvent may travel (`events.rs`).
    pub event_max_hops: u32,
    /// Region and account of functions' ARNs (`[lambda]` in flick's config).
    pub lambda: flick_core::LambdaIdentity,
    /// Prices that turn usage into a bill (`[pricing]`; `usage.rs`).
    pub pricing: Pricing,
    /// Live log streams and in-memory statistics (`live.rs`).
    pub live: LiveConfig,
    /// Keep Prometheus metrics (`[metrics] enabled`); off, nothing is counted.
    pub metrics: bool,
}

/// How often code and archives no revision refers to are looked for, when
/// no deploy or delete asked for it sooner.
const GC_INTERVAL: Duration = Duration::from_secs(60);
/// How soon garbage collection looks again when code it could remove was
/// still in use by draining instances.
const GC_RETRY: Duration = Duration::from_secs(1);

/// Where a function's requests go: its current revision and that revision's pool.
#[derive(Debug)]
pub struct Route {
    pub revision: Revision,
    pub pool: Arc<Pool>,
}

pub struct Platform {
    store: Arc<dyn Store>,
    /// Accepted async calls (durable), run by the dispatcher.
    queue: Arc<dyn Queue>,
    dispatch: dispatch::Dispatch,
    code: CodeStore,
    scheduler: Arc<Scheduler>,
    /// Runs dependency installs (instances are started by the scheduler's).
    sandbox: Sandbox,
    /// Read on every invocation, written on deploy/rollback/delete: a cache
    /// of the store's current revisions so the hot path does no query.
    routes: RwLock<HashMap<String, Arc<Route>>>,
    /// Bumped after every change of `routes` (deploy, rollback, delete):
    /// what followers of deploys (the triggers manager) wait on.
    route_changes: tokio::sync::watch::Sender<u64>,
    /// Bumped after every change of a rule trigger (`rules.rs`): what the
    /// alarm feeds follow.
    rule_changes: tokio::sync::watch::Sender<u64>,
    /// One lock per function name being changed: held from the store write
    /// through the route switch (see the module docs).
    changing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Deploys hold it shared from finding their code on disk until their
    /// revision is recorded; garbage collection holds it exclusively, so it
    /// never removes code a deploy is about to refer to.
    gc: tokio::sync::RwLock<()>,
    /// Wakes the garbage collector (after a delete or a pruning deploy).
    gc_wanted: Notify,
    /// Revision ids of deleted functions: a call that was in flight when
    /// its function was deleted leaves no record (it would show up under a
    /// new function of the same name).
    /// A tokio lock: a record's check and its (possibly waiting) hand-over
    /// to the writer happen under one read guard.
    deleted: tokio::sync::RwLock<HashSet<u64>>,
    records: records::Recorder,
    /// Live log lines and statistics (`live.rs`).
    live: Arc<live::Live>,
    metrics: metrics::Metrics,
    /// Set when this node is one of several (`forward.rs`).
    placement: std::sync::OnceLock<forward::Placement>,
    /// Turns for looking up route misses in a shared store (`sharing.rs`).
    miss_lookups: tokio::sync::Semaphore,
    config: PlatformConfig,
}

/// Holds a function's change lock; forgets the lock when no one else wants it.
struct Changing<'a> {
    platform: &'a Platform,
    name: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self.platform.changing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Waiters clone the Arc under this map lock, so a count of one
        // means no one is waiting.
        if locks.get(&self.name).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(&self.name);
        }
    }
}

impl Platform {
    /// Loads every function's current revision and makes its pool ready.
    pub async fn new(
        store: Arc<dyn Store>,
        queue: Arc<dyn Queue>,
        code: CodeStore,
        scheduler: Arc<Scheduler>,
        sandbox: Sandbox,
        config: PlatformConfig,
    ) -> Result<Arc<Self>, PlatformError> {
        let limits =
            RecordLimits { per_function: config.retention.per_function, max_bytes: config.retention.max_bytes };
        let records = records::Recorder::spawn(store.clone(), limits);
        let metrics =
            if config.metrics { metrics::Metrics::new(scheduler.clone()) } else { metrics::Metrics::disabled() };
        let platform = Arc::new(Self {
            store,
            queue,
            dispatch: dispatch::Dispatch::new(),
            code,
            scheduler,
            sandbox,
            routes: RwLock::default(),
            route_changes: tokio::sync::watch::channel(0).0,
            rule_changes: tokio::sync::watch::channel(0).0,
            changing: Mutex::default(),
            gc: tokio::sync::RwLock::new(()),
            gc_wanted: Notify::new(),
            deleted: tokio::sync::RwLock::default(),
            records,
            live: Arc::new(live::Live::new(config.live.clone())),
            metrics,
            placement: std::sync::OnceLock::new(),
            miss_lookups: tokio::sync::Semaphore::new(sharing::MISS_LOOKUPS),
            config,
        });
        for f in platform.store.functions().await? {
            if let Some(rev) = platform.store.current_revision(&f.name).await? {
                // Another node's revision: its code comes from the store.
                if let Err(e) = platform.ensure_code(&rev).await {
                    tracing::error!(function = %f.name, revision = rev.number, error = %e, "not serving this function");
                    continue;
                }
                platform.set_route(rev);
            }
        }
        // Code and archives of deleted functions go now, before any deploy.
        platform.collect_garbage().await?;
        Ok(platform)
    }

    /// Waits for and takes the change lock of function `name`.
    async fn lock_function(&self, name: &str) -> Changing<'_> {
        let lock = {
            let mut locks = self.changing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            locks.entry(name.to_string()).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        Changing { platform: self, name: name.to_string(), guard: Some(guard) }
    }

    /// Removes code directories and archives that no revision refers to and
    /// no pool still runs from. Returns whether something unreferenced was
    /// kept because draining instances still use it.
    pub async fn collect_garbage(&self) -> Result<bool, PlatformError> {
        let _exclusive = self.gc.write().await;
        let mut keep = self.store.referenced_hashes().await?;
        let archives = self.store.referenced_archives().await?;
        let referenced: HashSet<String> = keep.iter().cloned().collect();
        let in_use: Vec<String> =
            self.scheduler.code_dirs_in_use().iter().filter_map(|d| self.code.hash_of_dir(d)).collect();
        let deferred = in_use.iter().any(|h| !referenced.contains(h));
        keep.extend(in_use);
        let code = self.code.clone();
        let (code_swept, archives_swept) = tokio::task::spawn_blocking(move || -> Result<_, PlatformError> {
            Ok((code.sweep(&keep)?, code.sweep_archives(&archives)?))
        })
        .await
        .map_err(|e| PlatformError::Internal(format!("garbage collection: {e}")))??;
        // Shared code no revision refers to (any node's), once it is old
        // enough that no deploy is between sharing it and recording it.
        match self.store.sweep_code().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(archives = n, "removed shared code no revision refers to"),
            Err(e) => tracing::warn!(error = %e, "sweeping shared code"),
        }
        if code_swept + archives_swept > 0 {
            tracing::info!(
                code = code_swept,
                archives = archives_swept,
                "removed code and archives no revision refers to"
            );
        }
        Ok(deferred)
    }

    /// The store (for state kept beside the platform's, e.g. cron ticks).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.scheduler
    }

    /// Live log lines and statistics.
    pub fn live(&self) -> &Arc<live::Live> {
        &self.live
    }

    /// The Prometheus metrics (disabled ones count nothing).
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }

    /// `GET /metrics`' body: every series, the async queue read now.
    /// `None` when metrics are disabled.
    pub async fn render_metrics(&self, format: metrics::Format) -> Option<String> {
        if !self.metrics.enabled() {
            return None;
        }
        let mut rows = Vec::new();
        let now = now_ms();
        for route in self.routes_snapshot() {
            let function = &route.revision.function;
            let depth = match self.queue.depth(function).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(function, error = %e, "metrics: reading the async queue's depth");
                    continue;
                }
            };
            let mut lag_seconds = 0.0;
            if depth.ready > 0 {
                match self.queue.items(Some(function), Some(ItemState::Ready), 1).await {
                    Ok(items) => {
                        if let Some(oldest) = items.first() {
                            lag_seconds = (now - oldest.not_before_ms).max(0) as f64 / 1000.0;
                        }
                    }
                    Err(e) => tracing::warn!(function, error = %e, "metrics: reading the oldest async call"),
                }
            }
            rows.push(metrics::QueueRow {
                function: function.clone(),
                ready: depth.ready,
                leased: depth.leased,
                dead: depth.dead,
                lag_seconds,
            });
        }
        rows.sort_by(|a, b| a.function.cmp(&b.function));
        self.metrics.render(rows, format)
    }

    /// Region and account in functions' ARNs (`[lambda]` in flick's config).
    pub fn lambda_identity(&self) -> &flick_core::LambdaIdentity {
        &self.config.lambda
    }

    /// Where a revision's unpacked code lives (read-only to callers: surfaces
    /// read back what they deployed, e.g. the Lambda API's function
    /// settings that have no manifest key).
    pub fn code_dir(&self, revision: &Revision) -> std::path::PathBuf {
        self.code.code_dir(&revision.hash)
    }

    /// The current route of a function, if it exists. Resolve it once per
    /// request: authorise and call against the same route
    /// ([`Platform::invoke`]).
    pub fn route(&self, name: &str) -> Option<Arc<Route>> {
        self.routes.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(name).cloned()
    }

    /// Points the function at `revision` and retires its other pools.
    /// Callers hold the function's change lock (or run before serving).
    fn set_route(&self, revision: Revision) -> Arc<Route> {
        let spec = InstanceSpec {
            function: revision.function.clone(),
            revision: revision.number,
            revision_id: revision.id,
            manifest: Arc::new(revision.manifest.clone()),
            code_dir: self.code.code_dir(&revision.hash),
        };
        let pool = self.scheduler.activate(spec);
        let route = Arc::new(Route { revision, pool });
        self.routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(route.revision.function.clone(), route.clone());
        // Only now: a call whose pool this retires reroutes to `route`.
        self.scheduler.serve_only(&route.pool);
        self.route_changes.send_modify(|v| *v += 1);
        route
    }

    /// Removes a deleted function's route: calls in flight finish, its
    /// instances go, its live statistics and metrics are forgotten.
    /// Callers hold the function's change lock.
    fn forget_route(&self, name: &str) {
        self.routes.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name);
        self.route_changes.send_modify(|v| *v += 1);
        self.scheduler.retire_function(name);
        self.live.forget(name);
        self.metrics.forget(name);
    }

    /// A receiver that sees a new value after every deploy, rollback and
    /// delete (once the route table shows it).
    pub fn route_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.route_changes.subscribe()
    }

    /// Every function's current route (its revision carries the manifest).
    pub fn routes_snapshot(&self) -> Vec<Arc<Route>> {
        self.routes.read().unwrap_or_else(std::sync::PoisonError::into_inner).values().cloned().collect()
    }

    pub async fn functions(&self) -> Result<Vec<FunctionInfo>, PlatformError> {
        Ok(self.store.functions().await?)
    }

    pub async fn function(&self, name: &str) -> Result<(FunctionInfo, Revision), PlatformError> {
        let info = self.store.function(name).await?.ok_or_else(|| PlatformError::FunctionNotFound(name.into()))?;
        let rev =
            self.store.current_revision(name).await?.ok_or_else(|| PlatformError::FunctionNotFound(name.into()))?;
        Ok((info, rev))
    }

    pub async fn revisions(&self, name: &str) -> Result<Vec<Revision>, PlatformError> {
        let revs = self.store.revisions(name).await?;
        if revs.is_empty() {
            return Err(PlatformError::FunctionNotFound(name.into()));
        }
        Ok(revs)
    }

    /// Points a function back at `number`, or at the revision before the
    /// current one. In-flight calls finish on the revision they started on.
    pub async fn rollback(&self, name: &str, number: Option<u32>) -> Result<Revision, PlatformError> {
        let _changing = self.lock_function(name).await;
        let (info, _) = self.function(name).await?;
        let target = match number {
            Some(n) => n,
            None => self
                .store
                .revisions(name)
                .await?
                .into_iter()
                .map(|r| r.number)
                .filter(|n| *n < info.current_revision)
                .max()
                .ok_or_else(|| {
                    PlatformError::BadRequest(format!(
                        "function `{name}` has no revision before {}; name one with `flick rollback {name} REV`",
                        info.current_revision
                    ))
                })?,
        };
        let rev = self.store.set_current(name, target).await.map_err(|e| match e {
            flick_store::StoreError::RevisionNotFound { function, number } => {
                PlatformError::RevisionNotFound { function, number }
            }
            other => other.into(),
        })?;
        self.set_route(rev.clone());
        tracing::info!(function = name, revision = rev.number, revision_id = rev.id, "rolled back");
        Ok(rev)
    }

    /// Deletes a function: its route at once (calls in flight finish), its
    /// revisions and records, then (once its instances are gone) its code
    /// and archives; the WAL is checkpointed so deleted rows do not linger.
    pub async fn delete(&self, name: &str) -> Result<(), PlatformError> {
        FunctionName::new(name)?;
        let _changing = self.lock_function(name).await;
        let revisions = self.store.revisions(name).await?;
        if revisions.is_empty() {
            return Err(PlatformError::FunctionNotFound(name.into()));
        }
        {
            // From here on, records of these revisions are dropped; those
            // handed over before are stored by the flush below, then deleted.
            let mut deleted = self.deleted.write().await;
            deleted.extend(revisions.iter().map(|r| r.id));
            if let Some(route) = self.route(name) {
                deleted.insert(route.revision.id);
            }
        }
        self.forget_route(name);
        // Its queued calls and dead letters go with it (a call running now
        // finds its item gone when it acks).
        let removed = self.queue.remove_function(name).await?;
        if removed > 0 {
            tracing::info!(function = name, removed, "removed its queued calls and dead letters");
        }
        self.records.flush(records::READ_WAIT).await;
        if !self.store.delete_function(name).await? {
            return Err(PlatformError::FunctionNotFound(name.into()));
        }
        if let Err(e) = self.store.checkpoint().await {
            tracing::warn!(error = %e, "could not checkpoint the WAL after a delete");
        }
        self.gc_wanted.notify_one();
        tracing::info!(function = name, "deleted");
        Ok(())
    }

    /// Hands a finished call's record to the writer, unless its function
    /// was deleted meanwhile.
    async fn record(&self, activation: Activation) {
        // The check and the hand-over happen under one guard, so a delete
        // either sees this record in its flush or this call sees the delete.
        let deleted = self.deleted.read().await;
        if deleted.contains(&activation.revision_id) {
            return;
        }
        self.live.observe(&activation);
        self.metrics.observe(&activation);
        self.records.record(activation).await;
    }

    /// Like [`Platform::record`], returning once the record is stored
    /// (`false`: dropped or refused).
    /// Counts a call that stores no record of its own (a failed async
    /// attempt that will be retried) in the usage accounting; not for a
    /// deleted function's revision, like its records.
    async fn count_attempt_usage(&self, activation: &Activation) {
        if self.deleted.read().await.contains(&activation.revision_id) {
            return;
        }
        if let Err(e) = self.store.count_usage(activation).await {
            tracing::warn!(activation = %activation.id, error = %e, "the usage of a retried attempt was not counted");
        }
    }

    async fn record_stored(&self, activation: Activation) -> bool {
        let deleted = self.deleted.read().await;
        if deleted.contains(&activation.revision_id) {
            return false;
        }
        self.live.observe(&activation);
        self.metrics.observe(&activation);
        let stored = self.records.record_stored(activation).await;
        // The guard only orders the hand-over against a delete; the wait
        // for the commit happens without it.
        drop(deleted);
        stored.await.unwrap_or(false)
    }

    /// One file at the top of a revision's code, for surfaces that show
    /// what was deployed (OpenWhisk's `exec.code`): a plain name (no `/`,
    /// no `..`), a regular file (never followed through a symlink) of at
    /// most `max` bytes. `None` when there is no such file, or it is larger.
    pub async fn code_file(&self, revision: &Revision, file: &str, max: u64) -> Result<Option<Vec<u8>>, PlatformError> {
        if file.is_empty() || file.contains('/') || file == "." || file == ".." {
            return Ok(None);
        }
        let path = self.code.code_dir(&revision.hash).join(file);
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Vec<u8>>> {
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            if !meta.is_file() || meta.len() > max {
                return Ok(None);
            }
            std::fs::read(&path).map(Some)
        });
        read.await
            .map_err(|e| PlatformError::Internal(e.to_string()))?
            .map_err(|e| PlatformError::Internal(e.to_string()))
    }

    pub async fn activation(&self, id: &str) -> Result<Activation, PlatformError> {
        let parsed = ActivationId::parse(id).ok_or_else(|| PlatformError::ActivationNotFound(id.into()))?;
        // The queue first: its item is acked only after the final record is
        // stored, so a call is always found in one or the other.
        let queued = self.queue.item(&parsed).await?;
        if let Some(item) = &queued
            && item.state != ItemState::Dead
        {
            return Ok(self.queued_activation(item));
        }
        self.records.flush(records::READ_WAIT).await;
        match self.store.activation(&parsed).await? {
            Some(a) => Ok(a),
            // A dead letter whose record retention already removed.
            None => queued
                .map(|item| self.queued_activation(&item))
                .ok_or_else(|| PlatformError::ActivationNotFound(id.into())),
        }
    }

    /// How many activation records each function has kept.
    pub async fn activation_counts(&self) -> Result<Vec<(String, u64)>, PlatformError> {
        Ok(self.store.activation_counts().await?)
    }

    pub async fn activations(&self, query: &ActivationQuery) -> Result<Vec<Activation>, PlatformError> {
        self.records.flush(records::READ_WAIT).await;
        Ok(self.store.activations(query).await?)
    }

    /// Applies the retention policy once, then gives the freed space back.
    pub async fn prune(&self) -> Result<u64, PlatformError> {
        let r = &self.config.retention;
        let older_than = now_ms() - r.max_age.as_millis() as i64;
        self.records.flush(records::READ_WAIT).await;
        let pruned = self.store.prune_activations(older_than, r.per_function).await?;
        let m = self.store.maintain().await?;
        if m.reclaimed_bytes > 0 {
            tracing::debug!(reclaimed = m.reclaimed_bytes, "database space reclaimed");
        }
        Ok(pruned)
    }

    /// Background work: the scheduler's reaper, activation retention and
    /// garbage collection of code and archives, until `shutdown` resolves.
    pub async fn run_background(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let reaper = tokio::spawn(self.scheduler.clone().run_reaper(std::future::pending::<()>()));
        let dispatcher = tokio::spawn(self.clone().run_dispatcher());
        let sampler = tokio::spawn(self.live.clone().run_sampler(self.scheduler.clone()));
        let this = self.clone();
        let gc = tokio::spawn(async move {
            let mut wait = GC_INTERVAL;
            loop {
                let _ = tokio::time::timeout(wait, this.gc_wanted.notified()).await;
                wait = match this.collect_garbage().await {
                    Ok(true) => GC_RETRY,
                    Ok(false) => GC_INTERVAL,
                    Err(e) => {
                        tracing::warn!(error = %e, "garbage collection of code and archives failed");
                        GC_INTERVAL
                    }
                };
            }
        });
        let this = self.clone();
        let retention = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                match this.prune().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(pruned = n, "activation retention"),
                    Err(e) => tracing::warn!(error = %e, "activation retention failed"),
                }
            }
        });
        shutdown.await;
        // Log streams end now, or they would hold the server's graceful
        // shutdown for its whole grace period.
        self.live.close();
        // Stop leasing and let running async calls finish (bounded), while
        // the reaper still runs.
        self.stop_dispatch();
        let _ = dispatcher.await;
        reaper.abort();
        sampler.abort();
        retention.abort();
        gc.abort();
    }

    /// Stops every instance and stores the last records (after the server
    /// stopped taking requests).
    pub async fn shutdown(&self) {
        self.scheduler.stop_all();
        if !self.records.flush(SHUTDOWN_RECORD_WAIT).await {
            tracing::error!("stopping with activation records not yet stored (the database stayed busy or full)");
        }
    }
}
