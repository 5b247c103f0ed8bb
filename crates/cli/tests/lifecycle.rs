//! End-to-end lifecycle of functions on a real `flick up`: deploy, redeploy,
//! rollback, delete; warm reuse, scale to zero, prewarming, bounded waiting,
//! concurrency; activation records and logs through the CLI; graceful
//! shutdown; restart on the same data dir; the bundled examples and
//! `flick new` templates.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{BIN, Flick, Reply, manifest, write_function};

/// sha512 of the three bytes `abc` (FIPS 180-2 test vector).
const SHA512_ABC: &str = "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
                          2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f";

/// A python handler that sleeps as long as the body says (`{"sleep": 1.5}`)
/// and answers with the revision baked into its code and a token naming
/// its process (pids say nothing inside a pid namespace).
fn slow_py(rev: u32) -> String {
    format!(
        "import os, time\n\nPROC = os.urandom(8).hex()\n\n\
         def handler(event, context):\n    \
             time.sleep(float(event.get(\"sleep\", 0)) if isinstance(event, dict) else 0)\n    \
             return {{\"rev\": {rev}, \"proc\": PROC}}\n"
    )
}

/// Like [`slow_py`], but a call whose body has `"comm"` first names its
/// process so (seen in the host's `/proc/<pid>/comm`, even from inside a
/// sandbox's pid namespace), so the process serving that call can be found.
const TAGGED_SLOW_PY: &str = "import ctypes, time\n\n\
    def handler(event, context):\n    \
        if event.get(\"comm\"):\n        \
            ctypes.CDLL(None).prctl(15, event[\"comm\"].encode(), 0, 0, 0)\n    \
        time.sleep(float(event.get(\"sleep\", 0)))\n    \
        return {\"rev\": 1}\n";

/// A python handler with a module-level counter: it only grows while the
/// same process serves.
const COUNTER_PY: &str = "import os\n\ncount = 0\nPROC = os.urandom(8).hex()\n\n\
    def handler(event, context):\n    \
        global count\n    \
        count += 1\n    \
        return {\"count\": count, \"proc\": PROC}\n";

fn ok_json(r: &Reply) -> serde_json::Value {
    assert_eq!(r.status, 200, "expected 200, got {}: {}", r.status, r.text());
    r.json()
}

fn activations_of(flick: &Flick, name: &str) -> Vec<serde_json::Value> {
    let r = flick.get(&format!("/v1/activations?function={name}&limit=100"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["activations"].as_array().unwrap().clone()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// An invocation from a client of its own, so it can run while the test
/// holds `&mut Flick` (e.g. to stop it).
fn invoke_detached(base: &str, key: &str, name: &str, body: &str) -> (u16, String) {
    let client = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap();
    let resp = client
        .post(format!("{base}/fn/{name}"))
        .bearer_auth(key)
        .body(body.to_string())
        .send()
        .unwrap_or_else(|e| panic!("POST /fn/{name}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().unwrap_or_default())
}

/// Python code that names its process `comm` (seen in the host's
/// `/proc/<pid>/comm` even from inside a sandbox's pid namespace, and
/// whether or not the process started as a generic stem cell).
fn set_comm_py(comm: &str) -> String {
    format!(
        "try:\n    with open(\"/proc/self/comm\", \"w\") as _f:\n        _f.write(\"{comm}\")\nexcept OSError:\n    pass\n"
    )
}

/// Parsed `/proc/<pid>/stat`: (ppid, state).
fn stat_of(pid: u32) -> Option<(u32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((ppid, state))
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc").unwrap().flatten().filter_map(|e| e.file_name().to_string_lossy().parse().ok()).collect()
}

/// Is `pid` a live process (not gone, not a zombie)?
fn alive(pid: u32) -> bool {
    stat_of(pid).is_some_and(|(_, state)| !matches!(state, 'Z' | 'X' | 'x'))
}

/// Live processes whose name (`comm`) is `comm`.
fn processes_named(comm: &str) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm))
        .filter(|pid| alive(*pid))
        .collect()
}

/// Every live descendant of `root`.
fn descendants(root: u32) -> Vec<u32> {
    let table: Vec<(u32, u32)> = all_pids().into_iter().filter_map(|p| stat_of(p).map(|(pp, _)| (p, pp))).collect();
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid) in &table {
            if ppid == parent && !found.contains(&pid) {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found.retain(|p| alive(*p));
    found
}

/// The `flick up` process serving `data` (a child of this test process).
fn flick_pid(data: &Path) -> u32 {
    let needle = data.display().to_string();
    let me = std::process::id();
    let found: Vec<u32> = all_pids()
        .into_iter()
        .filter(|pid| stat_of(*pid).is_some_and(|(ppid, _)| ppid == me))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| text(&c).split('\0').any(|a| a == "up") && text(&c).contains(&needle))
        })
        .collect();
    assert_eq!(found.len(), 1, "expected one `flick up` for {needle}: {found:?}");
    found[0]
}

