//! Sequences (`runtime = "sequence"`) against a real flick: a 3-step chain
//! across python3, node and exec gives the chained output with one parent
//! activation and three children; a failing middle step stops the chain and
//! names itself; sequences that reach themselves are refused at deploy or
//! stopped with a clear error; a public sequence answers callers without a
//! key while its private steps stay closed to them.

mod common;

use common::{Flick, manifest};

const ADD_ONE_PY: &str =
    "def handler(event, context):\n    return {\"n\": event[\"n\"] + 1, \"steps\": [\"python\"]}\n";
const NODE_STEP: &str =
    "exports.handler = async (event) => ({ n: event.n * 10, steps: event.steps.concat([\"node\"]) });\n";

fn sequence(name: &str, steps: &[&str], extra: &str) -> String {
    let steps: Vec<String> = steps.iter().map(|s| format!("{s:?}")).collect();
    format!("name = \"{name}\"\nruntime = \"sequence\"\nsteps = [{}]\n{extra}", steps.join(", "))
}

fn deploy_steps(flick: &Flick) {
    flick.deploy_py("add-one", "", ADD_ONE_PY);
    flick.deploy_files(
        "times-ten",
        &[("flick.toml", &manifest("times-ten", "node", "index.handler", "")), ("index.js", NODE_STEP)],
    );
    // Upper-cases whatever it is given: stdin in, stdout out.
    flick.deploy_files("shout", &[("flick.toml", &manifest("shout", "exec", "tr a-z A-Z", ""))]);
}

