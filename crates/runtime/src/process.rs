//! python3 and node instances: a bootstrap process that imports the user's
//! code once, then serves invocations over the frame protocol on fd 3.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flick_core::{LogStream, RuntimeKind};
use flick_sandbox::ProcessSpec;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::handle::ProcessHandle;
use crate::logs::LogCollector;
use crate::protocol::{self, Frame, FrameError, InvokeHeader};
use crate::{Failure, FunctionError, InstanceSpec, Invoked, Launcher, Request, Response, StartError};

/// How long to wait, after a response, for the end markers on stdout/stderr.
const MARKER_GRACE: Duration = Duration::from_millis(200);

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Frame>>>>;

pub struct ProcessInstance {
    process: ProcessHandle,
    to_instance: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    logs: LogCollector,
    alive: Arc<AtomicBool>,
    /// Why the protocol channel broke, when it did.
    broken: Arc<Mutex<Option<FrameError>>>,
}

impl ProcessInstance {
    pub async fn start(launcher: &Launcher, spec: &InstanceSpec, deadline: Instant) -> Result<Self, StartError> {
        let cfg = launcher.config();
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(|e| StartError::Platform(format!("socketpair: {e}")))?;
        ours.set_nonblocking(true).map_err(|e| StartError::Platform(e.to_string()))?;
        let ours = UnixStream::from_std(ours).map_err(|e| StartError::Platform(e.to_string()))?;

        let bootstrap = launcher.bootstrap_path(spec.manifest.runtime);
        let (program, mut args) = match spec.manifest.runtime {
            // -I: no user site-packages, no PYTHON* variables from anywhere.
            RuntimeKind::Python3 => (cfg.python.clone(), vec!["-I".into()]),
            _ => (cfg.node.clone(), vec![]),
        };
        args.push(bootstrap.into_os_string());
        let mut child = launcher
            .sandbox()
            .spawn(ProcessSpec {
                program,
                args,
                env: launcher.env(spec),
                code_dir: spec.code_dir.clone(),
                limits: launcher.limits(spec),
                protocol_fd: Some(OwnedFd::from(theirs)),
                stdin: false,
            })
            .map_err(|e| StartError::Platform(e.to_string()))?;

        let logs = LogCollector::new(cfg.log_limits);
        if let Some(out) = child.child.stdout.take() {
            logs.spawn_reader(LogStream::Stdout, out);
        }
        if let Some(err) = child.child.stderr.take() {
            logs.spawn_reader(LogStream::Stderr, err);
        }
        let process = ProcessHandle::new(child);
        let (read, mut write) = ours.into_split();
        let mut reader = BufReader::with_capacity(64 << 10, read);

        let first = tokio::time::timeout_at(deadline, protocol::read_frame(&mut reader, 64 << 10)).await;
        let failed_start = |error: FunctionError| async {
            // Let the streams drain so the traceback is in the logs.
            process.exit(Duration::from_secs(1)).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            StartError::Init { error, logs: logs.take_idle() }
        };
        match first {
            Err(_) => {
                process.kill();
                return Err(StartError::Timeout { logs: logs.take_idle() });
            }
            Ok(Ok(frame)) if frame.header.kind == "ready" => {}
            Ok(Ok(frame)) if frame.header.kind == "init_error" => {
                let error = frame.header.error.unwrap_or_else(|| FunctionError {
                    kind: "Runtime.InitError".into(),
                    message: "the handler failed to initialise".into(),
                    trace: vec![],
                });
                return Err(failed_start(error).await);
            }
            Ok(Ok(frame)) => {
                process.kill();
                return Err(StartError::Platform(format!("bootstrap sent `{}` before `ready`", frame.header.kind)));
            }
            Ok(Err(FrameError::Eof)) => {
                let how = match process.exit(Duration::from_secs(1)).await {
                    Some(exit) => exit.to_string(),
                    None => "exited".into(),
                };
                let error = FunctionError {
                    kind: "Runtime.ExitError".into(),
                    message: format!("instance {how} before it was ready"),
                    trace: vec![],
                };
                return Err(failed_start(error).await);
            }
            Ok(Err(e)) => {
                process.kill();
                return Err(StartError::Platform(e.to_string()));
            }
        }

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
        tokio::spawn(read_responses(reader, cfg.max_response_bytes, pending.clone(), alive.clone(), broken.clone()));
        Ok(Self { process, to_instance, pending, logs, alive, broken })
    }

    pub async fn invoke(&self, req: Request) -> Invoked {
        if !self.alive.load(Ordering::SeqCst) {
            return Invoked {
                outcome: Err(Failure::Platform("instance is no longer running".into())),
                logs: Default::default(),
                reusable: false,
            };
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(req.id.clone(), tx);
        self.logs.begin(&req.id);
        let header = InvokeHeader {
            kind: "invoke",
            id: &req.id,
            deadline_ms: req.deadline_ms,
            method: &req.method,
            path: &req.path,
            query: &req.query,
            headers: &req.headers,
            len: req.body.len(),
        };
        let _ = self.to_instance.send(protocol::encode_invoke(&header, &req.body));

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
                Invoked { outcome, logs, reusable: true }
            }
            Ok(Err(_)) => {
                // The channel broke: the process died or spoke garbage.
                let how = self.process.exit(Duration::from_millis(500)).await;
                let logs = self.logs.finish(&req.id, true, MARKER_GRACE).await;
                let broken = self.broken.lock().unwrap().take();
                let outcome = match (broken, how) {
                    (Some(e @ FrameError::TooLarge { .. }), _) => Err(Failure::Function(FunctionError {
                        kind: "Function.ResponseSizeTooLarge".into(),
                        message: e.to_string(),
                        trace: vec![],
                    })),
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
                Invoked { outcome, logs, reusable: false }
            }
            Err(_) => {
                self.pending.lock().unwrap().remove(&req.id);
                // A handler past its deadline is stuck or busy; it cannot be
                // trusted with the next request.
                self.stop();
                let logs = self.logs.finish(&req.id, false, Duration::ZERO).await;
                Invoked { outcome: Err(Failure::Timeout), logs, reusable: false }
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
                let waiter = pending.lock().unwrap().remove(&frame.header.id);
                // No waiter: that invocation timed out already; drop the answer.
                if let Some(waiter) = waiter {
                    let _ = waiter.send(frame);
                }
            }
            Err(e) => {
                alive.store(false, Ordering::SeqCst);
                *broken.lock().unwrap() = Some(e);
                // Dropping the senders wakes every waiting invocation.
                pending.lock().unwrap().clear();
                return;
            }
        }
    }
}
