//! Fork templates: a python3 function whose import is slow gets a template
//! that has imported it once; its later instances are forks of it, each in
//! a cgroup of its own, with fresh random state, and a template that could
//! not be trusted (threads, connections, lies) is never used.

mod common;

use std::time::Duration;

use common::Flick;

/// Imports slowly (300 ms), then answers with what tells instances apart.
const SLOW_IMPORT: &str = "import os, random, time\n\
    time.sleep(0.3)\n\
    IMPORTED = time.time()\n\
    def handler(event, context):\n    \
        if isinstance(event, dict) and event.get('hog'):\n        \
            hog = bytearray(event['hog'] << 20)\n        \
            for i in range(0, len(hog), 4096): hog[i] = 1\n    \
        if isinstance(event, dict) and event.get('hold'):\n        \
            time.sleep(event['hold'])\n    \
        memory = [l for l in open('/proc/self/cgroup').read().splitlines() if ':memory:' in l or l.startswith('0::')]\n    \
        return {'pid': os.getpid(), 'imported': IMPORTED, 'random': random.random(),\n            \
                'cgroup': memory[0] if memory else None, 'stream': os.environ.get('AWS_LAMBDA_LOG_STREAM_NAME')}\n";

fn templates(flick: &Flick) -> u64 {
    flick.get("/v1/instances").json()["fork_templates"].as_u64().unwrap_or(0)
}

/// Calls `name` after its instances have stopped (keep_alive is short), so
/// the call is a cold start; returns the answer and its activation record.
fn cold_call(flick: &Flick, name: &str, body: &str) -> (serde_json::Value, serde_json::Value) {
    assert!(flick.wait_until(Duration::from_secs(15), || flick.instances(name) == 0), "{name} scaled to zero");
    let r = flick.invoke(name, body);
    assert_eq!(r.status, 200, "{}", r.text());
    let record = flick.activation(&r.activation_id());
    (r.json(), record)
}

