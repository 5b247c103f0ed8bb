//! The OpenFaaS gateway API driven over HTTP the way faas-cli drives it
//! (Basic auth `admin:<key>`, PUT then POST on 404, JSON bodies as its Go
//! types encode them), and from the attacker's side.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::{Flick, Reply};
use serde_json::{Value, json};

#[derive(Clone, Copy)]
enum Auth<'a> {
    Admin,
    Basic(&'a str, &'a str),
    Bearer(&'a str),
    None,
}

fn call(
    flick: &Flick,
    method: &str,
    path: &str,
    body: impl Into<Vec<u8>>,
    auth: Auth,
    headers: &[(&str, &str)],
) -> Reply {
    let http = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().unwrap();
    let mut rb = http
        .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), format!("{}{path}", flick.base))
        .body(body.into());
    rb = match auth {
        Auth::Admin => rb.basic_auth("admin", Some(&flick.key)),
        Auth::Basic(u, p) => rb.basic_auth(u, Some(p)),
        Auth::Bearer(t) => rb.bearer_auth(t),
        Auth::None => rb,
    };
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let resp = rb.send().unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    Reply { status: resp.status().as_u16(), headers: resp.headers().clone(), body: resp.bytes().unwrap().to_vec() }
}

fn admin(flick: &Flick, method: &str, path: &str, body: Value) -> Reply {
    let bytes = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
    call(flick, method, path, bytes, Auth::Admin, &[("content-type", "application/json")])
}

/// faas-cli's deploy: PUT, and POST when the PUT answers 404. Returns both statuses.
fn faas_deploy(flick: &Flick, deployment: Value) -> (u16, Option<u16>) {
    let put = admin(flick, "PUT", "/system/functions", deployment.clone());
    if put.status != 404 {
        return (put.status, None);
    }
    let post = admin(flick, "POST", "/system/functions", deployment);
    assert!(matches!(post.status, 200..=202), "POST: {} {}", post.status, post.text());
    (404, Some(post.status))
}

