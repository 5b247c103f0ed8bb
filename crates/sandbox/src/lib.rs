//! Starts instance processes inside their isolation boundary.
//!
//! Every process flick runs on behalf of a function goes through
//! [`Sandbox::spawn`], so isolation is decided in exactly one place. Today the
//! boundary is process-level: a fresh environment, its own process group (so
//! a whole tree can be killed at once), death with its parent (no orphans
//! after flick is killed) and no core dumps. Namespaces, cgroups and seccomp
//! slot in here without changing callers.
//!
//! This is the only crate allowed `unsafe`: the code between `fork` and
//! `exec` has to call the kernel directly.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::{Child, Command};

/// The file descriptor number the protocol channel gets in the child.
pub const PROTOCOL_FD: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot start `{program}`: {source}")]
    Spawn { program: String, source: std::io::Error },
}

/// What to run. The environment is exactly `env` plus a minimal base
/// (`PATH`, `HOME`, `LANG`): nothing of flick's own environment (tokens,
/// database URLs) leaks into functions.
#[derive(Debug)]
pub struct ProcessSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// Becomes fd 3 in the child (the bootstrap protocol channel).
    pub protocol_fd: Option<OwnedFd>,
    pub stdin: bool,
}

/// Spawns processes with the isolation this host supports.
#[derive(Clone, Debug, Default)]
pub struct Sandbox {}

impl Sandbox {
    pub fn new() -> Self {
        Self {}
    }

    /// Starts `spec` with stdout and stderr piped (they are the function's
    /// logs or response) and stdin piped only if asked.
    pub fn spawn(&self, spec: ProcessSpec) -> Result<Child, SandboxError> {
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .current_dir(&spec.cwd)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", "/tmp")
            .env("LANG", "C.UTF-8")
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(if spec.stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let protocol_fd = spec.protocol_fd.as_ref().map(|fd| fd.as_raw_fd());
        // SAFETY: the closure runs in the child between fork and exec, where
        // only async-signal-safe calls are allowed; prctl, setrlimit, dup2 and
        // getppid are, and the closure allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                // Die with flick, so a SIGKILLed flick leaves no instances behind.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() == 1 {
                    return Err(std::io::Error::other("parent exited"));
                }
                let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                if let Some(fd) = protocol_fd {
                    // dup2 clears FD_CLOEXEC on the new descriptor, so fd 3
                    // survives exec while the original is closed by it.
                    if libc::dup2(fd, PROTOCOL_FD) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|source| SandboxError::Spawn { program: spec.program.display().to_string(), source })?;
        // The child has its copy; ours must close so EOF is seen when it exits.
        drop(spec.protocol_fd);
        Ok(child)
    }
}

/// Kills a whole instance: its process group, so helpers the function
/// forked go too.
pub fn kill_group(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions; a negative pid
    // addresses the process group the child leads (process_group(0)).
    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
    }
}
