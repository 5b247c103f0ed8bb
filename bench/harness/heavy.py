"""7. Heavy imports: a python3 function whose module imports numpy and
pandas (bench/functions/python3-heavy, its requirements.txt installed by
flick at deploy from the package index), sandboxed, default settings,
`max_instances = 2`, `concurrency = 1`, `keep_alive = "100ms"`.

Each sample, with the function scaled to zero:

- cold start after scale to zero: one request, client-observed, and flick's
  `init_ms` from its activation record;
- scale-out while one instance is warm: a request that holds the warm
  instance (`{"sleep_ms": N}`, N well beyond the cold start just seen), then
  100 ms later a second request, which needs a second instance: its
  client-observed time and `init_ms`.

The revision's first cold start pays the whole import and leaves a fork
template behind (its import took ≥ `fork_templates`); from then on both
cases take a fork of it made ahead. The issue's target is ≤ 5 ms p50 for
both.
"""

import json
import threading
import time

from . import httpc, stats
from .flick import Flick, make_function

NAME = "heavy"
# Hold the first instance at least this long, and three times the last cold start.
MIN_HOLD_MS = 3000


def run(ctx):
    n = ctx.settings.heavy_samples
    with Flick(ctx, "heavy") as srv:
        ctx.log("heavy: deploying numpy + pandas (pip at deploy; about a minute)")
        began = time.monotonic()
        srv.deploy(make_function(ctx, "python3-heavy", NAME, keep_alive="100ms", max_instances=2))
        deploy_s = time.monotonic() - began
        cold, scale_out = [], []
        for i in range(n):
            ctx.log(f"heavy: sample {i + 1}/{n}")
            if not srv.wait_instances([NAME], 0, timeout=30):
                ctx.log("heavy: instances still running after 30 s")
            time.sleep(0.5)  # a used python3 stem cell has been replaced
            first = _call(srv, {})
            cold.append(first)
            hold_ms = max(MIN_HOLD_MS, 3 * (first.get("client_ms") or 0))
            holder = threading.Thread(target=_call, args=(srv, {"sleep_ms": hold_ms}), daemon=True)
            holder.start()
            time.sleep(0.1)
            scale_out.append(_call(srv, {}))
            holder.join(timeout=hold_ms / 1000 + 60)
        return {
            "deploy_s": deploy_s,
            "cold": _summary(cold),
            "scale_out": _summary(scale_out),
        }


def _call(srv, event):
    try:
        resp = httpc.request(
            srv.port, "POST", f"/fn/{NAME}", json.dumps(event).encode(), {"Content-Type": "application/json"}, 120
        )
        record = srv.activation(resp.activation) if resp.activation else {}
    except OSError as e:
        return {"status": None, "error": repr(e), "client_ms": None, "cold": None, "init_ms": None}
    return {
        "status": resp.status,
        "client_ms": resp.seconds * 1e3,
        "cold": record.get("cold"),
        "init_ms": record.get("init_ms"),
        "wait_ms": record.get("wait_ms"),
        "prewarmed": record.get("prewarmed"),
        "body": resp.body[:200].decode(errors="replace"),
    }


def _summary(samples):
    good = [r for r in samples if r["status"] == 200 and r["cold"]]
    return {
        "client_ms": stats.summarize([r["client_ms"] for r in good]),
        "init_ms": stats.summarize([r["init_ms"] for r in good if r["init_ms"] is not None]),
        "prewarmed": sum(1 for r in good if r.get("prewarmed")),
        "excluded": len(samples) - len(good),
        "samples": samples,
    }
