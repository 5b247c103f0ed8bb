//! Stem cells: a few started, sandboxed, function-less instances per
//! runtime and network kind, so a cold start pays neither interpreter
//! start-up nor sandbox set-up. Each is used once and replaced in the
//! background.
//!
//! python3 and node stem cells are bootstraps waiting to be told their
//! function; exec stem cells are sandboxes, fully set up, waiting to be told
//! the program to run (exec starts a process per request, so every request
//! of an exec function is a cold start, and joining a cgroup alone costs
//! ~14 ms on cgroup v1 hosts).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use flick_core::{Manifest, Network, RuntimeKind};
use flick_sandbox::{ProcessSpec, Spawned};

use crate::process::Stem;
use crate::{InstanceSpec, Launcher};

type Key = (RuntimeKind, Network);

/// Memory limit of an exec stem cell until it takes on a function's own.
const EXEC_STEM_MEMORY: u64 = 256 << 20;

/// A ready stem cell.
enum Cell {
    Bootstrap(Stem),
    Exec(Spawned),
}

#[derive(Default)]
pub(crate) struct StemPool {
    /// Ready stem cells per key.
    ready: Mutex<HashMap<Key, Vec<Cell>>>,
    /// Stem cells being started per key.
    starting: Mutex<HashMap<Key, u32>>,
    /// Set on shutdown: no more refills.
    closed: AtomicBool,
}

impl std::fmt::Debug for StemPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StemPool")
    }
}

fn flavour(network: Network) -> flick_sandbox::Network {
    match network {
        Network::Host => flick_sandbox::Network::Host,
        Network::None => flick_sandbox::Network::None,
    }
}

impl Launcher {
    /// Fills the stem pools of the default network kind.
    pub fn prewarm(&self) {
        for runtime in [RuntimeKind::Python3, RuntimeKind::Node, RuntimeKind::Exec] {
            self.refill((runtime, Network::None));
        }
    }

    /// A ready python3/node stem cell for `key`, if there is one; either
    /// way the pool is topped up in the background (a miss is a sign the
    /// key is in demand).
    pub(crate) fn take_stem(&self, key: Key) -> Option<Stem> {
        match self.take(key, true)? {
            Cell::Bootstrap(stem) => Some(stem),
            Cell::Exec(_) => None,
        }
    }

    /// A prewarmed sandbox running `program` for `spec`, with its code
    /// attached and its memory limit set, or `None` (start one afresh).
    pub(crate) async fn exec_stem(
        &self,
        spec: &InstanceSpec,
        program: &Path,
        args: &[OsString],
        env: &[(String, String)],
    ) -> Option<Spawned> {
        let m = &spec.manifest;
        if !self.sandbox.is_isolated() || m.tmp_size != Manifest::DEFAULT_TMP_SIZE {
            return None;
        }
        let program = resolve(program)?;
        let message = flick_sandbox::go_message(&program, args, env)?;
        // No refill yet: moving a new process into its cgroup holds a
        // system-wide lock that every fork waits on (~14 ms on cgroup v1),
        // and this request is about to fork its program. The caller refills
        // when the program has run (`refill_exec`).
        let Cell::Exec(mut cell) = self.take((RuntimeKind::Exec, m.network), false)? else { return None };
        // Dropping the cell on any failure kills it (kill_on_drop).
        if cell.child.try_wait().ok()?.is_some() {
            return None;
        }
        let pid = cell.child.id()?;
        if let Err(e) = self.sandbox.attach_code(pid, &spec.code_dir).await {
            tracing::warn!(function = %spec.function, error = %e, "exec stem cell unusable");
            return None;
        }
        if let Some(cg) = &cell.cgroup {
            cg.set_memory(m.memory).ok()?;
        }
        // Smaller than a pipe's buffer: the write cannot block.
        let mut go = std::fs::File::from(cell.go.take()?);
        go.write_all(&message).ok()?;
        Some(cell)
    }

    fn take(&self, key: Key, refill: bool) -> Option<Cell> {
        let cell = self.stems.ready.lock().unwrap().get_mut(&key).and_then(Vec::pop);
        if refill {
            self.refill(key);
        }
        cell
    }

