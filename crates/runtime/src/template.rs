//! Fork templates: a python3 process of one function revision that has
//! imported the handler and then only forks. Each fork is a new instance of
//! that revision, ready without importing anything again, so a function
//! whose import takes hundreds of milliseconds (numpy, pandas) scales out
//! and comes back from zero in a few.
//!
//! A template is made in the background after a cold start whose import of
//! the handler took `template_after` or longer, or after a revision's second cold start
//! within [`TEMPLATE_IDLE`] (it keeps coming back from zero); it is kept
//! while its revision is served and used within [`TEMPLATE_IDLE`], and
//! refused (for good, per revision) when the import left something a fork
//! must not share: running threads or open connections. It keeps one fork
//! ready (a spare), so a cold start takes that one and a new spare is forked
//! behind it. Forks share the template's sandbox (namespaces, root, `/tmp`)
//! and get cgroups of their own (`flick_sandbox::Sandbox::adopt_fork`).

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::BufReader;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

use crate::handle::ProcessHandle;
use flick_core::LogStream;

use crate::logs::LogCollector;
use crate::process::{Booting, ProcessInstance, spawn_bootstrap};
use crate::protocol::{self, FrameError};
use crate::{InstanceSpec, Launcher, StartError};

/// A template unused this long is stopped (its memory returned); the next
/// cold start pays the import again and may make a new one.
pub const TEMPLATE_IDLE: Duration = Duration::from_secs(600);
/// How long a template may take to import the handler.
const TEMPLATE_START: Duration = Duration::from_secs(60);
/// How long a template may take to answer a fork request, and the fork to
/// say `ready`: both take milliseconds, and a template that lies about its
/// fork must not hold a request until its deadline.
const FORK_REPLY: Duration = Duration::from_secs(2);

pub(crate) struct Template {
    process: ProcessHandle,
    /// One fork at a time: a request and its reply must stay paired.
    channel: tokio::sync::Mutex<Channel>,
    /// Drains what the template writes (its import's output) so it never
    /// blocks on a full pipe.
    _logs: LogCollector,
    used: Mutex<Instant>,
    /// A fork made ahead, ready to serve. Not tied to the template (that
    /// would be a cycle): it is when taken.
    spare: Mutex<Option<ProcessInstance>>,
    refilling: AtomicBool,
}

