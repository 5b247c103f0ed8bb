//! The Lambda Runtime API (`/2018-06-01/runtime/…`) served to one instance,
//! and the instances that speak it: runtime `provided` (the package's own
//! `bootstrap`, any language) and python3/node handlers under AWS's own
//! runtime interface clients (`lambda_ric = true`).
//!
//! Each instance gets a server of its own, on `AWS_LAMBDA_RUNTIME_API`:
//! - with a network namespace of its own (`network = "none"`, sandboxed),
//!   the listening socket is created inside that namespace at
//!   `127.0.0.1:9001` (as Lambda and its emulator serve it) while the
//!   sandbox waits for its program, so it is there before the program's
//!   first request and nothing outside the instance can ever connect to it;
//! - on the host's network (or unsandboxed) flick binds a free loopback
//!   port itself, and serves a connection only when its peer socket is held
//!   by one of the instance's own processes (read from `/proc`), so another
//!   instance on the host can neither take this one's events nor answer them.
//!
//! flick accepts on either socket from its own runtime. An invocation is
//! the answer to the next `GET …/invocation/next`; the instance's `POST
//! …/{id}/response` or `…/{id}/error` ends it. Init is over at the first
//! `/next`; `POST …/init/error` before it fails the start (the invocation
//! that waited reports it). Wire details follow the runtime interface
//! emulator and what the native clients require (every answer carries
//! `Content-Type: application/json`; the deadline is decimal epoch
//! milliseconds; `init/error` is answered exactly 202).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use flick_core::RuntimeKind;
use flick_sandbox::ProcessSpec;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::{Notify, Semaphore, oneshot, watch};
use tokio::time::Instant;

use crate::handle::ProcessHandle;
use crate::logs::LogCollector;
use crate::{Failure, FunctionError, InstanceSpec, Invoked, Launcher, Request, Response, StartError};

/// Where Lambda (and its emulator) serve the API; an instance with its own
/// network namespace has the whole port space to itself.
const NAMESPACED_PORT: u16 = 9001;
/// The API version prefix every path starts with.
const PREFIX: &str = "/2018-06-01/runtime/";
/// Largest error report (`/error`, `/init/error`) read.
const MAX_ERROR_BODY: usize = 1 << 20;
/// Answered invocation ids remembered, so a second answer gets 403
/// (already answered) rather than 400 (unknown id), as Lambda's.
const REMEMBERED: usize = 16;
/// Limits of an error's text, as flick's own bootstraps cap theirs.
const MAX_MESSAGE: usize = 4 << 10;
const MAX_TRACE_LINES: usize = 64;
const MAX_TRACE_LINE: usize = 1 << 10;

/// An instance whose program speaks the Lambda Runtime API.
pub struct ApiInstance {
    process: ProcessHandle,
    logs: LogCollector,
    shared: Arc<Shared>,
    /// One event at a time: the API has no way to hand out a second.
    turn: Semaphore,
    /// Dropped with the instance: the server and its connections stop.
    _shutdown: watch::Sender<()>,
}

/// What the server and the instance share.
struct Shared {
    state: Mutex<State>,
    /// Woken on every change of `state`.
    changed: Notify,
    arn: String,
    max_response: usize,
}

#[derive(Default)]
struct State {
    /// The program asked for its first event: init is over.
    polled: bool,
    /// What the program posted to `/init/error`.
    init_error: Option<FunctionError>,
    /// An event no `/next` has taken yet.
    queued: Option<Event>,
    /// The event handed out, and where its answer goes.
    current: Option<(String, oneshot::Sender<Answer>)>,
    answered: VecDeque<String>,
    stopped: bool,
}