/// Instances (and starts) of `name` in `/v1/instances`: (instances, starting).
fn pool_status(flick: &Flick, name: &str) -> (u64, u64) {
    let v = flick.get("/v1/instances").json();
    v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["function"] == name)
        .fold((0, 0), |(n, s), i| (n + i["instances"].as_u64().unwrap_or(0), s + i["starting"].as_u64().unwrap_or(0)))
}

/// Processes (other than this test) whose command line or environment
/// mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = text(&raw).replace('\0', " ");
        let environ = std::fs::read(entry.path().join("environ")).map(|e| text(&e)).unwrap_or_default();
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')));
        if !zombie && (cmdline.contains(needle) || environ.split('\0').any(|v| v.contains(needle))) {
            found.push((pid, cmdline));
        }
    }
    found
}

#[test]
fn deploy_redeploy_rollback_list_show_delete() {
    let flick = Flick::start();
    let v1 = "def handler(event, context):\n    return {\"code\": \"v1\"}\n";
    let v2 = "def handler(event, context):\n    return {\"code\": \"v2\"}\n";
    let dir = flick.deploy_py("greet", "", v1);
    let out = flick.deploy(&dir);
    assert!(out.contains("unchanged"), "identical redeploy should say unchanged: {out}");
    assert!(out.contains("revision 1"), "{out}");
    let revs = flick.get("/v1/functions/greet/revisions").json();
    assert_eq!(revs["current_revision"], 1, "{revs}");
    assert_eq!(revs["revisions"].as_array().unwrap().len(), 1, "an unchanged deploy adds no revision: {revs}");
    assert_eq!(ok_json(&flick.invoke("greet", ""))["code"], "v1");

    // The first deploy (done by deploy_files) printed revision 1; check the
    // wording on a fresh function too.
    let other = write_function(
        flick.data_dir(),
        "other",
        &[("flick.toml", &manifest("other", "python3", "main.handler", "")), ("main.py", v1)],
    );
    let out = flick.deploy(&other);
    assert!(out.contains("deployed other revision 1"), "{out}");
    let out = flick.cli(&["rollback", "other"]);
    assert!(!out.status.success(), "there is no revision before 1");
    assert!(text(&out.stderr).contains("no revision before 1"), "{}", text(&out.stderr));

    // New code: revision 2 serves it.
    std::fs::write(dir.join("main.py"), v2).unwrap();
    let out = flick.deploy(&dir);
    assert!(out.contains("revision 2") && !out.contains("unchanged"), "{out}");
    assert_eq!(ok_json(&flick.invoke("greet", ""))["code"], "v2");
    let revs = flick.get("/v1/functions/greet/revisions").json();
    assert_eq!(revs["current_revision"], 2, "{revs}");
    assert_eq!(revs["revisions"].as_array().unwrap().len(), 2, "{revs}");

    // Rollback to the previous revision, then forward again by number.
    let out = flick.cli_ok(&["rollback", "greet"]);
    assert!(out.contains("revision 1"), "{out}");
    assert_eq!(ok_json(&flick.invoke("greet", ""))["code"], "v1");
    assert_eq!(flick.get("/v1/functions/greet").json()["current_revision"], 1);
    let out = flick.cli_ok(&["rollback", "greet", "2"]);
    assert!(out.contains("revision 2"), "{out}");
    assert_eq!(ok_json(&flick.invoke("greet", ""))["code"], "v2");

    // A revision that does not exist: a clear failure, nothing changes.
    let out = flick.cli(&["rollback", "greet", "7"]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "rollback to a missing revision must fail");
    assert!(err.contains("revision 7") && err.contains("greet"), "message should name it: {err}");
    assert_eq!(ok_json(&flick.invoke("greet", ""))["code"], "v2");

    // list and show.
    let out = flick.cli_ok(&["list"]);
    let line = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some("greet"))
        .unwrap_or_else(|| panic!("greet missing from `flick list`: {out}"));
    let cols: Vec<_> = line.split_whitespace().collect();
    assert_eq!(&cols[..4], ["greet", "python3", "2", "private"], "{out}");
    assert!(out.lines().any(|l| l.starts_with("other ")), "{out}");
    let out = flick.cli_ok(&["show", "greet"]);
    assert!(out.contains("function:  greet"), "{out}");
    assert!(out.contains("revision:  2 of 2"), "{out}");
    assert!(out.contains("runtime = \"python3\""), "{out}");
    assert!(out.contains("handler = \"main.handler\""), "{out}");
    let out = flick.cli_ok(&["revisions", "greet"]);
    let current: Vec<_> = out.lines().filter(|l| l.starts_with('*')).collect();
    assert_eq!(current.len(), 1, "one current revision marked: {out}");
    assert_eq!(current[0].trim_start_matches('*').split_whitespace().next(), Some("2"), "{out}");

    // Deploying after a rollback makes a new revision that serves the new
    // code (here: v2's code again, while revision 1 is current).
    flick.cli_ok(&["rollback", "greet", "1"]);
    assert_eq!(ok_json(&flick.invoke("greet", ""))["code"], "v1");
    let out = flick.deploy(&dir);
    assert!(out.contains("revision 3") && !out.contains("unchanged"), "{out}");
    assert_eq!(ok_json(&flick.invoke("greet", ""))["code"], "v2");
    assert!(flick.instances("greet") >= 1);

    // delete: gone from invoke, the API and the list; its instances stop.
    let out = flick.cli_ok(&["delete", "greet"]);
    assert!(out.contains("deleted greet"), "{out}");
    let r = flick.invoke("greet", "");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("greet"), "{}", r.text());
    assert_eq!(flick.get("/v1/functions/greet").status, 404);
    assert_eq!(flick.get("/v1/functions/greet/revisions").status, 404);
    let stopped = flick.wait_until(Duration::from_secs(5), || flick.instances("greet") == 0);
    assert!(stopped, "a deleted function's instances keep running: {}", flick.get("/v1/instances").text());
    let out = flick.cli_ok(&["list"]);
    assert!(!out.lines().any(|l| l.starts_with("greet ")), "{out}");
    let out = flick.cli(&["show", "greet"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("greet"), "{}", text(&out.stderr));
    // The other function is untouched.
    assert_eq!(ok_json(&flick.invoke("other", ""))["code"], "v1");
}

