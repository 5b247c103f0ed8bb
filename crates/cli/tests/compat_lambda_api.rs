//! The AWS Lambda REST API with boto3: a real flick, driven by the real SDK
//! (`tests/compat/lambda_boto3.py`), signing with SigV4 as key id `admin`
//! and the admin key as the secret. Each test is one scenario of the
//! script; the script asserts what boto3 sees, and these tests check the
//! other side (records, what a refused request left behind).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::Flick;

fn compat_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/compat")
}

fn compat_python() -> PathBuf {
    let dir = compat_dir();
    let python = dir.join(".venv/bin/python");
    let ok = python.exists()
        && Command::new(&python).args(["-c", "import boto3"]).output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "boto3 is not installed for the compatibility tests: run `bash tests/compat/install.sh`");
    python
}

/// Runs one scenario against `flick` and returns the JSON of its last line.
fn scenario(flick: &Flick, name: &str) -> serde_json::Value {
    let python = compat_python();
    let script = compat_dir().join("lambda_boto3.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(name)
        .env("FLICK_URL", &flick.base)
        .env("FLICK_KEY", &flick.key)
        // boto3 must not find credentials or config of the machine's user.
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scenario {name} failed:\n{stderr}\n{stdout}");
    let last = stdout.lines().last().unwrap_or_else(|| panic!("scenario {name} printed nothing: {stderr}"));
    serde_json::from_str(last).unwrap_or_else(|e| panic!("scenario {name}: last line is not JSON ({e}): {last}"))
}

#[test]
fn boto3_creates_lists_updates_and_deletes_functions() {
    let flick = Flick::start();
    let out = scenario(&flick, "lifecycle");
    // What boto3 made is what flick serves natively too.
    let listed = flick.get("/v1/functions").json()["functions"].clone();
    let mut native: Vec<String> =
        listed.as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap().to_string()).collect();
    native.sort();
    let mut seen: Vec<String> =
        out["functions"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect();
    seen.sort();
    assert_eq!(native, seen);
    let r = flick.invoke("py-life", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "\"v2\"");
    assert!(out["stale"].as_str().unwrap().contains("Revision Id"), "{out}");
}

#[test]
fn boto3_invokes_sync_async_with_log_tail_dry_run_and_errors() {
    let flick = Flick::start();
    let out = scenario(&flick, "invoke");
    // The async calls ran from the durable queue and left their records.
    for key in ["async", "legacy"] {
        let id = out[key].as_str().unwrap().to_string();
        let done = flick.wait_until(Duration::from_secs(30), || {
            let r = flick.get(&format!("/v1/activations/{id}"));
            r.status == 200 && r.json()["status"] == "success"
        });
        assert!(done, "the {key} call {id} ran: {}", flick.get(&format!("/v1/activations/{id}")).text());
        let record = flick.activation(&id);
        let logs = record["logs"].to_string();
        let n = if key == "async" { "handling 7" } else { "handling 8" };
        assert!(logs.contains(n), "{record}");
    }
}

#[test]
fn boto3_runs_a_custom_runtime_bash_bootstrap() {
    let flick = Flick::start();
    let out = scenario(&flick, "provided");
    assert!(out["no_bootstrap"].as_str().unwrap().contains("bootstrap"), "{out}");
    let listed = flick.get("/v1/functions").json()["functions"].clone();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
}

#[test]
fn boto3_bad_input_gets_lambda_errors_and_changes_nothing() {
    let flick = Flick::start();
    let out = scenario(&flick, "bad_input");
    let says = |key: &str, part: &str| {
        let message = out[key].as_str().unwrap_or_else(|| panic!("no message for {key}: {out}"));
        assert!(message.contains(part), "{key}: `{message}` should name `{part}`");
    };
    says("missing", "nope");
    says("duplicate", "exists");
    says("runtime", "java21");
    says("dotdot", "../evil.py");
    says("absolute", "absolute");
    says("bomb", "zip bomb");
    says("not_zip", "zip");
    says("handler", "nothere.py");
    says("timeout", "901");
    says("name", "bad/name");
    says("too_large", "6291456");
    says("too_large_async", "262144");
    says("malformed", "json");
    let listed = flick.get("/v1/functions").json()["functions"].clone();
    assert_eq!(listed.as_array().unwrap().len(), 1, "only the one good function: {listed}");
}

#[test]
fn boto3_with_a_wrong_secret_or_unknown_key_is_refused() {
    let flick = Flick::start();
    let out = scenario(&flick, "auth");
    assert!(out["wrong_secret"].as_str().unwrap().contains("signature"), "{out}");
    assert!(out["unknown_key"].as_str().unwrap().contains("nobody"), "{out}");
    assert_eq!(flick.get("/v1/functions").json()["functions"].as_array().unwrap().len(), 0);
}

/// What no SDK would send: no signature, a bearer key, path tricks, an
/// unknown operation. Each gets Lambda's shape and changes nothing.
#[test]
fn unsigned_and_odd_requests_get_lambda_errors() {
    let flick = Flick::start();
    let lambda_error = |r: &common::Reply, status: u16, code: &str| {
        assert_eq!(r.status, status, "{}", r.text());
        assert_eq!(r.header("x-amzn-errortype").as_deref(), Some(code), "{}", r.text());
        assert!(r.json()["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", r.text());
        assert!(r.header("x-amzn-requestid").is_some());
    };
    let body = br#"{"FunctionName":"x","Runtime":"python3.12","Role":"r","Handler":"a.b","Code":{"ZipFile":""}}"#;
    // Unsigned, and with flick's own bearer key (not a SigV4 signature).
    let r = flick.request("POST", "/2015-03-31/functions", body.to_vec(), false);
    lambda_error(&r, 403, "MissingAuthenticationTokenException");
    let r = flick.request("POST", "/2015-03-31/functions", body.to_vec(), true);
    lambda_error(&r, 403, "IncompleteSignatureException");
    for path in [
        "/2015-03-31/functions/..%2F..%2Fv1%2Ffunctions/invocations",
        "/2015-03-31/functions/x/invocations/../../../v1/functions",
        "/2015-03-31/functions/%00/invocations",
    ] {
        let r = flick.request("POST", path, b"{}".to_vec(), false);
        assert!(r.status == 403 || r.status == 404, "{path}: {} {}", r.status, r.text());
        assert!(r.header("x-amzn-errortype").is_some() || r.status == 404, "{path}: {}", r.text());
    }
    // An operation flick does not serve, even unsigned, is never flick's own 404 page.
    let r = flick.request("GET", "/2017-03-31/tags/arn:aws:lambda:us-east-1:000000000000:function:x", vec![], false);
    lambda_error(&r, 403, "MissingAuthenticationTokenException");
    assert_eq!(flick.get("/v1/functions").json()["functions"].as_array().unwrap().len(), 0);
}
