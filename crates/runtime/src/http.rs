//! http instances: a long-lived HTTP server the function brings, listening
//! on `$PORT` (the contract of of-watchdog's http mode, Knative and Cloud
//! Run). flick starts it, waits until it accepts connections, and proxies
//! requests to it over the instance's own loopback — inside its network
//! namespace when it has one, so `network = "none"` holds for servers too.

use std::sync::Mutex;
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

type Sender = SendRequest<Full<Bytes>>;

pub struct HttpInstance {
    process: ProcessHandle,
    launcher: Launcher,
    network: flick_sandbox::Network,
    port: u16,
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
        let port = if own_loopback {
            NAMESPACED_PORT
        } else {
            free_port().map_err(|e| StartError::Platform(format!("no free port: {e}")))?
        };
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
            port,
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
                instance.idle.lock().unwrap().push(sender);
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

    /// A new HTTP/1.1 connection to the server.
    async fn connect(&self) -> Result<Sender, String> {
        let stream = self
            .launcher
            .sandbox()
            .connect(self.process.pid(), self.network, self.port)
            .await
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// An idle connection, or a new one.
    async fn sender(&self) -> Result<Sender, String> {
        loop {
            let Some(mut sender) = self.idle.lock().unwrap().pop() else { break };
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        self.connect().await
    }

    pub async fn invoke(&self, req: Request) -> Invoked {
        self.logs.begin(&req.id);
        let target = if req.query.is_empty() { req.path.clone() } else { format!("{}?{}", req.path, req.query) };
        let send = async {
            let mut builder = hyper::Request::builder()
                .method(req.method.as_str())
                .uri(target)
                .header("host", format!("127.0.0.1:{}", self.port));
            for (name, value) in &req.headers {
                if !HOP_BY_HOP.contains(&name.as_str()) && name != "content-length" {
                    builder = builder.header(name, value);
                }
            }
            let request = builder.body(Full::new(req.body.clone())).map_err(|e| format!("bad request: {e}"))?;
            let mut sender = self.sender().await?;
            let resp = sender.send_request(request).await.map_err(|e| e.to_string())?;
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
                if let Some(chunk) = frame.map_err(|e| e.to_string())?.data_ref() {
                    body.extend_from_slice(chunk);
                    if body.len() > self.max_response {
                        return Ok(None);
                    }
                }
            }
            self.idle.lock().unwrap().push(sender);
            Ok::<_, String>(Some(Response { status, headers, body: Bytes::from(body) }))
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
            Ok(Err(e)) => match self.process.exit(Duration::from_millis(200)).await {
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
        Invoked { outcome, logs, reusable, prewarmed: false }
    }

    pub fn stop(&self) {
        self.process.kill();
    }
}

fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}
