//! http instances: a long-lived HTTP server the function brings, listening
//! on `$PORT` (the contract of of-watchdog's http mode, Knative and Cloud
//! Run). flick starts it, waits until it accepts connections, and proxies
//! requests to it over loopback.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use flick_core::LogStream;
use flick_sandbox::ProcessSpec;
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

pub struct HttpInstance {
    process: ProcessHandle,
    base: String,
    client: reqwest::Client,
    logs: LogCollector,
    max_response: usize,
}

impl HttpInstance {
    pub async fn start(launcher: &Launcher, spec: &InstanceSpec, deadline: Instant) -> Result<Self, StartError> {
        let (program, args) = command_line(&spec.manifest.handler, &launcher.sandbox().code_path(&spec.code_dir))?;
        let port = free_port().map_err(|e| StartError::Platform(format!("no free port: {e}")))?;
        let mut env = launcher.env(spec);
        env.push(("PORT".into(), port.to_string()));
        let mut child = launcher
            .sandbox()
            .spawn(ProcessSpec {
                program,
                args,
                env,
                code_dir: Some(spec.code_dir.clone()),
                limits: launcher.limits(spec),
                protocol_fd: None,
                stdin: false,
                report_exit: false,
            })
            .map_err(|e| StartError::Init {
                error: FunctionError { kind: "Runtime.ExecError".into(), message: e.to_string(), trace: vec![] },
                logs: Default::default(),
            })?;
        let logs = LogCollector::new(launcher.config().log_limits);
        if let Some(out) = child.child.stdout.take() {
            logs.spawn_reader(LogStream::Stdout, out);
        }
        if let Some(err) = child.child.stderr.take() {
            logs.spawn_reader(LogStream::Stderr, err);
        }
        let process = ProcessHandle::new(child);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(exit) = process.exit(Duration::ZERO).await {
                tokio::time::sleep(Duration::from_millis(20)).await;
                return Err(StartError::Init {
                    error: FunctionError {
                        kind: "Runtime.ExitError".into(),
                        message: format!("server {exit} before it listened on $PORT ({port})"),
                        trace: vec![],
                    },
                    logs: logs.take_idle(),
                });
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if Instant::now() + pause > deadline {
                process.kill();
                return Err(StartError::Timeout { logs: logs.take_idle() });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(5));
        }
        Ok(Self {
            process,
            base: format!("http://{addr}"),
            client: launcher.http_client.clone(),
            logs,
            max_response: launcher.config().max_response_bytes,
        })
    }

    pub async fn invoke(&self, req: Request) -> Invoked {
        self.logs.begin(&req.id);
        let url = if req.query.is_empty() {
            format!("{}{}", self.base, req.path)
        } else {
            format!("{}{}?{}", self.base, req.path, req.query)
        };
        let method = reqwest::Method::from_bytes(req.method.as_bytes()).unwrap_or(reqwest::Method::POST);
        let mut builder = self.client.request(method, url);
        for (name, value) in &req.headers {
            if !HOP_BY_HOP.contains(&name.as_str()) && name != "content-length" {
                builder = builder.header(name, value);
            }
        }
        let send = async {
            let mut resp = builder.body(req.body.clone()).send().await?;
            let status = resp.status().as_u16();
            let headers: Vec<(String, String)> = resp
                .headers()
                .iter()
                .filter(|(n, _)| !HOP_BY_HOP.contains(&n.as_str()) && n.as_str() != "content-length")
                .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            let mut body = BytesMut::new();
            while let Some(chunk) = resp.chunk().await? {
                body.extend_from_slice(&chunk);
                if body.len() > self.max_response {
                    return Ok(None);
                }
            }
            Ok::<_, reqwest::Error>(Some(Response { status, headers, body: Bytes::from(body) }))
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
        Invoked { outcome, logs, reusable }
    }

    pub fn stop(&self) {
        self.process.kill();
    }
}

fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}