struct Event {
    id: String,
    body: Bytes,
    headers: Vec<(&'static str, String)>,
    answer: oneshot::Sender<Answer>,
}

/// How the program answered an event.
enum Answer {
    Response { content_type: Option<String>, body: Bytes },
    Error(FunctionError),
    TooLarge,
}

impl State {
    fn remember(&mut self, id: String) {
        if self.answered.len() == REMEMBERED {
            self.answered.pop_front();
        }
        self.answered.push_back(id);
    }
}

impl ApiInstance {
    pub async fn start(launcher: &Launcher, spec: &InstanceSpec, deadline: Instant) -> Result<Self, StartError> {
        let sandbox = launcher.sandbox();
        let code = sandbox.code_path(&spec.code_dir);
        let (program, args, extra_env) = command(launcher, spec, &code)?;
        let limits = launcher.limits(spec);
        let own_network = sandbox.is_isolated() && limits.network == flick_sandbox::Network::None;
        let platform = |what: &str, e: std::io::Error| StartError::Platform(format!("{what}: {e}"));
        // On the host's network the port is ours before anything starts:
        // no other program can take it between choosing and binding.
        let host_listener = if own_network {
            None
        } else {
            Some(tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.map_err(|e| platform("runtime API port", e))?)
        };
        let port = match &host_listener {
            Some(l) => l.local_addr().map_err(|e| platform("runtime API port", e))?.port(),
            None => NAMESPACED_PORT,
        };
        let mut env = launcher.env(spec);
        env.extend(extra_env);
        env.push(("AWS_LAMBDA_RUNTIME_API".into(), format!("127.0.0.1:{port}")));
        // With a namespace of its own the sandbox is set up first and waits
        // for its program; the listener goes in between.
        let go = own_network
            .then(|| {
                flick_sandbox::go_message(limits.identity, &program, &args, &env).ok_or_else(|| StartError::Init {
                    error: FunctionError {
                        kind: "Runtime.InvalidEnvironment".into(),
                        message: format!(
                            "the environment is over the {} KiB a runtime-API instance can be started with",
                            flick_sandbox::MAX_GO_MESSAGE >> 10
                        ),
                        trace: vec![],
                    },
                    logs: Default::default(),
                })
            })
            .transpose()?;
        let mut spawned = sandbox
            .spawn(ProcessSpec {
                program: program.clone(),
                args,
                env,
                code_dir: Some(spec.code_dir.clone()),
                limits,
                protocol_fd: None,
                stdin: false,
                report_exit: own_network,
                wait_for_program: own_network,
            })
            .await
            .map_err(|e| match crate::spawn_failure(&program.display().to_string(), e) {
                Ok(error) => StartError::Init { error, logs: Default::default() },
                Err(platform) => StartError::Platform(platform),
            })?;
        let logs = LogCollector::capture(launcher.config().log_limits, &mut spawned.child);
        let go_pipe = spawned.go.take();
        let process = ProcessHandle::new(spawned);
        let (listener, guard) = match host_listener {
            Some(l) => (l, Some(process.pid())),
            None => (
                sandbox.listen_inside(process.pid(), NAMESPACED_PORT).await.map_err(|e| platform("runtime API", e))?,
                None,
            ),
        };
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            changed: Notify::new(),
            arn: launcher.config().lambda.function_arn(&spec.function),
            max_response: launcher.config().max_response_bytes,
        });
        let (shutdown, stop_rx) = watch::channel(());
        tokio::spawn(serve(listener, shared.clone(), guard, stop_rx));
        if let (Some(pipe), Some(message)) = (go_pipe, go) {
            // Smaller than a pipe's buffer: the write cannot block.
            std::fs::File::from(pipe).write_all(&message).map_err(|e| platform("starting the program", e))?;
        }
        let instance = Self { process, logs, shared, turn: Semaphore::new(1), _shutdown: shutdown };
        instance.wait_for_init(deadline).await?;
        Ok(instance)
    }

    /// Waits until the program asks for its first event.
    async fn wait_for_init(&self, deadline: Instant) -> Result<(), StartError> {
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(outcome) = self.init_outcome(deadline).await {
                return outcome;
            }
            tokio::select! {
                _ = notified => {}
                _ = self.process.on_exit() => {
                    // An init error posted just before exiting says more.
                    if let Some(outcome) = self.init_outcome(deadline).await {
                        return outcome;
                    }
                    let how = self.process.exit(Duration::from_secs(1)).await;
                    let error = FunctionError {
                        kind: "Runtime.ExitError".into(),
                        message: match how {
                            Some(exit) => format!("the runtime {exit} before it asked for an event"),
                            None => "the runtime exited before it asked for an event".into(),
                        },
                        trace: vec![],
                    };
                    return Err(self.failed_start(error).await);
                }
                _ = tokio::time::sleep_until(deadline) => {
                    self.stop();
                    return Err(StartError::Timeout { logs: self.logs.take_idle() });
                }
            }
        }
    }

    /// `Some` once init is over, one way or the other.
    async fn init_outcome(&self, deadline: Instant) -> Option<Result<(), StartError>> {
        let error = {
            let st = self.shared.state.lock();
            if st.polled {
                return Some(Ok(()));
            }
            // Kept: a second report is refused (403) like Lambda's.
            st.init_error.clone()?
        };
        // A runtime exits after reporting (awslambdaric at once): give it
        // a moment, so what it wrote on the way out is in the logs.
        let grace = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(1));
        self.process.exit(grace).await;
        Some(Err(self.failed_start(error).await))
    }

    async fn failed_start(&self, error: FunctionError) -> StartError {
        // Let the streams drain so the program's last words are in the logs.
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.stop();
        StartError::Init { error, logs: self.logs.take_idle() }
    }

    pub(crate) fn process(&self) -> &ProcessHandle {
        &self.process
    }

    pub async fn invoke(&self, req: Request) -> Invoked {
        let not_delivered = |why: &str| Invoked {
            outcome: Err(Failure::NotDelivered(why.into())),
            logs: Default::default(),
            reusable: false,
            prewarmed: false,
            usage: None,
        };
        let Ok(_turn) = self.turn.acquire().await else { return not_delivered("instance is stopped") };
        if self.process.has_exited() || self.shared.state.lock().stopped {
            return not_delivered("the runtime is no longer running");
        }
        let (tx, mut rx) = oneshot::channel();
        let event = Event { id: req.id.clone(), body: req.body.clone(), headers: self.headers(&req), answer: tx };
        self.logs.begin(&req.id, req.log_sink.clone());
        {
            let mut st = self.shared.state.lock();
            st.queued = Some(event);
        }
        self.shared.changed.notify_waiters();
        let exited = self.process.on_exit();
        let (outcome, reusable) = tokio::select! {
            biased;
            answer = &mut rx => match answer {
                Ok(Answer::Response { content_type, body }) => {
                    let content_type = content_type.unwrap_or_else(|| "application/json".into());
                    (Ok(Response { status: 200, headers: vec![("content-type".into(), content_type)], body }), true)
                }
                Ok(Answer::Error(error)) => (Err(Failure::Function(error)), true),
                Ok(Answer::TooLarge) => (
                    Err(Failure::Function(FunctionError {
                        kind: "Function.ResponseSizeTooLarge".into(),
                        message: format!("the response is over the {}-byte limit", self.shared.max_response),
                        trace: vec![],
                    })),
                    true,
                ),
                Err(_) => (Err(Failure::Platform("the runtime API dropped the invocation".into())), false),
            },
            _ = exited => {
                let undelivered = self.forget(&req.id);
                let how = self.process.exit(Duration::from_millis(500)).await;
                let outcome = match how {
                    _ if undelivered => {
                        // It never took the event: safe to run elsewhere.
                        Err(Failure::NotDelivered("the runtime exited before it took the event".into()))
                    }
                    Some(exit) if exit.oom => Err(Failure::OutOfMemory),
                    Some(exit) => Err(Failure::Function(FunctionError {
                        kind: "Runtime.ExitError".into(),
                        message: format!("the runtime {exit} during the invocation"),
                        trace: vec![],
                    })),
                    None => Err(Failure::Platform("the runtime's process went away".into())),
                };
                (outcome, false)
            }
            _ = tokio::time::sleep_until(req.deadline) => {
                self.forget(&req.id);
                (Err(Failure::Timeout), false)
            }
        };
        if !reusable {
            self.stop();
        }
        // No end markers on this path: what the readers have by now is the
        // invocation's (best effort; a line still in the pipe goes to the next).
        tokio::task::yield_now().await;
        let logs = self.logs.finish(&req.id, false, Duration::ZERO).await;
        Invoked { outcome, logs, reusable, prewarmed: false, usage: None }
    }

    /// Drops `id` from the state; true if it was still waiting for a `/next`.
    fn forget(&self, id: &str) -> bool {
        let mut st = self.shared.state.lock();
        if st.current.as_ref().is_some_and(|(c, _)| c == id) {
            st.current = None;
        }
        st.queued.take_if(|e| e.id == id).is_some()
    }

    /// The headers of the `/next` answer for `req`.
    fn headers(&self, req: &Request) -> Vec<(&'static str, String)> {
        // Decimal epoch milliseconds, never below 1: anything else aborts
        // the native clients (`assert` in aws-lambda-cpp).
        let deadline = req.deadline_ms.max(1);
        let mut headers = vec![
            ("lambda-runtime-aws-request-id", req.id.clone()),
            ("lambda-runtime-deadline-ms", deadline.to_string()),
            ("lambda-runtime-invoked-function-arn", self.shared.arn.clone()),
            ("lambda-runtime-trace-id", trace_id(&req.id, req.traceparent.as_deref())),
        ];
        // Only valid JSON text: anything else fails the clients' context.
        if let Some(context) = req.client_context.as_deref().and_then(client_context) {
            headers.push(("lambda-runtime-client-context", context));
        }
        headers
    }

    pub fn stop(&self) {
        self.shared.state.lock().stopped = true;
        self.shared.changed.notify_waiters();
        self.turn.close();
        self.process.kill();
    }
}

