//! Stem cells: a few started, sandboxed, function-less instances per
//! runtime and network kind, so a cold start pays neither interpreter
//! start-up nor sandbox set-up. Each is used once and replaced in the
//! background.
//!
//! Only kinds some deployed function uses have stem cells (the scheduler
//! says which, [`Launcher::use_stems_for`]): an idle flick keeps no
//! interpreter no function needs. Each kind keeps `stem_cells` ready; when
//! cold starts take them faster than they are replaced (a burst of distinct
//! functions), the kind's target grows by one per cell found missing, up to
//! [`BURST_MAX`], so more start in parallel and the burst's later cold
//! starts find them; [`STEM_IDLE`] after the last such shortfall the extra
//! cells are stopped ([`Launcher::trim_stems`]).
//!
//! python3 and node stem cells are bootstraps waiting to be told their
//! function; exec stem cells are sandboxes, fully set up, waiting to be told
//! the program to run (exec starts a process per request, so every request
//! of an exec function is a cold start, and joining a cgroup alone costs
//! ~14 ms on cgroup v1 hosts).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use flick_core::{Manifest, Network, RuntimeKind};
use flick_sandbox::ProcessSpec;

use crate::exec::Started;
use crate::handle::ProcessHandle;
use crate::process::Stem;
use crate::{InstanceSpec, Launcher};

type Key = (RuntimeKind, Network);

/// Memory limit of an exec stem cell until it takes on a function's own.
const EXEC_STEM_MEMORY: u64 = 256 << 20;
/// After a stem cell fails to start, the next try waits this long,
/// doubling with each failure in a row up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Most stem cells one kind may grow to in a burst. Each python3 cell is
/// ~17 MiB RSS, so a burst costs at most ~0.3 GiB for a while; starting
/// more at once gains nothing on a small host (the starts share its cores
/// and, on cgroup v1, one kernel lock).
pub const BURST_MAX: u32 = 16;
/// How long after the last shortfall a grown pool keeps its extra cells.
pub const STEM_IDLE: Duration = Duration::from_secs(10);
/// Longest a cold start waits for a stem cell being started for it before
/// it starts its own process. A failed start ends the wait at once (the
/// kind's failures are then above zero and nobody waits until one starts).
const STEM_WAIT: Duration = Duration::from_secs(10);

/// A ready stem cell.
enum Cell {
    Bootstrap(Stem),
    Exec(Started),
}

impl Cell {
    fn process(&self) -> &ProcessHandle {
        match self {
            Self::Bootstrap(stem) => stem.process(),
            Self::Exec(started) => &started.process,
        }
    }
}

/// A ready stem cell and the number that tells it apart from the others
/// (its watcher removes it by that number when it dies).
struct Ready {
    id: u64,
    cell: Cell,
}

/// Per kind: what the pool has seen, for `/v1/instances`.
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    /// Stem cells that died while waiting to be used.
    died: u64,
    /// Failed starts in a row (reset by a successful one).
    failures: u32,
}

/// Per kind: how many cells it should keep, grown by recent demand.
#[derive(Clone, Copy, Debug)]
struct Demand {
    /// Cells to keep ready (or starting); at least `stem_cells`.
    target: u32,
    /// The last take that found the kind short (no cell, or its last one
    /// while a replacement was still starting).
    last_short: std::time::Instant,
}

#[derive(Default)]
pub(crate) struct StemPool {
    /// Ready stem cells per key.
    ready: Mutex<HashMap<Key, Vec<Ready>>>,
    /// Stem cells being started per key (a retry waiting counts too).
    starting: Mutex<HashMap<Key, u32>>,
    stats: Mutex<HashMap<Key, Stats>>,
    /// Kinds grown past `stem_cells` by a burst.
    demand: Mutex<HashMap<Key, Demand>>,
    /// Kinds some deployed function uses: the only ones kept ready.
    in_use: Mutex<HashSet<Key>>,
    /// Cold starts waiting for a cell being started, per kind (each has
    /// claimed one of `starting`).
    waiting: Mutex<HashMap<Key, u32>>,
    /// Woken whenever a cell becomes ready.
    arrived: tokio::sync::Notify,
    next_id: AtomicU64,
    /// Set on shutdown: no more refills.
    closed: AtomicBool,
}

