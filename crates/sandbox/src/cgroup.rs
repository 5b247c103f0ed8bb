//! One cgroup per instance: memory, pids and CPU limits, out-of-memory
//! detection, usage metering (CPU time, memory peak), and removal. cgroup v1 (one hierarchy per controller) and v2
//! (one unified hierarchy) are both supported.
//!
//! All of an instance's cgroups live under a per-data-dir parent,
//! `flick-<scope>`, so a restarted flick can find and remove what a killed
//! one left behind without touching another flick's instances.

use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const ROOT: &str = "/sys/fs/cgroup";

/// Where this host keeps cgroups, resolved once.
#[derive(Clone, Debug)]
pub enum Hierarchy {
    /// Parent dirs for the memory, pids and cpu controllers, and for
    /// cpuacct when it is mounted on its own (where it is co-mounted with
    /// cpu, `cpu` holds its files): it is what measures CPU time.
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: PathBuf,
        cpuacct: Option<PathBuf>,
    },
    V2 {
        parent: PathBuf,
    },
}

/// How an instance's CPU time is limited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuLimit {
    /// Weights only (v1 `cpu.shares`, v2 `cpu.weight`, in proportion to
    /// memory) and no CFS quota: an instance may use any idle core, and
    /// under contention CPU is split by weight. Nothing throttles a burst,
    /// so a request never waits out the rest of a quota period (tail
    /// latency); the price is that a busy instance's speed depends on what
    /// else runs.
    #[default]
    Shares,
    /// The weights plus a CFS quota of `cpus` per 100 ms period: never more
    /// than `cpus`, even on an idle host (predictable, isolates neighbours),
    /// but a burst past the quota stops until the next period.
    Hard,
}

/// Limits applied to one instance.
#[derive(Clone, Copy, Debug)]
pub struct CgroupLimits {
    pub memory: u64,
    pub pids: u32,
    /// CPUs the instance may use at most (1.0 = one core) under
    /// [`CpuLimit::Hard`].
    pub cpus: f64,
    pub cpu_limit: CpuLimit,
}

impl Hierarchy {
    /// Finds the hierarchy and creates this scope's parent cgroup(s) under
    /// the cgroup flick itself runs in.
    pub fn detect(scope: &str) -> Result<Self, String> {
        let own = fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("reading /proc/self/cgroup: {e}"))?;
        let own_path = |controller: &str| -> Option<String> {
            own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
                ctrls.split(',').any(|c| c == controller).then(|| path.trim_start_matches('/').to_string())
            })
        };
        let name = format!("flick-{scope}");
        if Path::new(ROOT).join("memory/cgroup.procs").exists() {
            let mut dirs = Vec::new();
            for controller in ["memory", "pids", "cpu"] {
                let base = Path::new(ROOT).join(controller);
                if !base.join("cgroup.procs").exists() {
                    return Err(format!("cgroup v1 controller `{controller}` is not mounted at {}", base.display()));
                }
                let dir = base.join(own_path(controller).unwrap_or_default()).join(&name);
                fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
                dirs.push(dir);
            }
            let cpu = dirs.pop().unwrap_or_default();
            let pids = dirs.pop().unwrap_or_default();
            let memory = dirs.pop().unwrap_or_default();
            // CPU time is measured, not limited: without cpuacct instances
            // still run, their records just carry no `cpu_ms`.
            let base = Path::new(ROOT).join("cpuacct");
            let cpuacct = if cpu.join("cpuacct.usage").exists() || !base.join("cpuacct.usage").exists() {
                None
            } else {
                let dir = base.join(own_path("cpuacct").unwrap_or_default()).join(&name);
                fs::create_dir_all(&dir).ok().map(|()| dir)
            };
            return Ok(Self::V1 { memory, pids, cpu, cpuacct });
        }
        if Path::new(ROOT).join("cgroup.controllers").exists() {
            // v2 forbids processes in inner nodes, so instances go in a
            // sibling tree at the root rather than under flick's own cgroup.
            let parent = Path::new(ROOT).join(&name);
            fs::create_dir_all(&parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
            let enable = "+memory +pids +cpu";
            let _ = fs::write(Path::new(ROOT).join("cgroup.subtree_control"), enable);
            fs::write(parent.join("cgroup.subtree_control"), enable)
                .map_err(|e| format!("enabling memory, pids and cpu in {}: {e}", parent.display()))?;
            return Ok(Self::V2 { parent });
        }
        Err(format!("no cgroup hierarchy found under {ROOT}"))
    }

    /// Removes this scope's (empty) parent cgroups.
    pub fn remove_scope(&self) {
        for parent in self.parents() {
            let _ = fs::remove_dir(parent);
        }
    }

    fn parents(&self) -> Vec<&Path> {
        match self {
            Self::V1 { memory, pids, cpu, cpuacct } => {
                let mut all: Vec<&Path> = vec![memory, pids, cpu];
                all.extend(cpuacct.as_deref());
                all
            }
            Self::V2 { parent } => vec![parent],
        }
    }

    /// Creates the cgroup of one instance and opens its `cgroup.procs`
    /// files, which the child writes itself into before it execs.
    pub fn create(&self, name: &str, limits: CgroupLimits) -> std::io::Result<(Cgroup, Vec<OwnedFd>)> {
        let dirs: Vec<PathBuf> = self.parents().iter().map(|p| p.join(name)).collect();
        for dir in &dirs {
            fs::create_dir_all(dir)?;
        }
        let cgroup = Cgroup { dirs, v2: matches!(self, Self::V2 { .. }) };
        if let Err(e) = cgroup.apply(limits) {
            cgroup.destroy();
            return Err(e);
        }
        let mut fds = Vec::new();
        for dir in &cgroup.dirs {
            let file = fs::OpenOptions::new().write(true).open(dir.join("cgroup.procs"))?;
            fds.push(OwnedFd::from(file));
        }
        Ok((cgroup, fds))
    }

    /// Removes every instance cgroup of this scope, killing what is still
    /// in them (what a SIGKILLed flick left behind). Returns how many.
    pub fn sweep(&self) -> usize {
        let mut names = std::collections::BTreeSet::new();
        for parent in self.parents() {
            if let Ok(entries) = fs::read_dir(parent) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        names.insert(e.file_name());
                    }
                }
            }
        }
        for name in &names {
            let dirs = self.parents().iter().map(|p| p.join(name)).collect();
            Cgroup { dirs, v2: matches!(self, Self::V2 { .. }) }.destroy();
        }
        names.len()
    }
}