/// The program an instance runs, its arguments and its extra environment.
type Command = (PathBuf, Vec<OsString>, Vec<(String, String)>);

/// What an instance of `spec` runs.
fn command(launcher: &Launcher, spec: &InstanceSpec, code: &Path) -> Result<Command, StartError> {
    let m = &spec.manifest;
    let cfg = launcher.config();
    let invalid = |message: String| StartError::Init {
        error: FunctionError { kind: "Runtime.InvalidEntrypoint".into(), message, trace: vec![] },
        logs: Default::default(),
    };
    match m.runtime {
        RuntimeKind::Provided => {
            // Checked on the host: inside the sandbox a missing program is
            // only an exit status.
            let host = spec.code_dir.join("bootstrap");
            let executable = std::fs::metadata(&host).is_ok_and(|md| {
                md.is_file() && std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o111 != 0
            });
            if !executable {
                return Err(invalid("the package has no executable `bootstrap` at its top level".into()));
            }
            Ok((code.join("bootstrap"), vec![], vec![]))
        }
        RuntimeKind::Python3 => {
            // cwd is the code dir, which `-m` puts first on sys.path; the
            // package's installed dependencies (`.deps/python`) follow.
            let path = format!("{}:{}", code.display(), code.join(".deps/python").display());
            let args = ["-m", "awslambdaric", m.handler.as_str()].map(OsString::from).to_vec();
            Ok((absolute(&cfg.python)?, args, vec![("PYTHONPATH".into(), path)]))
        }
        RuntimeKind::Node => {
            let client = code.join("node_modules/aws-lambda-ric/index.mjs");
            if !spec.code_dir.join("node_modules/aws-lambda-ric/index.mjs").is_file() {
                return Err(invalid(
                    "`lambda_ric = true` needs `aws-lambda-ric` in the package's node_modules \
                     (a dependency in package.json)"
                        .into(),
                ));
            }
            Ok((absolute(&cfg.node)?, vec![client.into_os_string()], vec![]))
        }
        other => Err(StartError::Platform(format!("runtime `{other}` does not use the Lambda Runtime API"))),
    }
}

