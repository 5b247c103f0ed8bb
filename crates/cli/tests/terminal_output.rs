//! What the CLI prints cannot be turned against the terminal reading it:
//! function output is shown with control characters escaped (`--raw` opts
//! out), and a reader that goes away early (`| head -1`) ends the command
//! quietly instead of with a panic.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Flick};

/// Prints, logs and returns a terminal title change (OSC 0, BEL), a
/// clipboard write (OSC 52), a C1 CSI and a carriage return that would
/// overwrite the line with a forged one.
const HOSTILE_PY: &str = r#"import sys

EVIL = "\x1b]0;pwned-title\x07\x1b]52;c;cm0gLXJmIH4=\x07\x9b31m\rFORGED status: success"

def handler(event, context):
    print("out:" + EVIL)
    print("err:" + EVIL, file=sys.stderr)
    return {"statusCode": 200, "headers": {"content-type": "text/plain"}, "body": "resp:" + EVIL}
"#;

fn assert_inert(what: &str, out: &Output) {
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (c, name) in [('\u{1b}', "ESC"), ('\u{7}', "BEL"), ('\r', "CR"), ('\u{9b}', "CSI")] {
        assert!(!stdout.contains(c), "{what} printed a raw {name}: {stdout:?}");
    }
}

#[test]
fn function_output_is_escaped_unless_raw() {
    let flick = Flick::start();
    flick.deploy_py("hostile", "", HOSTILE_PY);
    let r = flick.invoke("hostile", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.activation_id();
    let record = flick.activation(&id);
    let logged: Vec<&str> = record["logs"].as_array().unwrap().iter().map(|l| l["text"].as_str().unwrap()).collect();
    assert!(
        logged.iter().any(|l| l.contains("\u{1b}]0;pwned-title\u{7}")),
        "sanity: the record keeps the raw escape sequence: {logged:?}"
    );

    let logs = flick.cli(&["logs", "hostile"]);
    assert_inert("flick logs", &logs);
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(text.contains("out:\\x1b]0;pwned-title\\x07\\x1b]52;c;cm0gLXJmIH4=\\x07"), "{text}");
    assert!(text.contains("\\u{9b}31m\\rFORGED"), "{text}");

    let show = flick.cli(&["activation", &id]);
    assert_inert("flick activation", &show);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("resp:\\x1b]0;pwned-title\\x07"), "{text}");
    assert!(text.contains("err:\\x1b]52;c;") || text.contains("err:\\x1b]0;"), "{text}");

    let json = flick.cli(&["activation", &id, "--json"]);
    assert_inert("flick activation --json", &json);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["response"], record["response"], "the JSON must still mean the same");

    // --raw: the operator asked for the bytes as they are.
    let raw = flick.cli(&["logs", "hostile", "--raw"]);
    assert!(raw.status.success());
    assert!(String::from_utf8_lossy(&raw.stdout).contains("out:\u{1b}]0;pwned-title\u{7}"));
    let raw = flick.cli(&["activation", &id, "--raw"]);
    assert!(String::from_utf8_lossy(&raw.stdout).contains("resp:\u{1b}]0;pwned-title\u{7}"));
}

/// Runs the CLI with a stdout whose reader is already gone: the first write
/// fails with EPIPE, exactly as after `| head -1` read its line.
fn with_closed_stdout(flick: &Flick, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(BIN)
        .args(args)
        .env("FLICK_DATA_DIR", flick.data_dir())
        .env_remove("FLICK_URL")
        .env_remove("FLICK_TOKEN")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn assert_quiet(what: &str, out: &Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{what} with a closed stdout: {err}");
    let code = out.status.code();
    assert!(matches!(code, Some(0) | Some(141)), "{what} with a closed stdout exited with {:?}: {err}", out.status);
}

#[test]
fn a_closed_stdout_ends_commands_quietly() {
    let flick = Flick::start();
    let dir = flick.deploy_py("talker", "", "def handler(event, context):\n    print('a line')\n    return 1\n");
    for _ in 0..3 {
        assert_eq!(flick.invoke("talker", "{}").status, 200);
    }
    std::fs::write(dir.join("main.py"), "def handler(event, context):\n    return 2\n").unwrap();
    let out = with_closed_stdout(&flick, &["deploy", dir.to_str().unwrap()]);
    assert_quiet("flick deploy", &out);
    let f = flick.get("/v1/functions/talker").json();
    assert_eq!(f["current_revision"], 2, "the deploy itself happened: {f}");

    for args in [&["activations"][..], &["logs", "talker"], &["list"], &["revisions", "talker"]] {
        let out = with_closed_stdout(&flick, args);
        assert_quiet(&format!("flick {args:?}"), &out);
    }
}

#[test]
fn flick_up_keeps_serving_when_its_stdout_closes() {
    let dir = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = Command::new(BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("FLICK_LOG", "warn")
        .env_remove("FLICK_URL")
        .env_remove("FLICK_TOKEN")
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.path().join("flick.addr").exists() {
        assert!(Instant::now() < deadline, "flick up did not start");
        assert!(child.try_wait().unwrap().is_none(), "flick up exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Still serving; its shutdown lines below go to the closed pipe too.
    let out = Command::new(BIN).arg("list").env("FLICK_DATA_DIR", dir.path()).env_remove("FLICK_URL").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "flick up failed after its stdout closed: {:?} {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
}
