//! Structured logs and W3C traces end to end (issue 11 §3): `--log-format
//! json` lines parse and carry each call's activation id; a `traceparent`
//! sent on `/fn` reaches python and node functions (header and `context`),
//! is recorded on the activation, comes back to the caller, and goes on in
//! callbacks, sequence steps and routed events; invalid or hostile ones are
//! replaced, never passed on and never an error.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use common::{Flick, Reply, manifest};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{TRACE}-{PARENT}-01")
}

fn send(flick: &Flick, method: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
    let http = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().unwrap();
    let mut rb = http
        .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), format!("{}{path}", flick.base))
        .body(body.to_string())
        .bearer_auth(&flick.key);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let resp = rb.send().unwrap();
    Reply { status: resp.status().as_u16(), headers: resp.headers().clone(), body: resp.bytes().unwrap().to_vec() }
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, lowercase, ids not zero.
fn is_valid_traceparent(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0')
}

/// A python and a node Lambda-shape function that answer with the trace
/// context they were given: the header and the handler's `context`.
fn deploy_echo_trace(flick: &Flick) {
    let py = "import json\n\
        def handler(event, context):\n    \
            h = event.get('headers') or {}\n    \
            return {'statusCode': 200, 'body': json.dumps({\n        \
                'header': h.get('traceparent'), 'state': h.get('tracestate'),\n        \
                'headers': sorted(k for k in h if 'trace' in k or k.startswith('x-inj')),\n        \
                'context': context.traceparent, 'trace_id': context.trace_id, 'span_id': context.span_id,\n        \
                'context_state': context.tracestate})}\n";
    flick.deploy_files(
        "py-trace",
        &[("flick.toml", &manifest("py-trace", "python3", "main.handler", "shape = \"lambda\"\n")), ("main.py", py)],
    );
    let js = "exports.handler = async (event, context) => {\n  \
        const h = event.headers || {};\n  \
        return { statusCode: 200, body: JSON.stringify({\n    \
            header: h.traceparent, state: h.tracestate,\n    \
            headers: Object.keys(h).filter((k) => k.includes('trace') || k.startsWith('x-inj')).sort(),\n    \
            context: context.traceparent, trace_id: context.traceId, span_id: context.spanId,\n    \
            context_state: context.tracestate }) };\n};\n";
    flick.deploy_files(
        "js-trace",
        &[("flick.toml", &manifest("js-trace", "node", "index.handler", "shape = \"lambda\"\n")), ("index.js", js)],
    );
}

