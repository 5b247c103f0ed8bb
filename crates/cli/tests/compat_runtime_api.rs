//! The Lambda identity every instance gets (`AWS_*`, `_HANDLER`,
//! `LAMBDA_TASK_ROOT`, `FLICK_FUNCTION_ARN`), whatever its runtime and
//! whether it was a prewarmed stem cell, with `[lambda]` from the config.

mod common;

use std::time::Duration;

use common::{Flick, manifest};

/// The Lambda variables, as a python3 function reports them.
const PY_ENV: &str = "import os\n\
KEYS = ['AWS_LAMBDA_FUNCTION_NAME', 'AWS_LAMBDA_FUNCTION_VERSION', 'AWS_LAMBDA_FUNCTION_MEMORY_SIZE',\n\
        'AWS_LAMBDA_LOG_GROUP_NAME', 'AWS_LAMBDA_LOG_STREAM_NAME', 'AWS_REGION', 'AWS_DEFAULT_REGION',\n\
        '_HANDLER', 'LAMBDA_TASK_ROOT', 'FLICK_FUNCTION_ARN', 'FLICK_STEM']\n\
def handler(event, context):\n    return {k: os.environ.get(k) for k in KEYS}\n";

fn check_identity(env: &serde_json::Value, name: &str, handler: &str, region: &str, account: &str) {
    assert_eq!(env["AWS_LAMBDA_FUNCTION_NAME"], name, "{env}");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_VERSION"], "$LATEST", "{env}");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "128", "{env}");
    assert_eq!(env["AWS_LAMBDA_LOG_GROUP_NAME"], format!("/aws/lambda/{name}"), "{env}");
    let stream = env["AWS_LAMBDA_LOG_STREAM_NAME"].as_str().unwrap();
    // YYYY/MM/DD/[$LATEST]<32 hex>
    let (date, instance) = stream.split_once("/[$LATEST]").unwrap_or_else(|| panic!("{stream}"));
    assert_eq!(date.len(), 10, "{stream}");
    assert!(instance.len() == 32 && instance.bytes().all(|b| b.is_ascii_hexdigit()), "{stream}");
    assert_eq!(env["AWS_REGION"], region, "{env}");
    assert_eq!(env["AWS_DEFAULT_REGION"], region, "{env}");
    assert_eq!(env["_HANDLER"], handler, "{env}");
    assert_eq!(env["LAMBDA_TASK_ROOT"], "/var/task", "{env}");
    assert_eq!(env["FLICK_FUNCTION_ARN"], format!("arn:aws:lambda:{region}:{account}:function:{name}"), "{env}");
}

#[test]
fn every_runtime_gets_the_lambda_identity_from_the_config() {
    let flick = Flick::start_with(&[], Some("[lambda]\nregion = \"eu-west-3\"\naccount = \"123456789012\"\n"));
    let stems = || flick.get("/v1/instances").json()["stem_cells"]["python3/none"].as_u64().unwrap_or(0);
    assert!(flick.wait_until(Duration::from_secs(20), || stems() >= 1), "a python stem cell is ready");
    // A user's own AWS_REGION cannot contradict the ARN: flick's wins, and
    // there is only one of it.
    flick.deploy_files(
        "py-id",
        &[
            (
                "flick.toml",
                &manifest(
                    "py-id",
                    "python3",
                    "main.handler",
                    "memory = \"128MiB\"\n[env]\nAWS_REGION = \"xx-fake-9\"\n",
                ),
            ),
            ("main.py", PY_ENV),
        ],
    );
    let r = flick.invoke("py-id", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(flick.activation(&r.activation_id())["prewarmed"], true, "this one came from a stem cell");
    check_identity(&r.json(), "py-id", "main.handler", "eu-west-3", "123456789012");
    assert!(r.json()["FLICK_STEM"].is_null());

    // Not from a stem cell: a /tmp size of its own.
    flick.deploy_files(
        "py-cold",
        &[
            (
                "flick.toml",
                &manifest("py-cold", "python3", "main.handler", "memory = \"128MiB\"\ntmp_size = \"8MiB\"\n"),
            ),
            ("main.py", PY_ENV),
        ],
    );
    let r = flick.invoke("py-cold", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(flick.activation(&r.activation_id())["prewarmed"], false);
    check_identity(&r.json(), "py-cold", "main.handler", "eu-west-3", "123456789012");

    let keys = "AWS_LAMBDA_FUNCTION_NAME AWS_LAMBDA_FUNCTION_VERSION AWS_LAMBDA_FUNCTION_MEMORY_SIZE \
                AWS_LAMBDA_LOG_GROUP_NAME AWS_LAMBDA_LOG_STREAM_NAME AWS_REGION AWS_DEFAULT_REGION \
                _HANDLER LAMBDA_TASK_ROOT FLICK_FUNCTION_ARN";
    let script = format!(
        "#!/bin/sh\nprintf '{{'\nsep=''\nfor k in {keys}; do eval v=\\\"\\${{$k}}\\\"; printf '%s\"%s\":\"%s\"' \"$sep\" \"$k\" \"$v\"; sep=,; done\nprintf '}}'\n"
    );
    flick.deploy_files(
        "sh-id",
        &[("flick.toml", &manifest("sh-id", "exec", "./env.sh", "memory = \"128MiB\"\n")), ("env.sh", &script)],
    );
    std::process::Command::new("chmod").args(["+x"]).arg(flick.data_dir().join("src/sh-id/env.sh")).status().unwrap();
    flick.deploy(&flick.data_dir().join("src/sh-id"));
    let r = flick.invoke("sh-id", "");
    assert_eq!(r.status, 200, "{}", r.text());
    check_identity(&r.json(), "sh-id", "./env.sh", "eu-west-3", "123456789012");
}

#[test]
fn a_bad_lambda_identity_stops_flick_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), "[lambda]\naccount = \"42\"\n").unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("FLICK_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[lambda]") && err.contains("`42` is not an account id"), "{err}");
}
