//! Instances of functions: starting them, speaking to them, capturing their logs.
//!
//! # Layout
//! - [`Launcher`] turns an [`InstanceSpec`] into a running, ready [`Instance`];
//! - `process`: python3 and node instances, a bootstrap process that imports
//!   the user's code once and serves many invocations over [`protocol`];
//! - `exec`: one process per request, body on stdin, response on stdout;
//! - `http`: a long-lived HTTP server on `$PORT`, requests proxied to it;
//! - `runtime_api`: the Lambda Runtime API served to a long-lived program
//!   (runtime `provided`'s `bootstrap`, AWS's runtime interface clients);
//! - [`logs`]: stdout/stderr lines attributed to the invocation that wrote them;
//! - `bootstrap`: the language bootstraps shipped inside the binary.
//!
//! An instance never decides how many requests it gets or when it stops:
//! that is the scheduler's job. It only runs what it is handed and says
//! whether it is still usable afterwards.

mod bootstrap;
mod exec;
mod handle;
mod http;
pub mod logs;
mod prewarm;
mod process;
pub mod protocol;
mod runtime_api;
mod template;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use flick_core::{Manifest, Presentation, RuntimeKind};
use flick_sandbox::Sandbox;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

pub use flick_sandbox::Usage;
pub use logs::{Captured, LogLimits, LogSink};
pub use prewarm::StemCount;

/// Settings of the runtime layer, from flick's config.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// The real Python interpreter (not a pyenv shim: that costs ~200 ms a start).
    pub python: PathBuf,
    pub node: PathBuf,
    /// Where the embedded bootstraps are written at start-up.
    pub bootstrap_dir: PathBuf,
    pub log_limits: LogLimits,
    /// Largest response body an instance may return.
    pub max_response_bytes: usize,
    /// Stem cells kept ready per runtime (python3, node, exec) and network
    /// kind that a served function uses (more for a while after a burst);
    /// 0 disables prewarming.
    pub stem_cells: u32,
    /// A python3 cold start whose handler import took at least this long
    /// leaves a fork template behind (`template`); `None`: never.
    pub template_after: Option<std::time::Duration>,
    /// `http` functions may use `network = "host"`: their server listens on
    /// the host's network, where anyone who can reach the port bypasses
    /// flick's authentication. Off unless the operator says so.
    pub allow_host_network_http: bool,
    /// Region and account of functions' ARNs (`[lambda]` in flick's config).
    pub lambda: flick_core::LambdaIdentity,
}

/// The version Lambda-style code is told it runs (`AWS_LAMBDA_FUNCTION_VERSION`):
/// flick's revisions are not Lambda's published versions, and the Lambda API
/// reports every function's code as `$LATEST`; the revision number is in
/// `FLICK_FUNCTION_REVISION`.
pub const LAMBDA_VERSION: &str = "$LATEST";

/// Everything needed to start an instance of one revision.
#[derive(Clone, Debug)]
pub struct InstanceSpec {
    pub function: String,
    /// The revision's number, as the function sees it (`FLICK_FUNCTION_REVISION`).
    pub revision: u32,
    /// The revision's unique id (see `flick_core::Revision::id`).
    pub revision_id: u64,
    pub manifest: Arc<Manifest>,
    pub code_dir: PathBuf,
}

/// One invocation as an instance sees it.
#[derive(Clone, Debug)]
pub struct Request {
    pub id: String,
    pub method: String,
    /// The sub-path after `/fn/{name}`, always starting with `/`,
    /// percent-decoded (what python3/node/exec functions are shown).
    pub path: String,
    /// The same sub-path exactly as the caller sent it, still
    /// percent-encoded: what the http runtime forwards.
    pub raw_path: String,
    /// The query string as sent (still encoded), without the `?`.
    pub query: String,
    /// Lowercase names; repeated headers appear repeatedly.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub deadline: Instant,
    pub deadline_ms: i64,
    /// Whether the handler sees an HTTP request or the body as its event.
    pub presentation: Presentation,
    /// A Lambda caller's client context (base64 JSON), for `context.client_context`.
    pub client_context: Option<String>,
    /// The W3C trace context of the call (`00-<trace>-<flick's span>-<flags>`),
    /// for the handler's `context` (also among `headers`).
    pub traceparent: Option<String>,
    /// The caller's `tracestate`, when it sent a valid one.
    pub tracestate: Option<String>,
    /// Where its log lines go as they are read (live followers), if anywhere.
    pub log_sink: Option<LogSink>,
}

#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// An error the function itself raised (an exception, a non-zero exit, a
/// failed import), in the shape Lambda clients know.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionError {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub trace: Vec<String>,
}

