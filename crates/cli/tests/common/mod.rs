//! Test harness: starts a real `flick up` on a free port with its own data
//! dir, and talks to it the way users do — over HTTP and through the CLI.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_flick");

pub struct Flick {
    pub dir: tempfile::TempDir,
    pub base: String,
    pub key: String,
    child: Option<Child>,
    http: reqwest::blocking::Client,
}

/// An HTTP answer, read fully.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_string())
    }

    pub fn activation_id(&self) -> String {
        self.header("x-flick-activation-id").expect("an x-flick-activation-id header")
    }
}

impl Flick {
    /// Starts `flick up` with extra arguments and an optional config file.
    pub fn start_with(args: &[&str], config: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        if let Some(text) = config {
            std::fs::write(dir.path().join("config.toml"), text).unwrap();
        }
        Self::start_in(dir, args)
    }

    pub fn start() -> Self {
        Self::start_with(&[], None)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs the `flick` CLI against this server, as a user with this data dir would.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("FLICK_DATA_DIR", self.dir.path())
            .env_remove("FLICK_URL")
            .env_remove("FLICK_TOKEN")
            .output()
            .expect("running the flick CLI")
    }

    /// Runs the CLI and insists it succeeded; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "flick {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn request(&self, method: &str, path: &str, body: impl Into<Vec<u8>>, auth: bool) -> Reply {
        let mut rb = self
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), format!("{}{path}", self.base))
            .body(body.into());
        if auth {
            rb = rb.bearer_auth(&self.key);
        }
        let resp = rb.send().unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        Reply { status: resp.status().as_u16(), headers: resp.headers().clone(), body: resp.bytes().unwrap().to_vec() }
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, Vec::new(), true)
    }

    pub fn get_anon(&self, path: &str) -> Reply {
        self.request("GET", path, Vec::new(), false)
    }

    /// `POST /fn/{name}` with the admin key.
    pub fn invoke(&self, name: &str, body: &str) -> Reply {
        self.request("POST", &format!("/fn/{name}"), body.as_bytes().to_vec(), true)
    }

    /// Deploys a directory through the CLI; returns its stdout.
    pub fn deploy(&self, dir: &Path) -> String {
        self.cli_ok(&["deploy", dir.to_str().unwrap()])
    }

    /// Writes a function directory under this test's temp dir and deploys it.
    pub fn deploy_files(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = write_function(self.dir.path(), name, files);
        self.deploy(&dir);
        dir
    }

    /// The activation record of `id`.
    pub fn activation(&self, id: &str) -> serde_json::Value {
        let r = self.get(&format!("/v1/activations/{id}"));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// Polls `check` until it holds or `timeout` passes (for things that
    /// happen in the background, like scale to zero).
    pub fn wait_until(&self, timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if check() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        check()
    }

    /// Running instances of a function, from `/v1/instances`.
    pub fn instances(&self, name: &str) -> u64 {
        self.pool_stat(name, "instances")
    }

    /// One figure (`instances`, `starting`, `inflight`, `waiting`) of a
    /// function's pools, summed over its revisions, from `/v1/instances`.
    pub fn pool_stat(&self, name: &str, field: &str) -> u64 {
        let v = self.get("/v1/instances").json();
        v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["function"] == name)
            .map(|i| i[field].as_u64().unwrap())
            .sum()
    }

    /// Writes a python3 function (`main.handler` in `code`, `extra`
    /// manifest lines) and deploys it.
    pub fn deploy_py(&self, name: &str, extra: &str, code: &str) -> PathBuf {
        let toml = manifest(name, "python3", "main.handler", extra);
        self.deploy_files(name, &[("flick.toml", &toml), ("main.py", code)])
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("flick is running");
        unsafe_free_sigterm(child.id());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("flick did not stop within 30s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Flick {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe_free_sigterm(child.id());
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn unsafe_free_sigterm(pid: u32) {
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
}

/// reqwest is built with rustls but no default crypto provider (see the
/// workspace Cargo.toml): a process must install one before it builds any
/// client, or the build panics. Every test starts flick first, so this runs
/// before the tests' own clients are made.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Writes `files` into `<parent>/<name>/` and returns that directory.
pub fn write_function(parent: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = parent.join("src").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, text) in files {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
    dir
}

/// A minimal manifest.
pub fn manifest(name: &str, runtime: &str, handler: &str, extra: &str) -> String {
    format!("name = \"{name}\"\nruntime = \"{runtime}\"\nhandler = \"{handler}\"\n{extra}")
}

// --- helpers added for lifecycle.rs / bad_input.rs -------------------------

impl Flick {
    /// Starts `flick up` on an existing data dir (e.g. one a stopped flick
    /// left behind, see [`Flick::into_dir`]), with extra arguments.
    pub fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Self {
        Self::start_in_via(dir, args, &[])
    }

    /// Like [`Flick::start_in`], but `flick up ...` is run as the trailing
    /// arguments of `wrapper` (which must exec it or forward SIGTERM to
    /// it): to start flick the way a shell or supervisor might, with extra
    /// descriptors or under a terminal.
    pub fn start_in_via(dir: tempfile::TempDir, args: &[&str], wrapper: &[&str]) -> Self {
        // A stale address file would make us talk to a flick that is gone.
        let addr_file = dir.path().join("flick.addr");
        let _ = std::fs::remove_file(&addr_file);
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = command
            .arg("up")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(args)
            .env("FLICK_LOG", "warn")
            .env_remove("FLICK_URL")
            .env_remove("FLICK_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting flick up");
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file)
                && !a.is_empty()
            {
                break a;
            }
            assert!(Instant::now() < deadline, "flick up did not start within 30s");
            std::thread::sleep(Duration::from_millis(20));
        };
        let key = std::fs::read_to_string(dir.path().join("admin.key")).unwrap().trim().to_string();
        install_tls_provider();
        let http = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().unwrap();
        let flick = Flick { dir, base: format!("http://{}", addr.trim()), key, child: Some(child), http };
        let health = flick.get_anon("/healthz");
        assert_eq!(health.status, 200, "{}", health.text());
        flick
    }

    /// The dashboard's own address (`http://host:port`), from the file
    /// `flick up` writes beside flick.addr.
    pub fn ui_base(&self) -> String {
        let file = self.dir.path().join("flick.ui-addr");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(a) = std::fs::read_to_string(&file)
                && !a.is_empty()
            {
                return format!("http://{}", a.trim());
            }
            assert!(Instant::now() < deadline, "flick up wrote no {}", file.display());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops flick (if it still runs) and hands back its data dir, for a
    /// restart with [`Flick::start_in`].
    pub fn into_dir(mut self) -> tempfile::TempDir {
        if self.child.is_some() {
            let status = self.stop();
            assert!(status.success(), "flick exited with {status}");
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }
}

// --- helpers for sandbox.rs -------------------------------------------------

impl Flick {
    /// The pid of the `flick up` process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("flick is running").id()
    }

    /// Kills flick with SIGKILL (no clean-up at all) and hands back its data dir.
    pub fn kill9(mut self) -> tempfile::TempDir {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL flick");
            child.wait().expect("reap flick");
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }
}

/// The first `program` on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.is_file())
}

/// A one-connection HTTP server (a callback's receiver): reads one request,
/// answers it with `answer` (a whole response) and returns the request head
/// (lower case) and body.
pub fn receive_one(listener: &std::net::TcpListener, answer: &[u8]) -> (String, Vec<u8>) {
    use std::io::{BufRead, Read, Write};
    let (stream, _) = listener.accept().unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let len: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())).unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).unwrap();
    reader.into_inner().write_all(answer).unwrap();
    (head, body)
}
