//! CloudEvents over HTTP against a real flick: `POST /events` in binary,
//! structured and batched mode reaches the functions whose trigger filter
//! matches (and not the others), which see the event in binary mode;
//! malformed events get 400 naming the attribute; a reply event is routed
//! on to a second function; a loop of replies stops at the hop limit; and
//! from the attacker's side: no key, wrong key, oversized bodies.

mod common;

use std::time::Duration;

use common::{Flick, Reply};

/// Shows what it received: the ce-* headers, the content type and the data.
const SHOW: &str = "\
def handler(event, context):
    h = context.http['headers']
    return {'ce': {k: v for k, v in h.items() if k.startswith('ce-')}, 'ct': h.get('content-type'), 'data': event}
";

fn cloudevents_trigger(filter: &str) -> String {
    format!("[[triggers]]\ntype = \"cloudevents\"\nfilter = {{ {filter} }}\n")
}

fn post(flick: &Flick, headers: &[(&str, &str)], body: &[u8], key: Option<&str>) -> Reply {
    let client = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().unwrap();
    let mut rb = client.post(format!("{}/events", flick.base)).body(body.to_vec());
    for (n, v) in headers {
        rb = rb.header(*n, *v);
    }
    if let Some(key) = key {
        rb = rb.bearer_auth(key);
    }
    let resp = rb.send().unwrap();
    Reply { status: resp.status().as_u16(), headers: resp.headers().clone(), body: resp.bytes().unwrap().to_vec() }
}

fn post_ok(flick: &Flick, headers: &[(&str, &str)], body: &[u8]) -> serde_json::Value {
    let r = post(flick, headers, body, Some(&flick.key));
    assert_eq!(r.status, 202, "{}", r.text());
    r.json()
}

/// Every (function, activation id) the answer of `POST /events` lists.
fn deliveries(answer: &serde_json::Value) -> Vec<(String, String)> {
    answer["events"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["deliveries"].as_array().unwrap().clone())
        .map(|d| (d["function"].as_str().unwrap().to_string(), d["activation_id"].as_str().unwrap().to_string()))
        .collect()
}

/// The finished record of an async activation (waits for it to run).
fn finished(flick: &Flick, id: &str) -> serde_json::Value {
    let mut rec = serde_json::Value::Null;
    let done = flick.wait_until(Duration::from_secs(60), || {
        let r = flick.get(&format!("/v1/activations/{id}"));
        if r.status != 200 {
            return false;
        }
        rec = r.json();
        !matches!(rec["status"].as_str(), Some("queued" | "running"))
    });
    assert!(done, "activation {id} did not finish: {rec}");
    rec
}

fn response_json(rec: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(rec["response"].as_str().unwrap()).unwrap_or_else(|e| panic!("{e}: {rec}"))
}

const BINARY: [(&str, &str); 5] = [
    ("ce-specversion", "1.0"),
    ("ce-id", "evt-1"),
    ("ce-source", "/shop/orders"),
    ("ce-type", "order.created"),
    ("content-type", "application/json"),
];