#[test]
fn deploy_while_a_call_is_in_flight() {
    let flick = Flick::start();
    let dir = flick.deploy_py("swap", "", &slow_py(1));
    assert_eq!(ok_json(&flick.invoke("swap", "{}"))["rev"], 1, "warm-up");

    std::thread::scope(|s| {
        let slow = s.spawn(|| flick.invoke("swap", "{\"sleep\": 1.5}"));
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(dir.join("main.py"), slow_py(2)).unwrap();
        let out = flick.deploy(&dir);
        assert!(out.contains("revision 2"), "{out}");
        assert!(!slow.is_finished(), "the deploy should have happened while the slow call ran");

        let next = flick.invoke("swap", "{}");
        assert_eq!(ok_json(&next)["rev"], 2, "the next call is served by the new revision");
        assert_eq!(flick.activation(&next.activation_id())["revision"], 2);

        let slow = slow.join().unwrap();
        assert_eq!(ok_json(&slow)["rev"], 1, "the call in flight finishes on its revision");
        let rec = flick.activation(&slow.activation_id());
        assert_eq!(rec["revision"], 1);
        assert_eq!(rec["status"], "success");
    });

    // Every call succeeded, and the old revision's instance drains away.
    for a in activations_of(&flick, "swap") {
        assert_eq!(a["status"], "success", "{a}");
    }
    let drained = flick.wait_until(Duration::from_secs(5), || {
        let v = flick.get("/v1/instances").json();
        !v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["function"] == "swap" && i["revision"] == 1 && i["instances"].as_u64() > Some(0))
    });
    assert!(drained, "revision 1's instance kept running: {}", flick.get("/v1/instances").text());
}

