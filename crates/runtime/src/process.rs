//! python3 and node instances: a bootstrap process that imports the user's
//! code once, then serves invocations over the frame protocol on fd 3.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use flick_core::{Manifest, RuntimeKind};
use flick_sandbox::ProcessSpec;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::handle::ProcessHandle;
use crate::logs::LogCollector;
use crate::protocol::{self, Frame, FrameError, InvokeHeader};
use crate::{Failure, FunctionError, InstanceSpec, Invoked, Launcher, Request, Response, StartError};

/// How long to wait, after a response, for the end markers on stdout/stderr.
const MARKER_GRACE: Duration = Duration::from_millis(200);
/// Memory limit of a stem cell until it takes on a function's own.
const STEM_MEMORY: u64 = 512 << 20;

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Frame>>>>;

pub struct ProcessInstance {
    process: ProcessHandle,
    to_instance: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    logs: LogCollector,
    alive: Arc<AtomicBool>,
    /// Why the protocol channel broke, when it did.
    broken: Arc<Mutex<Option<FrameError>>>,
    prewarmed: bool,
    /// The template this instance was forked from: pid 1 of the sandbox
    /// it shares, so it must outlive the instance.
    template: Option<Arc<crate::template::Template>>,
    /// How long the bootstrap took to import the handler, as it said.
    import_time: Option<Duration>,
}

/// A bootstrap process that has been spawned but has not said `ready` yet.
pub(crate) struct Booting {
    pub(crate) process: ProcessHandle,
    pub(crate) reader: BufReader<OwnedReadHalf>,
    pub(crate) write: OwnedWriteHalf,
    pub(crate) logs: LogCollector,
}

/// Starts a bootstrap process for `runtime`. `code_dir: None` starts a
/// stem cell, whose code is attached later.
pub(crate) async fn spawn_bootstrap(
    launcher: &Launcher,
    runtime: RuntimeKind,
    code_dir: Option<std::path::PathBuf>,
    env: Vec<(String, String)>,
    limits: flick_sandbox::Limits,
) -> Result<Booting, StartError> {
    let cfg = launcher.config();
    let (ours, theirs) =
        std::os::unix::net::UnixStream::pair().map_err(|e| StartError::Platform(format!("socketpair: {e}")))?;
    ours.set_nonblocking(true).map_err(|e| StartError::Platform(e.to_string()))?;
    let ours = UnixStream::from_std(ours).map_err(|e| StartError::Platform(e.to_string()))?;
    let bootstrap = launcher.bootstrap_path(runtime);
    let (program, mut args) = match runtime {
        // -I: no user site-packages, no PYTHON* variables from anywhere.
        // -S: no `site` at start-up, whose `.pth` hooks run whatever the
        // host's site-packages hold (here one imports certifi: 40 of a
        // start's 50 ms of CPU); the bootstrap puts site-packages on
        // sys.path itself, without running them.
        RuntimeKind::Python3 => (cfg.python.clone(), vec!["-I".into(), "-S".into()]),
        _ => (cfg.node.clone(), vec![]),
    };
    args.push(bootstrap.into_os_string());
    let mut spawned = launcher
        .sandbox()
        .spawn(ProcessSpec {
            program,
            args,
            env,
            code_dir,
            limits,
            protocol_fd: Some(OwnedFd::from(theirs)),
            stdin: false,
            report_exit: false,
            wait_for_program: false,
        })
        .await
        .map_err(|e| StartError::Platform(e.to_string()))?;
    let logs = LogCollector::capture(cfg.log_limits, &mut spawned.child);
    let process = ProcessHandle::new(spawned);
    let (read, write) = ours.into_split();
    Ok(Booting { process, reader: BufReader::with_capacity(64 << 10, read), write, logs })
}

