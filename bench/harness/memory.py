"""4. Idle memory.

- flick itself: RSS of `flick up` (sandboxed) with no functions, after
  deploying 100 no-op python3 functions, and — the headline — after a
  restart with those 100 functions and no instances (what a server that has
  been up a while and scaled everything to zero looks like, without the
  allocator's leftovers from 100 deploys).
- the whole idle tree at that point, once the stem cells flick keeps ready
  are up (`stem_cells` of /v1/instances unchanged for a second): every
  process, flick and each one below it (stem cells, the sandbox's waiting
  parents), with its command line, RSS and PSS, and the totals. PSS divides
  shared pages among the processes sharing them, so the tree's PSS is what
  it costs the machine.
- per warm idle python3 instance: a function with min_instances = N is
  deployed and flick prewarms N instances. Once they are all up and 2 s have
  passed, everything below flick is measured again; the growth divided by N
  is one instance's share: RSS and PSS of its processes (sandboxed: a waiting
  parent and the interpreter), its cgroup's memory use (memory.usage_in_bytes
  on v1 / memory.current on v2, which also counts page cache it touched) and
  flick's own growth. Done sandboxed and not.
"""

import time

from . import procs, stats
from .context import REPO
from .flick import Flick, make_function

SETTLE = 2.0


def run(ctx):
    s = ctx.settings
    out = {}
    with Flick(ctx, "memory") as srv:
        time.sleep(SETTLE)
        out["empty_kib"] = procs.rss_kib(srv.pid)
        ctx.log(f"memory: deploying {s.idle_functions} functions")
        for i in range(s.idle_functions):
            srv.deploy(make_function(ctx, "python3", f"idle-{i:03d}"))
        time.sleep(SETTLE)
        out["after_deploys_kib"] = procs.rss_kib(srv.pid)
        srv.restart()
        time.sleep(SETTLE)
        counts = srv.instances()
        out["functions"] = s.idle_functions
        out["restarted_kib"] = procs.rss_kib(srv.pid)
        out["restarted_instances"] = sum(counts.values())
        out["stem_cells"] = _wait_stem_cells(srv)
        # flick's children at idle: the stem cells it keeps ready.
        out["restarted_below"] = _below_flick(srv)
        out["idle_tree"] = procs.process_rows(srv.pid)
        for row in out["idle_tree"]:  # this run's paths as placeholders, as in the commands
            row["cmdline"] = row["cmdline"].replace(str(ctx.work), "$WORK").replace(str(REPO) + "/", "")
        out["instances"] = {"sandbox": _instances(ctx, srv)}
    with Flick(ctx, "memory-nosandbox", sandbox=False) as srv:
        out["instances"]["no-sandbox"] = _instances(ctx, srv)
    return out


def _wait_stem_cells(srv, timeout=20.0):
    """Waits until the ready stem cells (per kind, /v1/instances) have not
    changed for a second; returns them."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = srv.api("/v1/instances").get("stem_cells", {})
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= 1.0:
            break
        time.sleep(0.1)
    return last


def _instances(ctx, srv):
    """Memory per instance as the growth of everything below flick divided by
    the number of instances started: flick also keeps function-less stem
    cells as children, whose number is the same before and after."""
    n = ctx.settings.warm_instances
    ctx.log(f"memory ({srv.label}): {n} prewarmed python3 instances")
    time.sleep(SETTLE)
    before = _below_flick(srv)
    srv.deploy(make_function(ctx, "python3", "mem-python3", min_instances=n, max_instances=n))
    if not srv.wait_instances(["mem-python3"], n, timeout=60):
        raise RuntimeError(f"{srv.label}: {n} instances did not start within 60 s")
    time.sleep(SETTLE)
    after = _below_flick(srv)
    per = {k: (after[k] - before[k]) / n for k in ("rss_kib", "pss_kib", "cgroup_kib", "flick_rss_kib", "processes")}
    return {"count": n, "per_instance": per, "before": before, "after": after}


def _below_flick(srv):
    """Sums over every process below flick (instances and stem cells), flick's
    own RSS, its instance cgroups' memory use, and each interpreter's RSS."""
    kids = procs.children_map()
    pids = procs.descendants(srv.pid, kids)
    pythons = [procs.rss_kib(p) for p in pids if procs.comm(p).startswith("python")]
    return {
        "processes": len(pids),
        "rss_kib": sum(procs.rss_kib(p) for p in pids),
        "pss_kib": sum(procs.pss_kib(p) for p in pids),
        "cgroup_kib": sum(_instance_cgroup_usage(srv)),
        "flick_rss_kib": procs.rss_kib(srv.pid),
        "python_rss_kib": stats.summarize(pythons),
    }


def _instance_cgroup_usage(srv):
    """Memory use of each instance (or stem cell) cgroup of this flick, KiB."""
    usage = []
    for parent in srv.cgroup_dirs():
        for f in ("memory.usage_in_bytes", "memory.current"):
            for path in parent.glob(f"*/{f}"):
                try:
                    usage.append(int(path.read_text()) // 1024)
                except (OSError, ValueError):
                    pass
    return usage
