"""Drives flick's Lambda API with boto3, as a user of AWS Lambda would.

Run by crates/cli/tests/compat_lambda_api.rs: `python lambda_boto3.py
SCENARIO` with FLICK_URL and FLICK_KEY in the environment. Each scenario
asserts what boto3 sees and prints one JSON object on its last line for the
Rust side to check against flick's own API (e.g. the record of an async call).
"""

import base64
import io
import json
import os
import sys
import zipfile

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import ClientError

URL = os.environ["FLICK_URL"]
KEY = os.environ["FLICK_KEY"]
ROLE = "arn:aws:iam::000000000000:role/lambda-role"

PY_HANDLER = """\
import os

def lambda_handler(event, context):
    print("handling", event.get("n"))
    if event.get("fail"):
        raise ValueError("asked to fail: %s" % event["fail"])
    return {
        "event": event,
        "greeting": os.environ.get("GREETING"),
        "function_name": context.function_name,
        "arn": context.invoked_function_arn,
        "memory": context.memory_limit_in_mb,
        "request_id": context.aws_request_id,
    }
"""

NODE_HANDLER = """\
exports.handler = async (event, context) => {
  console.log("node handling", JSON.stringify(event));
  return { node: true, event, name: context.functionName };
};
"""


def client(key_id="admin", secret=None, retries=1):
    return boto3.client(
        "lambda",
        endpoint_url=URL,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=KEY if secret is None else secret,
        config=Config(retries={"max_attempts": retries, "mode": "standard"}, read_timeout=120),
    )


