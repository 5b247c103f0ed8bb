//! The spawn path: every instance and stem cell is forked by one long-lived
//! thread, so nothing dies with a short-lived thread; stem cells are
//! counted only while alive, and a dead one is reported and replaced.

mod common;

use std::time::Duration;

use common::{Flick, manifest};

fn instances(flick: &Flick) -> serde_json::Value {
    flick.get("/v1/instances").json()
}

fn stem_cells(flick: &Flick, kind: &str) -> u64 {
    instances(flick)["stem_cells"][kind].as_u64().unwrap_or(0)
}

fn stem_deaths(flick: &Flick, kind: &str) -> u64 {
    instances(flick)["stem_cells_died"][kind].as_u64().unwrap_or(0)
}

fn stat_field(pid: u32, index: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: state is index 0.
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split(' ').nth(index).map(String::from)
}

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if stat_field(child, 1).as_deref() == Some(&pid.to_string()) {
            out.push(child);
        }
    }
    out
}

fn exe(pid: u32) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// pid 1 of every exec stem cell: a sandbox set up by forking flick,
/// waiting for its program, so still flick's own executable.
fn exec_stem_pids(flick: &Flick) -> Vec<u32> {
    let flick_exe = exe(flick.pid());
    let mut out = Vec::new();
    for outer in children(flick.pid()) {
        for inner in children(outer) {
            if exe(inner).is_some() && exe(inner) == flick_exe {
                out.push(inner);
            }
        }
    }
    out
}

fn kill(pid: u32) {
    let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
}

/// An exec call that runs for 15 s in a prewarmed sandbox finishes. The
/// sandbox was forked when the pool filled; before the fix that happened on
/// a tokio blocking thread, whose exit ~10 s after its last job delivered
/// the parent-death SIGKILL to the running program, reported as the
/// function's error.
#[test]
fn a_long_exec_call_in_a_stem_cell_outlives_idle_blocking_threads() {
    let flick = Flick::start();
    flick.deploy_files(
        "slow",
        &[
            ("flick.toml", &manifest("slow", "exec", "sh ./run.sh", "timeout = \"60s\"\n")),
            ("run.sh", "sleep 15\necho done\n"),
        ],
    );
    assert!(flick.wait_until(Duration::from_secs(20), || stem_cells(&flick, "exec/none") >= 1), "exec stem ready");
    let r = flick.invoke("slow", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text().trim(), "done");
    let a = flick.activation(&r.activation_id());
    assert_eq!(a["prewarmed"], true, "the call ran in the prewarmed sandbox: {a}");
    assert!(a["exec_ms"].as_f64().unwrap() >= 15_000.0, "{a}");
}

/// The exec stem-cell path is really taken (not a fresh sandbox each time),
/// and a fresh one after the pool was used up says so too.
#[test]
fn exec_activations_say_whether_a_stem_cell_served_them() {
    let flick = Flick::start();
    flick.deploy_files("who", &[("flick.toml", &manifest("who", "exec", "cat", ""))]);
    assert!(flick.wait_until(Duration::from_secs(20), || stem_cells(&flick, "exec/none") >= 1), "exec stem ready");
    let r = flick.invoke("who", "one");
    assert_eq!((r.status, r.text()), (200, "one".to_string()));
    assert_eq!(flick.activation(&r.activation_id())["prewarmed"], true);
    // A function with its own /tmp size never takes a stem cell.
    flick.deploy_files("big", &[("flick.toml", &manifest("big", "exec", "cat", "tmp_size = \"8MiB\"\n"))]);
    let r = flick.invoke("big", "two");
    assert_eq!((r.status, r.text()), (200, "two".to_string()));
    assert_eq!(flick.activation(&r.activation_id())["prewarmed"], false);
}

/// Killing a waiting stem cell's processes takes it out of the count at
/// once, is reported in `/v1/instances`, and the pool refills by itself
/// (before the fix the dead cell kept being counted and nothing replaced it
/// until the next cold start found it dead).
#[test]
fn a_killed_stem_cell_is_reported_and_replaced() {
    let flick = Flick::start();
    // Exec stem cells exist while an exec function is deployed.
    flick.deploy_files("after", &[("flick.toml", &manifest("after", "exec", "cat", ""))]);
    assert!(flick.wait_until(Duration::from_secs(20), || stem_cells(&flick, "exec/none") >= 1), "exec stem ready");
    let before = exec_stem_pids(&flick);
    assert_eq!(before.len(), 1, "one exec stem cell is running: {before:?}");
    assert_eq!(stem_deaths(&flick, "exec/none"), 0);
    kill(before[0]);
    assert!(
        flick.wait_until(Duration::from_secs(20), || stem_deaths(&flick, "exec/none") == 1),
        "the death is reported: {}",
        instances(&flick)
    );
    assert!(
        flick.wait_until(Duration::from_secs(20), || {
            let now = exec_stem_pids(&flick);
            now.len() == 1 && now[0] != before[0] && stem_cells(&flick, "exec/none") == 1
        }),
        "a new stem cell replaced it without any call: {} {:?}",
        instances(&flick),
        exec_stem_pids(&flick)
    );
    // And the replacement serves.
    let r = flick.invoke("after", "ok");
    assert_eq!((r.status, r.text()), (200, "ok".to_string()));
    assert_eq!(flick.activation(&r.activation_id())["prewarmed"], true);
}

