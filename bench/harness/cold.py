"""1. Cold start: scaled to zero → first response, per runtime, with and
without the sandbox.

flick keeps a few started, function-less "stem cells" per interpreter
(`stem_cells`, default 1) and turns one into an instance on a cold start, so
a lone cold start of a python3 or node function pays neither interpreter
start-up nor sandbox set-up. A python3 revision that comes back from zero a
second time also gets a fork template (`fork_templates`): from then on its
cold starts take a fork made ahead. The default servers measure that (their
python3 samples after the second). Two servers run with
`fork_templates = "off"`: their python3 cold starts are a stem cell's, a
revision's first cold start. Two more run with `stem_cells = 0` (and no
templates): their python3 and node cold starts start the interpreter (and
the sandbox) from nothing, which is what a cold start costs once the stem
cells are used up (e.g. several cold starts at once, see the burst section).

All servers run side by side, each with one no-op function per runtime
(keep_alive = 100ms, max_instances = 1). Samples go round-robin over
runtimes and servers. Before each sample every bench function on every
server must be back at zero instances (polled on /v1/instances), then 100 ms
more pass so the previous instance's teardown is not measured and a used
stem cell has been replaced. The figure is the client-observed time from
sending the POST (on an open connection) to the last byte of the response;
flick's own `init_ms` comes from the activation record.

With `--baseline BINARY`, that binary (e.g. a build of an older commit) runs
as one more sandboxed server with the default settings, sampled in the same
rounds, so a change can be compared with what it replaced on equal terms.

After idleness: separate sandboxed servers with default settings, one per
runtime (python3, node, exec; and the same with the baseline binary), each
with one function and no other traffic, are left alone for `idle_seconds`
(60 s) before each cold start. One server per runtime so that one runtime's
cold start does not wake the server another runtime is then measured on;
the samples follow each other 0.5 s apart, so a refilling stem cell of the
previous one has started. tokio retires a blocking-pool thread after 10 s
idle; when that thread had forked a waiting stem cell, the parent-death
signal killed it, and the cold start found it dead and started from
nothing.
"""

import time

from . import stats
from .flick import Flick, make_function

RUNTIMES = ("python3", "node", "exec", "http")
IDLE_RUNTIMES = ("python3", "node", "exec")
# mode: (sandbox, flick config, runtimes measured)
MODES = {
    "sandbox": (True, {}, RUNTIMES),
    "no-sandbox": (False, {}, RUNTIMES),
    # python3 revisions that come back from zero get a fork template (the
    # default rows measure that from the third sample on): these measure
    # the stem cell, a revision's first cold start.
    "sandbox, fork templates off": (True, {"fork_templates": "off"}, ("python3",)),
    "no-sandbox, fork templates off": (False, {"fork_templates": "off"}, ("python3",)),
    # Stem cells only serve python3 and node; no templates either: the start from nothing.
    "sandbox, no stem cells": (True, {"stem_cells": 0, "fork_templates": "off"}, ("python3", "node")),
    "no-sandbox, no stem cells": (False, {"stem_cells": 0, "fork_templates": "off"}, ("python3", "node")),
}
BASELINE = "baseline: sandbox"
# (with, without) sandbox: the pairs whose difference is the sandbox's cost.
PAIRS = {
    "": ("sandbox", "no-sandbox"),
    "fork templates off": ("sandbox, fork templates off", "no-sandbox, fork templates off"),
    "no stem cells": ("sandbox, no stem cells", "no-sandbox, no stem cells"),
}
SETTLE = 0.1
# Between the after-idleness samples: a used stem cell's replacement has started.
IDLE_GAP = 0.5
# A sample that gets no answer in this time is a failure, not a hang.
REQUEST_TIMEOUT = 30.0
# After this many failed samples a runtime/server pair is given up on, so a
# broken runtime costs a minute, not the whole section.
MAX_FAILURES = 2


