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
    // Stem cells of a kind start once a function of that kind is deployed.
    assert!(flick.wait_until(Duration::from_secs(20), || stems() >= 1), "a python stem cell is ready");
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

// --- the Lambda Runtime API: runtime `provided` -------------------------------

/// The AWS custom-runtime tutorial's bootstrap, verbatim except for the
/// interpreter line (`/bin/sh` is bash on Amazon Linux, dash here).
const TUTORIAL_BOOTSTRAP: &str = r#"#!/bin/bash

set -euo pipefail

# Initialization - load function handler
source $LAMBDA_TASK_ROOT/"$(echo $_HANDLER | cut -d. -f1).sh"

# Processing
while true
do
  HEADERS="$(mktemp)"
  # Get an event. The HTTP request will block until one is received
  EVENT_DATA=$(curl -sS -LD "$HEADERS" "http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation/next")

  # Extract request ID by scraping response headers received above
  REQUEST_ID=$(grep -Fi Lambda-Runtime-Aws-Request-Id "$HEADERS" | tr -d '[:space:]' | cut -d: -f2)

  # Run the handler function from the script
  RESPONSE=$($(echo "$_HANDLER" | cut -d. -f2) "$EVENT_DATA")

  # Send the response
  curl "http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation/$REQUEST_ID/response"  -d "$RESPONSE"
done
"#;

const TUTORIAL_FUNCTION: &str = r#"function handler () {
  EVENT_DATA=$1
  echo "$EVENT_DATA" 1>&2;
  RESPONSE="Echoing request: '$EVENT_DATA'"

  echo $RESPONSE
}
"#;

/// Writes a function directory with an executable `bootstrap` and deploys it.
fn deploy_provided(flick: &Flick, name: &str, extra: &str, bootstrap: &str, files: &[(&str, &str)]) {
    use std::os::unix::fs::PermissionsExt;
    let toml = format!("name = \"{name}\"\nruntime = \"provided\"\n{extra}");
    let mut all = vec![("flick.toml", toml.as_str()), ("bootstrap", bootstrap)];
    all.extend_from_slice(files);
    let dir = common::write_function(flick.data_dir(), name, &all);
    std::fs::set_permissions(dir.join("bootstrap"), std::fs::Permissions::from_mode(0o755)).unwrap();
    flick.deploy(&dir);
}

#[test]
fn the_tutorials_bash_and_curl_bootstrap_runs_with_and_without_a_network() {
    let flick = Flick::start();
    for network in ["none", "host"] {
        let name = format!("tutorial-{network}");
        deploy_provided(
            &flick,
            &name,
            &format!("handler = \"function.handler\"\nnetwork = \"{network}\"\n"),
            TUTORIAL_BOOTSTRAP,
            &[("function.sh", TUTORIAL_FUNCTION)],
        );
        for n in 0..3 {
            let event = format!("{{\"n\":{n},\"net\":\"{network}\"}}");
            let r = flick.invoke(&name, &event);
            assert_eq!(r.status, 200, "{network}: {}", r.text());
            assert_eq!(r.text(), format!("Echoing request: '{event}'"), "{network}");
            let a = flick.activation(&r.activation_id());
            assert_eq!(a["cold"], n == 0, "{network}: one instance serves them all: {a}");
        }
    }
}