#[test]
fn warm_instances_are_reused() {
    let flick = Flick::start();
    flick.deploy_py("counter", "", COUNTER_PY);

    let first = flick.invoke("counter", "{}");
    let body = ok_json(&first);
    assert_eq!(body["count"], 1);
    let rec = flick.activation(&first.activation_id());
    assert_eq!(rec["cold"], true, "{rec}");
    assert!(rec["init_ms"].as_f64().unwrap() > 0.0, "a cold start takes time: {rec}");
    assert_eq!(rec["status"], "success");
    assert_eq!(rec["function"], "counter");
    assert_eq!(rec["revision"], 1);
    assert_eq!(first.header("x-flick-status").as_deref(), Some("success"));

    for n in 2..=3 {
        let r = flick.invoke("counter", "{}");
        let b = ok_json(&r);
        assert_eq!(b["count"], n, "module state survives between calls: {b}");
        assert_eq!(b["proc"], body["proc"], "same process");
        let rec = flick.activation(&r.activation_id());
        assert_eq!(rec["cold"], false, "{rec}");
        assert_eq!(rec["init_ms"].as_f64(), Some(0.0), "{rec}");
    }
    assert_eq!(flick.instances("counter"), 1);
}

#[test]
fn keep_alive_scales_to_zero_and_the_next_call_is_cold() {
    let flick = Flick::start();
    flick.deploy_py("idle", "keep_alive = \"1s\"\n", COUNTER_PY);
    assert_eq!(flick.instances("idle"), 0, "nothing runs before the first call");

    let r = flick.invoke("idle", "{}");
    let called = Instant::now();
    assert_eq!(ok_json(&r)["count"], 1);
    assert_eq!(flick.activation(&r.activation_id())["cold"], true);
    assert_eq!(flick.instances("idle"), 1, "the instance stays warm right after the call");

    let gone = flick.wait_until(Duration::from_secs(8), || flick.instances("idle") == 0);
    assert!(gone, "the instance did not stop after keep_alive");
    assert!(called.elapsed() >= Duration::from_millis(900), "stopped before keep_alive passed: {:?}", called.elapsed());

    let r = flick.invoke("idle", "{}");
    assert_eq!(ok_json(&r)["count"], 1, "a fresh process");
    let rec = flick.activation(&r.activation_id());
    assert_eq!(rec["cold"], true, "{rec}");
    assert!(rec["init_ms"].as_f64().unwrap() > 0.0, "{rec}");
}

#[test]
fn min_instances_prewarms_and_stays() {
    let flick = Flick::start();
    flick.deploy_py("warm", "min_instances = 1\nkeep_alive = \"1s\"\n", COUNTER_PY);
    let ready = flick.wait_until(Duration::from_secs(10), || flick.instances("warm") == 1);
    assert!(ready, "min_instances = 1 did not start an instance before any call");

    let r = flick.invoke("warm", "{}");
    assert_eq!(ok_json(&r)["count"], 1, "the prewarmed instance serves the first call");
    let rec = flick.activation(&r.activation_id());
    assert_eq!(rec["cold"], false, "the first call should be warm: {rec}");
    assert_eq!(rec["init_ms"].as_f64(), Some(0.0), "{rec}");

    // Past keep_alive, the minimum is still kept.
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(flick.instances("warm"), 1, "min_instances must survive keep_alive");
    let r = flick.invoke("warm", "{}");
    assert_eq!(ok_json(&r)["count"], 2, "still the same instance");
    assert_eq!(flick.activation(&r.activation_id())["cold"], false);
}

