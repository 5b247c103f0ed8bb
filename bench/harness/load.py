"""Steady load with wrk: latency at 1 client, throughput at 32 clients.

Targets are measured in interleaved rounds (A B C, B C A, ...) so slow drift
on a shared machine hits every target alike; each figure is the median over
rounds of that round's wrk result.
"""

import json
import subprocess

from . import stats
from .context import BENCH

SCRIPT = BENCH / "wrk" / "post.lua"
CONCURRENCIES = (1, 32)


def wrk(ctx, url, connections, seconds):
    """One wrk run (one thread: the second core is left to the server)."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", SCRIPT, url]
    ctx.record(cmd)
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            result = json.loads(line[len("WRK_JSON ") :])
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            return result
    raise RuntimeError(f"wrk printed no result: {out.stdout[-500:]} {out.stderr[-500:]}")


def measure(ctx, targets, rounds=None):
    """`targets`: {label: url}. Returns {label: {"c1": summary, "c32": summary}},
    a summary holding the medians over rounds of rps, p50, p99 and the rounds.
    `rounds` defaults to the settings' `warm_rounds`."""
    s = ctx.settings
    rounds = rounds or s.warm_rounds
    labels = list(targets)
    for label in labels:
        ctx.log(f"  warm-up {label} ({s.warm_warmup:g}s at 32 clients)")
        wrk(ctx, targets[label], 32, s.warm_warmup)
    runs = {label: {c: [] for c in CONCURRENCIES} for label in labels}
    for c in CONCURRENCIES:
        for r in range(rounds):
            order = labels[r % len(labels) :] + labels[: r % len(labels)]
            for label in order:
                result = wrk(ctx, targets[label], c, s.warm_seconds)
                runs[label][c].append(result)
                ctx.log(
                    f"  {label:<28} c={c:<2} round {r + 1}: {result['rps']:8.0f} req/s"
                    f"  p50 {result['latency_us']['p50']:6.0f} µs  p99 {result['latency_us']['p99']:7.0f} µs"
                )
    return {label: {f"c{c}": _summary(runs[label][c]) for c in CONCURRENCIES} for label in labels}


def _summary(runs):
    errors = {k: sum(r["errors"][k] for r in runs) for k in runs[0]["errors"]}
    return {
        "rps": stats.median([r["rps"] for r in runs]),
        "p50_us": stats.median([r["latency_us"]["p50"] for r in runs]),
        "p99_us": stats.median([r["latency_us"]["p99"] for r in runs]),
        "requests": sum(r["requests"] for r in runs),
        "errors": errors,
        "rounds": runs,
    }