def zip_of(files):
    """{name: text or (text, mode)} -> zip bytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, value in files.items():
            text, mode = value if isinstance(value, tuple) else (value, 0o644)
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, text)
    return out.getvalue()


def create_python(lam, name, **extra):
    args = dict(
        FunctionName=name,
        Runtime="python3.12",
        Role=ROLE,
        Handler="lambda_function.lambda_handler",
        Code={"ZipFile": zip_of({"lambda_function.py": PY_HANDLER})},
        Description="made by boto3",
        Timeout=10,
        MemorySize=256,
        Environment={"Variables": {"GREETING": "hello"}},
    )
    args.update(extra)
    return lam.create_function(**args)


def expect_error(code, status, call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except ClientError as e:
        got = e.response["Error"]["Code"]
        got_status = e.response["ResponseMetadata"]["HTTPStatusCode"]
        message = e.response["Error"].get("Message", "")
        assert (got, got_status) == (code, status), "expected %s %s, got %s %s: %s" % (code, status, got, got_status, message)
        assert message, "the error names the problem"
        return message
    raise AssertionError("expected %s, the call succeeded" % code)


def payload(resp):
    return json.loads(resp["Payload"].read())


def lifecycle():
    lam = client()
    created = create_python(lam, "py-life")
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert created["State"] == "Active" and created["LastUpdateStatus"] == "Successful", created
    assert created["Runtime"] == "python3.12" and created["Handler"] == "lambda_function.lambda_handler"
    assert created["Timeout"] == 10 and created["MemorySize"] == 256, created
    assert created["FunctionArn"] == "arn:aws:lambda:us-east-1:000000000000:function:py-life", created
    assert created["Environment"]["Variables"] == {"GREETING": "hello"}
    zip_bytes = zip_of({"lambda_function.py": PY_HANDLER})
    import hashlib

    assert created["CodeSha256"] == base64.b64encode(hashlib.sha256(zip_bytes).digest()).decode()
    assert created["CodeSize"] == len(zip_bytes)
    assert created["Description"] == "made by boto3" and created["Role"] == ROLE

    # The SDK's own waiters finish.
    lam.get_waiter("function_active_v2").wait(FunctionName="py-life", WaiterConfig={"Delay": 1, "MaxAttempts": 5})
    got = lam.get_function(FunctionName="py-life")
    assert got["Configuration"]["FunctionName"] == "py-life"
    # Code.Location: a presigned URL on flick that serves the code as a zip
    # without credentials of its own; tampering with it is refused.
    import urllib.error
    import urllib.request

    location = got["Code"]["Location"]
    with urllib.request.urlopen(location) as r:
        assert r.headers["content-type"] == "application/zip"
        downloaded = zipfile.ZipFile(io.BytesIO(r.read()))
    assert downloaded.namelist() == ["lambda_function.py"], downloaded.namelist()
    assert downloaded.read("lambda_function.py").decode() == PY_HANDLER
    for bad in [
        location.replace("Signature=", "Signature=00"),
        location.replace("Revision=1", "Revision=2"),
        location.replace("/py-life/", "/py-other/"),
        location.split("&Signature")[0],
    ]:
        try:
            urllib.request.urlopen(bad)
            raise AssertionError("a tampered code URL was served: " + bad)
        except urllib.error.HTTPError as e:
            assert e.code == 403, (bad, e.code)
    conf = lam.get_function_configuration(FunctionName="arn:aws:lambda:us-east-1:000000000000:function:py-life")
    assert conf["RevisionId"] == created["RevisionId"], (conf, created)

    node = lam.create_function(
        FunctionName="node-life",
        Runtime="nodejs20.x",
        Role=ROLE,
        Handler="index.handler",
        Code={"ZipFile": zip_of({"index.js": NODE_HANDLER})},
    )
    assert node["Runtime"] == "nodejs20.x" and node["Timeout"] == 3 and node["MemorySize"] == 128, node
    out = payload(lam.invoke(FunctionName="node-life", Payload=b'{"x": 1}'))
    assert out == {"node": True, "event": {"x": 1}, "name": "node-life"}, out

    for i in range(3):
        create_python(lam, "page-%d" % i)
    # Paging: two at a time, the paginator follows NextMarker.
    first = lam.list_functions(MaxItems=2)
    assert len(first["Functions"]) == 2 and "NextMarker" in first, first
    names = []
    for page in lam.get_paginator("list_functions").paginate(PaginationConfig={"PageSize": 2}):
        names.extend(f["FunctionName"] for f in page["Functions"])
    assert names == sorted(["py-life", "node-life", "page-0", "page-1", "page-2"]), names

    # New code: a new revision, a new hash, the new code runs.
    new_zip = zip_of({"lambda_function.py": "def lambda_handler(event, context):\n    return 'v2'\n"})
    updated = lam.update_function_code(FunctionName="py-life", ZipFile=new_zip)
    assert updated["CodeSha256"] != created["CodeSha256"] and updated["RevisionId"] != created["RevisionId"]
    lam.get_waiter("function_updated_v2").wait(FunctionName="py-life", WaiterConfig={"Delay": 1, "MaxAttempts": 5})
    assert payload(lam.invoke(FunctionName="py-life")) == "v2"

    # New settings, the same code.
    conf = lam.update_function_configuration(
        FunctionName="py-life", Timeout=20, MemorySize=512, Description="second", Environment={"Variables": {"AB": "b"}}
    )
    assert (conf["Timeout"], conf["MemorySize"], conf["Description"]) == (20, 512, "second"), conf
    assert conf["Environment"]["Variables"] == {"AB": "b"}
    assert conf["CodeSha256"] == updated["CodeSha256"], "the code stayed"
    assert payload(lam.invoke(FunctionName="py-life")) == "v2"
    stale = expect_error(
        "PreconditionFailedException", 412, lam.update_function_configuration,
        FunctionName="py-life", Timeout=5, RevisionId=created["RevisionId"],
    )

    version = lam.publish_version(FunctionName="py-life")
    assert version["Version"].isdigit(), version
    assert payload(lam.invoke(FunctionName="py-life", Qualifier=version["Version"])) == "v2"
    versions = lam.list_versions_by_function(FunctionName="py-life")["Versions"]
    assert versions[0]["Version"] == "$LATEST" and len(versions) >= 2, versions
    expect_error("InvalidParameterValueException", 400, lam.create_alias, FunctionName="py-life", Name="live", FunctionVersion="1")

    assert lam.list_tags(Resource=created["FunctionArn"])["Tags"] == {}
    concurrency = lam.get_function_concurrency(FunctionName="py-life")
    assert "ReservedConcurrentExecutions" not in concurrency, concurrency
    assert lam.get_account_settings()["AccountUsage"]["FunctionCount"] == 5
    expect_error("UnknownOperationException", 404, lam.list_layers)

    lam.delete_function(FunctionName="page-0")
    expect_error("ResourceNotFoundException", 404, lam.get_function, FunctionName="page-0")
    names = [f["FunctionName"] for f in lam.list_functions()["Functions"]]
    assert "page-0" not in names and "page-1" in names, names
    print(json.dumps({"functions": names, "stale": stale}))


def invoke():
    lam = client()
    create_python(lam, "py-inv")
    resp = lam.invoke(FunctionName="py-inv", Payload=json.dumps({"n": 1, "nested": {"a": [1, 2]}}))
    assert resp["StatusCode"] == 200 and "FunctionError" not in resp, resp
    assert resp["ExecutedVersion"] == "$LATEST"
    out = payload(resp)
    # The payload is the event verbatim, the return value the raw result.
    assert out["event"] == {"n": 1, "nested": {"a": [1, 2]}}, out
    assert out["greeting"] == "hello" and out["function_name"] == "py-inv", out
    assert out["arn"] == "arn:aws:lambda:us-east-1:000000000000:function:py-inv", out
    assert int(out["memory"]) == 256, out
    assert out["request_id"] == resp["ResponseMetadata"]["RequestId"], (out, resp["ResponseMetadata"])

    tail = lam.invoke(FunctionName="py-inv", Payload=b'{"n": 42}', LogType="Tail")
    log = base64.b64decode(tail["LogResult"]).decode()
    assert "handling 42" in log and log.startswith("START RequestId") and "REPORT RequestId" in log, log
    assert "Memory Size: 256 MB" in log, log
    assert len(base64.b64decode(tail["LogResult"])) <= 4096

    dry = lam.invoke(FunctionName="py-inv", InvocationType="DryRun")
    assert dry["StatusCode"] == 204, dry

    queued = lam.invoke(FunctionName="py-inv", InvocationType="Event", Payload=b'{"n": 7}')
    assert queued["StatusCode"] == 202, queued

    failed = lam.invoke(FunctionName="py-inv", Payload=b'{"fail": "on purpose"}')
    assert failed["StatusCode"] == 200 and failed["FunctionError"] == "Unhandled", failed
    err = payload(failed)
    assert err["errorType"] == "ValueError" and "asked to fail: on purpose" in err["errorMessage"], err
    assert isinstance(err["stackTrace"], list) and err["stackTrace"], err

    slow = zip_of({"slow.py": "import time\ndef handler(event, context):\n    time.sleep(5)\n"})
    lam.create_function(FunctionName="py-slow", Runtime="python3.11", Role=ROLE, Handler="slow.handler", Code={"ZipFile": slow}, Timeout=1)
    timed_out = lam.invoke(FunctionName="py-slow")
    assert timed_out["StatusCode"] == 200 and timed_out["FunctionError"] == "Unhandled", timed_out
    err = payload(timed_out)
    assert err["errorType"] == "Sandbox.Timedout" and err["errorMessage"], err

    # A client context reaches the handler's context.
    ctx = base64.b64encode(json.dumps({"custom": {"who": "boto3"}}).encode()).decode()
    echo = zip_of({"echo.py": "def handler(event, context):\n    cc = context.client_context\n    return getattr(cc, 'custom', None) if cc is not None else None\n"})
    lam.create_function(FunctionName="py-ctx", Runtime="python3.12", Role=ROLE, Handler="echo.handler", Code={"ZipFile": echo})
    assert payload(lam.invoke(FunctionName="py-ctx", ClientContext=ctx)) == {"who": "boto3"}

    legacy = lam.invoke_async(FunctionName="py-inv", InvokeArgs=b'{"n": 8}')
    assert legacy["Status"] == 202, legacy
    print(json.dumps({"async": queued["ResponseMetadata"]["RequestId"], "legacy": legacy["ResponseMetadata"]["RequestId"]}))


BASH_BOOTSTRAP = """\
#!/bin/bash
set -euo pipefail
source $LAMBDA_TASK_ROOT/"$(echo $_HANDLER | cut -d. -f1).sh"
while true
do
  HEADERS="$(mktemp)"
  EVENT_DATA=$(curl -sS -LD "$HEADERS" "http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation/next")
  REQUEST_ID=$(grep -Fi Lambda-Runtime-Aws-Request-Id "$HEADERS" | tr -d '[:space:]' | cut -d: -f2)
  RESPONSE=$($(echo "$_HANDLER" | cut -d. -f2) "$EVENT_DATA")
  curl "http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation/$REQUEST_ID/response"  -d "$RESPONSE"
