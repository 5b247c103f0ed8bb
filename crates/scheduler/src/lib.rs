//! Warm instance pools: which instance serves a request, when a new one is
//! started, and when an idle one stops.
//!
//! # Layout
//! - `pool`: one [`Pool`] per function revision. A request takes a [`Lease`]
//!   on an instance with a free slot (up to the manifest's `concurrency`);
//!   when none is free and both `max_instances` and the host budget allow, a
//!   new instance is started for it (a cold start); otherwise it waits in the
//!   function's bounded queue until its deadline or the queue timeout.
//! - `budget`: the host-wide bound on instances and instance memory.
//! - this file: the [`Scheduler`] holding every pool, and the reaper that
//!   stops instances idle past `keep_alive` (scale to zero), keeps
//!   `min_instances` running, drains pools of replaced revisions, and evicts
//!   the longest-idle instances when the host budget is exhausted.
//!
//! Pool state is behind a short `parking_lot::Mutex` (no poisoning: one panic cannot cascade), never held across an
//! await: instance start-up and invocations run outside it.

pub mod autoscale;
mod budget;
mod pool;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use flick_runtime::{InstanceSpec, Launcher, StartError};
use tokio::time::Instant;

use budget::Budget;
pub use budget::BudgetLimits;
pub use pool::{Lease, Pool};

/// How often the reaper looks at pools; bounds how late a `keep_alive` ends.
const REAPER_TICK: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error("all {max} instances are busy; waited {waited:?} for one")]
    Overloaded { max: u32, waited: Duration },
    #[error("{waiting} requests are already waiting for this function")]
    QueueFull { waiting: u32 },
    #[error("the host is at its instance budget")]
    HostFull,
    /// The pool's revision was replaced or deleted: it starts nothing and
    /// leases nothing; the caller looks up the function's route again.
    #[error("revision {revision_id} is no longer served")]
    Retired { revision_id: u64 },
    #[error(transparent)]
    Start(#[from] StartError),
}

/// How long and how many requests may wait for a busy function.
#[derive(Clone, Copy, Debug)]
pub struct QueuePolicy {
    pub timeout: Duration,
    pub max_waiting: u32,
}

#[derive(Clone, Copy, Debug)]
pub struct SchedulerConfig {
    pub budget: BudgetLimits,
    pub queue: QueuePolicy,
}

/// All pools of this node.
#[derive(Debug)]
pub struct Scheduler {
    launcher: Launcher,
    budget: Arc<Budget>,
    queue: QueuePolicy,
    /// Keyed by revision id, which never repeats: a function deleted and
    /// created again can never find its predecessor's pool.
    pools: Mutex<HashMap<u64, Arc<Pool>>>,
}

/// One row of [`Scheduler::status`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PoolStatus {
    pub function: String,
    pub revision: u32,
    pub revision_id: u64,
    pub instances: usize,
    pub starting: u32,
    pub inflight: u32,
    /// Instances serving at least one request (the rest are idle).
    pub busy: usize,
    pub waiting: u32,
}

impl Scheduler {
    pub fn new(launcher: Launcher, config: SchedulerConfig) -> Arc<Self> {
        Arc::new(Self {
            launcher,
            budget: Arc::new(Budget::new(config.budget)),
            queue: config.queue,
            pools: Mutex::default(),
        })
    }

    /// The pool of `spec`'s revision, ready to serve. The function's other
    /// pools keep serving until [`Scheduler::serve_only`]: the caller
    /// points its route table at this pool first, so a call that finds its
    /// pool retired always finds the newer route when it looks again.
    pub fn activate(&self, spec: InstanceSpec) -> Arc<Pool> {
        let mut pools = self.pools.lock();
        let pool = pools
            .entry(spec.revision_id)
            .or_insert_with(|| Arc::new(Pool::new(spec, self.launcher.clone(), self.budget.clone(), self.queue)))
            .clone();
        // A rollback to a revision whose pool is still draining serves it
        // again. Only a pool still in the map can be revived: the reaper
        // removes drained pools under the same lock, and a removed pool
        // stays retired for good.
        pool.state.lock().retired = false;
        pool
    }

    /// Makes `current` its function's only served pool: the others are
    /// retired (they drain and stop, in-flight calls finish).
    pub fn serve_only(&self, current: &Pool) {
        let spec = current.spec();
        self.retire_pools_of(&spec.function, Some(spec.revision_id));
        // A function's first deploy (or load at start) of its kind starts
        // that kind's stem cells.
        self.sync_stems();
    }