#[test]
fn events_in_every_mode_reach_matching_functions_only() {
    let flick = Flick::start();
    flick.deploy_py("orders", &cloudevents_trigger("type = \"order.created\""), SHOW);
    flick.deploy_py(
        "eu-orders",
        &cloudevents_trigger("type = \"order.created\", source = \"/shop/orders\", region = \"eu\""),
        SHOW,
    );
    flick.deploy_py("refunds", &cloudevents_trigger("type = \"order.refunded\""), SHOW);

    // Binary mode, with an extension attribute that needs percent-encoding.
    let mut headers = BINARY.to_vec();
    headers.push(("ce-region", "eu"));
    headers.push(("ce-note", "caf%C3%A9 au lait"));
    let answer = post_ok(&flick, &headers, b"{\"total\": 12}");
    let mut got = deliveries(&answer);
    got.sort();
    assert_eq!(got.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(), ["eu-orders", "orders"], "{answer}");
    for (function, id) in &got {
        let rec = finished(&flick, id);
        assert_eq!((rec["status"].as_str(), rec["cause"].as_str()), (Some("success"), Some("cloudevent")), "{rec}");
        assert_eq!(rec["function"].as_str(), Some(function.as_str()));
        let seen = response_json(&rec);
        assert_eq!(seen["ce"]["ce-id"], "evt-1");
        assert_eq!(seen["ce"]["ce-type"], "order.created");
        assert_eq!(seen["ce"]["ce-specversion"], "1.0");
        assert_eq!(seen["ce"]["ce-note"], "caf%C3%A9%20au%20lait", "binary mode percent-encodes values");
        assert_eq!(seen["ct"], "application/json");
        assert_eq!(seen["data"], serde_json::json!({"total": 12}));
    }

    // Structured mode: the function still gets binary mode.
    let structured = serde_json::json!({
        "specversion": "1.0", "id": "evt-2", "source": "/shop/orders", "type": "order.refunded",
        "time": "2026-12-02T06:00:00Z", "data": {"amount": 3}
    });
    let answer = post_ok(
        &flick,
        &[("content-type", "application/cloudevents+json; charset=UTF-8")],
        structured.to_string().as_bytes(),
    );
    let got = deliveries(&answer);
    assert_eq!(got.len(), 1, "{answer}");
    assert_eq!(got[0].0, "refunds");
    let seen = response_json(&finished(&flick, &got[0].1));
    assert_eq!(
        (seen["ce"]["ce-id"].as_str(), seen["ce"]["ce-time"].as_str()),
        (Some("evt-2"), Some("2026-12-02T06:00:00Z"))
    );
    assert_eq!(seen["ct"], "application/json");
    assert_eq!(seen["data"], serde_json::json!({"amount": 3}));

    // Batched mode: each event routed on its own; one matches nothing.
    let batch = serde_json::json!([
        {"specversion": "1.0", "id": "b1", "source": "/shop/orders", "type": "order.created", "data": 1},
        {"specversion": "1.0", "id": "b2", "source": "/shop/orders", "type": "order.shipped"},
        {"specversion": "1.0", "id": "b3", "source": "/elsewhere", "type": "order.refunded", "datacontenttype": "text/plain", "data": "hi"}
    ]);
    let answer =
        post_ok(&flick, &[("content-type", "application/cloudevents-batch+json")], batch.to_string().as_bytes());
    let per_event: Vec<usize> =
        answer["events"].as_array().unwrap().iter().map(|e| e["deliveries"].as_array().unwrap().len()).collect();
    assert_eq!(per_event, [1, 0, 1], "{answer}");
    for (_, id) in deliveries(&answer) {
        assert_eq!(finished(&flick, &id)["status"], "success");
    }

    // No match at all: accepted, nothing runs, and the answer says so.
    let r = post(
        &flick,
        &[("ce-specversion", "1.0"), ("ce-id", "x"), ("ce-source", "/s"), ("ce-type", "nobody.cares")],
        b"",
        Some(&flick.key),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.header("x-flick-routed").as_deref(), Some("0"));
    assert_eq!(r.json()["routed"], 0);
    // The same event posted again is not delivered twice.
    let again = post_ok(&flick, &headers, b"{\"total\": 12}");
    let dups: Vec<bool> = again["events"][0]["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["duplicate"].as_bool().unwrap())
        .collect();
    assert_eq!(dups, [true, true], "{again}");
}

#[test]
fn malformed_events_get_400_naming_the_attribute() {
    let flick = Flick::start();
    flick.deploy_py("orders", &cloudevents_trigger("type = \"order.created\""), SHOW);
    let without = |name: &str| BINARY.iter().copied().filter(|(n, _)| *n != name).collect::<Vec<_>>();
    let with = |name: &'static str, value: &'static str| {
        let mut h = without(name);
        h.push((name, value));
        h
    };
    // (headers, body, the attribute named, the batch index named)
    type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<u8>, &'a str, Option<u64>);
    let cases: Vec<Case> = vec![
        (without("ce-id"), b"{}".to_vec(), "id", None),
        (with("ce-specversion", "0.3"), b"{}".to_vec(), "specversion", None),
        (with("ce-time", "last tuesday"), b"{}".to_vec(), "time", None),
        (with("ce-source", "not a uri"), b"{}".to_vec(), "source", None),
        (
            vec![("content-type", "application/cloudevents+json")],
            br#"{"specversion":"1.0","source":"/s","type":"t"}"#.to_vec(),
            "id",
            None,
        ),
        (
            vec![("content-type", "application/cloudevents-batch+json")],
            br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"}, "not an event"]"#.to_vec(),
            "",
            Some(1),
        ),
        (
            vec![("content-type", "application/cloudevents-batch+json")],
            br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"}, {"specversion":"1.0","id":"2","source":"/s","type":"t","Bad":1}]"#.to_vec(),
            "Bad",
            Some(1),
        ),
        (vec![("content-type", "application/cloudevents+json")], b"{\"specversion\": ".to_vec(), "", None),
    ];
    for (headers, body, attr, index) in cases {
        let r = post(&flick, &headers, &body, Some(&flick.key));
        assert_eq!(r.status, 400, "{headers:?}: {}", r.text());
        let err = &r.json()["error"];
        assert_eq!(err["code"], "invalid_event", "{err}");
        if !attr.is_empty() {
            assert_eq!(err["attribute"], attr, "{headers:?}: {err}");
            assert!(err["message"].as_str().unwrap().contains(&format!("`{attr}`")), "{err}");
        }
        assert_eq!(err["index"].as_u64(), index, "{err}");
    }
    let r = post(&flick, &[("content-type", "application/cloudevents+json")], b"{\"specversion\": ", Some(&flick.key));
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("not valid JSON"), "{}", r.text());
    // Nothing of a refused batch ran; flick keeps serving.
    assert_eq!(flick.get("/v1/activations?function=orders").json()["activations"].as_array().unwrap().len(), 0);
    assert_eq!(post(&flick, &BINARY, b"{}", Some(&flick.key)).status, 202);
}