impl Booting {
    /// Waits for the first frame; anything but `expected` (or a clean
    /// `init_error`) ends the start.
    pub(crate) async fn first_frame(
        &mut self,
        expected: &str,
        deadline: Instant,
    ) -> Result<protocol::Header, StartError> {
        let first = tokio::time::timeout_at(deadline, protocol::read_frame(&mut self.reader, 64 << 10)).await;
        match first {
            Err(_) => {
                self.process.kill();
                Err(StartError::Timeout { logs: self.logs.take_idle() })
            }
            Ok(Ok(frame)) if frame.header.kind == expected => Ok(frame.header),
            Ok(Ok(frame)) if frame.header.kind == "init_error" => {
                let error = frame.header.error.unwrap_or_else(|| FunctionError {
                    kind: "Runtime.InitError".into(),
                    message: "the handler failed to initialise".into(),
                    trace: vec![],
                });
                Err(self.failed_start(error).await)
            }
            Ok(Ok(frame)) => {
                self.process.kill();
                Err(StartError::Platform(format!("bootstrap sent `{}` before `{expected}`", frame.header.kind)))
            }
            Ok(Err(FrameError::Eof)) => {
                let how = match self.process.exit(Duration::from_secs(1)).await {
                    Some(exit) => exit.to_string(),
                    None => "exited".into(),
                };
                let error = FunctionError {
                    kind: "Runtime.ExitError".into(),
                    message: format!("instance {how} before it was ready"),
                    trace: vec![],
                };
                Err(self.failed_start(error).await)
            }
            Ok(Err(e)) => {
                self.process.kill();
                Err(StartError::Platform(e.to_string()))
            }
        }
    }

