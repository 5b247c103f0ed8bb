//! http instances: a long-lived HTTP server the function brings, listening
//! on `$PORT` (the contract of of-watchdog's http mode, Knative and Cloud
//! Run). flick starts it, waits until it accepts connections, and proxies
//! requests to it over the instance's own loopback — inside its network
//! namespace when it has one, so `network = "none"` holds for servers too.
//!
//! With `network = "host"` (only when the operator allows it, see
//! [`HOST_NETWORK_REFUSED`]) the server shares the host's ports. flick picks
//! a free port and reserves it in [`HostPorts`] so no other instance it
//! starts is handed the same one, and accepts the server as ready only once
//! the socket listening on that port is held by the instance's own
//! processes: another program that bound the port first (a hostile
//! function racing for it) never receives this function's requests.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use flick_sandbox::ProcessSpec;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::handle::ProcessHandle;
use crate::logs::LogCollector;
use crate::{Failure, FunctionError, InstanceSpec, Invoked, Launcher, Request, Response, StartError, command_line};

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// The port servers listen on: every instance has its own loopback (or,
/// on the host network, gets a free port below).
const NAMESPACED_PORT: u16 = 8080;

/// Why a host-network http function is refused unless allowed.
pub(crate) const HOST_NETWORK_REFUSED: &str = "`network = \"host\"` is not allowed for http functions here: \
     the server would listen on the host's network, where anyone who can reach its port bypasses flick's \
     authentication (an operator can allow it with `allow_host_network_http = true` in flick's config)";

type Sender = SendRequest<Full<Bytes>>;

/// Host ports handed to running host-network http instances.
#[derive(Debug, Default)]
pub(crate) struct HostPorts {
    taken: Mutex<HashSet<u16>>,
}

/// A host port reserved for one instance until dropped.
struct PortLease {
    ports: Arc<HostPorts>,
    port: u16,
}

impl HostPorts {
    /// A port free on the host now and not handed to another instance.
    fn reserve(self: &Arc<Self>) -> std::io::Result<PortLease> {
        for _ in 0..64 {
            let port = free_port()?;
            if self.taken.lock().insert(port) {
                return Ok(PortLease { ports: self.clone(), port });
            }
        }
        Err(std::io::Error::other("every free port the kernel offered is already reserved"))
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.ports.taken.lock().remove(&self.port);
    }
}

pub struct HttpInstance {
    process: ProcessHandle,
    launcher: Launcher,
    network: flick_sandbox::Network,
    /// Where connections to the server are made, found on the first one.
    net: std::sync::OnceLock<flick_sandbox::InstanceNet>,
    port: u16,
    /// The host port reserved for this instance (host network only).
    _lease: Option<PortLease>,
    /// Idle keep-alive connections to the server.
    idle: Mutex<Vec<Sender>>,
    logs: LogCollector,
    max_response: usize,
}

