//! The control plane's one truth, end to end on a real `flick up`: what the
//! API says is what is served, under concurrent deploys, deletes and
//! `public` flips; a deleted function never comes back through a namesake;
//! a data dir serves one flick; deletes and pruning leave nothing behind;
//! faults (full disk, locked database, a dead warm instance) are named and
//! handled rightly.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{BIN, Flick, manifest, write_function};

/// A python function that answers with its code's `tag`, the revision
/// number its instance was started for, and sleeps when asked to.
fn tagged_py(tag: &str) -> String {
    format!(
        "import os, time\n\n\
         def handler(event, context):\n    \
             if isinstance(event, dict) and event.get(\"sleep\"):\n        \
                 time.sleep(float(event[\"sleep\"]))\n    \
             return {{\"tag\": \"{tag}\", \"rev\": int(os.environ[\"FLICK_FUNCTION_REVISION\"])}}\n"
    )
}

/// Writes a version of function `name` into its own directory (so threads
/// can deploy versions side by side) and returns that directory.
fn version(flick: &Flick, name: &str, tag: &str, extra: &str) -> PathBuf {
    let parent = flick.data_dir().join("versions");
    write_function(
        &parent,
        &format!("{name}-{tag}"),
        &[("flick.toml", &manifest(name, "python3", "main.handler", extra)), ("main.py", &tagged_py(tag))],
    )
}

fn deploy_dir(flick: &Flick, dir: &Path) -> std::process::Output {
    flick.cli(&["deploy", dir.to_str().unwrap()])
}

/// Entries of a data dir subdirectory (code/, archives/).
fn entries(flick: &Flick, sub: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(flick.data_dir().join(sub))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Budget in use vs instances (and starts) all pools list: equal unless an
/// instance lives in a pool the scheduler no longer knows (a leak).
fn budget_matches_pools(flick: &Flick) -> bool {
    let v = flick.get("/v1/instances").json();
    let listed: u64 = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["instances"].as_u64().unwrap() + p["starting"].as_u64().unwrap())
        .sum();
    v["budget"]["instances"].as_u64().unwrap() == listed
}