/// The cgroup(s) of one instance.
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    v2: bool,
}

impl Cgroup {
    fn apply(&self, l: CgroupLimits) -> std::io::Result<()> {
        let period: u64 = 100_000;
        // Written either way, so an instance's files always say which
        // policy it runs under (and a reused name inherits nothing).
        let quota = match l.cpu_limit {
            CpuLimit::Hard => Some(((l.cpus * period as f64) as u64).max(1000)),
            CpuLimit::Shares => None,
        };
        let shares = shares(l.memory);
        if self.v2 {
            let d = &self.dirs[0];
            write(d, "memory.max", l.memory)?;
            let _ = write(d, "memory.swap.max", 0);
            write(d, "pids.max", l.pids)?;
            let max = quota.map_or_else(|| "max".to_string(), |q| q.to_string());
            fs::write(d.join("cpu.max"), format!("{max} {period}"))?;
            let _ = write(d, "cpu.weight", weight(shares));
        } else {
            let (memory, pids, cpu) = (&self.dirs[0], &self.dirs[1], &self.dirs[2]);
            write(memory, "memory.limit_in_bytes", l.memory)?;
            // No swap either, where swap accounting exists.
            let _ = write(memory, "memory.memsw.limit_in_bytes", l.memory);
            write(pids, "pids.max", l.pids)?;
            write(cpu, "cpu.cfs_period_us", period)?;
            write(cpu, "cpu.cfs_quota_us", quota.map_or(-1, |q| q as i64))?;
            let _ = write(cpu, "cpu.shares", shares);
        }
        Ok(())
    }

    /// Changes the memory limit of a running instance (a stem cell taking
    /// on a function), and its CPU weight, which follows memory. With
    /// cgroup v1 the swap limit may never be below the memory limit, so the
    /// order of the two writes depends on the direction.
    pub fn set_memory(&self, bytes: u64) -> std::io::Result<()> {
        let dir = &self.dirs[0];
        if self.v2 {
            let _ = write(dir, "cpu.weight", weight(shares(bytes)));
            return write(dir, "memory.max", bytes);
        }
        if let Some(cpu) = self.dirs.get(2) {
            let _ = write(cpu, "cpu.shares", shares(bytes));
        }
        let current: u64 = fs::read_to_string(dir.join("memory.limit_in_bytes"))?.trim().parse().unwrap_or(u64::MAX);
        if bytes > current {
            let _ = write(dir, "memory.memsw.limit_in_bytes", bytes);
            write(dir, "memory.limit_in_bytes", bytes)
        } else {
            write(dir, "memory.limit_in_bytes", bytes)?;
            let _ = write(dir, "memory.memsw.limit_in_bytes", bytes);
            Ok(())
        }
    }

