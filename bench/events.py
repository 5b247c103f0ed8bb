#!/usr/bin/env python3
"""Accept rate of `POST /events` (CloudEvents into durable async calls), one command:

    python3 bench/events.py                         # uses target/release/flick, else target/debug/flick
    python3 bench/events.py --flick target/debug/flick --events 2000 --concurrency 1,16

Starts `flick up` on a free port with a scratch data dir, deploys one no-op
python3 function with a `cloudevents` trigger, then measures, per setting:

  binary  C      C client threads posting one binary-mode event per request
  batch   100    batched mode, 100 events per request, one client

Every event matches the trigger, so each accepted event is one async
invocation durably queued (fsync'd) before the 202. Reported: accepted events
per second and request latency p50/p99. It only measures; nothing here
asserts on a time. Raw results go to bench/results/events-<ts>.json.
Standard library only.
"""

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

NOOP = "def handler(event, context):\n    return {}\n"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = REPO / "target" / "release" / "flick"
    if not default.exists():
        default = REPO / "target" / "debug" / "flick"
    p.add_argument("--flick", default=str(default), help="the flick binary")
    p.add_argument("--events", type=int, default=3000, help="events per measurement")
    p.add_argument("--concurrency", default="1,16", help="client threads for binary mode, comma-separated")
    return p.parse_args()


class Server:
    def __init__(self, binary):
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="flick-bench-events-")
        env = dict(os.environ, FLICK_DATA_DIR=self.dir)
        self.log = open(os.path.join(self.dir, "flick.log"), "wb")
        self.proc = subprocess.Popen(
            [binary, "up", "--listen", "127.0.0.1:0", "--log", "warn"], env=env, stdout=self.log, stderr=self.log
        )
        addr = os.path.join(self.dir, "flick.addr")
        deadline = time.time() + 60
        while not os.path.exists(addr):
            if time.time() > deadline or self.proc.poll() is not None:
                raise SystemExit("flick did not start; see " + self.log.name)
            time.sleep(0.05)
        time.sleep(0.1)
        host, port = open(addr).read().strip().rsplit(":", 1)
        self.port = int(port)
        self.key = open(os.path.join(self.dir, "admin.key")).read().strip()

    def cli(self, *args):
        env = dict(os.environ, FLICK_DATA_DIR=self.dir)
        subprocess.run([self.binary, *args], env=env, check=True, stdout=subprocess.DEVNULL)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def deploy(srv):
    fn = Path(srv.dir) / "src" / "sink"
    fn.mkdir(parents=True)
    (fn / "main.py").write_text(NOOP)
    (fn / "flick.toml").write_text(
        'name = "sink"\nruntime = "python3"\nhandler = "main.handler"\n'
        '[[triggers]]\ntype = "cloudevents"\nfilter = { type = "bench.event" }\n'
    )
    srv.cli("deploy", str(fn))


def post(conn, key, headers, body):
    h = {"Authorization": "Bearer " + key, **headers}
    t = time.perf_counter()
    conn.request("POST", "/events", body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    if r.status != 202:
        raise SystemExit(f"POST /events: {r.status} {data[:300]!r}")
    return time.perf_counter() - t


def binary_mode(srv, events, threads, tag):
    per = events // threads
    lat = []
    lock = threading.Lock()

    def worker(w):
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
        mine = []
        for i in range(per):
            headers = {
                "ce-specversion": "1.0",
                "ce-id": f"{tag}-{w}-{i}",
                "ce-source": "/bench",
                "ce-type": "bench.event",
                "content-type": "application/json",
            }
            mine.append(post(conn, srv.key, headers, b'{"n": 1}'))
        with lock:
            lat.extend(mine)

    start = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    took = time.perf_counter() - start
    return {"mode": "binary", "clients": threads, "events": per * threads, "events_per_s": per * threads / took,
            **percentiles(lat)}


def batch_mode(srv, events, size, tag):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
    lat = []
    start = time.perf_counter()
    for b in range(events // size):
        batch = [
            {"specversion": "1.0", "id": f"{tag}-{b}-{i}", "source": "/bench", "type": "bench.event", "data": {"n": i}}
            for i in range(size)
        ]
        body = json.dumps(batch).encode()
        lat.append(post(conn, srv.key, {"content-type": "application/cloudevents-batch+json"}, body))
    took = time.perf_counter() - start
    n = (events // size) * size
    return {"mode": "batch", "batch": size, "events": n, "events_per_s": n / took, **percentiles(lat)}


def percentiles(lat):
    lat = sorted(lat)
    return {
        "p50_ms": round(1000 * statistics.median(lat), 2),
        "p99_ms": round(1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2),
    }


def main():
    args = parse_args()
    srv = Server(args.flick)
    results = []
    try:
        deploy(srv)
        for c in [int(x) for x in args.concurrency.split(",")]:
            results.append(binary_mode(srv, args.events, c, f"b{c}"))
            print(json.dumps(results[-1]))
        results.append(batch_mode(srv, args.events, 100, "batch"))
        print(json.dumps(results[-1]))
    finally:
        srv.stop()
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    meta = {"flick": args.flick, "cpus": os.cpu_count(), "when": stamp}
    (out / f"events-{stamp}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
