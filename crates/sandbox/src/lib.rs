//! Starts instance processes inside their sandbox.
//!
//! Every process flick runs for a function goes through [`Sandbox::spawn`],
//! so isolation is decided in exactly one place. A sandboxed instance gets:
//! - its own mount, pid, ipc and uts namespaces, and a network namespace
//!   with only loopback unless its manifest says `network = "host"`;
//! - a fresh root: host runtimes read-only, its code read-only at
//!   `/var/task`, a private size-capped `/tmp`, its own `/proc` ([`mounts`]);
//! - a cgroup with memory, pids and CPU limits ([`cgroup`]);
//! - an unprivileged uid/gid, no capabilities, `no_new_privs`, a seccomp
//!   filter ([`seccomp`]), no core dumps, a bounded number of open files;
//! - death with flick (`PR_SET_PDEATHSIG`), a session of its own (no
//!   controlling terminal; its process group can be killed at once), and
//!   none of the descriptors flick inherited.
//!
//! This is the only crate allowed `unsafe`: the code between `fork` and
//! `exec` ([`child`]) has to call the kernel directly.
#![allow(unsafe_code)]

mod adopt;
mod attach;
mod cgroup;
mod child;
pub mod doctor;
mod dynmods;
mod kernel;
pub mod mounts;
mod netns;
pub mod seccomp;
mod spawner;
mod uids;

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::process::{Child, Command};

pub use adopt::{Adopted, exited as pidfd_exited, kill as kill_pidfd, send_with_fds};
pub use cgroup::{Cgroup, CgroupLimits, CpuLimit, Hierarchy, Meter, Usage};

/// The file descriptor number the protocol channel gets in the child.
pub const PROTOCOL_FD: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot start `{program}`: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("cannot create the instance cgroup: {0}")]
    Cgroup(std::io::Error),
    #[error("sandbox unavailable: {0}")]
    Unavailable(String),
    #[error("cannot start `{program}`: the spawner thread is not running")]
    SpawnerGone { program: String },
    #[error("cannot take over a forked instance: {0}")]
    Adopt(String),
}

/// How isolated instances are; from flick's config, fixed at start-up.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Names this flick's cgroups (`flick-<scope>`); unique per data dir.
    pub scope: String,
    /// Host dir with the language bootstraps, mounted at `/var/runtime`.
    pub runtime_dir: PathBuf,
    /// An empty host dir used as the mount point of each instance's root.
    pub rootfs_dir: PathBuf,
    /// Extra host paths shared read-only (e.g. the Python prefix).
    pub extra_ro: Vec<PathBuf>,
    /// The uid/gid of [`Identity::Shared`] processes (the doctor's probe).
    pub uid: u32,
    pub gid: u32,
    /// Functions' uids (and gids) come from here, one per function.
    pub uid_range: std::ops::RangeInclusive<u32>,
    pub pids_max: u32,
    pub nofile: u64,
    /// The CPU cap of [`CpuLimit::Hard`] (1.0 = one core).
    pub cpus: f64,
    /// Weights only (the default) or weights and a hard quota.
    pub cpu_limit: CpuLimit,
    /// Ask the kernel for cheap moves into cgroups (`favordynmods`), a
    /// host-wide setting ([`dynmods`]'s comment says what it trades).
    pub favor_dynmods: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// The host's network (and loopback).
    Host,
    /// A private namespace with only its own loopback.
    None,
}

/// Per-instance resources.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub memory: u64,
    pub tmp_size: u64,
    pub network: Network,
    pub identity: Identity,
}

/// Whom an instance runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The configured shared uid (`SandboxConfig::uid`): for processes that
    /// belong to no function.
    Shared,
    /// A function's own uid and gid ([`Sandbox::identity_for`]).
    Function(u32),
    /// Not known yet: a stem cell. A bootstrap stem stays uid 0 with only
    /// CAP_SETUID and CAP_SETGID until its bootstrap switches to the uid of
    /// the `specialise` frame; a waiting exec sandbox switches to the
    /// identity of its [`go_message`] before it execs.
    Deferred,
}

impl Identity {
    /// The uid a go message carries.
    fn encode(self) -> u32 {
        match self {
            Self::Function(uid) if uid != 0 => uid,
            _ => u32::MAX,
        }
    }