impl HttpInstance {
    pub async fn start(launcher: &Launcher, spec: &InstanceSpec, deadline: Instant) -> Result<Self, StartError> {
        let (program, args) = command_line(&spec.manifest.handler, &launcher.sandbox().code_path(&spec.code_dir))?;
        let limits = launcher.limits(spec);
        let own_loopback = launcher.sandbox().is_isolated() && limits.network == flick_sandbox::Network::None;
        if spec.manifest.network == flick_core::Network::Host {
            // Deploys are checked too; this covers revisions deployed while it was allowed.
            launcher.admit(&spec.manifest).map_err(StartError::Platform)?;
        }
        let lease = if own_loopback {
            None
        } else {
            let lease =
                launcher.host_ports.reserve().map_err(|e| StartError::Platform(format!("no free port: {e}")))?;
            Some(lease)
        };
        let port = lease.as_ref().map_or(NAMESPACED_PORT, |l| l.port);
        let mut env = launcher.env(spec);
        env.push(("PORT".into(), port.to_string()));
        let mut spawned = launcher
            .sandbox()
            .spawn(ProcessSpec {
                program,
                args,
                env,
                code_dir: Some(spec.code_dir.clone()),
                limits,
                protocol_fd: None,
                stdin: false,
                report_exit: false,
                wait_for_program: false,
            })
            .await
            .map_err(|e| match crate::spawn_failure(&spec.manifest.handler, e) {
                Ok(error) => StartError::Init { error, logs: Default::default() },
                Err(platform) => StartError::Platform(platform),
            })?;
        let logs = LogCollector::capture(launcher.config().log_limits, &mut spawned.child);
        let instance = Self {
            process: ProcessHandle::new(spawned),
            launcher: launcher.clone(),
            network: limits.network,
            net: std::sync::OnceLock::new(),
            port,
            _lease: lease,
            idle: Mutex::default(),
            logs,
            max_response: launcher.config().max_response_bytes,
        };
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(exit) = instance.process.exit(Duration::ZERO).await {
                tokio::time::sleep(Duration::from_millis(20)).await;
                return Err(StartError::Init {
                    error: FunctionError {
                        kind: "Runtime.ExitError".into(),
                        message: format!("server {exit} before it listened on $PORT ({port})"),
                        trace: vec![],
                    },
                    logs: instance.logs.take_idle(),
                });
            }
            if let Ok(sender) = instance.connect().await {
                if !own_loopback && !instance.listener_is_ours().await {
                    // Someone else holds the port: this server can never
                    // bind it, and must never have its requests sent there.
                    instance.process.kill();
                    return Err(StartError::Platform(format!(
                        "port {port}, reserved for this instance, is held by another program"
                    )));
                }
                instance.idle.lock().push(sender);
                return Ok(instance);
            }
            if Instant::now() + pause > deadline {
                instance.process.kill();
                return Err(StartError::Timeout { logs: instance.logs.take_idle() });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// Whether the socket listening on our host port is held by this
    /// instance's processes (the server or its children).
    async fn listener_is_ours(&self) -> bool {
        let (pid, port) = (self.process.pid(), self.port);
        tokio::task::spawn_blocking(move || listener_held_by(pid, port)).await.unwrap_or(false)
    }

    /// A new HTTP/1.1 connection to the server.
    async fn connect(&self) -> Result<Sender, String> {
        if self.process.has_exited() {
            // On the host network the port may be someone else's by now.
            return Err("the server has exited".into());
        }
        let sandbox = self.launcher.sandbox();
        let net = match self.net.get() {
            Some(net) => net,
            None => {
                let net = sandbox.instance_net(self.process.pid(), self.network).map_err(|e| e.to_string())?;
                self.net.get_or_init(|| net)
            }
        };
        let stream = sandbox.connect_in(net, self.port).await.map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// An idle connection, or a new one.
    async fn sender(&self) -> Result<Sender, String> {
        loop {
            let Some(mut sender) = self.idle.lock().pop() else { break };
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        self.connect().await
    }

    pub(crate) fn process(&self) -> &ProcessHandle {
        &self.process
    }

    pub async fn invoke(&self, req: Request) -> Invoked {
        if self.process.has_exited() {
            // Known dead before anything was sent: another instance may take it.
            let outcome = Err(Failure::NotDelivered("the function's server had exited".into()));
            return Invoked { outcome, logs: Default::default(), reusable: false, prewarmed: false, usage: None };
        }
        self.logs.begin(&req.id, req.log_sink.clone());
        // Exactly as the caller sent it: decoding here would let `%3F`, `%23`
        // or `%2e%2e%2f` change what the server is asked for.
        let target =
            if req.query.is_empty() { req.raw_path.clone() } else { format!("{}?{}", req.raw_path, req.query) };
        // The body as the event: a POST of it, whatever method the surface
        // that accepted the call was reached with.
        let method = match req.presentation {
            flick_core::Presentation::Http => req.method.as_str(),
            flick_core::Presentation::Direct => "POST",
        };
        let send = async {
            let mut builder =
                hyper::Request::builder().method(method).uri(target).header("host", format!("127.0.0.1:{}", self.port));
            for (name, value) in &req.headers {
                if !HOP_BY_HOP.contains(&name.as_str()) && name != "content-length" {
                    builder = builder.header(name, value);
                }
            }
            let mut request = builder.body(Full::new(req.body.clone())).map_err(Proxy::BadRequest)?;
            // hyper hands a request back when not one byte of it was written
            // (the kept-alive connection had closed): then it is certain the
            // server never saw it, and a new connection may carry it.
            let mut fresh = false;
            let (resp, sender) = loop {
                let sender = if fresh { self.connect().await } else { self.sender().await };
                let mut sender = sender.map_err(Proxy::Connect)?;
                match sender.try_send_request(request).await {
                    Ok(resp) => break (resp, sender),
                    Err(mut e) => match e.take_message() {
                        Some(unsent) if !fresh => {
                            fresh = true;
                            request = unsent;
                        }
                        Some(_) => return Err(Proxy::Connect(e.into_error().to_string())),
                        None => return Err(Proxy::Exchange(e.into_error().to_string())),
                    },
                }
            };
            let status = resp.status().as_u16();
            // Names the server's `Connection` header lists are hop-by-hop too.
            let listed: Vec<String> = resp
                .headers()
                .get_all(hyper::header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
                .collect();
            let headers: Vec<(String, String)> = resp
                .headers()
                .iter()
                .filter(|(n, _)| {
                    !HOP_BY_HOP.contains(&n.as_str())
                        && n.as_str() != "content-length"
                        && !listed.iter().any(|l| l == n.as_str())
                })
                .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            let mut body = BytesMut::new();
            let mut incoming = resp.into_body();
            while let Some(frame) = incoming.frame().await {
                if let Some(chunk) = frame.map_err(|e| Proxy::Exchange(e.to_string()))?.data_ref() {
                    body.extend_from_slice(chunk);
                    if body.len() > self.max_response {
                        return Ok(None);
                    }
                }
            }
            self.idle.lock().push(sender);
            Ok::<_, Proxy>(Some(Response { status, headers, body: Bytes::from(body) }))
        };
        let (outcome, reusable) = match tokio::time::timeout_at(req.deadline, send).await {
            Err(_) => {
                self.process.kill();
                (Err(Failure::Timeout), false)
            }
            Ok(Ok(Some(resp))) => (Ok(resp), true),
            Ok(Ok(None)) => (
                Err(Failure::Function(FunctionError {
                    kind: "Function.ResponseSizeTooLarge".into(),
                    message: format!("the response is over the {}-byte limit", self.max_response),
                    trace: vec![],
                })),
                true,
            ),
            // flick could not form the request: that request fails, alone.
            Ok(Err(Proxy::BadRequest(e))) => (Err(Failure::BadRequest(format!("cannot forward it: {e}"))), true),
            // The server dropped this exchange but still takes connections:
            // it refused this request, not all of them.
            Ok(Err(Proxy::Exchange(e)))
                if self.process.exit(Duration::ZERO).await.is_none() && self.connect().await.is_ok() =>
            {
                let error = FunctionError {
                    kind: "Runtime.ConnectionClosed".into(),
                    message: format!("the function's server ended the exchange without an answer: {e}"),
                    trace: vec![],
                };
                (Err(Failure::Function(error)), true)
            }
            // No connection took the request: not one byte of it reached
            // the server, so another instance may run it. This one is dead
            // or does not take connections: it goes.
            Ok(Err(Proxy::Connect(e))) => {
                (Err(Failure::NotDelivered(format!("the function's server took no connection: {e}"))), false)
            }
            Ok(Err(Proxy::Exchange(e))) => match self.process.exit(Duration::from_millis(200)).await {
                Some(exit) if exit.oom => (Err(Failure::OutOfMemory), false),
                Some(exit) => (
                    Err(Failure::Function(FunctionError {
                        kind: "Runtime.ExitError".into(),
                        message: format!("server {exit} during the request"),
                        trace: vec![],
                    })),
                    false,
                ),
                None => (Err(Failure::Platform(format!("proxying to the function's server: {e}"))), false),
            },
        };
        if !reusable {
            self.process.kill();
        }
        // A server writes no end markers: lines read while the request was
        // in flight are its logs (best effort under concurrency).
        let logs = self.logs.finish(&req.id, false, Duration::ZERO).await;
        Invoked { outcome, logs, reusable, prewarmed: false, usage: None }
    }

    pub fn stop(&self) {
        self.process.kill();
    }
}

/// How proxying one request failed.
enum Proxy {
    /// The request cannot be expressed to the server.
    BadRequest(hyper::http::Error),
    /// No connection to the server took the request: nothing of it was sent.
    Connect(String),
    /// The connection broke during the exchange.
    Exchange(String),
}

fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// Whether a TCP socket listening on `port` (IPv4 or IPv6) is open in
/// `root` or one of its descendants, read from `/proc` (flick's own network
/// namespace is the host's, where host-network instances listen).
fn listener_held_by(root: u32, port: u16) -> bool {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl, local address:port, remote, state (0A = LISTEN), ..., inode (10th).
            let listening = f.get(3) == Some(&"0A");
            let on_port =
                f.get(1).and_then(|a| a.rsplit_once(':')).is_some_and(|(_, p)| u16::from_str_radix(p, 16) == Ok(port));
            if let (true, true, Some(inode)) = (listening, on_port, f.get(9)) {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    !inodes.is_empty()
        && descendants(root).into_iter().any(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten().any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|target| inodes.contains(target.to_string_lossy().as_ref()))
            })
        })
}

/// `root` and every process below it.
pub(crate) fn descendants(root: u32) -> Vec<u32> {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The parent pid is the second field after the `(comm)` one.
        let ppid = stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').nth(1)?.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = vec![root];
    let mut at = 0;
    while at < out.len() {
        out.extend(children.get(&out[at]).into_iter().flatten().copied());
        at += 1;
    }
    out
}
