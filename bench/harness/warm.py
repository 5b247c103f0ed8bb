"""2. Warm path: latency at 1 client and throughput at 32 clients, flick
against the same handler without flick, in the same run.

- python3: flick's no-op python3 function (concurrency 1, max_instances 32:
  one request per instance, as Lambda) through /fn/{name}, against the bare
  baseline: bench/baselines/python_loop.py, a single-process asyncio HTTP
  server that decodes the JSON event, calls the same handler and encodes its
  result.
- http: flick's no-op http function (one instance, concurrency 32) through
  /fn/{name}, against the very same server script hit directly.

flick runs sandboxed (the default); the same functions on a second flick with
--insecure-no-sandbox show what the sandbox costs on the warm path. With
`--baseline BINARY`, a third flick (that binary, sandboxed) serves the same
functions in the same interleaved rounds: "this build ÷ baseline build" is
then measured under the same load, which on a shared machine matters more
than any absolute figure. The load
generator is wrk (one thread, POST `{}`); see load.py for the rounds.

Then, where the time goes at 1 client: sequential requests from one Python
client on a kept-alive connection, reading flick's `Server-Timing` header
(queue, init, exec, total: flick's own timer, from taking the request to
having the function's answer) next to the client-observed time, and the same
client against the direct http server for the client's and the loop's own
share.
"""

import http.client
import os
import re
import shutil
import time

from . import load, procs, stats
from .context import BENCH
from .flick import Flick, make_function

FLICK_FUNCTIONS = {
    "python3": dict(concurrency=1, max_instances=32),
    "http": dict(concurrency=32, max_instances=1),
}


def run(ctx):
    sandboxed, unsandboxed = Flick(ctx, "warm-sandbox"), Flick(ctx, "warm-nosandbox", sandbox=False)
    servers = [(sandboxed, ""), (unsandboxed, " (no sandbox)")]
    if ctx.baseline:
        servers.append((Flick(ctx, "warm-baseline", binary=ctx.baseline), " (baseline build)"))
    direct = []
    try:
        targets = {}
        for srv, suffix in servers:
            srv.start()
            for kind, manifest in FLICK_FUNCTIONS.items():
                srv.deploy(make_function(ctx, kind, f"warm-{kind}", **manifest))
                targets[f"flick {kind}{suffix}"] = f"http://127.0.0.1:{srv.port}/fn/warm-{kind}"
        python_port, http_port = procs.free_port(), procs.free_port()
        direct.append(
            _start_direct(ctx, [ctx.python, BENCH / "baselines" / "python_loop.py"], python_port, "baseline-python")
        )
        # flick starts http functions with the `python3` on its fixed PATH; so does the baseline.
        system_python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or ctx.python
        direct.append(
            _start_direct(ctx, [system_python, BENCH / "functions" / "http" / "server.py"], http_port, "direct-http")
        )
        targets["bare python3 (baseline)"] = f"http://127.0.0.1:{python_port}/"
        targets["http server direct (baseline)"] = f"http://127.0.0.1:{http_port}/"
        results = load.measure(ctx, targets)
        labels = ["flick python3", "flick http", "http server direct (baseline)"]
        if ctx.baseline:
            labels += ["flick python3 (baseline build)", "flick http (baseline build)"]
        breakdown = {label: _breakdown(ctx, targets[label]) for label in labels}
        return {
            "targets": targets,
            "results": results,
            "comparisons": _compare(results),
            "vs_baseline_build": _vs_build(results),
            "breakdown": breakdown,
        }
    finally:
        for proc in direct:
            procs.stop(proc)
        for srv, _ in servers:
            srv.stop()


def _start_direct(ctx, cmd, port, label):
    ctx.record([f"PORT={port}"] + cmd)
    proc = procs.spawn(cmd, log_path=ctx.work / f"{label}.log", env=dict(os.environ, PORT=str(port)))
    if procs.wait_listening(port, timeout=20, proc=proc) is None:
        raise RuntimeError(f"{label} did not listen on {port}: see {ctx.work}/{label}.log")
    return proc


def _breakdown(ctx, url):
    """Medians over sequential requests (after 100 unrecorded ones) of the
    client-observed time and of each Server-Timing metric, in µs."""
    n = ctx.settings.breakdown_requests
    port, path = int(url.split(":")[2].split("/")[0]), "/" + url.split("/", 3)[3]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    client, metrics, error = [], {}, None
    deadline = time.monotonic() + 120
    try:
        for i in range(n + 100):
            if time.monotonic() > deadline:
                break
            began = time.perf_counter()
            conn.request("POST", path, body=b"{}", headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            elapsed = time.perf_counter() - began
            if i < 100:
                continue
            client.append(elapsed * 1e6)
            for name, dur in re.findall(r"(\w+);dur=([\d.]+)", resp.getheader("server-timing") or ""):
                metrics.setdefault(name, []).append(float(dur) * 1e3)
    except (OSError, http.client.HTTPException) as e:
        error = repr(e)
    finally:
        conn.close()
    out = {"requests": len(client), "client_us": stats.median(client), "error": error}
    out.update({f"{name}_us": stats.median(values) for name, values in metrics.items()})
    return out


def _compare(results):
    """flick vs its baseline: added p50 latency at 1 client (µs) and
    throughput at 32 clients as a fraction of the baseline's."""
    pairs = {
        "python3": ("flick python3", "bare python3 (baseline)"),
        "http": ("flick http", "http server direct (baseline)"),
        "python3 (no sandbox)": ("flick python3 (no sandbox)", "bare python3 (baseline)"),
        "http (no sandbox)": ("flick http (no sandbox)", "http server direct (baseline)"),
    }
    out = {}
    for name, (f, b) in pairs.items():
        fr, br = results[f], results[b]
        out[name] = {
            "added_p50_us": fr["c1"]["p50_us"] - br["c1"]["p50_us"],
            "throughput_ratio": stats.ratio(fr["c32"]["rps"], br["c32"]["rps"]),
        }
    return out


def _vs_build(results):
    """This build against the `--baseline` build, both sandboxed, same rounds:
    p50 at 1 client and throughput at 32 clients, this ÷ baseline."""
    out = {}
    for kind in FLICK_FUNCTIONS:
        this, then = results.get(f"flick {kind}"), results.get(f"flick {kind} (baseline build)")
        if not (this and then):
            continue
        out[kind] = {
            "p50_c1_us": [this["c1"]["p50_us"], then["c1"]["p50_us"]],
            "p50_c1_ratio": stats.ratio(this["c1"]["p50_us"], then["c1"]["p50_us"]),
            "rps_c32": [this["c32"]["rps"], then["c32"]["rps"]],
            "rps_c32_ratio": stats.ratio(this["c32"]["rps"], then["c32"]["rps"]),
        }
    return out