/// Forces "all max_instances busy until the deadline": the only instance
/// allowed (max_instances = 1) is a prewarm whose import takes 3 s, so a call
/// with a 1 s timeout can neither use it nor start another, and must get 429
/// at its deadline. Once the instance is ready, calls succeed.
#[test]
fn all_instances_busy_until_the_deadline_is_429() {
    let flick = Flick::start();
    // Unique across concurrently running test binaries: its process is found by it.
    let name = format!("busy-{}", std::process::id());
    let comm = format!("fk{}b", std::process::id());
    let code = format!(
        "import time\n{}time.sleep(3)\n\ndef handler(event, context):\n    return {{\"ok\": True}}\n",
        set_comm_py(&comm)
    );
    flick.deploy_py(&name, "timeout = \"1s\"\nmin_instances = 1\nmax_instances = 1\n", &code);
    // The prewarm is under way: its 3 s import has begun (or is about to).
    let importing = flick.wait_until(Duration::from_secs(10), || {
        pool_status(&flick, &name).1 >= 1 || !processes_named(&comm).is_empty()
    });
    assert!(importing, "the prewarm never started: {}", flick.get("/v1/instances").text());
    assert_eq!(flick.instances(&name), 0, "sanity: the prewarmed instance is not ready yet");

    let t0 = Instant::now();
    let r = flick.invoke(&name, "{}");
    let waited = t0.elapsed();
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("retry-after").is_some(), "429 without Retry-After: {:?}", r.headers);
    let err = r.json();
    assert_eq!(err["error"]["code"], "overloaded", "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains(&name), "{err}");
    assert!(waited >= Duration::from_millis(900), "answered before the deadline: {waited:?}");
    assert!(waited < Duration::from_millis(2500), "waited past the 1s deadline: {waited:?}");
    assert!(r.header("x-flick-activation-id").is_none(), "a refused call runs nothing");

    let ready = flick.wait_until(Duration::from_secs(10), || flick.instances(&name) == 1);
    assert!(ready, "the prewarmed instance never became ready");
    let r = flick.invoke(&name, "{}");
    assert_eq!(ok_json(&r)["ok"], true);
    assert_eq!(flick.activation(&r.activation_id())["cold"], false);
}

/// max_instances = 2, 4 concurrent calls of 0.5 s: never more than 2
/// instances, 2 cold starts, the other 2 wait for a free slot, all succeed.
#[test]
fn max_instances_bounds_the_pool_and_waiters_succeed() {
    let flick = Flick::start();
    flick.deploy_py("capped", "max_instances = 2\ntimeout = \"20s\"\n", &slow_py(1));

    let done = AtomicBool::new(false);
    let peak = AtomicU64::new(0);
    let replies = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(flick.instances("capped"), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let calls: Vec<_> = (0..4).map(|_| s.spawn(|| flick.invoke("capped", "{\"sleep\": 0.5}"))).collect();
        let replies: Vec<Reply> = calls.into_iter().map(|c| c.join().unwrap()).collect();
        done.store(true, Ordering::SeqCst);
        watcher.join().unwrap();
        replies
    });
    peak.fetch_max(flick.instances("capped"), Ordering::SeqCst);
    assert!(peak.load(Ordering::SeqCst) <= 2, "more than max_instances ran: {}", peak.load(Ordering::SeqCst));
    assert_eq!(flick.instances("capped"), 2);

    let mut cold = 0;
    let mut waited = 0;
    for r in &replies {
        assert_eq!(ok_json(r)["rev"], 1);
        let rec = flick.activation(&r.activation_id());
        assert_eq!(rec["status"], "success", "{rec}");
        if rec["cold"] == true {
            cold += 1;
        } else {
            assert!(rec["wait_ms"].as_f64().unwrap() >= 400.0, "a warm call here had to wait for a slot: {rec}");
            waited += 1;
        }
    }
    assert_eq!((cold, waited), (2, 2), "two instances start, two calls wait for them");
}

