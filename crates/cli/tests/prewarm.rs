//! Prewarmed stem cells: cold starts take an already started, already
//! sandboxed runtime, and a stem cell never carries anything from one
//! function to another.

mod common;

use std::time::Duration;

use common::{Flick, manifest};

fn stem_cells(flick: &Flick, kind: &str) -> u64 {
    flick.get("/v1/instances").json()["stem_cells"][kind].as_u64().unwrap_or(0)
}

#[test]
fn cold_starts_take_a_stem_cell_and_the_pool_refills() {
    let flick = Flick::start();
    flick.deploy_files(
        "js",
        &[
            ("flick.toml", &manifest("js", "node", "index.handler", "")),
            ("index.js", "exports.handler = async (e, ctx) => ({ name: ctx.functionName, cwd: process.cwd() });\n"),
        ],
    );
    flick.deploy_py(
        "py",
        "",
        "import os\ndef handler(event, context):\n    return {'cwd': os.getcwd(), 'name': context.function_name, 'env': os.environ.get('GREETING')}\n",
    );
    flick.deploy_files(
        "py-env",
        &[
            ("flick.toml", &manifest("py-env", "python3", "main.handler", "[env]\nGREETING = \"hi\"\n")),
            ("main.py", "import os\ndef handler(event, context):\n    return {'env': os.environ.get('GREETING'), 'stem': os.environ.get('FLICK_STEM')}\n"),
        ],
    );
    // Stem cells of a kind start once a function of that kind is deployed.
    assert!(flick.wait_until(Duration::from_secs(20), || stem_cells(&flick, "python3/none") >= 1), "python stem ready");
    assert!(flick.wait_until(Duration::from_secs(20), || stem_cells(&flick, "node/none") >= 1), "node stem ready");
    let r = flick.invoke("py", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["cwd"], "/var/task");
    assert_eq!(r.json()["name"], "py");
    let a = flick.activation(&r.activation_id());
    assert_eq!((a["cold"].as_bool(), a["prewarmed"].as_bool()), (Some(true), Some(true)), "{a}");
    assert!(r.header("server-timing").unwrap().contains("desc=\"prewarmed\""));

    assert!(flick.wait_until(Duration::from_secs(20), || stem_cells(&flick, "python3/none") >= 1), "refilled");
    let r = flick.invoke("py-env", "{}");
    assert_eq!(r.json()["env"], "hi", "the function's env reaches a specialised stem cell");
    assert!(r.json()["stem"].is_null(), "no trace of stem mode");
    assert_eq!(flick.activation(&r.activation_id())["prewarmed"], true);

    let r = flick.invoke("js", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["name"], "js");
    assert_eq!(r.json()["cwd"], "/var/task");
    assert_eq!(flick.activation(&r.activation_id())["prewarmed"], true);
}

#[test]
fn a_stem_cell_never_carries_one_function_into_another() {
    let flick = Flick::start();
    let code = r#"
import os, sys
SEEN = []
def handler(event, context):
    before = sorted(f for f in os.listdir('/tmp'))
    with open('/tmp/' + context.function_name, 'w') as f:
        f.write('mine')
    SEEN.append(context.function_name)
    return {'tmp_before': before, 'seen': SEEN, 'modules': sorted(m for m in sys.modules if m.startswith('secret_'))}
"#;
    for name in ["alpha", "beta"] {
        flick.deploy_files(
            name,
            &[
                ("flick.toml", &manifest(name, "python3", "main.handler", "")),
                ("main.py", &format!("import secret_{name}\n{code}")),
                (&format!("secret_{name}.py"), "TOKEN = 1\n"),
            ],
        );
    }
    assert!(flick.wait_until(Duration::from_secs(20), || stem_cells(&flick, "python3/none") >= 1));
    let a = flick.invoke("alpha", "{}");
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(flick.wait_until(Duration::from_secs(20), || stem_cells(&flick, "python3/none") >= 1));
    let b = flick.invoke("beta", "{}");
    assert_eq!(b.status, 200, "{}", b.text());
    for (r, name, other) in [(&a, "alpha", "beta"), (&b, "beta", "alpha")] {
        let v = r.json();
        assert_eq!(v["tmp_before"], serde_json::json!([]), "{name} saw another's /tmp: {v}");
        assert_eq!(v["seen"], serde_json::json!([name]), "{name}: {v}");
        assert_eq!(v["modules"], serde_json::json!([format!("secret_{name}")]), "{name} sees secret_{other}: {v}");
        assert_eq!(flick.activation(&r.activation_id())["prewarmed"], true, "{name} came from a stem cell");
    }
}

#[test]
fn functions_a_stem_cannot_serve_start_the_ordinary_way() {
    let flick = Flick::start();
    // A /tmp size other than the stem cells' own.
    flick.deploy_py("bigtmp", "tmp_size = \"128MiB\"\n", "def handler(event, context):\n    return 'ok'\n");
    assert!(flick.wait_until(Duration::from_secs(20), || stem_cells(&flick, "python3/none") >= 1));
    let r = flick.invoke("bigtmp", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let a = flick.activation(&r.activation_id());
    assert_eq!((a["cold"].as_bool(), a["prewarmed"].as_bool()), (Some(true), Some(false)), "{a}");
    // An import error through a stem cell is the function's error, with its traceback.
    flick.deploy_py("broken", "", "raise RuntimeError('no good at import')\ndef handler(e, c):\n    pass\n");
    let r = flick.invoke("broken", "{}");
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("no good at import"), "{}", r.text());
}

