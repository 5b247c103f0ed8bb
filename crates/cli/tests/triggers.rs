//! Triggers end to end: a real `flick up`, the real Mosquitto and NATS
//! servers (`.ci/run` starts them), real clients (`mosquitto_pub`,
//! async-nats). Every test uses its own topics, subjects and streams: the
//! tests run in parallel and share the brokers.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Flick, manifest};
use serde_json::Value;

/// An exec function that answers with its request: each activation's
/// response is the event the trigger sent.
fn echo(name: &str, triggers: &str) -> Vec<(&'static str, String)> {
    vec![("flick.toml", manifest(name, "exec", "cat", &format!("concurrency = 4\n{triggers}")))]
}

fn deploy(flick: &Flick, name: &str, triggers: &str) -> String {
    let files = echo(name, triggers);
    let refs: Vec<(&str, &str)> = files.iter().map(|(f, t)| (*f, t.as_str())).collect();
    let dir = common::write_function(flick.data_dir(), name, &refs);
    flick.deploy(&dir)
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}x{}", std::process::id(), flick_core::now_ms() % 1_000_000_000)
}

/// Finished activations of `function` caused by `cause`, oldest first.
fn finished(flick: &Flick, function: &str, cause: &str) -> Vec<Value> {
    let r = flick.get(&format!("/v1/activations?function={function}&cause={cause}&limit=1000"));
    assert_eq!(r.status, 200, "{}", r.text());
    let mut acts: Vec<Value> = r.json()["activations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| !matches!(a["status"].as_str(), Some("queued" | "running")))
        .cloned()
        .collect();
    acts.reverse();
    acts
}

/// Waits until `function` has at least `n` finished activations of `cause`.
fn wait_for(flick: &Flick, function: &str, cause: &str, n: usize) -> Vec<Value> {
    let mut acts = Vec::new();
    let ok = flick.wait_until(Duration::from_secs(90), || {
        acts = finished(flick, function, cause);
        acts.len() >= n
    });
    assert!(ok, "{function}: {} of {n} {cause} activations", acts.len());
    acts
}

/// The event a function got (its echoed response).
fn event(a: &Value) -> Value {
    assert_eq!(a["status"], "success", "{a}");
    let text = a["response"].as_str().unwrap_or_else(|| panic!("no response in {a}"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `GET /v1/triggers/{function}`.
fn triggers(flick: &Flick, function: &str) -> Vec<Value> {
    let r = flick.get(&format!("/v1/triggers/{function}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["triggers"].as_array().unwrap().clone()
}

fn wait_state(flick: &Flick, function: &str, state: &str) -> Vec<Value> {
    let mut ts = Vec::new();
    let ok = flick.wait_until(Duration::from_secs(30), || {
        ts = triggers(flick, function);
        !ts.is_empty() && ts.iter().all(|t| t["state"] == state)
    });
    assert!(ok, "{function}: triggers never all {state}: {ts:?}");
    ts
}

fn mosquitto_pub(topic: &str, lines: &[String]) {
    use std::io::Write;
    let mut child = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", "1883", "-q", "1", "-t", topic, "-l"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_pub (apt install mosquitto-clients)");
    let mut stdin = child.stdin.take().unwrap();
    for l in lines {
        writeln!(stdin, "{l}").unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn mqtt_qos1_messages_each_invoke_the_function_with_wildcards() {
    let flick = Flick::start();
    let base = unique("flick-e2e/");
    deploy(
        &flick,
        "sensors",
        &format!(
            "[[triggers]]\ntype = \"mqtt\"\nname = \"temps\"\nurl = \"mqtt://127.0.0.1:1883\"\ntopic = \"{base}/+/temp\"\nqos = 1\n\n\
             [[triggers]]\ntype = \"mqtt\"\nname = \"all-alarms\"\nurl = \"mqtt://127.0.0.1:1883\"\ntopic = \"{base}/alarms/#\"\n"
        ),
    );
    wait_state(&flick, "sensors", "connected");
    let n = 30;
    let kitchen: Vec<String> = (0..n).map(|i| format!("{{\"i\":{i}}}")).collect();
    mosquitto_pub(&format!("{base}/kitchen/temp"), &kitchen);
    mosquitto_pub(&format!("{base}/kitchen/humidity"), &["not for us".to_string()]);
    mosquitto_pub(&format!("{base}/alarms/door/front"), &["binary \u{1}".to_string()]);
    let acts = wait_for(&flick, "sensors", "mqtt", n + 1);
    // Let stragglers (duplicates) arrive before counting.
    std::thread::sleep(Duration::from_secs(1));
    let acts_again = finished(&flick, "sensors", "mqtt");
    assert_eq!(acts_again.len(), acts.len(), "more activations than messages");
    let mut seen = Vec::new();
    let mut alarms = 0;
    for a in &acts_again {
        let e = event(a);
        match a["trigger"].as_str() {
            Some("temps") => {
                assert_eq!(e["topic"], format!("{base}/kitchen/temp"));
                assert_eq!((e["qos"].as_u64(), e["retain"].as_bool()), (Some(1), Some(false)));
                seen.push(e["payload"]["i"].as_i64().unwrap());
            }
            Some("all-alarms") => {
                alarms += 1;
                assert_eq!(e["payload_base64"], true, "{e}");
                assert_eq!(e["topic"], format!("{base}/alarms/door/front"));
            }
            other => panic!("trigger {other:?}"),
        }
    }
    seen.sort();
    assert_eq!(seen, (0..n as i64).collect::<Vec<_>>(), "each message exactly once (no crash, no duplicates)");
    assert_eq!(alarms, 1);
    let by_trigger = flick.get("/v1/activations?function=sensors&trigger=all-alarms");
    assert_eq!(by_trigger.json()["activations"].as_array().unwrap().len(), 1);
    let listed = flick.cli_ok(&["triggers", "sensors"]);
    assert!(listed.contains("temps") && listed.contains("connected"), "{listed}");
}

#[test]
fn nats_core_messages_request_reply_and_jetstream_durable_consumer() {
    let flick = Flick::start();
    let subject = unique("flick.e2e.orders");
    let stream = unique("FLICKE2E");
    let rt = runtime();
    let (client, js) = rt.block_on(async {
        let client = async_nats::connect("127.0.0.1:4222").await.expect("nats-server on 127.0.0.1:4222");
        let js = async_nats::jetstream::new(client.clone());
        js.create_stream(async_nats::jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{subject}.js.>")],
            ..Default::default()
        })
        .await
        .unwrap();
        // Published before the trigger exists: the durable consumer gets them.
        for i in 0..5 {
            js.publish(format!("{subject}.js.a"), format!("{i}").into()).await.unwrap().await.unwrap();
        }
        (client, js)
    });
    deploy(
        &flick,
        "orders",
        &format!(
            "[[triggers]]\ntype = \"nats\"\nname = \"core\"\nurl = \"nats://127.0.0.1:4222\"\nsubject = \"{subject}.core.*\"\n\n\
             [[triggers]]\ntype = \"nats\"\nname = \"durable\"\nurl = \"nats://127.0.0.1:4222\"\nsubject = \"{subject}.js.>\"\nstream = \"{stream}\"\nconsumer = \"flick-orders\"\n"
        ),
    );
    wait_state(&flick, "orders", "connected");
    let n = 20;
    let answer = rt.block_on(async {
        for i in 0..n {
            client.publish(format!("{subject}.core.created"), format!("{{\"n\":{i}}}").into()).await.unwrap();
        }
        for i in 5..10 {
            js.publish(format!("{subject}.js.b"), format!("{i}").into()).await.unwrap().await.unwrap();
        }
        client.flush().await.unwrap();
        let req = client.request(format!("{subject}.core.ask"), "{\"q\":\"total?\"}".into());
        tokio::time::timeout(Duration::from_secs(60), req).await.expect("no reply within 60s").unwrap()
    });
    let reply: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!((reply["reply"].as_bool(), reply["payload"]["q"].as_str()), (Some(true), Some("total?")), "{reply}");
    let headers = answer.headers.expect("reply headers");
    assert_eq!(headers.get("Flick-Status").map(|v| v.as_str()), Some("success"));

    let acts = wait_for(&flick, "orders", "nats", n + 1 + 10);
    std::thread::sleep(Duration::from_secs(1));
    let acts_again = finished(&flick, "orders", "nats");
    assert_eq!(acts_again.len(), acts.len(), "more activations than messages");
    let mut core = HashSet::new();
    let mut durable = HashSet::new();
    for a in &acts_again {
        let e = event(a);
        match a["trigger"].as_str() {
            Some("core") if e["reply"] == true => {}
            Some("core") => assert!(core.insert(e["payload"]["n"].as_i64().unwrap()), "duplicate {e}"),
            Some("durable") => {
                assert_eq!(e["stream"], stream.as_str());
                assert!(durable.insert(e["payload"].as_i64().unwrap()), "duplicate {e}");
            }
            other => panic!("trigger {other:?}"),
        }
    }
    assert_eq!(core.len(), n);
    assert_eq!(durable, (0..10).collect::<HashSet<i64>>());
    rt.block_on(async {
        let _ = js.delete_stream(&stream).await;
    });
}

#[test]
fn one_second_cron_fires_across_a_restart_with_one_catch_up_not_a_storm() {
    let flick = Flick::start();
    deploy(
        &flick,
        "ticker",
        "[[triggers]]\ntype = \"cron\"\nname = \"every-second\"\nschedule = \"* * * * * *\"\ntimezone = \"Europe/Rome\"\n",
    );
    wait_for(&flick, "ticker", "cron", 2);
    let dir = flick.into_dir();
    let stopped_ms = flick_core::now_ms();
    std::thread::sleep(Duration::from_secs(5));
    let restarted_ms = flick_core::now_ms();
    let flick = Flick::start_in(dir, &[]);
    // Ticks after the restart, and the catch-up.
    let ok = flick.wait_until(Duration::from_secs(60), || {
        finished(&flick, "ticker", "cron")
            .iter()
            .any(|a| event(a)["scheduled_ms"].as_i64().unwrap() > restarted_ms + 2000)
    });
    assert!(ok, "no ticks after the restart");
    let events: Vec<Value> = finished(&flick, "ticker", "cron").iter().map(event).collect();
    let mut scheduled = HashSet::new();
    for e in &events {
        assert!(scheduled.insert(e["scheduled_ms"].as_i64().unwrap()), "a tick fired twice: {e}");
        assert_eq!(e["trigger"], "every-second");
        assert_eq!(e["timezone"], "Europe/Rome");
    }
    let catch_ups: Vec<&Value> = events.iter().filter(|e| e["catch_up"] == true).collect();
    assert_eq!(catch_ups.len(), 1, "exactly one catch-up: {catch_ups:?}");
    assert!(catch_ups[0]["missed"].as_u64().unwrap() >= 4, "{}", catch_ups[0]);
    // Of the ~5 ticks due while flick was down, only the catch-up ran.
    let while_down = events
        .iter()
        .filter(|e| (stopped_ms + 1000..restarted_ms).contains(&e["scheduled_ms"].as_i64().unwrap()))
        .count();
    assert!(while_down <= 1, "{while_down} ticks of the downtime ran (a storm)");
}

#[test]
fn a_broker_that_is_down_never_stops_a_deploy_and_triggers_follow_redeploys_and_deletes() {
    let flick = Flick::start();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // A hostile topic: terminal escapes must not reach the terminal of whoever lists triggers.
    let out = deploy(
        &flick,
        "lonely",
        &format!(
            "[[triggers]]\ntype = \"mqtt\"\nname = \"nowhere\"\nurl = \"mqtt://127.0.0.1:{port}\"\ntopic = \"a/\\u001b]0;pwned\\u0007\"\n"
        ),
    );
    assert!(out.contains("lonely"), "{out}");
    let ts = wait_state(&flick, "lonely", "retrying");
    let error = ts[0]["last_error"].as_str().unwrap();
    assert!(error.contains(&port.to_string()) && error.to_lowercase().contains("refused"), "{error}");
    let listed = flick.cli_ok(&["triggers"]);
    assert!(listed.contains("retrying") && listed.contains("nowhere"), "{listed}");
    assert!(!listed.contains('\u{1b}') && !listed.contains('\u{7}'), "raw escapes: {listed:?}");
    // The platform keeps serving.
    let r = flick.invoke("lonely", "still here");
    assert_eq!((r.status, r.text().as_str()), (200, "still here"));
    // Without the key: nothing.
    assert_eq!(flick.get_anon("/v1/triggers").status, 401);
    assert_eq!(flick.get_anon("/v1/triggers/lonely").status, 401);
    assert_eq!(flick.get("/v1/triggers/nope").status, 404);

    // A redeploy without the trigger stops it.
    deploy(&flick, "lonely", "");
    assert!(flick.wait_until(Duration::from_secs(10), || triggers(&flick, "lonely").is_empty()));
    // Back, then deleted with its function.
    deploy(
        &flick,
        "lonely",
        &format!("[[triggers]]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:{port}\"\nsubject = \"x\"\n"),
    );
    let ts = wait_state(&flick, "lonely", "retrying");
    assert_eq!(ts[0]["name"], "nats-1");
    flick.cli_ok(&["delete", "lonely"]);
    let all = flick.get("/v1/triggers").json();
    assert_eq!(all["triggers"].as_array().unwrap().len(), 0, "{all}");
}

#[test]
fn malformed_triggers_are_refused_at_deploy_with_their_line() {
    let flick = Flick::start();
    let cases = [
        ("[[triggers]]\ntype = \"cron\"\nschedule = \"every minute\"\n", "line 7", "schedule"),
        ("[[triggers]]\ntype = \"cron\"\nschedule = \"* * * * * *\"\ntimezone = \"Mars/Base\"\n", "line 8", "timezone"),
        ("[[triggers]]\ntype = \"mqtt\"\nurl = \"http://127.0.0.1\"\ntopic = \"a\"\n", "line 7", "url"),
        ("[[triggers]]\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1\"\ntopic = \"a/#/b\"\n", "line 8", "topic"),
        ("[[triggers]]\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1\"\ntopic = \"a\"\nqos = 7\n", "line 9", "qos"),
        ("[[triggers]]\ntype = \"nats\"\nurl = \"nats://127.0.0.1\"\nsubject = \"a b\"\n", "line 8", "subject"),
        ("[[triggers]]\ntype = \"cloudevents\"\nfilter = { Type = \"x\" }\n", "line 7", "filter"),
        ("[[triggers]]\ntype = \"kafka\"\n", "line 6", "type"),
        ("[[triggers]]\ntype = \"cron\"\nschedule = \"* * * * * *\"\nbroker = \"x\"\n", "line 8", "broker"),
    ];
    for (triggers, line, key) in cases {
        let files = echo("bad", triggers);
        let dir = common::write_function(flick.data_dir(), "bad", &[("flick.toml", files[0].1.as_str())]);
        let out = flick.cli(&["deploy", dir.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted:\n{triggers}");
        assert!(err.contains(line) && err.contains(key), "{triggers}\n{err}");
    }
    assert_eq!(flick.get("/v1/functions/bad").status, 404);
}