    /// Never `Deferred` and never uid 0: a message cannot grant privilege.
    fn decode(raw: u32) -> Self {
        if raw == 0 || raw == u32::MAX { Self::Shared } else { Self::Function(raw) }
    }
}

/// What to run. The environment is exactly `env` plus a minimal base
/// (`PATH`, `HOME`, `LANG`, `TMPDIR`): nothing of flick's own environment
/// (tokens, database URLs) leaks into functions.
#[derive(Debug)]
pub struct ProcessSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    /// Host path of the function's code: the working directory, mounted
    /// read-only at [`mounts::CODE`] when isolated. `None` for a stem cell,
    /// whose code is attached later ([`Sandbox::attach_code`]).
    pub code_dir: Option<PathBuf>,
    /// Becomes fd 3 in the child (the bootstrap protocol channel).
    pub protocol_fd: Option<OwnedFd>,
    pub stdin: bool,
    pub limits: Limits,
    /// Report the program's exit on [`Spawned::exit_report`] as soon as it
    /// happens, before the sandbox is torn down (one-shot processes).
    pub report_exit: bool,
    /// Set up the whole sandbox, then wait: the program to run arrives
    /// later on [`Spawned::go`] (see [`go_message`]); `program` and `args`
    /// are ignored. Isolated and with `report_exit` only.
    pub wait_for_program: bool,
}

/// The environment every sandboxed program starts from.
pub const BASE_ENV: [(&str, &str); 4] =
    [("PATH", "/usr/local/bin:/usr/bin:/bin"), ("HOME", "/tmp"), ("TMPDIR", "/tmp"), ("LANG", "C.UTF-8")];

/// Largest program message a waiting sandbox accepts (argv and env).
pub const MAX_GO_MESSAGE: usize = 32 << 10;

/// The message that tells a waiting sandbox what to run: a length, then
/// the uid to run as (4 bytes), NUL-terminated argv strings, an empty string, NUL-terminated `K=V`
/// environment strings (after [`BASE_ENV`]), an empty string. `program`
/// must be an absolute path. `None` if it would be too large.
pub fn go_message(identity: Identity, program: &Path, args: &[OsString], env: &[(String, String)]) -> Option<Vec<u8>> {
    let mut body = identity.encode().to_le_bytes().to_vec();
    for a in std::iter::once(program.as_os_str()).chain(args.iter().map(|a| a.as_os_str())) {
        if a.as_bytes().contains(&0) {
            return None;
        }
        body.extend_from_slice(a.as_bytes());
        body.push(0);
    }
    body.push(0);
    let base = BASE_ENV.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    for (k, v) in base.chain(env.iter().cloned()) {
        if k.contains('\0') || v.contains('\0') {
            return None;
        }
        body.extend_from_slice(format!("{k}={v}").as_bytes());
        body.push(0);
    }
    body.push(0);
    if body.len() > MAX_GO_MESSAGE {
        return None;
    }
    let mut msg = (body.len() as u32).to_le_bytes().to_vec();
    msg.extend_from_slice(&body);
    Some(msg)
}

/// A started process and the cgroup it runs in (to inspect and remove
/// once it has exited).
#[derive(Debug)]
pub struct Spawned {
    pub child: Child,
    pub cgroup: Option<Cgroup>,
    /// With `report_exit` (isolated only): yields the program's raw wait
    /// status (4 bytes, native endian) the moment it exits.
    pub exit_report: Option<OwnedFd>,
    /// With `wait_for_program`: where the [`go_message`] goes.
    pub go: Option<OwnedFd>,
}

#[derive(Debug)]
struct Isolated {
    config: SandboxConfig,
    cgroups: Hierarchy,
    filters: Arc<seccomp::Policy>,
    uids: uids::Uids,
    next: AtomicU64,
}

/// Spawns processes, isolated or (only when asked for explicitly) not.
#[derive(Clone, Debug)]
pub struct Sandbox {
    isolated: Option<Arc<Isolated>>,
    runtime_dir: PathBuf,
    /// Every child is forked on this thread ([`spawner`]).
    spawner: Arc<spawner::Spawner>,
    /// Sockets inside instances' namespaces are made on this thread
    /// ([`netns`]); isolated sandboxes only.
    sockets: Option<Arc<netns::SocketMaker>>,
}