done
"""

BASH_FUNCTION = """\
function handler () {
  echo "{\\"echo\\": $1}"
}
"""


def provided():
    lam = client()
    # The AWS custom-runtime tutorial's shape: a bash bootstrap with curl.
    code = zip_of({"bootstrap": (BASH_BOOTSTRAP, 0o755), "function.sh": BASH_FUNCTION})
    created = lam.create_function(
        FunctionName="bash-fn", Runtime="provided.al2023", Role=ROLE, Handler="function.handler", Code={"ZipFile": code}
    )
    assert created["Runtime"] == "provided.al2023" and created["State"] == "Active", created
    out = payload(lam.invoke(FunctionName="bash-fn", Payload=b'{"n": 1}'))
    assert out == {"echo": {"n": 1}}, out
    # A zip without its bootstrap is refused, naming it.
    message = expect_error(
        "InvalidParameterValueException", 400, lam.create_function,
        FunctionName="no-boot", Runtime="provided", Role=ROLE, Code={"ZipFile": zip_of({"function.sh": BASH_FUNCTION})},
    )
    print(json.dumps({"no_bootstrap": message}))


def bad_input():
    lam = client()
    create_python(lam, "exists")
    messages = {}
    messages["missing"] = expect_error("ResourceNotFoundException", 404, lam.invoke, FunctionName="nope", Payload=b"{}")
    messages["missing_get"] = expect_error("ResourceNotFoundException", 404, lam.get_function, FunctionName="nope")
    messages["missing_delete"] = expect_error("ResourceNotFoundException", 404, lam.delete_function, FunctionName="nope")
    messages["duplicate"] = expect_error("ResourceConflictException", 409, create_python, lam, "exists")
    messages["runtime"] = expect_error("InvalidParameterValueException", 400, create_python, lam, "bad-rt", Runtime="java21")
    dotdot = zip_of({"lambda_function.py": PY_HANDLER, "../evil.py": "x = 1"})
    messages["dotdot"] = expect_error("InvalidParameterValueException", 400, create_python, lam, "bad-zip", Code={"ZipFile": dotdot})
    absolute = zip_of({"lambda_function.py": PY_HANDLER, "/etc/evil": "x"})
    messages["absolute"] = expect_error("InvalidParameterValueException", 400, create_python, lam, "bad-abs", Code={"ZipFile": absolute})
    bomb = zip_of({"lambda_function.py": PY_HANDLER, "zeros.bin": b"\0" * (64 << 20)})
    assert len(bomb) < 200_000, len(bomb)
    messages["bomb"] = expect_error("InvalidParameterValueException", 400, create_python, lam, "bad-bomb", Code={"ZipFile": bomb})
    messages["not_zip"] = expect_error("InvalidParameterValueException", 400, create_python, lam, "bad-notzip", Code={"ZipFile": b"not a zip"})
    messages["handler"] = expect_error("InvalidParameterValueException", 400, create_python, lam, "bad-handler", Handler="nothere.handler")
    messages["timeout"] = expect_error("InvalidParameterValueException", 400, create_python, lam, "bad-timeout", Timeout=901)
    messages["name"] = expect_error("InvalidParameterValueException", 400, create_python, lam, "bad/name")
    big = b'{"pad": "' + b"x" * (6 * 1024 * 1024 + 10) + b'"}'
    messages["too_large"] = expect_error("RequestTooLargeException", 413, lam.invoke, FunctionName="exists", Payload=big)
    big_async = b'{"pad": "' + b"x" * (300 * 1024) + b'"}'
    messages["too_large_async"] = expect_error(
        "RequestTooLargeException", 413, lam.invoke, FunctionName="exists", Payload=big_async, InvocationType="Event"
    )
    # Malformed JSON, which no SDK sends: signed by botocore's own signer.
    status, headers, body = signed_raw("POST", "/2015-03-31/functions", b'{"FunctionName": "half"')
    assert status == 400 and headers.get("x-amzn-errortype") == "InvalidRequestContentException", (status, body)
    messages["malformed"] = json.loads(body)["message"]
    names = [f["FunctionName"] for f in lam.list_functions()["Functions"]]
    assert names == ["exists"], "a refused request changes nothing: %s" % names
    print(json.dumps(messages))


def signed_raw(method, path, body):
    """Sends `body` as is, signed with botocore's SigV4 signer."""
    import urllib.error
    import urllib.request

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method=method, url=URL + path, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials("admin", KEY), "lambda", "us-east-1").add_auth(request)
    prepared = request.prepare()
    raw = urllib.request.Request(prepared.url, data=body, headers=dict(prepared.headers), method=method)
    try:
        with urllib.request.urlopen(raw) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def auth():
    messages = {}
    messages["wrong_secret"] = expect_error("InvalidSignatureException", 403, client(secret="not-the-key").list_functions)
    messages["unknown_key"] = expect_error("UnrecognizedClientException", 403, client(key_id="nobody").list_functions)
    messages["wrong_secret_create"] = expect_error(
        "InvalidSignatureException", 403, create_python, client(secret="not-the-key"), "sneaky"
    )
    assert client().list_functions()["Functions"] == [], "the refused create changed nothing"
    print(json.dumps(messages))


if __name__ == "__main__":
    {"lifecycle": lifecycle, "invoke": invoke, "provided": provided, "bad_input": bad_input, "auth": auth}[sys.argv[1]]()
