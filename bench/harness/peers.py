"""5. Peers side by side: Google's functions-framework and serverless-offline,
serving the same no-op handlers as flick, in the same run.

- cold: process start → first response. The server process is spawned with
  nothing running; the clock runs from just before the spawn to the end of
  the first 200 response (the port is polled every 2 ms, then the first POST
  is sent). flick is measured the same way: `flick up` on a data dir where
  the python3 and node functions are already deployed, so its first response
  includes the platform's start-up (sandbox probe included) and the
  function's cold start. serverless-offline's first Python and first Node
  call are reported too (it starts a handler's runtime on its first call).
- idle memory: RSS and PSS summed over the server's process tree, 1 s after
  its first responses (flick: the platform plus one python3 and one node
  instance; serverless-offline: after one Python and one Node call).
- warm: latency at 1 client and throughput at 32, with all servers up at
  once and measured in interleaved rounds (load.py).

functions-framework runs with its own defaults (`functions-framework
--target handler`: gunicorn, 1 worker, 8 threads with 2 CPUs).
serverless-offline runs as `serverless offline` (v13 on serverless 3) with
telemetry and notifications off. A peer that cannot be installed or started
is reported with its error; the rest goes on.
"""

import os
import time
import traceback

from . import deps, httpc, load, procs, stats
from .context import BENCH
from .flick import Flick, make_function

FF_DIR = BENCH / "peers" / "functions-framework"


def run(ctx):
    out = {"errors": {}, "cold": {}, "memory": {}, "warm": {}, "servers": {}}
    servers = {"flick": _flick_server(ctx)}
    for name, make in (("functions-framework", _ff_server), ("serverless-offline", _sls_server)):
        try:
            servers[name] = make(ctx)
        except Exception as e:
            out["errors"][name] = f"install: {e}"
            ctx.log(f"peers: {name} is unavailable: {e}")

    for name, server in servers.items():
        n = ctx.settings.sls_cold_samples if name == "serverless-offline" else ctx.settings.peer_cold_samples
        try:
            samples = []
            for i in range(n):
                ctx.log(f"peers: {name} cold start {i + 1}/{n}")
                samples.append(_process_cold(ctx, server, measure_memory=i < ctx.settings.peer_memory_samples))
            out["cold"][name] = _summarize_cold(samples)
            out["memory"][name] = _summarize_memory(samples)
        except Exception as e:
            out["errors"][name] = f"cold start: {e}"
            ctx.log(f"peers: {name} failed: {traceback.format_exc()}")

    running = []
    try:
        targets = {}
        for name, server in servers.items():
            if name in out["errors"]:
                continue
            proc = _start(ctx, server)
            running.append((server, proc))
            for label, path in server["targets"].items():
                targets[label] = f"http://127.0.0.1:{server['port']}{path}"
        out["warm"] = load.measure(ctx, targets)
    finally:
        for server, proc in running:
            procs.stop(proc)
            server.get("cleanup", lambda: None)()
    out["servers"] = {k: {"command": v["display"]} for k, v in servers.items()}
    out["comparisons"] = _compare(out)
    return out


# --- the servers ----------------------------------------------------------------
# Each is a dict: how to start it on a fresh port, which calls make its
# first response, and which URLs the warm benchmark loads.


def _flick_server(ctx):
    srv = Flick(ctx, "peers")
    with srv:
        for kind, name in (("python3", "peer-python3"), ("node", "peer-node")):
            srv.deploy(make_function(ctx, kind, name, concurrency=1, max_instances=32))

    def command(port, _):
        srv.requested_port = port
        return srv.command()

    return {
        "command": command,
        "display": "flick up --listen 127.0.0.1:PORT --data-dir DIR  (python3 + node functions deployed)",
        "first_calls": {"python3": "/fn/peer-python3", "node": "/fn/peer-node"},
        "targets": {"flick python3": "/fn/peer-python3", "flick node": "/fn/peer-node"},
        "log": "flick-peers-cold.log",
        "cleanup": srv.remove_cgroup_scope,
    }


def _ff_server(ctx):
    exe = deps.ensure_functions_framework(ctx)
    source = FF_DIR / "main.py"

    def command(port, _):
        return [exe, "--target", "handler", "--source", source, "--host", "127.0.0.1", "--port", port]

    return {
        "command": command,
        "cwd": FF_DIR,
        "display": "functions-framework --target handler --source main.py --host 127.0.0.1 --port PORT",
        "first_calls": {"python3": "/"},
        "targets": {"functions-framework python3": "/"},
        "log": "functions-framework.log",
    }


