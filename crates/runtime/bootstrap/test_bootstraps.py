"""Tests of flick's language bootstraps (python.py, node.js).

Each test starts a bootstrap the way flick does (code directory as cwd, a
cleared environment with the FLICK_* variables, the protocol socket on fd 3,
stdout/stderr piped) and speaks the frame protocol to it. Stem-cell tests
start it as flick prewarms one: FLICK_STEM=1, no function variables, an empty
cwd; then they specialise it into a function.

    python3 -m unittest discover -s crates/runtime/bootstrap -p 'test_*.py'

FLICK_TEST_PYTHON / FLICK_TEST_NODE pick the interpreters under test.
"""

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = os.environ.get("FLICK_TEST_PYTHON") or sys.executable
NODE = os.environ.get("FLICK_TEST_NODE") or shutil.which("node") or "/usr/bin/node"
# Every wait in these tests is bounded by this; a hung bootstrap fails, not blocks.
TIMEOUT = 10.0
MARKER = b"\x1eflick-end "


def now_ms():
    return int(time.time() * 1000)


# What flick's sandbox gives every process, function or stem cell.
SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
}


def write_files(root, files):
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(textwrap.dedent(text).lstrip("\n"))


class Instance(object):
    """One bootstrap process and our end of its protocol socket.

    With stem=True it starts as a stem cell: FLICK_STEM=1 and the sandbox's
    variables only, cwd an empty directory (stem_dir); `dir` is where
    specialise() puts the function's code by default."""

    def __init__(self, runtime, files, handler, concurrency=1, env=None, name="echo-fn", stem=False):
        self.dir = tempfile.mkdtemp(prefix="flick-bootstrap-test-")
        write_files(self.dir, files)
        self.extra_dirs = []
        if runtime == "python":
            # As flick starts it (crates/runtime/src/process.rs).
            argv = [PYTHON, "-I", "-S", os.path.join(HERE, "python.py")]
        else:
            argv = [NODE, os.path.join(HERE, "node.js")]
        if stem:
            self.stem_dir = tempfile.mkdtemp(prefix="flick-bootstrap-stem-")
            self.extra_dirs.append(self.stem_dir)
            cwd = self.stem_dir
            environ = dict(SANDBOX_ENV, TMPDIR="/tmp", FLICK_STEM="1")
        else:
            self.stem_dir = None
            cwd = self.dir
            # What the sandbox gives, then what flick defines.
            environ = dict(
                SANDBOX_ENV,
                FLICK_CODE_DIR=self.dir,
                FLICK_HANDLER=handler,
                FLICK_FUNCTION_NAME=name,
                FLICK_FUNCTION_REVISION="3",
                FLICK_MEMORY_MB="256",
                FLICK_CONCURRENCY=str(concurrency),
                FLICK_TIMEOUT_MS="10000",
            )
        environ.update(env or {})

        ours, theirs = socket.socketpair()
        child_fd = theirs.fileno()

        def protocol_on_fd3():
            # Runs in the child before exec. dup2 leaves fd 3 inheritable;
            # our own descriptors are close-on-exec (PEP 446) and vanish.
            if child_fd == 3:
                os.set_inheritable(3, True)
            else:
                os.dup2(child_fd, 3)

        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=False,
            preexec_fn=protocol_on_fd3,
        )
        theirs.close()
        self.sock = ours
        self.buf = b""
        self.early = {}  # frames that arrived before they were asked for, by id
        self.cond = threading.Condition()
        self.lines = {"stdout": [], "stderr": []}
        self.readers = [
            threading.Thread(target=self._drain, args=(name, stream), daemon=True)
            for name, stream in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr))
        ]
        for t in self.readers:
            t.start()

    def _drain(self, name, stream):
        for line in iter(stream.readline, b""):
            with self.cond:
                self.lines[name].append(line)
                self.cond.notify_all()

    # --- protocol ---

    def _recv(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("timed out waiting for a frame; stderr:\n" + self.stderr_text())
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(1 << 16)
        except socket.timeout:
            raise AssertionError("timed out waiting for a frame; stderr:\n" + self.stderr_text())
        if not data:
            raise EOFError("bootstrap closed the channel; stderr:\n" + self.stderr_text())
        self.buf += data

    def read_frame(self, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            self._recv(deadline)
        line, self.buf = self.buf.split(b"\n", 1)
        header = json.loads(line)
        n = header.get("len") or 0
        while len(self.buf) < n:
            self._recv(deadline)
        body, self.buf = self.buf[:n], self.buf[n:]
        return header, body

    def frame_for(self, rid, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while rid not in self.early:
            header, body = self.read_frame(max(0.0, deadline - time.monotonic()))
            self.early[header.get("id")] = (header, body)
        return self.early.pop(rid)

    @staticmethod
    def invoke_frame(
        rid,
        body=b"",
        method="POST",
        path="/",
        query="",
        headers=None,
        deadline_ms=None,
        presentation=None,
        client_context=None,
        raw_path=None,
    ):
        if isinstance(body, str):
            body = body.encode()
        header = {
            "type": "invoke",
            "id": rid,
            "deadline_ms": now_ms() + 5000 if deadline_ms is None else deadline_ms,
            "method": method,
            "path": path,
            "query": query,
            "headers": headers if headers is not None else [["content-type", "application/json"]],
        }
        # Absent as from a flick that predates them: the bootstraps must cope.
        for key, value in (("presentation", presentation), ("client_context", client_context), ("raw_path", raw_path)):
            if value is not None:
                header[key] = value
        header["len"] = len(body)
        return json.dumps(header).encode() + b"\n" + body

    def send(self, data):
        self.sock.settimeout(TIMEOUT)
        self.sock.sendall(data)

    def specialise_frame(self, files, handler, code_dir=None, concurrency=1, name="stemfn", env=None, uid=None):
        """Puts the function's code in code_dir (default: self.dir) and returns
        the frame that tells a stem cell it is that function (and, with uid,
        whom to become)."""
        code_dir = code_dir or self.dir
        os.makedirs(code_dir, exist_ok=True)
        write_files(code_dir, files)
        fenv = {
            "FLICK_CODE_DIR": code_dir,
            "FLICK_HANDLER": handler,
            "FLICK_FUNCTION_NAME": name,
            "FLICK_FUNCTION_REVISION": "7",
            "FLICK_MEMORY_MB": "128",
            "FLICK_CONCURRENCY": str(concurrency),
            "FLICK_TIMEOUT_MS": "10000",
        }
        fenv.update(env or {})
        fenv = {k: v for k, v in fenv.items() if v is not None}
        frame = {"type": "specialise", "env": fenv}
        if uid is not None:
            frame.update(uid=uid, gid=uid)
        return json.dumps(frame).encode() + b"\n"

    def specialise(self, files, handler, **kw):
        self.send(self.specialise_frame(files, handler, **kw))

    def invoke(self, rid, body=b"", **kw):
        self.send(self.invoke_frame(rid, body, **kw))

    def call(self, rid, body=b"", **kw):
        self.invoke(rid, body, **kw)
        return self.frame_for(rid)

    # --- process and logs ---

    def wait_exit(self, timeout=TIMEOUT):
        return self.proc.wait(timeout=timeout)

    def wait_lines(self, stream, pred, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred(self.lines[stream]):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("timed out waiting on %s: %r" % (stream, self.lines[stream]))
                self.cond.wait(left)
            return list(self.lines[stream])

    def wait_marker(self, rid, stream):
        marker = MARKER + rid.encode() + b"\n"
        lines = self.wait_lines(stream, lambda ls: marker in ls)
        return lines[: lines.index(marker)]

    def stderr_text(self):
        with self.cond:
            return b"".join(self.lines["stderr"]).decode("utf-8", "replace")

    def stdout_text(self):
        with self.cond:
            return b"".join(self.lines["stdout"]).decode("utf-8", "replace")

    def wait_streams_closed(self):
        for t in self.readers:
            t.join(TIMEOUT)

    def stop(self):
        try:
            self.sock.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.wait_streams_closed()
        self.proc.stdout.close()
        self.proc.stderr.close()
        for d in [self.dir] + self.extra_dirs:
            shutil.rmtree(d, ignore_errors=True)


# Handler sources, per runtime, by the behaviour a test needs. Each entry is
# (files, FLICK_HANDLER).

PY = {
    "echo": (
        {
            "main.py": """
                def handler(event, context):
                    return {
                        "event": event,
                        "request_id": context.aws_request_id,
                        "function_name": context.function_name,
                        "function_version": context.function_version,
                        "memory": context.memory_limit_in_mb,
                        "arn": context.invoked_function_arn,
                        "log_group": context.log_group_name,
                        "log_stream": context.log_stream_name,
                        "remaining": context.get_remaining_time_in_millis(),
                        "http": context.http,
                    }
            """
        },
        "main.handler",
    ),
    "http": (
        {
            "main.py": """
                import base64

                def handler(event, context):
                    case = event["case"]
                    if case == "full":
                        return {
                            "statusCode": 201,
                            "headers": {"X-Custom": "a", "Content-Type": "text/html", "X-Both": "single"},
                            "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"], "X-Both": ["m1", "m2"]},
                            "body": "<b>hi</b>",
                        }
                    if case == "b64":
                        return {
                            "statusCode": 200,
                            "headers": {"content-type": "image/png"},
                            "isBase64Encoded": True,
                            "body": base64.b64encode(b"\\x00\\x01\\xffPNG").decode(),
                        }
                    if case == "json_body":
                        return {"statusCode": "202", "body": {"ok": True}}
                    if case == "text":
                        return {"statusCode": 404, "body": "nope"}
                    if case == "no_body":
                        return {"statusCode": 204}
                    if case == "bytes":
                        return b"\\x00raw\\xff"
                    if case == "none":
                        return None
                    if case == "list":
                        return [1, "two"]
                    if case == "bad_status":
                        return {"statusCode": 99999}
                    if case == "unserializable":
                        return {"x": object()}
                    if case == "big":
                        return {"statusCode": 200, "body": "y" * event["n"]}
            """
        },
        "main.handler",
    ),
    "raw_event": (
        {
            "main.py": """
                def handler(event, context):
                    return {"event": event, "kind": type(event).__name__}
            """
        },
        "main.handler",
    ),
    "context": (
        {
            "main.py": """
                def handler(event, context):
                    cc = context.client_context
                    return {
                        "arn": context.invoked_function_arn,
                        "has_http": context.http is not None,
                        "custom": cc.custom if cc else None,
                        "env": cc.env if cc else None,
                        "app_title": cc.client.app_title if cc and cc.client else None,
                    }
            """
        },
        "main.handler",
    ),
    "big_echo": (
        {
            "main.py": """
                def handler(event, context):
                    return {"statusCode": 200, "headers": {"content-type": "text/plain"}, "body": event}
            """
        },
        "main.handler",
    ),
    "openwhisk": (
        {
            "actions.py": """
                def main(args):
                    if args.get("web") == "1":
                        return {"statusCode": 302, "headers": {"location": "/elsewhere"}, "body": "moved"}
                    if args.get("empty") == "1":
                        return {}
                    return {"args": args}
            """
        },
        "actions.main",
    ),
    "async": (
        {
            "main.py": """
                import asyncio

                LOCK = None

                async def handler(event, context):
                    global LOCK
                    # A loop-bound object kept across calls must stay usable.
                    if LOCK is None:
                        LOCK = asyncio.Lock()
                    async with LOCK:
                        await asyncio.sleep(0.01)
                    return {"async": True, "n": event["n"], "id": context.aws_request_id}
            """
        },
        "main.handler",
    ),
    "fails": (
        {
            "main.py": """
                import sys

                def helper():
                    return 1 / 0

                def handler(event, context):
                    if event.get("fail"):
                        print("about to fail", file=sys.stderr)
                        return helper()
                    return {"ok": True}
            """
        },
        "main.handler",
    ),
    "import_missing": ({"main.py": "import does_not_exist_anywhere\n\ndef handler(e, c):\n    return 1\n"}, "main.handler"),
    "import_raises": ({"main.py": "raise RuntimeError('boom at import')\n"}, "main.handler"),
    # A 200 KB message of control characters (sixfold when escaped) and a deep trace.
    "huge_error": (
        {
            "main.py": """
                def deep(n):
                    if n == 0:
                        raise ValueError("\\x01" * 200000)
                    return deep(n - 1)

                def handler(event, context):
                    return deep(300)
            """
        },
        "main.handler",
    ),
    "huge_import_error": ({"main.py": "raise RuntimeError('\\x02' * 200000)\n"}, "main.handler"),
    "syntax_error": ({"main.py": "def handler(event, context)\n    return 1\n"}, "main.handler"),
    "no_module_file": ({"other.py": "x = 1\n"}, "main.handler"),
    "handler_missing": ({"main.py": "def other(e, c):\n    return 1\n"}, "main.handler"),
    "handler_not_callable": ({"main.py": "handler = 42\n"}, "main.handler"),
    "malformed": ({"main.py": "def handler(e, c):\n    return 1\n"}, "handler"),
    "logs": (
        {
            "main.py": """
                import sys

                def handler(event, context):
                    print("line one")
                    print("line two", event["n"])
                    sys.stderr.write("to stderr\\n")
                    return {"n": event["n"]}
            """
        },
        "main.handler",
    ),
    "sleep": (
        {
            "main.py": """
                import time

                def handler(event, context):
                    time.sleep(0.3)
                    return {"id": context.aws_request_id}
            """
        },
        "main.handler",
    ),
    "stem": (
        {
            "main.py": """
                import os
                import stemdep

                print("loading the stem module")

                def handler(event, context):
                    with open("data.txt") as f:
                        data = f.read()
                    return {
                        "function_name": context.function_name,
                        "function_version": context.function_version,
                        "memory": context.memory_limit_in_mb,
                        "arn": context.invoked_function_arn,
                        "log_group": context.log_group_name,
                        "greeting": os.environ.get("GREETING"),
                        "stem_in_env": "FLICK_STEM" in os.environ,
                        "cwd": os.getcwd(),
                        "data": data,
                        "dep": stemdep.VALUE,
                    }
            """,
            ".deps/python/stemdep.py": "VALUE = 'from deps'\n",
            "data.txt": "read relative to the code dir\n",
        },
        "main.handler",
    ),
    "counter": (
        {
            "main.py": """
                COUNT = 0

                def handler(event, context):
                    global COUNT
                    COUNT += 1
                    return {"count": COUNT}
            """
        },
        "main.handler",
    ),
}

NODE_SRC = {
    "echo": (
        {
            "index.js": """
                exports.handler = (event, context) => ({
                  event,
                  request_id: context.awsRequestId,
                  function_name: context.functionName,
                  function_version: context.functionVersion,
                  memory: context.memoryLimitInMB,
                  arn: context.invokedFunctionArn,
                  log_group: context.logGroupName,
                  log_stream: context.logStreamName,
                  remaining: context.getRemainingTimeInMillis(),
                  waits: context.callbackWaitsForEmptyEventLoop,
                  http: context.http,
                });
            """
        },
        "index.handler",
    ),
    "http": (
        {
            "index.js": """
                exports.handler = async (event) => {
                  switch (event.case) {
                    case 'full':
                      return {
                        statusCode: 201,
                        headers: { 'X-Custom': 'a', 'Content-Type': 'text/html', 'X-Both': 'single' },
                        multiValueHeaders: { 'Set-Cookie': ['a=1', 'b=2'], 'X-Both': ['m1', 'm2'] },
                        body: '<b>hi</b>',
                      };
                    case 'b64':
                      return {
                        statusCode: 200,
                        headers: { 'content-type': 'image/png' },
                        isBase64Encoded: true,
                        body: Buffer.from([0, 1, 255, 80, 78, 71]).toString('base64'),
                      };
                    case 'json_body': return { statusCode: '202', body: { ok: true } };
                    case 'text': return { statusCode: 404, body: 'nope' };
                    case 'no_body': return { statusCode: 204 };
                    case 'bytes': return Buffer.from([0, 114, 97, 119, 255]);
                    case 'none': return undefined;
                    case 'list': return [1, 'two'];
                    case 'bad_status': return { statusCode: 99999 };
                    case 'unserializable': return { x: 10n };
                    case 'big': return { statusCode: 200, body: 'y'.repeat(event.n) };
                  }
                };
            """
        },
        "index.handler",
    ),
    "raw_event": (
        {"index.js": "exports.handler = async (event) => ({ event, kind: typeof event });\n"},
        "index.handler",
    ),
    "context": (
        {
            "index.js": """
                exports.handler = async (event, context) => {
                  const cc = context.clientContext;
                  return {
                    arn: context.invokedFunctionArn,
                    has_http: context.http !== undefined,
                    custom: cc ? cc.custom : null,
                    env: cc ? cc.env : null,
                    app_title: cc && cc.client ? cc.client.app_title : null,
                  };
                };
            """
        },
        "index.handler",
    ),
    "big_echo": (
        {
            "index.js": """
                exports.handler = async (event) => ({ statusCode: 200, headers: { 'content-type': 'text/plain' }, body: event });
            """
        },
        "index.handler",
    ),
    "openwhisk": (
        {
            "actions.js": """
                exports.main = (args) => {
                  if (args.web === '1') return { statusCode: 302, headers: { location: '/elsewhere' }, body: 'moved' };
                  if (args.empty === '1') return Promise.resolve({});
                  return Promise.resolve({ args });
                };
            """
        },
        "actions.main",
    ),
    "async": (
        {
            "index.js": """
                const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
                exports.handler = async (event, context) => {
                  await sleep(10);
                  return { async: true, n: event.n, id: context.awsRequestId };
                };
            """
        },
        "index.handler",
    ),
    "fails": (
        {
            "index.js": """
                function helper() {
                  const o = null;
                  return o.x;
                }
                exports.handler = async (event) => {
                  if (event.fail) {
                    console.error('about to fail');
                    return helper();
                  }
                  return { ok: true };
                };
            """
        },
        "index.handler",
    ),
    "import_missing": (
        {"index.js": "require('does-not-exist-anywhere');\nexports.handler = async () => 1;\n"},
        "index.handler",
    ),
    "import_raises": ({"index.js": "throw new RangeError('boom at import');\n"}, "index.handler"),
    "huge_error": (
        {
            "index.js": """
                function deep(n) {
                  if (n === 0) throw new RangeError('\\u0001'.repeat(200000));
                  return deep(n - 1);
                }
                Error.stackTraceLimit = 1000;
                exports.handler = async () => deep(300);
            """
        },
        "index.handler",
    ),
    "huge_import_error": ({"index.js": "throw new RangeError('\\u0002'.repeat(200000));\n"}, "index.handler"),
    "syntax_error": ({"index.js": "exports.handler = async (event => {\n  return 1;\n};\n"}, "index.handler"),
    "no_module_file": ({"other.js": "module.exports = {};\n"}, "index.handler"),
    "handler_missing": ({"index.js": "exports.other = async () => 1;\n"}, "index.handler"),
    "handler_not_callable": ({"index.js": "exports.handler = 42;\n"}, "index.handler"),
    "malformed": ({"index.js": "exports.handler = async () => 1;\n"}, "handler"),
    "logs": (
        {
            "index.js": """
                exports.handler = async (event) => {
                  console.log('line one');
                  console.log('line two', event.n);
                  process.stderr.write('to stderr\\n');
                  return { n: event.n };
                };
            """
        },
        "index.handler",
    ),
    "sleep": (
        {
            "index.js": """
                exports.handler = async (event, context) => {
                  await new Promise((r) => setTimeout(r, 300));
                  return { id: context.awsRequestId };
                };
            """
        },
        "index.handler",
    ),
    "stem": (
        {
            "index.js": """
                const fs = require('fs');
                const dep = require('stemdep');

                console.log('loading the stem module');

                exports.handler = async (event, context) => ({
                  function_name: context.functionName,
                  function_version: context.functionVersion,
                  memory: context.memoryLimitInMB,
                  arn: context.invokedFunctionArn,
                  log_group: context.logGroupName,
                  greeting: process.env.GREETING === undefined ? null : process.env.GREETING,
                  stem_in_env: 'FLICK_STEM' in process.env,
                  cwd: process.cwd(),
                  data: fs.readFileSync('data.txt', 'utf8'),
                  dep,
                });
            """,
            "node_modules/stemdep/index.js": "module.exports = 'from deps';\n",
            "data.txt": "read relative to the code dir\n",
        },
        "index.handler",
    ),
    "counter": (
        {
            "index.js": """
                let count = 0;
                exports.handler = async () => ({ count: ++count });
            """
        },
        "index.handler",
    ),
}


class BootstrapContract(object):
    """The behaviour both bootstraps share; subclasses pick the runtime."""

    runtime = None
    SOURCES = None
    memory_value = None  # how the runtime's context reports FLICK_MEMORY_MB
    error_type = None  # what the "fails" handler raises
    code_file = None  # the file that appears in its trace

    def start(self, key=None, files=None, handler=None, **kw):
        if key is not None:
            files, handler = self.SOURCES[key]
        inst = Instance(self.runtime, files, handler, **kw)
        self.addCleanup(inst.stop)
        return inst

    def start_ready(self, key=None, **kw):
        inst = self.start(key, **kw)
        header, body = inst.read_frame()
        self.assert_ready_header(header, inst)
        self.assertEqual(body, b"")
        return inst

    def assert_ready_header(self, header, inst):
        # `ready`, and from python how long the import took (flick's cue for
        # a fork template), nothing else.
        self.assertEqual(header.get("type"), "ready", inst.stderr_text())
        self.assertLessEqual(set(header), {"type", "import_s"}, header)
        if "import_s" in header:
            self.assertGreaterEqual(header["import_s"], 0)

    def result(self, inst, rid, body=b"", **kw):
        header, out = inst.call(rid, body, **kw)
        self.assertEqual(header["type"], "result", "%r\nstderr:\n%s" % (header, inst.stderr_text()))
        self.assertEqual(header["id"], rid)
        return header, out

    def json_result(self, inst, rid, event=None, **kw):
        body = b"" if event is None else json.dumps(event).encode()
        header, out = self.result(inst, rid, body, **kw)
        self.assertEqual(header["status"], 200)
        self.assertIn(["content-type", "application/json"], header["headers"])
        return json.loads(out)

    def init_error(self, key):
        inst = self.start(key)
        header, _ = inst.read_frame()
        self.assertEqual(header["type"], "init_error", header)
        self.assertEqual(inst.wait_exit(), 1)
        inst.wait_streams_closed()
        return header["error"], inst.stderr_text()

    # --- start-up ---

    def test_ready(self):
        self.start_ready("echo")

    def test_import_error_sends_init_error_and_exits_1(self):
        error, stderr = self.init_error("import_missing")
        self.assertEqual(error["type"], "Runtime.ImportModuleError")
        self.assertIn("does", error["message"])
        self.assertTrue(error["trace"], error)
        self.assertIn("does", stderr)
        self.assertIn(self.import_trace_hint, stderr)

    def test_module_raising_on_import_is_an_import_error(self):
        error, stderr = self.init_error("import_raises")
        self.assertEqual(error["type"], "Runtime.ImportModuleError")
        self.assertIn("boom at import", error["message"])
        self.assertIn("boom at import", stderr)
        self.assertTrue(any("boom at import" in line for line in error["trace"]), error)

    def test_syntax_error_is_reported_as_such(self):
        error, stderr = self.init_error("syntax_error")
        self.assertEqual(error["type"], "Runtime.UserCodeSyntaxError")
        self.assertIn("SyntaxError", stderr)

    def test_missing_module_file(self):
        error, _ = self.init_error("no_module_file")
        self.assertEqual(error["type"], "Runtime.ImportModuleError")

    def test_handler_not_found(self):
        error, stderr = self.init_error("handler_missing")
        self.assertEqual(error["type"], "Runtime.HandlerNotFound")
        self.assertIn("handler", error["message"])
        self.assertIn("Runtime.HandlerNotFound", stderr)

    def test_handler_not_callable(self):
        error, _ = self.init_error("handler_not_callable")
        self.assertEqual(error["type"], "Runtime.HandlerNotFound")

    def test_malformed_handler_name(self):
        error, _ = self.init_error("malformed")
        self.assertEqual(error["type"], "Runtime.MalformedHandlerName")

    # --- Lambda shape ---

    def test_lambda_json_event_and_context(self):
        inst = self.start_ready("echo")
        before = now_ms()
        deadline = before + 5000
        got = self.json_result(
            inst,
            "req-1",
            {"a": 1, "b": [True, None]},
            method="PUT",
            path="/sub/path",
            query="a=1&b=two",
            headers=[["content-type", "application/json"], ["x-rep", "1"], ["x-rep", "2"]],
            deadline_ms=deadline,
        )
        self.assertEqual(got["event"], {"a": 1, "b": [True, None]})
        self.assertEqual(got["request_id"], "req-1")
        self.assertEqual(got["function_name"], "echo-fn")
        self.assertEqual(got["function_version"], "3")
        self.assertEqual(got["memory"], self.memory_value)
        self.assertEqual(got["arn"], "arn:aws:lambda:local:000000000000:function:echo-fn")
        self.assertEqual(got["log_group"], "/aws/lambda/echo-fn")
        self.assertTrue(got["log_stream"])
        self.assertGreater(got["remaining"], 0)
        self.assertLessEqual(got["remaining"], deadline - before)
        self.assertEqual(
            got["http"],
            {
                "method": "PUT",
                "path": "/sub/path",
                "query": "a=1&b=two",
                "headers": {"content-type": "application/json", "x-rep": "2"},
            },
        )

    def test_remaining_time_is_never_negative(self):
        inst = self.start_ready("echo")
        got = self.json_result(inst, "late", {}, deadline_ms=now_ms() - 1000)
        self.assertEqual(got["remaining"], 0)

    def test_empty_body_is_an_empty_object_event(self):
        inst = self.start_ready("raw_event")
        got = self.json_result(inst, "empty", None)
        self.assertEqual(got["event"], {})

    def test_non_json_body_is_a_string_event(self):
        inst = self.start_ready("raw_event")
        header, out = self.result(inst, "raw", b"hello \xff world", headers=[["content-type", "text/plain"]])
        got = json.loads(out)
        self.assertEqual(got["event"], "hello \ufffd world")
        self.assertEqual(got["kind"], "str" if self.runtime == "python" else "string")
        # Valid JSON that is not an object is still JSON.
        got = self.json_result(inst, "scalar", 42)
        self.assertEqual(got["event"], 42)

    def test_status_code_response(self):
        inst = self.start_ready("http")
        header, out = self.result(inst, "full", json.dumps({"case": "full"}))
        self.assertEqual(header["status"], 201)
        self.assertEqual(out, b"<b>hi</b>")
        hs = header["headers"]
        self.assertIn(["x-custom", "a"], hs)
        self.assertIn(["content-type", "text/html"], hs)
        self.assertEqual([v for k, v in hs if k == "set-cookie"], ["a=1", "b=2"])
        # multiValueHeaders wins over headers for the same name, as API Gateway.
        self.assertEqual([v for k, v in hs if k == "x-both"], ["m1", "m2"])
        self.assertEqual(len([k for k, _ in hs if k == "content-type"]), 1)

    def test_base64_body(self):
        inst = self.start_ready("http")
        header, out = self.result(inst, "b64", json.dumps({"case": "b64"}))
        self.assertEqual(header["status"], 200)
        self.assertEqual(out, b"\x00\x01\xffPNG")
        self.assertEqual(header["len"], 6)
        self.assertIn(["content-type", "image/png"], header["headers"])

    def test_response_defaults(self):
        inst = self.start_ready("http")
        header, out = self.result(inst, "j", json.dumps({"case": "json_body"}))
        self.assertEqual(header["status"], 202)
        self.assertEqual(json.loads(out), {"ok": True})
        self.assertIn(["content-type", "application/json"], header["headers"])

        header, out = self.result(inst, "t", json.dumps({"case": "text"}))
        self.assertEqual(header["status"], 404)
        self.assertEqual(out, b"nope")
        self.assertIn(["content-type", "text/plain; charset=utf-8"], header["headers"])

        header, out = self.result(inst, "nb", json.dumps({"case": "no_body"}))
        self.assertEqual(header["status"], 204)
        self.assertEqual(out, b"")
        self.assertNotIn("len", {k: v for k, v in header.items() if v})

    def test_plain_return_values(self):
        inst = self.start_ready("http")
        header, out = self.result(inst, "b", json.dumps({"case": "bytes"}))
        self.assertEqual(out, b"\x00raw\xff")
        self.assertIn(["content-type", "application/octet-stream"], header["headers"])
        self.assertEqual(self.json_result(inst, "n", {"case": "none"}), None)
        self.assertEqual(self.json_result(inst, "l", {"case": "list"}), [1, "two"])

    def test_unmarshalable_result_is_a_marshal_error_and_instance_survives(self):
        inst = self.start_ready("http")
        for rid, case in (("bad1", "bad_status"), ("bad2", "unserializable")):
            header, _ = inst.call(rid, json.dumps({"case": case}))
            self.assertEqual(header["type"], "error", header)
            self.assertEqual(header["error"]["type"], "Runtime.MarshalError")
            inst.wait_marker(rid, "stdout")
        self.assertEqual(self.json_result(inst, "after", {"case": "list"}), [1, "two"])

    def test_large_bodies_both_ways(self):
        inst = self.start_ready("big_echo")
        payload = (b"0123456789abcdef" * 4096 * 32)[: (2 << 20) + 3]  # 2 MiB and change, not JSON
        header, out = self.result(inst, "big", payload, headers=[["content-type", "text/plain"]])
        self.assertEqual(header["len"], len(payload))
        self.assertEqual(out, payload)

    def test_frames_split_across_writes_and_pipelined(self):
        inst = self.start_ready("raw_event")
        frame = inst.invoke_frame("split", json.dumps({"x": "y" * 1000}))
        for i in range(0, len(frame), 97):
            inst.send(frame[i : i + 97])
            time.sleep(0.001)
        got = json.loads(inst.frame_for("split")[1])
        self.assertEqual(got["event"], {"x": "y" * 1000})
        # Several frames in one write, answered one by one.
        inst.send(b"".join(inst.invoke_frame("p%d" % i, json.dumps(i)) for i in range(5)))
        for i in range(5):
            header, out = inst.frame_for("p%d" % i)
            self.assertEqual(json.loads(out)["event"], i)

    def test_unknown_frame_types_are_ignored(self):
        inst = self.start_ready("raw_event")
        inst.send(json.dumps({"type": "from-the-future", "len": 3}).encode() + b"\nabc")
        self.assertEqual(self.json_result(inst, "after", {"k": 1})["event"], {"k": 1})

    # --- OpenWhisk shape ---

    def test_openwhisk_params(self):
        inst = self.start_ready("openwhisk")
        got = self.json_result(
            inst,
            "ow",
            {"c": "from-body", "d": [1]},
            method="POST",
            path="/sub/path",
            query="a=1&b=two&b=three&c=from-query",
            headers=[["content-type", "application/json"], ["x-h", "v"]],
        )
        self.assertEqual(
            got["args"],
            {
                "a": "1",
                "b": "three",
                "c": "from-body",
                "d": [1],
                "__ow_method": "post",
                "__ow_headers": {"content-type": "application/json", "x-h": "v"},
                "__ow_path": "/sub/path",
            },
        )

    def test_openwhisk_raw_body(self):
        inst = self.start_ready("openwhisk")
        header, out = self.result(inst, "raw", b"plain text", method="GET", headers=[])
        got = json.loads(out)["args"]
        self.assertEqual(got["__ow_body"], "plain text")
        self.assertEqual(got["__ow_method"], "get")
        self.assertEqual(got["__ow_headers"], {})
        # A JSON body that is not an object is raw too.
        got = self.json_result(inst, "arr", [1, 2])["args"]
        self.assertEqual(got["__ow_body"], "[1, 2]")

    def test_openwhisk_web_response(self):
        inst = self.start_ready("openwhisk")
        header, out = self.result(inst, "web", query="web=1")
        self.assertEqual(header["status"], 302)
        self.assertIn(["location", "/elsewhere"], header["headers"])
        self.assertIn(["content-type", "text/plain; charset=utf-8"], header["headers"])
        self.assertEqual(out, b"moved")
        # An empty dict is a JSON result, not an empty HTTP response.
        self.assertEqual(self.json_result(inst, "empty", query="empty=1"), {})

    # --- presentation: the body is the event itself ---

    def test_direct_lambda_answer_is_the_return_value_verbatim(self):
        inst = self.start_ready("http")
        # Shown as HTTP, a statusCode dict is an HTTP response...
        header, out = self.result(inst, "as-http", json.dumps({"case": "full"}))
        self.assertEqual(header["status"], 201)
        # ...and as an event's result, it is just JSON.
        got = self.json_result(inst, "direct", {"case": "full"}, presentation="direct")
        self.assertEqual(got["statusCode"], 201)
        self.assertEqual(got["body"], "<b>hi</b>")
        self.assertEqual(got["multiValueHeaders"]["Set-Cookie"], ["a=1", "b=2"])
        self.assertEqual(self.json_result(inst, "direct-list", {"case": "list"}, presentation="direct"), [1, "two"])
        # An unknown presentation (a newer flick's) is shown as HTTP.
        header, _ = self.result(inst, "future", json.dumps({"case": "full"}), presentation="telepathy")
        self.assertEqual(header["status"], 201)

    def test_direct_lambda_event_is_the_body(self):
        inst = self.start_ready("raw_event")
        got = self.json_result(inst, "d1", {"k": [1]}, presentation="direct", method="GET", path="/x", query="a=1")
        self.assertEqual(got["event"], {"k": [1]})
        self.assertEqual(self.json_result(inst, "d2", None, presentation="direct")["event"], {})

    def test_direct_openwhisk_gets_its_params_alone(self):
        inst = self.start_ready("openwhisk")
        got = self.json_result(
            inst, "ow-direct", {"c": 1, "web": "1x"}, presentation="direct", query="a=1", headers=[["x-h", "v"]]
        )
        self.assertEqual(got, {"args": {"c": 1, "web": "1x"}})
        # A result shaped like a web response is still the result.
        got = self.json_result(inst, "ow-web", {"web": "1"}, presentation="direct")
        self.assertEqual(got, {"statusCode": 302, "headers": {"location": "/elsewhere"}, "body": "moved"})

    def test_context_arn_client_context_and_http(self):
        arn = "arn:aws:lambda:eu-west-1:123456789012:function:echo-fn"
        inst = self.start_ready("context", env={"FLICK_FUNCTION_ARN": arn})
        cc = {"client": {"app_title": "app", "installation_id": "i-1"}, "custom": {"k": "v"}, "env": {"e": "1"}}
        encoded = base64.b64encode(json.dumps(cc).encode()).decode()
        got = self.json_result(inst, "c1", {}, presentation="direct", client_context=encoded)
        self.assertEqual(
            got, {"arn": arn, "has_http": False, "custom": {"k": "v"}, "env": {"e": "1"}, "app_title": "app"}
        )
        got = self.json_result(inst, "c2", {})
        self.assertEqual(got, {"arn": arn, "has_http": True, "custom": None, "env": None, "app_title": None})
        # A client context that is not base64 JSON is none at all.
        got = self.json_result(inst, "c3", {}, client_context="%%%not-base64")
        self.assertEqual(got["custom"], None)
        # Without FLICK_FUNCTION_ARN, the local ARN.
        inst = self.start_ready("context")
        got = self.json_result(inst, "c4", {})
        self.assertEqual(got["arn"], "arn:aws:lambda:local:000000000000:function:echo-fn")

    # --- async, errors, logs ---

    def test_async_handler(self):
        inst = self.start_ready("async")
        for i in range(3):
            got = self.json_result(inst, "a%d" % i, {"n": i})
            self.assertEqual(got, {"async": True, "n": i, "id": "a%d" % i})

    def test_handler_exception_is_an_error_frame_and_instance_keeps_serving(self):
        inst = self.start_ready("fails")
        header, body = inst.call("boom", json.dumps({"fail": True}))
        self.assertEqual(header["type"], "error", header)
        self.assertEqual(header["id"], "boom")
        self.assertEqual(body, b"")
        error = header["error"]
        self.assertEqual(error["type"], self.error_type)
        self.assertTrue(error["message"])
        self.assertTrue(any(self.code_file in line for line in error["trace"]), error)
        self.assertTrue(any("helper" in line for line in error["trace"]), error)
        # The trace is in the logs too, before the end marker.
        before = b"".join(inst.wait_marker("boom", "stderr")).decode()
        self.assertIn("about to fail", before)
        self.assertIn(self.error_type, before)
        self.assertIn("helper", before)
        inst.wait_marker("boom", "stdout")

        self.assertEqual(self.json_result(inst, "fine", {}), {"ok": True})

    def test_a_huge_error_is_capped_to_fit_one_frame(self):
        # flick refuses header lines over 64 KiB: the error must fit under it.
        inst = self.start_ready("huge_error")
        inst.send(inst.invoke_frame("big"))
        deadline = time.monotonic() + TIMEOUT
        while b"\n" not in inst.buf:
            inst._recv(deadline)
        line = inst.buf.split(b"\n", 1)[0]
        self.assertLess(len(line), 64 << 10)
        header, _ = inst.read_frame()
        self.assertEqual((header["type"], header["id"]), ("error", "big"))
        error = header["error"]
        self.assertEqual(error["type"], "RangeError" if self.runtime == "node" else "ValueError")
        self.assertIn("more characters]", error["message"])

    def test_a_huge_import_error_is_capped_too(self):
        inst = self.start("huge_import_error")
        deadline = time.monotonic() + TIMEOUT
        while b"\n" not in inst.buf:
            inst._recv(deadline)
        self.assertLess(len(inst.buf.split(b"\n", 1)[0]), 64 << 10)
        header, _ = inst.read_frame()
        self.assertEqual(header["type"], "init_error")
        self.assertIn("more characters]", header["error"]["message"])

    def test_output_comes_before_the_end_markers_on_both_streams(self):
        inst = self.start_ready("logs")
        for n in (1, 2):
            rid = "log-%d" % n
            self.assertEqual(self.json_result(inst, rid, {"n": n}), {"n": n})
            out = inst.wait_marker(rid, "stdout")
            err = inst.wait_marker(rid, "stderr")
            self.assertEqual(out[-2:], [b"line one\n", b"line two %d\n" % n])
            self.assertEqual(err[-1], b"to stderr\n")

    # --- instance life ---

    def test_concurrent_invocations_overlap(self):
        inst = self.start_ready("sleep", concurrency=4)
        ids = ["c%d" % i for i in range(4)]
        started = time.monotonic()
        inst.send(b"".join(inst.invoke_frame(rid, b"{}") for rid in ids))
        for rid in ids:
            header, out = inst.frame_for(rid)
            self.assertEqual(header["type"], "result", header)
            self.assertEqual(json.loads(out), {"id": rid})
        elapsed = time.monotonic() - started
        self.assertLess(elapsed, 4 * 0.3, "4 concurrent 0.3 s calls took %.2f s" % elapsed)

    def test_concurrency_one_serves_pipelined_invokes_in_turn(self):
        inst = self.start_ready("counter")
        inst.send(b"".join(inst.invoke_frame("s%d" % i) for i in range(4)))
        counts = [json.loads(inst.frame_for("s%d" % i)[1])["count"] for i in range(4)]
        self.assertEqual(counts, [1, 2, 3, 4])

    def test_eof_on_the_channel_exits_0(self):
        inst = self.start_ready("echo")
        self.json_result(inst, "once", {})
        inst.sock.close()
        self.assertEqual(inst.wait_exit(5), 0)

    def test_eof_exits_promptly_even_with_calls_in_flight(self):
        inst = self.start_ready("sleep", concurrency=2)
        inst.invoke("inflight", b"{}")
        time.sleep(0.05)
        started = time.monotonic()
        inst.sock.close()
        self.assertEqual(inst.wait_exit(5), 0)
        self.assertLess(time.monotonic() - started, 2.0)

    def test_warm_instance_keeps_module_state(self):
        inst = self.start_ready("counter")
        self.assertEqual([self.json_result(inst, "w%d" % i, {})["count"] for i in range(5)], [1, 2, 3, 4, 5])

    # --- stem cells (FLICK_STEM=1) ---

    def start_stem(self):
        inst = self.start(files={}, handler=None, stem=True)
        header, body = inst.read_frame()
        self.assertEqual(header, {"type": "stem_ready"}, inst.stderr_text())
        self.assertEqual(body, b"")
        return inst

    def assert_ready(self, inst):
        header, body = inst.read_frame()
        self.assert_ready_header(header, inst)
        self.assertEqual(body, b"")

    def check_stem_result(self, got, code_dir):
        self.assertEqual(got["function_name"], "stemfn")
        self.assertEqual(got["function_version"], "7")
        self.assertEqual(got["memory"], type(self.memory_value)(128))
        self.assertEqual(got["arn"], "arn:aws:lambda:local:000000000000:function:stemfn")
        self.assertEqual(got["log_group"], "/aws/lambda/stemfn")
        self.assertEqual(got["greeting"], "hi")
        self.assertFalse(got["stem_in_env"])
        self.assertEqual(os.path.realpath(got["cwd"]), os.path.realpath(code_dir))
        self.assertEqual(got["data"], "read relative to the code dir\n")
        self.assertEqual(got["dep"], "from deps")

    def test_stem_cell_announces_itself_then_waits(self):
        inst = self.start_stem()
        # Nothing more until it is told what to be.
        with self.assertRaises(AssertionError):
            inst.read_frame(timeout=0.3)
        self.assertIsNone(inst.proc.poll())
        self.assertEqual(inst.stderr_text(), "")
        # Its cwd was the empty directory it was given.
        self.assertEqual(os.listdir(inst.stem_dir), [])

    def test_stem_cell_specialises_into_the_function(self):
        inst = self.start_stem()
        files, handler = self.SOURCES["stem"]
        inst.specialise(files, handler, env={"GREETING": "hi"})
        self.assertNotEqual(os.path.realpath(inst.dir), os.path.realpath(inst.stem_dir))
        self.assert_ready(inst)
        self.check_stem_result(self.json_result(inst, "s1", {}), inst.dir)
        # Output of the import is kept for the first invocation, as in a normal start.
        self.assertIn(b"loading the stem module\n", inst.wait_marker("s1", "stdout"))
        self.check_stem_result(self.json_result(inst, "s2", {}), inst.dir)

    def test_stem_cell_finds_code_mounted_over_its_cwd(self):
        # What a mount over the cwd does, without privileges: the directory the
        # process started in is moved away (its cwd handle follows it) and the
        # code appears at the same path.
        for with_code_dir in (True, False):
            inst = self.start_stem()
            under = inst.stem_dir + ".under"
            os.rename(inst.stem_dir, under)
            inst.extra_dirs.append(under)
            files, handler = self.SOURCES["stem"]
            code_dir = inst.stem_dir
            env = {"GREETING": "hi"}
            if not with_code_dir:
                env["FLICK_CODE_DIR"] = None  # then the path it started in
            inst.specialise(files, handler, code_dir=code_dir, env=env)
            self.assert_ready(inst)
            self.check_stem_result(self.json_result(inst, "m", {}), code_dir)

    def assert_specialise_refused(self, inst, why):
        header, _ = inst.read_frame()
        self.assertEqual(header["type"], "init_error", header)
        self.assertEqual(header["error"]["type"], "Runtime.InitError", header)
        self.assertIn("Unable to specialise", header["error"]["message"])
        self.assertRegex(header["error"]["message"], why)
        self.assertEqual(inst.wait_exit(), 1)
        inst.wait_streams_closed()
        self.assertNotIn("loading the stem module", inst.stdout_text(), "the function's code ran")

    def test_a_sandboxed_stem_never_runs_a_function_without_a_uid(self):
        # FLICK_STEM=setuid: uid 0 with CAP_SETUID/CAP_SETGID, waiting for a uid.
        inst = self.start(files={}, handler=None, stem=True, env={"FLICK_STEM": "setuid"})
        self.assertEqual(inst.read_frame()[0], {"type": "stem_ready"}, inst.stderr_text())
        files, handler = self.SOURCES["stem"]
        inst.specialise(files, handler)
        self.assert_specialise_refused(inst, "no uid")

    def test_a_stem_that_keeps_any_privilege_never_runs_the_function(self):
        # Outside a sandbox the switch cannot leave nothing behind: as root the
        # bounding set is still full, as anyone else setresuid is refused.
        inst = self.start(files={}, handler=None, stem=True, env={"FLICK_STEM": "setuid"})
        self.assertEqual(inst.read_frame()[0], {"type": "stem_ready"}, inst.stderr_text())
        files, handler = self.SOURCES["stem"]
        inst.specialise(files, handler, uid=65534)
        why = "CapBnd" if os.geteuid() == 0 else "(?i)not permitted|EPERM"
        self.assert_specialise_refused(inst, why)

    def test_stem_cell_import_error_after_specialise(self):
        inst = self.start_stem()
        files, handler = self.SOURCES["import_missing"]
        inst.specialise(files, handler)
        header, _ = inst.read_frame()
        self.assertEqual(header["type"], "init_error", header)
        self.assertEqual(header["error"]["type"], "Runtime.ImportModuleError")
        self.assertIn("does", header["error"]["message"])
        self.assertEqual(inst.wait_exit(), 1)
        inst.wait_streams_closed()
        self.assertIn(self.import_trace_hint, inst.stderr_text())

    def test_stem_cell_that_cannot_enter_its_code_dir_is_an_init_error(self):
        inst = self.start_stem()
        missing = os.path.join(inst.stem_dir, "not-there")
        frame = {"type": "specialise", "env": {"FLICK_CODE_DIR": missing, "FLICK_HANDLER": "x.y"}}
        inst.send(json.dumps(frame).encode() + b"\n")
        header, _ = inst.read_frame()
        self.assertEqual(header["type"], "init_error", header)
        self.assertEqual(header["error"]["type"], "Runtime.InitError")
        self.assertIn("not-there", header["error"]["message"])
        self.assertEqual(inst.wait_exit(), 1)

    def test_stem_cell_eof_while_waiting_exits_0(self):
        inst = self.start_stem()
        inst.sock.close()
        self.assertEqual(inst.wait_exit(5), 0)

    def test_stem_cell_ignores_unknown_frames_before_specialise(self):
        inst = self.start_stem()
        inst.send(json.dumps({"type": "from-the-future", "len": 3}).encode() + b"\nabc")
        inst.send(json.dumps({"type": "from-the-future-too"}).encode() + b"\n")
        with self.assertRaises(AssertionError):
            inst.read_frame(timeout=0.2)
        files, handler = self.SOURCES["stem"]
        inst.specialise(files, handler, env={"GREETING": "hi"})
        self.assert_ready(inst)
        self.check_stem_result(self.json_result(inst, "u", {}), inst.dir)

    def test_stem_cell_serves_invokes_sent_with_the_specialise_frame(self):
        inst = self.start_stem()
        files, handler = self.SOURCES["counter"]
        frames = inst.specialise_frame(files, handler)
        frames += b"".join(inst.invoke_frame("p%d" % i) for i in range(3))
        inst.send(frames)
        self.assert_ready(inst)
        self.assertEqual([json.loads(inst.frame_for("p%d" % i)[1])["count"] for i in range(3)], [1, 2, 3])

    def test_stem_cell_concurrency_comes_from_specialise(self):
        inst = self.start_stem()
        files, handler = self.SOURCES["sleep"]
        inst.specialise(files, handler, concurrency=4)
        self.assert_ready(inst)
        ids = ["sc%d" % i for i in range(4)]
        started = time.monotonic()
        inst.send(b"".join(inst.invoke_frame(rid, b"{}") for rid in ids))
        for rid in ids:
            header, out = inst.frame_for(rid)
            self.assertEqual(header["type"], "result", header)
            self.assertEqual(json.loads(out), {"id": rid})
        elapsed = time.monotonic() - started
        self.assertLess(elapsed, 4 * 0.3, "4 concurrent 0.3 s calls took %.2f s" % elapsed)


class PythonBootstrapTest(BootstrapContract, unittest.TestCase):
    runtime = "python"
    SOURCES = PY
    memory_value = 256
    error_type = "ZeroDivisionError"
    code_file = "main.py"
    import_trace_hint = "Traceback"

    def test_fork_template_refuses_bad_requests_and_forks_instances_that_serve(self):
        # As flick starts a template: FLICK_TEMPLATE=1; it imports once, says
        # template_ready, then forks on request (crates/runtime/src/template.rs).
        files = {
            "main.py": """
                import os, random, time
                IMPORTED = time.time()
                def handler(event, context):
                    print("from a fork")
                    return {"pid": os.getpid(), "imported": IMPORTED, "random": random.random(),
                            "stream": os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME"),
                            "template": os.environ.get("FLICK_TEMPLATE")}
            """
        }
        t = Instance("python", files, "main.handler", env={"FLICK_TEMPLATE": "1"})
        self.addCleanup(t.stop)
        header, _ = t.read_frame()
        self.assertEqual(header["type"], "template_ready", t.stderr_text())
        # What flick would never send: garbage, a fork without descriptors,
        # a fork with too few. Each is refused; the template goes on.
        for data, fds in ((b"not json\n", []), (b'{"type":"fork"}\n', []), (b'{"type":"fork"}\n', [0])):
            socket.send_fds(t.sock, [data], fds) if fds else t.sock.sendall(data)
            header, _ = t.read_frame()
            self.assertEqual(header["type"], "fork_error", data)
        got = []
        for n in range(2):
            ours, theirs = socket.socketpair()
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            msg = json.dumps({"type": "fork", "env": {"AWS_LAMBDA_LOG_STREAM_NAME": "s%d" % n}}).encode() + b"\n"
            socket.send_fds(t.sock, [msg], [theirs.fileno(), out_w, err_w])
            for fd in (out_w, err_w):
                os.close(fd)
            theirs.close()
            header, _ = t.read_frame()
            self.assertEqual(header["type"], "forked")
            fork = Instance.__new__(Instance)
            fork.sock, fork.buf, fork.early = ours, b"", {}
            ready = fork.read_frame()[0]
            self.assertEqual(ready, {"type": "ready"}, "a fork imported nothing")
            reply, body = fork.call("r%d" % n, b"{}")
            self.assertEqual(reply["type"], "result", body)
            value = json.loads(body)
            self.assertEqual(value["pid"], header["pid"])
            out = os.read(out_r, 4096)
            self.assertIn(b"from a fork", out)
            got.append(value)
            ours.close()
            for fd in (out_r, err_r):
                os.close(fd)
        self.assertEqual(got[0]["imported"], got[1]["imported"], "imported once, in the template")
        self.assertNotEqual(got[0]["random"], got[1]["random"])
        self.assertEqual([g["stream"] for g in got], ["s0", "s1"])
        self.assertIsNone(got[0]["template"])
        # flick closes the channel: the template exits.
        t.sock.close()
        self.assertEqual(t.wait_exit(), 0)

    def test_fork_template_refuses_an_import_that_left_a_thread_running(self):
        files = {
            "main.py": """
                import threading, time
                threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
                def handler(event, context):
                    return 1
            """
        }
        t = Instance("python", files, "main.handler", env={"FLICK_TEMPLATE": "1"})
        self.addCleanup(t.stop)
        header, _ = t.read_frame()
        self.assertEqual(header["type"], "init_error")
        self.assertEqual(header["error"]["type"], "Runtime.TemplateRefused")
        self.assertIn("threads", header["error"]["message"])
        self.assertEqual(t.wait_exit(), 1)

    def test_site_packages_without_their_pth_hooks(self):
        # Started with -S, as flick starts it: the interpreter's own
        # site-packages are importable all the same (what the host installed
        # for every function), and exit() exists; `site.main()` never ran.
        files = {
            "main.py": """
                import site, sys
                def handler(event, context):
                    wanted = site.getsitepackages()
                    return {
                        "missing": [p for p in wanted if p not in sys.path],
                        "wanted": len(wanted),
                        "exit": callable(exit) and callable(quit),
                        "no_site": sys.flags.no_site,
                    }
            """
        }
        got = self.json_result(self.start_ready(files=files, handler="main.handler"), "s", {})
        self.assertEqual(got["missing"], [])
        self.assertGreater(got["wanted"], 0)
        self.assertTrue(got["exit"])
        self.assertEqual(got["no_site"], 1)

    def test_openfaas_handle(self):
        files = {
            "handler.py": """
                def handle(req):
                    if req == "bytes":
                        return b"\\x00raw"
                    if req == "none":
                        return None
                    if req == "json":
                        return {"a": 1}
                    return "hello " + req
            """
        }
        inst = self.start_ready(files=files, handler="handler.handle")
        header, out = self.result(inst, "s", b"world \xe2\x82\xac", headers=[])
        self.assertEqual(out, "hello world \u20ac".encode())
        self.assertIn(["content-type", "text/plain; charset=utf-8"], header["headers"])
        header, out = self.result(inst, "b", b"bytes")
        self.assertEqual(out, b"\x00raw")
        self.assertIn(["content-type", "application/octet-stream"], header["headers"])
        header, out = self.result(inst, "n", b"none")
        self.assertEqual((header["status"], out), (200, b""))
        header, out = self.result(inst, "j", b"json")
        self.assertEqual(json.loads(out), {"a": 1})
        self.assertIn(["content-type", "application/json"], header["headers"])

    # --- explicit shapes (FLICK_SHAPE) ---

    def test_explicit_lambda_over_http_gets_an_api_gateway_v2_event(self):
        files = {
            "main.py": """
                def handler(event, context):
                    if event.get("rawQueryString") == "answer=1":
                        return {"statusCode": 418, "headers": {"x-a": "b"}, "body": "teapot", "cookies": ["c=1"]}
                    return {"event": event}
            """
        }
        inst = self.start_ready(files=files, handler="main.handler", env={"FLICK_SHAPE": "lambda"})
        headers = [
            ["content-type", "text/plain"],
            ["x-rep", "1"],
            ["x-rep", "2"],
            ["cookie", "a=1; b=2"],
            ["host", "fn.example.com"],
            ["user-agent", "curl/8"],
        ]
        got = self.json_result(
            inst, "gw", None, method="PUT", path="/a b", raw_path="/a%20b", query="x=1&x=2&y=", headers=headers
        )["event"]
        self.assertEqual(got["version"], "2.0")
        self.assertEqual(got["routeKey"], "$default")
        self.assertEqual(got["rawPath"], "/a%20b")
        self.assertEqual(got["rawQueryString"], "x=1&x=2&y=")
        self.assertEqual(got["queryStringParameters"], {"x": "1,2", "y": ""})
        self.assertEqual(got["cookies"], ["a=1", "b=2"])
        self.assertEqual(
            got["headers"],
            {"content-type": "text/plain", "x-rep": "1,2", "host": "fn.example.com", "user-agent": "curl/8"},
        )
        ctx = got["requestContext"]
        self.assertEqual(ctx["http"]["method"], "PUT")
        self.assertEqual(ctx["http"]["path"], "/a b")
        self.assertEqual(ctx["http"]["userAgent"], "curl/8")
        self.assertEqual(ctx["requestId"], "gw")
        self.assertEqual((ctx["stage"], ctx["domainName"], ctx["domainPrefix"]), ("$default", "fn.example.com", "fn"))
        self.assertIsInstance(ctx["timeEpoch"], int)
        self.assertEqual(got["isBase64Encoded"], False)
        self.assertNotIn("body", got)
        # A UTF-8 body is text; any other is base64.
        got = json.loads(self.result(inst, "utf8", "h\u00e9".encode(), headers=[])[1])["event"]
        self.assertEqual((got["body"], got["isBase64Encoded"]), ("h\u00e9", False))
        got = json.loads(self.result(inst, "bin", b"\x00\xff", headers=[])[1])["event"]
        self.assertEqual((base64.b64decode(got["body"]), got["isBase64Encoded"]), (b"\x00\xff", True))
        # The answer is mapped as API Gateway maps it.
        header, out = self.result(inst, "ans", query="answer=1")
        self.assertEqual((header["status"], out), (418, b"teapot"))
        self.assertIn(["x-a", "b"], header["headers"])
        self.assertIn(["set-cookie", "c=1"], header["headers"])
        # Invoked directly, the body is the event and the answer verbatim.
        got = self.json_result(inst, "d", {"rawQueryString": "answer=1"}, presentation="direct")
        self.assertEqual(got["statusCode"], 418)

    def test_explicit_shapes_override_the_guess(self):
        files = {
            "fns.py": """
                def main(req):
                    return {"got": req}

                def handle(params):
                    return {"got": params}
            """
        }
        # `main` would be guessed OpenWhisk; declared OpenFaaS it gets the body text.
        inst = self.start_ready(files=files, handler="fns.main", env={"FLICK_SHAPE": "openfaas"})
        self.assertEqual(self.json_result(inst, "m", {"k": 1}), {"got": '{"k": 1}'})
        # `handle` would be guessed OpenFaaS; declared OpenWhisk it gets params.
        inst = self.start_ready(files=files, handler="fns.handle", env={"FLICK_SHAPE": "openwhisk"})
        got = self.json_result(inst, "h", {"k": 1}, query="q=2")["got"]
        self.assertEqual((got["k"], got["q"], got["__ow_method"]), (1, "2", "post"))

    def test_an_unknown_shape_is_an_init_error(self):
        inst = self.start(files={"main.py": "def handler(e, c):\n    return 1\n"}, handler="main.handler",
                          env={"FLICK_SHAPE": "azure"})
        header, _ = inst.read_frame()
        self.assertEqual(header["type"], "init_error", header)
        self.assertIn("azure", header["error"]["message"])
        self.assertEqual(inst.wait_exit(), 1)

    GCF = {
        "main.py": """
            def hello_http(request):
                case = request.args.get("case")
                if case == "inspect":
                    return {
                        "method": request.method,
                        "path": request.path,
                        "args": request.args.to_dict(flat=False),
                        "first": request.args.get("a"),
                        "list": request.args.getlist("a"),
                        "num": request.args.get("n", type=int),
                        "bad_num": request.args.get("a", -1, type=int),
                        "ct": request.headers.get("CONTENT-TYPE"),
                        "has_x": "X-Thing" in request.headers,
                        "x": request.headers["x-thing"],
                        "header_names": sorted(dict(request.headers)),
                        "json": request.get_json(silent=True),
                        "data": request.get_data(as_text=True),
                        "is_json": request.is_json,
                        "cookies": request.cookies.to_dict(),
                    }
                if case == "form":
                    return {
                        "form": request.form.to_dict(flat=False),
                        "data": request.data.decode(),
                        "values": request.values.to_dict(flat=False),
                    }
                if case == "multipart":
                    f = request.files["up"]
                    return {"field": request.form["f"], "filename": f.filename, "content": f.read().decode()}
                if case == "json_strict":
                    return {"v": request.get_json()}
                if case == "missing_key":
                    return request.args["nope"]
                if case == "text":
                    return "hello"
                if case == "bytes":
                    return b"\\x00\\x01"
                if case == "tuple3":
                    return ("created", 201, {"X-Id": "7"})
                if case == "tuple2h":
                    return ({"ok": True}, {"X-A": "b"})
                if case == "tuple2s":
                    return ("gone", "410 GONE")
                if case == "list":
                    return [3, {"b": 1, "a": 2}]
                if case == "xml":
                    return ("<x/>", 200, [("Content-Type", "application/xml")])
                if case == "none":
                    return None
        """
    }

    def test_gcf_request_object(self):
        inst = self.start_ready(files=self.GCF, handler="main.hello_http", env={"FLICK_SHAPE": "gcf"})
        headers = [["content-type", "application/json"], ["x-thing", "v"], ["cookie", "s=1; t=2"]]
        got = self.json_result(
            inst, "i", {"k": [1]}, query="case=inspect&a=1&a=2&n=5", path="/sub", headers=headers, method="PATCH"
        )
        self.assertEqual(got["method"], "PATCH")
        self.assertEqual(got["path"], "/sub")
        self.assertEqual(got["args"], {"case": ["inspect"], "a": ["1", "2"], "n": ["5"]})
        self.assertEqual((got["first"], got["list"], got["num"], got["bad_num"]), ("1", ["1", "2"], 5, 1))
        self.assertEqual((got["ct"], got["has_x"], got["x"]), ("application/json", True, "v"))
        self.assertEqual(got["header_names"], ["Content-Type", "Cookie", "X-Thing"])
        self.assertEqual((got["json"], got["data"], got["is_json"]), ({"k": [1]}, '{"k": [1]}', True))
        self.assertEqual(got["cookies"], {"s": "1", "t": "2"})
        # Not JSON: silent gives None.
        got = self.json_result(inst, "nj", None, query="case=inspect", headers=[["x-thing", "w"]])
        self.assertEqual((got["json"], got["is_json"], got["ct"]), (None, False, None))

        form = [["content-type", "application/x-www-form-urlencoded"]]
        header, out = self.result(inst, "f", b"a=1&a=2&b=x+y", query="case=form&q=3", headers=form)
        self.assertEqual(
            json.loads(out),
            {"form": {"a": ["1", "2"], "b": ["x y"]}, "data": "", "values": {"case": ["form"], "q": ["3"], "a": ["1", "2"], "b": ["x y"]}},
        )
        body = (
            b"--XX\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nfield value\r\n"
            b"--XX\r\nContent-Disposition: form-data; name=\"up\"; filename=\"a.txt\"\r\n"
            b"Content-Type: text/plain\r\n\r\nfile text\r\n--XX--\r\n"
        )
        mp = [["content-type", "multipart/form-data; boundary=XX"]]
        header, out = self.result(inst, "mp", body, query="case=multipart", headers=mp)
        self.assertEqual(json.loads(out), {"field": "field value", "filename": "a.txt", "content": "file text"})

    def test_gcf_answers_as_flask(self):
        inst = self.start_ready(files=self.GCF, handler="main.hello_http", env={"FLICK_SHAPE": "gcf"})
        html = ["content-type", "text/html; charset=utf-8"]
        cases = {
            "text": (200, b"hello", html),
            "bytes": (200, b"\x00\x01", html),
            "tuple3": (201, b"created", ["x-id", "7"]),
            "tuple2h": (200, b'{"ok":true}\n', ["x-a", "b"]),
            "tuple2s": (410, b"gone", html),
            "list": (200, b'[3,{"a":2,"b":1}]\n', ["content-type", "application/json"]),
            "xml": (200, b"<x/>", ["content-type", "application/xml"]),
        }
        for case, (status, body, header_pair) in cases.items():
            header, out = self.result(inst, case, query="case=" + case, headers=[])
            self.assertEqual((header["status"], out), (status, body), case)
            self.assertIn(header_pair, header["headers"], case)
        header, out = self.result(inst, "xml2", query="case=xml", headers=[])
        self.assertEqual([v for k, v in header["headers"] if k == "content-type"], ["application/xml"])
        # Werkzeug's errors, as Flask renders them.
        header, out = self.result(inst, "415", query="case=json_strict", headers=[["content-type", "text/plain"]])
        self.assertEqual(header["status"], 415)
        header, out = self.result(
            inst, "400", b"{nope", query="case=json_strict", headers=[["content-type", "application/json"]]
        )
        self.assertEqual(header["status"], 400)
        self.assertIn(b"Failed to decode JSON", out)
        header, out = self.result(inst, "key", query="case=missing_key", headers=[])
        self.assertEqual(header["status"], 400)
        # Returning nothing is the handler's error, as in Flask.
        header, _ = inst.call("none", query="case=none")
        self.assertEqual(header["type"], "error")
        self.assertEqual(header["error"]["type"], "Runtime.MarshalError")

    def test_openfaas_python3_http_template(self):
        files = {
            "handler.py": """
                def handle(event, context):
                    case = event.query.get("case")
                    if case == "inspect":
                        return {
                            "statusCode": 200,
                            "body": {
                                "body": event.body.decode(),
                                "method": event.method,
                                "path": event.path,
                                "q": event.query.getlist("q"),
                                "h": event.headers.get("X-Thing"),
                                "host": context.hostname,
                            },
                        }
                    if case == "made":
                        return {"statusCode": 201, "body": "made", "headers": {"X-Id": "1"}}
                    if case == "nobody":
                        return {"statusCode": 204}
                    if case == "str":
                        return "plain"
                    return None
            """
        }
        # handler.handle(event, context) is OpenFaaS's layout: found without a shape.
        for env in ({}, {"FLICK_SHAPE": "openfaas"}):
            inst = self.start_ready(files=files, handler="handler.handle", env=env)
            header, out = self.result(
                inst, "i", b"raw body", method="PUT", path="/p", query="case=inspect&q=1&q=2", headers=[["x-thing", "t"]]
            )
            self.assertEqual(header["status"], 200)
            self.assertEqual(
                json.loads(out),
                {"body": "raw body", "method": "PUT", "path": "/p", "q": ["1", "2"], "h": "t", "host": "localhost"},
            )
            header, out = self.result(inst, "m", query="case=made", headers=[])
            self.assertEqual((header["status"], out), (201, b"made"))
            self.assertIn(["x-id", "1"], header["headers"])
            header, out = self.result(inst, "n", query="case=nobody", headers=[])
            self.assertEqual((header["status"], out), (204, b""))
            header, out = self.result(inst, "s", query="case=str", headers=[])
            self.assertEqual((header["status"], out), (200, b"plain"))
            header, out = self.result(inst, "none", headers=[])
            self.assertEqual((header["status"], out), (200, b""))

    def test_shapes_see_through_decorators_and_methods(self):
        files = {
            "main.py": """
                import functools

                def logged(fn):
                    @functools.wraps(fn)
                    def wrapper(*args, **kwargs):
                        return fn(*args, **kwargs)
                    return wrapper

                @logged
                def handle(req):
                    return "wrapped " + req

                class App:
                    def handler(self, event, context):
                        return {"method": event}

                app_handler = App().handler
            """
        }
        inst = self.start_ready(files=files, handler="main.handle")
        self.assertEqual(self.result(inst, "d", b"x")[1], b"wrapped x")
        inst = self.start_ready(files=files, handler="main.app_handler")
        self.assertEqual(self.json_result(inst, "m", "e"), {"method": "e"})

    def test_async_handler_concurrent(self):
        files = {
            "main.py": """
                import asyncio

                async def handler(event, context):
                    await asyncio.sleep(0.3)
                    return {"id": context.aws_request_id}
            """
        }
        inst = self.start_ready(files=files, handler="main.handler", concurrency=4)
        ids = ["ac%d" % i for i in range(4)]
        started = time.monotonic()
        inst.send(b"".join(inst.invoke_frame(rid, b"{}") for rid in ids))
        for rid in ids:
            self.assertEqual(json.loads(inst.frame_for(rid)[1]), {"id": rid})
        self.assertLess(time.monotonic() - started, 4 * 0.3)

    def test_sync_handler_returning_an_awaitable(self):
        files = {
            "main.py": """
                import asyncio

                async def work(n):
                    await asyncio.sleep(0)
                    return n * 2

                def handler(event, context):
                    return work(event)
            """
        }
        for concurrency in (1, 3):
            inst = self.start_ready(files=files, handler="main.handler", concurrency=concurrency)
            self.assertEqual(self.json_result(inst, "aw", 21), 42)

    def test_dependencies_and_code_dir_are_importable(self):
        files = {
            ".deps/python/depmod/__init__.py": "VALUE = 'from deps'\n",
            "lib/helpers.py": "def twice(x):\n    return x * 2\n",
            "lib/__init__.py": "",
            "main.py": """
                import sys
                import depmod
                from lib.helpers import twice

                def handler(event, context):
                    return {"dep": depmod.VALUE, "twice": twice(21), "path0": sys.path[0]}
            """,
        }
        inst = self.start_ready(files=files, handler="main.handler")
        got = self.json_result(inst, "deps", {})
        self.assertEqual(got["dep"], "from deps")
        self.assertEqual(got["twice"], 42)
        self.assertEqual(got["path0"], inst.dir)

    def test_handler_in_a_subdirectory(self):
        files = {"src/app.py": "def handler(event, context):\n    return {'where': 'src/app'}\n"}
        inst = self.start_ready(files=files, handler="src/app.handler")
        self.assertEqual(self.json_result(inst, "sub", {}), {"where": "src/app"})

    def test_system_exit_in_handler_is_an_error_not_an_exit(self):
        files = {"main.py": "import sys\n\ndef handler(event, context):\n    sys.exit(3)\n"}
        inst = self.start_ready(files=files, handler="main.handler")
        header, _ = inst.call("exit", b"{}")
        self.assertEqual(header["error"]["type"], "SystemExit")
        header, _ = inst.call("again", b"{}")
        self.assertEqual(header["type"], "error")


class NodeBootstrapTest(BootstrapContract, unittest.TestCase):
    runtime = "node"
    SOURCES = NODE_SRC
    memory_value = "256"
    error_type = "TypeError"
    code_file = "index.js"
    import_trace_hint = "Cannot find module"

    # --- explicit shapes (FLICK_SHAPE) ---

    def test_explicit_lambda_over_http_gets_an_api_gateway_v2_event(self):
        files = {
            "index.js": """
                exports.handler = async (event) => {
                  if (event.rawQueryString === 'answer=1') return { statusCode: 418, body: 'teapot', cookies: ['c=1'] };
                  return { event };
                };
            """
        }
        arn = "arn:aws:lambda:eu-west-1:123456789012:function:echo-fn"
        inst = self.start_ready(files=files, handler="index.handler", env={"FLICK_SHAPE": "lambda", "FLICK_FUNCTION_ARN": arn})
        headers = [["x-rep", "1"], ["x-rep", "2"], ["cookie", "a=1; b=2"], ["host", "fn.example.com"]]
        got = self.json_result(inst, "gw", None, method="PUT", path="/a b", raw_path="/a%20b", query="x=1&x=2", headers=headers)
        got = got["event"]
        self.assertEqual((got["version"], got["routeKey"], got["rawPath"]), ("2.0", "$default", "/a%20b"))
        self.assertEqual(got["queryStringParameters"], {"x": "1,2"})
        self.assertEqual(got["cookies"], ["a=1", "b=2"])
        self.assertEqual(got["headers"], {"x-rep": "1,2", "host": "fn.example.com"})
        ctx = got["requestContext"]
        self.assertEqual((ctx["http"]["method"], ctx["http"]["path"], ctx["accountId"]), ("PUT", "/a b", "123456789012"))
        self.assertRegex(ctx["time"], r"^\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d \+0000$")
        self.assertNotIn("body", got)
        got = json.loads(self.result(inst, "bin", b"\x00\xff", headers=[])[1])["event"]
        self.assertEqual((base64.b64decode(got["body"]), got["isBase64Encoded"]), (b"\x00\xff", True))
        got = json.loads(self.result(inst, "utf8", "h\u00e9".encode(), headers=[])[1])["event"]
        self.assertEqual((got["body"], got["isBase64Encoded"]), ("h\u00e9", False))
        header, out = self.result(inst, "ans", query="answer=1")
        self.assertEqual((header["status"], out), (418, b"teapot"))
        self.assertIn(["set-cookie", "c=1"], header["headers"])
        got = self.json_result(inst, "d", {"rawQueryString": "answer=1"}, presentation="direct")
        self.assertEqual(got["statusCode"], 418)

    def test_explicit_shapes_override_the_guess(self):
        files = {"index.js": "exports.main = async (p) => ({ got: p });\nexports.handler = async (e) => ({ got: e });\n"}
        # `main` would be guessed OpenWhisk; declared Lambda it gets the event.
        inst = self.start_ready(files=files, handler="index.main", env={"FLICK_SHAPE": "lambda"})
        got = self.json_result(inst, "m", {"k": 1}, query="q=1")["got"]
        self.assertEqual(got["body"], '{"k": 1}')
        # `handler` would be guessed Lambda; declared OpenWhisk it gets params.
        inst = self.start_ready(files=files, handler="index.handler", env={"FLICK_SHAPE": "openwhisk"})
        got = self.json_result(inst, "h", {"k": 1}, query="q=2")["got"]
        self.assertEqual((got["k"], got["q"], got["__ow_method"]), (1, "2", "post"))

    def test_an_unknown_shape_is_an_init_error(self):
        inst = self.start(files={"index.js": "exports.handler = async () => 1;\n"}, handler="index.handler",
                          env={"FLICK_SHAPE": "azure"})
        header, _ = inst.read_frame()
        self.assertEqual(header["type"], "init_error", header)
        self.assertIn("azure", header["error"]["message"])
        self.assertEqual(inst.wait_exit(), 1)

    OPENFAAS = {
        "handler.js": """
            'use strict'
            module.exports = async function (event, context, callback) {
              switch (event.query.case) {
                case 'inspect':
                  return { body: event.body, headers: event.headers, method: event.method, query: event.query, path: event.path };
                case 'status':
                  return context.status(201).headers({ 'X-Id': '7' }).succeed({ made: true });
                case 'text':
                  return 'plain text';
                case 'fail':
                  context.fail('it broke');
                  return;
                case 'fail404':
                  return context.status(404).fail(new Error('nothing here'));
                case 'throw':
                  throw new RangeError('thrown');
                case 'buffer':
                  return Buffer.from([0, 1, 2]);
                case 'callback':
                  callback(undefined, ['via', 'callback']);
                  return new Promise(() => {});
              }
            };
        """
    }

    def test_openfaas_node_template(self):
        # module.exports is the handler: found without a shape, and with one.
        for env in ({}, {"FLICK_SHAPE": "openfaas"}):
            inst = self.start_ready(files=self.OPENFAAS, handler="handler.handle", env=env)
            hs = [["content-type", "application/json"], ["x-a", "1"], ["x-a", "2"]]
            header, out = self.result(
                inst, "i", json.dumps({"k": [1]}), method="PUT", path="/p", query="case=inspect&q=1&q=2", headers=hs
            )
            self.assertEqual(header["status"], 200)
            # The template sends objects as JSON text, which Express labels text/html.
            self.assertIn(["content-type", "text/html; charset=utf-8"], header["headers"])
            got = json.loads(out)
            self.assertEqual(got["body"], {"k": [1]})
            self.assertEqual(got["headers"], {"content-type": "application/json", "x-a": "1, 2"})
            self.assertEqual((got["method"], got["path"]), ("PUT", "/p"))
            self.assertEqual(got["query"], {"case": "inspect", "q": ["1", "2"]})
            # Bodies as the template's body-parser leaves them.
            got = json.loads(self.result(inst, "t", b"hi", query="case=inspect", headers=[])[1])
            self.assertEqual(got["body"], "hi")
            form = [["content-type", "application/x-www-form-urlencoded"]]
            got = json.loads(self.result(inst, "f", b"a=1&b=2", query="case=inspect", headers=form)[1])
            self.assertEqual(got["body"], {"a": "1", "b": "2"})
            octet = [["content-type", "application/octet-stream"]]
            got = json.loads(self.result(inst, "o", b"\x00", query="case=inspect", headers=octet)[1])
            self.assertEqual(got["body"], {})
            header, out = self.result(inst, "bad", b"{nope", query="case=inspect", headers=[["content-type", "application/json"]])
            self.assertEqual(header["status"], 400)

            header, out = self.result(inst, "s", query="case=status", headers=[])
            self.assertEqual((header["status"], json.loads(out)), (201, {"made": True}))
            self.assertIn(["x-id", "7"], header["headers"])
            header, out = self.result(inst, "x", query="case=text", headers=[])
            self.assertEqual((header["status"], out), (200, b"plain text"))
            header, out = self.result(inst, "fl", query="case=fail", headers=[])
            self.assertEqual((header["status"], out), (500, b"it broke"))
            header, out = self.result(inst, "f4", query="case=fail404", headers=[])
            self.assertEqual((header["status"], out), (404, b"Error: nothing here"))
            header, out = self.result(inst, "b", query="case=buffer", headers=[])
            self.assertEqual(out, b"\x00\x01\x02")
            header, out = self.result(inst, "cb", query="case=callback", headers=[])
            self.assertEqual(json.loads(out), ["via", "callback"])
            # An exception is the function's error, as everywhere in flick.
            header, _ = inst.call("th", query="case=throw", headers=[])
            self.assertEqual((header["type"], header["error"]["type"]), ("error", "RangeError"))

    def test_gcf_express_request_and_response(self):
        files = {
            "index.js": """
                exports.helloHttp = async (req, res) => {
                  switch (req.query.case) {
                    case 'inspect':
                      return res.json({ body: req.body, raw: req.rawBody.toString(), method: req.method, path: req.path,
                                        q: req.query.q, ct: req.get('Content-Type'), url: req.url, isJson: req.is('json') });
                    case 'text':
                      return res.send(`Hello ${req.query.name || req.body.name || 'World'}!`);
                    case 'status':
                      return res.status(201).set('X-Id', '7').send({ made: true });
                    case 'chunks':
                      res.writeHead(202, { 'Content-Type': 'text/plain' });
                      res.write('a');
                      res.write(Buffer.from('b'));
                      return res.end('c');
                    case 'later':
                      setTimeout(() => res.sendStatus(204), 10);
                      return;
                    case 'redirect':
                      return res.redirect('/elsewhere');
                    case 'throw':
                      throw new RangeError('thrown');
                  }
                };
            """
        }
        inst = self.start_ready(files=files, handler="index.helloHttp", env={"FLICK_SHAPE": "gcf"})
        hs = [["content-type", "application/json"]]
        header, out = self.result(inst, "i", json.dumps({"k": 1}), method="PUT", path="/p", query="case=inspect&q=1&q=2", headers=hs)
        self.assertEqual(header["status"], 200)
        self.assertIn(["content-type", "application/json; charset=utf-8"], header["headers"])
        self.assertEqual(
            json.loads(out),
            {"body": {"k": 1}, "raw": '{"k": 1}', "method": "PUT", "path": "/p", "q": ["1", "2"],
             "ct": "application/json", "url": "/p?case=inspect&q=1&q=2", "isJson": "json"},
        )
        header, out = self.result(inst, "t", json.dumps({"name": "Ada"}), query="case=text", headers=hs)
        self.assertEqual((header["status"], out), (200, b"Hello Ada!"))
        self.assertIn(["content-type", "text/html; charset=utf-8"], header["headers"])
        header, out = self.result(inst, "s", query="case=status", headers=[])
        self.assertEqual((header["status"], json.loads(out)), (201, {"made": True}))
        self.assertIn(["x-id", "7"], header["headers"])
        header, out = self.result(inst, "c", query="case=chunks", headers=[])
        self.assertEqual((header["status"], out), (202, b"abc"))
        header, out = self.result(inst, "l", query="case=later", headers=[])
        self.assertEqual((header["status"], out), (204, b"204"))
        header, out = self.result(inst, "r", query="case=redirect", headers=[])
        self.assertEqual(header["status"], 302)
        self.assertIn(["location", "/elsewhere"], header["headers"])
        header, _ = inst.call("th", query="case=throw", headers=[])
        self.assertEqual((header["type"], header["error"]["type"]), ("error", "RangeError"))
        header, out = self.result(inst, "bad", b"{nope", query="case=inspect", headers=hs)
        self.assertEqual(header["status"], 400)

    def test_openfaas_raw_body(self):
        inst = self.start_ready(files=self.OPENFAAS, handler="handler.handle", env={"RAW_BODY": "true"})
        got = json.loads(self.result(inst, "r", b"\x00\x01", query="case=inspect")[1])
        self.assertEqual(got["body"], {"type": "Buffer", "data": [0, 1]})

    def test_callback_style_handler(self):
        files = {
            "index.js": """
                exports.handler = function (event, context, callback) {
                  if (event.fail) return setTimeout(() => callback(new RangeError('cb failed')), 5);
                  if (event.legacy) return context.succeed({ legacy: true });
                  setTimeout(() => callback(null, { cb: event.x, id: context.awsRequestId }), 5);
                };
            """
        }
        inst = self.start_ready(files=files, handler="index.handler")
        self.assertEqual(self.json_result(inst, "cb", {"x": 7}), {"cb": 7, "id": "cb"})
        header, _ = inst.call("cbf", json.dumps({"fail": True}))
        self.assertEqual((header["type"], header["error"]["type"]), ("error", "RangeError"))
        self.assertEqual(header["error"]["message"], "cb failed")
        self.assertEqual(self.json_result(inst, "leg", {"legacy": True}), {"legacy": True})

    def test_esm_handlers(self):
        mjs = {"index.mjs": "export const handler = async (event) => ({ esm: 'mjs', event });\n"}
        inst = self.start_ready(files=mjs, handler="index.handler")
        self.assertEqual(self.json_result(inst, "m", {"k": 1}), {"esm": "mjs", "event": {"k": 1}})

        typed = {
            "package.json": '{"type": "module"}\n',
            "index.js": """
                const answer = await Promise.resolve(42);
                export async function handler() { return { esm: 'type-module', answer }; }
            """,
        }
        inst = self.start_ready(files=typed, handler="index.handler")
        self.assertEqual(self.json_result(inst, "t", {}), {"esm": "type-module", "answer": 42})

    def test_cjs_and_subdirectory_handlers(self):
        files = {
            "src/app.js": "exports.handler = async () => ({ where: 'src/app.js' });\n",
            "lib.cjs": "exports.handler = async () => ({ where: 'lib.cjs' });\n",
            "node_modules/dep/index.js": "module.exports = 'from node_modules';\n",
            "withdep.js": "const dep = require('dep');\nexports.handler = async () => ({ dep });\n",
        }
        inst = self.start_ready(files=files, handler="src/app.handler")
        self.assertEqual(self.json_result(inst, "s", {}), {"where": "src/app.js"})
        inst = self.start_ready(files=files, handler="lib.handler")
        self.assertEqual(self.json_result(inst, "c", {}), {"where": "lib.cjs"})
        inst = self.start_ready(files=files, handler="withdep.handler")
        self.assertEqual(self.json_result(inst, "d", {}), {"dep": "from node_modules"})

    def test_custom_error_class_name(self):
        files = {
            "index.js": """
                class NotFound extends Error {}
                exports.handler = async () => { throw new NotFound('no such thing'); };
            """
        }
        inst = self.start_ready(files=files, handler="index.handler")
        header, _ = inst.call("nf", b"{}")
        self.assertEqual(header["error"]["type"], "NotFound")
        self.assertEqual(header["error"]["message"], "no such thing")

    def test_unhandled_rejection_fails_only_its_invocation(self):
        files = {
            "index.js": """
                exports.handler = (event) => {
                  if (event.stray) {
                    Promise.reject(new RangeError('stray rejection'));
                    return new Promise(() => {});
                  }
                  if (event.throwLater) {
                    setTimeout(() => { throw new EvalError('thrown in a timer'); }, 5);
                    return new Promise(() => {});
                  }
                  return { ok: true };
                };
            """
        }
        inst = self.start_ready(files=files, handler="index.handler")
        header, _ = inst.call("stray", json.dumps({"stray": True}))
        self.assertEqual(header["type"], "error", header)
        self.assertEqual(header["error"]["type"], "RangeError")
        self.assertEqual(header["error"]["message"], "stray rejection")
        header, _ = inst.call("timer", json.dumps({"throwLater": True}))
        self.assertEqual(header["error"]["type"], "EvalError")
        self.assertEqual(self.json_result(inst, "ok", {}), {"ok": True})
        self.assertIsNone(inst.proc.poll())

    def test_unhandled_rejection_is_attributed_among_concurrent_calls(self):
        files = {
            "index.js": """
                const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
                exports.handler = async (event, context) => {
                  if (event.stray) {
                    await sleep(20);
                    Promise.reject(new RangeError('stray ' + context.awsRequestId));
                    await new Promise(() => {});
                  }
                  await sleep(100);
                  return { ok: context.awsRequestId };
                };
            """
        }
        inst = self.start_ready(files=files, handler="index.handler", concurrency=4)
        inst.send(
            inst.invoke_frame("good1", b"{}")
            + inst.invoke_frame("bad", json.dumps({"stray": True}))
            + inst.invoke_frame("good2", b"{}")
        )
        header, _ = inst.frame_for("bad")
        self.assertEqual(header["error"]["message"], "stray bad")
        for rid in ("good1", "good2"):
            header, out = inst.frame_for(rid)
            self.assertEqual(json.loads(out), {"ok": rid})

    def test_stem_cell_concurrency_attributes_stray_rejections(self):
        # Calls overlap in Node whatever FLICK_CONCURRENCY says; what it
        # changes is how a stray rejection finds its call (AsyncLocalStorage).
        inst = self.start_stem()
        inst.specialise(self.STRAY_FILES, "index.handler", concurrency=4)
        self.assert_ready(inst)
        self.check_stray_attribution(inst)

    STRAY_FILES = {
        "index.js": """
            const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
            exports.handler = async (event, context) => {
              if (event.stray) {
                await sleep(20);
                Promise.reject(new RangeError('stray ' + context.awsRequestId));
                await new Promise(() => {});
              }
              await sleep(100);
              return { ok: context.awsRequestId };
            };
        """
    }

    def check_stray_attribution(self, inst):
        inst.send(
            inst.invoke_frame("good1", b"{}")
            + inst.invoke_frame("bad", json.dumps({"stray": True}))
            + inst.invoke_frame("good2", b"{}")
        )
        header, _ = inst.frame_for("bad")
        self.assertEqual(header["error"]["message"], "stray bad")
        for rid in ("good1", "good2"):
            header, out = inst.frame_for(rid)
            self.assertEqual(json.loads(out), {"ok": rid})

    def test_markers_survive_a_patched_stdout(self):
        files = {
            "index.js": """
                const write = process.stdout.write.bind(process.stdout);
                process.stdout.write = (chunk, ...rest) => write('[app] ' + chunk, ...rest);
                exports.handler = async () => { console.log('hello'); return {}; };
            """
        }
        inst = self.start_ready(files=files, handler="index.handler")
        self.json_result(inst, "p", {})
        self.assertEqual(inst.wait_marker("p", "stdout")[-1], b"[app] hello\n")


if __name__ == "__main__":
    unittest.main()
