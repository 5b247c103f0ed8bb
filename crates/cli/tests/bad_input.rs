//! What flick does with bad input: malformed manifests, unsafe archives,
//! oversized bodies, missing or wrong keys, failing/hanging/noisy
//! functions, failing dependency installs and a bad config file. Every case
//! checks the status and message the user sees, and that the platform keeps
//! serving afterwards.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Flick, Reply, manifest, write_function};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok_json(r: &Reply) -> serde_json::Value {
    assert_eq!(r.status, 200, "expected 200, got {}: {}", r.status, r.text());
    r.json()
}

fn error_message(r: &Reply) -> String {
    let v = r.json();
    v["error"]["message"].as_str().unwrap_or_else(|| panic!("no error.message in {v}")).to_string()
}

/// The package of `dir` as `tar` builds it (what any client could send).
fn tar_gz(dir: &Path) -> Vec<u8> {
    let out = Command::new("tar").args(["-czf", "-", "-C"]).arg(dir).arg(".").output().unwrap();
    assert!(out.status.success(), "tar failed: {}", text(&out.stderr));
    out.stdout
}

/// A hand-made .tar.gz (python's tarfile writes whatever it is told):
/// entries are `{"name", "type": file|dir|symlink|hardlink, "data", "link"}`.
fn crafted_archive(entries: serde_json::Value) -> Vec<u8> {
    const SCRIPT: &str = r#"
import io, json, sys, tarfile
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as tf:
    for e in json.loads(sys.argv[1]):
        ti = tarfile.TarInfo(e["name"])
        kind = e.get("type", "file")
        if kind == "file":
            data = e.get("data", "").encode()
            ti.size = len(data)
            ti.mode = 0o644
            tf.addfile(ti, io.BytesIO(data))
            continue
        if kind == "dir":
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        elif kind == "symlink":
            ti.type, ti.linkname = tarfile.SYMTYPE, e["link"]
        elif kind == "hardlink":
            ti.type, ti.linkname = tarfile.LNKTYPE, e["link"]
        tf.addfile(ti)
sys.stdout.buffer.write(buf.getvalue())
"#;
    let out = Command::new("python3").args(["-c", SCRIPT]).arg(entries.to_string()).output().unwrap();
    assert!(out.status.success(), "crafting the archive failed: {}", text(&out.stderr));
    out.stdout
}

fn post_package(flick: &Flick, archive: Vec<u8>) -> Reply {
    flick.request("POST", "/v1/functions", archive, true)
}

/// Paths under `dir` (recursively, not following symlinks) whose file name contains `needle`.
fn find_named(dir: &Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(listing) = std::fs::read_dir(&d) else { continue };
        for entry in listing.flatten() {
            if entry.file_name().to_string_lossy().contains(needle) {
                found.push(entry.path());
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            }
        }
    }
    found
}