/// A waiting sandbox execs a path, it does not search `PATH`.
fn absolute(program: &Path) -> Result<PathBuf, StartError> {
    if program.is_absolute() {
        return Ok(program.to_path_buf());
    }
    let path = flick_sandbox::BASE_ENV.iter().find(|(k, _)| *k == "PATH").map_or("", |(_, v)| v);
    path.split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| StartError::Platform(format!("`{}` is not on the sandbox's PATH", program.display())))
}

/// An X-Ray-shaped trace id derived from the invocation id (flick traces
/// nothing; clients only copy it into `_X_AMZN_TRACE_ID`).
fn trace_id(id: &str, traceparent: Option<&str>) -> String {
    // The W3C trace in X-Ray's notation (its 32 hex digits split 8 + 24), so
    // a Lambda client's `_X_AMZN_TRACE_ID` names the same trace.
    if let Some(tp) = traceparent
        && tp.len() == 55
        && tp.is_ascii()
    {
        let sampled = u8::from_str_radix(&tp[53..55], 16).unwrap_or(0) & 1;
        return format!("Root=1-{}-{};Parent={};Sampled={sampled}", &tp[3..11], &tp[11..35], &tp[36..52]);
    }
    let secs = flick_core::now_ms() / 1000;
    let hex: String = id.chars().filter(char::is_ascii_hexdigit).collect();
    let tail = format!("{hex:0>24}");
    let tail = &tail[tail.len() - 24..];
    format!("Root=1-{secs:08x}-{tail};Parent={};Sampled=0", &tail[8..])
}

