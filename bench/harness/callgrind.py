"""8. Instructions per warm request of `flick up`, counted by valgrind's
callgrind: a figure that does not move with the machine's load, for
catching regressions of the warm path.

`flick up` (the release binary) runs under `valgrind --tool=callgrind`
(sandboxed when that works under valgrind, else with
--insecure-no-sandbox; the result says which), started with the soft
RLIMIT_NOFILE flick gives its instances (see NOFILE). Only flick itself is
counted: the instances it starts exec their interpreters, which valgrind
does not follow (no --trace-children). A no-op python3 function
(concurrency 1, max_instances 1) and the no-op http function (keep-alive
server) are deployed and warmed with sequential requests. Then per
function: `callgrind_control -z` zeroes the counters, `callgrind_requests`
sequential requests go over one kept-alive connection, `callgrind_control
-d` dumps; the dump's total instruction count (Ir) divided by the request
count is the figure. The same zero/dump around as long a time without
requests gives flick's idle background (timers, the reaper), reported and
subtracted. All of this is done twice, one `flick up` after the other in the
same mode: with metrics on (the default) and with `--no-metrics`, so the
metrics' cost per request is counted side by side. Under valgrind flick runs
~50× slower; counts are bounded by `callgrind_requests` and every step by a
timeout.
"""

import http.client
import subprocess
import time

from . import deps, metrics as metrics_section
from .flick import Flick, make_function

FUNCTIONS = {
    "python3": dict(concurrency=1, max_instances=1),
    "http": dict(concurrency=32, max_instances=1),
}
WARMUP = 50
# valgrind refuses a child's setrlimit(RLIMIT_NOFILE) unless its hard limit is
# the one valgrind settled on: the soft limit valgrind was started with. flick
# sets its instances' limit (soft = hard): `instance_nofile` when sandboxed
# (stated in the config here), 4096 without the sandbox
# (crates/sandbox/src/lib.rs); valgrind is started with that soft limit.
NOFILE = {True: 1024, False: 4096}


def run(ctx):
    deps.ensure_valgrind(ctx)
    out = {"start_errors": [], "metrics_status": {}}
    modes = (True, False)  # sandboxed if it starts under valgrind; both servers then run alike
    for metrics in (True, False):
        srv = _start(ctx, modes, metrics, out["start_errors"])
        out["sandbox"], modes = srv.sandbox, (srv.sandbox,)
        on_off = "on" if metrics else "off"
        try:
            for kind, manifest in FUNCTIONS.items():
                srv.deploy(make_function(ctx, kind, f"cg-{kind}", **manifest))
            counts = {kind: _count(ctx, srv, f"cg-{kind}") for kind in FUNCTIONS}
            # The server counted is the one claimed: GET /metrics is 200 on, 404 off.
            try:
                out["metrics_status"][on_off] = metrics_section._status(srv)
            except OSError as e:  # a check: it must not cost the counts
                out["metrics_status"][on_off] = f"no answer ({e})"
        finally:
            srv.stop()
        # "functions" is the default flick (metrics on), as before --no-metrics was measured too.
        out["functions" if metrics else "no_metrics"] = counts
    return out


def _start(ctx, modes, metrics, errors):
    """The first `flick up` of `modes` (sandbox on, off) that starts under valgrind."""
    for sandbox in modes:
        srv = _flick(ctx, sandbox, metrics)
        try:
            return srv.start(timeout=600)
        except RuntimeError as e:
            log = (ctx.work / f"flick-{srv.label}.log").read_text(errors="replace")[-800:]
            errors.append(f"sandbox {'on' if sandbox else 'off'}, metrics {'on' if metrics else 'off'}: {e}: {log}")
            srv.stop()
    raise RuntimeError("flick up did not start under valgrind: " + " | ".join(errors))


def _flick(ctx, sandbox, metrics):
    label = ("callgrind" if sandbox else "callgrind-nosandbox") + ("" if metrics else "-nometrics")
    dumps = ctx.work / label
    dumps.mkdir(parents=True, exist_ok=True)
    nofile = NOFILE[sandbox]
    wrapper = ["prlimit", f"--nofile={nofile}:"]  # the soft limit only; it execs, so the pid stays
    wrapper += ["valgrind", "--tool=callgrind", f"--callgrind-out-file={dumps}/callgrind.out.%p"]
    args = [] if metrics else ["--no-metrics"]
    return Flick(ctx, label, sandbox=sandbox, args=args, wrapper=wrapper, config={"instance_nofile": NOFILE[True]})


def _count(ctx, srv, name):
    n = ctx.settings.callgrind_requests
    ctx.log(f"callgrind: {name}: {WARMUP} warm-up requests, then {n} counted")
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
    try:
        _requests(conn, name, WARMUP)
        _control(ctx, srv, "-z")
        began = time.monotonic()
        ok = _requests(conn, name, n)
        seconds = time.monotonic() - began
        busy = _dump(ctx, srv)
    finally:
        conn.close()
    # flick's background over as long a time without requests.
    _control(ctx, srv, "-z")
    time.sleep(seconds)
    idle = _dump(ctx, srv)
    net = None if busy is None or idle is None else busy - idle
    return {
        "requests": n,
        "ok": ok,
        "seconds": seconds,
        "instructions": busy,
        "idle_instructions": idle,
        "per_request": busy / n if busy is not None else None,
        "per_request_net": net / n if net is not None else None,
    }


def _requests(conn, name, n):
    ok = 0
    for _ in range(n):
        conn.request("POST", f"/fn/{name}", body=b"{}", headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        ok += resp.status == 200
    return ok


def _control(ctx, srv, flag):
    cmd = ["callgrind_control", flag, str(srv.pid)]
    ctx.record(cmd)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {out.returncode}: {out.stdout[-300:]} {out.stderr[-300:]}")


def _dump(ctx, srv):
    """Dumps and returns the instruction count (Ir) since the last zeroing,
    from the newest dump file."""
    dumps = ctx.work / srv.label
    seen = set(dumps.iterdir())
    _control(ctx, srv, "-d")
    new = sorted(set(dumps.iterdir()) - seen, key=lambda p: p.stat().st_mtime)
    if not new:
        return None
    total = None
    for line in new[-1].read_text(errors="replace").splitlines():
        if line.startswith(("totals:", "summary:")):
            total = int(line.split()[1])
    return total