/// A burst of cold starts, none prewarmed, while the API is used: every
/// call and every management request is answered correctly.
#[test]
fn the_api_keeps_answering_during_a_burst_of_cold_starts() {
    let flick = Flick::start_with(&[], Some("stem_cells = 0\n"));
    for i in 0..4 {
        let name = format!("burst{i}");
        flick.deploy_files(&name, &[("flick.toml", &manifest(&name, "exec", "cat", "max_instances = 20\n"))]);
        flick.deploy_py(&format!("py{i}"), "", "def handler(event, context):\n    return event\n");
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    let (answers, health) = std::thread::scope(|s| {
        let health = s.spawn(|| {
            let mut n = 0;
            loop {
                let r = flick.get("/v1/instances");
                assert_eq!(r.status, 200, "{}", r.text());
                assert!(r.json()["instances"].is_array());
                assert_eq!(flick.get_anon("/healthz").status, 200);
                n += 1;
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    return n;
                }
            }
        });
        let calls: Vec<_> = (0..24)
            .map(|i| {
                let flick = &flick;
                s.spawn(move || {
                    let name = if i % 2 == 0 { format!("burst{}", i % 4) } else { format!("py{}", i % 4) };
                    let body = format!("{{\"n\":{i}}}");
                    let r = flick.invoke(&name, &body);
                    (r.status, r.text(), body)
                })
            })
            .collect();
        let answers: Vec<_> = calls.into_iter().map(|c| c.join().unwrap()).collect();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (answers, health.join().unwrap())
    });
    for (status, text, body) in answers {
        assert_eq!(status, 200, "{text}");
        let got: serde_json::Value = serde_json::from_str(&text).unwrap();
        let want: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(got, want);
    }
    assert!(health > 0, "management requests were answered while the burst ran");
}

/// What each start costs outside the function: python3 instances (cold and
/// from a stem cell) run the bootstrap's bytecode compiled at start-up, with
/// `site` off and site-packages still importable; and moves into cgroups are
/// cheap host-wide (the kernel's cgroup2 `favordynmods`), where the host
/// has a cgroup2 mount to show it.
#[test]
fn python_starts_run_compiled_bytecode_of_bootstrap_and_handler_and_cgroup_moves_are_favoured() {
    // The handler's module comes from bytecode compiled at deploy
    // (unchecked-hash: flags 1 in the .pyc header), not from its source.
    let code = "import os, site, sys\n\
                def handler(event, context):\n    \
                    pyc = open(__cached__, 'rb').read(8) if os.path.exists(__cached__) else None\n    \
                    return {'argv0': sys.argv[0], 'no_site': sys.flags.no_site,\n            \
                    'pyc_flags': pyc and int.from_bytes(pyc[4:8], 'little'),\n            \
                    'site_packages': all(p in sys.path for p in site.getsitepackages())}\n";
    for (label, config) in [("cold", "stem_cells = 0\n"), ("stem cell", "")] {
        let flick = Flick::start_with(&[], Some(config));
        flick.deploy_py("starts", "", code);
        if config.is_empty() {
            assert!(flick.wait_until(Duration::from_secs(20), || stem_cells(&flick, "python3/none") >= 1));
        }
        let r = flick.invoke("starts", "{}");
        assert_eq!(r.status, 200, "{label}: {}", r.text());
        let prewarmed = flick.activation(&r.activation_id())["prewarmed"].as_bool();
        assert_eq!(prewarmed, Some(config.is_empty()), "{label}");
        let v = r.json();
        assert!(v["argv0"].as_str().is_some_and(|a| a.ends_with("/python.pyc")), "{label}: {v}");
        assert_eq!(v["no_site"], 1, "{label}: {v}");
        assert_eq!(v["site_packages"], true, "{label}: {v}");
        assert_eq!(v["pyc_flags"], 1, "{label}: the handler's module was compiled at start: {v}");
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    if let Some(cgroup2) = mountinfo.lines().find(|l| l.contains(" - cgroup2 ")) {
        assert!(cgroup2.ends_with(",favordynmods") || cgroup2.contains(",favordynmods,"), "{cgroup2}");
    }
}