struct Channel {
    reader: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl Template {
    /// Starts a template for `spec` and waits until it has imported the
    /// handler. `Err(StartError::Init)` means it refused or failed to be one.
    async fn start(launcher: &Launcher, spec: &InstanceSpec) -> Result<Self, StartError> {
        let mut env = launcher.env(spec);
        env.push(("FLICK_TEMPLATE".into(), "1".into()));
        let mut booting =
            spawn_bootstrap(launcher, spec.manifest.runtime, Some(spec.code_dir.clone()), env, launcher.limits(spec))
                .await?;
        booting.first_frame("template_ready", Instant::now() + TEMPLATE_START).await?;
        let Booting { process, reader, write, logs } = booting;
        Ok(Self {
            process,
            channel: tokio::sync::Mutex::new(Channel { reader, write }),
            _logs: logs,
            used: Mutex::new(Instant::now()),
            spare: Mutex::new(None),
            refilling: AtomicBool::new(false),
        })
    }

    /// A new instance of the template's revision: the spare if one is
    /// ready, else a fork made now; either way a new spare follows.
    pub(crate) async fn instance(
        self: &Arc<Self>,
        launcher: &Launcher,
        spec: &InstanceSpec,
        deadline: Instant,
    ) -> Result<ProcessInstance, String> {
        *self.used.lock() = Instant::now();
        let spare = self.spare.lock().take().filter(ProcessInstance::is_alive);
        let mut instance = match spare {
            Some(instance) => instance,
            None => self.fork(launcher, spec, deadline).await?,
        };
        instance.hold(self.clone());
        self.refill(launcher, spec);
        Ok(instance)
    }

    /// Forks a spare in the background unless one is ready or on its way.
    fn refill(self: &Arc<Self>, launcher: &Launcher, spec: &InstanceSpec) {
        if self.spare.lock().is_some() || self.refilling.swap(true, Ordering::SeqCst) {
            return;
        }
        let (this, launcher, spec) = (self.clone(), launcher.clone(), spec.clone());
        tokio::spawn(async move {
            match this.fork(&launcher, &spec, Instant::now() + FORK_REPLY).await {
                Ok(spare) => *this.spare.lock() = Some(spare),
                Err(why) => tracing::debug!(function = %spec.function, %why, "no spare fork"),
            }
            this.refilling.store(false, Ordering::SeqCst);
        });
    }

    /// A new instance of the template's revision, forked and ready.
    async fn fork(
        &self,
        launcher: &Launcher,
        spec: &InstanceSpec,
        deadline: Instant,
    ) -> Result<ProcessInstance, String> {
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| io("socketpair", e))?;
        let (out_read, out_write) = std::io::pipe().map_err(|e| io("pipe", e))?;
        let (err_read, err_write) = std::io::pipe().map_err(|e| io("pipe", e))?;
        // The fork's own log stream name, as a fresh instance would have.
        let stream =
            flick_core::aws::log_stream(flick_core::now_ms(), crate::LAMBDA_VERSION, &flick_core::aws::instance_id());
        let request = serde_json::json!({ "type": "fork", "env": { "AWS_LAMBDA_LOG_STREAM_NAME": stream } });
        let mut bytes = serde_json::to_vec(&request).unwrap_or_default();
        bytes.push(b'\n');
        let ns_pid = {
            let mut channel = self.channel.lock().await;
            let socket: &UnixStream = channel.write.as_ref();
            flick_sandbox::send_with_fds(
                socket.as_fd(),
                &bytes,
                &[theirs.as_fd(), out_write.as_fd(), err_write.as_fd()],
            )
            .map_err(|e| io("sending the fork request", e))?;
            drop((theirs, out_write, err_write));
            let until = deadline.min(Instant::now() + FORK_REPLY);
            let reply = tokio::time::timeout_at(until, protocol::read_frame(&mut channel.reader, 64 << 10)).await;
            match reply {
                Ok(Ok(frame)) if frame.header.kind == "forked" => {
                    frame.header.pid.ok_or("a fork reply without a pid")?
                }
                Ok(Ok(frame)) => return Err(format!("the template answered `{}` to a fork", frame.header.kind)),
                Ok(Err(FrameError::Eof)) => return Err("the template exited".into()),
                Ok(Err(e)) => return Err(e.to_string()),
                // Its reply may still come and would answer the next request.
                Err(_) => {
                    self.process.kill();
                    return Err("the template did not answer in time".into());
                }
            }
        };
        let adopted = launcher
            .sandbox()
            .adopt_fork(self.process.pid(), ns_pid, spec.manifest.memory)
            .await
            .map_err(|e| e.to_string())?;
        let process = ProcessHandle::adopted(adopted);
        let logs = LogCollector::new(launcher.config().log_limits);
        for (stream, fd) in [(LogStream::Stdout, OwnedFd::from(out_read)), (LogStream::Stderr, OwnedFd::from(err_read))]
        {
            let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd).map_err(|e| io("log pipe", e))?;
            logs.spawn_reader(stream, pipe);
        }
        ours.set_nonblocking(true).map_err(|e| io("socket", e))?;
        let (read, write) = UnixStream::from_std(ours).map_err(|e| io("socket", e))?.into_split();
        let mut booting = Booting { process, reader: BufReader::with_capacity(64 << 10, read), write, logs };
        let ready_by = deadline.min(Instant::now() + FORK_REPLY);
        booting.first_frame("ready", ready_by).await.map_err(|e| format!("the fork did not start: {e}"))?;
        Ok(booting.into_instance(launcher.config().max_response_bytes, true))
    }

    fn idle_since(&self) -> Instant {
        *self.used.lock()
    }
}

impl Drop for Template {
    fn drop(&mut self) {
        self.process.kill();
    }
}

enum Slot {
    /// A cold start happened then, too fast to call for a template; a
    /// second one within [`TEMPLATE_IDLE`] does.
    Seen(Instant),
    Starting,
    Ready(Arc<Template>),
    /// The revision gets none: its import left threads or connections, or
    /// its template failed to start or to fork (its code never changes).
    Refused,
}