/// A bootstrap that probes flick's Runtime API with curl, one probe per
/// event, and answers with what it saw: the wire conditions the native
/// clients crash on, and the answers to a runtime that misbehaves.
const PROBE_BOOTSTRAP: &str = r#"#!/bin/bash
API="http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime"
# Each probe's curl line: status, content type, body.
probe() { curl -sS -o /tmp/body -w '%{http_code} %{content_type} ' "$@"; cat /tmp/body; }
while true; do
  H=$(mktemp)
  EVENT=$(curl -sS -D "$H" "$API/invocation/next")
  ID=$(grep -Fi Lambda-Runtime-Aws-Request-Id "$H" | tr -d '[:space:]' | cut -d: -f2)
  case "$EVENT" in
    headers) curl -sS -o /dev/null "$API/invocation/$ID/response" --data-binary @"$H" ;;
    wrong-id) OUT=$(probe -X POST "$API/invocation/0123456789abcdef0123456789abcdef/response" -d x)
              curl -sS -o /dev/null "$API/invocation/$ID/response" --data-binary "$OUT" ;;
    twice) probe -X POST "$API/invocation/$ID/response" -d first >/tmp/first
           probe -X POST "$API/invocation/$ID/response" -d second >/tmp/last ;;
    late-init-error) OUT=$(probe -X POST "$API/init/error" -d '{"errorMessage":"late","errorType":"Runtime.Late"}')
                     curl -sS -o /dev/null "$API/invocation/$ID/response" --data-binary "$OUT" ;;
    unknown-path) OUT=$(probe "$API/invocation/$ID/nonsense"; echo; probe -X DELETE "$API/invocation/next")
                  curl -sS -o /dev/null "$API/invocation/$ID/response" --data-binary "$OUT" ;;
    big) head -c 7340032 /dev/zero | tr '\0' 'a' >/tmp/big
         probe -X POST "$API/invocation/$ID/response" --data-binary @/tmp/big >/tmp/last ;;
    error) probe -X POST "$API/invocation/$ID/error" \
             -d '{"errorMessage":"bad thing","errorType":"Custom.Bad","stackTrace":["at line 1","at line 2"]}' >/tmp/last ;;
    error-header) probe -X POST "$API/invocation/$ID/error" -H 'Lambda-Runtime-Function-Error-Type: Function.Custom' \
             -d 'plain words' >/tmp/last ;;
    last) curl -sS -o /dev/null "$API/invocation/$ID/response" --data-binary @/tmp/last ;;
    sleep) sleep 30 ;;
    exit) exit 7 ;;
    *) curl -sS -o /dev/null "$API/invocation/$ID/response" --data-binary "echo:$EVENT" ;;
  esac
done
"#;

#[test]
fn the_runtime_api_keeps_the_native_clients_crash_conditions_and_refuses_misbehaviour() {
    let flick = Flick::start();
    deploy_provided(&flick, "probe", "timeout = \"3s\"\n", PROBE_BOOTSTRAP, &[]);

    // Every `/next` answer: Content-Type exactly application/json, the
    // request id, a decimal epoch-ms deadline >= 1 (near the timeout), the ARN.
    let before = flick_now_ms();
    let r = flick.invoke("probe", "headers");
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let header = |name: &str| {
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(header("content-type"), "application/json");
    assert_eq!(header("lambda-runtime-aws-request-id"), r.activation_id());
    let deadline = header("lambda-runtime-deadline-ms");
    assert!(deadline.bytes().all(|b| b.is_ascii_digit()), "plain decimal: {deadline}");
    let deadline: i64 = deadline.parse().unwrap();
    assert!(deadline >= before + 2_000 && deadline <= flick_now_ms() + 3_000, "{deadline} vs {before}");
    assert_eq!(header("lambda-runtime-invoked-function-arn"), "arn:aws:lambda:us-east-1:000000000000:function:probe");
    assert!(header("lambda-runtime-trace-id").starts_with("Root=1-"));

    // Answers for an id that is not the current one: 400, RIE's shape.
    let r = flick.invoke("probe", "wrong-id");
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let (head, body) = text.split_at(text.find('{').unwrap());
    assert_eq!(head.trim(), "400 application/json");
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["errorType"], "InvalidRequestID", "{body}");

    // Answering twice: the first counts, the second is 403.
    let r = flick.invoke("probe", "twice");
    assert_eq!((r.status, r.text().as_str()), (200, "first"));
    let r = flick.invoke("probe", "last");
    assert!(r.text().starts_with("403 application/json "), "{}", r.text());
    assert!(r.text().contains("InvalidStateTransition"), "{}", r.text());

    // init/error after init is over: 403.
    let r = flick.invoke("probe", "late-init-error");
    assert!(r.text().starts_with("403 application/json "), "{}", r.text());

    // Unknown paths and methods: JSON errors, Content-Type included.
    let r = flick.invoke("probe", "unknown-path");
    let lines: Vec<String> = r.text().lines().map(str::to_string).collect();
    assert!(lines[0].starts_with("404 application/json "), "{lines:?}");
    assert!(lines[1].starts_with("405 application/json "), "{lines:?}");

    // A response over the 6 MiB limit: 413 to the runtime, a function
    // error to the caller; the instance goes on.
    let r = flick.invoke("probe", "big");
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["errorType"], "Function.ResponseSizeTooLarge", "{}", r.text());
    let r = flick.invoke("probe", "last");
    assert!(r.text().starts_with("413 application/json "), "{}", r.text());
    assert!(r.text().contains("RequestEntityTooLarge"), "{}", r.text());

    // Errors: the reported type, message and trace reach the caller; the
    // error-type header is optional (awslambdaric never sends it).
    let r = flick.invoke("probe", "error");
    assert_eq!(r.status, 500, "{}", r.text());
    let e = r.json();
    assert_eq!((e["errorType"].as_str(), e["errorMessage"].as_str()), (Some("Custom.Bad"), Some("bad thing")), "{e}");
    assert_eq!(e["stackTrace"], serde_json::json!(["at line 1", "at line 2"]));
    let r = flick.invoke("probe", "last");
    assert_eq!(r.text(), "202 application/json {\"status\":\"OK\"}");
    let r = flick.invoke("probe", "error-header");
    assert_eq!(r.status, 500);
    assert_eq!(
        (r.json()["errorType"].as_str(), r.json()["errorMessage"].as_str()),
        (Some("Function.Custom"), Some("plain words"))
    );
    assert_eq!(flick.instances("probe"), 1, "misbehaviour so far cost no instance");

    // A runtime that outlives the timeout: 504, and the next call gets a new instance.
    let r = flick.invoke("probe", "sleep");
    assert_eq!(r.status, 504, "{}", r.text());
    let r = flick.invoke("probe", "hello");
    assert_eq!((r.status, r.text().as_str()), (200, "echo:hello"));
    assert_eq!(flick.activation(&r.activation_id())["cold"], true);

    // A runtime that exits mid-invocation: a function error naming the exit.
    let r = flick.invoke("probe", "exit");
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["errorType"], "Runtime.ExitError");
    assert!(r.json()["errorMessage"].as_str().unwrap().contains("status 7"), "{}", r.text());
    assert_eq!(flick.invoke("probe", "again").text(), "echo:again");
}