#[test]
fn concurrency_packs_calls_onto_one_instance() {
    let flick = Flick::start();
    flick.deploy_py("packed", "concurrency = 4\n", &slow_py(1));
    let warm = ok_json(&flick.invoke("packed", "{}"));
    assert_eq!(flick.instances("packed"), 1);
    // (The autoscaler may add an instance afterwards under this load; what
    // matters is that no call had to wait for one.)

    let replies: Vec<Reply> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..4).map(|_| s.spawn(|| flick.invoke("packed", "{\"sleep\": 0.5}"))).collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    // (handler started, ended) per call, from the records.
    let mut spans = Vec::new();
    for r in &replies {
        let b = ok_json(r);
        assert_eq!(b["proc"], warm["proc"], "every call ran in the one instance: {b}");
        let rec = flick.activation(&r.activation_id());
        assert_eq!(rec["cold"], false, "{rec}");
        assert!(rec["wait_ms"].as_f64().unwrap() < 250.0, "no call should wait for a slot: {rec}");
        let run_start = rec["start_ms"].as_f64().unwrap() + rec["wait_ms"].as_f64().unwrap();
        spans.push((run_start, rec["end_ms"].as_f64().unwrap()));
    }
    let last_start = spans.iter().map(|s| s.0).fold(f64::MIN, f64::max);
    let first_end = spans.iter().map(|s| s.1).fold(f64::MAX, f64::min);
    assert!(last_start < first_end, "the 4 calls did not all run at the same time: {spans:?}");
}