#[test]
fn a_slow_import_is_paid_once_and_later_cold_starts_are_forks_in_cgroups_of_their_own() {
    let flick = Flick::start();
    flick.deploy_py("slow", "keep_alive = \"1s\"\nmemory = \"96Mi\"\n", SLOW_IMPORT);
    let (first, record) = cold_call(&flick, "slow", "{}");
    assert!(record["init_ms"].as_f64().unwrap() >= 300.0, "{record}");
    assert!(flick.wait_until(Duration::from_secs(20), || templates(&flick) == 1), "a template was made");

    // Scaled to zero, then called: a fork, which did not import again.
    let (a, record) = cold_call(&flick, "slow", "{}");
    assert_eq!(record["cold"], true, "{record}");
    assert_eq!(record["prewarmed"], true, "{record}");
    assert!(record["init_ms"].as_f64().unwrap() < 300.0, "the fork imported nothing: {record}");
    assert_ne!(a["imported"], first["imported"], "the first instance and the template each imported once");

    // Two at once: two forks of the same template, told apart.
    let (b, c) = std::thread::scope(|s| {
        let one = s.spawn(|| flick.invoke("slow", r#"{"hold": 1}"#));
        let two = s.spawn(|| flick.invoke("slow", r#"{"hold": 1}"#));
        (one.join().unwrap(), two.join().unwrap())
    });
    let (b, c) = (b.json(), c.json());
    for v in [&b, &c] {
        assert_eq!(v["imported"], a["imported"], "forked from the same template: {v}");
    }
    assert_ne!(b["pid"], c["pid"]);
    assert_ne!(b["random"], c["random"], "each fork draws its own random numbers");
    assert_ne!(b["stream"], c["stream"], "each fork has its own log stream name");
    assert_ne!(b["cgroup"], c["cgroup"], "each fork has its own cgroup");
    assert!(b["cgroup"].as_str().is_some_and(|c| c.contains("/f")), "{b}");

    // A fork that runs out of its memory dies alone: the template forks on.
    let r = flick.invoke("slow", r#"{"hog": 200}"#);
    assert_ne!(r.status, 200, "{}", r.text());
    let record = flick.activation(&r.activation_id());
    assert_eq!(record["status"], "out_of_memory", "{record}");
    let (d, record) = cold_call(&flick, "slow", "{}");
    assert_eq!(d["imported"], a["imported"], "{record}");
    assert_eq!(templates(&flick), 1);
}

#[test]
fn an_import_that_leaves_threads_or_connections_running_gets_no_template() {
    let flick = Flick::start();
    let thread = "import threading, time\n\
        time.sleep(0.1)\n\
        threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n\
        IMPORTED = time.time()\n\
        def handler(event, context):\n    return {'imported': IMPORTED}\n";
    let socket = "import socket, time\n\
        time.sleep(0.1)\n\
        LISTENER = socket.socket()\n\
        LISTENER.bind(('127.0.0.1', 0))\n\
        LISTENER.listen()\n\
        IMPORTED = time.time()\n\
        def handler(event, context):\n    return {'imported': IMPORTED}\n";
    for (name, code) in [("threads", thread), ("socket", socket)] {
        flick.deploy_py(name, "keep_alive = \"1s\"\n", code);
        let (first, _) = cold_call(&flick, name, "{}");
        // Long enough for a template to be made, were it allowed.
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(templates(&flick), 0, "{name}");
        let (again, record) = cold_call(&flick, name, "{}");
        assert_ne!(again["imported"], first["imported"], "{name}: imported afresh: {record}");
    }
}

/// A template runs the function's code, so it may lie: here its `os.fork`
/// names a process it started at import instead of a fork that serves.
/// flick takes that process into a cgroup, hears no `ready` from it, kills
/// it, drops the template and starts the instance the ordinary way — well
/// before the function's 60 s deadline.
#[test]
fn a_template_that_lies_about_its_fork_is_dropped_and_the_call_is_served() {
    let flick = Flick::start();
    let code = "import os, subprocess, time\n\
        time.sleep(0.1)\n\
        DECOY = subprocess.Popen(['sleep', '600'])\n\
        _fork = os.fork\n\
        def lying_fork():\n    \
            pid = _fork()\n    \
            if pid == 0:\n        \
                os._exit(0)\n    \
            return DECOY.pid\n\
        os.fork = lying_fork\n\
        IMPORTED = time.time()\n\
        def handler(event, context):\n    return {'imported': IMPORTED}\n";
    flick.deploy_py("liar", "keep_alive = \"1s\"\ntimeout = \"60s\"\n", code);
    let (first, _) = cold_call(&flick, "liar", "{}");
    assert!(flick.wait_until(Duration::from_secs(20), || templates(&flick) == 1), "a template was made");
    let began = std::time::Instant::now();
    let (again, record) = cold_call(&flick, "liar", "{}");
    assert!(began.elapsed() < Duration::from_secs(30), "served long before the deadline: {record}");
    assert_ne!(again["imported"], first["imported"], "started the ordinary way: {record}");
    assert_eq!(templates(&flick), 0, "the lying template was dropped");
    // And none is made again: the next cold start is an ordinary one, at once.
    let (third, record) = cold_call(&flick, "liar", "{}");
    assert_ne!(third["imported"], again["imported"], "{record}");
    assert_eq!(templates(&flick), 0);
}

/// A redeploy retires the old revision's template, but not under the
/// calls its forks are still serving.
#[test]
fn a_template_goes_with_its_revision_once_its_forks_are_done() {
    let flick = Flick::start();
    flick.deploy_py("rev", "keep_alive = \"1s\"\n", SLOW_IMPORT);
    let (first, _) = cold_call(&flick, "rev", "{}");
    assert!(flick.wait_until(Duration::from_secs(20), || templates(&flick) == 1), "a template was made");
    std::thread::scope(|s| {
        let held = s.spawn(|| {
            assert!(flick.wait_until(Duration::from_secs(15), || flick.instances("rev") == 0));
            flick.invoke("rev", r#"{"hold": 3}"#)
        });
        assert!(flick.wait_until(Duration::from_secs(20), || flick.pool_stat("rev", "inflight") == 1));
        flick.deploy_py("rev", "keep_alive = \"1s\"\n", &format!("{SLOW_IMPORT}\nVERSION = 2\n"));
        let r = held.join().unwrap();
        assert_eq!(r.status, 200, "the fork in flight finished: {}", r.text());
        assert_ne!(r.json()["imported"], first["imported"], "it was a fork");
    });
    assert!(flick.wait_until(Duration::from_secs(10), || templates(&flick) == 0), "retired with revision 1");
    let (v2, _) = cold_call(&flick, "rev", "{}");
    assert_ne!(v2["imported"], first["imported"]);
}

/// Without the sandbox there are no cgroups to move forks into, and the
/// template is an ordinary process: forks still serve, imported once.
#[test]
fn unsandboxed_forks_serve_too() {
    let flick = Flick::start_with(&["--insecure-no-sandbox"], None);
    flick.deploy_py("slow", "keep_alive = \"1s\"\n", SLOW_IMPORT);
    cold_call(&flick, "slow", "{}");
    assert!(flick.wait_until(Duration::from_secs(20), || templates(&flick) == 1), "a template was made");
    let (a, record) = cold_call(&flick, "slow", "{}");
    assert_eq!(record["prewarmed"], true, "{record}");
    let (b, _) = cold_call(&flick, "slow", "{}");
    assert_eq!(a["imported"], b["imported"]);
    assert_ne!(a["pid"], b["pid"]);
}

/// A quick import gets a template too once its revision comes back from
/// zero a second time: from then on its cold starts are forks.
#[test]
fn a_revision_that_keeps_coming_back_from_zero_gets_a_template() {
    let flick = Flick::start();
    let code = "import time\nIMPORTED = time.time()\ndef handler(event, context):\n    return {'imported': IMPORTED}\n";
    flick.deploy_py("quick", "keep_alive = \"1s\"\n", code);
    let (first, record) = cold_call(&flick, "quick", "{}");
    assert_eq!(record["prewarmed"], true, "a stem cell: {record}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(templates(&flick), 0, "one quick cold start calls for no template");
    let (second, _) = cold_call(&flick, "quick", "{}");
    assert_ne!(second["imported"], first["imported"]);
    assert!(flick.wait_until(Duration::from_secs(20), || templates(&flick) == 1), "the second one does");
    let (third, record) = cold_call(&flick, "quick", "{}");
    let (fourth, _) = cold_call(&flick, "quick", "{}");
    assert_eq!(third["imported"], fourth["imported"], "both forks of the template: {record}");
    assert_ne!(third["imported"], second["imported"]);
}

/// `fork_template = false` in the manifest: however slow the import, every
/// instance imports it in a sandbox of its own.
#[test]
fn a_function_can_turn_its_template_off() {
    let flick = Flick::start();
    flick.deploy_py("own", "keep_alive = \"1s\"\nfork_template = false\n", SLOW_IMPORT);
    let (first, _) = cold_call(&flick, "own", "{}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(templates(&flick), 0);
    let (second, record) = cold_call(&flick, "own", "{}");
    assert_ne!(second["imported"], first["imported"], "imported again: {record}");
    assert!(record["init_ms"].as_f64().unwrap() >= 300.0, "{record}");
}