#[test]
fn events_need_the_key_and_fit_the_body_limit() {
    let flick = Flick::start_with(&[], Some("max_body = \"64KiB\"\n"));
    flick.deploy_py("orders", &format!("public = true\n{}", cloudevents_trigger("type = \"order.created\"")), SHOW);
    // A public function's trigger does not open /events to callers without the key.
    assert_eq!(post(&flick, &BINARY, b"{}", None).status, 401);
    assert_eq!(post(&flick, &BINARY, b"{}", Some("flk_wrong")).status, 401);
    let big = vec![b'x'; 65 << 10];
    assert_eq!(post(&flick, &BINARY, &big, Some(&flick.key)).status, 413);
    let r = post(&flick, &[("content-type", "application/cloudevents-batch+json")], &big, Some(&flick.key));
    assert_eq!(r.status, 413);
    assert_eq!(flick.get("/v1/activations?function=orders").json()["activations"].as_array().unwrap().len(), 0);
}

/// Answers each `order.created` with an `order.processed` reply (binary mode).
const REPLIER: &str = "\
import json
def handler(event, context):
    h = context.http['headers']
    return {'statusCode': 200,
            'headers': {'ce-specversion': '1.0', 'ce-id': 'reply-' + h['ce-id'], 'ce-source': '/replier',
                        'ce-type': 'order.processed', 'content-type': 'application/json'},
            'body': json.dumps({'processed': event})}
";