    /// Opens the files that measure this cgroup's usage, once per instance,
    /// so each call costs a few reads (and a write) on open descriptors.
    /// `None` when the host has neither a CPU nor a memory counter.
    pub fn meter(&self) -> Option<Meter> {
        let open = |dir: &Path, file: &str, write: bool| {
            fs::OpenOptions::new().read(true).write(write).open(dir.join(file)).ok()
        };
        let (cpu, peak) = if self.v2 {
            let d = &self.dirs[0];
            (open(d, "cpu.stat", false), open(d, "memory.peak", true).or_else(|| open(d, "memory.peak", false)))
        } else {
            let cpu = self.dirs[2..].iter().rev().find_map(|d| open(d, "cpuacct.usage", false));
            (cpu, open(&self.dirs[0], "memory.max_usage_in_bytes", true))
        };
        (cpu.is_some() || peak.is_some()).then(|| Meter { v2: self.v2, cpu, peak })
    }

    /// Did the kernel kill a process of this cgroup for exceeding its memory?
    pub fn oom_killed(&self) -> bool {
        let (dir, file) =
            if self.v2 { (&self.dirs[0], "memory.events") } else { (&self.dirs[0], "memory.oom_control") };
        fs::read_to_string(dir.join(file)).is_ok_and(|text| {
            text.lines().any(|l| l.strip_prefix("oom_kill ").is_some_and(|n| n.trim().parse::<u64>().unwrap_or(0) > 0))
        })
    }

    /// Kills every process in the cgroup but `spared`; returns how many.
    /// Sparing the outer process lets it reap the inner one, so no zombie
    /// is left for init.
    pub fn kill_all_except(&self, spared: u32) -> usize {
        let Ok(procs) = fs::read_to_string(self.dirs[0].join("cgroup.procs")) else { return 0 };
        let mut killed = 0;
        for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
            if pid as u32 != spared {
                crate::kill_pid(pid);
                killed += 1;
            }
        }
        killed
    }

    /// Kills anything left in the cgroup and removes it.
    pub fn destroy(&self) {
        for _ in 0..50 {
            let mut all_gone = true;
            for dir in &self.dirs {
                if !dir.exists() {
                    continue;
                }
                if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                    for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                        crate::kill_pid(pid);
                    }
                }
                if fs::remove_dir(dir).is_err() {
                    all_gone = false;
                }
            }
            if all_gone {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::warn!(cgroups = ?self.dirs, "could not remove instance cgroup");
    }
}

/// What a cgroup used: CPU time (user + system) and the memory peak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time, user and system together, in nanoseconds.
    pub cpu_ns: Option<u64>,
    /// The highest memory use (as the kernel charges it: anonymous memory,
    /// page cache, kernel memory), in bytes.
    pub memory_peak: Option<u64>,
}

/// Open descriptors on one cgroup's usage counters (see [`Cgroup::meter`]).
/// Read with `pread` at offset 0, which makes the kernel render the file
/// afresh: no open or close per reading.
#[derive(Debug)]
pub struct Meter {
    v2: bool,
    /// v1 `cpuacct.usage` (ns), v2 `cpu.stat` (`usage_usec`).
    cpu: Option<fs::File>,
    /// v1 `memory.max_usage_in_bytes`, v2 `memory.peak`.
    peak: Option<fs::File>,
}

impl Meter {
    /// CPU time used so far, user and system, in nanoseconds.
    pub fn cpu_ns(&self) -> Option<u64> {
        let text = read_at0(self.cpu.as_ref()?)?;
        if self.v2 {
            let usec = text.lines().find_map(|l| l.strip_prefix("usage_usec "))?;
            usec.trim().parse::<u64>().ok().map(|u| u * 1000)
        } else {
            text.trim().parse().ok()
        }
    }