#[test]
fn delete_and_recreate_never_serves_the_deleted_code() {
    let flick = Flick::start();
    let old = version(&flick, "reborn", "old", "");
    let new = version(&flick, "reborn", "new", "");
    assert!(deploy_dir(&flick, &old).status.success());
    assert_eq!(flick.invoke("reborn", "{}").json()["tag"], "old");

    // A call still running on the old function keeps its pool alive while
    // the function is deleted and created again under the same name.
    std::thread::scope(|s| {
        let slow = s.spawn(|| flick.invoke("reborn", r#"{"sleep": 3}"#));
        assert!(flick.wait_until(Duration::from_secs(10), || flick.pool_stat("reborn", "inflight") == 1));
        assert_eq!(flick.request("DELETE", "/v1/functions/reborn", Vec::new(), true).status, 200);
        assert!(deploy_dir(&flick, &new).status.success());
        for _ in 0..4 {
            let r = flick.invoke("reborn", "{}");
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.json()["tag"], "new", "the deleted function's code answered: {}", r.text());
        }
        // The call in flight finished on the code it started on.
        assert_eq!(slow.join().unwrap().json()["tag"], "old");
    });
    let f = flick.get("/v1/functions/reborn").json();
    assert_eq!(f["current_revision"], 1, "a new function starts at revision 1: {f}");
    // Its records are its own: the old call finished after the delete.
    let records = flick.get("/v1/activations?function=reborn&limit=100").json();
    for a in records["activations"].as_array().unwrap() {
        assert!(a["response"].as_str().unwrap().contains("new"), "record of the deleted function: {a}");
    }
}

/// Packs a version of function `name` (see [`version`]) into a deployable archive.
fn packed(flick: &Flick, name: &str, tag: &str, extra: &str) -> Vec<u8> {
    flick_package::pack_dir(&version(flick, name, tag, extra)).unwrap()
}

fn deploy_archive(flick: &Flick, archive: &[u8]) -> u16 {
    flick.request("POST", "/v1/functions", archive.to_vec(), true).status
}

/// Deploys of alternating `public` flags race each other: afterwards the
/// API's revision is the one served, and its `public` flag is what callers
/// without a key get.
#[test]
fn concurrent_deploys_leave_the_api_and_the_served_revision_in_agreement() {
    let flick = Flick::start();
    for round in 0..12 {
        let archives: Vec<Vec<u8>> = (0..12)
            .map(|i| {
                let public = if i % 2 == 0 { "public = true" } else { "public = false" };
                packed(&flick, "race", &format!("r{round}v{i}"), &format!("keep_alive = \"1s\"\n{public}\n"))
            })
            .collect();
        std::thread::scope(|s| {
            for archive in &archives {
                s.spawn(|| assert_eq!(deploy_archive(&flick, archive), 201));
            }
            // Calls during the deploys must never fail.
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..3 {
                        let r = flick.invoke("race", "{}");
                        assert!(r.status == 200 || r.status == 404, "{}: {}", r.status, r.text());
                    }
                });
            }
        });
        let info = flick.get("/v1/functions/race").json();
        let served = flick.invoke("race", "{}").json();
        assert_eq!(served["rev"], info["current_revision"], "round {round}: API says {info}, served {served}");
        let revisions = flick.get("/v1/functions/race/revisions").json();
        assert_eq!(revisions["current_revision"], info["current_revision"], "{revisions}");
        let anon = flick.request("POST", "/fn/race", "{}", false);
        let expected = if info["public"] == true { 200 } else { 401 };
        assert_eq!(anon.status, expected, "round {round}: API says {info}, anonymous got {}", anon.text());
    }
    // No instance outlives the pools the scheduler knows about.
    assert!(
        flick.wait_until(Duration::from_secs(20), || budget_matches_pools(&flick)),
        "budget and pools disagree: {}",
        flick.get("/v1/instances").text()
    );
}

#[test]
fn deploys_racing_deletes_leave_no_ghost_functions() {
    let flick = Flick::start();
    for round in 0..16 {
        let archives: Vec<Vec<u8>> = (0..6).map(|i| packed(&flick, "ghost", &format!("r{round}v{i}"), "")).collect();
        std::thread::scope(|s| {
            for archive in &archives {
                s.spawn(|| deploy_archive(&flick, archive));
                s.spawn(|| flick.request("DELETE", "/v1/functions/ghost", Vec::new(), true));
            }
        });
        let shown = flick.get("/v1/functions/ghost").status;
        let listed =
            flick.get("/v1/functions").json()["functions"].as_array().unwrap().iter().any(|f| f["name"] == "ghost");
        let called = flick.invoke("ghost", "{}");
        match shown {
            200 => {
                assert!(listed, "round {round}: shown but not listed");
                assert_eq!(called.status, 200, "round {round}: {}", called.text());
            }
            404 => {
                assert!(!listed, "round {round}: listed but not shown");
                assert_eq!(called.status, 404, "round {round}: a deleted function answered: {}", called.text());
                assert_eq!(flick.request("DELETE", "/v1/functions/ghost", Vec::new(), true).status, 404);
            }
            other => panic!("GET answered {other}"),
        }
    }
}