/// Answers every `ping` with a structured `ping` of a new id: a loop. It
/// also claims its reply is hop 0, which flick does not believe.
const LOOPER: &str = "\
import json
def handler(event, context):
    h = context.http['headers']
    reply = {'specversion': '1.0', 'id': h['ce-id'] + '+', 'source': '/looper', 'type': 'ping', 'flickhops': 0,
             'data': event}
    return {'statusCode': 200, 'headers': {'content-type': 'application/cloudevents+json'}, 'body': json.dumps(reply)}
";

/// Answers with the very event it got (same source and id).
const ECHO: &str = "\
def handler(event, context):
    h = context.http['headers']
    return {'statusCode': 200, 'headers': {k: v for k, v in h.items() if k.startswith('ce-') or k == 'content-type'},
            'body': '{}'}
";

#[test]
fn reply_events_are_routed_on_and_loops_stop() {
    let flick = Flick::start_with(&[], Some("event_max_hops = 3\n"));
    flick.deploy_py("replier", &cloudevents_trigger("type = \"order.created\""), REPLIER);
    flick.deploy_py("audit", &cloudevents_trigger("type = \"order.processed\""), SHOW);
    flick.deploy_py("looper", &cloudevents_trigger("type = \"ping\""), LOOPER);
    flick.deploy_py("echo", &cloudevents_trigger("type = \"echo\""), ECHO);

    // A reply reaches the second function, one hop further.
    let answer = post_ok(&flick, &BINARY, b"{\"total\": 5}");
    let got = deliveries(&answer);
    assert_eq!(got.len(), 1);
    let rec = finished(&flick, &got[0].1);
    let note = rec["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["text"].as_str())
        .find(|t| t.contains("reply event"))
        .map(str::to_string);
    let note = note.unwrap_or_else(|| panic!("a note on the replying activation: {rec}"));
    assert!(note.contains("routed to audit"), "{note}");
    let mut audit = None;
    assert!(flick.wait_until(Duration::from_secs(60), || {
        let list = flick.get("/v1/activations?function=audit").json();
        audit = list["activations"].as_array().unwrap().first().cloned();
        audit.as_ref().is_some_and(|a| a["status"] == "success")
    }));
    let seen = response_json(&finished(&flick, audit.unwrap()["id"].as_str().unwrap()));
    assert_eq!(seen["ce"]["ce-id"], "reply-evt-1");
    assert_eq!(seen["ce"]["ce-type"], "order.processed");
    assert_eq!(seen["ce"]["ce-flickhops"], "1");
    assert_eq!(seen["data"], serde_json::json!({"processed": {"total": 5}}));

    // An event-shaped answer to a plain HTTP call is just an answer.
    let client = reqwest::blocking::Client::builder().no_proxy().build().unwrap();
    let r = client
        .post(format!("{}/fn/replier", flick.base))
        .bearer_auth(&flick.key)
        .header("ce-id", "direct")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["ce-type"], "order.processed", "the function did answer with an event");
    let sync_rec = flick.activation(r.headers()["x-flick-activation-id"].to_str().unwrap());
    assert!(!sync_rec["logs"].to_string().contains("reply event"), "{sync_rec}");

    // A loop of replies stops at the hop limit, with a note saying so.
    post_ok(&flick, &[("ce-specversion", "1.0"), ("ce-id", "p"), ("ce-source", "/t"), ("ce-type", "ping")], b"{}");
    let mut stopped = None;
    assert!(
        flick.wait_until(Duration::from_secs(60), || {
            let list = flick.get("/v1/activations?function=looper").json();
            stopped = list["activations"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| {
                    a["logs"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|l| l["text"].as_str().unwrap_or("").contains("over the limit"))
                })
                .cloned();
            stopped.is_some()
        }),
        "the loop never reached its limit"
    );
    let list = flick.get("/v1/activations?function=looper").json();
    assert_eq!(list["activations"].as_array().unwrap().len(), 4, "hops 0, 1, 2 and 3 ran, hop 4 did not: {list}");
    let list = flick.get("/v1/activations?function=audit").json();
    assert_eq!(list["activations"].as_array().unwrap().len(), 1, "only the event-caused reply reached audit: {list}");

    // A malformed reply is not routed; the replying activation says why.
    flick.deploy_py(
        "bad-replier",
        &cloudevents_trigger("type = \"bad\""),
        "def handler(event, context):\n    return {'statusCode': 200, 'headers': {'ce-specversion': '1.0', 'ce-type': 'x', 'ce-source': '/b'}, 'body': ''}\n",
    );
    let answer =
        post_ok(&flick, &[("ce-specversion", "1.0"), ("ce-id", "b"), ("ce-source", "/t"), ("ce-type", "bad")], b"{}");
    let rec = finished(&flick, &deliveries(&answer)[0].1);
    assert_eq!(rec["status"], "success", "a bad reply does not fail the call: {rec}");
    let logs = rec["logs"].to_string();
    assert!(logs.contains("not a valid CloudEvent") && logs.contains("`id`"), "{logs}");

    // A function answering with the event it got is not handed it again.
    let answer =
        post_ok(&flick, &[("ce-specversion", "1.0"), ("ce-id", "e"), ("ce-source", "/t"), ("ce-type", "echo")], b"{}");
    let rec = finished(&flick, &deliveries(&answer)[0].1);
    assert_eq!(rec["status"], "success");
    let logs = rec["logs"].to_string();
    assert!(logs.contains("not routed back"), "{logs}");
    let list = flick.get("/v1/activations?function=echo").json();
    assert_eq!(list["activations"].as_array().unwrap().len(), 1, "{list}");
}