/// Why an invocation did not produce a function's answer.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{}: {}", .0.kind, .0.message)]
    Function(FunctionError),
    #[error("timed out")]
    Timeout,
    #[error("ran out of memory")]
    OutOfMemory,
    #[error("{0}")]
    Platform(String),
    /// The caller's request cannot be handed to this function as it is
    /// (the function never saw it).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request provably never reached the function (the instance was
    /// already gone before it was sent): safe to run on another instance.
    #[error("{0}")]
    NotDelivered(String),
}

/// What an invocation returns: the outcome, its logs, and whether the
/// instance can take more work (a timed-out or crashed one cannot).
#[derive(Debug)]
pub struct Invoked {
    pub outcome: Result<Response, Failure>,
    pub logs: Captured,
    pub reusable: bool,
    /// The request ran in a prewarmed stem cell (exec: every request is a
    /// new process, and this one took a sandbox that was already set up).
    pub prewarmed: bool,
    /// What the instance's cgroup used for the call (see
    /// [`Instance::invoke`]); `None` without a cgroup or a counter.
    pub usage: Option<Usage>,
}

/// Why an instance could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The user's code failed while initialising (import error, server
    /// exited): a function error, reported on the invocation that waited.
    #[error("{}: {}", .error.kind, .error.message)]
    Init { error: FunctionError, logs: Captured },
    #[error("instance did not become ready before the deadline")]
    Timeout { logs: Captured },
    #[error("{0}")]
    Platform(String),
}

/// A running instance of one revision.
pub enum Instance {
    Process(process::ProcessInstance),
    Exec(exec::ExecInstance),
    Http(http::HttpInstance),
    /// Speaks the Lambda Runtime API (`provided`, `lambda_ric`).
    Api(runtime_api::ApiInstance),
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Process(_) => "Instance::Process",
            Self::Exec(_) => "Instance::Exec",
            Self::Http(_) => "Instance::Http",
            Self::Api(_) => "Instance::Api",
        })
    }
}

impl Instance {
    /// Runs one request. Concurrent calls are allowed up to the manifest's
    /// `concurrency`; the scheduler enforces that bound.
    ///
    /// The call's usage is read from the instance's cgroup: for exec, all
    /// its one-call process used; for long-lived instances, the CPU time
    /// the instance spent while the call ran and its memory peak since the
    /// call began (both the instance's, shared with overlapping calls
    /// when `concurrency` > 1).
    pub async fn invoke(&self, req: Request) -> Invoked {
        let (measuring, mut invoked) = match self {
            Self::Process(i) => (i.process().measure(), i.invoke(req).await),
            Self::Exec(i) => (None, i.invoke(req).await),
            Self::Http(i) => (i.process().measure(), i.invoke(req).await),
            Self::Api(i) => (i.process().measure(), i.invoke(req).await),
        };
        if let Some(m) = measuring {
            invoked.usage = Some(m.finish());
        }
        invoked
    }

    /// Whether the instance was a prewarmed stem cell before it took on its function.
    pub fn prewarmed(&self) -> bool {
        matches!(self, Self::Process(i) if i.prewarmed())
    }

    /// Stops the instance and everything it started; idempotent.
    pub fn stop(&self) {
        match self {
            Self::Process(i) => i.stop(),
            Self::Exec(i) => i.stop(),
            Self::Http(i) => i.stop(),
            Self::Api(i) => i.stop(),
        }
    }
}

/// Starts instances. Shared by all pools.
#[derive(Clone, Debug)]
pub struct Launcher {
    config: Arc<RuntimeConfig>,
    sandbox: Sandbox,
    stems: Arc<prewarm::StemPool>,
    host_ports: Arc<http::HostPorts>,
    /// The Python bootstrap's bytecode is there to run.
    python_compiled: bool,
    templates: Arc<template::Templates>,
}