#[test]
fn malformed_manifests_are_refused_with_line_and_key() {
    let flick = Flick::start();
    let code = "def handler(event, context):\n    return {}\n";
    // (dir, flick.toml, what the message must name)
    let cases: [(&str, &str, &[&str]); 4] = [
        (
            "typo-fn",
            "name = \"typo-fn\"\nruntime = \"python3\"\nhandler = \"main.handler\"\ntime_out = \"5s\"\n",
            &["line 4", "time_out"],
        ),
        ("syntax-fn", "name = \"syntax-fn\"\nruntime = \"python3\"\nhandler = main.handler\n", &["line 3"]),
        (
            "badname-fn",
            "name = \"Bad.Name\"\nruntime = \"python3\"\nhandler = \"main.handler\"\n",
            &["line 1", "name", "Bad.Name"],
        ),
        (
            "ruby-fn",
            "name = \"ruby-fn\"\nruntime = \"ruby\"\nhandler = \"main.handler\"\n",
            &["line 2", "runtime", "ruby"],
        ),
    ];
    for (dir_name, toml, expect) in cases {
        let dir = write_function(flick.data_dir(), dir_name, &[("flick.toml", toml), ("main.py", code)]);

        let out = flick.cli(&["deploy", dir.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{dir_name}: `flick deploy` accepted a bad manifest");
        for e in expect {
            assert!(err.contains(e), "{dir_name}: CLI error should name {e:?}: {err}");
        }

        let r = post_package(&flick, tar_gz(&dir));
        assert_eq!(r.status, 400, "{dir_name}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "bad_request");
        let msg = error_message(&r);
        for e in expect {
            assert!(msg.contains(e), "{dir_name}: API error should name {e:?}: {msg}");
        }
        assert_eq!(flick.get(&format!("/v1/functions/{dir_name}")).status, 404, "{dir_name} was deployed");
    }
    let list = flick.get("/v1/functions").json();
    assert_eq!(list["functions"].as_array().unwrap().len(), 0, "nothing may be deployed: {list}");
}

/// The manifest's promise is that every error names its line and key; TOML
/// syntax and type errors name only the line.
#[test]
fn manifest_syntax_and_type_errors_name_the_key_too() {
    let flick = Flick::start();
    let code = "def handler(event, context):\n    return {}\n";
    let cases: [(&str, &str, &[&str]); 2] = [
        (
            "unquoted-fn",
            "name = \"unquoted-fn\"\nruntime = \"python3\"\nhandler = main.handler\n",
            &["line 3", "handler"],
        ),
        (
            "type-fn",
            "name = \"type-fn\"\nruntime = \"python3\"\nhandler = \"main.handler\"\nconcurrency = \"many\"\n",
            &["line 4", "concurrency"],
        ),
    ];
    for (dir_name, toml, expect) in cases {
        let dir = write_function(flick.data_dir(), dir_name, &[("flick.toml", toml), ("main.py", code)]);
        let out = flick.cli(&["deploy", dir.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{dir_name}: `flick deploy` accepted a bad manifest");
        let r = post_package(&flick, tar_gz(&dir));
        assert_eq!(r.status, 400, "{dir_name}: {}", r.text());
        let msg = error_message(&r);
        for e in expect {
            assert!(err.contains(e), "{dir_name}: CLI error should name {e:?}: {err}");
            assert!(msg.contains(e), "{dir_name}: API error should name {e:?}: {msg}");
        }
    }
}

#[test]
fn unsafe_archives_are_refused_and_nothing_escapes() {
    let flick = Flick::start();
    flick.deploy_py("good", "", "def handler(event, context):\n    return {\"good\": True}\n");
    let tag = format!("flick-escape-{}", std::process::id());
    let toml = manifest("evil", "python3", "main.handler", "");
    let base = |extra: serde_json::Value| {
        let mut entries = vec![
            serde_json::json!({"name": "flick.toml", "data": toml}),
            serde_json::json!({"name": "main.py", "data": "def handler(e, c):\n    return 1\n"}),
        ];
        entries.push(extra);
        crafted_archive(serde_json::Value::Array(entries))
    };
    let abs = format!("/tmp/{tag}-abs");
    // (what, archive, text the message must contain)
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "dot-dot to the data dir",
            base(serde_json::json!({"name": format!("../../{tag}"), "data": "x"})),
            format!("../../{tag}"),
        ),
        (
            "dot-dot to /tmp",
            base(serde_json::json!({"name": format!("../../../{tag}"), "data": "x"})),
            format!("../../../{tag}"),
        ),
        (
            "dot-dot inside",
            base(serde_json::json!({"name": format!("sub/../../{tag}"), "data": "x"})),
            format!("sub/../../{tag}"),
        ),
        ("absolute path", base(serde_json::json!({"name": abs, "data": "x"})), abs.clone()),
        (
            "symlink to /etc",
            base(serde_json::json!({"name": "link", "type": "symlink", "link": "/etc"})),
            "link".into(),
        ),
        (
            "symlink climbing out",
            base(serde_json::json!({"name": "up", "type": "symlink", "link": "../../.."})),
            "up".into(),
        ),
        (
            "hard link",
            base(serde_json::json!({"name": "hard", "type": "hardlink", "link": "flick.toml"})),
            "hard".into(),
        ),
        (
            "hard link outside",
            base(serde_json::json!({"name": "hard2", "type": "hardlink", "link": "/etc/passwd"})),
            "hard2".into(),
        ),
    ];
    for (what, archive, expect) in cases {
        let r = post_package(&flick, archive);
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        let msg = error_message(&r);
        assert!(msg.contains(&format!("`{expect}`")), "{what}: message should name the entry {expect:?}: {msg}");
    }

    // Writing through a symlink, even one that stays inside, is refused.
    let through = crafted_archive(serde_json::json!([
        {"name": "flick.toml", "data": toml},
        {"name": "main.py", "data": "x = 1\n"},
        {"name": "sub", "type": "dir"},
        {"name": "d", "type": "symlink", "link": "sub"},
        {"name": "d/file", "data": "x"},
    ]));
    let r = post_package(&flick, through);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(error_message(&r).contains("d/file"), "{}", r.text());

    // No flick.toml, flick.toml as a symlink, not a tar.gz at all, empty body.
    let r = post_package(&flick, crafted_archive(serde_json::json!([{"name": "main.py", "data": "x = 1\n"}])));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(error_message(&r).contains("flick.toml"), "{}", r.text());
    let r = post_package(
        &flick,
        crafted_archive(serde_json::json!([
            {"name": "real.toml", "data": toml},
            {"name": "flick.toml", "type": "symlink", "link": "real.toml"},
        ])),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(error_message(&r).contains("flick.toml"), "{}", r.text());
    let r = post_package(&flick, b"this is not a tar.gz".to_vec());
    assert_eq!(r.status, 400, "{}", r.text());
    let r = post_package(&flick, Vec::new());
    assert_eq!(r.status, 400, "{}", r.text());

    // Nothing deployed, nothing written outside, no staging left behind.
    assert_eq!(flick.get("/v1/functions/evil").status, 404);
    let escaped = find_named(flick.data_dir(), &tag);
    assert!(escaped.is_empty(), "entries escaped into the data dir: {escaped:?}");
    let tmp_parent = flick.data_dir().parent().unwrap();
    for p in [tmp_parent.join(&tag), Path::new(&abs).to_path_buf(), std::env::temp_dir().join(&tag)] {
        assert!(!p.exists(), "an entry was written outside: {}", p.display());
    }
    let staging = flick.data_dir().join("staging");
    if staging.exists() {
        let left: Vec<_> = std::fs::read_dir(&staging).unwrap().flatten().map(|e| e.path()).collect();
        assert!(left.is_empty(), "failed deploys left staging behind: {left:?}");
    }
    assert_eq!(ok_json(&flick.invoke("good", "{}"))["good"], true, "the platform keeps serving");
}

const ECHO_PY: &str = "def handle(req):\n    return req\n";

fn check_body_limit(flick: &Flick) {
    let toml = manifest("echo", "python3", "main.handle", "");
    flick.deploy_files("echo", &[("flick.toml", &toml), ("main.py", ECHO_PY)]);
    let r = flick.request("POST", "/fn/echo", vec![b'a'; 1025], true);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "too_large", "{}", r.text());
    let r = flick.request("POST", "/fn/echo", vec![b'b'; 4096], true);
    assert_eq!(r.status, 413, "{}", r.text());

    let under = "c".repeat(1000);
    let r = flick.request("POST", "/fn/echo", under.clone(), true);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), under);
    let at = "d".repeat(1024);
    let r = flick.request("POST", "/fn/echo", at.clone(), true);
    assert_eq!(r.status, 200, "a body of exactly max_body is allowed: {}", r.text());
    assert_eq!(r.text(), at);
}

#[test]
fn body_over_max_body_flag_is_413() {
    let flick = Flick::start_with(&["--max-body", "1KiB"], None);
    check_body_limit(&flick);
}

#[test]
fn body_over_max_body_from_config_file_is_413() {
    let flick = Flick::start_with(&[], Some("max_body = \"1KiB\"\n"));
    check_body_limit(&flick);
}

#[test]
fn keys_are_required_and_do_not_leak_existence() {
    let flick = Flick::start();
    let code = "def handler(event, context):\n    return {\"headers\": context.http[\"headers\"]}\n";
    flick.deploy_py("secret", "", code);
    let wrong = reqwest::blocking::Client::builder().no_proxy().build().unwrap();
    let with_wrong_key = |method: reqwest::Method, path: &str| {
        wrong.request(method, format!("{}{path}", flick.base)).bearer_auth("flk_not_the_key").send().unwrap()
    };

    // Unknown function with the key: 404 naming it.
    let r = flick.invoke("no-such-fn", "{}");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(error_message(&r).contains("no-such-fn"), "{}", r.text());

    // Without a key: 401 for unknown and private alike, indistinguishable.
    let unknown = flick.request("POST", "/fn/no-such-fn", Vec::new(), false);
    let private = flick.request("POST", "/fn/secret", Vec::new(), false);
    for r in [&unknown, &private] {
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
        assert!(!r.text().contains("no-such-fn") && !r.text().contains("secret"), "{}", r.text());
    }
    assert_eq!(unknown.body, private.body, "a 401 must not tell whether the function exists");

    // A wrong key is no key.
    for (method, path) in [
        (reqwest::Method::POST, "/fn/secret"),
        (reqwest::Method::POST, "/fn/no-such-fn"),
        (reqwest::Method::GET, "/v1/functions"),
        (reqwest::Method::GET, "/v1/activations"),
        (reqwest::Method::DELETE, "/v1/functions/secret"),
    ] {
        let resp = with_wrong_key(method.clone(), path);
        assert_eq!(resp.status().as_u16(), 401, "{method} {path} with a wrong key");
    }

    // The management API needs the key.
    for (method, path) in [
        ("GET", "/v1/functions"),
        ("GET", "/v1/functions/secret"),
        ("GET", "/v1/functions/secret/revisions"),
        ("POST", "/v1/functions/secret/rollback"),
        ("DELETE", "/v1/functions/secret"),
        ("GET", "/v1/activations"),
        ("GET", "/v1/instances"),
        ("POST", "/v1/functions"),
    ] {
        let r = flick.request(method, path, Vec::new(), false);
        assert_eq!(r.status, 401, "{method} {path} without a key: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "unauthorized");
    }
    assert_eq!(flick.get("/v1/functions/secret").status, 200, "the unauthorised DELETE deleted it");

    // With the key it works, and the function never sees flick's key.
    let r = flick.invoke("secret", "{}");
    let body = ok_json(&r);
    let headers = body["headers"].as_object().unwrap();
    assert!(
        !headers.keys().any(|k| k.eq_ignore_ascii_case("authorization")),
        "the admin key was passed to the function: {body}"
    );
    assert!(!r.text().contains(&flick.key));
}

#[test]
fn import_error_is_a_500_with_the_traceback_then_a_fix_works() {
    let flick = Flick::start();
    let broken =
        "import os\nraise RuntimeError(\"boom-at-import-4242\")\n\ndef handler(event, context):\n    return {}\n";
    let dir = flick.deploy_py("fragile", "", broken);

    let r = flick.invoke("fragile", "{}");
    assert_eq!(r.status, 500, "{}", r.text());
    let body = r.json();
    assert!(body["errorMessage"].as_str().unwrap().contains("boom-at-import-4242"), "{body}");
    assert!(!body["errorType"].as_str().unwrap().is_empty(), "{body}");
    let rec = flick.activation(&r.activation_id());
    assert_eq!(rec["status"], "error", "{rec}");
    assert_eq!(rec["http_status"], 500, "{rec}");
    assert!(rec["response"].as_str().unwrap().contains("boom-at-import-4242"), "{rec}");
    let logs: Vec<&str> = rec["logs"].as_array().unwrap().iter().map(|l| l["text"].as_str().unwrap()).collect();
    assert!(logs.iter().any(|l| l.contains("Traceback")), "traceback missing from the logs: {logs:?}");
    assert!(logs.iter().any(|l| l.contains("RuntimeError: boom-at-import-4242")), "{logs:?}");

    // Still broken on the next call (no half-started instance is reused).
    assert_eq!(flick.invoke("fragile", "{}").status, 500);

    std::fs::write(dir.join("main.py"), "def handler(event, context):\n    return {\"fixed\": True}\n").unwrap();
    let out = flick.deploy(&dir);
    assert!(out.contains("revision 2"), "{out}");
    let r = flick.invoke("fragile", "{}");
    assert_eq!(ok_json(&r)["fixed"], true);
}

#[test]
fn handler_exception_is_a_500_and_the_instance_survives() {
    let flick = Flick::start();
    let code = "count = 0\n\ndef handler(event, context):\n    global count\n    count += 1\n    \
                if event.get(\"fail\"):\n        raise ValueError(\"bad value 42\")\n    \
                return {\"count\": count}\n";
    flick.deploy_py("raiser", "", code);
    assert_eq!(ok_json(&flick.invoke("raiser", "{}"))["count"], 1);

    let r = flick.invoke("raiser", "{\"fail\": true}");
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.header("x-flick-status").as_deref(), Some("error"));
    let body = r.json();
    assert_eq!(body["errorType"], "ValueError", "{body}");
    assert_eq!(body["errorMessage"], "bad value 42", "{body}");
    let trace = body["stackTrace"].as_array().unwrap();
    assert!(!trace.is_empty(), "{body}");
    assert!(trace.iter().any(|l| l.as_str().unwrap().contains("raise ValueError")), "{body}");
    let rec = flick.activation(&r.activation_id());
    assert_eq!(rec["status"], "error", "{rec}");
    assert_eq!(rec["http_status"], 500);
    assert!(
        rec["logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["text"].as_str().unwrap().contains("ValueError: bad value 42")),
        "{rec}"
    );

    let r = flick.invoke("raiser", "{}");
    assert_eq!(ok_json(&r)["count"], 3, "the same instance keeps serving after an exception");
    assert_eq!(flick.activation(&r.activation_id())["cold"], false);
}

#[test]
fn python_timeout_is_504_and_the_function_recovers() {
    let flick = Flick::start();
    // A call whose body has "comm" names its process (seen from the host
    // whatever the sandbox does), so the process serving it can be found.
    // prctl(PR_SET_NAME), not a write to /proc/self/comm: a process that
    // changed its uid (a stem cell taking on the function) is not dumpable,
    // and its /proc files are root's.
    let code = "import ctypes, time\n\ndef handler(event, context):\n    \
                if event.get(\"comm\"):\n        \
                ctypes.CDLL(None).prctl(15, event[\"comm\"].encode(), 0, 0, 0)\n    \
                time.sleep(float(event.get(\"sleep\", 0)))\n    return {\"done\": True}\n";
    let comm = format!("fk{}t", std::process::id());
    let name = "sleepy";
    // The timeout also covers the cold starts below (the first call's and
    // the one after the timeout killed the instance): 5 s leaves them room
    // on a loaded machine, and is still far below the 60 s the slow call
    // would sleep.
    flick.deploy_py(name, "timeout = \"5s\"\n", code);
    assert_eq!(ok_json(&flick.invoke(name, "{}"))["done"], true);

    let slow = format!("{{\"sleep\": 60, \"comm\": \"{comm}\"}}");
    let (r, took, seen_running) = std::thread::scope(|s| {
        let call = s.spawn(|| {
            let t0 = Instant::now();
            let r = flick.invoke(name, &slow);
            (r, t0.elapsed())
        });
        let seen = flick.wait_until(Duration::from_secs(10), || processes_named(&comm).len() == 1);
        let (r, took) = call.join().unwrap();
        (r, took, seen)
    });
    assert!(
        seen_running,
        "sanity: the process serving the slow call was never seen in /proc ({} {}, seen: {:?})",
        r.status,
        r.text(),
        processes_named(&comm)
    );
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["errorType"], "Function.Timeout", "{}", r.text());
    assert!(took < Duration::from_secs(30), "the timeout did not cut the call short: {took:?}");
    let rec = flick.activation(&r.activation_id());
    assert_eq!(rec["status"], "timeout", "{rec}");
    assert_eq!(rec["http_status"], 504);
    let gone = flick.wait_until(Duration::from_secs(10), || processes_named(&comm).is_empty());
    assert!(gone, "the timed-out instance is still running: {:?}", processes_named(&comm));

    let r = flick.invoke(name, "{}");
    assert_eq!(ok_json(&r)["done"], true, "the function answers right after a timeout");
    assert_eq!(flick.activation(&r.activation_id())["status"], "success");
}

fn is_zombie(proc_dir: &Path) -> bool {
    std::fs::read_to_string(proc_dir.join("stat"))
        .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X', 'x'])))
}

/// Live processes whose name (`comm`) is `comm`.
fn processes_named(comm: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let named = std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.trim_end() == comm);
        if named && !is_zombie(&entry.path()) {
            found.push(pid);
        }
    }
    found
}