impl Slot {
    /// The template, if this slot holds one that still runs.
    fn live(&self) -> Option<&Arc<Template>> {
        match self {
            Self::Ready(t) if !t.process.has_exited() => Some(t),
            _ => None,
        }
    }
}

/// Every revision's template, by revision id.
#[derive(Default)]
pub(crate) struct Templates {
    slots: Mutex<HashMap<u64, Slot>>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Templates({})", self.ready())
    }
}

impl Templates {
    pub(crate) fn get(&self, revision_id: u64) -> Option<Arc<Template>> {
        self.slots.lock().get(&revision_id).and_then(Slot::live).cloned()
    }

    /// Gives up on `template` (a fork failed) and on templates for its
    /// revision: a template runs the function's code, and one that failed
    /// once may have lied; every cold start must not pay for a new try.
    pub(crate) fn discard(&self, revision_id: u64, template: &Arc<Template>) {
        let mut slots = self.slots.lock();
        if matches!(slots.get(&revision_id), Some(Slot::Ready(t)) if Arc::ptr_eq(t, template)) {
            slots.insert(revision_id, Slot::Refused);
        }
    }

    /// After a cold start of `spec` whose import took `took`: starts its
    /// template in the background if it has none yet and the import was
    /// slow or the revision is back from zero within [`TEMPLATE_IDLE`].
    pub(crate) fn consider(&self, launcher: &Launcher, spec: &InstanceSpec, took: Duration) {
        let Some(after) = launcher.config().template_after else { return };
        let now = Instant::now();
        {
            let mut slots = self.slots.lock();
            let slot = slots.get(&spec.revision_id);
            if slot.and_then(Slot::live).is_some() {
                return;
            }
            let back_soon = match slot {
                Some(Slot::Starting | Slot::Refused) => return,
                Some(Slot::Seen(at)) => now.duration_since(*at) < TEMPLATE_IDLE,
                _ => false,
            };
            if took < after && !back_soon {
                slots.insert(spec.revision_id, Slot::Seen(now));
                return;
            }
            slots.insert(spec.revision_id, Slot::Starting);
        }
        let (launcher, spec) = (launcher.clone(), spec.clone());
        tokio::spawn(async move {
            let started = Template::start(&launcher, &spec).await;
            let templates = &launcher.templates;
            let mut slots = templates.slots.lock();
            // No longer starting: the revision stopped being served meanwhile.
            if !matches!(slots.get(&spec.revision_id), Some(Slot::Starting)) {
                return;
            }
            match started {
                Ok(template) => {
                    tracing::info!(function = %spec.function, revision = spec.revision, "fork template ready");
                    let template = Arc::new(template);
                    template.refill(&launcher, &spec);
                    slots.insert(spec.revision_id, Slot::Ready(template));
                }
                Err(StartError::Init { error, .. }) => {
                    tracing::info!(function = %spec.function, revision = spec.revision, why = %error.message,
                        "no fork template for this revision; its cold starts import the handler");
                    slots.insert(spec.revision_id, Slot::Refused);
                }
                Err(e) => {
                    // Not retried: the template's first frame is the function's
                    // process speaking, and it may be the cause.
                    tracing::warn!(function = %spec.function, error = %e, "fork template did not start");
                    slots.insert(spec.revision_id, Slot::Refused);
                }
            }
        });
    }

    /// Keeps the templates of `served` revisions used within
    /// [`TEMPLATE_IDLE`]; the rest stop once their forks have (a fork
    /// holds its template: it shares the template's sandbox).
    pub(crate) fn keep(&self, served: &HashSet<u64>, now: Instant) {
        self.slots.lock().retain(|id, slot| {
            served.contains(id)
                && match slot {
                    Slot::Ready(t) => !t.process.has_exited() && now.duration_since(t.idle_since()) < TEMPLATE_IDLE,
                    Slot::Seen(at) => now.duration_since(*at) < TEMPLATE_IDLE,
                    Slot::Starting | Slot::Refused => true,
                }
        });
    }

    pub(crate) fn stop_all(&self) {
        self.slots.lock().clear();
    }

    /// Templates ready to fork.
    pub(crate) fn ready(&self) -> usize {
        self.slots.lock().values().filter(|s| s.live().is_some()).count()
    }
}