pub use netns::Netns;

/// The network an instance's connections go through: its own namespace,
/// held open (so a recycled pid can never redirect them), or the host's.
#[derive(Clone, Debug)]
pub enum InstanceNet {
    Host,
    Own(Netns),
}

impl Sandbox {
    /// A sandbox with every isolation feature; fails if the host lacks one
    /// (see [`doctor`]). Sweeps cgroups a previous run of this scope left.
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        if !seccomp::supported() {
            return Err(SandboxError::Unavailable("no seccomp filter for this CPU architecture".into()));
        }
        std::fs::create_dir_all(&config.rootfs_dir)
            .map_err(|e| SandboxError::Unavailable(format!("creating {}: {e}", config.rootfs_dir.display())))?;
        if config.favor_dynmods {
            let scratch = config.rootfs_dir.parent().unwrap_or(&config.rootfs_dir);
            match dynmods::favor(scratch) {
                Ok(dynmods::Favored::Already) => tracing::debug!("cgroup moves already favoured (favordynmods)"),
                Ok(done) => tracing::info!(
                    ?done,
                    "cgroup2 favordynmods set: moving an instance into its cgroups no longer waits for an RCU grace period (host-wide; `cgroup_favordynmods = false` to leave the host alone)"
                ),
                Err(e) => tracing::warn!(
                    error = %e,
                    "could not set cgroup2 favordynmods: each instance start pays ~10-25 ms per cgroup it joins"
                ),
            }
        }
        let cgroups = Hierarchy::detect(&config.scope).map_err(SandboxError::Unavailable)?;
        let swept = cgroups.sweep();
        if swept > 0 {
            tracing::info!(swept, "removed instance cgroups left by a previous run");
        }
        let runtime_dir = config.runtime_dir.clone();
        let filters = Arc::new(seccomp::Policy::compile().map_err(|e| SandboxError::Unavailable(e.to_string()))?);
        if config.uid_range.is_empty() || *config.uid_range.start() == 0 {
            return Err(SandboxError::Unavailable(format!("bad uid range {:?}", config.uid_range)));
        }
        let uids = uids::Uids::new(&config.scope, config.uid_range.clone());
        let isolated = Isolated { config, cgroups, filters, uids, next: AtomicU64::new(0) };
        let sockets = netns::SocketMaker::start()
            .map_err(|e| SandboxError::Unavailable(format!("starting the namespace socket thread: {e}")))?;
        Ok(Self {
            isolated: Some(Arc::new(isolated)),
            runtime_dir,
            spawner: start_spawner()?,
            sockets: Some(Arc::new(sockets)),
        })
    }

    /// No isolation at all: processes run as flick's user on the host.
    /// Only for hosts without namespaces, behind a loudly named flag.
    pub fn unisolated(runtime_dir: PathBuf) -> Result<Self, SandboxError> {
        Ok(Self { isolated: None, runtime_dir, spawner: start_spawner()?, sockets: None })
    }

    /// Removes every cgroup of this sandbox's scope, including the scope
    /// itself (for one-off sandboxes such as `flick doctor`'s).
    pub fn remove_scope(&self) {
        if let Some(iso) = &self.isolated {
            iso.cgroups.sweep();
            iso.cgroups.remove_scope();
        }
    }

    /// The identity instances of `function` run as: its own uid, or the
    /// shared one when unisolated or when the uid range is used up.
    pub fn identity_for(&self, function: &str) -> Identity {
        let Some(iso) = &self.isolated else { return Identity::Shared };
        match iso.uids.uid_for(function) {
            Some(uid) => Identity::Function(uid),
            None => {
                tracing::warn!(function, range = ?iso.uids.range(), "uid range used up: the function shares the fallback uid");
                Identity::Shared
            }
        }
    }

    /// How instances' uids are chosen, for `flick doctor` and the logs.
    pub fn uid_scheme(&self) -> String {
        match &self.isolated {
            None => "none: functions run as flick's own user".into(),
            Some(iso) => format!(
                "one uid per function from {}-{} (derived from the data dir and the function name; gid = uid), \
                 no user namespace; processes of no function run as {}",
                iso.uids.range().start(),
                iso.uids.range().end(),
                iso.config.uid
            ),
        }
    }

    pub fn is_isolated(&self) -> bool {
        self.isolated.is_some()
    }

    /// The uid and gid a process of `identity` runs as: what a stem cell's
    /// bootstrap must switch to when it takes on a function of that
    /// identity. `None` unisolated (processes keep flick's own user) and for
    /// `Deferred`, which names no one.
    pub fn credentials(&self, identity: Identity) -> Option<(u32, u32)> {
        let iso = self.isolated.as_ref()?;
        match identity {
            Identity::Function(uid) => Some((uid, uid)),
            Identity::Shared => Some((iso.config.uid, iso.config.gid)),
            Identity::Deferred => None,
        }
    }

    /// Mounts `code_dir` into the stem cell whose outer process is `pid`
    /// (read-only at [`mounts::CODE`]). Unisolated, there is nothing to
    /// mount: the stem changes into the host directory itself.
    pub async fn attach_code(&self, pid: u32, code_dir: &Path) -> std::io::Result<()> {
        if !self.is_isolated() {
            return Ok(());
        }
        let code_dir = code_dir.to_path_buf();
        tokio::task::spawn_blocking(move || attach::attach_code(pid, &code_dir)).await.map_err(std::io::Error::other)?
    }

    /// Takes over the process that the template `template` (a spawn's pid)
    /// forked and that calls itself `ns_pid`: isolated, it joins a cgroup
    /// of its own with `memory` as its limit (the template's limits and
    /// counters stay the template's). Blocking file work runs off the
    /// executor.
    pub async fn adopt_fork(&self, template: u32, ns_pid: u32, memory: u64) -> Result<Adopted, SandboxError> {
        let iso = self.isolated.clone();
        let adopted = tokio::task::spawn_blocking(move || {
            let fork = adopt::find_fork(template, ns_pid, iso.is_some())?;
            let cgroup = match &iso {
                None => None,
                Some(iso) => {
                    let cfg = &iso.config;
                    let name = format!("f{}-{}", std::process::id(), iso.next.fetch_add(1, Ordering::Relaxed));
                    let limits = CgroupLimits { memory, pids: cfg.pids_max, cpus: cfg.cpus, cpu_limit: cfg.cpu_limit };
                    Some(iso.cgroups.create(&name, limits)?)
                }
            };
            adopt::adopt(fork, ns_pid, cgroup)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        adopted.map_err(|e| SandboxError::Adopt(format!("fork {ns_pid} of template {template}: {e}")))
    }

    /// Connects to `127.0.0.1:port` as seen by the instance whose outer
    /// process is `pid`: inside its network namespace when it has its own.
    pub async fn connect(&self, pid: u32, network: Network, port: u16) -> std::io::Result<tokio::net::TcpStream> {
        let net = self.instance_net(pid, network)?;
        self.connect_in(&net, port).await
    }

    /// The network the instance whose outer process is `pid` connects
    /// through, looked up once: keep it and connect with
    /// [`Sandbox::connect_in`] as often as needed.
    pub fn instance_net(&self, pid: u32, network: Network) -> std::io::Result<InstanceNet> {
        if !self.is_isolated() || network == Network::Host {
            return Ok(InstanceNet::Host);
        }
        Ok(InstanceNet::Own(Netns::of(attach::inner_pid(pid)?)?))
    }

    /// Connects to `127.0.0.1:port` in `net`. In an instance's own
    /// namespace the socket is made there by the namespace thread
    /// ([`netns`]) and connected here, like any other.
    pub async fn connect_in(&self, net: &InstanceNet, port: u16) -> std::io::Result<tokio::net::TcpStream> {
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        match (net, &self.sockets) {
            (InstanceNet::Host, _) => tokio::net::TcpStream::connect(loopback).await,
            (InstanceNet::Own(ns), Some(sockets)) => sockets.tcp_socket(ns).await?.connect(loopback).await,
            (InstanceNet::Own(_), None) => {
                Err(std::io::Error::other("an unisolated sandbox has no instance namespaces"))
            }
        }
    }

    /// A listener on `127.0.0.1:port` as seen by the instance whose outer
    /// process is `pid`, created inside its own network namespace (only its
    /// processes can connect). The sandbox must have its own network
    /// (isolated, [`Network::None`]); it may still be waiting for its
    /// program, so the listener is there before the program starts.
    pub async fn listen_inside(&self, pid: u32, port: u16) -> std::io::Result<tokio::net::TcpListener> {
        if !self.is_isolated() {
            return Err(std::io::Error::other("an unisolated instance has no network namespace of its own"));
        }
        let listener = tokio::task::spawn_blocking(move || attach::listen_inside(pid, port))
            .await
            .map_err(std::io::Error::other)??;
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener)
    }

    /// Where an instance sees its code.
    pub fn code_path(&self, host: &Path) -> PathBuf {
        if self.is_isolated() { PathBuf::from(mounts::CODE) } else { host.to_path_buf() }
    }

    /// Where an instance sees the bootstraps.
    pub fn runtime_path(&self) -> PathBuf {
        if self.is_isolated() { PathBuf::from(mounts::RUNTIME) } else { self.runtime_dir.clone() }
    }

    /// Starts `spec` with stdout and stderr piped (they are the function's
    /// logs or response) and stdin piped only if asked. The fork happens on
    /// the spawner thread ([`spawner`]); this waits for it without
    /// blocking the caller's thread. A caller that stops waiting leaves
    /// nothing behind: the process is killed and its cgroup removed.
    pub async fn spawn(&self, spec: ProcessSpec) -> Result<Spawned, SandboxError> {
        self.spawn_on_thread(spec, false).await
    }

    /// Starts a deploy-time dependency installer (`pip`, `npm`): the same
    /// sandbox as an instance's — own namespaces, root, cgroup, unprivileged
    /// uid, seccomp, death with flick, forked on the spawner thread — except
    /// that the package (`spec.code_dir`) is mounted read-write at
    /// [`mounts::CODE`]. It must be writable by [`Sandbox::ids`] (hand it
    /// over before, take it back after). Unisolated, it runs on the host
    /// like any process.
    pub async fn spawn_install(&self, spec: ProcessSpec) -> Result<Spawned, SandboxError> {
        if spec.code_dir.is_none() || spec.wait_for_program {
            return Err(SandboxError::Unavailable("an install needs a package directory and a program".into()));
        }
        self.spawn_on_thread(spec, true).await
    }

    /// The uid and gid sandboxed processes run as; `None` unisolated.
    pub fn ids(&self) -> Option<(u32, u32)> {
        self.isolated.as_ref().map(|iso| (iso.config.uid, iso.config.gid))
    }

    async fn spawn_on_thread(&self, spec: ProcessSpec, code_writable: bool) -> Result<Spawned, SandboxError> {
        let program = spec.program.display().to_string();
        let this = self.clone();
        self.spawner
            .run(
                move || this.spawn_here(spec, code_writable),
                |result| {
                    if let Ok(spawned) = result {
                        discard(spawned)
                    }
                },
            )
            .await
            .map_err(|_| SandboxError::SpawnerGone { program })?
    }

    /// The fork itself; blocks until the child has exec'd (or, waiting for
    /// its program, has set up its sandbox). Runs on the spawner thread.
    fn spawn_here(&self, spec: ProcessSpec, code_writable: bool) -> Result<Spawned, SandboxError> {
        if spec.wait_for_program && !(self.is_isolated() && spec.report_exit) {
            return Err(SandboxError::Unavailable("waiting for a program needs an isolated, reporting sandbox".into()));
        }
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .env_clear()
            .envs(BASE_ENV)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(if spec.stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // No process_group(0): the child calls setsid(), which makes it
            // a group leader too (and fails for one that already is).
            .kill_on_drop(true);
        let mut cgroup = None;
        let mut procs_fds = Vec::new();
        let (mut exit_report, mut exit_write) = (None, None);
        let (mut go_read, mut go) = (None, None);
        let setup = match &self.isolated {
            None => {
                cmd.current_dir(spec.code_dir.as_deref().unwrap_or(&self.runtime_dir));
                child::Setup {
                    parent_pid: std::process::id() as libc::pid_t,
                    cgroup_procs: vec![],
                    protocol_fd: spec.protocol_fd.as_ref().map(|fd| fd.as_raw_fd()),
                    nofile: 4096,
                    isolate: None,
                }
            }
            Some(iso) => {
                let cfg = &iso.config;
                let name = format!("i{}-{}", std::process::id(), iso.next.fetch_add(1, Ordering::Relaxed));
                let limits = CgroupLimits {
                    memory: spec.limits.memory,
                    pids: cfg.pids_max,
                    cpus: cfg.cpus,
                    cpu_limit: cfg.cpu_limit,
                };
                let (cg, fds) = iso.cgroups.create(&name, limits).map_err(SandboxError::Cgroup)?;
                cgroup = Some(cg);
                procs_fds = fds;
                if spec.report_exit {
                    let (r, w) = std::io::pipe()
                        .map_err(|e| SandboxError::Spawn { program: spec.program.display().to_string(), source: e })?;
                    exit_report = Some(OwnedFd::from(r));
                    exit_write = Some(OwnedFd::from(w));
                }
                if spec.wait_for_program {
                    let (r, w) = std::io::pipe()
                        .map_err(|e| SandboxError::Spawn { program: spec.program.display().to_string(), source: e })?;
                    go_read = Some(OwnedFd::from(r));
                    go = Some(OwnedFd::from(w));
                }
                let plan = mounts::plan(&mounts::Inputs {
                    root: &cfg.rootfs_dir,
                    code: spec.code_dir.as_deref(),
                    code_writable,
                    runtime: &cfg.runtime_dir,
                    extra_ro: &cfg.extra_ro,
                    tmp_size: spec.limits.tmp_size,
                });
                child::Setup {
                    parent_pid: std::process::id() as libc::pid_t,
                    cgroup_procs: procs_fds.iter().map(|fd| fd.as_raw_fd()).collect(),
                    protocol_fd: spec.protocol_fd.as_ref().map(|fd| fd.as_raw_fd()),
                    nofile: cfg.nofile,
                    isolate: Some(child::Isolation {
                        plan,
                        hostname: b"flick",
                        new_net: spec.limits.network == Network::None,
                        shared_uid: cfg.uid,
                        shared_gid: cfg.gid,
                        identity: spec.limits.identity,
                        code_dir: CString::new(mounts::CODE).unwrap_or_default(),
                        filters: iso.filters.clone(),
                        exit_fd: exit_write.as_ref().map(|fd| fd.as_raw_fd()),
                        go_fd: go_read.as_ref().map(|fd| fd.as_raw_fd()),
                    }),
                }
            }
        };
        // SAFETY: `child::run` only makes async-signal-safe system calls on
        // data prepared above, as required between fork and exec.
        unsafe {
            cmd.pre_exec(move || child::run(&setup));
        }
        let spawned = cmd.spawn();
        // The child has its copies; ours must close so EOF is seen when it exits.
        drop(procs_fds);
        drop(spec.protocol_fd);
        drop(exit_write);
        drop(go_read);
        match spawned {
            Ok(child) => Ok(Spawned { child, cgroup, exit_report, go }),
            Err(source) => {
                if let Some(cg) = cgroup {
                    cg.destroy();
                }
                Err(SandboxError::Spawn { program: spec.program.display().to_string(), source })
            }
        }
    }
}

fn start_spawner() -> Result<Arc<spawner::Spawner>, SandboxError> {
    spawner::Spawner::start()
        .map(Arc::new)
        .map_err(|e| SandboxError::Unavailable(format!("cannot start the spawner thread: {e}")))
}

/// A spawned process nobody claimed: kill it, reap it, remove its cgroup.
fn discard(spawned: Spawned) {
    let Spawned { mut child, cgroup, .. } = spawned;
    let _ = child.start_kill();
    tokio::spawn(async move {
        let _ = child.wait().await;
        if let Some(cg) = cgroup {
            let _ = tokio::task::spawn_blocking(move || cg.destroy()).await;
        }
    });
}

/// Kills a whole instance: its process group, so helpers the function
/// forked go too.
pub fn kill_group(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions; a negative pid
    // addresses the process group the child leads (it called setsid()).
    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
    }
}

fn kill_pid(pid: i32) {
    // SAFETY: as above, for one process.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// A short, stable name for a data dir, to scope cgroups by.
pub fn scope_for(data_dir: &Path) -> String {
    // FNV-1a: stable across builds and runs, no dependency.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data_dir.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}