/// The client context as JSON text, from the base64 the Lambda API takes.
fn client_context(encoded: &str) -> Option<String> {
    let raw = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?;
    Some(text)
}

/// Accepts connections until the instance goes.
async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    guard: Option<u32>,
    mut stop: watch::Receiver<()>,
) {
    let local = listener.local_addr().ok();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of descriptors, say: the program retries its request.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        if let (Some(root), Some(local)) = (guard, local) {
            let ours = tokio::task::spawn_blocking(move || peer_is_instance(root, peer, local)).await;
            if !matches!(ours, Ok(true)) {
                // Someone else on the host: not a word.
                continue;
            }
        }
        let _ = stream.set_nodelay(true);
        let (shared, mut stop) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| route(shared.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.changed() => {}
            }
        });
    }
}

type Reply = hyper::Response<Full<Bytes>>;

fn reply(status: StatusCode, body: serde_json::Value) -> Reply {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    // Always, errors included: without it aws-lambda-cpp segfaults.
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, kind: &str, message: &str) -> Reply {
    reply(status, serde_json::json!({ "errorMessage": message, "errorType": kind }))
}

fn accepted() -> Reply {
    reply(StatusCode::ACCEPTED, serde_json::json!({ "status": "OK" }))
}

async fn route(shared: Arc<Shared>, req: hyper::Request<Incoming>) -> Result<Reply, Infallible> {
    let path = req.uri().path().to_string();
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return Ok(error(StatusCode::NOT_FOUND, "InvalidPath", "not a Lambda Runtime API path"));
    };
    let method = req.method().clone();
    let post_only = |m: &Method| *m == Method::POST;
    Ok(match rest {
        "invocation/next" if method == Method::GET => next(&shared).await,
        "init/error" if post_only(&method) => init_error(&shared, req).await,
        "invocation/next" | "init/error" => {
            error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "wrong method for this path")
        }
        _ => match rest.strip_prefix("invocation/").and_then(|r| r.split_once('/')) {
            Some((id, kind @ ("response" | "error"))) if post_only(&method) => {
                let id = id.to_string();
                answer(&shared, id, kind == "error", req).await
            }
            Some((_, "response" | "error")) => {
                error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "wrong method for this path")
            }
            _ => error(StatusCode::NOT_FOUND, "InvalidPath", "not a Lambda Runtime API path"),
        },
    })
}

/// `GET …/invocation/next`: waits for an event and hands it out.
async fn next(shared: &Shared) -> Reply {
    loop {
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let event = {
            let mut st = shared.state.lock();
            if st.stopped {
                return error(StatusCode::GONE, "InstanceStopped", "this instance is stopping");
            }
            if !st.polled {
                st.polled = true;
                // The start is waiting for this.
                shared.changed.notify_waiters();
            }
            let event = st.queued.take();
            if let Some(e) = event {
                st.current = Some((e.id.clone(), e.answer));
                Some((e.body, e.headers))
            } else {
                None
            }
        };
        if let Some((body, headers)) = event {
            let mut r = hyper::Response::new(Full::new(body));
            let h = r.headers_mut();
            h.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
            for (name, value) in headers {
                if let Ok(v) = hyper::header::HeaderValue::from_str(&value) {
                    h.insert(name, v);
                }
            }
            return r;
        }
        notified.await;
    }
}