#[test]
fn a_second_flick_up_on_the_same_data_dir_refuses_and_the_first_keeps_serving() {
    let flick = Flick::start();
    let dir = version(&flick, "steady", "one", "keep_alive = \"5m\"\n");
    assert!(deploy_dir(&flick, &dir).status.success());
    let first = flick.invoke("steady", "{}");
    assert_eq!(first.status, 200);
    let addr = std::fs::read_to_string(flick.data_dir().join("flick.addr")).unwrap();

    let second = Command::new(BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(flick.data_dir())
        .env("FLICK_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second flick started on the same data dir");
    assert!(stderr.contains("in use by another flick"), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", flick.pid())), "{stderr}");
    assert!(stderr.contains(&flick.data_dir().canonicalize().unwrap().display().to_string()), "{stderr}");

    // The first one lost nothing: its address file, its warm instance.
    assert_eq!(std::fs::read_to_string(flick.data_dir().join("flick.addr")).unwrap(), addr);
    let again = flick.invoke("steady", "{}");
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.header("x-flick-status").as_deref(), Some("success"));
    let record = flick.activation(&again.activation_id());
    assert_eq!(record["cold"], false, "the warm instance was broken: {record}");
    assert!(flick.cli_ok(&["list"]).contains("steady"));
}

#[test]
fn delete_removes_code_archive_records_and_secrets_from_disk() {
    let flick = Flick::start();
    let secret = "s3cr3t-token-6f1c0e";
    let dir = write_function(
        flick.data_dir(),
        "leaky",
        &[
            ("flick.toml", &manifest("leaky", "python3", "main.handler", &format!("[env]\nTOKEN = \"{secret}\"\n"))),
            ("main.py", "import os\n\ndef handler(event, context):\n    return {\"token\": os.environ[\"TOKEN\"]}\n"),
        ],
    );
    flick.deploy(&dir);
    let keeper = version(&flick, "keeper", "k", "");
    assert!(deploy_dir(&flick, &keeper).status.success());
    assert!(flick.invoke("leaky", "{}").text().contains(secret));
    assert_eq!(entries(&flick, "code").len(), 2);
    assert_eq!(entries(&flick, "archives").len(), 2);
    let (code_before, archives_before) = (entries(&flick, "code"), entries(&flick, "archives"));

    assert_eq!(flick.request("DELETE", "/v1/functions/leaky", Vec::new(), true).status, 200);
    assert!(
        flick.wait_until(Duration::from_secs(20), || entries(&flick, "code").len() == 1
            && entries(&flick, "archives").len() == 1),
        "code {:?} / archives {:?} of the deleted function remain",
        entries(&flick, "code"),
        entries(&flick, "archives")
    );
    // What stays is the other function's, which still works.
    assert!(code_before.contains(&entries(&flick, "code")[0]));
    assert!(archives_before.contains(&entries(&flick, "archives")[0]));
    assert_eq!(flick.invoke("keeper", "{}").json()["tag"], "k");

    let records = flick.get("/v1/activations?function=leaky").json();
    assert_eq!(records["activations"].as_array().unwrap().len(), 0, "{records}");
    // Neither the database nor its WAL keeps the secret (env in the
    // manifest, the response in the record).
    for file in ["flick.db", "flick.db-wal"] {
        let bytes = std::fs::read(flick.data_dir().join(file)).unwrap_or_default();
        let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
        assert!(!found, "{file} still holds the deleted function's secret");
    }
}

#[test]
fn old_revisions_are_pruned_with_their_code_and_archives() {
    let flick = Flick::start_with(&[], Some("revisions_per_function = 2\n"));
    for i in 1..=5 {
        assert!(deploy_dir(&flick, &version(&flick, "pruned", &format!("v{i}"), "")).status.success());
    }
    let revs = flick.get("/v1/functions/pruned/revisions").json();
    let numbers: Vec<u64> =
        revs["revisions"].as_array().unwrap().iter().map(|r| r["number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [5, 4], "{revs}");
    assert!(
        flick.wait_until(Duration::from_secs(20), || entries(&flick, "code").len() == 2
            && entries(&flick, "archives").len() == 2),
        "code {:?} / archives {:?}",
        entries(&flick, "code"),
        entries(&flick, "archives")
    );

    // The rollback target was kept: back to 4.
    let r = flick.request("POST", "/v1/functions/pruned/rollback", "", true);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(flick.invoke("pruned", "{}").json()["tag"], "v4");
    // A new deploy makes 6 current and 5 its rollback target; 4 goes.
    assert!(deploy_dir(&flick, &version(&flick, "pruned", "v6", "")).status.success());
    let revs = flick.get("/v1/functions/pruned/revisions").json();
    let numbers: Vec<u64> =
        revs["revisions"].as_array().unwrap().iter().map(|r| r["number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [6, 5], "{revs}");
    let r = flick.request("POST", "/v1/functions/pruned/rollback", r#"{"revision": 1}"#, true);
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(flick.invoke("pruned", "{}").json()["tag"], "v6");
    assert!(flick.wait_until(Duration::from_secs(20), || entries(&flick, "code").len() == 2));
}

#[test]
fn a_warm_instance_that_died_while_idle_is_replaced_without_an_error() {
    let flick = Flick::start();
    let dir = write_function(
        flick.data_dir(),
        "fragile",
        &[
            ("flick.toml", &manifest("fragile", "python3", "main.handler", "keep_alive = \"5m\"\n")),
            (
                "main.py",
                "import ctypes, os\n\ndef handler(event, context):\n    \
                     if isinstance(event, dict) and event.get(\"comm\"):\n        \
                         ctypes.CDLL(None).prctl(15, event['comm'].encode(), 0, 0, 0)\n    \
                     return {\"ok\": True}\n",
            ),
        ],
    );
    flick.deploy(&dir);
    // Name the instance's process so it can be found and killed from outside.
    assert_eq!(flick.invoke("fragile", r#"{"comm": "fragile-victim"}"#).status, 200);
    let victims = processes_named("fragile-victim");
    assert_eq!(victims.len(), 1, "{victims:?}");
    let _ = Command::new("kill").args(["-KILL", &victims[0].to_string()]).status();
    // Gone, and its sandbox (reaped by flick) with it.
    assert!(flick.wait_until(Duration::from_secs(10), || processes_named("fragile-victim").is_empty()));
    assert!(flick.wait_until(Duration::from_secs(10), || flick.pool_stat("fragile", "instances") <= 1));
    std::thread::sleep(Duration::from_millis(300));

    let r = flick.invoke("fragile", "{}");
    assert_eq!(r.status, 200, "the request never reached the dead instance, yet: {}", r.text());
    assert_eq!(r.json()["ok"], true);
    let record = flick.activation(&r.activation_id());
    assert_eq!(record["status"], "success", "{record}");
    assert_eq!(record["cold"], true, "served by a new instance: {record}");
}

/// An http server that names its process when asked (`?comm=NAME`), so a
/// test can find it and kill it from outside.
const NAMED_SERVER: &str = r#"import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlparse, parse_qs
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        comm = parse_qs(urlparse(self.path).query).get("comm")
        if comm:
            open("/proc/self/comm", "w").write(comm[0])
        body = json.dumps({"ok": True, "pid": os.getpid()}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// The same for the http runtime: the server of an idle instance was killed
/// (its kept-alive connection and its port are gone). The request was never
/// written to it, so another instance takes it: no 502.
#[test]
fn an_http_instance_whose_server_died_while_idle_is_replaced_without_an_error() {
    let flick = Flick::start();
    let comm = format!("fkh{}", std::process::id());
    let dir = write_function(
        flick.data_dir(),
        "fragile-http",
        &[
            ("flick.toml", &manifest("fragile-http", "http", "python3 server.py", "keep_alive = \"5m\"\n")),
            ("server.py", NAMED_SERVER),
        ],
    );
    flick.deploy(&dir);
    for round in 0..2 {
        let r = flick.request("GET", &format!("/fn/fragile-http/?comm={comm}"), Vec::new(), true);
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        let victims = processes_named(&comm);
        assert_eq!(victims.len(), 1, "round {round}: {victims:?}");
        let _ = Command::new("kill").args(["-KILL", &victims[0].to_string()]).status();
        assert!(flick.wait_until(Duration::from_secs(10), || processes_named(&comm).is_empty()));
        // Round 0 calls at once (the pool may not have noticed yet); round 1
        // after the instance's exit was surely seen.
        if round == 1 {
            std::thread::sleep(Duration::from_millis(500));
        }
        let r = flick.request("GET", "/fn/fragile-http/", Vec::new(), true);
        assert_eq!(r.status, 200, "round {round}: the request never reached the dead server, yet: {}", r.text());
        let record = flick.activation(&r.activation_id());
        assert_eq!(record["status"], "success", "round {round}: {record}");
        assert_eq!(record["cold"], true, "round {round}: served by a new instance: {record}");
    }
}

fn processes_named(comm: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, r)| !r.trim_start().starts_with('Z')))
        })
        .collect()
}

#[test]
fn a_deploy_failing_on_a_locked_database_is_503_and_leaves_nothing_behind() {
    let flick = Flick::start();
    assert!(deploy_dir(&flick, &version(&flick, "locked", "one", "")).status.success());
    let (code, archives) = (entries(&flick, "code"), entries(&flick, "archives"));

    // Another process holds the write lock past flick's busy timeout.
    let db = rusqlite::Connection::open(flick.data_dir().join("flick.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    let archive = flick_package::pack_dir(&version(&flick, "locked", "two", "")).unwrap();
    let r = flick.request("POST", "/v1/functions", archive.clone(), true);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("busy"), "{}", r.text());
    assert_eq!(entries(&flick, "code"), code, "the failed deploy left its code");
    assert_eq!(entries(&flick, "archives"), archives, "the failed deploy left its archive");
    assert!(entries(&flick, "staging").is_empty());
    db.execute_batch("ROLLBACK").unwrap();

    // Nothing half-done stands in the way of the same deploy now.
    let r = flick.request("POST", "/v1/functions", archive, true);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(flick.invoke("locked", "{}").json()["tag"], "two");
}

/// A small tmpfs mounted on a directory for the life of the value.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Self {
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).status();
        assert!(ok.is_ok_and(|s| s.success()), "mounting a tmpfs needs root");
        Self(dir.to_path_buf())
    }

    /// Fills the disk, then frees `leave` bytes.
    fn fill(&self, leave: usize) {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        drop(f);
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len.saturating_sub(leave as u64)).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Bytes that do not compress (xorshift), so an archive stays as big as its content.
fn noise(len: usize) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

#[test]
fn a_full_disk_is_named_as_such_by_deploys_and_by_flick_up() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path(), "16m");
    let flick = Flick::start_in(dir, &[]);
    assert!(deploy_dir(&flick, &version(&flick, "roomy", "one", "")).status.success());
    let big = write_function(
        &std::env::temp_dir().join(format!("flick-big-{}", std::process::id())),
        "big",
        &[
            ("flick.toml", &manifest("big", "python3", "main.handler", "")),
            ("main.py", &tagged_py("big")),
            ("blob.txt", &noise(3 << 20)),
        ],
    );
    let archive = flick_package::pack_dir(&big).unwrap();
    let _ = std::fs::remove_dir_all(big.parent().unwrap().parent().unwrap());
    let (code, archives) = (entries(&flick, "code"), entries(&flick, "archives"));

    disk.fill(1 << 20);
    let r = flick.request("POST", "/v1/functions", archive, true);
    assert_eq!(r.status, 507, "{}", r.text());
    assert!(r.text().contains("no space left on device"), "{}", r.text());
    assert!(!r.text().contains("invalid package"), "{}", r.text());
    assert_eq!(entries(&flick, "code"), code);
    assert_eq!(entries(&flick, "archives"), archives);
    assert!(entries(&flick, "staging").is_empty());
    // What was deployed before still serves.
    assert_eq!(flick.invoke("roomy", "{}").json()["tag"], "one");

    let dir = flick.into_dir();
    disk.fill(0);
    let out = Command::new(BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("FLICK_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "flick up started on a full disk");
    assert!(stderr.contains("is full (no space left on device)"), "{stderr}");
    drop(disk);
    drop(dir);
}
