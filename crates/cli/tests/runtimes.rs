//! Every runtime and handler shape, end to end: a real `flick up`, real
//! interpreters, real HTTP.

mod common;

use common::{Flick, manifest};

#[test]
fn python_lambda_shape_gets_json_event_and_context() {
    let flick = Flick::start();
    flick.deploy_files(
        "py-lambda",
        &[
            ("flick.toml", &manifest("py-lambda", "python3", "main.handler", "memory = \"128MiB\"\n")),
            (
                "main.py",
                "def handler(event, context):\n    print('got', event['name'])\n    return {'hello': event['name'], 'id': context.aws_request_id,\n            'fn': context.function_name, 'mem': context.memory_limit_in_mb,\n            'left': context.get_remaining_time_in_millis()}\n",
            ),
        ],
    );
    let r = flick.invoke("py-lambda", r#"{"name":"Ada"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["hello"], "Ada");
    assert_eq!(v["fn"], "py-lambda");
    assert_eq!(v["mem"], 128);
    assert!(v["left"].as_i64().unwrap() > 0 && v["left"].as_i64().unwrap() <= 30_000);
    let id = r.activation_id();
    assert_eq!(v["id"], id, "context.aws_request_id is the activation id");
    assert_eq!(r.header("x-flick-status").as_deref(), Some("success"));
    let types: Vec<_> = r.headers.get_all("content-type").iter().collect();
    assert_eq!(types, ["application/json"], "exactly the function's content type");

    let a = flick.activation(&id);
    assert_eq!(a["status"], "success");
    assert_eq!(a["function"], "py-lambda");
    assert_eq!(a["revision"], 1);
    assert_eq!(a["cold"], true);
    assert_eq!(a["http_status"], 200);
    assert!(a["response"].as_str().unwrap().contains("Ada"));
    let logs: Vec<_> = a["logs"].as_array().unwrap().iter().map(|l| l["text"].as_str().unwrap()).collect();
    assert_eq!(logs, ["got Ada"], "exactly the line this invocation printed");
}

#[test]
fn python_http_response_dict_and_raw_string_event() {
    let flick = Flick::start();
    flick.deploy_files(
        "py-web",
        &[
            ("flick.toml", &manifest("py-web", "python3", "app.handler", "")),
            (
                "app.py",
                "def handler(event, context):\n    if isinstance(event, str):\n        return {'statusCode': 201, 'headers': {'x-kind': 'text'}, 'body': event.upper()}\n    return {'statusCode': 404, 'body': 'nope'}\n",
            ),
        ],
    );
    let r = flick.invoke("py-web", "plain words");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.text(), "PLAIN WORDS");
    assert_eq!(r.header("x-kind").as_deref(), Some("text"));
    let r = flick.invoke("py-web", "{}");
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "nope");
    // A status the function chose is still a successful invocation.
    assert_eq!(flick.activation(&r.activation_id())["status"], "success");
}

#[test]
fn python_openwhisk_main_args() {
    let flick = Flick::start();
    flick.deploy_files(
        "py-ow",
        &[
            ("flick.toml", &manifest("py-ow", "python3", "action.main", "")),
            (
                "action.py",
                "def main(args):\n    return {'greeting': 'Hello ' + args.get('name', 'stranger'), 'method': args['__ow_method'], 'path': args['__ow_path'], 'q': args.get('q')}\n",
            ),
        ],
    );
    let r = flick.request("POST", "/fn/py-ow/sub/path?q=7", br#"{"name":"Grace"}"#.to_vec(), true);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["greeting"], "Hello Grace");
    assert_eq!(v["method"], "post");
    assert_eq!(v["path"], "/sub/path");
    assert_eq!(v["q"], "7");
}

#[test]
fn python_openfaas_handle_req() {
    let flick = Flick::start();
    flick.deploy_files(
        "py-faas",
        &[
            ("flick.toml", &manifest("py-faas", "python3", "handler.handle", "")),
            ("handler.py", "def handle(req):\n    return 'you said: ' + req\n"),
        ],
    );
    let r = flick.invoke("py-faas", "hi there");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "you said: hi there");
}