/// `POST …/invocation/{id}/response` and `…/{id}/error`.
async fn answer(shared: &Shared, id: String, is_error: bool, req: hyper::Request<Incoming>) -> Reply {
    let unknown = |st: &State| {
        if st.answered.contains(&id) {
            error(StatusCode::FORBIDDEN, "InvalidStateTransition", "this invocation was already answered")
        } else {
            error(StatusCode::BAD_REQUEST, "InvalidRequestID", "not the id of the current invocation")
        }
    };
    // The id first: a wrong one is refused before its body is read.
    {
        let st = shared.state.lock();
        if st.current.as_ref().is_none_or(|(c, _)| *c != id) {
            return unknown(&st);
        }
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let content_type = header("content-type");
    let error_type = header("lambda-runtime-function-error-type");
    let limit = if is_error { MAX_ERROR_BODY } else { shared.max_response };
    let body = Limited::new(req.into_body(), limit).collect().await.map(|b| b.to_bytes());
    let (result, status) = match body {
        Ok(body) if is_error => (Answer::Error(function_error(&body, error_type.as_deref())), None),
        Ok(body) => (Answer::Response { content_type, body }, None),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => (
            if is_error {
                Answer::Error(FunctionError {
                    kind: "Runtime.ErrorTooLarge".into(),
                    message: format!("the error report is over {MAX_ERROR_BODY} bytes"),
                    trace: vec![],
                })
            } else {
                Answer::TooLarge
            },
            Some(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                &format!("the {} is over the {limit}-byte limit", if is_error { "error" } else { "response" }),
            )),
        ),
        // The connection broke mid-body: nothing was answered.
        Err(_) => return error(StatusCode::BAD_REQUEST, "InvalidRequest", "the body could not be read"),
    };
    let mut st = shared.state.lock();
    let Some((_, tx)) = st.current.take_if(|(c, _)| *c == id) else {
        // Answered by another connection while this body was read.
        return unknown(&st);
    };
    st.remember(id);
    drop(st);
    let _ = tx.send(result);
    status.unwrap_or_else(accepted)
}

/// `POST …/init/error`: only before the first `/next`, and only once.
async fn init_error(shared: &Shared, req: hyper::Request<Incoming>) -> Reply {
    let late = |st: &State| st.polled || st.init_error.is_some() || st.stopped;
    if late(&shared.state.lock()) {
        return error(StatusCode::FORBIDDEN, "InvalidStateTransition", "init is already over");
    }
    let error_type =
        req.headers().get("lambda-runtime-function-error-type").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = Limited::new(req.into_body(), MAX_ERROR_BODY).collect().await.map(|b| b.to_bytes());
    let report = match body {
        Ok(body) => function_error(&body, error_type.as_deref()),
        Err(_) => FunctionError {
            kind: error_type.unwrap_or_else(|| "Runtime.InitError".into()),
            message: "the runtime failed to initialise (its error report could not be read)".into(),
            trace: vec![],
        },
    };
    {
        let mut st = shared.state.lock();
        if late(&st) {
            return error(StatusCode::FORBIDDEN, "InvalidStateTransition", "init is already over");
        }
        st.init_error = Some(report);
    }
    shared.changed.notify_waiters();
    accepted()
}