#[test]
fn activations_activation_and_logs_through_the_cli() {
    let flick = Flick::start();
    let code = "def handler(event, context):\n    \
                print(\"handled \" + event.get(\"tag\", \"none\"))\n    \
                return {\"ok\": True}\n";
    flick.deploy_py("talker", "", code);
    let r = flick.invoke("talker", "{\"tag\": \"first-7f3a\"}");
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.activation_id();

    let out = flick.cli_ok(&["activations", "talker"]);
    let line = out.lines().find(|l| l.starts_with(&id)).unwrap_or_else(|| panic!("{id} missing: {out}"));
    assert!(line.contains("talker") && line.contains("success") && line.contains("cold"), "{line}");

    let out = flick.cli_ok(&["activation", &id]);
    assert!(out.contains(&format!("activation: {id}")), "{out}");
    assert!(out.contains("function:   talker (revision 1)"), "{out}");
    assert!(out.contains("status:     success (HTTP 200)"), "{out}");
    assert!(out.contains("handled first-7f3a"), "logs missing from `flick activation`: {out}");
    let json: serde_json::Value = serde_json::from_str(&flick.cli_ok(&["activation", &id, "--json"])).unwrap();
    assert_eq!(json["id"], id.as_str());
    assert_eq!(json["status"], "success");
    assert!(
        json["logs"].as_array().unwrap().iter().any(|l| l["text"] == "handled first-7f3a" && l["stream"] == "stdout"),
        "{json}"
    );

    let out = flick.cli_ok(&["logs", "talker"]);
    assert!(out.contains("handled first-7f3a"), "{out}");
    let out = flick.cli(&["logs", "no-such-fn"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no-such-fn"), "{}", text(&out.stderr));

    // logs -f prints lines of calls that finish after it started.
    let mut follow = Command::new(BIN)
        .args(["logs", "talker", "-f"])
        .env("FLICK_DATA_DIR", flick.data_dir())
        .env_remove("FLICK_URL")
        .env_remove("FLICK_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let wait_for = |needle: &str, seen: &mut Vec<String>| -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    seen.push(line);
                    if hit {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    };
    let found_old = wait_for("handled first-7f3a", &mut seen);
    let r = flick.invoke("talker", "{\"tag\": \"second-9b2c\"}");
    assert_eq!(r.status, 200);
    let found_new = found_old && wait_for("handled second-9b2c", &mut seen);
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(found_old, "`flick logs -f` did not print the recent lines: {seen:?}");
    assert!(found_new, "`flick logs -f` did not print the new call's line within 10s: {seen:?}");
    let first_count = seen.iter().filter(|l| l.contains("first-7f3a")).count();
    assert_eq!(first_count, 1, "old lines printed again: {seen:?}");
}

#[test]
fn graceful_shutdown_finishes_calls_and_leaves_no_processes() {
    let mut flick = Flick::start();
    // Unique across concurrently running test binaries: instances are found by it.
    let name = format!("linger-{}", std::process::id());
    let comm = format!("fk{}g", std::process::id());
    flick.deploy_py(&name, "", TAGGED_SLOW_PY);
    let data = flick.data_dir().to_path_buf();
    let server = flick_pid(&data);
    let (base, key) = (flick.base.clone(), flick.key.clone());

    let call = {
        let (name, body) = (name.clone(), format!("{{\"sleep\": 1.0, \"comm\": \"{comm}\"}}"));
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let reply = invoke_detached(&base, &key, &name, &body);
            (reply, t0.elapsed())
        })
    };
    // The call is in flight once its process took the name.
    let started = flick.wait_until(Duration::from_secs(10), || !processes_named(&comm).is_empty());
    assert!(started, "the slow call never reached its handler");
    std::thread::sleep(Duration::from_millis(100));
    let instance = processes_named(&comm);
    assert_eq!(instance.len(), 1, "sanity: the process serving the call is visible in /proc");
    let tree = descendants(server);
    assert!(tree.contains(&instance[0]), "sanity: the instance {instance:?} descends from flick {server}: {tree:?}");

    let status = flick.stop();
    let ((code, body), took) = call.join().unwrap();
    assert!(status.success(), "flick exited with {status} after SIGTERM");
    assert_eq!(code, 200, "the call in flight must complete: {body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["rev"], 1);
    assert!(took >= Duration::from_millis(900), "the call returned before its handler finished: {took:?}");

    let canonical = data.canonicalize().unwrap_or(data.clone());
    let mut left = Vec::new();
    let clean = flick.wait_until(Duration::from_secs(3), || {
        left = tree.iter().filter(|p| alive(**p)).map(|p| (*p, "started by flick".to_string())).collect();
        left.extend(processes_named(&comm).into_iter().map(|p| (p, "the instance".to_string())));
        left.extend(processes_mentioning(&data.display().to_string()));
        left.extend(processes_mentioning(&canonical.display().to_string()));
        left.is_empty() && !alive(server)
    });
    assert!(clean, "processes of flick or the function outlived it: {left:?}");
    assert!(!data.join("flick.addr").exists(), "flick.addr should be removed on a clean stop");
}

/// Restart on the same data dir keeps functions, revisions, the key and
/// activation records; retention (`activations_per_function = 3`) is
/// applied as records are written, and still holds after the restart.
#[test]
fn restart_keeps_functions_and_records_and_applies_retention() {
    let flick = Flick::start_with(&[], Some("activations_per_function = 3\n"));
    let dir = flick.deploy_py("durable", "", &slow_py(1));
    std::fs::write(dir.join("main.py"), slow_py(2)).unwrap();
    flick.deploy(&dir);
    let ids: Vec<String> = (0..5)
        .map(|_| {
            let r = flick.invoke("durable", "{}");
            assert_eq!(ok_json(&r)["rev"], 2);
            r.activation_id()
        })
        .collect();
    let mut newest = ids[2..].to_vec();
    newest.sort();
    let ids_of = |flick: &Flick| {
        let mut kept: Vec<String> =
            activations_of(flick, "durable").iter().map(|a| a["id"].as_str().unwrap().to_string()).collect();
        kept.sort();
        kept
    };
    assert_eq!(ids_of(&flick), newest, "the count is kept as records are written: the 3 newest");
    let key = flick.key.clone();

    let flick = Flick::start_in(flick.into_dir(), &[]);
    assert_eq!(flick.key, key, "the admin key survives a restart");
    let f = flick.get("/v1/functions/durable");
    assert_eq!(f.status, 200, "{}", f.text());
    assert_eq!(f.json()["current_revision"], 2);
    let revs = flick.get("/v1/functions/durable/revisions").json();
    assert_eq!(revs["revisions"].as_array().unwrap().len(), 2, "{revs}");
    let last = flick.activation(&ids[4]);
    assert_eq!(last["function"], "durable");
    assert_eq!(last["status"], "success");
    assert_eq!(last["revision"], 2);

    // Retention: at most 3 records per function, the newest ones.
    assert_eq!(ids_of(&flick), newest, "the 3 newest records must be the ones kept");
    assert_eq!(flick.get(&format!("/v1/activations/{}", ids[0])).status, 404, "the oldest record is pruned");

    let r = flick.invoke("durable", "{}");
    assert_eq!(ok_json(&r)["rev"], 2, "the current revision still serves");
    assert_eq!(flick.activation(&r.activation_id())["cold"], true, "a new flick has no warm instances");
}

#[test]
fn up_with_examples_serves_all_five_without_a_key() {
    let flick = Flick::start_with(&["--examples"], None);
    let all_there = flick.wait_until(Duration::from_secs(30), || {
        let v = flick.get("/v1/functions").json();
        v["functions"].as_array().map(|a| a.len()) == Some(5)
    });
    assert!(all_there, "examples not deployed: {}", flick.get("/v1/functions").text());

    let r = flick.request("POST", "/fn/hello-python", &b"{\"name\":\"Ada\"}"[..], false);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["message"].as_str().unwrap().contains("Ada"), "{}", r.text());

    let r = flick.request("POST", "/fn/hello-node", &b"{\"name\":\"Ada\"}"[..], false);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["message"].as_str().unwrap().contains("Ada"), "{}", r.text());

    let r = flick.request("POST", "/fn/sha512", &b"abc"[..], false);
    assert_eq!(r.status, 200, "{}", r.text());
    let digest = r.text();
    assert_eq!(digest.split_whitespace().next(), Some(SHA512_ABC), "{digest}");

    let r = flick.request("POST", "/fn/echo-http/some/path?x=1", &b"ping"[..], false);
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["method"], "POST", "{echo}");
    assert_eq!(echo["path"], "/some/path?x=1", "{echo}");
    assert_eq!(echo["body"], "ping", "{echo}");

    // The sequence: hello-python's greeting, hashed by sha512.
    let r = flick.request("POST", "/fn/hello-sequence", &b"{\"name\":\"Ada\"}"[..], false);
    assert_eq!(r.status, 200, "{}", r.text());
    let digest = r.text();
    let hex = digest.split_whitespace().next().unwrap_or("");
    assert!(hex.len() == 128 && hex.chars().all(|c| c.is_ascii_hexdigit()), "{digest}");

    // Public invoke does not open the management API.
    assert_eq!(flick.get_anon("/v1/functions").status, 401);
}