impl std::fmt::Debug for StemPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StemPool")
    }
}

fn flavour(network: Network) -> flick_sandbox::Network {
    match network {
        Network::Host => flick_sandbox::Network::Host,
        Network::None => flick_sandbox::Network::None,
    }
}

fn kind_name(key: Key) -> String {
    format!("{}/{}", key.0.as_str(), key.1.as_str())
}

/// Ready stem cells and deaths of one kind (`runtime/network`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StemCount {
    pub kind: String,
    /// Live stem cells ready to be used.
    pub ready: usize,
    /// Stem cells that died before they were used (each was replaced).
    pub died: u64,
}

/// The kind of stem cell a function of `m` could start from, if any.
fn stem_key(m: &Manifest) -> Option<Key> {
    match m.runtime {
        RuntimeKind::Python3 | RuntimeKind::Node if !m.lambda_ric => Some((m.runtime, m.network)),
        RuntimeKind::Exec => Some((m.runtime, m.network)),
        _ => None,
    }
}

impl Launcher {
    /// Keeps stem cells for the kinds the functions of `manifests` use
    /// (every deployed function's current revision), and only those: new
    /// kinds start filling, kinds no function uses any more are stopped.
    pub fn use_stems_for<'a>(&self, manifests: impl IntoIterator<Item = &'a Manifest>) {
        let wanted: HashSet<Key> = manifests.into_iter().filter_map(stem_key).collect();
        let (added, dropped) = {
            let mut in_use = self.stems.in_use.lock();
            if *in_use == wanted {
                return;
            }
            let added: Vec<Key> = wanted.difference(&in_use).copied().collect();
            let dropped: Vec<Key> = in_use.difference(&wanted).copied().collect();
            *in_use = wanted;
            (added, dropped)
        };
        if !dropped.is_empty() {
            // Removed from the map here, dropped (killed) outside the lock.
            let gone: Vec<Vec<Ready>> = {
                let mut ready = self.stems.ready.lock();
                dropped.iter().filter_map(|k| ready.remove(k)).collect()
            };
            let mut demand = self.stems.demand.lock();
            for key in &dropped {
                demand.remove(key);
                tracing::debug!(kind = %kind_name(*key), "no function uses this kind any more: its stem cells stop");
            }
            drop(demand);
            drop(gone);
        }
        for key in added {
            self.refill(key);
        }
    }

    /// Shrinks kinds grown by a burst back to `stem_cells` once no cold
    /// start has found them short for [`STEM_IDLE`], stopping the extra
    /// ready cells. Called by the scheduler's reaper.
    pub fn trim_stems(&self) {
        let now = std::time::Instant::now();
        self.stems.demand.lock().retain(|_, d| now.duration_since(d.last_short) < STEM_IDLE);
        // Every kind, not only those just calmed: cells a burst had asked
        // for may have come up since.
        let keys: Vec<Key> = self.stems.ready.lock().keys().copied().collect();
        let targets: Vec<(Key, usize)> = keys.into_iter().map(|k| (k, self.target(k) as usize)).collect();
        let extra: Vec<Ready> = {
            let mut ready = self.stems.ready.lock();
            let mut extra = Vec::new();
            for (key, target) in targets {
                if let Some(cells) = ready.get_mut(&key)
                    && cells.len() > target
                {
                    // The oldest go: they are at the front.
                    extra.extend(cells.drain(..cells.len() - target));
                }
            }
            extra
        };
        if !extra.is_empty() {
            tracing::debug!(stopped = extra.len(), "burst over: extra stem cells stop");
        }
        // Dropping a cell kills it (outside the lock).
        drop(extra);
    }

    /// The number of cells `key` should keep ready or starting.
    fn target(&self, key: Key) -> u32 {
        let base = self.config.stem_cells;
        self.stems.demand.lock().get(&key).map_or(base, |d| d.target.max(base))
    }

    /// A take found `key` short: one more cell for it, up to [`BURST_MAX`].
    fn grow(&self, key: Key) {
        let base = self.config.stem_cells;
        let mut demand = self.stems.demand.lock();
        let d = demand.entry(key).or_insert(Demand { target: base, last_short: std::time::Instant::now() });
        d.target = (d.target + 1).min(BURST_MAX.max(base));
        d.last_short = std::time::Instant::now();
    }

    /// A ready python3/node stem cell for `key`, if there is one. A miss
    /// (a sign the key is in demand) tops the pool up at once; a hit leaves
    /// that to the caller once the cell has become its instance
    /// ([`Self::stems_refill_on_drop`]): a replacement started beside it
    /// would take a core from the cold start it serves (~30 ms of CPU for a
    /// python3 start against a ~3 ms specialise, on a host with two cores).
    pub(crate) fn take_stem(&self, key: Key) -> Option<Stem> {
        let Some(cell) = self.take(key) else {
            self.refill(key);
            return None;
        };
        match cell {
            Cell::Bootstrap(stem) => Some(stem),
            Cell::Exec(_) => None,
        }
    }

    /// Like [`Self::take_stem`], but when none is ready and a cell is being
    /// started that no other cold start has claimed, waits for a ready one
    /// (at most [`STEM_WAIT`], never past `deadline`). In a burst of
    /// distinct functions the cold starts draw from the cells the grown
    /// pool starts, instead of each starting another process beside them.
    pub(crate) async fn take_stem_or_wait(&self, key: Key, deadline: tokio::time::Instant) -> Option<Stem> {
        if let Some(stem) = self.take_stem(key) {
            return Some(stem);
        }
        let failing = || self.stems.stats.lock().get(&key).is_some_and(|s| s.failures > 0);
        if failing() {
            return None;
        }
        let claimed = {
            let starting = self.stems.starting.lock().get(&key).copied().unwrap_or(0);
            let mut waiting = self.stems.waiting.lock();
            let n = waiting.entry(key).or_default();
            let free = *n < starting;
            if free {
                *n += 1;
            }
            free
        };
        if !claimed {
            return None;
        }
        /// Gives the claim back however the wait ends.
        struct Claim<'a>(&'a StemPool, Key);
        impl Drop for Claim<'_> {
            fn drop(&mut self) {
                if let Some(n) = self.0.waiting.lock().get_mut(&self.1) {
                    *n = n.saturating_sub(1);
                }
            }
        }
        let _claim = Claim(&self.stems, key);
        let give_up = deadline.min(tokio::time::Instant::now() + STEM_WAIT);
        loop {
            let arrived = self.stems.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let (Some(cell), _) = self.take_ready(key) {
                self.refill(key);
                return match cell {
                    Cell::Bootstrap(stem) => Some(stem),
                    Cell::Exec(_) => None,
                };
            }
            if self.closed() || failing() || tokio::time::timeout_at(give_up, arrived).await.is_err() {
                return None;
            }
        }
    }

    /// A ready, live cell of `key`, if any, and how many cells are left
    /// listed (no demand counted, no refill). A dead cell still listed (its
    /// watcher has not run yet) is skipped. The newest first: the oldest go
    /// first when trimmed.
    fn take_ready(&self, key: Key) -> (Option<Cell>, usize) {
        let mut ready = self.stems.ready.lock();
        let Some(cells) = ready.get_mut(&key) else { return (None, 0) };
        let at = cells.iter().rposition(|r| !r.cell.process().has_exited());
        let cell = at.map(|i| cells.remove(i).cell);
        (cell, cells.len())
    }

    /// A prewarmed sandbox running `program` for `spec`, with its code
    /// attached and its memory limit set, or `None` (start one afresh).
    pub(crate) async fn exec_stem(
        &self,
        spec: &InstanceSpec,
        program: &Path,
        args: &[OsString],
        env: &[(String, String)],
    ) -> Option<Started> {
        let m = &spec.manifest;
        if !self.sandbox.is_isolated() || m.tmp_size != Manifest::DEFAULT_TMP_SIZE {
            return None;
        }
        let program = resolve(program)?;
        let message = flick_sandbox::go_message(self.limits(spec).identity, &program, args, env)?;
        // No refill yet: moving a new process into its cgroup holds a
        // system-wide lock that every fork waits on (~14 ms on cgroup v1),
        // and this request is about to fork its program. The caller refills
        // when the program has run (`refill_exec`).
        let key = (RuntimeKind::Exec, m.network);
        let Cell::Exec(mut cell) = self.take(key)? else { return None };
        // Dropping the cell on any failure kills it (ProcessHandle's drop).
        if cell.process.has_exited() {
            // Died between its watcher's last look and now.
            self.stem_died(key);
            return None;
        }
        if let Err(e) = self.sandbox.attach_code(cell.process.pid(), &spec.code_dir).await {
            tracing::warn!(function = %spec.function, error = %e, "exec stem cell unusable");
            return None;
        }
        if let Err(e) = cell.process.set_memory(m.memory) {
            tracing::warn!(function = %spec.function, error = %e, "exec stem cell unusable: cannot set its memory limit");
            return None;
        }
        // Smaller than a pipe's buffer: the write cannot block.
        let Some(go) = cell.go.take() else {
            tracing::warn!(function = %spec.function, "exec stem cell unusable: its go pipe was already used");
            return None;
        };
        if let Err(e) = std::fs::File::from(go).write_all(&message) {
            tracing::warn!(function = %spec.function, error = %e, "exec stem cell unusable: cannot hand it the program");
            return None;
        }
        Some(cell)
    }

    fn take(&self, key: Key) -> Option<Cell> {
        if self.config.stem_cells == 0 {
            return None;
        }
        let (cell, left) = self.take_ready(key);
        // Taken faster than replaced: none left, or the last one taken
        // while another is still starting.
        let starting = self.stems.starting.lock().get(&key).copied().unwrap_or(0);
        if cell.is_none() || (left == 0 && starting > 0) {
            self.grow(key);
        }
        cell
    }

    /// Tops up the exec stem cells of `network` (after a request ran).
    pub(crate) fn refill_exec(&self, network: Network) {
        self.refill((RuntimeKind::Exec, network));
    }

    /// Tops up `key`'s stem cells when the returned guard is dropped: after
    /// a cell taken by [`Self::take_stem`] has been specialised, found
    /// unusable, or its cold start given up.
    pub(crate) fn stems_refill_on_drop(&self, key: Key) -> impl Drop + '_ {
        struct Refill<'a>(&'a Launcher, Key);
        impl Drop for Refill<'_> {
            fn drop(&mut self) {
                self.0.refill(self.1);
            }
        }
        Refill(self, key)
    }

    fn refill(&self, key: Key) {
        let want = self.target(key);
        let exec_unsupported = key.0 == RuntimeKind::Exec && !self.sandbox.is_isolated();
        if want == 0 || exec_unsupported || self.closed() || !self.stems.in_use.lock().contains(&key) {
            return;
        }
        let missing = {
            let ready = self.stems.ready.lock().get(&key).map_or(0, Vec::len) as u32;
            let mut starting = self.stems.starting.lock();
            let now = starting.entry(key).or_default();
            let missing = want.saturating_sub(ready + *now);
            *now += missing;
            missing
        };
        for _ in 0..missing {
            let launcher = self.clone();
            tokio::spawn(async move { launcher.start_one(key).await });
        }
    }

    /// Starts one stem cell of `key` (already counted as starting), puts it
    /// in the pool and watches it; after a failure, tries again later.
    async fn start_one(self, key: Key) {
        let result = self.start_cell(key).await;
        let cell = match result {
            Ok(cell) => cell,
            Err(e) => {
                let failures = {
                    let mut stats = self.stems.stats.lock();
                    let s = stats.entry(key).or_default();
                    s.failures = s.failures.saturating_add(1);
                    s.failures
                };
                // Cold starts waiting for this cell start their own now.
                self.stems.arrived.notify_waiters();
                let wait = RETRY_FIRST.saturating_mul(1 << failures.min(8)).min(RETRY_MAX);
                if !self.closed() {
                    tracing::warn!(kind = %kind_name(key), error = %e, retry_in = ?wait, "could not start a stem cell");
                }
                // Still counted as starting while it waits, so requests
                // meanwhile do not pile up more attempts.
                tokio::time::sleep(wait).await;
                *self.stems.starting.lock().entry(key).or_default() -= 1;
                self.refill(key);
                return;
            }
        };
        self.stems.stats.lock().entry(key).or_default().failures = 0;
        let id = self.stems.next_id.fetch_add(1, Ordering::Relaxed);
        let exited = cell.process().on_exit();
        {
            // Checked under the same lock `stop_stems` clears under, so a cell
            // is never added after the pool was emptied for good.
            let mut ready = self.stems.ready.lock();
            *self.stems.starting.lock().entry(key).or_default() -= 1;
            // Nor for a kind no function uses any more (checked under the
            // lock `use_stems_for` removes that kind's cells under).
            if self.closed() || !self.stems.in_use.lock().contains(&key) {
                return; // dropping the cell stops it
            }
            ready.entry(key).or_default().push(Ready { id, cell });
        }
        self.stems.arrived.notify_waiters();
        // Watch it while it waits: a stem cell that dies (killed, out of
        // memory, its runtime crashed) leaves the pool at once, is reported,
        // and is replaced — not found dead by the next cold start.
        tokio::spawn(async move {
            exited.await;
            let removed = {
                let mut ready = self.stems.ready.lock();
                let cells = ready.entry(key).or_default();
                let before = cells.len();
                cells.retain(|r| r.id != id);
                cells.len() < before
            };
            if removed && !self.closed() {
                self.stem_died(key);
                self.refill(key);
            }
        });
    }

    fn closed(&self) -> bool {
        self.stems.closed.load(Ordering::Relaxed)
    }

    fn stem_died(&self, key: Key) {
        self.stems.stats.lock().entry(key).or_default().died += 1;
        tracing::warn!(kind = %kind_name(key), "a stem cell died before it was used; starting another");
    }

    async fn start_cell(&self, key: Key) -> Result<Cell, String> {
        if key.0 != RuntimeKind::Exec {
            return Stem::start(self, key.0, flavour(key.1)).await.map(Cell::Bootstrap).map_err(|e| e.to_string());
        }
        let limits = flick_sandbox::Limits {
            memory: EXEC_STEM_MEMORY,
            tmp_size: Manifest::DEFAULT_TMP_SIZE,
            network: flavour(key.1),
            // Pid 1 takes on the function's uid from the go message.
            identity: flick_sandbox::Identity::Deferred,
        };
        self.sandbox
            .spawn(ProcessSpec {
                program: PathBuf::from("/bin/false"),
                args: vec![],
                env: vec![],
                code_dir: None,
                protocol_fd: None,
                stdin: true,
                limits,
                report_exit: true,
                wait_for_program: true,
            })
            .await
            .map(|spawned| Cell::Exec(Started::new(spawned)))
            .map_err(|e| e.to_string())
    }

    /// Live, ready stem cells and deaths per `runtime/network`, for status output.
    pub fn stem_counts(&self) -> Vec<StemCount> {
        let mut counts: HashMap<Key, StemCount> = HashMap::new();
        let new = |key: Key| StemCount { kind: kind_name(key), ready: 0, died: 0 };
        for (key, cells) in self.stems.ready.lock().iter() {
            counts.entry(*key).or_insert_with(|| new(*key)).ready =
                cells.iter().filter(|r| !r.cell.process().has_exited()).count();
        }
        for (key, stats) in self.stems.stats.lock().iter() {
            counts.entry(*key).or_insert_with(|| new(*key)).died = stats.died;
        }
        let mut out: Vec<_> = counts.into_values().collect();
        out.sort_by(|a, b| a.kind.cmp(&b.kind));
        out
    }

    /// Stops every stem cell and refills no more (shutdown).
    pub fn stop_stems(&self) {
        let mut ready = self.stems.ready.lock();
        self.stems.closed.store(true, Ordering::Relaxed);
        // Dropping a stem cell kills its process.
        ready.clear();
    }
}

/// The absolute path of a program, looked up on the sandbox's `PATH` (the
/// same directories, shared read-only, exist on the host).
fn resolve(program: &Path) -> Option<PathBuf> {
    if program.is_absolute() {
        return Some(program.to_path_buf());
    }
    let path = flick_sandbox::BASE_ENV.iter().find(|(k, _)| *k == "PATH")?.1;
    path.split(':').map(|dir| Path::new(dir).join(program)).find(|p| p.is_file())
}

pub(crate) fn new_pool() -> Arc<StemPool> {
    Arc::new(StemPool::default())
}
