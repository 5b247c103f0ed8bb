//! exec instances: the classic watchdog contract. One process per request,
//! the request body on stdin, stdout is the response, stderr the logs, a
//! non-zero exit a function error.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use flick_core::LogStream;
use flick_sandbox::{ProcessSpec, Spawned};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStderr, ChildStdin, ChildStdout};

use crate::handle::ProcessHandle;
use crate::logs::LogCollector;
use crate::{Failure, FunctionError, InstanceSpec, Invoked, Launcher, Response, StartError, command_line};

/// A started exec sandbox: its process, taken over and reaped, and the
/// pipes a request speaks through. A prewarmed one still waits for its
/// program on `go`.
pub(crate) struct Started {
    pub process: ProcessHandle,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
    pub go: Option<OwnedFd>,
}

impl Started {
    pub fn new(mut spawned: Spawned) -> Self {
        let stdin = spawned.child.stdin.take();
        let stdout = spawned.child.stdout.take();
        let stderr = spawned.child.stderr.take();
        let go = spawned.go.take();
        Self { process: ProcessHandle::new(spawned), stdin, stdout, stderr, go }
    }
}

pub struct ExecInstance {
    launcher: Launcher,
    spec: InstanceSpec,
    program: PathBuf,
    args: Vec<OsString>,
    base_env: Vec<(String, String)>,
    stopped: Arc<AtomicBool>,
}

impl ExecInstance {
    /// Nothing runs until a request arrives; the handler is checked now so
    /// a bad command line fails the first call clearly.
    pub fn new(launcher: &Launcher, spec: &InstanceSpec) -> Result<Self, StartError> {
        let (program, args) = command_line(&spec.manifest.handler, &launcher.sandbox().code_path(&spec.code_dir))?;
        Ok(Self {
            launcher: launcher.clone(),
            spec: spec.clone(),
            program,
            args,
            base_env: launcher.env(spec),
            stopped: Arc::new(AtomicBool::new(false)),
        })
    }

    pub async fn invoke(&self, req: crate::Request) -> Invoked {
        if self.stopped.load(Ordering::SeqCst) {
            return Invoked {
                outcome: Err(Failure::NotDelivered("instance is stopped".into())),
                logs: Default::default(),
                reusable: false,
                prewarmed: false,
                usage: None,
            };
        }
        let mut env = self.base_env.clone();
        // The request as of-watchdog presents it to a forked process.
        env.push(("Http_Method".into(), req.method.clone()));
        env.push(("Http_Path".into(), req.path.clone()));
        env.push(("Http_Query".into(), req.query.clone()));
        for (name, value) in &req.headers {
            let key: String = name
                .split('-')
                .map(|w| {
                    let mut c = w.chars();
                    c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join("_");
            // The request line alone says what Http_Method, Http_Path and
            // Http_Query are: a header named `Path` must not redefine them.
            if ["Method", "Path", "Query"].iter().any(|r| r.eq_ignore_ascii_case(&key)) {
                continue;
            }
            env.push((format!("Http_{key}"), value.clone()));
        }
        let stem = self.launcher.exec_stem(&self.spec, &self.program, &self.args, &env).await;
        let prewarmed = stem.is_some();
        let started = match stem {
            Some(cell) => Ok(cell),
            None => self
                .launcher
                .sandbox()
                .spawn(ProcessSpec {
                    program: self.program.clone(),
                    args: self.args.clone(),
                    env,
                    code_dir: Some(self.spec.code_dir.clone()),
                    limits: self.launcher.limits(&self.spec),
                    protocol_fd: None,
                    stdin: true,
                    report_exit: true,
                    wait_for_program: false,
                })
                .await
                .map(Started::new),
        };
        let Started { process, mut stdin, mut stdout, stderr, go: _ } = match started {
            Ok(c) => c,
            Err(e) => {
                // Nothing ran: this instance holds no state to lose, so it
                // stays usable whoever's fault the failed start was. The
                // program never started, so it certainly never got the
                // request: a platform fault (no pids, no memory for the
                // sandbox, a cgroup that would not take it) may be retried
                // once; a handler that cannot run is the function's error.
                let outcome = match crate::spawn_failure(&self.spec.manifest.handler, e) {
                    Ok(error) => Failure::Function(error),
                    Err(platform) => Failure::NotDelivered(platform),
                };
                return Invoked {
                    outcome: Err(outcome),
                    logs: Default::default(),
                    reusable: true,
                    prewarmed: false,
                    usage: None,
                };
            }
        };
        let logs = LogCollector::new(self.launcher.config().log_limits);
        logs.begin(&req.id, req.log_sink.clone());
        if let Some(err) = stderr {
            logs.spawn_reader(LogStream::Stderr, err);
        }
        let max = self.launcher.config().max_response_bytes;
        let body = req.body.clone();
        let feed = async move {
            if let Some(stdin) = stdin.as_mut() {
                // A process that does not read its input is fine: ignore EPIPE.
                let _ = stdin.write_all(&body).await;
            }
            drop(stdin);
        };
        let collect = async move {
            let mut out = Vec::new();
            if let Some(stdout) = stdout.as_mut() {
                // Read one byte past the cap to know it was exceeded.
                stdout.take(max as u64 + 1).read_to_end(&mut out).await?;
            }
            Ok::<_, std::io::Error>(out)
        };
        let run = async {
            let (_, out) = tokio::join!(feed, collect);
            out
        };
        let outcome = match tokio::time::timeout_at(req.deadline, run).await {
            Err(_) => {
                process.kill();
                Err(Failure::Timeout)
            }
            Ok(Err(e)) => Err(Failure::Platform(format!("reading the function's stdout: {e}"))),
            Ok(Ok(out)) if out.len() > max => {
                process.kill();
                Err(Failure::Function(FunctionError {
                    kind: "Function.ResponseSizeTooLarge".into(),
                    message: format!("the function wrote more than {max} bytes to stdout"),
                    trace: vec![],
                }))
            }
            Ok(Ok(out)) => {
                // stdout closed; the exit follows at once unless the process
                // closed it early and kept running, which the deadline bounds.
                let wait = req.deadline.saturating_duration_since(tokio::time::Instant::now());
                match process.exit(wait).await {
                    None => {
                        process.kill();
                        Err(Failure::Timeout)
                    }
                    Some(exit) if exit.oom => Err(Failure::OutOfMemory),
                    Some(exit) if exit.success() => Ok(Response {
                        status: 200,
                        headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
                        body: Bytes::from(out),
                    }),
                    Some(exit) => Err(Failure::Function(FunctionError {
                        kind: "Runtime.ExitError".into(),
                        message: format!("`{}` {exit}", self.spec.manifest.handler),
                        trace: vec![],
                    })),
                }
            }
        };
        // Only now, with the program done, start the next sandbox (see
        // `Launcher::exec_stem`).
        self.launcher.refill_exec(self.spec.manifest.network);
        let captured = logs.finish(&req.id, true, Duration::from_millis(200)).await;
        // The process has exited (or was killed): its cgroup used this much,
        // all of it for this call.
        let usage = process.usage_total();
        Invoked { outcome, logs: captured, reusable: true, prewarmed, usage }
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}