    /// Tells the launcher which kinds of stem cell the served functions
    /// (every pool not retired) use, so it keeps those and no others.
    /// The same pass keeps the fork templates of served revisions only.
    fn sync_stems(&self) {
        let mut manifests: Vec<Arc<flick_core::Manifest>> = Vec::new();
        let mut served = std::collections::HashSet::new();
        for (id, pool) in self.pools.lock().iter() {
            if !pool.state.lock().retired {
                manifests.push(pool.spec().manifest.clone());
                served.insert(*id);
            }
        }
        self.launcher.use_stems_for(manifests.iter().map(|m| &**m));
        self.launcher.keep_templates(&served);
    }

    /// Retires every pool of a deleted function.
    pub fn retire_function(&self, function: &str) {
        self.retire_pools_of(function, None);
    }

    /// Retires `function`'s pools, but for the one of revision `keep`.
    fn retire_pools_of(&self, function: &str, keep: Option<u64>) {
        for (id, pool) in self.pools.lock().iter() {
            if pool.spec().function == function && Some(*id) != keep {
                pool.retire();
            }
        }
    }

    /// Code directories that instances of any pool still in the scheduler
    /// may run from (retired pools drain first): not to be collected.
    pub fn code_dirs_in_use(&self) -> Vec<std::path::PathBuf> {
        self.pools.lock().values().map(|p| p.spec().code_dir.clone()).collect()
    }

    /// Every pool's instances and load, for status output and tests.
    pub fn status(&self) -> Vec<PoolStatus> {
        let pools = self.pools.lock();
        let mut out: Vec<_> = pools
            .iter()
            .map(|(id, p)| {
                let st = p.state.lock();
                PoolStatus {
                    function: p.spec().function.clone(),
                    revision: p.spec().revision,
                    revision_id: *id,
                    instances: st.slots.len(),
                    starting: st.starting,
                    inflight: st.inflight(),
                    busy: st.slots.iter().filter(|s| s.inflight > 0).count(),
                    waiting: st.waiting,
                }
            })
            .collect();
        out.sort();
        out
    }

    /// Instances and bytes of the host budget in use, and the limits.
    pub fn budget(&self) -> ((u32, u64), BudgetLimits) {
        (self.budget.used(), self.budget.limits())
    }

    /// Runs the reaper until `shutdown` resolves.
    pub async fn run_reaper(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(REAPER_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => self.reap(),
            }
        }
    }

    /// One reaper pass: stop idle instances, relieve budget pressure, keep
    /// minimums, drop empty retired pools.
    pub fn reap(&self) {
        let pools: Vec<_> = self.pools.lock().values().cloned().collect();
        let now = Instant::now();
        let mut bursts = Vec::new();
        for pool in &pools {
            let decision = pool.autoscale(now);
            for slot in pool.take_idle(now, decision.desired) {
                pool.stop_slot(slot);
            }
            if decision.panic {
                bursts.push((pool, decision.desired));
            }
        }
        if self.budget.take_pressure() {
            // Someone waits for room: the longest-idle instance anywhere makes way.
            let victim = pools.iter().filter_map(|p| p.oldest_idle().map(|t| (t, p))).min_by_key(|(t, _)| *t);
            if let Some((_, pool)) = victim
                && let Some(slot) = pool.evict_oldest_idle()
            {
                tracing::debug!(function = %pool.spec().function, "evicting an idle instance: host budget exhausted");
                pool.stop_slot(slot);
            }
        }
        // Scale-out is demand-driven (a request that finds every slot busy
        // starts an instance at once); in a burst the autoscaler also starts
        // what the burst needs ahead of the queue.
        for pool in &pools {
            let want = bursts.iter().find(|(p, _)| Arc::ptr_eq(p, pool)).map_or(0, |(_, n)| *n);
            pool.prewarm(want, now);
        }
        self.pools.lock().retain(|_, pool| !pool.is_drained());
        // A deleted function's kind may be used by no one now; a burst's
        // extra stem cells go once it is over.
        self.sync_stems();
        self.launcher.trim_stems();
    }

    /// Whether functions of `manifest` can run here (see [`Launcher::admit`]).
    pub fn admit(&self, manifest: &flick_core::Manifest) -> Result<(), String> {
        self.launcher.admit(manifest)
    }

    /// Live, ready stem cells (and deaths) per `runtime/network`.
    pub fn stem_cells(&self) -> Vec<flick_runtime::StemCount> {
        self.launcher.stem_counts()
    }

    /// python3 revisions with a fork template ready.
    pub fn fork_templates(&self) -> usize {
        self.launcher.fork_templates()
    }

    /// Stops every instance and stem cell (shutdown).
    pub fn stop_all(&self) {
        self.launcher.stop_stems();
        self.launcher.stop_templates();
        let pools: Vec<_> = self.pools.lock().drain().map(|(_, p)| p).collect();
        for pool in pools {
            pool.retire();
            let slots = std::mem::take(&mut pool.state.lock().slots);
            for slot in slots {
                pool.stop_slot(slot);
            }
        }
    }
}
