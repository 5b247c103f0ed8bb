"""The bare baseline of the python3 warm benchmark.

The same no-op handler flick runs (bench/functions/python3/main.py), called
once per request by a minimal single-process asyncio HTTP server (the loop of
bench/functions/http/server.py). Per request it does what any Lambda-style
runtime must at least do: decode the JSON event, call handler(event, context)
and encode its result as JSON. No platform: no routing, scheduling, sandbox,
log capture or activation record.

Usage: PORT=8000 python3 bench/baselines/python_loop.py
"""

import asyncio
import importlib.util
import itertools
import json
import os
import sys

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Context:
    """The few Lambda context fields a handler commonly reads."""

    function_name = "bench-python3"
    memory_limit_in_mb = 256

    def __init__(self, request_id):
        self.aws_request_id = request_id


def main():
    server = _load(os.path.join(BENCH, "functions", "http", "server.py"), "bench_server")
    handler = _load(os.path.join(BENCH, "functions", "python3", "main.py"), "bench_handler").handler
    ids = itertools.count()

    def respond(body):
        event = json.loads(body) if body else {}
        return json.dumps(handler(event, Context(str(next(ids))))).encode()

    asyncio.run(server.serve(int(os.environ.get("PORT") or sys.argv[1]), respond))


if __name__ == "__main__":
    main()