    async fn failed_start(&self, error: FunctionError) -> StartError {
        // Let the streams drain so the traceback is in the logs.
        self.process.exit(Duration::from_secs(1)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        StartError::Init { error, logs: self.logs.take_idle() }
    }

    /// The bootstrap said `ready`: from now on it serves invocations.
    pub(crate) fn into_instance(self, max_response: usize, prewarmed: bool) -> ProcessInstance {
        let Booting { process, reader, mut write, logs } = self;
        let (to_instance, mut outbox) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            while let Some(frame) = outbox.recv().await {
                if write.write_all(&frame).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let broken = Arc::new(Mutex::new(None));
        tokio::spawn(read_responses(reader, max_response, pending.clone(), alive.clone(), broken.clone()));
        ProcessInstance {
            process,
            to_instance,
            pending,
            logs,
            alive,
            broken,
            prewarmed,
            template: None,
            import_time: None,
        }
    }
}

/// A prewarmed bootstrap: interpreter started, sandbox set up, no function
/// yet. Used once: specialising turns it into that function's instance for
/// good, so no state ever passes from one function to another.
pub struct Stem {
    booting: Booting,
}

/// Why a stem cell could not take on a function.
pub enum SpecialiseError {
    /// The stem cell is unusable (its process died, the code could not be
    /// attached): start an instance the ordinary way instead.
    Unusable(String),
    /// The function itself failed to start (import error, timeout).
    Start(StartError),
}

impl Stem {
    /// Starts a stem cell for `runtime` and waits until it is ready to specialise.
    pub async fn start(
        launcher: &Launcher,
        runtime: RuntimeKind,
        network: flick_sandbox::Network,
    ) -> Result<Self, StartError> {
        let limits = flick_sandbox::Limits {
            memory: STEM_MEMORY,
            tmp_size: Manifest::DEFAULT_TMP_SIZE,
            network,
            // The bootstrap switches to the function's uid when specialised.
            identity: flick_sandbox::Identity::Deferred,
        };
        // "setuid": the bootstrap must be given a uid to switch to, and must
        // check that the switch left it without any capability.
        let mode = if launcher.sandbox().is_isolated() { "setuid" } else { "1" };
        let env = vec![("FLICK_STEM".to_string(), mode.to_string())];
        let mut booting = spawn_bootstrap(launcher, runtime, None, env, limits).await?;
        booting.first_frame("stem_ready", Instant::now() + Duration::from_secs(30)).await?;
        Ok(Self { booting })
    }

    /// The stem cell's process (to watch while it waits).
    pub fn process(&self) -> &ProcessHandle {
        &self.booting.process
    }

    /// Attaches `spec`'s code, applies its memory limit and environment, and
    /// waits for the function to be ready.
    pub async fn specialise(
        self,
        launcher: &Launcher,
        spec: &InstanceSpec,
        deadline: Instant,
    ) -> Result<ProcessInstance, SpecialiseError> {
        let mut booting = self.booting;
        let process = &booting.process;
        if process.exit(Duration::ZERO).await.is_some() {
            return Err(SpecialiseError::Unusable("stem cell exited".into()));
        }
        let unusable = |what: &str, e: std::io::Error| {
            process.kill();
            SpecialiseError::Unusable(format!("{what}: {e}"))
        };
        // An isolated stem is uid 0 with CAP_SETUID/CAP_SETGID until its
        // bootstrap switches to these; it refuses to run a function without
        // them, and so does this side. Every identity names a uid, the
        // shared one (a function past the end of the uid range) included.
        let credentials = launcher.sandbox().credentials(launcher.limits(spec).identity);
        if credentials.is_none() && launcher.sandbox().is_isolated() {
            process.kill();
            return Err(SpecialiseError::Unusable("no uid to give the stem cell".into()));
        }
        launcher
            .sandbox()
            .attach_code(process.pid(), &spec.code_dir)
            .await
            .map_err(|e| unusable("attaching code", e))?;
        process.set_memory(spec.manifest.memory).map_err(|e| unusable("setting the memory limit", e))?;
        let env: serde_json::Map<String, serde_json::Value> =
            launcher.env(spec).into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
        let mut frame = serde_json::json!({ "type": "specialise", "env": env, "len": 0 });
        if let Some((uid, gid)) = credentials {
            frame["uid"] = uid.into();
            frame["gid"] = gid.into();
        }
        let mut bytes = serde_json::to_vec(&frame).unwrap_or_default();
        bytes.push(b'\n');
        booting.write.write_all(&bytes).await.map_err(|e| unusable("sending specialise", e))?;
        let ready = booting.first_frame("ready", deadline).await.map_err(SpecialiseError::Start)?;
        Ok(booting.into_instance(launcher.config().max_response_bytes, true).imported_in(&ready))
    }
}

impl ProcessInstance {
    pub async fn start(launcher: &Launcher, spec: &InstanceSpec, deadline: Instant) -> Result<Self, StartError> {
        let mut booting = spawn_bootstrap(
            launcher,
            spec.manifest.runtime,
            Some(spec.code_dir.clone()),
            launcher.env(spec),
            launcher.limits(spec),
        )
        .await?;
        let ready = booting.first_frame("ready", deadline).await?;
        Ok(booting.into_instance(launcher.config().max_response_bytes, false).imported_in(&ready))
    }

    fn imported_in(mut self, ready: &protocol::Header) -> Self {
        // From the bootstrap, so from the function's process: any number.
        self.import_time = ready.import_s.and_then(|s| Duration::try_from_secs_f64(s).ok());
        self
    }

    /// How long the handler's import took (not for forks: they import nothing).
    pub(crate) fn import_time(&self) -> Option<Duration> {
        self.import_time
    }

    /// Whether it can still take calls (it may have died while waiting).
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst) && !self.process.has_exited()
    }

    /// Ties a forked instance to its template, which must outlive it.
    pub(crate) fn hold(&mut self, template: Arc<crate::template::Template>) {
        self.template = Some(template);
    }

    /// This instance was a stem cell before it took on its function.
    pub fn prewarmed(&self) -> bool {
        self.prewarmed
    }

    pub(crate) fn process(&self) -> &ProcessHandle {
        &self.process
    }

