#!/usr/bin/env python3
"""Async calls over HTTP (issue 9): accept rate into the durable queue and drain rate, one command:

    python3 bench/async_calls.py                    # 3 rounds, 5 s of accepting, 2,000-call drain
    python3 bench/async_calls.py --rounds 5 --seconds 5 --connections 1,32,128 --drain 5000

Builds `target/release/flick` (`nice -n 10 cargo build --release -p flick`) unless --no-build,
then, per round, on a fresh data dir (sandbox on):

  accept  C     wrk -c C for --seconds against POST /fn/noop with X-Flick-Async: true:
                202s per second. Each 202 is sent only after the call is committed and fsync'd
                in queue.db (WAL, synchronous = FULL; group commit). The dispatcher drains
                meanwhile, as in production (the no-op's async share: 2 of 4 instances).
  drain         on another fresh data dir, --drain calls are accepted (32 parallel posters), flick
                is stopped with SIGTERM (running calls finish, the rest stay queued), and the clock
                runs from the restart's `flick up` until the function's queue is empty: calls
                leased, run (python3 no-op, warm), recorded, acked per second, 2 at a time (the
                async share of max_instances = 4).

Medians over the rounds are printed; raw numbers go to bench/results/async-<ts>.json.
Standard library + wrk only. Nothing here asserts on a time.
"""

import argparse
import concurrent.futures as cf
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
FLICK = REPO / "target" / "release" / "flick"

NOOP = "def handler(event, context):\n    return {'statusCode': 200, 'body': ''}\n"
MANIFEST = 'name = "noop"\nruntime = "python3"\nhandler = "main.handler"\nmax_instances = 4\nmax_queued = 10000000\n'

WRK_LUA = """wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Flick-Async"] = "true"
wrk.headers["Authorization"] = "Bearer %s"
function done(summary, latency, requests)
  io.write(string.format('WRK_JSON {"requests":%%d,"duration_us":%%d,"status_errors":%%d,"p50":%%.0f,"p99":%%.0f}\\n',
    summary.requests, summary.duration, summary.errors.status, latency:percentile(50), latency:percentile(99)))
end
"""


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5, help="length of each accept measurement")
    p.add_argument("--connections", default="1,32,128", help="wrk connections, comma-separated")
    p.add_argument("--drain", type=int, default=2000, help="calls in the drain backlog")
    p.add_argument("--no-build", action="store_true")
    return p.parse_args()


class Flick:
    def __init__(self, data):
        self.data = Path(data)
        addr = self.data / "flick.addr"
        if addr.exists():
            addr.unlink()
        env = dict(os.environ, FLICK_LOG="warn")
        self.proc = subprocess.Popen(
            [str(FLICK), "up", "--listen", "127.0.0.1:0", "--data-dir", str(self.data)],
            env=env, stdout=subprocess.DEVNULL, stderr=open(self.data.parent / "flick.log", "a"),
        )
        deadline = time.time() + 60
        while not (addr.exists() and addr.read_text().strip()):
            if time.time() > deadline or self.proc.poll() is not None:
                raise SystemExit("flick up did not start (see flick.log)")
            time.sleep(0.02)
        self.base = "http://" + addr.read_text().strip()
        self.key = (self.data / "admin.key").read_text().strip()

    def get(self, path):
        req = urllib.request.Request(self.base + path, headers={"Authorization": "Bearer " + self.key})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path, body=b"{}", headers=None):
        h = {"Authorization": "Bearer " + self.key, **(headers or {})}
        req = urllib.request.Request(self.base + path, data=body, headers=h, method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status

    def cli(self, *args):
        env = dict(os.environ, FLICK_DATA_DIR=str(self.data))
        subprocess.run([str(FLICK), *args], env=env, check=True, stdout=subprocess.DEVNULL)

    def depth(self):
        q = self.get("/v1/functions/noop")["queue"]
        return q["ready"] + q["leased"]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


def deploy(flick, work):
    fn = work / "noop"
    fn.mkdir(exist_ok=True)
    (fn / "flick.toml").write_text(MANIFEST)
    (fn / "main.py").write_text(NOOP)
    flick.cli("deploy", str(fn))
    flick.post("/fn/noop")  # warm


def accept(flick, work, connections, seconds):
    lua = work / "async.lua"
    lua.write_text(WRK_LUA % flick.key)
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "10s", "-s", str(lua), flick.base + "/fn/noop"]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    r = json.loads(next(l for l in out.splitlines() if l.startswith("WRK_JSON"))[9:])
    ok = r["requests"] - r["status_errors"]
    return {"connections": connections, "accepted_per_s": ok / (r["duration_us"] / 1e6),
            "non_202": r["status_errors"], "p50_us": r["p50"], "p99_us": r["p99"]}


