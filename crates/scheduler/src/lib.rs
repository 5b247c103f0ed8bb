//! Warm instance pools: which instance serves a request, when a new one is
//! started, and when an idle one stops.
//!
//! There is one [`Pool`] per function revision. A request takes a [`Lease`]
//! on an instance with a free slot (up to the manifest's `concurrency`);
//! when none is free and `max_instances` allows, a new instance is started
//! for it (a cold start); otherwise it waits for a slot until its deadline.
//! The reaper stops instances idle longer than `keep_alive` (scale to zero),
//! keeps `min_instances` running, and drains pools of replaced revisions.
//!
//! Pool state is behind a short `std::sync::Mutex`, never held across an
//! await: instance start-up and invocations run outside it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flick_runtime::{Instance, InstanceSpec, Launcher, StartError};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How often the reaper looks at pools; bounds how late a `keep_alive` ends.
const REAPER_TICK: Duration = Duration::from_millis(200);
/// After a failed prewarm, wait this long before trying again.
const PREWARM_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error("all {max} instances are busy and none freed up before the deadline")]
    Overloaded { max: u32 },
    #[error(transparent)]
    Start(#[from] StartError),
}

/// All pools of this node.
#[derive(Debug)]
pub struct Scheduler {
    launcher: Launcher,
    pools: Mutex<HashMap<(String, u32), Arc<Pool>>>,
}

impl Scheduler {
    pub fn new(launcher: Launcher) -> Arc<Self> {
        Arc::new(Self { launcher, pools: Mutex::default() })
    }

    /// The pool of `spec`'s revision, made current: pools of the function's
    /// other revisions are retired (they drain and stop, in-flight calls finish).
    pub fn activate(&self, spec: InstanceSpec) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap();
        for ((function, revision), pool) in pools.iter() {
            if *function == spec.function && *revision != spec.revision {
                pool.retire();
            }
        }
        let key = (spec.function.clone(), spec.revision);
        let pool = pools.entry(key).or_insert_with(|| Arc::new(Pool::new(spec, self.launcher.clone()))).clone();
        pool.state.lock().unwrap().retired = false;
        pool
    }

    /// Retires every pool of a deleted function.
    pub fn retire_function(&self, function: &str) {
        for ((f, _), pool) in self.pools.lock().unwrap().iter() {
            if f == function {
                pool.retire();
            }
        }
    }

    /// Number of running instances per (function, revision), for status output and tests.
    pub fn instance_counts(&self) -> Vec<(String, u32, usize)> {
        let pools = self.pools.lock().unwrap();
        let mut out: Vec<_> =
            pools.iter().map(|((f, r), p)| (f.clone(), *r, p.state.lock().unwrap().slots.len())).collect();
        out.sort();
        out
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

    /// One reaper pass: stop idle instances, keep minimums, drop empty retired pools.
    pub fn reap(&self) {
        let pools: Vec<_> = self.pools.lock().unwrap().values().cloned().collect();
        let now = Instant::now();
        for pool in &pools {
            for instance in pool.take_idle(now) {
                instance.stop();
            }
            pool.prewarm(now);
        }
        self.pools.lock().unwrap().retain(|_, pool| !pool.is_drained());
    }

    /// Stops every instance (shutdown).
    pub fn stop_all(&self) {
        let pools: Vec<_> = self.pools.lock().unwrap().drain().map(|(_, p)| p).collect();
        for pool in pools {
            pool.retire();
            let slots = std::mem::take(&mut pool.state.lock().unwrap().slots);
            for slot in slots {
                slot.instance.stop();
            }
        }
    }
}

#[derive(Debug)]
struct Slot {
    id: u64,
    instance: Arc<Instance>,
    inflight: u32,
    last_used: Instant,
}

#[derive(Debug, Default)]
struct PoolState {
    slots: Vec<Slot>,
    starting: u32,
    retired: bool,
    next_id: u64,
    prewarm_failed_at: Option<Instant>,
}

/// The instances of one revision.
#[derive(Debug)]
pub struct Pool {
    spec: InstanceSpec,
    launcher: Launcher,
    state: Mutex<PoolState>,
    /// Woken whenever a slot frees up or an instance start ends.
    changed: Notify,
}

/// A claim on one slot of one instance; dropping it gives the slot back.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<Pool>,
    slot: u64,
    instance: Arc<Instance>,
    /// This request waited for a new instance to start.
    pub cold: bool,
    /// Time spent starting that instance.
    pub init: Duration,
    /// Time spent waiting for a free slot.
    pub wait: Duration,
    discard: bool,
}

impl Lease {
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// The instance must not serve again (it timed out, crashed, or broke the protocol).
    pub fn discard(&mut self) {
        self.discard = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.release(self.slot, self.discard);
    }
}

impl Pool {
    fn new(spec: InstanceSpec, launcher: Launcher) -> Self {
        Self { spec, launcher, state: Mutex::default(), changed: Notify::new() }
    }

    pub fn spec(&self) -> &InstanceSpec {
        &self.spec
    }

