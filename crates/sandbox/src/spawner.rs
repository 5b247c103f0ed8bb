//! The one thread that forks every instance: spawning off the async
//! threads, from a thread that lives as long as the sandbox.
//!
//! Two reasons it is a thread of its own, fed by a channel:
//! - a spawn blocks until the child has set up its sandbox and exec'd
//!   (2–16 ms); on the async worker threads that stalls every request
//!   sharing the thread, and on a 2-core host that is the whole API;
//! - `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
//!   not the process. Blocking-pool threads retire after 10 s idle, so a
//!   child forked from one was killed with it — a prewarmed sandbox died
//!   silently, or a running program was SIGKILLed mid-request. This thread
//!   exits only when the last handle to the sandbox is dropped (flick is
//!   going away, and its instances should go with it).
//!
//! Spawns are serialised here; each costs milliseconds and async callers
//! await them, so a burst of cold starts queues on this thread instead of
//! on the threads that serve the API.

use std::sync::mpsc;

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// A handle to the spawner thread; the thread ends when every handle is gone.
#[derive(Debug)]
pub(crate) struct Spawner {
    jobs: mpsc::Sender<Job>,
}

/// The spawner thread is gone (it could not be started, or panicked).
#[derive(Debug, thiserror::Error)]
#[error("the spawner thread is not running")]
pub(crate) struct SpawnerGone;

impl Spawner {
    pub(crate) fn start() -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new().name("flick-spawner".into()).spawn(move || {
            while let Ok(job) = queue.recv() {
                job();
            }
        })?;
        Ok(Self { jobs })
    }

    /// Runs `work` on the spawner thread, inside the caller's tokio runtime
    /// (children and pipes register with its reactor), and awaits its
    /// result. If the caller stops waiting, `unclaimed` gets the result on
    /// the spawner thread, so nothing started is left without an owner.
    pub(crate) async fn run<T, W, U>(&self, work: W, unclaimed: U) -> Result<T, SpawnerGone>
    where
        T: Send + 'static,
        W: FnOnce() -> T + Send + 'static,
        U: FnOnce(T) + Send + 'static,
    {
        let runtime = tokio::runtime::Handle::current();
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _inside = runtime.enter();
            if let Err(result) = reply.send(work()) {
                unclaimed(result);
            }
        });
        self.jobs.send(job).map_err(|_| SpawnerGone)?;
        answer.await.map_err(|_| SpawnerGone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_one_long_lived_thread() {
        let spawner = Spawner::start().unwrap();
        let name = || std::thread::current().name().map(String::from);
        let first = spawner.run(name, |_| {}).await.unwrap();
        let second = spawner.run(move || (name(), std::thread::current().id()), |_| {}).await.unwrap();
        let third = spawner.run(|| std::thread::current().id(), |_| {}).await.unwrap();
        assert_eq!(first.as_deref(), Some("flick-spawner"));
        assert_eq!(second.0.as_deref(), Some("flick-spawner"));
        assert_eq!(second.1, third, "every job runs on the same thread");
        assert_ne!(third, std::thread::current().id());
    }

    #[tokio::test]
    async fn a_result_nobody_waits_for_goes_to_unclaimed() {
        let spawner = Spawner::start().unwrap();
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let (seen_tx, seen_rx) = std::sync::mpsc::channel::<u32>();
        let waiting = spawner.run(
            move || {
                gate_rx.recv().unwrap();
                7u32
            },
            move |v| seen_tx.send(v).unwrap(),
        );
        // Start the job, then give up on it before it finishes.
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(50), waiting).await;
        assert!(gave_up.is_err());
        gate_tx.send(()).unwrap();
        assert_eq!(seen_rx.recv_timeout(std::time::Duration::from_secs(5)), Ok(7));
    }
}

#[cfg(test)]
mod lifetime {
    use std::time::Duration;

    use crate::{Identity, Limits, Network, ProcessSpec, Sandbox};

    fn state(pid: u32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next())
    }

    /// The parent-death signal is tied to the thread that forked: a child
    /// asked for by a thread that then exits (as tokio's blocking threads
    /// do after 10 s idle) must live on.
    #[test]
    fn a_child_outlives_the_thread_that_asked_for_it() {
        let dir = std::env::temp_dir();
        let sandbox = Sandbox::unisolated(dir.clone()).unwrap();
        let asker = sandbox.clone();
        let spawned = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(asker.spawn(ProcessSpec {
                program: "/bin/sleep".into(),
                args: vec!["30".into()],
                env: vec![],
                code_dir: Some(dir),
                protocol_fd: None,
                stdin: false,
                limits: Limits {
                    memory: 64 << 20,
                    tmp_size: 1 << 20,
                    network: Network::Host,
                    identity: Identity::Shared,
                },
                report_exit: false,
                wait_for_program: false,
            }))
            .unwrap()
        })
        .join()
        .unwrap();
        let pid = spawned.child.id().unwrap();
        // Give a parent-death SIGKILL, if one was sent, time to land.
        std::thread::sleep(Duration::from_millis(300));
        let alive = state(pid).is_some_and(|s| s != 'Z' && s != 'X');
        crate::kill_pid(pid as i32);
        assert!(alive, "the child died with the thread that asked for it (state {:?})", state(pid));
    }
}