def drain(work, n):
    data = work / "drain-data"
    flick = Flick(data)
    deploy(flick, work)
    # The backlog: accepted with 32 parallel posters, then flick stops with it queued.
    try:
        with cf.ThreadPoolExecutor(32) as pool:
            codes = list(pool.map(lambda _: flick.post("/fn/noop", headers={"X-Flick-Async": "true"}), range(n)))
    except BaseException:
        flick.stop()
        raise
    assert all(c == 202 for c in codes)
    flick.stop()
    started = time.monotonic()
    flick = Flick(data)
    try:
        first = flick.depth()
        deadline = time.time() + 600
        while flick.depth() > 0 and time.time() < deadline:
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        records = len(flick.get("/v1/activations?function=noop&limit=1000")["activations"])
    finally:
        flick.stop()
    return {"backlog_at_restart": first, "seconds": elapsed, "drained_per_s": first / elapsed, "records_seen": records}


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "?")
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, stdout=subprocess.PIPE,
                                     text=True).stdout.strip()}


def main():
    args = parse_args()
    if not args.no_build:
        subprocess.run(["nice", "-n", "10", "cargo", "build", "--release", "-p", "flick"], cwd=REPO, check=True)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not on PATH (apt-get install -y wrk)")
    conns = [int(c) for c in args.connections.split(",")]
    rounds = []
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory(dir=REPO / "target") as tmp:
            work = Path(tmp)
            flick = Flick(work / "data")
            try:
                deploy(flick, work)
                acc = [accept(flick, work, c, args.seconds) for c in conns]
            finally:
                flick.stop()
            dr = drain(work, args.drain)
            rounds.append({"accept": acc, "drain": dr})
            print(f"round {i + 1}: " + ", ".join(f"c{a['connections']} {a['accepted_per_s']:.0f}/s" for a in acc)
                  + f"; drain {dr['drained_per_s']:.0f}/s", file=sys.stderr)
    m = machine()
    print(f"\nflick {m['commit']} on {m['nproc']} x {m['cpu']}, kernel {m['kernel']}; medians of {args.rounds} rounds")
    print("durability: every 202 after its queue.db transaction is committed with synchronous = FULL (fsync'd)")
    print(f"{'connections':>11} {'accepted/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'non-202':>8}")
    for j, c in enumerate(conns):
        col = [r["accept"][j] for r in rounds]
        med = lambda k: statistics.median(x[k] for x in col)
        print(f"{c:>11} {med('accepted_per_s'):>11.0f} {med('p50_us') / 1000:>8.2f} {med('p99_us') / 1000:>8.2f} "
              f"{int(sum(x['non_202'] for x in col)):>8}")
    d = [r["drain"] for r in rounds]
    print(f"drain of {args.drain} queued no-op calls (python3, async share 2 of 4 instances): "
          f"{statistics.median(x['drained_per_s'] for x in d):.0f}/s median")
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    ts = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (out / f"async-{ts}.json").write_text(json.dumps({"machine": m, "args": vars(args), "rounds": rounds}, indent=1))


if __name__ == "__main__":
    main()