    /// A slot for one request, starting an instance if needed and allowed.
    pub async fn acquire(self: &Arc<Self>, deadline: Instant) -> Result<Lease, AcquireError> {
        let began = Instant::now();
        let m = &self.spec.manifest;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let start_one = {
                let mut st = self.state.lock().unwrap();
                // The busiest instance with room, most recently used first:
                // packing work onto few instances lets the others idle out.
                let best = st
                    .slots
                    .iter_mut()
                    .filter(|s| s.inflight < m.concurrency)
                    .max_by_key(|s| (s.inflight, s.last_used));
                if let Some(slot) = best {
                    slot.inflight += 1;
                    slot.last_used = Instant::now();
                    return Ok(Lease {
                        pool: self.clone(),
                        slot: slot.id,
                        instance: slot.instance.clone(),
                        cold: false,
                        init: Duration::ZERO,
                        wait: began.elapsed(),
                        discard: false,
                    });
                }
                let room = (st.slots.len() as u32 + st.starting) < m.max_instances;
                if room {
                    st.starting += 1;
                }
                room
            };
            if start_one {
                return self.start_for_request(deadline, began.elapsed()).await;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(AcquireError::Overloaded { max: m.max_instances });
            }
        }
    }

    async fn start_for_request(self: &Arc<Self>, deadline: Instant, wait: Duration) -> Result<Lease, AcquireError> {
        let started_at = Instant::now();
        let result = self.launcher.start(&self.spec, deadline).await;
        let init = started_at.elapsed();
        let mut st = self.state.lock().unwrap();
        st.starting -= 1;
        let lease = match result {
            Ok(instance) => {
                let id = st.next_id;
                st.next_id += 1;
                let instance = Arc::new(instance);
                st.slots.push(Slot { id, instance: instance.clone(), inflight: 1, last_used: Instant::now() });
                tracing::debug!(function = %self.spec.function, revision = self.spec.revision, ?init, "instance started");
                Ok(Lease { pool: self.clone(), slot: id, instance, cold: true, init, wait, discard: false })
            }
            Err(e) => Err(AcquireError::Start(e)),
        };
        drop(st);
        // Either a new slot exists or room to start one does: wake waiters.
        self.changed.notify_waiters();
        lease
    }

    fn release(&self, slot_id: u64, discard: bool) {
        let removed = {
            let mut st = self.state.lock().unwrap();
            let Some(i) = st.slots.iter().position(|s| s.id == slot_id) else { return };
            let slot = &mut st.slots[i];
            slot.inflight -= 1;
            slot.last_used = Instant::now();
            // A discarded instance leaves the pool at once; the requests
            // still on it finish (or fail) on their own lease.
            discard.then(|| st.slots.swap_remove(i))
        };
        if let Some(slot) = removed {
            slot.instance.stop();
        }
        self.changed.notify_waiters();
    }

    fn retire(&self) {
        self.state.lock().unwrap().retired = true;
        self.changed.notify_waiters();
    }

    /// Removes instances that should stop now; the caller stops them.
    fn take_idle(&self, now: Instant) -> Vec<Arc<Instance>> {
        let m = &self.spec.manifest;
        let mut st = self.state.lock().unwrap();
        let keep = if st.retired { 0 } else { m.min_instances as usize };
        // Most recently used first: those are kept, the rest may go.
        st.slots.sort_by_key(|s| std::cmp::Reverse(s.last_used));
        let mut stopped = Vec::new();
        let mut kept = 0;
        st.slots.retain(|s| {
            let expired = idle_past(s, now, m.keep_alive);
            if s.inflight > 0 || kept < keep || !expired {
                kept += 1;
                return true;
            }
            stopped.push(s.instance.clone());
            false
        });
        if st.retired {
            // Anything idle in a retired pool goes, whatever its keep_alive.
            let (idle, busy): (Vec<_>, Vec<_>) =
                std::mem::take(&mut st.slots).into_iter().partition(|s| s.inflight == 0);
            st.slots = busy;
            stopped.extend(idle.into_iter().map(|s| s.instance));
        }
        if !stopped.is_empty() {
            tracing::debug!(function = %self.spec.function, revision = self.spec.revision, count = stopped.len(), "stopping idle instances");
        }
        stopped
    }

    /// Starts instances in the background up to `min_instances`.
    fn prewarm(self: &Arc<Self>, now: Instant) {
        let m = &self.spec.manifest;
        let missing = {
            let mut st = self.state.lock().unwrap();
            let have = st.slots.len() as u32 + st.starting;
            let backing_off = st.prewarm_failed_at.is_some_and(|t| now < t + PREWARM_BACKOFF);
            if st.retired || backing_off || have >= m.min_instances {
                return;
            }
            let missing = m.min_instances - have;
            st.starting += missing;
            missing
        };
        for _ in 0..missing {
            let pool = self.clone();
            tokio::spawn(async move {
                let deadline = Instant::now() + pool.spec.manifest.timeout.max(Duration::from_secs(30));
                let result = pool.launcher.start(&pool.spec, deadline).await;
                let mut st = pool.state.lock().unwrap();
                st.starting -= 1;
                match result {
                    Ok(instance) => {
                        let id = st.next_id;
                        st.next_id += 1;
                        st.slots.push(Slot {
                            id,
                            instance: Arc::new(instance),
                            inflight: 0,
                            last_used: Instant::now(),
                        });
                    }
                    Err(e) => {
                        tracing::warn!(function = %pool.spec.function, error = %e, "could not prewarm an instance");
                        st.prewarm_failed_at = Some(Instant::now());
                    }
                }
                drop(st);
                pool.changed.notify_waiters();
            });
        }
    }

    fn is_drained(&self) -> bool {
        let st = self.state.lock().unwrap();
        st.retired && st.slots.is_empty() && st.starting == 0
    }
}

fn idle_past(slot: &Slot, now: Instant, keep_alive: Duration) -> bool {
    now.saturating_duration_since(slot.last_used) >= keep_alive
}
