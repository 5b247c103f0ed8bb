//! One pool per function revision: leases on warm instances, cold starts
//! within the bounds, a bounded wait when at the bounds.

use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use flick_runtime::{Instance, InstanceSpec, Launcher, StartError};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::autoscale::{self, Decision, LoadWindow, Snapshot};
use crate::budget::Budget;
use crate::{AcquireError, QueuePolicy};

/// After a failed prewarm, wait this long before trying again.
const PREWARM_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(crate) struct Slot {
    pub id: u64,
    pub instance: Arc<Instance>,
    pub inflight: u32,
    pub last_used: Instant,
}

#[derive(Debug, Default)]
pub(crate) struct PoolState {
    pub slots: Vec<Slot>,
    pub starting: u32,
    /// Requests waiting for a slot right now (the per-function queue).
    pub waiting: u32,
    pub retired: bool,
    pub load: LoadWindow,
    last_decision: Option<Decision>,
    next_id: u64,
    prewarm_failed_at: Option<Instant>,
}

impl PoolState {
    fn add(&mut self, instance: Arc<Instance>, inflight: u32) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.slots.push(Slot { id, instance, inflight, last_used: Instant::now() });
        id
    }

    /// Requests in flight on all instances.
    pub fn inflight(&self) -> u32 {
        self.slots.iter().map(|s| s.inflight).sum()
    }
}

/// The instances of one revision.
#[derive(Debug)]
pub struct Pool {
    spec: InstanceSpec,
    launcher: Launcher,
    budget: Arc<Budget>,
    queue: QueuePolicy,
    pub(crate) state: Mutex<PoolState>,
    /// Woken whenever a slot frees up or an instance start ends.
    changed: Notify,
    /// This node's share of the function's `max_instances` when several
    /// nodes serve it (`set_share`); the manifest's bound otherwise.
    share: std::sync::atomic::AtomicU32,
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
    /// The new instance was a prewarmed stem cell.
    pub prewarmed: bool,
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

/// Decremented on drop, so a waiter that is cancelled still leaves the queue.
struct Waiting<'a>(&'a Pool);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.state.lock().waiting -= 1;
    }
}

enum Next {
    Lease(Lease),
    Start,
    Wait,
}

impl Pool {
    pub(crate) fn new(spec: InstanceSpec, launcher: Launcher, budget: Arc<Budget>, queue: QueuePolicy) -> Self {
        Self {
            spec,
            launcher,
            budget,
            queue,
            state: Mutex::default(),
            changed: Notify::new(),
            share: std::sync::atomic::AtomicU32::new(u32::MAX),
        }
    }

    pub fn spec(&self) -> &InstanceSpec {
        &self.spec
    }