fn flick_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[test]
fn init_errors_exits_and_silence_at_init_fail_the_first_call() {
    let flick = Flick::start();
    // init/error is answered exactly 202 (awslambdaric insists), once;
    // the report is the waiting call's outcome.
    deploy_provided(
        &flick,
        "init-error",
        "",
        r#"#!/bin/bash
API="http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime"
for i in 1 2; do
  curl -sS -o /dev/null -w "init-error-$i=%{http_code} %{content_type}\n" -X POST "$API/init/error" \
    -H 'Lambda-Runtime-Function-Error-Type: Runtime.Broken' -d '{"errorMessage":"cannot start","errorType":"Runtime.Broken"}'
done
exit 1
"#,
        &[],
    );
    let r = flick.invoke("init-error", "{}");
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(
        (r.json()["errorType"].as_str(), r.json()["errorMessage"].as_str()),
        (Some("Runtime.Broken"), Some("cannot start"))
    );
    let logs = flick.activation(&r.activation_id())["logs"].to_string();
    assert!(logs.contains("init-error-1=202 application/json"), "{logs}");
    assert!(logs.contains("init-error-2=403 application/json"), "{logs}");

    deploy_provided(&flick, "init-exit", "", "#!/bin/bash\necho starting up >&2\nexit 3\n", &[]);
    let r = flick.invoke("init-exit", "{}");
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["errorType"], "Runtime.ExitError");
    assert!(r.json()["errorMessage"].as_str().unwrap().contains("status 3"), "{}", r.text());
    assert!(flick.activation(&r.activation_id())["logs"].to_string().contains("starting up"));

    // Never asks for an event: the start runs into the timeout.
    deploy_provided(&flick, "init-silent", "timeout = \"1s\"\n", "#!/bin/bash\nsleep 60\n", &[]);
    let r = flick.invoke("init-silent", "{}");
    assert_eq!(r.status, 504, "{}", r.text());

    // No bootstrap at all (a directory deployed without one).
    let dir = common::write_function(
        flick.data_dir(),
        "no-bootstrap",
        &[("flick.toml", "name = \"no-bootstrap\"\nruntime = \"provided\"\n"), ("bootstrap.txt", "not it\n")],
    );
    flick.deploy(&dir);
    let r = flick.invoke("no-bootstrap", "{}");
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["errorType"], "Runtime.InvalidEntrypoint", "{}", r.text());
}