    pub async fn invoke(&self, req: Request) -> Invoked {
        // Dead before anything was sent (it crashed or was killed while
        // idle): the caller may run this request elsewhere.
        if !self.alive.load(Ordering::SeqCst) || self.process.has_exited() {
            self.stop();
            return Invoked {
                outcome: Err(Failure::NotDelivered("instance is no longer running".into())),
                logs: Default::default(),
                reusable: false,
                prewarmed: false,
                usage: None,
            };
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(req.id.clone(), tx);
        self.logs.begin(&req.id, req.log_sink.clone());
        let header = InvokeHeader {
            kind: "invoke",
            id: &req.id,
            deadline_ms: req.deadline_ms,
            method: &req.method,
            path: &req.path,
            raw_path: &req.raw_path,
            query: &req.query,
            headers: &req.headers,
            presentation: req.presentation.as_str(),
            client_context: req.client_context.as_deref(),
            traceparent: req.traceparent.as_deref(),
            tracestate: req.tracestate.as_deref(),
            len: req.body.len(),
        };
        if self.to_instance.send(protocol::encode_invoke(&header, &req.body)).is_err() {
            // The writer is gone: nothing of this request was written.
            self.pending.lock().remove(&req.id);
            let logs = self.logs.finish(&req.id, false, Duration::ZERO).await;
            self.stop();
            return Invoked {
                outcome: Err(Failure::NotDelivered("instance's protocol channel is closed".into())),
                logs,
                reusable: false,
                prewarmed: false,
                usage: None,
            };
        }

        match tokio::time::timeout_at(req.deadline, rx).await {
            Ok(Ok(frame)) => {
                let logs = self.logs.finish(&req.id, true, MARKER_GRACE).await;
                let outcome = match frame.header.kind.as_str() {
                    "result" => Ok(Response {
                        status: frame.header.status.unwrap_or(200),
                        headers: frame.header.headers,
                        body: frame.body,
                    }),
                    _ => Err(Failure::Function(frame.header.error.unwrap_or_else(|| FunctionError {
                        kind: "Runtime.Unknown".into(),
                        message: "the function failed without saying why".into(),
                        trace: vec![],
                    }))),
                };
                Invoked { outcome, logs, reusable: true, prewarmed: false, usage: None }
            }
            Ok(Err(_)) => {
                // The channel broke: the process died or spoke garbage.
                let how = self.process.exit(Duration::from_millis(500)).await;
                let logs = self.logs.finish(&req.id, true, MARKER_GRACE).await;
                let broken = self.broken.lock().take();
                let outcome = match (broken, how) {
                    (Some(FrameError::Malformed(m)), _) => Err(Failure::Platform(m)),
                    (_, Some(exit)) if exit.oom => Err(Failure::OutOfMemory),
                    (_, Some(how)) => Err(Failure::Function(FunctionError {
                        kind: "Runtime.ExitError".into(),
                        message: format!("instance {how} during the invocation"),
                        trace: vec![],
                    })),
                    (_, None) => Err(Failure::Platform("instance closed its protocol channel".into())),
                };
                self.stop();
                Invoked { outcome, logs, reusable: false, prewarmed: false, usage: None }
            }
            Err(_) => {
                self.pending.lock().remove(&req.id);
                // A handler past its deadline is stuck or busy; it cannot be
                // trusted with the next request.
                self.stop();
                let logs = self.logs.finish(&req.id, false, Duration::ZERO).await;
                Invoked { outcome: Err(Failure::Timeout), logs, reusable: false, prewarmed: false, usage: None }
            }
        }
    }

    pub fn stop(&self) {
        self.alive.store(false, Ordering::SeqCst);
        self.process.kill();
    }
}

async fn read_responses(
    mut reader: BufReader<OwnedReadHalf>,
    max_body: usize,
    pending: Pending,
    alive: Arc<AtomicBool>,
    broken: Arc<Mutex<Option<FrameError>>>,
) {
    loop {
        match protocol::read_frame(&mut reader, max_body).await {
            Ok(frame) => {
                let waiter = pending.lock().remove(&frame.header.id);
                // No waiter: that invocation timed out already; drop the answer.
                if let Some(waiter) = waiter {
                    let _ = waiter.send(frame);
                }
            }
            // Only that invocation fails; the channel is still in step.
            Err(FrameError::Refused { id, reason }) => {
                let waiter = pending.lock().remove(&id);
                if let Some(waiter) = waiter {
                    let error =
                        FunctionError { kind: "Function.ResponseSizeTooLarge".into(), message: reason, trace: vec![] };
                    let header = protocol::Header::error(id, error);
                    let _ = waiter.send(Frame { header, body: Default::default() });
                }
            }
            Err(e) => {
                alive.store(false, Ordering::SeqCst);
                *broken.lock() = Some(e);
                // Dropping the senders wakes every waiting invocation.
                pending.lock().clear();
                return;
            }
        }
    }
}
