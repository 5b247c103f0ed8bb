"""2. Warm path: latency at 1 client and throughput at 32 clients, flick
against the same handler without flick, in the same run.

- python3: flick's no-op python3 function (concurrency 1, max_instances 32:
  one request per instance, as Lambda) through /fn/{name}, against the bare
  baseline: bench/baselines/python_loop.py, a single-process asyncio HTTP
  server that decodes the JSON event, calls the same handler and encodes its
  result.
- http: flick's no-op http function (one instance, concurrency 32) through
  /fn/{name}, against the very same server script hit directly. That server
  keeps connections alive; two more http functions answer each request and
  close its connection, as many servers people deploy do, so flick must open
  an upstream connection per request: http-stdlib (`http.server`, HTTP/1.0)
  and http-gunicorn (gunicorn's default sync worker, from PyPI through the
  function's requirements.txt). Each is measured against the same server
  started directly (sandboxed flick only).

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

Last, CPU per request at 32 clients: for a fixed number of requests
(`cpu_requests`, wrk with wrk/count.lua), utime + stime of `flick up` (all
its threads) and of every process below it (the instances: the python3
bootstrap, the http servers, the sandbox's waiting parents) from
/proc/<pid>/stat before and after, divided by the count; the same for the
directly-started baselines' processes.
"""

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import time

from . import deps, load, procs, stats
from .context import BENCH
from .flick import Flick, make_function