/// Is a `sleep ARG` process running?
fn sleep_running(arg: &str) -> bool {
    let want = format!("sleep\0{arg}\0");
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        !is_zombie(&e.path()) && std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c.ends_with(want.as_bytes()))
    })
}

#[test]
fn exec_timeout_is_504_and_the_function_recovers() {
    let flick = Flick::start();
    // An odd duration, so its process is recognisable in /proc.
    let script = "#!/bin/sh\nbody=$(cat)\nif [ \"$body\" = \"slow\" ]; then sleep 10.4217; fi\necho \"ok:$body\"\n";
    let toml = manifest("slow-exec", "exec", "sh run.sh", "timeout = \"1s\"\n");
    flick.deploy_files("slow-exec", &[("flick.toml", &toml), ("run.sh", script)]);

    let (r, took, seen_running) = std::thread::scope(|s| {
        let call = s.spawn(|| {
            let t0 = Instant::now();
            let r = flick.invoke("slow-exec", "slow");
            (r, t0.elapsed())
        });
        let seen = flick.wait_until(Duration::from_secs(3), || sleep_running("10.4217"));
        let (r, took) = call.join().unwrap();
        (r, took, seen)
    });
    assert!(seen_running, "sanity: the handler's `sleep 10.4217` was never seen running");
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(took < Duration::from_secs(4), "the timeout did not cut the call short: {took:?}");
    assert_eq!(flick.activation(&r.activation_id())["status"], "timeout");
    let gone = flick.wait_until(Duration::from_secs(3), || !sleep_running("10.4217"));
    assert!(gone, "the timed-out handler's child `sleep 10.4217` is still running");

    let r = flick.invoke("slow-exec", "fast");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text().trim(), "ok:fast");
}