def _sls_server(ctx):
    exe = deps.ensure_serverless(ctx)

    def command(port, lambda_port):
        return [exe, "offline", "--httpPort", port, "--lambdaPort", lambda_port]

    return {
        "command": command,
        "cwd": deps.SLS_DIR,
        "env": deps.SLS_ENV,
        "display": "serverless offline --httpPort PORT --lambdaPort PORT  (in bench/peers/serverless)",
        "first_calls": {"python3": "/py", "node": "/node"},
        "targets": {"serverless-offline python3": "/py", "serverless-offline node": "/node"},
        "log": "serverless-offline.log",
    }


def _spawn(ctx, server):
    port, second = procs.free_port(), procs.free_port()
    cmd = server["command"](port, second)
    ctx.record([f"{k}={v}" for k, v in server.get("env", {}).items() if k.startswith("SLS_")] + cmd)
    env = dict(os.environ, **server.get("env", {}))
    proc = procs.spawn(cmd, log_path=ctx.work / server["log"], cwd=server.get("cwd"), env=env)
    return proc, port


def _start(ctx, server):
    """Starts a server for the warm benchmark and waits for its first responses."""
    proc, server["port"] = _spawn(ctx, server)
    for path in server["first_calls"].values():
        seconds, resp = httpc.poll_until_ok(server["port"], path, timeout=60, interval=0.05, proc=proc)
        if seconds is None:
            raise RuntimeError(f"{server['display']}: no 200 from {path}: {resp}")
    return proc


def _process_cold(ctx, server, measure_memory):
    began = time.perf_counter()
    proc, port = _spawn(ctx, server)
    try:
        listen_s = procs.wait_listening(port, timeout=60, proc=proc)
        if listen_s is None:
            raise RuntimeError(f"did not listen within 60 s (see {ctx.work}/{server['log']})")
        sample = {"listen_ms": (time.perf_counter() - began) * 1e3, "first_call_ms": {}}
        for label, path in server["first_calls"].items():
            seconds, resp = httpc.poll_until_ok(port, path, timeout=30, proc=proc)
            if seconds is None:
                raise RuntimeError(f"no 200 from {path}: {resp}")
            sample["first_call_ms"][label] = resp.seconds * 1e3
            if "first_response_ms" not in sample:
                sample["first_response_ms"] = (time.perf_counter() - began) * 1e3
        if measure_memory:
            time.sleep(1.0)
            sample["memory"] = procs.tree_memory(proc.pid)
        return sample
    finally:
        procs.stop(proc)
        server.get("cleanup", lambda: None)()


def _summarize_cold(samples):
    calls = samples[0]["first_call_ms"].keys()
    return {
        "first_response_ms": stats.summarize([s["first_response_ms"] for s in samples]),
        "listen_ms": stats.summarize([s["listen_ms"] for s in samples]),
        "first_call_ms": {c: stats.summarize([s["first_call_ms"][c] for s in samples]) for c in calls},
        "samples": samples,
    }


def _summarize_memory(samples):
    mems = [s["memory"] for s in samples if "memory" in s]
    return {
        "rss_kib": stats.median([m["rss_kib"] for m in mems]),
        "pss_kib": stats.median([m["pss_kib"] for m in mems]),
        "processes": stats.median([m["processes"] for m in mems]),
    }


def _compare(out):
    """flick's figures divided by each peer's (below 1 = flick is smaller/faster
    for times and memory; above 1 = flick serves more for throughput)."""
    cmp = {}
    f_cold = out["cold"].get("flick", {}).get("first_response_ms", {}).get("p50")
    f_mem = out["memory"].get("flick", {}).get("rss_kib")
    warm = out.get("warm") or {}
    for peer, runtimes in (
        ("functions-framework", {"python3": "functions-framework python3"}),
        ("serverless-offline", {"python3": "serverless-offline python3", "node": "serverless-offline node"}),
    ):
        if peer in out["errors"]:
            continue
        row = {
            "cold_start_ratio": stats.ratio(f_cold, out["cold"].get(peer, {}).get("first_response_ms", {}).get("p50")),
            "idle_rss_ratio": stats.ratio(f_mem, out["memory"].get(peer, {}).get("rss_kib")),
        }
        for rt, label in runtimes.items():
            f, p = warm.get(f"flick {rt}"), warm.get(label)
            if f and p:
                row[f"{rt}_throughput_ratio"] = stats.ratio(f["c32"]["rps"], p["c32"]["rps"])
                row[f"{rt}_p50_c1_ratio"] = stats.ratio(f["c1"]["p50_us"], p["c1"]["p50_us"])
                row[f"{rt}_p99_c32_ratio"] = stats.ratio(f["c32"]["p99_us"], p["c32"]["p99_us"])
        cmp[peer] = row
    return cmp
