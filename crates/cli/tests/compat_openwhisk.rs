//! The OpenWhisk API against a real flick, driven by the real `openwhisk`
//! npm client (tests/compat/openwhisk_client.js): string-code and zip
//! actions in python and node, get/list/update/delete, blocking and
//! non-blocking invokes, activations, web actions over plain HTTP, and the
//! attacker's side (no key, wrong key, other namespace, anonymous calls of
//! non-web actions, malformed JSON, unknown kinds, oversized bodies, a zip
//! with `..`), triggers and rules (create, fire with merged parameters,
//! disable, delete), the alarm feed, and their hostile cases. The Rust side
//! then checks what the client saw against flick's own API, and that
//! triggers, rules and alarms survive a restart.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Flick;

fn compat_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/compat")
}

/// A zip made with Python's zipfile: `entries` are (name, text), a text
/// of the form `<n>*<c>` being the character c n times (bombs).
fn zip(dir: &Path, file: &str, entries: &[(&str, &str)]) -> PathBuf {
    let path = dir.join(file);
    let script = "import json, sys, zipfile\n\
                  with zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as z:\n\
                  \x20   for name, text in json.loads(sys.argv[2]):\n\
                  \x20       n, star, c = text.partition('*')\n\
                  \x20       z.writestr(name, c * int(n) if star and n.isdigit() else text)\n";
    let list = serde_json::to_string(entries).unwrap();
    let out = Command::new("python3").args(["-c", script]).arg(&path).arg(list).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    path
}

#[test]
fn the_openwhisk_npm_client_works_against_flick() {
    let compat = compat_dir();
    assert!(
        compat.join("node_modules/openwhisk").is_dir(),
        "the openwhisk npm client is missing: run `bash tests/compat/install.sh`"
    );
    let flick = Flick::start();
    let scratch = tempfile::tempdir().unwrap();
    let py = zip(
        scratch.path(),
        "py.zip",
        &[
            (
                "__main__.py",
                "from helper import note\ndef main(args):\n    return {'doubled': args['n'] * 2, 'helper': note}\n",
            ),
            ("helper.py", "note = 'from helper.py'\n"),
        ],
    );
    let node = zip(
        scratch.path(),
        "node.zip",
        &[
            ("package.json", r#"{"name": "t", "main": "lib/t.js"}"#),
            ("lib/t.js", "exports.entry = (p) => ({ tripled: p.n * 3 });\n"),
        ],
    );
    let evil =
        zip(scratch.path(), "evil.zip", &[("__main__.py", "def main(a): return a\n"), ("../../escape.py", "x = 1\n")]);
    let bomb =
        zip(scratch.path(), "bomb.zip", &[("__main__.py", "def main(a): return a\n"), ("zeros.bin", "67108864*0")]);

    let out = Command::new("node")
        .arg(compat.join("openwhisk_client.js"))
        .env("FLICK_URL", &flick.base)
        .env("FLICK_KEY", &flick.key)
        .env("OW_ZIP_PY", &py)
        .env("OW_ZIP_NODE", &node)
        .env("OW_ZIP_EVIL", &evil)
        .env("OW_ZIP_BOMB", &bomb)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the client script failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let result: serde_json::Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|j| serde_json::from_str(j).unwrap())
        .expect("a RESULT line");

    // What the client saw is what flick recorded.
    let blocking = flick.activation(result["blocking"].as_str().unwrap());
    assert_eq!((blocking["function"].as_str(), blocking["status"].as_str()), (Some("hello-py"), Some("success")));
    // The non-blocking call's record went with its action (deleted since).
    assert_eq!(flick.get(&format!("/v1/activations/{}", result["async"].as_str().unwrap())).status, 404);
    // The call whose caller stopped waiting ran on to its end.
    let slow = result["slow"].as_str().unwrap().to_string();
    assert!(
        flick.wait_until(std::time::Duration::from_secs(30), || flick.get(&format!("/v1/activations/{slow}")).status
            == 200)
    );
    let rec = flick.activation(&slow);
    assert_eq!(rec["status"].as_str(), Some("success"), "{rec}");
    // Parameters and web-export live in the manifest, surface-neutral.
    let f = flick.get("/v1/functions/web").json();
    assert_eq!(f["manifest"]["web"], serde_json::json!(true));
    assert_eq!(f["manifest"]["params"], serde_json::json!({"greeting": "hey"}));
    // Nothing of the refused requests exists.
    assert_eq!(flick.get("/v1/functions/evil").status, 404);
    assert!(!flick.data_dir().join("escape.py").exists());

    // A rule's call went through the async queue as a trigger's: cause,
    // trigger name, and the trigger's activation as its parent.
    let fired = flick.activation(result["fired"].as_str().unwrap());
    assert_eq!(fired["cause"], "trigger", "{fired}");
    assert_eq!(fired["trigger"], "tr");
    assert_eq!(fired["parent"], result["trigger_activation"]);
    let by_trigger = flick.get("/v1/activations?function=echo&cause=trigger&trigger=tr").json();
    assert!(by_trigger["activations"].as_array().unwrap().len() >= 2, "{by_trigger}");

    // Triggers, rules and alarm feeds live in the store: after a restart the
    // kept trigger's alarm fires its rule again.
    let flick = Flick::start_in(flick.into_dir(), &[]);
    let restarted_ms = now_ms();
    let t = flick.get("/api/v1/namespaces/_/triggers/kept");
    assert_eq!(t.status, 200, "{}", t.text());
    assert_eq!(t.json()["rules"]["admin/kept-rule"]["status"], "active");
    let r = flick.get("/api/v1/namespaces/_/rules/kept-rule").json();
    assert_eq!((r["trigger"]["name"].as_str(), r["action"]["name"].as_str()), (Some("kept"), Some("echo")));
    let ticked = flick.wait_until(std::time::Duration::from_secs(30), || {
        let list = flick.get("/v1/activations?function=echo&trigger=kept").json();
        list["activations"].as_array().unwrap().iter().any(|a| {
            a["start_ms"].as_i64().unwrap_or(0) >= restarted_ms
                && serde_json::from_str::<serde_json::Value>(a["response"].as_str().unwrap_or("{}"))
                    .is_ok_and(|v| v["args"]["c"] == "kept")
        })
    });
    assert!(ticked, "the kept alarm did not fire after the restart");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}