impl Launcher {
    /// Writes the bootstraps to `config.bootstrap_dir` (and compiles the
    /// Python one: a blocking call of the interpreter, ~40 ms).
    pub fn new(config: RuntimeConfig, sandbox: Sandbox) -> std::io::Result<Self> {
        let compiled = bootstrap::install(&config.bootstrap_dir, &config.python, &sandbox.runtime_path())?;
        Ok(Self {
            config: Arc::new(config),
            sandbox,
            stems: prewarm::new_pool(),
            host_ports: Arc::default(),
            python_compiled: compiled,
            templates: Arc::default(),
        })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Whether this flick will run functions of `manifest` at all (checked
    /// at deploy, so a function it would refuse never gets a revision).
    pub fn admit(&self, manifest: &Manifest) -> Result<(), String> {
        if manifest.runtime == RuntimeKind::Http
            && manifest.network == flick_core::Network::Host
            && !self.config.allow_host_network_http
        {
            return Err(http::HOST_NETWORK_REFUSED.into());
        }
        Ok(())
    }

    /// Starts an instance and waits until it is ready to serve, at most
    /// until `deadline`. python3 and node instances come from a stem cell
    /// when one is ready (and the function keeps the default `/tmp` size,
    /// which stem cells are built with).
    pub async fn start(&self, spec: &InstanceSpec, deadline: Instant) -> Result<Instance, StartError> {
        let m = &spec.manifest;
        match m.runtime {
            RuntimeKind::Provided => runtime_api::ApiInstance::start(self, spec, deadline).await.map(Instance::Api),
            RuntimeKind::Python3 | RuntimeKind::Node if m.lambda_ric => {
                runtime_api::ApiInstance::start(self, spec, deadline).await.map(Instance::Api)
            }
            RuntimeKind::Python3 | RuntimeKind::Node => {
                if m.fork_template
                    && let Some(template) = self.templates.get(spec.revision_id)
                {
                    match template.instance(self, spec, deadline).await {
                        Ok(instance) => return Ok(Instance::Process(instance)),
                        Err(why) => {
                            tracing::warn!(function = %spec.function, %why, "fork template unusable; starting afresh");
                            self.templates.discard(spec.revision_id, &template);
                        }
                    }
                }
                let started = self.start_process(spec, deadline).await;
                if let Ok(instance) = &started
                    && m.runtime == RuntimeKind::Python3
                    && m.fork_template
                    && let Some(import) = instance.import_time()
                {
                    self.templates.consider(self, spec, import);
                }
                started.map(Instance::Process)
            }
            RuntimeKind::Exec => exec::ExecInstance::new(self, spec).map(Instance::Exec),
            RuntimeKind::Http => http::HttpInstance::start(self, spec, deadline).await.map(Instance::Http),
            // The platform runs a sequence's steps itself and never asks
            // its (empty) pool for an instance.
            RuntimeKind::Sequence => {
                Err(StartError::Platform(format!("`{}` is a sequence: it has no instances", spec.function)))
            }
        }
    }

    /// A python3 or node instance from a stem cell if one is ready (or
    /// about to be), otherwise started afresh.
    async fn start_process(
        &self,
        spec: &InstanceSpec,
        deadline: Instant,
    ) -> Result<process::ProcessInstance, StartError> {
        let m = &spec.manifest;
        if m.tmp_size == Manifest::DEFAULT_TMP_SIZE
            && let Some(stem) = self.take_stem_or_wait((m.runtime, m.network), deadline).await
        {
            // The replacement starts once this one is specialised,
            // or its start was dropped half-way.
            let refill = self.stems_refill_on_drop((m.runtime, m.network));
            let specialised = stem.specialise(self, spec, deadline).await;
            drop(refill);
            match specialised {
                Ok(instance) => return Ok(instance),
                Err(process::SpecialiseError::Start(e)) => return Err(e),
                Err(process::SpecialiseError::Unusable(why)) => {
                    tracing::warn!(function = %spec.function, %why, "stem cell unusable; starting afresh");
                }
            }
        }
        process::ProcessInstance::start(self, spec, deadline).await
    }

    /// Keeps the fork templates of `served` revisions (and only while
    /// used within [`template::TEMPLATE_IDLE`]); told on every reaper pass.
    pub fn keep_templates(&self, served: &std::collections::HashSet<u64>) {
        self.templates.keep(served, Instant::now());
    }

    /// Fork templates ready to make instances.
    pub fn fork_templates(&self) -> usize {
        self.templates.ready()
    }

    /// Stops the templates no instance was forked from (at shutdown).
    pub fn stop_templates(&self) {
        self.templates.stop_all();
    }

    /// The environment every instance of `spec` gets: the user's `[env]`,
    /// then what flick defines (which the user cannot override), including
    /// the Lambda variables that Lambda-style code reads.
    fn env(&self, spec: &InstanceSpec) -> Vec<(String, String)> {
        let m = &spec.manifest;
        let code = self.sandbox.code_path(&spec.code_dir).display().to_string();
        let memory_mb = (m.memory >> 20).to_string();
        let ours: Vec<(String, String)> = vec![
            ("FLICK_FUNCTION_NAME".into(), spec.function.clone()),
            ("FLICK_FUNCTION_REVISION".into(), spec.revision.to_string()),
            ("FLICK_HANDLER".into(), m.handler.clone()),
            // The handler's contract; the bootstraps guess it only when `auto`.
            ("FLICK_SHAPE".into(), m.shape.as_str().into()),
            ("FLICK_CODE_DIR".into(), code.clone()),
            ("FLICK_MEMORY_MB".into(), memory_mb.clone()),
            ("FLICK_CONCURRENCY".into(), m.concurrency.to_string()),
            ("FLICK_TIMEOUT_MS".into(), m.timeout.as_millis().to_string()),
            ("FLICK_FUNCTION_ARN".into(), self.config.lambda.function_arn(&spec.function)),
            ("AWS_LAMBDA_FUNCTION_NAME".into(), spec.function.clone()),
            ("AWS_LAMBDA_FUNCTION_VERSION".into(), LAMBDA_VERSION.into()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(), memory_mb),
            ("AWS_LAMBDA_LOG_GROUP_NAME".into(), flick_core::aws::log_group(&spec.function)),
            (
                "AWS_LAMBDA_LOG_STREAM_NAME".into(),
                flick_core::aws::log_stream(flick_core::now_ms(), LAMBDA_VERSION, &flick_core::aws::instance_id()),
            ),
            ("AWS_REGION".into(), self.config.lambda.region.clone()),
            ("AWS_DEFAULT_REGION".into(), self.config.lambda.region.clone()),
            ("LAMBDA_TASK_ROOT".into(), code),
            ("_HANDLER".into(), m.handler.clone()),
        ];
        // A user's variable of the same name is dropped, not merely placed
        // first: a C `getenv` finds the first of two, and a stem cell's
        // specialise frame or a go message would keep both.
        let mut env: Vec<(String, String)> = m
            .env
            .iter()
            .filter(|(k, _)| !ours.iter().any(|(o, _)| o == *k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.extend(ours);
        env
    }

    /// The bootstrap of `runtime` as the instance sees it.
    fn bootstrap_path(&self, runtime: RuntimeKind) -> PathBuf {
        bootstrap::path(&self.sandbox.runtime_path(), runtime, self.python_compiled)
    }

    /// Resources and network of an instance of `spec`.
    fn limits(&self, spec: &InstanceSpec) -> flick_sandbox::Limits {
        let m = &spec.manifest;
        flick_sandbox::Limits {
            memory: m.memory,
            tmp_size: m.tmp_size,
            network: match m.network {
                flick_core::Network::Host => flick_sandbox::Network::Host,
                flick_core::Network::None => flick_sandbox::Network::None,
            },
            identity: self.sandbox().identity_for(&spec.function),
        }
    }

    fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }
}

/// Why the sandbox could not start a function's own program (exec, http).
/// A program that is missing or not executable is the function's fault, and
/// the caller is told so by the handler it wrote; anything else (cgroups,
/// fork, mounts) is flick's, whose detail goes to flick's log, not to callers.
fn spawn_failure(handler: &str, e: flick_sandbox::SandboxError) -> Result<FunctionError, String> {
    use std::io::ErrorKind;
    // ENOEXEC (8 on every Linux architecture): not a binary, no `#!` line.
    const ENOEXEC: i32 = 8;
    match &e {
        flick_sandbox::SandboxError::Spawn { source, .. }
            if matches!(source.kind(), ErrorKind::NotFound | ErrorKind::PermissionDenied)
                || source.raw_os_error() == Some(ENOEXEC) =>
        {
            let why = match source.kind() {
                ErrorKind::NotFound => "no such program".to_string(),
                ErrorKind::PermissionDenied => "permission denied (is it executable?)".to_string(),
                _ => "not an executable (no `#!` line?)".to_string(),
            };
            Ok(FunctionError {
                kind: "Runtime.ExecError".into(),
                message: format!("cannot start `{handler}`: {why}"),
                trace: vec![],
            })
        }
        _ => Err(e.to_string()),
    }
}

/// Splits an exec/http handler into program and arguments, like a shell
/// would split it (quotes), without a shell's expansions.
fn command_line(handler: &str, code_dir: &Path) -> Result<(PathBuf, Vec<std::ffi::OsString>), StartError> {
    let words = shell_words::split(handler).map_err(|e| StartError::Platform(format!("handler `{handler}`: {e}")))?;
    let (program, args) = words.split_first().ok_or_else(|| StartError::Platform("handler is empty".into()))?;
    // `./run.sh` means the function's own file; a bare name is looked up on PATH.
    let program = if program.contains('/') && !program.starts_with('/') {
        code_dir.join(program)
    } else {
        PathBuf::from(program)
    };
    Ok((program, args.iter().map(Into::into).collect()))
}
