"""3. Bursts against scaled-to-zero functions.

- same: 200 simultaneous requests to one python3 function at zero instances
  (defaults: max_instances 10, concurrency 1, timeout 30s), so 10 instances
  start and the rest queue for a slot (or get 429 at the deadline).
- distinct: 1 request each to 50 different python3 functions, all at zero.

Every request has its own connection; all connections are opened first and
the requests released together. Statuses are counted as 200 / 429 / other
(any other status, a connection error or no answer within timeout + 15 s).
Each burst runs on a sandboxed and an unsandboxed flick, `burst_reps` times,
with flick's default settings (`max_queue`, `queue_timeout`, `stem_cells`).
The distinct burst's rate is requests ÷ wall time (50 ÷ wall: cold starts
per second when all 50 are cold starts, which the activation records say).
"""

import time

from . import httpc, stats
from .flick import Flick, make_function

TIMEOUT_S = 30  # the functions' `timeout` (the manifest default)


def run(ctx):
    s = ctx.settings
    out = {}
    for mode, sandbox in (("sandbox", True), ("no-sandbox", False)):
        with Flick(ctx, f"burst-{'sandbox' if sandbox else 'nosandbox'}", sandbox=sandbox) as srv:
            srv.deploy(make_function(ctx, "python3", "burst-same", keep_alive="100ms"))
            distinct = [f"burst-{i:02d}" for i in range(s.distinct_cold)]
            for name in distinct:
                srv.deploy(make_function(ctx, "python3", name, keep_alive="100ms"))
            runs = {"same": [], "distinct": []}
            for rep in range(s.burst_reps):
                ctx.log(f"burst ({mode}): {s.burst_size} requests to one function, rep {rep + 1}/{s.burst_reps}")
                runs["same"].append(_burst(srv, ["burst-same"] * s.burst_size, ["burst-same"]))
                ctx.log(f"burst ({mode}): 1 request each to {len(distinct)} functions, rep {rep + 1}/{s.burst_reps}")
                runs["distinct"].append(_burst(srv, distinct, distinct))
            out[mode] = {kind: _summarize(reps) for kind, reps in runs.items()}
    return out


def _burst(srv, names, all_names):
    if not srv.wait_instances(all_names, 0, timeout=15):
        raise RuntimeError("functions did not scale to zero before the burst")
    time.sleep(0.2)
    wall, results = httpc.burst(srv.port, [f"/fn/{n}" for n in names], timeout=TIMEOUT_S + 15)
    # flick's view: how many requests were cold starts, and the longest queueing.
    records = [srv.activation(r["activation"]) for r in results if r["activation"]]
    return {
        "wall_s": wall,
        "per_s": len(names) / wall if wall else None,
        "results": results,
        "cold": sum(1 for a in records if a.get("cold")),
        "prewarmed": sum(1 for a in records if a.get("prewarmed")),
        "max_wait_ms": max((a.get("wait_ms") or 0 for a in records), default=None),
        "max_init_ms": max((a.get("init_ms") or 0 for a in records), default=None),
    }


def _summarize(reps):
    statuses = {"200": 0, "429": 0, "other": 0}
    other = {}
    latencies = []
    for rep in reps:
        for r in rep["results"]:
            key = str(r["status"]) if r["status"] in (200, 429) else "other"
            statuses[key] += 1
            if key == "other":
                other[str(r["status"])] = other.get(str(r["status"]), 0) + 1
            if r["seconds"] is not None:
                latencies.append(r["seconds"] * 1e3)
    return {
        "requests": sum(len(rep["results"]) for rep in reps),
        "statuses": statuses,
        "other": other,
        "latency_ms": stats.summarize(latencies),
        "wall_s": stats.summarize([rep["wall_s"] for rep in reps]),
        "per_s": stats.median([rep["per_s"] for rep in reps]),
        "cold": [rep["cold"] for rep in reps],
        "prewarmed": [rep["prewarmed"] for rep in reps],
        "max_wait_ms": [rep["max_wait_ms"] for rep in reps],
        "max_init_ms": [rep["max_init_ms"] for rep in reps],
        "reps": [{k: v for k, v in rep.items() if k != "results"} for rep in reps],
    }