fn describe(flick: &Flick, name: &str) -> Value {
    let r = admin(flick, "GET", &format!("/system/function/{name}"), Value::Null);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// The classic watchdog's contract through `functions/alpine` + envProcess:
/// body on stdin, stdout the response, request details in `Http_*`.
const ECHO: &str = "sh -c 'cat; echo; echo \"call=$Http_X_Call_Id path=$Http_Path query=$Http_Query greet=$GREETING\"; echo log-$Http_X_Call_Id >&2'";

#[test]
fn faas_cli_flow_deploy_list_invoke_async_scale_logs_delete() {
    let flick = Flick::start();
    // faas-cli login: GET /system/functions, 200 with the right password.
    let r = admin(&flick, "GET", "/system/functions", Value::Null);
    assert_eq!((r.status, r.json()), (200, json!([])), "{}", r.text());

    let deployment = json!({
        "service": "echo", "image": "functions/alpine:latest", "namespace": "openfaas-fn",
        "envProcess": ECHO, "envVars": {"GREETING": "hi"},
        "labels": {"team": "a", "com.openfaas.scale.min": "0"}, "annotations": {"topic": "demo"},
        "limits": {"memory": "128Mi", "cpu": "100m"}, "requests": {"memory": "64Mi"},
        "constraints": [], "secrets": [], "readOnlyRootFilesystem": true
    });
    assert_eq!(faas_deploy(&flick, deployment.clone()), (404, Some(202)), "PUT of a new function falls back to POST");

    let list = admin(&flick, "GET", "/system/functions", Value::Null).json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let f = &list[0];
    assert_eq!(f["name"], "echo");
    assert_eq!(f["image"], "flick:echo");
    assert_eq!(f["namespace"], "openfaas-fn");
    assert_eq!(f["envProcess"], ECHO);
    assert_eq!(f["envVars"], json!({"GREETING": "hi"}));
    assert_eq!(f["labels"]["team"], "a");
    assert_eq!(f["annotations"], json!({"topic": "demo"}));
    assert_eq!(f["limits"]["memory"], "128Mi");
    assert!(f["createdAt"].as_str().unwrap().ends_with('Z'), "{f}");
    assert!(f.get("replicas").is_none() && f.get("invocationCount").is_none(), "zero values are left out: {f}");
    assert_eq!(describe(&flick, "echo")["name"], "echo");
    let native = flick.get("/v1/functions/echo").json();
    assert_eq!(native["manifest"]["memory"], 128 << 20, "{native}");
    assert_eq!(native["manifest"]["runtime"], "exec");

    // Sync invoke: a private function takes the admin's Basic credentials.
    let r = call(&flick, "POST", "/function/echo/sub/dir?x=1", "ping", Auth::Admin, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let call_id = r.header("x-call-id").expect("an X-Call-Id");
    assert!(r.header("x-start-time").unwrap().parse::<u64>().unwrap() > 0);
    assert_eq!(r.text(), format!("ping\ncall={call_id} path=/sub/dir query=x=1 greet=hi\n"));
    // The caller's X-Call-Id is kept.
    let r = call(&flick, "GET", "/function/echo", "", Auth::Admin, &[("x-call-id", "my-call-1")]);
    assert_eq!(r.header("x-call-id").as_deref(), Some("my-call-1"));
    assert!(r.text().contains("call=my-call-1 path=/ "), "{}", r.text());
    // Without the key a private function answers 401 (flick's rule).
    let r = call(&flick, "POST", "/function/echo", "x", Auth::None, &[]);
    assert_eq!(r.status, 401, "{}", r.text());

    // Async: 202, empty body, and the callback as OpenFaaS's queue worker sends it.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/cb", listener.local_addr().unwrap());
    let r = call(
        &flick,
        "POST",
        "/async-function/echo",
        "later",
        Auth::Admin,
        &[("x-callback-url", &url), ("x-call-id", "cb-1")],
    );
    assert_eq!((r.status, r.body.len()), (202, 0), "{}", r.text());
    assert_eq!(r.header("x-call-id").as_deref(), Some("cb-1"));
    let (head, body) =
        common::receive_one(&listener, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    assert!(head.starts_with("post /cb "), "{head}");
    for h in ["x-call-id: cb-1", "x-function-status: 200", "x-function-name: echo", "x-duration-seconds: "] {
        assert!(head.contains(h), "{h} in {head}");
    }
    assert_eq!(String::from_utf8_lossy(&body), "later\ncall=cb-1 path=/ query= greet=hi\n");

    // Records count as invocations; logs come from them as NDJSON.
    assert!(
        flick.wait_until(Duration::from_secs(10), || describe(&flick, "echo")["invocationCount"].as_f64() >= Some(3.0))
    );
    let r = admin(&flick, "GET", "/system/logs?name=echo&tail=2", Value::Null);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type").as_deref(), Some("application/x-ndjson"));
    let lines: Vec<Value> = r.text().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{}", r.text());
    assert_eq!(lines[1]["text"], "log-cb-1", "{}", r.text());
    assert_eq!((lines[1]["name"].as_str(), lines[1]["namespace"].as_str()), (Some("echo"), Some("openfaas-fn")));
    assert!(lines[1]["timestamp"].as_str().unwrap().ends_with('Z') && lines[1]["instance"].is_string());
    let all = admin(&flick, "GET", "/system/logs?name=echo", Value::Null).text();
    assert!(all.contains(&format!("log-{call_id}")) && all.contains("log-my-call-1"), "{all}");
    let none = admin(&flick, "GET", "/system/logs?name=echo&since=2999-01-01T00:00:00Z", Value::Null);
    assert_eq!((none.status, none.text().as_str()), (200, ""));

    // Update (PUT succeeds now), from the deployed package: env changes, public through a label.
    let update = json!({"service": "echo", "image": "flick:echo", "envVars": {"GREETING": "bye"},
                        "labels": {"flick.public": "true"}});
    assert_eq!(faas_deploy(&flick, update), (202, None));
    let r = call(&flick, "POST", "/function/echo", "anon", Auth::None, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().ends_with("greet=bye\n"), "{}", r.text());
    assert_eq!(describe(&flick, "echo")["labels"], json!({"flick.public": "true"}));

    // Scale: replicas → min_instances (a warm instance), 0 → scale to zero allowed.
    let r = admin(&flick, "POST", "/system/scale-function/echo", json!({"serviceName": "echo", "replicas": 2}));
    assert_eq!(r.status, 202, "{}", r.text());
    let m = flick.get("/v1/functions/echo").json()["manifest"].clone();
    assert_eq!((m["min_instances"].as_u64(), m["max_instances"].as_u64()), (Some(2), Some(10)), "{m}");
    assert_eq!(describe(&flick, "echo")["replicas"], 2);
    let r = admin(&flick, "POST", "/system/scale-function/echo", json!({"replicas": 0}));
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(flick.get("/v1/functions/echo").json()["manifest"]["min_instances"], 0);

    // A copy of a deployed package under another name.
    let r = admin(&flick, "POST", "/system/functions", json!({"service": "echo2", "image": "flick:echo"}));
    assert_eq!(r.status, 202, "{}", r.text());
    let r = call(&flick, "POST", "/function/echo2", "two", Auth::Admin, &[]);
    assert!(r.text().starts_with("two\n"), "{}", r.text());

    let info = admin(&flick, "GET", "/system/info", Value::Null).json();
    assert_eq!(info["provider"]["provider"], "flick", "{info}");
    assert!(info["version"]["release"].is_string() && info["arch"].is_string(), "{info}");
    assert_eq!(call(&flick, "GET", "/healthz", "", Auth::None, &[]).status, 200);

    let r = admin(&flick, "DELETE", "/system/functions", json!({"functionName": "echo", "namespace": "openfaas-fn"}));
    assert_eq!(r.status, 202, "{}", r.text());
    let r = admin(&flick, "DELETE", "/system/functions", json!({"functionName": "echo"}));
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(admin(&flick, "GET", "/system/function/echo", Value::Null).status, 404);
    let names: Vec<Value> = admin(&flick, "GET", "/system/functions", Value::Null)
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("echo2")]);
}

#[test]
fn a_flick_deployed_python_function_is_served_and_updated_through_the_gateway() {
    let flick = Flick::start();
    flick.deploy_py("hello", "[env]\nWHO = \"flick\"\n", "def handler(event, context):\n    return {\"statusCode\": 201, \"headers\": {\"x-made-by\": \"py\"}, \"body\": \"hello \" + __import__('os').environ['WHO']}\n");
    let f = describe(&flick, "hello");
    assert_eq!((f["image"].as_str(), f.get("envProcess")), (Some("flick:hello"), None), "{f}");
    // The function's status, headers and body pass through.
    let r = call(&flick, "POST", "/function/hello", "{}", Auth::Admin, &[]);
    assert_eq!((r.status, r.text().as_str()), (201, "hello flick"));
    assert_eq!(r.header("x-made-by").as_deref(), Some("py"));
    // envVars merge over the package's [env]; memory from limits.
    let r = admin(
        &flick,
        "PUT",
        "/system/functions",
        json!({"service": "hello", "image": "flick:hello",
        "envVars": {"WHO": "openfaas"}, "limits": {"memory": "1Gi"}}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let r = call(&flick, "POST", "/function/hello", "{}", Auth::Admin, &[]);
    assert_eq!((r.status, r.text().as_str()), (201, "hello openfaas"));
    assert_eq!(describe(&flick, "hello")["limits"]["memory"], "1Gi");
    // envProcess cannot turn a python function into a command.
    let r = admin(
        &flick,
        "PUT",
        "/system/functions",
        json!({"service": "hello", "image": "flick:hello", "envProcess": "cat"}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("python3 function"), "{}", r.text());
}

#[test]
fn the_gateway_refuses_bad_input_in_its_own_shape_and_changes_nothing() {
    let flick = Flick::start();
    let good = json!({"service": "ok", "image": "functions/alpine", "envProcess": "cat"});
    assert_eq!(faas_deploy(&flick, good), (404, Some(202)));
    let revisions = || flick.get("/v1/functions/ok/revisions").json()["revisions"].as_array().unwrap().len();
    assert_eq!(revisions(), 1);

    // No credentials, a wrong password, the key under another user, a wrong bearer.
    let wrong_key = format!("{}x", flick.key);
    for auth in [Auth::None, Auth::Basic("admin", "nope"), Auth::Basic("root", &flick.key), Auth::Bearer(&wrong_key)] {
        for (method, path) in [
            ("GET", "/system/functions"),
            ("POST", "/system/functions"),
            ("PUT", "/system/functions"),
            ("DELETE", "/system/functions"),
            ("GET", "/system/function/ok"),
            ("POST", "/system/scale-function/ok"),
            ("GET", "/system/info"),
            ("GET", "/system/logs?name=ok"),
        ] {
            let body = json!({"service": "ok", "functionName": "ok", "replicas": 3, "image": "functions/alpine", "envProcess": "true"});
            let r = call(&flick, method, path, body.to_string(), auth, &[]);
            assert_eq!(r.status, 401, "{method} {path}: {}", r.text());
            assert_eq!(r.header("www-authenticate").as_deref(), Some("Basic realm=\"Restricted\""));
            assert!(r.text().contains("invalid credentials"), "{}", r.text());
        }
    }
    // Bearer with the key is the admin too (faas-cli's token auth).
    assert_eq!(call(&flick, "GET", "/system/functions", "", Auth::Bearer(&flick.key), &[]).status, 200);

    let bad = |method: &str, path: &str, body: &str, status: u16, says: &str| {
        let r = call(&flick, method, path, body, Auth::Admin, &[("content-type", "application/json")]);
        assert_eq!(r.status, status, "{method} {path} {body}: {}", r.text());
        assert!(r.text().contains(says), "{body}: `{}` should say `{says}`", r.text());
        assert!(r.header("content-type").unwrap().starts_with("text/plain"), "{:?}", r.headers);
    };
    bad("POST", "/system/functions", "{\"service\": ", 400, "malformed FunctionDeployment JSON");
    bad("POST", "/system/functions", "", 400, "empty body");
    bad("POST", "/system/functions", "[1]", 400, "malformed FunctionDeployment JSON");
    bad(
        "POST",
        "/system/functions",
        r#"{"service":"fig","image":"ghcr.io/openfaas/figlet:latest","envProcess":"figlet"}"#,
        400,
        "flick runs no container images",
    );
    bad("POST", "/system/functions", r#"{"service":"w","image":"functions/alpine:latest"}"#, 400, "give envProcess");
    bad("POST", "/system/functions", r#"{"service":"c","image":"flick:missing"}"#, 400, "no flick function `missing`");
    bad(
        "POST",
        "/system/functions",
        r#"{"service":"../x","image":"functions/alpine","envProcess":"cat"}"#,
        400,
        "service",
    );
    bad(
        "POST",
        "/system/functions",
        r#"{"service":"n","image":"functions/alpine","envProcess":"cat","namespace":"kube-system"}"#,
        400,
        "namespace `kube-system` not found",
    );
    bad(
        "POST",
        "/system/functions",
        r#"{"service":"m","image":"functions/alpine","envProcess":"cat","limits":{"memory":"lots"}}"#,
        400,
        "limits.memory",
    );
    bad(
        "POST",
        "/system/functions",
        r#"{"service":"m","image":"functions/alpine","envProcess":"cat","limits":{"memory":"1Ki"}}"#,
        400,
        "memory",
    );
    bad(
        "POST",
        "/system/functions",
        r#"{"service":"s","image":"functions/alpine","envProcess":"cat","secrets":["db"]}"#,
        400,
        "no secret store",
    );
    bad(
        "POST",
        "/system/functions",
        r#"{"service":"p","image":"functions/alpine","envProcess":"cat","labels":{"flick.public":"yes"}}"#,
        400,
        "flick.public",
    );
    bad(
        "POST",
        "/system/functions",
        r#"{"service":"l","image":"functions/alpine","envProcess":"cat","labels":{"a b":"1"}}"#,
        400,
        "labels key",
    );
    bad(
        "POST",
        "/system/functions",
        r#"{"service":"q","image":"functions/alpine","envProcess":"sh -c 'unterminated"}"#,
        400,
        "handler",
    );
    bad(
        "PUT",
        "/system/functions",
        r#"{"service":"nope","image":"functions/alpine","envProcess":"cat"}"#,
        404,
        "function `nope` not found",
    );
    bad("DELETE", "/system/functions", r#"{"functionName":"nope"}"#, 404, "not found");
    bad("DELETE", "/system/functions", r#"{"name":"ok"}"#, 400, "functionName");
    bad("POST", "/system/scale-function/nope", r#"{"replicas":1}"#, 404, "not found");
    bad("POST", "/system/scale-function/ok", r#"{}"#, 400, "replicas is required");
    bad("POST", "/system/scale-function/ok", r#"{"replicas":-1}"#, 400, "malformed");
    bad("POST", "/system/scale-function/ok", r#"{"replicas":100000}"#, 400, "limit");
    bad("POST", "/system/scale-function/ok", r#"{"serviceName":"other","replicas":1}"#, 400, "serviceName");
    bad("GET", "/system/function/nope", "", 404, "function `nope` not found");
    bad("GET", "/system/logs?name=nope", "", 404, "not found");
    bad("GET", "/system/logs", "", 400, "name is required");
    bad("GET", "/system/logs?name=ok&since=yesterday", "", 400, "since");
    bad("GET", "/system/logs?name=ok&tail=many", "", 400, "tail");
    bad("GET", "/system/secrets", "", 404, "no such endpoint");
    bad("POST", "/function/nope", "x", 404, "not found");
    // Oversized: a deployment over 1 MiB, an invocation over the body limit (6 MiB).
    let huge = format!(
        r#"{{"service":"big","image":"functions/alpine","envProcess":"cat","envVars":{{"X":"{}"}}}}"#,
        "a".repeat(2 << 20)
    );
    bad("POST", "/system/functions", &huge, 413, "limit");
    let r = call(&flick, "POST", "/function/ok", vec![b'a'; 7 << 20], Auth::Admin, &[]);
    assert_eq!(r.status, 413, "{}", r.text());

    // Nothing changed: one function, one revision.
    let names: Vec<Value> = admin(&flick, "GET", "/system/functions", Value::Null)
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("ok")]);
    assert_eq!(revisions(), 1);
}

#[test]
fn a_public_function_never_sees_the_key_and_anonymous_callers_get_no_callbacks() {
    let flick = Flick::start();
    let d = json!({"service": "spy", "image": "functions/alpine", "envProcess": "sh -c 'echo \"auth=$Http_Authorization\"'",
                   "labels": {"flick.public": "true"}});
    assert_eq!(faas_deploy(&flick, d), (404, Some(202)));
    for auth in [Auth::Admin, Auth::Basic("root", &flick.key), Auth::Bearer(&flick.key), Auth::Basic("guest", "guest")]
    {
        let r = call(&flick, "POST", "/function/spy", "", auth, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        let text = r.text();
        assert!(!text.contains(&flick.key), "the key reached the function: {text}");
        let b64 = |u: &str| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{}", flick.key))
        };
        assert!(!text.contains(&b64("admin")) && !text.contains(&b64("root")), "{text}");
    }
    // Someone else's Basic credentials are theirs to pass on.
    let r = call(&flick, "POST", "/function/spy", "", Auth::Basic("guest", "guest"), &[]);
    assert_eq!(r.text(), "auth=Basic Z3Vlc3Q6Z3Vlc3Q=\n");
    // An anonymous caller cannot make flick call a URL.
    let r = call(&flick, "POST", "/async-function/spy", "", Auth::None, &[("x-callback-url", "http://127.0.0.1:9/")]);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("X-Callback-Url"), "{}", r.text());
    // Without a callback an anonymous async call of a public function is accepted.
    let r = call(&flick, "POST", "/async-function/spy", "", Auth::None, &[]);
    assert_eq!((r.status, r.body.len()), (202, 0), "{}", r.text());
    assert!(r.header("x-call-id").is_some());
}
