//! Handler shapes declared in `flick.toml` (`shape = …`), end to end: real
//! functions written for Lambda, Google Cloud Functions and the OpenFaaS
//! templates, deployed with `flick deploy` and called over `/fn`.

mod common;

use common::{Flick, manifest, write_function};

/// A call made with curl: (status, lowercase headers, body).
fn curl(flick: &Flick, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, Vec<(String, String)>, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "-D", "-", "-X", method, "-H", &format!("Authorization: Bearer {}", flick.key)]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out =
        cmd.args(["--data-binary", body, &format!("{}{path}", flick.base)]).output().expect("curl must be installed");
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn python_declared_lambda_gets_an_api_gateway_event_over_http() {
    let flick = Flick::start();
    flick.deploy_files(
        "py-gw",
        &[
            ("flick.toml", &manifest("py-gw", "python3", "lambda_function.lambda_handler", "shape = \"lambda\"\n")),
            (
                "lambda_function.py",
                "import json\n\ndef lambda_handler(event, context):\n    return {\n        'statusCode': 201,\n        'headers': {'content-type': 'application/json', 'x-route': event['routeKey']},\n        'cookies': ['seen=1'],\n        'body': json.dumps({'method': event['requestContext']['http']['method'], 'rawPath': event['rawPath'],\n                            'qs': event.get('queryStringParameters'), 'body': event.get('body'),\n                            'b64': event['isBase64Encoded'], 'version': event['version'],\n                            'arn': context.invoked_function_arn}),\n    }\n",
            ),
        ],
    );
    let r = flick.request("PUT", "/fn/py-gw/items/a%20b?x=1&x=2", b"hello".to_vec(), true);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("x-route").as_deref(), Some("$default"));
    assert_eq!(r.header("set-cookie").as_deref(), Some("seen=1"));
    let v = r.json();
    assert_eq!(v["version"], "2.0");
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["rawPath"], "/items/a%20b");
    assert_eq!(v["qs"], serde_json::json!({"x": "1,2"}));
    assert_eq!((v["body"].as_str(), v["b64"].as_bool()), (Some("hello"), Some(false)));
    assert!(v["arn"].as_str().unwrap().ends_with(":function:py-gw"), "{v}");
}

#[test]
fn node_declared_lambda_gets_an_api_gateway_event_over_http() {
    let flick = Flick::start();
    flick.deploy_files(
        "node-gw",
        &[
            ("flick.toml", &manifest("node-gw", "node", "index.handler", "shape = \"lambda\"\n")),
            (
                "index.js",
                "exports.handler = async (event) => ({ statusCode: 200, body: JSON.stringify({ path: event.requestContext.http.path, b64: event.isBase64Encoded, body: event.body }) });\n",
            ),
        ],
    );
    let r = flick.request("POST", "/fn/node-gw/x", vec![0u8, 255], true);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["path"], "/x");
    assert_eq!(v["b64"], true, "a body that is not UTF-8 arrives base64-encoded: {v}");
    assert_eq!(v["body"], "AP8=");
}