FLICK_FUNCTIONS = {
    "python3": dict(concurrency=1, max_instances=32),
    "http": dict(concurrency=32, max_instances=1),
}
# http functions whose servers close every connection: sandboxed flick only.
CLOSING_FUNCTIONS = {
    "http-stdlib": dict(concurrency=32, max_instances=1),
    "http-gunicorn": dict(concurrency=32, max_instances=1),
}
# Each closing function's directly-started baseline: (label, the command in its directory).
CLOSING_DIRECT = {
    "http-stdlib": ("http.server direct (baseline)", "server.py"),
    "http-gunicorn": ("gunicorn direct (baseline)", "serve.py"),
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
        for kind, manifest in CLOSING_FUNCTIONS.items():
            sandboxed.deploy(make_function(ctx, kind, f"warm-{kind}", **manifest))
            targets[f"flick {kind}"] = f"http://127.0.0.1:{sandboxed.port}/fn/warm-{kind}"
        ports = {}
        python_port, http_port = procs.free_port(), procs.free_port()
        direct_python = _start_direct(
            ctx, [ctx.python, BENCH / "baselines" / "python_loop.py"], python_port, "baseline-python"
        )
        direct.append(direct_python)
        # flick starts http functions with the `python3` on its fixed PATH; so does the baseline.
        system_python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or ctx.python
        direct_http = _start_direct(
            ctx, [system_python, BENCH / "functions" / "http" / "server.py"], http_port, "direct-http"
        )
        direct.append(direct_http)
        targets["bare python3 (baseline)"] = f"http://127.0.0.1:{python_port}/"
        targets["http server direct (baseline)"] = f"http://127.0.0.1:{http_port}/"
        pids = {"bare python3 (baseline)": direct_python.pid, "http server direct (baseline)": direct_http.pid}
        for kind, (label, script) in CLOSING_DIRECT.items():
            fn_dir = deps.function_with_requirements(ctx, kind)
            ports[kind] = procs.free_port()
            proc = _start_direct(ctx, [system_python, fn_dir / script], ports[kind], f"direct-{kind}", cwd=fn_dir)
            direct.append(proc)
            targets[label] = f"http://127.0.0.1:{ports[kind]}/"
            pids[label] = proc.pid
        results = load.measure(ctx, targets)
        labels = ["flick python3", "flick http", "http server direct (baseline)"]
        for kind, (label, _) in CLOSING_DIRECT.items():
            labels += [f"flick {kind}", label]
        if ctx.baseline:
            labels += ["flick python3 (baseline build)", "flick http (baseline build)"]
        breakdown = {label: _breakdown(ctx, targets[label]) for label in labels}
        cpu = {}
        for kind in list(FLICK_FUNCTIONS) + list(CLOSING_FUNCTIONS):
            label = f"flick {kind}"
            cpu[label] = _cpu_per_request(ctx, label, targets[label], sandboxed.pid, split=True)
        for label, pid in pids.items():
            cpu[label] = _cpu_per_request(ctx, label, targets[label], pid, split=False)
        return {
            "targets": targets,
            "results": results,
            "comparisons": _compare(results),
            "vs_baseline_build": _vs_build(results),
            "breakdown": breakdown,
            "cpu_per_request": cpu,
        }
    finally:
        for proc in direct:
            procs.stop(proc)
        for srv, _ in servers:
            srv.stop()


def _start_direct(ctx, cmd, port, label, cwd=None):
    ctx.record([f"PORT={port}"] + cmd)
    proc = procs.spawn(cmd, log_path=ctx.work / f"{label}.log", env=dict(os.environ, PORT=str(port)), cwd=cwd)
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


def _cpu_per_request(ctx, label, url, pid, split):
    """CPU µs per request over `cpu_requests` requests at 32 clients (wrk,
    wrk/count.lua): `pid`'s own (flick, or a direct server) and, with
    `split`, that of every process below it (flick's instances) apart;
    without, the whole tree's."""
    n = ctx.settings.cpu_requests
    cmd = ["wrk", "-t1", "-c32", "-d300s", "--timeout", "10s", "-s", BENCH / "wrk" / "count.lua", url]
    ctx.record([f"WRK_REQUESTS={n}"] + cmd)
    marker = ctx.work / "wrk-count.done"
    marker.unlink(missing_ok=True)
    env = dict(os.environ, WRK_REQUESTS=str(n), WRK_DONE_FILE=str(marker))
    before = procs.tree_cpu(pid)
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 330
    # wrk's main thread sleeps for all of -d: once the count is reached (the
    # script's marker), SIGINT ends the sleep and wrk reports.
    while proc.poll() is None and time.monotonic() < deadline:
        if marker.exists():
            proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
    if proc.poll() is None:
        proc.kill()
    stdout, stderr = proc.communicate(timeout=30)
    # In-flight requests (at most 32 of n) finish after wrk stops; let them.
    time.sleep(0.2)
    after = procs.tree_cpu(pid)
    line = next((x for x in stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        return {"error": f"wrk printed no result: {stdout[-300:]} {stderr[-300:]}"}
    result = json.loads(line[len("WRK_JSON ") :])
    requests = result["requests"]
    errors = sum(result["errors"].values())
    own = after.get(pid, 0.0) - before.get(pid, 0.0)
    total = procs.cpu_delta(before, after)
    row = {
        "requests": requests,
        "errors": errors,
        "seconds": result["duration_us"] / 1e6,
        "rps": requests / (result["duration_us"] / 1e6) if result["duration_us"] else None,
        "own_us": own / requests * 1e6 if requests else None,
        "total_us": total / requests * 1e6 if requests else None,
        "processes": len(after),
        "tick_us": 1e6 / procs.CLOCK_TICKS / requests if requests else None,
    }
    if split:
        row["below_us"] = row["total_us"] - row["own_us"] if requests else None
    ctx.log(
        f"  cpu {label}: {requests} requests, own {row['own_us'] or 0:.1f} µs/request,"
        f" tree {row['total_us'] or 0:.1f} µs/request"
    )
    return row


def _compare(results):
    """flick vs its baseline: added p50 latency at 1 client (µs) and
    throughput at 32 clients as a fraction of the baseline's."""
    pairs = {
        "python3": ("flick python3", "bare python3 (baseline)"),
        "http": ("flick http", "http server direct (baseline)"),
        "python3 (no sandbox)": ("flick python3 (no sandbox)", "bare python3 (baseline)"),
        "http (no sandbox)": ("flick http (no sandbox)", "http server direct (baseline)"),
    }
    for kind, (label, _) in CLOSING_DIRECT.items():
        pairs[kind] = (f"flick {kind}", label)
    out = {}
    for name, (f, b) in pairs.items():
        fr, br = results.get(f), results.get(b)
        if not (fr and br):
            continue
        a, z = fr["c1"]["p50_us"], br["c1"]["p50_us"]
        out[name] = {
            "added_p50_us": None if a is None or z is None else a - z,
            "throughput_ratio": stats.ratio(fr["c32"]["rps"], br["c32"]["rps"]),
        }
    # The sandbox's cost in the tail: p99 at 32 clients, sandboxed ÷ not.
    for kind in FLICK_FUNCTIONS:
        on, off = results.get(f"flick {kind}"), results.get(f"flick {kind} (no sandbox)")
        if on and off:
            out[kind]["p99_c32_sandbox_ratio"] = stats.ratio(on["c32"]["p99_us"], off["c32"]["p99_us"])
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