/// A posted error report (`{errorMessage, errorType, stackTrace}`), read
/// leniently and capped: any body is some error.
fn function_error(body: &[u8], header_type: Option<&str>) -> FunctionError {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Posted {
        error_message: Option<serde_json::Value>,
        error_type: Option<serde_json::Value>,
        stack_trace: Option<serde_json::Value>,
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let posted = serde_json::from_slice::<Posted>(body).ok();
    let kind = posted
        .as_ref()
        .and_then(|p| p.error_type.as_ref())
        .map(text)
        .filter(|t| !t.is_empty())
        .or_else(|| header_type.map(str::to_string))
        .unwrap_or_else(|| "Runtime.Unknown".into());
    let message = match &posted {
        Some(p) => p.error_message.as_ref().map(text).unwrap_or_default(),
        None => String::from_utf8_lossy(body).into_owned(),
    };
    let trace = match posted.and_then(|p| p.stack_trace) {
        Some(serde_json::Value::Array(lines)) => lines.iter().map(text).collect(),
        Some(serde_json::Value::String(s)) => s.lines().map(str::to_string).collect(),
        _ => vec![],
    };
    FunctionError {
        kind: cap(&kind, 256),
        message: cap(&message, MAX_MESSAGE),
        trace: trace.iter().take(MAX_TRACE_LINES).map(|l| cap(l, MAX_TRACE_LINE)).collect(),
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
fn cap(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Whether the TCP connection from `peer` to `local` was made by a socket
/// that `root` or one of its descendants holds (host network: anyone on the
/// host could connect).
fn peer_is_instance(root: u32, peer: SocketAddr, local: SocketAddr) -> bool {
    let Ok(table) = std::fs::read_to_string(if peer.is_ipv4() { "/proc/net/tcp" } else { "/proc/net/tcp6" }) else {
        return false;
    };
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && parse_addr(f[1]) == Some(peer) && parse_addr(f[2]) == Some(local)).then(|| f[9].to_string())
    });
    let Some(inode) = inode.filter(|i| i != "0") else { return false };
    let target = format!("socket:[{inode}]");
    crate::http::descendants(root).into_iter().any(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == target.as_str()))
    })
}

/// An IPv4 `/proc/net/tcp` address (`0100007F:2329`: the address as the
/// kernel's native-endian word, the port big-endian).
fn parse_addr(field: &str) -> Option<SocketAddr> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    if addr.len() != 8 {
        return None;
    }
    let word = u32::from_str_radix(addr, 16).ok()?;
    Some(SocketAddr::from((std::net::Ipv4Addr::from(word.to_ne_bytes()), port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reports_are_read_leniently_and_capped() {
        let e = function_error(
            br#"{"errorMessage":"boom","errorType":"ValueError","requestId":"x","stackTrace":["a","b"]}"#,
            None,
        );
        assert_eq!((e.kind.as_str(), e.message.as_str(), e.trace.len()), ("ValueError", "boom", 2));
        let e = function_error(br#"{"errorMessage":"m"}"#, Some("Function.Custom"));
        assert_eq!(e.kind, "Function.Custom");
        let e = function_error(b"not json", None);
        assert_eq!((e.kind.as_str(), e.message.as_str()), ("Runtime.Unknown", "not json"));
        let long =
            format!(r#"{{"errorMessage":"{}","stackTrace":{}}}"#, "é".repeat(5000), serde_json::json!(vec!["x"; 500]));
        let e = function_error(long.as_bytes(), None);
        assert!(e.message.len() <= MAX_MESSAGE && e.trace.len() == MAX_TRACE_LINES);
    }

    #[test]
    fn proc_net_addresses_and_trace_ids() {
        let local = if cfg!(target_endian = "little") { "0100007F:2329" } else { "7F000001:2329" };
        assert_eq!(parse_addr(local), Some("127.0.0.1:9001".parse().unwrap()));
        assert_eq!(parse_addr("zz:1"), None);
        let t = trace_id("019ad84f8c2b4e5a9f3c1d2e3f4a5b6c", None);
        assert!(t.starts_with("Root=1-") && t.ends_with(";Sampled=0") && t.contains(";Parent="), "{t}");
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id("019ad84f8c2b4e5a9f3c1d2e3f4a5b6c", Some(tp)),
            "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=1"
        );
        assert_eq!(client_context("eyJhIjoxfQ=="), Some("{\"a\":1}".into()));
        assert_eq!(client_context("bm90IGpzb24="), None, "not JSON");
        assert_eq!(client_context("!!"), None);
    }
}