    /// The memory peak since the last reset (or since the cgroup was made).
    pub fn memory_peak(&self) -> Option<u64> {
        read_at0(self.peak.as_ref()?)?.trim().parse().ok()
    }

    /// Starts a new peak at the current use. v1: writing 0 to
    /// `memory.max_usage_in_bytes`; v2 (Linux ≥ 6.12): any write to
    /// `memory.peak` restarts it for reads through the same descriptor.
    /// Returns false where the kernel cannot: the peak is then the
    /// cgroup's over its whole life.
    pub fn reset_peak(&self) -> bool {
        let Some(file) = &self.peak else { return false };
        let value: &[u8] = if self.v2 { b"reset\n" } else { b"0" };
        file.write_at(value, 0).is_ok()
    }

    /// Both counters, read now.
    pub fn read(&self) -> Usage {
        Usage { cpu_ns: self.cpu_ns(), memory_peak: self.memory_peak() }
    }
}

/// v1 `cpu.shares` for an instance of `memory` bytes. Under contention CPU
/// follows memory, as on Lambda; a 256 MiB instance weighs as much as any
/// other process (1024 shares).
fn shares(memory: u64) -> u64 {
    ((memory >> 20) * 4).clamp(2, 262_144)
}

/// v2 `cpu.weight` for the same share (100 = 1024 shares).
fn weight(shares: u64) -> u64 {
    (shares * 100 / 1024).clamp(1, 10_000)
}

fn read_at0(file: &fs::File) -> Option<String> {
    let mut buf = [0u8; 1024];
    let n = file.read_at(&mut buf, 0).ok()?;
    std::str::from_utf8(&buf[..n]).ok().map(str::to_owned)
}