#[test]
fn events_reach_sequences_and_loops_through_events_are_refused() {
    let flick = Flick::start_with(&[], Some("event_max_hops = 3\n"));
    // A sequence whose (only) step answers with a reply event.
    flick.deploy_py("replier", "", REPLIER);
    flick.deploy_py("audit", &cloudevents_trigger("type = \"order.processed\""), SHOW);
    let seq = format!(
        "name = \"on-order\"\nruntime = \"sequence\"\nsteps = [\"replier\"]\n{}",
        cloudevents_trigger("type = \"order.created\"")
    );
    flick.deploy_files("on-order", &[("flick.toml", &seq)]);
    let answer = post_ok(&flick, &BINARY, b"{\"total\": 1}");
    let got = deliveries(&answer);
    assert_eq!(got.len(), 1, "{answer}");
    let rec = finished(&flick, &got[0].1);
    assert_eq!((rec["function"].as_str(), rec["status"].as_str()), (Some("on-order"), Some("success")), "{rec}");
    // Its first step got the event in binary mode, and the sequence's
    // answer (that step's reply event) went on to `audit`.
    assert_eq!(response_json(&rec), serde_json::json!({"processed": {"total": 1}}));
    assert!(rec["logs"].to_string().contains("routed to audit"), "{rec}");
    let mut audit = None;
    assert!(flick.wait_until(Duration::from_secs(60), || {
        let list = flick.get("/v1/activations?function=audit").json();
        audit = list["activations"].as_array().unwrap().first().cloned();
        audit.as_ref().is_some_and(|a| a["status"] == "success")
    }));
    let seen = response_json(&audit.unwrap());
    assert_eq!(seen["ce"]["ce-id"], "reply-evt-1");

    // An event that already travelled past the hop limit (a loop through
    // something that posts back to /events) is refused, naming flickhops.
    let mut hot = BINARY.to_vec();
    hot.push(("ce-flickhops", "4"));
    let r = post(&flick, &hot, b"{}", Some(&flick.key));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("flickhops"), "{}", r.text());
    // A batch over the bound is refused whole.
    let one = r#"{"specversion":"1.0","id":"x","source":"/s","type":"t"}"#;
    let big = format!("[{}]", vec![one; 1001].join(","));
    let r = post(&flick, &[("content-type", "application/cloudevents-batch+json")], big.as_bytes(), Some(&flick.key));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("1000"), "{}", r.text());
}