    /// Tops up the exec stem cells of `network` (after a request ran).
    pub(crate) fn refill_exec(&self, network: Network) {
        self.refill((RuntimeKind::Exec, network));
    }

    fn refill(&self, key: Key) {
        let want = self.config.stem_cells;
        let exec_unsupported = key.0 == RuntimeKind::Exec && !self.sandbox.is_isolated();
        if want == 0 || exec_unsupported || self.stems.closed.load(Ordering::Relaxed) {
            return;
        }
        let missing = {
            let ready = self.stems.ready.lock().unwrap().get(&key).map_or(0, Vec::len) as u32;
            let mut starting = self.stems.starting.lock().unwrap();
            let now = starting.entry(key).or_default();
            let missing = want.saturating_sub(ready + *now);
            *now += missing;
            missing
        };
        for _ in 0..missing {
            let launcher = self.clone();
            tokio::spawn(async move {
                let result = launcher.start_cell(key).await;
                *launcher.stems.starting.lock().unwrap().entry(key).or_default() -= 1;
                match result {
                    Ok(cell) if !launcher.stems.closed.load(Ordering::Relaxed) => {
                        launcher.stems.ready.lock().unwrap().entry(key).or_default().push(cell);
                    }
                    // Shutting down (the cell was stopped with the rest).
                    Ok(_) | Err(_) if launcher.stems.closed.load(Ordering::Relaxed) => {}
                    Ok(_) => {}
                    // No retry loop: the next start of this kind tries again.
                    Err(e) => tracing::warn!(runtime = %key.0, error = %e, "could not start a stem cell"),
                }
            });
        }
    }

    async fn start_cell(&self, key: Key) -> Result<Cell, String> {
        if key.0 != RuntimeKind::Exec {
            return Stem::start(self, key.0, flavour(key.1)).await.map(Cell::Bootstrap).map_err(|e| e.to_string());
        }
        let limits = flick_sandbox::Limits {
            memory: EXEC_STEM_MEMORY,
            tmp_size: Manifest::DEFAULT_TMP_SIZE,
            network: flavour(key.1),
        };
        let sandbox = self.sandbox.clone();
        // Spawning waits for the sandbox to be set up (cgroup, namespaces,
        // mounts): keep that off the async threads.
        tokio::task::spawn_blocking(move || {
            sandbox.spawn(ProcessSpec {
                program: PathBuf::from("/bin/false"),
                args: vec![],
                env: vec![],
                code_dir: None,
                protocol_fd: None,
                stdin: true,
                limits,
                report_exit: true,
                wait_for_program: true,
            })
        })
        .await
        .map_err(|e| e.to_string())?
        .map(Cell::Exec)
        .map_err(|e| e.to_string())
    }

    /// Ready stem cells per `runtime/network`, for status output.
    pub fn stem_counts(&self) -> Vec<(String, usize)> {
        let ready = self.stems.ready.lock().unwrap();
        let mut out: Vec<_> =
            ready.iter().map(|((r, n), cells)| (format!("{}/{}", r.as_str(), n.as_str()), cells.len())).collect();
        out.sort();
        out
    }

    /// Stops every stem cell and refills no more (shutdown).
    pub fn stop_stems(&self) {
        self.stems.closed.store(true, Ordering::Relaxed);
        // Dropping a stem cell kills its process.
        self.stems.ready.lock().unwrap().clear();
    }
}

/// The absolute path of a program, looked up on the sandbox's `PATH` (the
/// same directories, shared read-only, exist on the host).
fn resolve(program: &Path) -> Option<PathBuf> {
    if program.is_absolute() {
        return Some(program.to_path_buf());
    }
    let path = flick_sandbox::BASE_ENV.iter().find(|(k, _)| *k == "PATH")?.1;
    path.split(':').map(|dir| Path::new(dir).join(program)).find(|p| p.is_file())
}

pub(crate) fn new_pool() -> Arc<StemPool> {
    Arc::new(StemPool::default())
}