#[test]
fn prewarming_can_be_switched_off() {
    let flick = Flick::start_with(&[], Some("stem_cells = 0\n"));
    flick.deploy_py("plain", "", "def handler(event, context):\n    return 'ok'\n");
    let r = flick.invoke("plain", "{}");
    assert_eq!(r.status, 200);
    assert_eq!(flick.activation(&r.activation_id())["prewarmed"], false);
    assert_eq!(stem_cells(&flick, "python3/none"), 0);
}

#[test]
fn exec_requests_run_in_prewarmed_sandboxes_with_the_full_contract() {
    let flick = Flick::start();
    flick.deploy_files(
        "shell",
        &[
            ("flick.toml", &manifest("shell", "exec", "sh ./run.sh", "memory = \"64MiB\"\n")),
            (
                "run.sh",
                "body=$(cat)\necho \"$Http_Method $Http_Path $body $(pwd) $(id -u)\"\necho to-stderr >&2\n[ \"$body\" = fail ] && exit 4\nexit 0\n",
            ),
        ],
    );
    assert!(flick.wait_until(Duration::from_secs(20), || stem_cells(&flick, "exec/none") >= 1), "exec stem ready");
    // Calls in a row: the first takes the ready sandbox, later ones take
    // refills or start afresh; all must behave the same.
    for i in 0..4 {
        assert!(flick.wait_until(Duration::from_secs(20), || stem_cells(&flick, "exec/none") >= 1) || i > 0);
        let r = flick.request("PUT", "/fn/shell/x", format!("hello{i}").into_bytes(), true);
        assert_eq!(r.status, 200, "{}", r.text());
        let words: Vec<String> = r.text().split_whitespace().map(String::from).collect();
        assert_eq!(words[..4], ["PUT", "/x", &format!("hello{i}"), "/var/task"], "{}", r.text());
        assert_ne!(words[4], "0", "runs unprivileged");
        let a = flick.activation(&r.activation_id());
        assert_eq!(a["logs"][0]["text"], "to-stderr", "{a}");
    }
    let r = flick.invoke("shell", "fail");
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("status 4"), "{}", r.text());
    assert_eq!(stem_cells(&flick, "exec/host"), 0, "no host-network sandboxes until one is needed");
}

/// Stem cells exist only for kinds some deployed function uses: none for
/// node or exec while only python3 is deployed, and none for python3 once
/// its last function is deleted.
#[test]
fn only_kinds_in_use_keep_stem_cells() {
    let flick = Flick::start();
    flick.deploy_py("only-py", "", "def handler(event, context):\n    return 'ok'\n");
    assert!(flick.wait_until(Duration::from_secs(20), || stem_cells(&flick, "python3/none") >= 1), "python stem ready");
    // Started together, node's and exec's would be ready by now as well.
    std::thread::sleep(Duration::from_secs(2));
    let stems = flick.get("/v1/instances").json()["stem_cells"].clone();
    assert_eq!((stem_cells(&flick, "node/none"), stem_cells(&flick, "exec/none")), (0, 0), "{stems}");
    flick.cli_ok(&["delete", "only-py"]);
    assert!(
        flick.wait_until(Duration::from_secs(20), || stem_cells(&flick, "python3/none") == 0),
        "the python stem cell stops with the last python function: {}",
        flick.get("/v1/instances").json()["stem_cells"]
    );
}

/// A burst of cold starts of distinct functions takes stem cells faster
/// than one at a time can replace them: the pool grows, and a second burst
/// finds a cell ready for each of its cold starts; the pool shrinks back to
/// one when the bursts are over.
#[test]
fn a_burst_of_distinct_cold_functions_grows_the_pool_and_it_shrinks_back() {
    let flick = Flick::start();
    let names: Vec<String> = (0..18).map(|i| format!("burst{i}")).collect();
    for name in &names {
        flick.deploy_py(name, "", "def handler(event, context):\n    return 'ok'\n");
    }
    assert!(flick.wait_until(Duration::from_secs(20), || stem_cells(&flick, "python3/none") >= 1));
    let burst = |names: &[String]| -> Vec<common::Reply> {
        let shared = &flick;
        std::thread::scope(|s| {
            let calls: Vec<_> = names.iter().map(|n| s.spawn(move || shared.invoke(n, "{}"))).collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        })
    };
    let first = burst(&names[..12]);
    assert!(first.iter().all(|r| r.status == 200), "{:?}", first.iter().map(|r| r.status).collect::<Vec<_>>());
    assert!(
        flick.wait_until(Duration::from_secs(30), || stem_cells(&flick, "python3/none") >= 6),
        "the pool grew past one after the burst: {}",
        flick.get("/v1/instances").json()["stem_cells"]
    );
    let second = burst(&names[12..]);
    for r in &second {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(flick.activation(&r.activation_id())["prewarmed"], true, "every cold start found a cell ready");
    }
    assert!(
        flick.wait_until(Duration::from_secs(60), || stem_cells(&flick, "python3/none") == 1),
        "the extra stem cells stop once the burst is over: {}",
        flick.get("/v1/instances").json()["stem_cells"]
    );
}
