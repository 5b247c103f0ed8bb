//! The HTTP edge, from the side of hostile callers and hostile functions:
//! what crosses it in each direction (keys, framing, request details,
//! environment values, error detail), caller deadlines that must hurt no
//! one else, the http runtime's faithful proxying, and slow clients.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Flick, manifest};

/// One HTTP/1.1 answer read off a raw connection, framed by its own
/// `content-length` exactly as a keep-alive client would frame it.
#[derive(Debug)]
struct RawReply {
    head: String,
    body: Vec<u8>,
}

impl RawReply {
    fn status(&self) -> u16 {
        self.head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    fn header(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

fn connect(flick: &Flick) -> TcpStream {
    let addr = flick.base.trim_start_matches("http://");
    let s = TcpStream::connect(addr).unwrap();
    // A read that never completes is a failure, not a hang of the suite.
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Reads one response: the head up to the blank line, then `content-length` bytes.
fn read_reply(s: &mut TcpStream) -> RawReply {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("reading a response head");
        assert_eq!(n, 1, "connection closed mid-head after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut reply = RawReply { head, body: Vec::new() };
    let len: Vec<usize> = reply.header("content-length").iter().map(|v| v.parse().unwrap()).collect();
    assert!(len.len() <= 1, "more than one content-length: {}", reply.head);
    assert!(reply.header("transfer-encoding").is_empty(), "unexpected chunking: {}", reply.head);
    let mut body = vec![0u8; len.first().copied().unwrap_or(0)];
    s.read_exact(&mut body).expect("reading a response body");
    reply.body = body;
    reply
}

fn raw_request(method: &str, path: &str, key: Option<&str>, body: &str) -> String {
    let auth = key.map(|k| format!("authorization: Bearer {k}\r\n")).unwrap_or_default();
    format!("{method} {path} HTTP/1.1\r\nhost: flick\r\n{auth}content-length: {}\r\n\r\n{body}", body.len())
}

// --- keys, framing and request details (items 5, 6) -------------------------

#[test]
fn the_admin_key_never_reaches_a_public_function_in_any_spelling() {
    let flick = Flick::start();
    let code = "def handler(event, context):\n    return {'headers': context.http['headers']}\n";
    flick.deploy_py("peek", "public = true\n", code);
    flick.deploy_files("peek-exec", &[("flick.toml", &manifest("peek-exec", "exec", "env", "public = true\n"))]);
    let key = &flick.key;
    let http = reqwest::blocking::Client::builder().no_proxy().build().unwrap();
    let spellings = [
        ("authorization", format!("bearer {key}")),
        ("authorization", format!("BEARER {key}")),
        ("authorization", format!("Bearer    {key}")),
        ("authorization", format!("Token {key}")),
        ("authorization", key.to_string()),
        ("x-api-key", key.to_string()),
    ];
    for (name, value) in &spellings {
        for function in ["peek", "peek-exec"] {
            let r = http.post(format!("{}/fn/{function}", flick.base)).header(*name, value).body("{}").send().unwrap();
            assert_eq!(r.status().as_u16(), 200, "{function} with {name}: {value}");
            let text = r.text().unwrap();
            assert!(!text.contains(key.as_str()), "{function} saw the key sent as `{name}: {value}`: {text}");
        }
    }
    // The scheme's case does not matter to flick's own check either.
    flick.deploy_py("private", "", code);
    for spelling in [format!("bearer {key}"), format!("BEARER  {key}")] {
        let r = http.post(format!("{}/fn/private", flick.base)).header("authorization", &spelling).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{spelling}");
        assert!(!r.text().unwrap().contains(key.as_str()));
    }
    // A credential that is not the key is the function's business.
    let r = http.post(format!("{}/fn/peek", flick.base)).bearer_auth("someone-elses-token").send().unwrap();
    assert!(r.text().unwrap().contains("someone-elses-token"));
}

/// A function sets framing headers that would split its answer in two: the
/// second "response" (the rest of its body) must not reach the next request
/// on the same keep-alive connection.
#[test]
fn a_function_cannot_forge_a_second_response_on_a_keep_alive_connection() {
    let flick = Flick::start();
    let forged = "HTTP/1.1 200 OK\\r\\ncontent-length: 6\\r\\n\\r\\nforged";
    let hop = "'content-length': '0', 'connection': 'keep-alive, x-drop', 'keep-alive': 'timeout=99', \
               'transfer-encoding': 'identity', 'upgrade': 'h2c', 'proxy-authenticate': 'Basic', 'te': 'trailers', \
               'trailer': 'x-t', 'x-drop': '1', 'x-kept': 'yes'";
    flick.deploy_py(
        "framer-py",
        "public = true\n",
        &format!(
            "def handler(event, context):\n    return {{'statusCode': 200, 'headers': {{{hop}}}, 'body': '{forged}'}}\n"
        ),
    );
    flick.deploy_files(
        "framer-node",
        &[
            ("flick.toml", &manifest("framer-node", "node", "index.handler", "public = true\n")),
            (
                "index.js",
                &format!(
                    "exports.handler = async () => ({{ statusCode: 200, headers: {{{hop}}}, body: '{forged}' }});\n"
                ),
            ),
        ],
    );
    let server = format!(
        "import os\nfrom http.server import BaseHTTPRequestHandler, HTTPServer\nclass H(BaseHTTPRequestHandler):\n    protocol_version = 'HTTP/1.1'\n    def do_GET(self):\n        body = b'{forged}'\n        self.send_response(200)\n        self.send_header('content-length', str(len(body)))\n        self.send_header('connection', 'keep-alive, x-drop')\n        self.send_header('keep-alive', 'timeout=99')\n        self.send_header('x-drop', '1')\n        self.send_header('x-kept', 'yes')\n        self.end_headers()\n        self.wfile.write(body)\nHTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n"
    );
    flick.deploy_files(
        "framer-http",
        &[
            ("flick.toml", &manifest("framer-http", "http", "python3 server.py", "public = true\n")),
            ("server.py", &server),
        ],
    );
    for function in ["framer-py", "framer-node", "framer-http"] {
        let mut s = connect(&flick);
        s.write_all(raw_request("GET", &format!("/fn/{function}"), None, "").as_bytes()).unwrap();
        let first = read_reply(&mut s);
        assert_eq!(first.status(), 200, "{function}: {first:?}");
        assert!(String::from_utf8_lossy(&first.body).ends_with("forged"), "{function}: the body was cut: {first:?}");
        for name in ["connection", "keep-alive", "upgrade", "proxy-authenticate", "te", "trailer", "x-drop"] {
            assert!(first.header(name).is_empty(), "{function}: `{name}` passed through: {}", first.head);
        }
        assert_eq!(first.header("x-kept"), ["yes"], "{function}: {}", first.head);
        // The same connection, the next request: it gets its own answer.
        s.write_all(raw_request("GET", "/healthz", None, "").as_bytes()).unwrap();
        let second = read_reply(&mut s);
        assert_eq!(second.status(), 200, "{function}: {second:?}");
        assert_eq!(
            String::from_utf8_lossy(&second.body),
            r#"{"status":"ok"}"#,
            "{function}: forged answer: {second:?}"
        );
    }
}

#[test]
fn exec_request_details_come_from_the_request_line_only() {
    let flick = Flick::start();
    flick.deploy_files(
        "line",
        &[
            ("flick.toml", &manifest("line", "exec", "sh ./show.sh", "")),
            ("show.sh", "echo \"$Http_Method|$Http_Path|$Http_Query|$Http_X_Test\"\n"),
        ],
    );
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/fn/line/public?a=1", flick.base))
        .bearer_auth(&flick.key)
        .header("method", "DELETE")
        .header("path", "/admin")
        .header("query", "role=admin")
        .header("x-test", "kept")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().unwrap().trim(), "POST|/public|a=1|kept");
}

// --- what comes back: environment values, error detail, rollback (item 8) ----

#[test]
fn environment_values_are_shown_only_when_asked_for() {
    let flick = Flick::start();
    flick.deploy_py(
        "secretive",
        "[env]\nDB_PASSWORD = \"hunter2-secret\"\nMODE = \"prod\"\n",
        "import os\ndef handler(event, context):\n    return os.environ['DB_PASSWORD']\n",
    );
    assert_eq!(flick.invoke("secretive", "{}").json(), "hunter2-secret", "the function still gets its values");
    let r = flick.get("/v1/functions/secretive");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.text().contains("hunter2-secret"), "a value came back: {}", r.text());
    assert_eq!(r.json()["env_names"], serde_json::json!(["DB_PASSWORD", "MODE"]));
    let r = flick.get("/v1/functions/secretive?env=values");
    assert_eq!(r.json()["manifest"]["env"]["DB_PASSWORD"], "hunter2-secret", "{}", r.text());
    assert_eq!(flick.get("/v1/functions/secretive?env=all").status, 400);

    let shown = flick.cli_ok(&["show", "secretive"]);
    assert!(shown.contains("DB_PASSWORD") && !shown.contains("hunter2-secret"), "{shown}");
    let shown = flick.cli_ok(&["show", "secretive", "--env"]);
    assert!(shown.contains("hunter2-secret"), "{shown}");
}

#[test]
fn an_environment_value_with_nul_is_refused_at_deploy() {
    let flick = Flick::start();
    let dir = common::write_function(
        flick.data_dir(),
        "nul-env",
        &[
            ("flick.toml", &manifest("nul-env", "python3", "main.handler", "[env]\nBAD = \"a\\u0000b\"\n")),
            ("main.py", "def handler(event, context):\n    return 1\n"),
        ],
    );
    let out = flick.cli(&["deploy", dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "deployed: {}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains("BAD") && err.contains("NUL"), "{err}");
    assert_eq!(flick.get("/v1/functions/nul-env").status, 404);
}

/// A platform fault's detail (which names host paths and interpreters) is
/// for the operator's log: a caller without a key gets the kind of fault
/// and the activation id, nothing more.
#[test]
fn a_platform_error_tells_an_anonymous_caller_no_detail() {
    let flick = Flick::start();
    // Garbage on the protocol channel: flick cannot run this instance.
    flick.deploy_py(
        "garbler",
        "public = true\n",
        "import os\ndef handler(event, context):\n    os.write(3, b'not a frame\\n')\n    import time; time.sleep(5)\n",
    );
    let r = flick.request("POST", "/fn/garbler", b"{}".to_vec(), false);
    assert_eq!(r.status, 502, "{}", r.text());
    let v = r.json();
    assert_eq!(v["errorType"], "Platform.Error");
    let message = v["errorMessage"].as_str().unwrap();
    assert!(message.contains(&r.activation_id()), "{message}");
    assert!(!message.contains("protocol") && !message.contains("header"), "internal detail leaked: {message}");
    assert_eq!(flick.activation(&r.activation_id())["status"], "platform_error");
}

#[test]
fn rollback_checks_the_key_before_reading_a_body() {
    let flick = Flick::start();
    flick.deploy_py("rb", "", "def handler(event, context):\n    return 1\n");
    // Headers announce a megabyte that never comes: the answer must not wait for it.
    let mut s = connect(&flick);
    s.write_all(b"POST /v1/functions/rb/rollback HTTP/1.1\r\nhost: flick\r\ncontent-length: 1000000\r\n\r\n{").unwrap();
    let r = read_reply(&mut s);
    assert_eq!(r.status(), 401, "{r:?}");
    // With the key, an oversized body is refused rather than read whole.
    let r = flick.request("POST", "/v1/functions/rb/rollback", vec![b' '; 1 << 20], true);
    assert_eq!(r.status, 413, "{}", r.text());
}

// --- caller deadlines and oversized answers (item 3) -------------------------

/// Sleeps `event["sleep"]` seconds, then answers with its pid (or misbehaves as asked).
const SHARED_PY: &str = r#"import os, time
def handler(event, context):
    time.sleep(event.get("sleep", 0))
    if event.get("raise"):
        raise RuntimeError("x" * event["raise"])
    if event.get("big_body"):
        return "b" * event["big_body"]
    if event.get("big_header"):
        return {"statusCode": 200, "headers": {"x-big": "h" * event["big_header"]}, "body": "hi"}
    return {"pid": os.getpid()}
"#;

fn call_with_deadline(flick: &Flick, name: &str, body: &str, deadline_ms: Option<u64>) -> (u16, String) {
    let mut rb = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{}/fn/{name}", flick.base))
        .bearer_auth(&flick.key)
        .body(body.to_string());
    if let Some(ms) = deadline_ms {
        rb = rb.header("x-flick-deadline", ms.to_string());
    }
    let r = rb.send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

/// Two hostile callers with a 1 ms deadline hammer the one shared instance
/// that four legitimate callers use: they get their 504s, and nobody else
/// notices (the instance is never stopped for them).
#[test]
fn a_callers_deadline_ends_only_its_own_wait() {
    let flick = Flick::start();
    flick.deploy_py("shared", "timeout = \"30s\"\nconcurrency = 16\nmax_instances = 1\n", SHARED_PY);
    let (status, first) = call_with_deadline(&flick, "shared", "{}", None);
    assert_eq!(status, 200, "{first}");
    let pid = serde_json::from_str::<serde_json::Value>(&first).unwrap()["pid"].clone();
    std::thread::scope(|s| {
        let hostile: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    (0..6)
                        .map(|_| call_with_deadline(&flick, "shared", r#"{"sleep": 0.3}"#, Some(1)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let legit: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..4).map(|_| call_with_deadline(&flick, "shared", r#"{"sleep": 0.2}"#, None)).collect::<Vec<_>>()
                })
            })
            .collect();
        for l in legit {
            for (status, body) in l.join().unwrap() {
                assert_eq!(status, 200, "a legitimate call failed: {body}");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["pid"], pid, "the shared instance was replaced: {body}");
            }
        }
        for h in hostile {
            for (status, body) in h.join().unwrap() {
                assert_eq!(status, 504, "{body}");
                assert!(body.contains("Caller.DeadlineExceeded"), "{body}");
            }
        }
    });
    // A caller's deadline is still honoured against a slow call, and the
    // function's own timeout still stops an instance.
    let (status, body) = call_with_deadline(&flick, "shared", r#"{"sleep": 2}"#, Some(200));
    assert_eq!(status, 504, "{body}");
    let (status, body) = call_with_deadline(&flick, "shared", "{}", None);
    assert_eq!((status, serde_json::from_str::<serde_json::Value>(&body).unwrap()["pid"].clone()), (200, pid));
}

/// Calls `name` with a caller deadline; returns the status and activation id.
fn give_up_after(flick: &Flick, name: &str, body: &str, deadline_ms: u64) -> (u16, String) {
    let r = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{}/fn/{name}", flick.base))
        .bearer_auth(&flick.key)
        .header("x-flick-deadline", deadline_ms.to_string())
        .body(body.to_string())
        .send()
        .unwrap();
    let id = r.headers().get("x-flick-activation-id").map(|v| v.to_str().unwrap().to_string());
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    let id = id.unwrap_or_else(|| panic!("{status} without an activation id: {text}"));
    assert!(status != 504 || text.contains("Caller.DeadlineExceeded"), "{text}");
    (status, id)
}

/// The record of `id` once it exists (it is written when the invocation
/// ends, which for an abandoned one is after its caller's 504).
fn record_when_done(flick: &Flick, id: &str) -> serde_json::Value {
    let path = format!("/v1/activations/{id}");
    assert!(flick.wait_until(Duration::from_secs(30), || flick.get(&path).status == 200), "no record for {id}");
    flick.activation(id)
}

/// A caller that gives up ends only its own wait: what the invocation did
/// afterwards is not lost. Its record, written when it finishes, has the
/// real outcome, logs and timings, and says when the caller gave up and
/// what that caller saw (504). A call abandoned while still queued is
/// recorded as such, and never runs.
#[test]
fn an_abandoned_invocation_is_recorded_with_its_real_outcome() {
    let flick = Flick::start();
    let code = "import time\ndef handler(event, context):\n    print('began', event['n'], flush=True)\n    \
                time.sleep(event['sleep'])\n    print('ended', event['n'], flush=True)\n    return 'done'\n";
    flick.deploy_py("patient", "timeout = \"30s\"\nconcurrency = 1\nmax_instances = 1\n", code);
    let (status, _) = give_up_after(&flick, "patient", r#"{"n": 0, "sleep": 0}"#, 20_000);
    assert_eq!(status, 200);

    std::thread::scope(|s| {
        // The first call reaches the one instance and outlives its caller;
        // the second queues behind it and its caller gives up first.
        let running = s.spawn(|| give_up_after(&flick, "patient", r#"{"n": 1, "sleep": 2}"#, 500));
        std::thread::sleep(Duration::from_millis(200));
        let (status, queued) = give_up_after(&flick, "patient", r#"{"n": 2, "sleep": 0}"#, 300);
        assert_eq!(status, 504);
        let (status, ran) = running.join().unwrap();
        assert_eq!(status, 504);

        let v = record_when_done(&flick, &ran);
        assert_eq!((v["status"].as_str(), v["http_status"].as_u64()), (Some("success"), Some(504)), "{v}");
        let gave_up = v["caller_gave_up_ms"].as_f64().unwrap_or_else(|| panic!("no caller_gave_up_ms: {v}"));
        assert!(gave_up >= 500.0 && gave_up < v["duration_ms"].as_f64().unwrap(), "{v}");
        assert!(v["exec_ms"].as_f64().unwrap() >= 1900.0, "{v}");
        let logs: Vec<&str> = v["logs"].as_array().unwrap().iter().map(|l| l["text"].as_str().unwrap()).collect();
        assert!(logs.iter().any(|l| l.contains("began 1")) && logs.iter().any(|l| l.contains("ended 1")), "{v}");
        assert!(v["response"].as_str().unwrap().contains("done"), "{v}");

        let v = record_when_done(&flick, &queued);
        assert_eq!((v["status"].as_str(), v["http_status"].as_u64()), (Some("timeout"), Some(504)), "{v}");
        assert!(v["caller_gave_up_ms"].as_f64().is_some_and(|ms| ms >= 300.0), "{v}");
        assert_eq!(v["exec_ms"].as_f64(), Some(0.0), "{v}");
        assert!(v["response"].as_str().unwrap().contains("waiting for an instance"), "{v}");
    });
    // The queued call never ran: no instance printed its marker.
    let all = flick.get("/v1/activations?function=patient").text();
    assert!(!all.contains("began 2"), "{all}");
}

/// A 40 KB exception message, a body over `max_response` and a header line
/// over the protocol's limit each fail their own request only: a slow call
/// in flight on the same instance finishes, and the instance serves on.
#[test]
fn an_oversized_answer_fails_only_its_own_request() {
    let flick = Flick::start_with(&[], Some("max_response = \"64KiB\"\n"));
    flick.deploy_py("roomy", "timeout = \"30s\"\nconcurrency = 4\nmax_instances = 1\n", SHARED_PY);
    let (status, first) = call_with_deadline(&flick, "roomy", "{}", None);
    assert_eq!(status, 200, "{first}");
    let pid = serde_json::from_str::<serde_json::Value>(&first).unwrap()["pid"].clone();
    std::thread::scope(|s| {
        let slow = s.spawn(|| call_with_deadline(&flick, "roomy", r#"{"sleep": 3}"#, None));
        std::thread::sleep(Duration::from_millis(300));
        let (status, body) = call_with_deadline(&flick, "roomy", r#"{"raise": 40000}"#, None);
        assert_eq!(status, 500, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["errorType"], "RuntimeError", "{v}");
        assert!(v["errorMessage"].as_str().unwrap().contains("more characters]"), "{v}");
        for ask in [r#"{"big_body": 100000}"#, r#"{"big_header": 100000}"#] {
            let (status, body) = call_with_deadline(&flick, "roomy", ask, None);
            assert_eq!(status, 500, "{ask}: {body}");
            assert!(body.contains("Function.ResponseSizeTooLarge"), "{ask}: {body}");
        }
        let (status, body) = slow.join().unwrap();
        assert_eq!(status, 200, "the call in flight failed with the oversized ones: {body}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["pid"], pid);
    });
    let (status, body) = call_with_deadline(&flick, "roomy", "{}", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["pid"], pid, "the instance was replaced");
}

// --- the http runtime's proxy (item 4) ----------------------------------------

/// An http function that answers with the request line exactly as its
/// server read it (and its pid, to tell whether the instance survived).
const ECHO_SERVER: &str = r#"import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/drop":
            # Refuse this one request: close without a word.
            self.close_connection = True
            return
        body = json.dumps({"line": self.requestline, "path": self.path, "pid": os.getpid()}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// Each encoding that once changed what the server was asked for (or killed
/// it) reaches the server byte for byte, and the same instance answers all.
#[test]
fn the_http_runtime_forwards_path_and_query_exactly_as_sent() {
    let flick = Flick::start();
    flick.deploy_files(
        "echo-line",
        &[("flick.toml", &manifest("echo-line", "http", "python3 server.py", "")), ("server.py", ECHO_SERVER)],
    );
    let mut pids = Vec::new();
    for target in [
        "/plain?x=1",
        "/a%20b",
        "/a%0ab",
        "/a%00b",
        "/admin%3Frole=admin",
        "/x%26y=1?real=1",
        "/a%23frag?q=1",
        "/%2e%2e%2fetc%2fpasswd",
        "/%2E%2E/up",
        "/caf%C3%A9?name=%E2%9C%93&amp=%26",
        "/",
    ] {
        let mut s = connect(&flick);
        let request =
            format!("GET /fn/echo-line{target} HTTP/1.1\r\nhost: flick\r\nauthorization: Bearer {}\r\n\r\n", flick.key);
        s.write_all(request.as_bytes()).unwrap();
        let r = read_reply(&mut s);
        assert_eq!(r.status(), 200, "{target}: {r:?}");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["path"], target, "{target}: the server was asked for something else: {v}");
        assert_eq!(v["line"], format!("GET {target} HTTP/1.1"), "{target}");
        pids.push(v["pid"].clone());
    }
    // A request the server will not take fails alone; the server serves on.
    let r = flick.request("GET", "/fn/echo-line/drop", Vec::new(), true);
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["errorType"], "Runtime.ConnectionClosed", "{}", r.text());
    let r = flick.request("GET", "/fn/echo-line/after", Vec::new(), true);
    assert_eq!(r.status, 200, "{}", r.text());
    pids.push(r.json()["pid"].clone());
    pids.dedup();
    assert_eq!(pids.len(), 1, "the instance was replaced along the way: {pids:?}");
    assert_eq!(flick.instances("echo-line"), 1);
}

// --- slow and greedy clients (item 9) -----------------------------------------

/// Sends one byte of a never-ending header every 200 ms until flick closes
/// the connection; true if it did (within the 30 s this client allows).
/// Reads until the server closes; true if it closed without sending more.
fn closed_quietly(s: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => rest.is_empty(),
        // A reset after the answer also ends the connection.
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset && rest.is_empty(),
    }
}

/// A client that began a request but did not finish its headers in time is
/// told so (408, `Connection: close`) before the close — also when the
/// partial request came in one packet behind a complete one — while others
/// are served meanwhile. A kept-alive connection with no new request is
/// simply closed (normal HTTP).
#[test]
fn a_slow_request_head_gets_a_408_before_the_close() {
    let flick = Flick::start_with(&[], Some("header_read_timeout = \"1s\"\n"));
    let mut slow = connect(&flick);
    slow.write_all(b"GET /v1/functions HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut pipelined = connect(&flick);
    let both = format!("{}GET /v1/functions HTTP/1.1\r\nHost: x\r\n", raw_request("GET", "/healthz", None, ""));
    pipelined.write_all(both.as_bytes()).unwrap();
    let mut idle = connect(&flick);
    idle.write_all(raw_request("GET", "/healthz", None, "").as_bytes()).unwrap();
    assert_eq!(read_reply(&mut idle).status(), 200);
    // While the slow heads stall, the server serves others.
    for _ in 0..3 {
        assert_eq!(flick.get_anon("/healthz").status, 200);
    }
    assert_eq!(read_reply(&mut pipelined).status(), 200, "the complete request is answered");
    for (what, s) in [("slow", &mut slow), ("pipelined", &mut pipelined)] {
        let r = read_reply(s);
        assert_eq!(r.status(), 408, "{what}: {r:?}");
        assert_eq!(r.header("connection"), ["close"], "{what}: {r:?}");
        assert!(String::from_utf8_lossy(&r.body).contains("request_timeout"), "{what}: {r:?}");
        assert!(closed_quietly(s), "{what}: the connection stayed open after the 408");
    }
    assert!(closed_quietly(&mut idle), "an idle kept-alive connection got an answer it did not ask for");
}

fn trickle_until_closed(flick: &Flick) -> bool {
    let mut s = connect(flick);
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    if s.write_all(b"GET /healthz HTTP/1.1\r\nhost: flick\r\nx-slow: ").is_err() {
        return true;
    }
    let mut buf = [0u8; 512];
    for _ in 0..150 {
        if s.write_all(b"a").is_err() {
            return true;
        }
        match s.read(&mut buf) {
            // Closed, or answered (an over-the-limit 503) and closed.
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn slow_and_greedy_clients_hold_a_bounded_number_of_connections_for_a_bounded_time() {
    let flick = Flick::start_with(
        &[],
        Some("max_connections = 16\nheader_read_timeout = \"2s\"\nbody_read_timeout = \"2s\"\n"),
    );
    std::thread::scope(|s| {
        let slow: Vec<_> = (0..24).map(|_| s.spawn(|| trickle_until_closed(&flick))).collect();
        // All slots are taken by now or soon: a connection over the limit is
        // told so at once, request or not.
        let mut over = None;
        for _ in 0..50 {
            let mut probe = connect(&flick);
            probe.write_all(raw_request("GET", "/healthz", None, "").as_bytes()).unwrap();
            let r = read_reply(&mut probe);
            if r.status() == 503 {
                over = Some(r);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let over = over.expect("no connection was ever refused at the limit");
        assert_eq!(over.header("retry-after"), ["1"]);
        assert!(String::from_utf8_lossy(&over.body).contains("too_many_connections"), "{over:?}");
        for (i, t) in slow.into_iter().enumerate() {
            assert!(t.join().unwrap(), "slow client {i} was still held by flick after 30 s");
        }
    });
    // Slots come back: ordinary requests are served again.
    assert!(flick.wait_until(Duration::from_secs(10), || flick.get_anon("/healthz").status == 200));

    // A body that never arrives: 408, on the management API and the invoke
    // path alike. The function exists: the route is resolved (404 for an
    // unknown one) before the body is read.
    flick.deploy_py("waits-for-body", "", "def handler(event, context):\n    return {}\n");
    for path in ["/v1/functions", "/fn/waits-for-body"] {
        let mut s = connect(&flick);
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: flick\r\nauthorization: Bearer {}\r\ncontent-length: 1000\r\n\r\nonly-this",
            flick.key
        );
        s.write_all(head.as_bytes()).unwrap();
        let r = read_reply(&mut s);
        assert_eq!(r.status(), 408, "{path}: {r:?}");
    }
}