#[test]
fn flick_new_scaffolds_a_working_function_for_each_runtime() {
    let flick = Flick::start();
    let parent = flick.data_dir().join("scaffolds");
    std::fs::create_dir_all(&parent).unwrap();
    let parent_s = parent.to_str().unwrap();
    for runtime in ["python3", "node", "exec", "http"] {
        let name = format!("new-{runtime}");
        let out = flick.cli_ok(&["new", &name, "--runtime", runtime, "--dir", parent_s]);
        assert!(out.contains("created"), "{out}");
        let dir = parent.join(&name);
        let toml = std::fs::read_to_string(dir.join("flick.toml")).unwrap();
        assert!(toml.contains(&format!("name = \"{name}\"")), "{toml}");
        let out = flick.deploy(&dir);
        assert!(out.contains(&format!("deployed {name} revision 1")), "{out}");

        let check = |args: &[&str], expect: &str| {
            let out = flick.cli(args);
            let stdout = text(&out.stdout);
            assert!(out.status.success(), "{runtime}: flick {args:?} failed: {}{stdout}", text(&out.stderr));
            assert!(stdout.contains(expect), "{runtime}: expected {expect:?} in {stdout}");
        };
        match runtime {
            "python3" | "node" => check(&["invoke", &name, "-d", "{\"name\":\"Ada\"}"], "Hello, Ada!"),
            "exec" => check(&["invoke", &name, "-d", "abc"], SHA512_ABC),
            _ => check(&["invoke", &name, "-d", "ping", "--path", "/p"], "\"body\": \"ping\""),
        }
        let show = flick.cli_ok(&["show", &name]);
        assert!(show.contains(&format!("runtime = \"{runtime}\"")), "{show}");
    }
    // Refuses to overwrite, and refuses a bad name.
    let out = flick.cli(&["new", "new-python3", "--runtime", "python3", "--dir", parent_s]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("already exists"), "{}", text(&out.stderr));
    let out = flick.cli(&["new", "Bad.Name", "--dir", parent_s]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("Bad.Name"), "{}", text(&out.stderr));
    assert!(!Path::new(&parent.join("Bad.Name")).exists());
}