    /// The most instances this pool may have: the function's
    /// `max_instances`, or this node's share of it in a cluster.
    pub fn max_instances(&self) -> u32 {
        self.spec.manifest.max_instances.min(self.share.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Sets this node's share of a cluster-wide `max_instances` (the shares
    /// of all nodes sum to it). Instances beyond a lowered share are not
    /// stopped: they idle out, and no new one starts meanwhile.
    pub fn set_share(&self, share: u32) {
        if self.share.swap(share, std::sync::atomic::Ordering::Relaxed) != share {
            self.changed.notify_waiters();
        }
    }

    /// No instance has room for another request and no new one may start
    /// (the function is at its `max_instances`, or the pool was retired):
    /// a call would have to wait. A cluster spills such calls to the next
    /// node.
    pub fn saturated(&self) -> bool {
        let m = &self.spec.manifest;
        let st = self.state.lock();
        st.retired
            || (st.slots.iter().all(|s| s.inflight >= m.concurrency)
                && st.slots.len() as u32 + st.starting >= self.max_instances())
    }

    /// A slot for one request, starting an instance if needed and allowed,
    /// otherwise waiting in this function's queue — at most until the
    /// request's deadline or the queue timeout, whichever comes first.
    pub async fn acquire(self: &Arc<Self>, deadline: Instant) -> Result<Lease, AcquireError> {
        let began = Instant::now();
        let give_up = deadline.min(began + self.queue.timeout);
        let m = &self.spec.manifest;
        let mut queued: Option<Waiting<'_>> = None;
        loop {
            let changed = self.changed.notified();
            let freed = self.budget.freed.notified();
            tokio::pin!(changed, freed);
            changed.as_mut().enable();
            freed.as_mut().enable();
            let next = {
                let mut st = self.state.lock();
                // Checked under the lock that `starting` is counted under:
                // the reaper drops a pool once it is retired with nothing
                // starting or running, and an instance started after that
                // would hold budget no one ever gives back.
                if st.retired {
                    return Err(AcquireError::Retired { revision_id: self.spec.revision_id });
                }
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
                    Next::Lease(Lease {
                        pool: self.clone(),
                        slot: slot.id,
                        instance: slot.instance.clone(),
                        cold: false,
                        init: Duration::ZERO,
                        wait: began.elapsed(),
                        prewarmed: false,
                        discard: false,
                    })
                } else if (st.slots.len() as u32 + st.starting) < self.max_instances()
                    && self.budget.try_reserve(m.memory)
                {
                    st.starting += 1;
                    Next::Start
                } else if queued.is_none() && st.waiting >= self.queue.max_waiting {
                    return Err(AcquireError::QueueFull { waiting: st.waiting });
                } else {
                    if queued.is_none() {
                        st.waiting += 1;
                    }
                    Next::Wait
                }
            };
            match next {
                Next::Lease(lease) => return Ok(lease),
                Next::Start => {
                    drop(queued);
                    // A start serves the pool, not only this request: it
                    // runs to the function's own `timeout`, however short
                    // the caller's deadline (which bounds only the wait).
                    return self.start_for_request(deadline.max(began + m.timeout), began.elapsed()).await;
                }
                Next::Wait => {
                    // Not `get_or_insert`: its argument would be built (and
                    // dropped, leaving the queue) on every pass.
                    if queued.is_none() {
                        queued = Some(Waiting(self));
                    }
                    let woke = tokio::time::timeout_at(give_up, async {
                        tokio::select! {
                            _ = &mut changed => {}
                            _ = &mut freed => {}
                        }
                    })
                    .await;
                    if woke.is_err() {
                        // Below its own bound, the pool was held back by the host's budget.
                        let below_max = {
                            let st = self.state.lock();
                            st.slots.len() as u32 + st.starting < self.max_instances()
                        };
                        return Err(if below_max {
                            AcquireError::HostFull
                        } else {
                            AcquireError::Overloaded { max: self.max_instances(), waited: began.elapsed() }
                        });
                    }
                }
            }
        }
    }

    async fn start_for_request(self: &Arc<Self>, deadline: Instant, wait: Duration) -> Result<Lease, AcquireError> {
        let started_at = Instant::now();
        let result = self.launcher.start(&self.spec, deadline).await;
        let init = started_at.elapsed();
        let (slot, instance) = self.started(result, 1)?;
        let prewarmed = instance.prewarmed();
        tracing::debug!(function = %self.spec.function, revision = self.spec.revision, ?init, prewarmed, "instance started");
        Ok(Lease { pool: self.clone(), slot, instance, cold: true, init, wait, prewarmed, discard: false })
    }

    /// Ends a start that `starting` counted: adds the instance with
    /// `inflight` requests already on it, or gives its budget back.
    fn started(
        &self,
        result: Result<Instance, StartError>,
        inflight: u32,
    ) -> Result<(u64, Arc<Instance>), AcquireError> {
        let added = {
            let mut st = self.state.lock();
            st.starting -= 1;
            result.map(|instance| {
                let instance = Arc::new(instance);
                (st.add(instance.clone(), inflight), instance)
            })
        };
        if added.is_err() {
            self.budget.release(self.spec.manifest.memory);
        }
        // Either a new slot exists or room to start one does: wake waiters.
        self.changed.notify_waiters();
        Ok(added?)
    }

    fn release(&self, slot_id: u64, discard: bool) {
        let removed = {
            let mut st = self.state.lock();
            let Some(i) = st.slots.iter().position(|s| s.id == slot_id) else { return };
            let slot = &mut st.slots[i];
            slot.inflight -= 1;
            slot.last_used = Instant::now();
            // A discarded instance leaves the pool at once; the requests
            // still on it finish (or fail) on their own lease.
            discard.then(|| st.slots.swap_remove(i))
        };
        if let Some(slot) = removed {
            self.stop_slot(slot);
        }
        self.changed.notify_waiters();
    }

    /// Stops an instance that has left the pool and returns its budget.
    pub(crate) fn stop_slot(&self, slot: Slot) {
        slot.instance.stop();
        self.budget.release(self.spec.manifest.memory);
    }

    pub(crate) fn retire(&self) {
        self.state.lock().retired = true;
        self.changed.notify_waiters();
    }

    /// Samples the load and asks the autoscaler how many instances this
    /// function should have; logs each change of mind at debug level.
    pub(crate) fn autoscale(&self, now: Instant) -> Decision {
        let m = &self.spec.manifest;
        let policy = &m.scaling;
        let mut st = self.state.lock();
        let load = st.inflight() + st.waiting;
        st.load.record(now, load, policy.stable_window);
        let in_panic = st.load.panic_until().is_some_and(|t| now < t);
        let snap = Snapshot {
            stable_load: st.load.average(now, policy.stable_window),
            panic_load: st.load.average(now, policy.panic_window),
            instances: st.slots.len() as u32 + st.starting,
            concurrency: m.concurrency,
            min_instances: m.min_instances,
            max_instances: self.max_instances(),
            in_panic,
        };
        let decision = autoscale::decide(&snap, policy);
        if decision.panic {
            st.load.set_panic_until(now + policy.stable_window);
        }
        if st.last_decision != Some(decision) {
            tracing::debug!(
                function = %self.spec.function, revision = self.spec.revision,
                desired = decision.desired, panic = decision.panic || in_panic,
                stable_load = snap.stable_load, panic_load = snap.panic_load, instances = snap.instances,
                "autoscaler"
            );
            st.last_decision = Some(decision);
        }
        decision
    }

    /// Removes the instances that should stop now: idle past `keep_alive`
    /// and beyond what the autoscaler holds (`hold`, at least
    /// `min_instances`), or idle in a retired pool.
    pub(crate) fn take_idle(&self, now: Instant, hold: u32) -> Vec<Slot> {
        let m = &self.spec.manifest;
        let mut st = self.state.lock();
        let keep = if st.retired { 0 } else { hold.max(m.min_instances) as usize };
        let retired = st.retired;
        // Most recently used first: those are kept, the rest may go.
        st.slots.sort_by_key(|s| std::cmp::Reverse(s.last_used));
        let (mut kept, mut stopped) = (Vec::new(), Vec::new());
        for slot in std::mem::take(&mut st.slots) {
            let expired = retired || now.saturating_duration_since(slot.last_used) >= m.keep_alive;
            if slot.inflight > 0 || kept.len() < keep || !expired {
                kept.push(slot);
            } else {
                stopped.push(slot);
            }
        }
        st.slots = kept;
        if !stopped.is_empty() {
            tracing::debug!(function = %self.spec.function, revision = self.spec.revision, count = stopped.len(), "stopping idle instances");
        }
        stopped
    }

    /// The idle instance used longest ago, beyond `min_instances`, and when
    /// it was last used: a candidate for eviction under host pressure.
    pub(crate) fn oldest_idle(&self) -> Option<Instant> {
        let st = self.state.lock();
        let idle = st.slots.iter().filter(|s| s.inflight == 0).count();
        if idle == 0 || (!st.retired && st.slots.len() <= self.spec.manifest.min_instances as usize) {
            return None;
        }
        st.slots.iter().filter(|s| s.inflight == 0).map(|s| s.last_used).min()
    }

    /// Removes the idle instance used longest ago (see [`Self::oldest_idle`]).
    pub(crate) fn evict_oldest_idle(&self) -> Option<Slot> {
        let mut st = self.state.lock();
        let i = st.slots.iter().enumerate().filter(|(_, s)| s.inflight == 0).min_by_key(|(_, s)| s.last_used)?.0;
        Some(st.slots.swap_remove(i))
    }

    /// Starts instances in the background up to `want` (at least `min_instances`).
    pub(crate) fn prewarm(self: &Arc<Self>, want: u32, now: Instant) {
        let m = &self.spec.manifest;
        let mut missing = 0;
        {
            let mut st = self.state.lock();
            let have = st.slots.len() as u32 + st.starting;
            let want = want.max(m.min_instances).min(self.max_instances());
            let backing_off = st.prewarm_failed_at.is_some_and(|t| now < t + PREWARM_BACKOFF);
            if st.retired || backing_off || have >= want {
                return;
            }
            for _ in have..want {
                if !self.budget.try_reserve(m.memory) {
                    break;
                }
                missing += 1;
            }
            st.starting += missing;
        }
        for _ in 0..missing {
            let pool = self.clone();
            tokio::spawn(async move {
                let deadline = Instant::now() + pool.spec.manifest.timeout.max(Duration::from_secs(30));
                let result = pool.launcher.start(&pool.spec, deadline).await;
                if let Err(e) = pool.started(result, 0) {
                    tracing::warn!(function = %pool.spec.function, error = %e, "could not prewarm an instance");
                    pool.state.lock().prewarm_failed_at = Some(Instant::now());
                }
            });
        }
    }

    pub(crate) fn is_drained(&self) -> bool {
        let st = self.state.lock();
        st.retired && st.slots.is_empty() && st.starting == 0
    }
}