fn write(dir: &Path, file: &str, value: impl std::fmt::Display) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new().write(true).open(dir.join(file))?;
    f.write_all(value.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    //! cgroup files are plain files to the code that writes them: these
    //! tests point it at a temporary directory and need no root.
    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn fake(name: &str, files: &[&str]) -> Dir {
        let dir = std::env::temp_dir().join(format!("flick-cgroup-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for f in files {
            let path = dir.join(f);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, "").unwrap();
        }
        Dir(dir)
    }

    fn read(dir: &Path, file: &str) -> String {
        fs::read_to_string(dir.join(file)).unwrap()
    }

    const LIMITS: CgroupLimits = CgroupLimits { memory: 256 << 20, pids: 64, cpus: 0.5, cpu_limit: CpuLimit::Hard };
    const SHARES: CgroupLimits = CgroupLimits { cpu_limit: CpuLimit::Shares, ..LIMITS };

    #[test]
    fn v1_limits_land_in_each_controller() {
        let d = fake(
            "v1",
            &[
                "memory/memory.limit_in_bytes",
                "memory/memory.memsw.limit_in_bytes",
                "pids/pids.max",
                "cpu/cpu.cfs_period_us",
                "cpu/cpu.cfs_quota_us",
                "cpu/cpu.shares",
            ],
        );
        let cg = Cgroup { dirs: vec![d.0.join("memory"), d.0.join("pids"), d.0.join("cpu")], v2: false };
        cg.apply(LIMITS).unwrap();
        assert_eq!(read(&d.0, "memory/memory.limit_in_bytes"), "268435456");
        assert_eq!(read(&d.0, "memory/memory.memsw.limit_in_bytes"), "268435456", "no swap beyond the limit");
        assert_eq!(read(&d.0, "pids/pids.max"), "64");
        assert_eq!(read(&d.0, "cpu/cpu.cfs_period_us"), "100000");
        assert_eq!(read(&d.0, "cpu/cpu.cfs_quota_us"), "50000");
        assert_eq!(read(&d.0, "cpu/cpu.shares"), "1024", "256 MiB weighs as much as any process");
        fs::write(d.0.join("memory/memory.limit_in_bytes"), "268435456").unwrap();
        cg.set_memory(512 << 20).unwrap();
        assert_eq!(read(&d.0, "cpu/cpu.shares"), "2048", "the weight follows a new memory limit");
        assert_eq!(read(&d.0, "memory/memory.limit_in_bytes"), "536870912");
        assert_eq!(read(&d.0, "memory/memory.memsw.limit_in_bytes"), "536870912");
        // The default: weights, no quota (-1 is the kernel's "unlimited").
        // A plain file keeps old digits past a shorter write: start empty.
        fs::write(d.0.join("cpu/cpu.cfs_quota_us"), "").unwrap();
        cg.apply(SHARES).unwrap();
        assert_eq!(read(&d.0, "cpu/cpu.cfs_quota_us"), "-1", "no quota to throttle a burst");
        assert_eq!(read(&d.0, "cpu/cpu.shares"), "1024", "the weight still follows memory");
    }

    #[test]
    fn v2_limits_land_in_one_directory() {
        let d = fake("v2", &["memory.max", "memory.swap.max", "pids.max", "cpu.max", "cpu.weight"]);
        let cg = Cgroup { dirs: vec![d.0.clone()], v2: true };
        cg.apply(LIMITS).unwrap();
        assert_eq!(read(&d.0, "memory.max"), "268435456");
        assert_eq!(read(&d.0, "memory.swap.max"), "0");
        assert_eq!(read(&d.0, "pids.max"), "64");
        assert_eq!(read(&d.0, "cpu.max"), "50000 100000");
        assert_eq!(read(&d.0, "cpu.weight"), "100");
        cg.apply(SHARES).unwrap();
        assert_eq!(read(&d.0, "cpu.max"), "max 100000", "no quota to throttle a burst");
        assert_eq!(read(&d.0, "cpu.weight"), "100");
    }

    #[test]
    fn a_missing_limit_file_is_an_error_not_an_unlimited_instance() {
        // No pids controller file: the instance must not start without it.
        let d = fake("missing", &["memory/memory.limit_in_bytes", "cpu/cpu.cfs_period_us", "cpu/cpu.cfs_quota_us"]);
        fs::create_dir_all(d.0.join("pids")).unwrap();
        let cg = Cgroup { dirs: vec![d.0.join("memory"), d.0.join("pids"), d.0.join("cpu")], v2: false };
        assert!(cg.apply(LIMITS).is_err());
    }

    #[test]
    fn usage_is_read_from_cpuacct_or_cpu_stat_and_the_peak_file() {
        let d = fake("meter", &["memory/memory.max_usage_in_bytes", "cpu/x", "cpuacct/cpuacct.usage"]);
        fs::write(d.0.join("memory/memory.max_usage_in_bytes"), "104857600\n").unwrap();
        fs::write(d.0.join("cpuacct/cpuacct.usage"), "1500000\n").unwrap();
        let dirs = vec![d.0.join("memory"), d.0.join("pids"), d.0.join("cpu"), d.0.join("cpuacct")];
        let v1 = Cgroup { dirs, v2: false }.meter().unwrap();
        assert_eq!(v1.read(), Usage { cpu_ns: Some(1_500_000), memory_peak: Some(100 << 20) });
        assert!(v1.reset_peak());
        // A plain file keeps the old digits after the write; the kernel's
        // file takes the write as a whole. What matters: a 0 was written.
        assert!(read(&d.0, "memory/memory.max_usage_in_bytes").starts_with('0'), "v1 resets by writing 0");

        let v2 = fake("meter2", &["cpu.stat", "memory.peak"]);
        fs::write(v2.0.join("cpu.stat"), "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n").unwrap();
        fs::write(v2.0.join("memory.peak"), "4096\n").unwrap();
        let m = Cgroup { dirs: vec![v2.0.clone()], v2: true }.meter().unwrap();
        assert_eq!(m.read(), Usage { cpu_ns: Some(2_500_000), memory_peak: Some(4096) });
        let none = fake("meter3", &[]);
        fs::create_dir_all(&none.0).unwrap();
        assert!(Cgroup { dirs: vec![none.0.clone()], v2: true }.meter().is_none(), "no counters, no meter");
    }

    #[test]
    fn out_of_memory_is_read_from_the_kill_counter() {
        let d = fake("oom", &["memory.oom_control", "memory.events"]);
        let v1 = Cgroup { dirs: vec![d.0.clone()], v2: false };
        let v2 = Cgroup { dirs: vec![d.0.clone()], v2: true };
        fs::write(d.0.join("memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n").unwrap();
        fs::write(d.0.join("memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n").unwrap();
        assert!(!v1.oom_killed() && !v2.oom_killed());
        fs::write(d.0.join("memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        fs::write(d.0.join("memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n").unwrap();
        assert!(v1.oom_killed() && v2.oom_killed());
    }
}
