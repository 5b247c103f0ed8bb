//! What isolation this host gives instances: `flick doctor` prints it, and
//! `flick up` refuses to run functions when something is missing.
//!
//! The decisive check is a real one: a probe process is started in a full
//! sandbox and reports, from inside, who it is and what it may do.

use std::path::Path;

use crate::{Identity, Limits, Network, ProcessSpec, Sandbox};

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Static facts about the host (no process started).
pub fn host_checks() -> Vec<Check> {
    let mut checks = Vec::new();
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    checks.push(Check {
        name: "root",
        ok: euid == 0,
        detail: if euid == 0 {
            "flick runs as root and drops instances to an unprivileged uid".into()
        } else {
            format!("flick runs as uid {euid}; namespaces, cgroups and mounts need root")
        },
    });
    let ns: Vec<_> = ["mnt", "pid", "ipc", "uts", "net"]
        .into_iter()
        .filter(|n| !Path::new("/proc/self/ns").join(n).exists())
        .collect();
    checks.push(Check {
        name: "namespaces",
        ok: ns.is_empty(),
        detail: if ns.is_empty() { "mount, pid, ipc, uts, net".into() } else { format!("missing: {}", ns.join(", ")) },
    });
    let cgroups = if Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists() {
        Check { name: "cgroups", ok: true, detail: "v1: memory, pids, cpu".into() }
    } else if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
        let missing: Vec<_> = ["memory", "pids", "cpu"]
            .into_iter()
            .filter(|c| !controllers.split_whitespace().any(|x| x == *c))
            .collect();
        Check {
            name: "cgroups",
            ok: missing.is_empty(),
            detail: if missing.is_empty() {
                "v2: memory, pids, cpu".into()
            } else {
                format!("v2, missing: {}", missing.join(", "))
            },
        }
    } else {
        Check { name: "cgroups", ok: false, detail: "no cgroup hierarchy under /sys/fs/cgroup".into() }
    };
    checks.push(cgroups);
    let seccomp = crate::seccomp::supported() && Path::new("/proc/sys/kernel/seccomp/actions_avail").exists();
    checks.push(Check {
        name: "seccomp",
        ok: seccomp,
        detail: if seccomp {
            crate::seccomp::Policy::describe()
        } else {
            "seccomp filters unavailable (kernel or CPU architecture)".into()
        },
    });
    checks.push(Check {
        name: "user namespace",
        ok: true,
        detail: "not used: each function runs as its own unprivileged host uid with no capabilities".into(),
    });
    checks
}

/// Starts a probe in a full sandbox and checks, from inside, that it is
/// unprivileged, filtered, alone in its pid namespace and offline (the
/// first check), that it has no controlling terminal nor any terminal
/// device (`session`), and that it holds no descriptor but its stdio
/// (`descriptors`). `flick up` refuses to run functions unless all pass.
pub async fn probe(sandbox: &Sandbox, code_dir: &Path) -> Vec<Check> {
    let name = "sandboxed probe";
    if !sandbox.is_isolated() {
        return vec![Check { name, ok: false, detail: "isolation is switched off".into() }];
    }
    probe_process(sandbox, code_dir).await
}

async fn probe_process(sandbox: &Sandbox, code_dir: &Path) -> Vec<Check> {
    let name = "sandboxed probe";
    // The 7th field of /proc/self/stat is the controlling terminal (0: none).
    let script = "id -u; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; hostname; ls /proc | grep -c '^[0-9]'; \
                  cat /etc/shadow >/dev/null 2>&1 && echo shadow-readable; touch /var/task/x 2>/dev/null && echo code-writable; \
                  echo ok > /tmp/probe && cat /tmp/probe; \
                  echo tty=$(cut -d' ' -f7 /proc/self/stat); \
                  for d in /dev/tty /dev/console /dev/ptmx /dev/pts; do [ -e $d ] && echo terminal-device=$d; done; \
                  echo fds=$(ls /proc/self/fd)";
    let spawned = sandbox
        .spawn(ProcessSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![],
            code_dir: Some(code_dir.to_path_buf()),
            protocol_fd: None,
            stdin: false,
            limits: Limits { memory: 64 << 20, tmp_size: 1 << 20, network: Network::None, identity: Identity::Shared },
            report_exit: false,
            wait_for_program: false,
        })
        .await;
    let spawned = match spawned {
        Ok(s) => s,
        Err(e) => return vec![Check { name, ok: false, detail: e.to_string() }],
    };
    let output = tokio::time::timeout(std::time::Duration::from_secs(10), spawned.child.wait_with_output()).await;
    if let Some(cg) = spawned.cgroup {
        cg.destroy();
    }
    let out = match output {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return vec![Check { name, ok: false, detail: e.to_string() }],
        Err(_) => return vec![Check { name, ok: false, detail: "probe did not finish within 10s".into() }],
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut problems = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    if !out.status.success() {
        problems.push(format!("probe failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    if lines.first().is_some_and(|uid| *uid == "0") {
        problems.push("runs as root".to_string());
    }
    if !text.contains("CapEff:\t0000000000000000") {
        problems.push("keeps capabilities".into());
    }
    if !text.contains("NoNewPrivs:\t1") {
        problems.push("no_new_privs not set".into());
    }
    if !text.contains("Seccomp:\t2") {
        problems.push("no seccomp filter".into());
    }
    if !text.lines().any(|l| l == "flick") {
        problems.push("shares the host's hostname".into());
    }
    if text.contains("shadow-readable") {
        problems.push("can read /etc/shadow".into());
    }
    if text.contains("code-writable") {
        problems.push("can write its code".into());
    }
    if !text.lines().any(|l| l == "ok") {
        problems.push("cannot write /tmp".into());
    }
    // Facts for the `session` and `descriptors` checks, after a separator.
    let tty = text.lines().find_map(|l| l.strip_prefix("tty=")).unwrap_or("?");
    let devices: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("terminal-device=")).collect();
    let session_ok = tty == "0" && devices.is_empty();
    let session = if session_ok {
        "own session, no controlling terminal, no terminal device; ioctl TIOCSTI/TIOCLINUX denied".to_string()
    } else {
        format!("controlling terminal {tty}, terminal devices {devices:?}")
    };
    let fds: Vec<&str> = text.lines().find_map(|l| l.strip_prefix("fds=")).unwrap_or("?").split_whitespace().collect();
    // `ls` lists its own descriptors: stdio and the directory it reads.
    let extra: Vec<&&str> = fds.iter().filter(|fd| !["0", "1", "2"].contains(*fd)).collect();
    let fds_ok = fds.len() == 4 && extra.len() == 1;
    let descriptors = if fds_ok {
        "only stdio (and the protocol socket on fd 3); everything flick inherited is closed on exec".to_string()
    } else {
        format!("the probe holds descriptors {extra:?} besides stdio")
    };
    let main = if problems.is_empty() {
        Check {
            name,
            ok: true,
            detail: "unprivileged, no capabilities, no_new_privs, seccomp, own pid/mount/net".into(),
        }
    } else {
        Check { name, ok: false, detail: problems.join("; ") }
    };
    vec![
        main,
        Check { name: "session", ok: session_ok, detail: session },
        Check { name: "descriptors", ok: fds_ok, detail: descriptors },
    ]
}
