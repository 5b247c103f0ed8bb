//! Ownership of one long-lived instance process: who waits for it, how it
//! is killed, and how its exit is described.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use std::os::fd::{AsFd, OwnedFd};

use flick_sandbox::{Adopted, Cgroup, Meter, Spawned, Usage};
use parking_lot::Mutex;
use tokio::sync::watch;

/// Longest the reaper waits for a sandbox's exit report after reaping it.
const REPORT_WAIT: Duration = Duration::from_secs(1);

/// A running process; killing it kills its whole process group.
#[derive(Debug)]
pub struct ProcessHandle {
    pid: u32,
    cgroup: Option<Arc<Cgroup>>,
    exited: Arc<AtomicBool>,
    exit: watch::Receiver<Option<Exit>>,
    metering: Option<Arc<Metering>>,
    /// A process flick did not fork (a template's fork): signalled through
    /// its pidfd, its exit seen there (with no status: its parent reaps it).
    pidfd: Option<Arc<OwnedFd>>,
}

/// An instance's usage counters and how many calls are measuring them.
#[derive(Debug)]
struct Metering {
    meter: Meter,
    /// Calls in flight on the instance: the peak restarts only when the
    /// first of them begins, so it covers every call that overlaps.
    busy: AtomicU32,
    /// The counters as they were when the program exited, read before its
    /// cgroup is removed (for exec, where each call is one process).
    at_exit: Mutex<Option<Usage>>,
}

impl Metering {
    /// The counters of `cgroup`, if it has any.
    fn open(cgroup: Option<&Cgroup>) -> Option<Arc<Self>> {
        let meter = cgroup?.meter()?;
        Some(Arc::new(Self { meter, busy: AtomicU32::new(0), at_exit: Mutex::new(None) }))
    }

    fn capture(&self) {
        let mut at_exit = self.at_exit.lock();
        if at_exit.is_none() {
            *at_exit = Some(self.meter.read());
        }
    }
}

/// One call's measurement on a shared instance: see [`ProcessHandle::measure`].
pub struct Measuring {
    metering: Arc<Metering>,
    cpu_before: Option<u64>,
}

impl Measuring {
    /// The instance's CPU time during the call, and its memory peak since
    /// the call (or an overlapping one) began.
    pub fn finish(self) -> Usage {
        let m = &self.metering.meter;
        let now = m.read();
        Usage {
            cpu_ns: now.cpu_ns.zip(self.cpu_before).map(|(a, b)| a.saturating_sub(b)),
            memory_peak: now.memory_peak,
        }
    }
}

impl Drop for Measuring {
    fn drop(&mut self) {
        self.metering.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// The kernel killed it for exceeding its cgroup's memory limit.
    pub oom: bool,
}

impl Exit {
    fn from_status(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        Self { code: status.code(), signal: status.signal(), oom: false }
    }

    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.oom {
            return f.write_str("ran out of memory and was killed");
        }
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exited with status {code}"),
            (None, Some(9)) => f.write_str("was killed (SIGKILL)"),
            (None, Some(sig)) => write!(f, "was killed by signal {sig}"),
            _ => f.write_str("exited"),
        }
    }
}

