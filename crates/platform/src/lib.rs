//! The native core of flick: every action the platform takes, whatever
//! surface asked for it. The HTTP API (and, later, compatibility layers and
//! triggers) only parse requests into calls on [`Platform`].
//!
//! # Layout
//! - `deploy`: archive → unpacked, hashed, dependencies installed → revision;
//! - `invoke`: route → scheduler lease → instance → activation record;
//! - this file: the [`Platform`] itself, its routes (function → current
//!   revision's pool) and the read-only queries.

mod deploy;
mod error;
mod install;
mod invoke;
mod records;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use flick_core::{Activation, ActivationId, FunctionInfo, FunctionName, Revision, now_ms};
use flick_package::UnpackLimits;
use flick_runtime::InstanceSpec;
use flick_sandbox::Sandbox;
use flick_scheduler::{Pool, Scheduler};
use flick_store::{ActivationQuery, CodeStore, RecordLimits, Store};

pub use deploy::DeployOutcome;
pub use error::PlatformError;
pub use install::InstallConfig;
pub use invoke::{InvokeRequest, InvokeResponse, Timing};

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
}

/// Where a function's requests go: its current revision and that revision's pool.
#[derive(Debug)]
pub struct Route {
    pub revision: Revision,
    pub pool: Arc<Pool>,
}

pub struct Platform {
    store: Arc<dyn Store>,
    code: CodeStore,
    scheduler: Arc<Scheduler>,
    /// Runs dependency installs (instances are started by the scheduler's).
    sandbox: Sandbox,
    /// Read on every invocation, written on deploy/rollback/delete: a cache
    /// of the store's current revisions so the hot path does no query.
    routes: RwLock<HashMap<String, Arc<Route>>>,
    records: records::Recorder,
    config: PlatformConfig,
}

impl Platform {
    /// Loads every function's current revision and makes its pool ready.
    pub async fn new(
        store: Arc<dyn Store>,
        code: CodeStore,
        scheduler: Arc<Scheduler>,
        sandbox: Sandbox,
        config: PlatformConfig,
    ) -> Result<Arc<Self>, PlatformError> {
        let limits =
            RecordLimits { per_function: config.retention.per_function, max_bytes: config.retention.max_bytes };
        let records = records::Recorder::spawn(store.clone(), limits);
        let platform = Arc::new(Self { store, code, scheduler, sandbox, routes: RwLock::default(), records, config });
        for f in platform.store.functions().await? {
            if let Some(rev) = platform.store.current_revision(&f.name).await? {
                platform.set_route(rev);
            }
        }
        // Code of deleted functions is swept now, before any deploy can race it.
        let keep = platform.store.referenced_hashes().await?;
        let swept = platform.code.sweep(&keep)?;
        if swept > 0 {
            tracing::info!(swept, "removed code no revision refers to");
        }
        Ok(platform)
    }

    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.scheduler
    }

    /// The current route of a function, if it exists.
    pub fn route(&self, name: &str) -> Option<Arc<Route>> {
        self.routes.read().unwrap().get(name).cloned()
    }

    fn set_route(&self, revision: Revision) -> Arc<Route> {
        let spec = InstanceSpec {
            function: revision.function.clone(),
            revision: revision.number,
            manifest: Arc::new(revision.manifest.clone()),
            code_dir: self.code.code_dir(&revision.hash),
        };
        let pool = self.scheduler.activate(spec);
        let route = Arc::new(Route { revision, pool });
        self.routes.write().unwrap().insert(route.revision.function.clone(), route.clone());
        route
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
        tracing::info!(function = name, revision = rev.number, "rolled back");
        Ok(rev)
    }

    pub async fn delete(&self, name: &str) -> Result<(), PlatformError> {
        FunctionName::new(name)?;
        self.records.flush(records::READ_WAIT).await;
        if !self.store.delete_function(name).await? {
            return Err(PlatformError::FunctionNotFound(name.into()));
        }
        self.routes.write().unwrap().remove(name);
        self.scheduler.retire_function(name);
        tracing::info!(function = name, "deleted");
        Ok(())
    }

    pub async fn activation(&self, id: &str) -> Result<Activation, PlatformError> {
        let parsed = ActivationId::parse(id).ok_or_else(|| PlatformError::ActivationNotFound(id.into()))?;
        self.records.flush(records::READ_WAIT).await;
        self.store.activation(&parsed).await?.ok_or_else(|| PlatformError::ActivationNotFound(id.into()))
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

    /// Background work: the scheduler's reaper and activation retention,
    /// until `shutdown` resolves.
    pub async fn run_background(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let reaper = tokio::spawn(self.scheduler.clone().run_reaper(std::future::pending::<()>()));
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
        reaper.abort();
        retention.abort();
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
