"""6. What Prometheus metrics cost on the warm path: the warm section's
functions on two sandboxed flicks, one with metrics on (the default, scraped
every `metrics_scrape_every` seconds with the admin key, as Prometheus
would) and one started with `--no-metrics`, measured in the same
interleaved wrk rounds (load.py). Ratios on ÷ off of the medians say what
the record-point observation, the HTTP response layer and the scrapes cost
together.

Afterwards it checks the comparison measured what it claims: the metrics-on
flick counted the calls it served (`flick_invocations_total`), the
metrics-off one has no `/metrics` (404).
"""

import threading
import urllib.error
import urllib.request

from . import load, stats
from .flick import Flick, make_function
from .warm import FLICK_FUNCTIONS

ON, OFF = " (metrics on)", " (metrics off)"


def run(ctx):
    on, off = Flick(ctx, "metrics-on"), Flick(ctx, "metrics-off", args=["--no-metrics"])
    servers = [(on, ON), (off, OFF)]
    stop = threading.Event()
    scrapes = {"ok": 0, "failed": 0, "last_bytes": 0}
    scraper = None
    try:
        targets = {}
        for srv, suffix in servers:
            srv.start()
            for kind, manifest in FLICK_FUNCTIONS.items():
                srv.deploy(make_function(ctx, kind, f"warm-{kind}", **manifest))
                targets[f"flick {kind}{suffix}"] = f"http://127.0.0.1:{srv.port}/fn/warm-{kind}"
        ctx.record(["curl", "-H", "'Authorization: Bearer $KEY'", "http://127.0.0.1:PORT/metrics", "# every "
                    f"{ctx.settings.metrics_scrape_every:g} s during the rounds"])
        scraper = threading.Thread(target=_scrape_loop, args=(ctx, on, stop, scrapes), daemon=True)
        scraper.start()
        results = load.measure(ctx, targets, rounds=ctx.settings.metrics_rounds)
        stop.set()
        scraper.join(timeout=30)
        counted = _counted(_get_metrics(on))
        off_status = _status(off)
        return {
            "targets": targets,
            "results": results,
            "comparison": _compare(results),
            "scrapes": scrapes,
            "check": {"invocations_counted_on": counted, "metrics_status_off": off_status},
        }
    finally:
        stop.set()
        for srv, _ in servers:
            srv.stop()


def _request(srv):
    return urllib.request.Request(
        f"http://127.0.0.1:{srv.port}/metrics", headers={"Authorization": f"Bearer {srv.key}"}
    )


def _get_metrics(srv):
    with urllib.request.urlopen(_request(srv), timeout=10) as resp:
        return resp.read().decode()


def _status(srv):
    try:
        with urllib.request.urlopen(_request(srv), timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def _scrape_loop(ctx, srv, stop, scrapes):
    while not stop.wait(ctx.settings.metrics_scrape_every):
        try:
            scrapes["last_bytes"] = len(_get_metrics(srv))
            scrapes["ok"] += 1
        except OSError:
            scrapes["failed"] += 1


def _counted(text):
    """Sum of flick_invocations_total over every label set."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("flick_invocations_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _compare(results):
    """Per function: p50 at 1 client and req/s at 32 clients, on and off,
    and on ÷ off."""
    out = {}
    for kind in FLICK_FUNCTIONS:
        a, b = results[f"flick {kind}{ON}"], results[f"flick {kind}{OFF}"]
        out[kind] = {
            "p50_c1_us": [a["c1"]["p50_us"], b["c1"]["p50_us"]],
            "p50_c1_ratio": stats.ratio(a["c1"]["p50_us"], b["c1"]["p50_us"]),
            "p99_c1_us": [a["c1"]["p99_us"], b["c1"]["p99_us"]],
            "rps_c32": [a["c32"]["rps"], b["c32"]["rps"]],
            "rps_c32_ratio": stats.ratio(a["c32"]["rps"], b["c32"]["rps"]),
        }
    return out