#[test]
fn nothing_outside_an_instance_reaches_its_runtime_api() {
    let flick = Flick::start();
    // Reports its own API address, then (asked to) tries another's.
    let bootstrap = r#"#!/bin/bash
API="http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime"
while true; do
  H=$(mktemp)
  EVENT=$(curl -sS -D "$H" "$API/invocation/next")
  ID=$(grep -Fi Lambda-Runtime-Aws-Request-Id "$H" | tr -d '[:space:]' | cut -d: -f2)
  case "$EVENT" in
    where) OUT="$AWS_LAMBDA_RUNTIME_API" ;;
    steal:*) T="${EVENT#steal:}"
      OUT="next=$(curl -s -m 5 -o /dev/null -w '%{http_code}' "http://$T/2018-06-01/runtime/invocation/next"; echo " exit=$?")"
      OUT="$OUT answer=$(curl -s -m 5 -o /dev/null -w '%{http_code}' -X POST -d x "http://$T/2018-06-01/runtime/invocation/0/response"; echo " exit=$?")" ;;
    *) OUT="echo:$EVENT" ;;
  esac
  curl -sS -o /dev/null "$API/invocation/$ID/response" --data-binary "$OUT"
done
"#;
    for name in ["victim-host", "thief-host", "victim-none"] {
        let network = if name.ends_with("host") { "host" } else { "none" };
        deploy_provided(&flick, name, &format!("network = \"{network}\"\n"), bootstrap, &[]);
    }
    // Host network: a port of its own, which another instance on the host
    // can connect to but gets nothing from (no event, no answer taken).
    let victim = flick.invoke("victim-host", "where").text();
    assert!(victim.starts_with("127.0.0.1:") && victim != "127.0.0.1:9001", "{victim}");
    let r = flick.invoke("thief-host", &format!("steal:{victim}"));
    assert_eq!(r.status, 200, "{}", r.text());
    // curl's 52 or 56: the connection was closed without a word.
    let closed = |s: &str| s == "000 exit=52" || s == "000 exit=56";
    let text = r.text();
    let (next, answer) = text.strip_prefix("next=").and_then(|t| t.split_once(" answer=")).unwrap();
    assert!(closed(next) && closed(answer), "{text}");
    // Nor can this test process, a program on the host.
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{victim}/2018-06-01/runtime/invocation/next"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "000");
    assert!(matches!(out.status.code(), Some(52 | 56)), "{out:?}");
    assert_eq!(flick.invoke("victim-host", "still-mine").text(), "echo:still-mine", "no event was lost to them");

    // Network none: the API is on the instance's own loopback; the host's
    // 127.0.0.1:9001 is not it.
    assert_eq!(flick.invoke("victim-none", "where").text(), "127.0.0.1:9001");
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-m",
            "5",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "http://127.0.0.1:9001/2018-06-01/runtime/invocation/next",
        ])
        .output()
        .unwrap();
    let seen = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(!seen.contains("lambda-runtime-aws-request-id"), "{seen}");
    assert_eq!(flick.invoke("victim-none", "still-mine").text(), "echo:still-mine");
}

// --- AWS's own runtime interface clients (`lambda_ric = true`) ---------------

/// Where tests/compat/install.sh put the clients; fails (not skips) when
/// they are missing.
fn compat_dir(rel: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/compat").join(rel);
    assert!(p.exists(), "{} is missing: run `bash tests/compat/install.sh`", p.display());
    p
}

/// Copies `from` into `to` (a package being written), as a user vendors a
/// dependency into a Lambda zip.
fn vendor(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let ok = std::process::Command::new("cp").arg("-rL").arg(from).arg(to).status().unwrap().success();
    assert!(ok, "copying {}", from.display());
}