#[test]
fn python_requirements_are_installed_at_deploy_time() {
    let flick = Flick::start();
    // A local package, so the test needs no network: pip installs it by path.
    flick.deploy_files(
        "py-deps",
        &[
            ("flick.toml", &manifest("py-deps", "python3", "main.handler", "")),
            ("requirements.txt", "./vendor/tinydep\n"),
            ("vendor/tinydep/pyproject.toml", "[build-system]\nrequires = []\nbuild-backend = \"backend\"\nbackend-path = [\".\"]\n\n[project]\nname = \"tinydep\"\nversion = \"1.0\"\n"),
            ("vendor/tinydep/backend.py", TINY_BACKEND),
            ("main.py", "import tinydep\n\ndef handler(event, context):\n    return {'dep': tinydep.VALUE}\n"),
        ],
    );
    let r = flick.invoke("py-deps", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["dep"], "from-tinydep");
}

/// A PEP 517 build backend in a few lines, so pip can build a wheel offline.
const TINY_BACKEND: &str = r#"
import base64, hashlib, os, zipfile

def _record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
    return f"{name},sha256={digest},{len(data)}"

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = "tinydep-1.0-py3-none-any.whl"
    files = {
        "tinydep.py": b"VALUE = 'from-tinydep'\n",
        "tinydep-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinydep\nVersion: 1.0\n",
        "tinydep-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tiny\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "\n".join(_record_line(n, d) for n, d in files.items()) + "\ntinydep-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as z:
        for n, d in files.items():
            z.writestr(n, d)
        z.writestr("tinydep-1.0.dist-info/RECORD", record)
    return name

def get_requires_for_build_wheel(config_settings=None):
    return []
"#;

#[test]
fn node_lambda_and_openwhisk_shapes() {
    let flick = Flick::start();
    flick.deploy_files(
        "node-lambda",
        &[
            ("flick.toml", &manifest("node-lambda", "node", "index.handler", "")),
            (
                "index.js",
                "let calls = 0;\nexports.handler = async (event, context) => {\n  calls += 1;\n  console.log('node got', event.name);\n  return { hello: event.name, calls, id: context.awsRequestId, left: context.getRemainingTimeInMillis() };\n};\n",
            ),
        ],
    );
    let r = flick.invoke("node-lambda", r#"{"name":"Linus"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["hello"], "Linus");
    assert_eq!(v["calls"], 1);
    assert_eq!(v["id"], r.activation_id());
    assert!(v["left"].as_i64().unwrap() > 0);
    let a = flick.activation(&r.activation_id());
    assert_eq!(a["logs"][0]["text"], "node got Linus");
    // Warm reuse: the same module instance serves the next call.
    let r2 = flick.invoke("node-lambda", r#"{"name":"Linus"}"#);
    assert_eq!(r2.json()["calls"], 2);
    assert_eq!(flick.activation(&r2.activation_id())["cold"], false);

    flick.deploy_files(
        "node-ow",
        &[
            ("flick.toml", &manifest("node-ow", "node", "action.main", "")),
            ("action.js", "function main(params) { return { payload: 'Hi ' + params.name }; }\nexports.main = main;\n"),
        ],
    );
    let r = flick.invoke("node-ow", r#"{"name":"Ada"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["payload"], "Hi Ada");
}

#[test]
fn exec_runtime_pipes_body_through_a_command() {
    let flick = Flick::start();
    flick.deploy_files("sha", &[("flick.toml", &manifest("sha", "exec", "sha512sum", ""))]);
    let r = flick.invoke("sha", "abc");
    assert_eq!(r.status, 200, "{}", r.text());
    let expected = "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f";
    assert!(r.text().starts_with(expected), "{}", r.text());

    flick.deploy_files("cat", &[("flick.toml", &manifest("cat", "exec", "cat", ""))]);
    let body = "line one\nline two\n".repeat(1000);
    let r = flick.invoke("cat", &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), body);

    // Request details reach the process as of-watchdog's Http_* variables.
    flick.deploy_files(
        "env",
        &[
            ("flick.toml", &manifest("env", "exec", "sh ./show.sh", "")),
            ("show.sh", "echo \"$Http_Method $Http_Path $Http_Query\"\necho to-stderr >&2\n"),
        ],
    );
    let r = flick.request("PUT", "/fn/env/a/b?x=1", Vec::new(), true);
    assert_eq!(r.text().trim(), "PUT /a/b x=1");
    let a = flick.activation(&r.activation_id());
    assert_eq!(a["logs"][0]["text"], "to-stderr");
    assert_eq!(a["logs"][0]["stream"], "stderr");
}

#[test]
fn http_runtime_proxies_to_a_server_on_port() {
    let flick = Flick::start();
    flick.deploy_files(
        "web",
        &[
            ("flick.toml", &manifest("web", "http", "python3 server.py", "concurrency = 4\n")),
            (
                "server.py",
                "import json, os\nfrom http.server import BaseHTTPRequestHandler, HTTPServer\nclass H(BaseHTTPRequestHandler):\n    def do_POST(self):\n        body = self.rfile.read(int(self.headers['content-length'] or 0))\n        out = json.dumps({'path': self.path, 'body': body.decode(), 'pid': os.getpid(), 'h': self.headers.get('x-test')}).encode()\n        self.send_response(202)\n        self.send_header('content-type', 'application/json')\n        self.send_header('x-from', 'server')\n        self.send_header('content-length', str(len(out)))\n        self.end_headers()\n        self.wfile.write(out)\n    do_GET = do_POST\nHTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n",
            ),
        ],
    );
    let r = flick.request("POST", "/fn/web/items/9?full=1", b"payload".to_vec(), true);
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.header("x-from").as_deref(), Some("server"));
    let v = r.json();
    assert_eq!(v["path"], "/items/9?full=1");
    assert_eq!(v["body"], "payload");
    let r2 = flick.invoke("web", "again");
    assert_eq!(r2.json()["pid"], v["pid"], "the same warm server answers");
    assert_eq!(flick.activation(&r2.activation_id())["cold"], false);
}

#[test]
fn admin_key_never_reaches_functions() {
    let flick = Flick::start();
    flick.deploy_files(
        "peek",
        &[
            ("flick.toml", &manifest("peek", "python3", "main.handler", "")),
            ("main.py", "import os\ndef handler(event, context):\n    return {'auth': context.http['headers'].get('authorization'), 'env': sorted(k for k in os.environ if 'TOKEN' in k or 'KEY' in k)}\n"),
        ],
    );
    let r = flick.invoke("peek", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert!(v["auth"].is_null(), "authorization header was passed on: {v}");
    assert!(!r.text().contains(&flick.key));
}

#[test]
fn node_dependencies_are_installed_at_deploy_time() {
    let flick = Flick::start();
    // A local package, so npm needs no registry.
    flick.deploy_files(
        "node-deps",
        &[
            ("flick.toml", &manifest("node-deps", "node", "index.handler", "")),
            (
                "package.json",
                r#"{"name": "node-deps", "version": "1.0.0", "dependencies": {"tinydep": "file:./vendor/tinydep"}}"#,
            ),
            ("vendor/tinydep/package.json", r#"{"name": "tinydep", "version": "1.0.0", "main": "index.js"}"#),
            ("vendor/tinydep/index.js", "module.exports = { value: 'from-tinydep' };\n"),
            ("index.js", "const dep = require('tinydep');\nexports.handler = async () => ({ dep: dep.value });\n"),
        ],
    );
    let r = flick.invoke("node-deps", "{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["dep"], "from-tinydep");
}

#[test]
fn an_http_function_without_network_is_still_reachable_by_flick_only() {
    let flick = Flick::start();
    let server = "import json, os, socket\nfrom http.server import BaseHTTPRequestHandler, HTTPServer\nclass H(BaseHTTPRequestHandler):\n    def do_POST(self):\n        self.rfile.read(int(self.headers['content-length'] or 0))\n        s = socket.socket(); s.settimeout(2)\n        try:\n            s.connect(('127.0.0.1', int(self.headers['x-flick-port'])))\n            out = 'connected'\n        except OSError as e:\n            out = type(e).__name__\n        body = json.dumps({'outbound': out, 'port': os.environ['PORT']}).encode()\n        self.send_response(200)\n        self.send_header('content-length', str(len(body)))\n        self.end_headers()\n        self.wfile.write(body)\nHTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n";
    flick.deploy_files(
        "closed-web",
        &[("flick.toml", &manifest("closed-web", "http", "python3 server.py", "")), ("server.py", server)],
    );
    let port = flick.base.rsplit(':').next().unwrap().to_string();
    let url = format!("{}/fn/closed-web", flick.base);
    let resp = reqwest::blocking::Client::new()
        .post(url)
        .bearer_auth(&flick.key)
        .header("x-flick-port", &port)
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let v: serde_json::Value = resp.json().unwrap();
    assert_eq!(v["outbound"], "ConnectionRefusedError", "the server reached the host's loopback: {v}");
}
