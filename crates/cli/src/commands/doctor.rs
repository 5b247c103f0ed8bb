//! `doctor`: which isolation features this host gives instances.

use std::process::ExitCode;

use flick_sandbox::doctor::{Check, host_checks, probe};
use flick_sandbox::{Sandbox, SandboxConfig};

pub async fn doctor() -> anyhow::Result<ExitCode> {
    let mut checks = host_checks();
    let dir = std::env::temp_dir().join(format!("flick-doctor-{}", std::process::id()));
    let runtime_dir = dir.join("runtime");
    std::fs::create_dir_all(&runtime_dir)?;
    let config = SandboxConfig {
        scope: format!("doctor-{}", std::process::id()),
        runtime_dir: runtime_dir.clone(),
        rootfs_dir: dir.join("rootfs"),
        extra_ro: vec![],
        uid: 65534,
        gid: 65534,
        uid_range: 200_000..=265_535,
        pids_max: 64,
        nofile: 256,
        cpus: 1.0,
        cpu_limit: flick_sandbox::CpuLimit::default(),
        // A diagnosis changes nothing on the host.
        favor_dynmods: false,
    };
    match Sandbox::new(config) {
        Ok(sandbox) => {
            checks.extend(probe(&sandbox, &runtime_dir).await);
            checks.push(Check { name: "uid scheme", ok: true, detail: sandbox.uid_scheme() });
            sandbox.remove_scope();
        }
        Err(e) => checks.push(Check { name: "sandboxed probe", ok: false, detail: e.to_string() }),
    }
    let _ = std::fs::remove_dir_all(&dir);
    for c in &checks {
        outln!("{} {:<16} {}", if c.ok { "ok     " } else { "MISSING" }, c.name, c.detail);
    }
    let complete = checks.iter().all(|c| c.ok);
    outln!(
        "\n{}",
        if complete {
            "sandbox: complete — every instance runs isolated"
        } else {
            "sandbox: INCOMPLETE — `flick up` will refuse to run functions unless started with --insecure-no-sandbox"
        }
    );
    Ok(if complete { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