#[test]
fn python_gcf_handler_gets_a_flask_like_request() {
    let flick = Flick::start();
    flick.deploy_files(
        "py-gcf",
        &[
            ("flick.toml", &manifest("py-gcf", "python3", "main.hello_http", "shape = \"gcf\"\n")),
            (
                "main.py",
                "def hello_http(request):\n    request_json = request.get_json(silent=True)\n    request_args = request.args\n    if request_json and 'name' in request_json:\n        name = request_json['name']\n    elif request_args and 'name' in request_args:\n        name = request_args['name']\n    else:\n        name = 'World'\n    if request.path == '/made':\n        return ({'made': name, 'tags': request.args.getlist('t')}, 201, {'X-Kind': request.headers.get('x-KIND', '')})\n    return 'Hello {}!'.format(name)\n",
            ),
        ],
    );
    let r = flick.request("POST", "/fn/py-gcf", br#"{"name":"Ada"}"#.to_vec(), true);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "Hello World!", "no content type: get_json(silent=True) is None");
    let r = flick.request("GET", "/fn/py-gcf?name=Query", Vec::new(), true);
    assert_eq!(r.text(), "Hello Query!");
    assert_eq!(r.header("content-type").as_deref(), Some("text/html; charset=utf-8"));
    let (status, headers, body) = curl(
        &flick,
        "POST",
        "/fn/py-gcf/made?t=a&t=b",
        &["Content-Type: application/json", "X-Kind: k1"],
        r#"{"name":"Json"}"#,
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(header(&headers, "x-kind"), Some("k1"));
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, serde_json::json!({"made": "Json", "tags": ["a", "b"]}));
}

#[test]
fn node_gcf_handler_gets_express_like_req_and_res() {
    let flick = Flick::start();
    flick.deploy_files(
        "node-gcf",
        &[
            ("flick.toml", &manifest("node-gcf", "node", "index.helloHttp", "shape = \"gcf\"\n")),
            (
                "index.js",
                "exports.helloHttp = (req, res) => {\n  res.set('X-Method', req.method);\n  res.send(`Hello ${req.query.name || req.body.name || 'World'}!`);\n};\n",
            ),
        ],
    );
    let (status, headers, body) =
        curl(&flick, "POST", "/fn/node-gcf", &["Content-Type: application/json"], r#"{"name":"Json"}"#);
    assert_eq!((status, body.as_str()), (200, "Hello Json!"));
    assert_eq!(header(&headers, "x-method"), Some("POST"));
    let (status, _, body) = curl(&flick, "GET", "/fn/node-gcf?name=Query", &[], "");
    assert_eq!((status, body.as_str()), (200, "Hello Query!"));
}

#[test]
fn openfaas_template_handlers_run_unmodified() {
    let flick = Flick::start();
    // python3-http: handler.handle(event, context), found without a shape.
    flick.deploy_files(
        "of-py",
        &[
            ("flick.toml", &manifest("of-py", "python3", "handler.handle", "")),
            (
                "handler.py",
                "def handle(event, context):\n    return {\n        \"statusCode\": 200,\n        \"body\": {\"method\": event.method, \"path\": event.path, \"body\": event.body.decode(), \"q\": event.query.get(\"q\")},\n        \"headers\": {\"X-Served-By\": context.hostname and \"openfaas-template\"},\n    }\n",
            ),
        ],
    );
    let r = flick.request("PUT", "/fn/of-py/deep/path?q=7", b"payload".to_vec(), true);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-served-by").as_deref(), Some("openfaas-template"));
    assert_eq!(r.json(), serde_json::json!({"method": "PUT", "path": "/deep/path", "body": "payload", "q": "7"}));

    // node20: module.exports = async (event, context) => …, with and without a shape.
    for (name, extra) in [("of-node", ""), ("of-node-declared", "shape = \"openfaas\"\n")] {
        flick.deploy_files(
            name,
            &[
                ("flick.toml", &manifest(name, "node", "handler.handle", extra)),
                (
                    "handler.js",
                    "'use strict'\n\nmodule.exports = async (event, context) => {\n  const result = { 'body': JSON.stringify(event.body), 'content-type': event.headers['content-type'], q: event.query.q };\n  return context\n    .status(202)\n    .headers({ 'X-Fn': 'node20' })\n    .succeed(result);\n}\n",
                ),
            ],
        );
        let (status, headers, body) =
            curl(&flick, "POST", &format!("/fn/{name}?q=x"), &["Content-Type: application/json"], r#"{"a":1}"#);
        assert_eq!(status, 202, "{name}: {body}");
        assert_eq!(header(&headers, "x-fn"), Some("node20"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v, serde_json::json!({"body": "{\"a\":1}", "content-type": "application/json", "q": "x"}), "{name}");
    }
}

#[test]
fn a_bad_shape_is_refused_naming_its_line_and_nothing_is_deployed() {
    let flick = Flick::start();
    let cases: [(&str, &str, &str, &[&str]); 3] = [
        ("shape-case", "node", "shape = \"Lambda\"\n", &["line 4", "shape", "unknown shape `Lambda`"]),
        ("shape-typo", "python3", "shape = \"aws\"\n", &["line 4", "shape", "unknown shape `aws`"]),
        ("shape-exec", "exec", "shape = \"lambda\"\n", &["line 4", "shape", "runtime `exec`"]),
    ];
    for (name, runtime, extra, expect) in cases {
        let dir = write_function(
            flick.data_dir(),
            name,
            &[
                ("flick.toml", &manifest(name, runtime, "main.handler", extra)),
                ("main.py", "def handler(e, c):\n    return 1\n"),
            ],
        );
        let out = flick.cli(&["deploy", dir.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: accepted");
        for e in expect {
            assert!(err.contains(e), "{name}: the error should name {e:?}: {err}");
        }
        assert_eq!(flick.get(&format!("/v1/functions/{name}")).status, 404, "{name} was deployed");
    }
}