#[test]
fn a_traceparent_reaches_python_and_node_functions_is_recorded_and_returned() {
    let flick = Flick::start();
    deploy_echo_trace(&flick);
    let tp = traceparent();
    for name in ["py-trace", "js-trace"] {
        let r = send(
            &flick,
            "POST",
            &format!("/fn/{name}"),
            "{}",
            &[("traceparent", &tp), ("tracestate", "congo=t61rcWkgMzE")],
        );
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let got = r.json();
        // The function gets flick's span as its parent, in the same trace.
        let header = got["header"].as_str().unwrap_or_else(|| panic!("{name}: no traceparent header: {got}"));
        assert!(is_valid_traceparent(header), "{name}: {header}");
        assert!(header.starts_with(&format!("00-{TRACE}-")) && header.ends_with("-01"), "{name}: {header}");
        assert!(!header.contains(PARENT), "{name}: the caller's span was passed on as the parent: {header}");
        assert_eq!(got["context"], header, "{name}: context and header differ: {got}");
        assert_eq!(got["trace_id"], TRACE, "{name}: {got}");
        assert_eq!(got["span_id"].as_str(), header.get(36..52), "{name}: {got}");
        assert_eq!(got["state"], "congo=t61rcWkgMzE", "{name}: {got}");
        assert_eq!(got["context_state"], "congo=t61rcWkgMzE", "{name}: {got}");
        // The caller is told the span flick recorded.
        assert_eq!(r.header("traceparent").as_deref(), Some(header), "{name}");
        let record = flick.activation(&r.activation_id());
        assert_eq!(record["trace_id"], TRACE, "{name}: {record}");
        assert_eq!(record["parent_span_id"], PARENT, "{name}: {record}");
        assert_eq!(record["traceparent"], header, "{name}: {record}");
        assert_eq!(record["span_id"].as_str(), header.get(36..52), "{name}: {record}");
    }

    // No traceparent: flick starts a trace of its own, recorded without a parent.
    let r = send(&flick, "POST", "/fn/py-trace", "{}", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let header = r.json()["header"].as_str().unwrap().to_string();
    assert!(is_valid_traceparent(&header), "{header}");
    let record = flick.activation(&r.activation_id());
    assert_eq!(record["traceparent"], header.as_str());
    assert!(record.get("parent_span_id").is_none_or(|p| p.is_null()), "{record}");
    // Two calls, two traces.
    let again = send(&flick, "POST", "/fn/py-trace", "{}", &[]).json()["header"].as_str().unwrap().to_string();
    assert_ne!(again.get(3..35), header.get(3..35));
}

#[test]
fn invalid_and_hostile_traceparents_are_replaced_never_passed_on_nor_an_error() {
    let flick = Flick::start();
    deploy_echo_trace(&flick);
    let valid = traceparent();
    let huge = format!("00-{TRACE}-{PARENT}-01{}", "0".repeat(16 << 10));
    let bad = [
        format!("00-{TRACE}-{PARENT}-1"),                   // wrong length
        format!("00-{TRACE}0-{PARENT}-01"),                 // wrong length
        format!("00-{}-{PARENT}-01", "0".repeat(32)),       // all-zero trace id
        format!("00-{TRACE}-{}-01", "0".repeat(16)),        // all-zero parent id
        valid.to_uppercase(),                               // uppercase hex
        format!("00-{}-{PARENT}-01", TRACE.to_uppercase()), // uppercase trace id only
        valid.replacen("00-", "ff-", 1),                    // version ff
        format!("00-{TRACE}-{PARENT}-01-extra"),            // version 00 has no tail
        format!("00-{TRACE}-{PARENT}-01, {valid}"),         // a list
        huge.clone(),                                       // 16 KiB
    ];
    for tp in &bad {
        let r = send(&flick, "POST", "/fn/py-trace", "{}", &[("traceparent", tp), ("tracestate", "a=b")]);
        let shown = &tp[..tp.len().min(80)];
        assert_eq!(r.status, 200, "{shown}: {}", r.text());
        let got = r.json();
        let header = got["header"].as_str().unwrap();
        assert!(is_valid_traceparent(header), "{shown} → {header}");
        assert!(!header.contains(&TRACE.to_ascii_lowercase()), "{shown} was continued: {header}");
        // tracestate goes only with a valid traceparent.
        assert!(got["state"].is_null(), "{shown}: {got}");
        let record = flick.activation(&r.activation_id());
        assert_ne!(record["trace_id"], TRACE, "{shown}: {record}");
        assert!(record.get("parent_span_id").is_none_or(|p| p.is_null()), "{shown}: {record}");
    }

    // Two traceparent headers: which one is meant is unknown, so neither.
    let r = send(&flick, "POST", "/fn/py-trace", "{}", &[("traceparent", &valid), ("traceparent", &valid)]);
    assert_eq!(r.status, 200);
    assert!(!r.json()["header"].as_str().unwrap().contains(TRACE));

    // Header injection: the value cannot carry a line break over HTTP, so
    // the attempt is a tracestate (or traceparent) full of odd text; none of
    // it reaches the function as a header of its own.
    for (name, value) in
        [("traceparent", format!("{valid}\r\nx-injected: 1")), ("tracestate", "a=b\r\nx-injected: 1".into())]
    {
        // reqwest refuses such a value itself; a raw socket sends it.
        assert!(reqwest::header::HeaderValue::from_str(&value).is_err());
        let answer = raw_request(
            &flick,
            &format!(
                "POST /fn/py-trace HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n{name}: {value}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}",
                flick.key
            ),
        );
        // hyper reads `x-injected: 1` as a header of its own line, so it is
        // the caller's header (forwarded like any), while the trace header
        // itself must be flick's, never the caller's text.
        if answer.starts_with("HTTP/1.1 200") {
            let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
            let got: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {answer}"));
            assert!(is_valid_traceparent(got["header"].as_str().unwrap()), "{got}");
            assert!(got["state"].is_null() || got["state"] == "a=b", "{got}");
        } else {
            assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        }
    }
    // A tracestate of 40 members, of over 512 bytes, or with bytes outside
    // printable ASCII is dropped, not forwarded.
    let many: Vec<String> = (0..40).map(|i| format!("k{i}=v")).collect();
    for ts in [many.join(","), format!("k={}", "v".repeat(600)), "k=caf\u{e9}".into()] {
        let r = send(&flick, "POST", "/fn/js-trace", "{}", &[("traceparent", &valid), ("tracestate", &ts)]);
        assert_eq!(r.status, 200, "{}", r.text());
        let got = r.json();
        assert!(got["state"].is_null() && got["context_state"].is_null(), "{ts:.60}: {got}");
        assert!(got["header"].as_str().unwrap().contains(TRACE), "{got}");
    }
    // The huge header did not hurt flick: it still answers.
    assert_eq!(flick.get("/healthz").status, 200);
    drop(huge);
}

/// Sends `request` as is and returns the whole answer as text.
fn raw_request(flick: &Flick, request: &str) -> String {
    let addr = flick.base.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn async_calls_callbacks_and_sequence_steps_continue_the_trace() {
    let flick = Flick::start();
    deploy_echo_trace(&flick);
    let tp = traceparent();

    // Async with a callback: the queued call keeps the trace, and the
    // callback carries the call's span as its parent.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/done", listener.local_addr().unwrap());
    let r = send(
        &flick,
        "POST",
        "/fn/py-trace",
        "{}",
        &[("x-flick-async", "true"), ("x-callback-url", &url), ("traceparent", &tp), ("function-tp", "x")],
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.activation_id();
    let accepted_tp = r.header("traceparent").expect("a 202 names the span the call will run as");
    let (head, body) = common::receive_one(&listener, b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
    let got: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let ran_as = got["header"].as_str().unwrap();
    assert_eq!(ran_as, accepted_tp);
    assert!(ran_as.starts_with(&format!("00-{TRACE}-")), "{ran_as}");
    assert!(head.contains(&format!("traceparent: {ran_as}\r\n")), "callback head: {head}");
    assert!(flick.wait_until(Duration::from_secs(10), || flick.activation(&id)["callback"]["delivered"] == true));
    let record = flick.activation(&id);
    assert_eq!((record["trace_id"].as_str(), record["parent_span_id"].as_str()), (Some(TRACE), Some(PARENT)));
    assert_eq!(record["traceparent"], ran_as);

    // A sequence: every step in the caller's trace, each a span of its own
    // whose parent is the sequence's span.
    flick.deploy_files(
        "seq",
        &[("flick.toml", "name = \"seq\"\nruntime = \"sequence\"\nsteps = [\"py-trace\", \"js-trace\"]\n")],
    );
    let r = send(&flick, "POST", "/fn/seq", "{}", &[("traceparent", &tp)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let parent = flick.activation(&r.activation_id());
    assert_eq!((parent["trace_id"].as_str(), parent["parent_span_id"].as_str()), (Some(TRACE), Some(PARENT)));
    let steps = flick.get(&format!("/v1/activations?parent={}", r.activation_id())).json();
    let steps = steps["activations"].as_array().or_else(|| steps.as_array()).cloned().unwrap_or_default();
    assert_eq!(steps.len(), 2, "{steps:?}");
    let mut spans = vec![parent["span_id"].as_str().unwrap().to_string()];
    for s in &steps {
        let s = flick.activation(s["id"].as_str().unwrap());
        assert_eq!(s["trace_id"], TRACE, "{s}");
        assert_eq!(s["parent_span_id"], parent["span_id"], "{s}");
        spans.push(s["span_id"].as_str().unwrap().to_string());
    }
    spans.sort();
    spans.dedup();
    assert_eq!(spans.len(), 3, "each step has a span of its own");
    // What the last step saw is its own span in the same trace.
    let last = r.json();
    assert!(last["header"].as_str().unwrap().starts_with(&format!("00-{TRACE}-")), "{last}");
}

/// Starts flick with its stderr going to `log` (and JSON log lines).
fn start_logging_to(log: &Path, args: &[&str]) -> Flick {
    let dir = tempfile::tempdir().unwrap();
    let script = format!("exec \"$@\" 2>>'{}'", log.display());
    let mut all = vec!["--log", "info,flick_platform=debug"];
    all.extend_from_slice(args);
    Flick::start_in_via(dir, &all, &["sh", "-c", &script, "sh"])
}

#[test]
fn json_log_lines_parse_and_carry_the_activation_id_of_each_call() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("flick.log");
    let flick = start_logging_to(&log, &["--log-format", "json"]);
    flick.deploy_py("hello", "", "def handler(event, context):\n    return 'hi'\n");
    flick.deploy_py("boom", "", "def handler(event, context):\n    raise ValueError('no')\n");
    let ok = flick.invoke("hello", "{}");
    assert_eq!(ok.status, 200, "{}", ok.text());
    let failed = flick.invoke("boom", "{}");
    let (ok_id, failed_id) = (ok.activation_id(), failed.activation_id());
    // The record is written after the answer; the finish line with it.
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {l}")))
            .collect()
    };
    let of =
        |id: &str| -> Vec<serde_json::Value> { lines().into_iter().filter(|l| l.to_string().contains(id)).collect() };
    assert!(flick.wait_until(Duration::from_secs(10), || {
        of(&failed_id).iter().any(|l| l["fields"]["message"] == "call finished")
    }));
    assert!(
        flick.wait_until(Duration::from_secs(10), || of(&ok_id)
            .iter()
            .any(|l| l["fields"]["message"] == "call finished"))
    );
    for (id, status, function) in [(&ok_id, "success", "hello"), (&failed_id, "error", "boom")] {
        let mine = of(id);
        // Every line of the call names it in its span, not only in its text.
        for l in &mine {
            assert_eq!(l["span"]["activation_id"], id.as_str(), "{l}");
            assert_eq!(l["span"]["function"], function, "{l}");
        }
        let messages: Vec<&str> = mine.iter().filter_map(|l| l["fields"]["message"].as_str()).collect();
        assert!(messages.contains(&"cold start: new instance"), "{id}: {messages:?}");
        let finished = mine.iter().find(|l| l["fields"]["message"] == "call finished").unwrap();
        assert_eq!(finished["fields"]["status"], status, "{finished}");
        assert!(finished["fields"]["duration_ms"].as_f64().unwrap() > 0.0, "{finished}");
        assert!(finished["timestamp"].is_string() && finished["level"].is_string(), "{finished}");
    }
    // A failed call is worth an info line; a successful one only at debug.
    let failed_line = of(&failed_id).into_iter().find(|l| l["fields"]["message"] == "call finished").unwrap();
    assert_eq!(failed_line["level"], "INFO");
    // The trace id of the record is on the finish line too.
    let record = flick.activation(&failed_id);
    assert_eq!(failed_line["fields"]["trace_id"], record["trace_id"]);
}

#[test]
fn text_logs_name_the_call_and_the_format_can_come_from_env_or_the_config_file() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("flick.log");
    let flick = start_logging_to(&log, &[]);
    flick.deploy_py("hello", "", "def handler(event, context):\n    return 'hi'\n");
    let id = flick.invoke("hello", "{}").activation_id();
    let found = flick.wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains(&id) && l.contains("call finished"))
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(found, "{text}");
    assert!(text.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_err()), "text is the default");
    let line = text.lines().find(|l| l.contains(&id)).unwrap();
    assert!(line.contains(&format!("activation_id={id}")) && line.contains("function=hello"), "{line}");
    drop(flick);

    // A bad format is refused at start, naming the choices.
    let out = std::process::Command::new(common::BIN)
        .args(["up", "--log-format", "xml", "--data-dir"])
        .arg(logs.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("xml") && err.contains("json") && err.contains("text"), "{err}");
}

#[test]
fn a_cloudevent_traceparent_extension_is_continued_by_its_deliveries() {
    let flick = Flick::start();
    deploy_echo_trace(&flick);
    let toml = manifest(
        "on-event",
        "python3",
        "main.handler",
        "shape = \"lambda\"\n[[triggers]]\ntype = \"cloudevents\"\n[triggers.filter]\ntype = \"traced\"\n",
    );
    let py = "import json\ndef handler(event, context):\n    print('tp=' + str(context.traceparent))\n    return {'statusCode': 200, 'body': ''}\n";
    flick.deploy_files("on-event", &[("flick.toml", &toml), ("main.py", py)]);
    let tp = traceparent();
    let r = send(
        &flick,
        "POST",
        "/events",
        "{}",
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "e1"),
            ("ce-source", "/t"),
            ("ce-type", "traced"),
            ("ce-traceparent", &tp),
            ("content-type", "application/json"),
        ],
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let delivery = r.json()["events"][0]["deliveries"][0]["activation_id"].as_str().unwrap().to_string();
    let mut record = serde_json::Value::Null;
    assert!(
        flick.wait_until(Duration::from_secs(20), || {
            record = flick.activation(&delivery);
            record["status"] == "success"
        }),
        "{record}"
    );
    assert_eq!(
        (record["trace_id"].as_str(), record["parent_span_id"].as_str()),
        (Some(TRACE), Some(PARENT)),
        "{record}"
    );
    let logged = record["logs"].to_string();
    assert!(logged.contains(&format!("tp={}", record["traceparent"].as_str().unwrap())), "{logged}");

    // Without the extension, the poster's own traceparent header is used.
    let r = send(
        &flick,
        "POST",
        "/events",
        "{}",
        &[("ce-specversion", "1.0"), ("ce-id", "e2"), ("ce-source", "/t"), ("ce-type", "traced"), ("traceparent", &tp)],
    );
    let delivery = r.json()["events"][0]["deliveries"][0]["activation_id"].as_str().unwrap().to_string();
    assert!(flick.wait_until(Duration::from_secs(20), || flick.activation(&delivery)["status"] == "success"));
    assert_eq!(flick.activation(&delivery)["trace_id"], TRACE);
}