#[test]
fn awslambdaric_and_aws_lambda_ric_run_handlers_unmodified() {
    let flick = Flick::start();
    let site = compat_dir(".venv/lib");
    let site = std::fs::read_dir(&site).unwrap().flatten().map(|e| e.path().join("site-packages")).find(|p| p.is_dir());
    let site = site.expect("a site-packages in tests/compat/.venv: run `bash tests/compat/install.sh`");
    let py = common::write_function(
        flick.data_dir(),
        "py-ric",
        &[
            ("flick.toml", &manifest("py-ric", "python3", "main.handler", "lambda_ric = true\nmemory = \"128MiB\"\n")),
            (
                "main.py",
                "import os\n\
                 def handler(event, context):\n\
                 \x20   if event.get('fail'):\n\
                 \x20       raise ValueError('asked to fail')\n\
                 \x20   return {'event': event, 'name': context.function_name, 'arn': context.invoked_function_arn,\n\
                 \x20           'version': context.function_version, 'memory': context.memory_limit_in_mb,\n\
                 \x20           'request_id': context.aws_request_id, 'group': context.log_group_name,\n\
                 \x20           'remaining': context.get_remaining_time_in_millis(), 'trace': os.environ.get('_X_AMZN_TRACE_ID')}\n",
            ),
        ],
    );
    for entry in std::fs::read_dir(&site).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "awslambdaric"
            || name == "simplejson"
            || name.starts_with("runtime_client")
            || name == "snapshot_restore_py.py"
        {
            vendor(&entry.path(), &py.join(&name));
        }
    }
    flick.deploy(&py);
    let r = flick.invoke("py-ric", "{\"hello\": \"world\"}");
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.json();
    assert_eq!(got["event"], serde_json::json!({"hello": "world"}), "the parsed event: {got}");
    assert_eq!(got["name"], "py-ric");
    assert_eq!(got["arn"], "arn:aws:lambda:us-east-1:000000000000:function:py-ric");
    assert_eq!(got["version"], "$LATEST");
    assert_eq!(got["memory"], "128");
    assert_eq!(got["request_id"], r.activation_id());
    assert_eq!(got["group"], "/aws/lambda/py-ric");
    let remaining = got["remaining"].as_i64().unwrap();
    assert!(remaining > 0 && remaining <= 30_000, "{remaining}");
    assert!(got["trace"].as_str().unwrap().starts_with("Root=1-"), "{got}");
    let r = flick.invoke("py-ric", "{\"fail\": true}");
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(
        (r.json()["errorType"].as_str(), r.json()["errorMessage"].as_str()),
        (Some("ValueError"), Some("asked to fail"))
    );
    let r = flick.invoke("py-ric", "{\"again\": 1}");
    assert_eq!(r.json()["event"]["again"], 1, "the same instance goes on after an error");
    assert_eq!(flick.activation(&r.activation_id())["cold"], false);

    // A handler module that does not import: awslambdaric's init/error
    // (checked for exactly 202 by the client) is the call's outcome.
    std::fs::write(py.join("main.py"), "import not_a_module_anywhere\n").unwrap();
    flick.deploy(&py);
    let r = flick.invoke("py-ric", "{}");
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["errorType"], "Runtime.ImportModuleError", "{}", r.text());

    let js = common::write_function(
        flick.data_dir(),
        "js-ric",
        &[
            ("flick.toml", &manifest("js-ric", "node", "index.handler", "lambda_ric = true\nmemory = \"128MiB\"\n")),
            (
                "index.mjs",
                "export const handler = async (event, context) => {\n\
                 \x20 if (event.fail) throw new TypeError('asked to fail');\n\
                 \x20 return { event, name: context.functionName, arn: context.invokedFunctionArn,\n\
                 \x20          request_id: context.awsRequestId, remaining: context.getRemainingTimeInMillis() };\n\
                 };\n",
            ),
        ],
    );
    vendor(&compat_dir("node_modules/aws-lambda-ric"), &js.join("node_modules/aws-lambda-ric"));
    flick.deploy(&js);
    let r = flick.invoke("js-ric", "{\"hello\": \"node\"}");
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.json();
    assert_eq!(got["event"], serde_json::json!({"hello": "node"}), "{got}");
    assert_eq!(got["name"], "js-ric");
    assert_eq!(got["arn"], "arn:aws:lambda:us-east-1:000000000000:function:js-ric");
    assert_eq!(got["request_id"], r.activation_id());
    assert!(got["remaining"].as_i64().unwrap() > 0, "{got}");
    let r = flick.invoke("js-ric", "{\"fail\": true}");
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(
        (r.json()["errorType"].as_str(), r.json()["errorMessage"].as_str()),
        (Some("TypeError"), Some("asked to fail"))
    );
}