def run(ctx):
    servers, idle = {}, {}
    modes = {m: (sandbox, config, rts, None) for m, (sandbox, config, rts) in MODES.items()}
    if ctx.baseline:
        modes[BASELINE] = (True, {}, RUNTIMES, ctx.baseline)
    try:
        for mode, (sandbox, config, runtimes, binary) in modes.items():
            label = "cold-" + mode.replace(":", "").replace(", ", "-").replace(" ", "-")
            srv = servers[mode] = Flick(ctx, label, sandbox=sandbox, config=config, binary=binary)
            srv.start()
            for rt in runtimes:
                srv.deploy(make_function(ctx, rt, f"cold-{rt}", keep_alive="100ms", max_instances=1))
        for label, binary in (("this build", None), ("baseline", ctx.baseline)):
            if label == "baseline" and not binary:
                continue
            for rt in IDLE_RUNTIMES:
                srv = idle[(label, rt)] = Flick(ctx, f"idle-{label.replace(' ', '-')}-{rt}", binary=binary)
                srv.start()
                srv.deploy(make_function(ctx, rt, f"idle-{rt}", keep_alive="100ms", max_instances=1))
        samples = {(rt, m): [] for m, (_, _, rts, _) in modes.items() for rt in rts}
        n = ctx.settings.cold_samples
        for i in range(n):
            ctx.log(f"cold: round {i + 1}/{n}")
            # Rotate the order each round, so no mode always follows another.
            keys = list(samples)
            keys = keys[i % len(keys) :] + keys[: i % len(keys)]
            for rt, mode in keys:
                if sum(1 for r in samples[(rt, mode)] if "error" in r) >= MAX_FAILURES:
                    continue
                _wait_all_idle(ctx, servers, modes)
                samples[(rt, mode)].append(_sample(servers[mode], f"cold-{rt}"))
        out = _summarize(samples)
        out["_idle"] = _idle(ctx, idle)
        return out
    finally:
        for srv in list(servers.values()) + list(idle.values()):
            srv.stop()


def _idle(ctx, idle):
    """Cold starts, each after `idle_seconds` without any request to its
    server. {"<server>: <runtime>": summary}."""
    rows = {key: [] for key in idle}
    for i in range(ctx.settings.idle_samples):
        ctx.log(f"cold: after {ctx.settings.idle_seconds:.0f} s idle, {i + 1}/{ctx.settings.idle_samples}")
        time.sleep(ctx.settings.idle_seconds)
        # Rotate the order: a later sample's server has waited a little longer.
        order = list(idle.items())
        for key, srv in order[i % len(order) :] + order[: i % len(order)]:
            rows[key].append(_sample(srv, f"idle-{key[1]}"))
            time.sleep(IDLE_GAP)
    out = {}
    for (label, rt), samples in rows.items():
        good = [r for r in samples if r["status"] == 200 and r["cold"]]
        out[f"{label}: {rt}"] = {
            "server": label,
            "runtime": rt,
            "idle_s": ctx.settings.idle_seconds,
            "client_ms": stats.summarize([r["client_ms"] for r in good]),
            "init_ms": stats.summarize([r["init_ms"] for r in good if r["init_ms"] is not None]),
            "prewarmed": sum(1 for r in good if r.get("prewarmed")),
            "samples": samples,
        }
    return out


def _wait_all_idle(ctx, servers, modes):
    for mode, srv in servers.items():
        names = [f"cold-{rt}" for rt in modes[mode][2]]
        if not srv.wait_instances(names, 0, timeout=10):
            # The next sample then shows whether it was a cold start.
            ctx.log(f"cold: {srv.label}: instances still running after 10 s")
    time.sleep(SETTLE)


def _sample(srv, name):
    try:
        resp = srv.invoke(name, timeout=REQUEST_TIMEOUT)
        record = srv.activation(resp.activation) if resp.activation else {}
    except OSError as e:  # includes timeouts
        return {"status": None, "error": repr(e), "client_ms": None, "cold": None, "init_ms": None}
    return {
        "status": resp.status,
        "client_ms": resp.seconds * 1e3,
        "cold": record.get("cold"),
        "init_ms": record.get("init_ms"),
        "duration_ms": record.get("duration_ms"),
        "prewarmed": record.get("prewarmed"),
    }


def _summarize(samples):
    out = {}
    for (rt, mode), rows in samples.items():
        good = [r for r in rows if r["status"] == 200 and r["cold"]]
        out.setdefault(rt, {})[mode] = {
            "client_ms": stats.summarize([r["client_ms"] for r in good]),
            "init_ms": stats.summarize([r["init_ms"] for r in good if r["init_ms"] is not None]),
            "excluded": len(rows) - len(good),  # not 200, not a cold start, or failed
            "errors": sorted(
                {r["error"] for r in rows if "error" in r}
                | {f"HTTP {r['status']}" for r in rows if r["status"] not in (200, None)}
            ),
            "samples": rows,
        }
    for rt, modes in out.items():
        if BASELINE in modes and "sandbox" in modes:
            a, b = modes["sandbox"]["client_ms"]["p50"], modes[BASELINE]["client_ms"]["p50"]
            baseline_ratio = stats.ratio(a, b)
        else:
            baseline_ratio = None
        modes_cost = {}
        for pair, (on, off) in PAIRS.items():
            if on in modes and off in modes:
                a, b = modes[on]["client_ms"]["p50"], modes[off]["client_ms"]["p50"]
                modes_cost[pair or "default"] = {
                    "cost_ms": None if a is None or b is None else a - b,
                    "ratio": stats.ratio(a, b),
                }
        out[rt] = {"modes": modes, "sandbox_cost": modes_cost, "vs_baseline": baseline_ratio}
    return out