#[test]
fn exec_non_zero_exit_is_a_500_with_stderr_in_the_logs() {
    let flick = Flick::start();
    let script = "#!/bin/sh\ncat >/dev/null\necho \"about to fail 5150\" >&2\nexit 3\n";
    let toml = manifest("failing", "exec", "sh fail.sh", "");
    flick.deploy_files("failing", &[("flick.toml", &toml), ("fail.sh", script)]);

    let r = flick.invoke("failing", "x");
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.header("x-flick-status").as_deref(), Some("error"));
    assert!(r.json()["errorMessage"].as_str().unwrap().contains("3"), "exit status missing: {}", r.text());
    let rec = flick.activation(&r.activation_id());
    assert_eq!(rec["status"], "error", "{rec}");
    let logs = rec["logs"].as_array().unwrap();
    assert!(
        logs.iter().any(|l| l["stream"] == "stderr" && l["text"] == "about to fail 5150"),
        "stderr line missing from the activation logs: {rec}"
    );
}

#[test]
fn failing_dependency_install_keeps_the_previous_revision() {
    let flick = Flick::start_with(&[], Some("install_timeout = \"90s\"\n"));
    let dir = flick.deploy_py("deps", "", "def handler(event, context):\n    return {\"rev\": 1}\n");
    std::fs::write(dir.join("main.py"), "def handler(event, context):\n    return {\"rev\": 2}\n").unwrap();
    std::fs::write(dir.join("requirements.txt"), "flick-no-such-package-xyz==0.0.1\n").unwrap();

    let out = flick.cli(&["deploy", dir.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "a deploy whose install fails must fail: {}", text(&out.stdout));
    assert!(err.contains("pip"), "the error should say pip failed: {err}");
    assert!(err.contains("422"), "{err}");
    assert!(err.contains("flick-no-such-package-xyz"), "pip's reason should be shown: {err}");

    let r = post_package(&flick, tar_gz(&dir));
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "dependencies_failed");

    assert_eq!(ok_json(&flick.invoke("deps", "{}"))["rev"], 1, "the previous revision keeps serving");
    let revs = flick.get("/v1/functions/deps/revisions").json();
    assert_eq!(revs["current_revision"], 1, "{revs}");
    assert_eq!(revs["revisions"].as_array().unwrap().len(), 1, "{revs}");
}