impl ProcessHandle {
    /// Takes over a spawned process (whose stdio the caller has already
    /// taken): a task reaps it, so it never lingers as a zombie, then reads
    /// and removes its cgroup.
    pub fn new(spawned: Spawned) -> Self {
        let Spawned { mut child, cgroup, exit_report, go: _ } = spawned;
        let pid = child.id().unwrap_or(0);
        let cgroup = cgroup.map(Arc::new);
        let metering = Metering::open(cgroup.as_deref());
        let exited = Arc::new(AtomicBool::new(false));
        let (tx, exit) = watch::channel(None);
        let tx = Arc::new(tx);
        // Resolves once the report (if one is expected) was read or will
        // never come: the reaper must not answer with the sandbox's own
        // exit (0 whatever the program did) while a report is on its way.
        let mut reported = None;
        if let Some(fd) = exit_report {
            // The sandbox reports the program's exit before tearing itself
            // down: answer from that, and let the teardown finish on its own.
            let (tx, cgroup, metering) = (tx.clone(), cgroup.clone(), metering.clone());
            let (done, wait) = tokio::sync::oneshot::channel::<()>();
            reported = Some(wait);
            tokio::spawn(async move {
                if let Some(mut exit) = read_report(fd).await {
                    // Before the exit is known (and the cgroup can go).
                    if let Some(m) = &metering {
                        m.capture();
                    }
                    exit.oom = cgroup.is_some_and(|cg| cg.oom_killed());
                    let _ = tx.send(Some(exit));
                }
                let _ = done.send(());
            });
        }
        let flag = exited.clone();
        let reaped_cgroup = cgroup.clone();
        let reaped_metering = metering.clone();
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(status) => Exit::from_status(status),
                Err(_) => Exit { code: None, signal: None, oom: false },
            };
            flag.store(true, Ordering::SeqCst);
            // The sandbox is gone, so its report is in the pipe or never
            // will be; the bound only guards against a leaked write end.
            if let Some(wait) = reported {
                let _ = tokio::time::timeout(REPORT_WAIT, wait).await;
            }
            // A reported exit, if any, says more than the sandbox's own.
            settle(exit, reaped_cgroup, reaped_metering, &tx).await;
        });
        Self { pid, cgroup, exited, exit, metering, pidfd: None }
    }

    /// Takes over a process a template forked: its exit is watched on its
    /// pidfd; then its cgroup is read and removed as for a spawned one.
    pub fn adopted(adopted: Adopted) -> Self {
        let Adopted { pid, pidfd, cgroup } = adopted;
        let pidfd = Arc::new(pidfd);
        let cgroup = cgroup.map(Arc::new);
        let metering = Metering::open(cgroup.as_deref());
        let exited = Arc::new(AtomicBool::new(false));
        let (tx, exit) = watch::channel(None);
        let (flag, reaped_cgroup, reaped_metering) = (exited.clone(), cgroup.clone(), metering.clone());
        let watched = pidfd.clone();
        tokio::spawn(async move {
            let _ = flick_sandbox::pidfd_exited(watched).await;
            flag.store(true, Ordering::SeqCst);
            settle(Exit { code: None, signal: None, oom: false }, reaped_cgroup, reaped_metering, &tx).await;
        });
        Self { pid, cgroup, exited, exit, metering, pidfd: Some(pidfd) }
    }

    /// Starts measuring one call on a long-lived instance. With
    /// `concurrency` > 1 the counters are the instance's, shared: the CPU
    /// time is the instance's during the call (other calls' included) and
    /// the peak restarts only when no other call is in flight.
    pub fn measure(&self) -> Option<Measuring> {
        let metering = self.metering.as_ref()?.clone();
        if metering.busy.fetch_add(1, Ordering::SeqCst) == 0 {
            metering.meter.reset_peak();
        }
        let cpu_before = metering.meter.cpu_ns();
        Some(Measuring { metering, cpu_before })
    }

    /// Everything the process's cgroup used in its life: read when the
    /// program exited, or now if it still runs (exec, one call per process).
    pub fn usage_total(&self) -> Option<Usage> {
        let m = self.metering.as_ref()?;
        let at_exit = *m.at_exit.lock();
        Some(at_exit.unwrap_or_else(|| m.meter.read()))
    }

    pub fn kill(&self) {
        // Once reaped the pid may belong to someone else: never signal it then.
        if self.pid == 0 || self.exited.load(Ordering::SeqCst) {
            return;
        }
        if let Some(pidfd) = &self.pidfd {
            // Whatever it started went into its cgroup with it.
            flick_sandbox::kill_pidfd(pidfd.as_fd());
            if let Some(cg) = &self.cgroup {
                cg.kill_all_except(0);
            }
            return;
        }
        // Sandboxed: kill the instance inside and let the outer process
        // reap it and exit; otherwise (or if nothing else is there yet)
        // the whole process group.
        let killed = self.cgroup.as_ref().map_or(0, |cg| cg.kill_all_except(self.pid));
        if killed == 0 {
            flick_sandbox::kill_group(self.pid);
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process has exited (or its program has, for a sandbox
    /// that reports its program's exit).
    pub fn has_exited(&self) -> bool {
        self.exited.load(Ordering::SeqCst) || self.exit.borrow().is_some()
    }

    /// Resolves once the process has exited; does not hold the handle.
    pub fn on_exit(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.exit.clone();
        async move {
            let _ = rx.wait_for(|s| s.is_some()).await;
        }
    }

    /// Sets the memory limit of the process's cgroup (if it has one).
    pub fn set_memory(&self, bytes: u64) -> std::io::Result<()> {
        self.cgroup.as_ref().map_or(Ok(()), |cg| cg.set_memory(bytes))
    }

    /// How the process exited, waiting at most `wait` for it to do so.
    pub async fn exit(&self, wait: Duration) -> Option<Exit> {
        let mut rx = self.exit.clone();
        let _ = tokio::time::timeout(wait, rx.wait_for(|s| s.is_some())).await;
        *rx.borrow()
    }
}

impl Drop for ProcessHandle {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The end of a process that has exited: its OOM kill and usage are read
/// while its cgroup is still there, its exit is told (unless a report told
/// it already), then the cgroup is removed — after answering, since removal
/// may retry for a while.
async fn settle(
    mut exit: Exit,
    cgroup: Option<Arc<Cgroup>>,
    metering: Option<Arc<Metering>>,
    tx: &watch::Sender<Option<Exit>>,
) {
    exit.oom = cgroup.as_ref().is_some_and(|cg| cg.oom_killed());
    if let Some(m) = &metering {
        m.capture();
    }
    tx.send_if_modified(|current| current.is_none() && current.replace(exit).is_none());
    if let Some(cg) = cgroup {
        let _ = tokio::task::spawn_blocking(move || cg.destroy()).await;
    }
}

/// Reads a sandbox's exit report: the program's raw wait status. `None`
/// if the sandbox died before it could report (it was killed).
async fn read_report(fd: std::os::fd::OwnedFd) -> Option<Exit> {
    use std::os::unix::process::ExitStatusExt;
    use tokio::io::AsyncReadExt;
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok()?;
    let mut raw = [0u8; 4];
    pipe.read_exact(&mut raw).await.ok()?;
    Some(Exit::from_status(std::process::ExitStatus::from_raw(i32::from_ne_bytes(raw))))
}