#[test]
fn three_steps_chain_their_outputs_under_one_parent() {
    let flick = Flick::start();
    deploy_steps(&flick);
    flick.deploy_files("pipeline", &[("flick.toml", &sequence("pipeline", &["add-one", "times-ten", "shout"], ""))]);
    // Deploying a sequence starts nothing.
    assert_eq!(flick.instances("pipeline"), 0);

    let r = flick.invoke("pipeline", "{\"n\": 4}");
    assert_eq!(r.status, 200, "{}", r.text());
    let out: serde_json::Value = serde_json::from_slice(&r.body).expect("the last step's JSON, upper-cased");
    assert_eq!(out, serde_json::json!({"N": 50, "STEPS": ["PYTHON", "NODE"]}));
    assert_eq!(r.header("x-flick-status").as_deref(), Some("success"));
    let parent = r.activation_id();

    let rec = flick.activation(&parent);
    assert_eq!(rec["function"], "pipeline");
    assert_eq!(rec["status"], "success");
    let lines: Vec<String> =
        rec["logs"].as_array().unwrap().iter().map(|l| l["text"].as_str().unwrap().to_string()).collect();
    assert_eq!(lines.len(), 3, "one line per step: {lines:?}");

    let children = flick.get(&format!("/v1/activations?parent={parent}")).json();
    let children = children["activations"].as_array().unwrap();
    let mut names: Vec<&str> = children.iter().map(|c| c["function"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["add-one", "shout", "times-ten"]);
    for c in children {
        assert_eq!((c["cause"].as_str(), c["parent"].as_str()), (Some("sequence"), Some(parent.as_str())));
        let id = c["id"].as_str().unwrap();
        assert!(lines.iter().any(|l| l.contains(id)), "the parent names child {id}: {lines:?}");
    }
    assert_eq!(flick.instances("pipeline"), 0, "a sequence never has instances of its own");
    let listed = flick.cli_ok(&["activations", "--parent", &parent]);
    for step in ["add-one", "times-ten", "shout"] {
        assert!(listed.contains(step), "{listed}");
    }
    assert!(!listed.contains("pipeline"), "{listed}");
}

#[test]
fn a_failing_step_stops_the_chain_and_is_named() {
    let flick = Flick::start();
    deploy_steps(&flick);
    flick.deploy_py("boom", "", "def handler(event, context):\n    raise ValueError('no thanks')\n");
    flick.deploy_py(
        "teapot",
        "",
        "def handler(event, context):\n    return {'statusCode': 418, 'body': 'short and stout'}\n",
    );
    flick.deploy_files("broken", &[("flick.toml", &sequence("broken", &["add-one", "boom", "shout"], ""))]);
    flick.deploy_files("refusing", &[("flick.toml", &sequence("refusing", &["add-one", "teapot", "shout"], ""))]);

    let r = flick.invoke("broken", "{\"n\": 1}");
    assert_eq!(r.status, 500, "{}", r.text());
    let err = r.json();
    assert_eq!(err["errorType"], "Sequence.StepFailed");
    let msg = err["errorMessage"].as_str().unwrap();
    assert!(msg.contains("step 2") && msg.contains("`boom`") && msg.contains("no thanks"), "{msg}");
    let parent = r.activation_id();
    assert_eq!(flick.activation(&parent)["status"], "error");
    let children = flick.get(&format!("/v1/activations?parent={parent}")).json();
    let names: Vec<&str> =
        children["activations"].as_array().unwrap().iter().map(|c| c["function"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 2, "the step after the failure never ran: {names:?}");
    assert!(!names.contains(&"shout"));

    // An HTTP error the step chose on purpose stops the chain too, with its status.
    let r = flick.invoke("refusing", "{\"n\": 1}");
    assert_eq!(r.status, 418, "{}", r.text());
    assert!(r.json()["errorMessage"].as_str().unwrap().contains("`teapot`"), "{}", r.text());
}

#[test]
fn sequences_that_reach_themselves_are_refused_or_stopped() {
    let flick = Flick::start();
    flick.deploy_py("add-one", "", ADD_ONE_PY);
    // Directly: refused at deploy, with the key and line.
    let dir = common::write_function(
        flick.data_dir(),
        "ouroboros",
        &[("flick.toml", &sequence("ouroboros", &["add-one", "ouroboros"], ""))],
    );
    let out = flick.cli(&["deploy", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("steps") && err.contains("line 3") && err.contains("itself"), "{err}");

    // Through another sequence: stopped at run time, naming the loop.
    flick.deploy_files("ping", &[("flick.toml", &sequence("ping", &["add-one", "pong"], ""))]);
    flick.deploy_files("pong", &[("flick.toml", &sequence("pong", &["ping"], ""))]);
    let r = flick.invoke("ping", "{\"n\": 1}");
    assert_eq!(r.status, 500, "{}", r.text());
    let msg = r.json()["errorMessage"].as_str().unwrap().to_string();
    assert!(msg.contains("ping → pong → ping"), "{msg}");
    // flick is still serving.
    assert_eq!(flick.invoke("add-one", "{\"n\": 1}").status, 200);
}

#[test]
fn public_sequences_run_private_steps_that_stay_closed_to_anonymous_callers() {
    let flick = Flick::start();
    flick.deploy_py("add-one", "", ADD_ONE_PY);
    flick.deploy_files("open", &[("flick.toml", &sequence("open", &["add-one", "add-one"], "public = true\n"))]);
    flick.deploy_files("closed", &[("flick.toml", &sequence("closed", &["add-one"], ""))]);

    let r = flick.request("POST", "/fn/open", b"{\"n\": 1}".to_vec(), false);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["n"], 3);
    assert_eq!(flick.request("POST", "/fn/add-one", b"{\"n\": 1}".to_vec(), false).status, 401);
    assert_eq!(flick.request("POST", "/fn/closed", b"{\"n\": 1}".to_vec(), false).status, 401);
    // A step that does not exist is the sequence's error, named.
    flick.deploy_files("dangling", &[("flick.toml", &sequence("dangling", &["add-one", "nowhere"], ""))]);
    let r = flick.invoke("dangling", "{\"n\": 1}");
    assert_eq!(r.status, 500);
    assert!(r.text().contains("`nowhere` does not exist"), "{}", r.text());
}

#[test]
fn flick_new_scaffolds_a_sequence_that_deploys() {
    let flick = Flick::start();
    let parent = flick.data_dir().join("scaffolds");
    std::fs::create_dir_all(&parent).unwrap();
    let out = flick.cli_ok(&["new", "pipe", "--runtime", "sequence", "--dir", parent.to_str().unwrap()]);
    assert!(out.contains("created"), "{out}");
    let toml = std::fs::read_to_string(parent.join("pipe").join("flick.toml")).unwrap();
    assert!(toml.contains("name = \"pipe\"") && toml.contains("runtime = \"sequence\""), "{toml}");
    let out = flick.deploy(&parent.join("pipe"));
    assert!(out.contains("pipe"), "{out}");
    // Its example steps are not deployed here: the call names the missing one.
    let r = flick.invoke("pipe", "{}");
    assert_eq!(r.status, 500);
    assert!(r.text().contains("`hello-python` does not exist"), "{}", r.text());
}

/// `POST /fn/{name}` with extra headers and the key.
fn send(flick: &Flick, name: &str, body: &str, headers: &[(&str, &str)]) -> common::Reply {
    let client = reqwest::blocking::Client::builder().no_proxy().build().unwrap();
    let mut rb = client.post(format!("{}/fn/{name}", flick.base)).bearer_auth(&flick.key).body(body.to_string());
    for (n, v) in headers {
        rb = rb.header(*n, *v);
    }
    let resp = rb.send().unwrap();
    common::Reply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.bytes().unwrap().to_vec(),
    }
}

#[test]
fn async_sequences_run_from_the_queue_and_the_timeout_bounds_the_chain() {
    let flick = Flick::start();
    flick.deploy_py("add-one", "", ADD_ONE_PY);
    flick.deploy_py(
        "slow",
        "timeout = \"30s\"\n",
        "import time\ndef handler(event, context):\n    time.sleep(5)\n    return event\n",
    );
    flick.deploy_files("twice", &[("flick.toml", &sequence("twice", &["add-one", "add-one"], ""))]);
    flick.deploy_files(
        "hurried",
        &[("flick.toml", &sequence("hurried", &["add-one", "slow", "add-one"], "timeout = \"1s\"\n"))],
    );

    // Async: accepted, then run by the dispatcher under the same id.
    let r = send(&flick, "twice", "{\"n\": 1}", &[("x-flick-async", "true")]);
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.activation_id();
    let mut rec = serde_json::Value::Null;
    assert!(
        flick.wait_until(std::time::Duration::from_secs(60), || {
            rec = flick.get(&format!("/v1/activations/{id}")).json();
            rec["status"] == "success"
        }),
        "{rec}"
    );
    assert_eq!(serde_json::from_str::<serde_json::Value>(rec["response"].as_str().unwrap()).unwrap()["n"], 3);
    let children = flick.get(&format!("/v1/activations?parent={id}")).json();
    assert_eq!(children["activations"].as_array().unwrap().len(), 2, "{children}");

    // The sequence's 1s timeout ends the chain in its slow middle step,
    // though that step's own timeout is 30s; the third step never runs.
    let r = flick.invoke("hurried", "{\"n\": 1}");
    assert_eq!(r.status, 504, "{}", r.text());
    let msg = r.json()["errorMessage"].as_str().unwrap().to_string();
    assert!(msg.contains("step 2") && msg.contains("`slow`"), "{msg}");
    let parent = r.activation_id();
    assert_eq!(flick.activation(&parent)["status"], "timeout");
}