/// Runs `flick up` on a data dir with `config` as its config.toml; it must
/// exit (non-zero) by itself. Returns its stderr.
fn up_with_bad_config(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let mut child = Command::new(BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("FLICK_URL")
        .env_remove("FLICK_TOKEN")
        .env_remove("FLICK_MAX_BODY")
        .env_remove("FLICK_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("flick up kept running with a bad config file: {config}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "flick up succeeded with a bad config: {config}");
    assert!(!dir.path().join("flick.addr").exists(), "flick up listened despite a bad config");
    err
}

#[test]
fn invalid_config_file_stops_flick_up_with_the_key_named() {
    let err = up_with_bad_config("max_bodee = \"1MiB\"\n");
    assert!(err.contains("max_bodee"), "the unknown key should be named: {err}");
    let err = up_with_bad_config("max_body = \"lots\"\n");
    assert!(err.contains("max_body"), "the bad key should be named: {err}");
}

#[test]
fn two_megabytes_of_logs_are_truncated_not_fatal() {
    let flick = Flick::start();
    let code = "import sys\n\ndef handler(event, context):\n    \
                line = \"x\" * 99\n    \
                for _ in range(20000):\n        print(line)\n    \
                print(\"log-tail-end\")\n    \
                return {\"ok\": True}\n";
    flick.deploy_py("noisy", "", code);
    let r = flick.invoke("noisy", "{}");
    assert_eq!(ok_json(&r)["ok"], true);
    let rec = flick.activation(&r.activation_id());
    assert_eq!(rec["status"], "success", "{rec}");
    assert_eq!(rec["logs_truncated"], true, "2 MB of logs must be cut");
    let logs = rec["logs"].as_array().unwrap();
    let bytes: usize = logs.iter().map(|l| l["text"].as_str().unwrap().len()).sum();
    assert!(!logs.is_empty() && bytes < 1 << 20, "kept {} lines, {bytes} bytes", logs.len());
    assert_eq!(logs.last().unwrap()["text"], "log-tail-end", "the tail is what is kept");

    // The instance is fine afterwards.
    let r = flick.invoke("noisy", "{}");
    assert_eq!(r.status, 200);
    assert_eq!(flick.activation(&r.activation_id())["cold"], false);
}
