#!/usr/bin/env python3
"""Cluster mode (issue 13) side by side with one node, one command:

    python3 bench/cluster.py                 # 3 rounds of every measurement
    python3 bench/cluster.py --rounds 1 --seconds 5

Starts `target/release/flick` (built when missing or older than the
sources) as 1 embedded node (SQLite), as 1 node and as 3 nodes all on this machine's loopback, sharing a
fresh PostgreSQL database (dropped afterwards) and a nats-server with
JetStream of the benchmark's own (a scratch store dir, a free port). The
three nodes share this machine's cores with each other and with the load
generator: the 3-node figures show the cost of coordination, not a gain in
capacity. Measured, each as the median over the rounds:

  sync       wrk, 32 connections in all, POST to a warm python3 function:
             requests/s and p50/p99 (3 nodes: the connections split over the
             nodes, so about 2 of every 3 calls are forwarded to the home)
  async      wrk with `X-Flick-Async: true`: accepted (202) calls per second
             through the queue (SQLite on 1 node, JetStream on 3), 32 and 256
             connections
  forwarded  1 client, sequential: p50 through the function's home node and
             through another node; the difference is what forwarding adds
  deploy     a deploy through one node, then calls through another until
             one answers with the new code: ms from the deploy's answer
  rollback   the same for a rollback

Raw results go to bench/results/cluster-<ts>.json. It only measures:
nothing here asserts on a time. Standard library only.
"""

import argparse
import http.client
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from harness import report  # noqa: E402

FLICK = REPO / "target" / "release" / "flick"
POSTGRES = os.environ.get("FLICK_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0, help="length of each wrk run")
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--only", choices=["embedded", "one", "three"], action="append",
                   help="measure only these set-ups (repeatable; default: all three)")
    return p.parse_args()


def log(msg):
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


def newest_source():
    return max(p.stat().st_mtime for p in (REPO / "crates").rglob("*") if p.is_file() and p.suffix in (".rs", ".toml"))


def build():
    if FLICK.exists() and FLICK.stat().st_mtime >= newest_source():
        return
    log("building flick (cargo build --release -p flick)")
    subprocess.run(["cargo", "build", "--release", "-p", "flick"], cwd=REPO, check=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(sql):
    subprocess.run(["psql", POSTGRES, "-qAt", "-c", sql], check=True, stdout=subprocess.DEVNULL)


def db_url(name):
    return POSTGRES.rsplit("/", 1)[0] + "/" + name


class Nats:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="flick-bench-nats-")
        self.port = free_port()
        server = shutil.which("nats-server") or "/usr/sbin/nats-server"
        self.proc = subprocess.Popen(
            [server, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def url(self):
        return f"nats://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_port(port, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Node:
    def __init__(self, work, index, args):
        self.dir = Path(work) / f"node-{index}"
        self.dir.mkdir()
        (self.dir / "config.toml").write_text("max_queued = 10000000\n")
        self.proc = subprocess.Popen(
            [str(FLICK), "up", "--listen", "127.0.0.1:0", "--data-dir", str(self.dir), "--no-ui",
             "--log", "error", *args],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "stderr.log", "wb"))
        deadline = time.monotonic() + 60
        addr = self.dir / "flick.addr"
        while not (addr.exists() and addr.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"node {index} did not start: {(self.dir / 'stderr.log').read_text()}")
            time.sleep(0.05)
        host, port = addr.read_text().strip().rsplit(":", 1)
        self.port = int(port)
        self.key = (self.dir / "admin.key").read_text().strip()
        self.node_id = (self.dir / "node.id").read_text().strip()

    def request(self, method, path, body=b"", headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        h = {"Authorization": f"Bearer {self.key}"}
        h.update(headers or {})
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def package(name, code):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, text in (("flick.toml", f'name = "{name}"\nruntime = "python3"\nhandler = "main.handler"\n'),
                           ("main.py", code)):
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


ECHO = "def handler(event, context):\n    return event\n"


def deploy(node, name, code):
    status, body = node.request("POST", "/v1/functions", package(name, code), {"Content-Type": "application/gzip"})
    if status not in (200, 201):
        raise RuntimeError(f"deploy {name}: {status} {body[:300]!r}")


def wrk(nodes, name, connections, seconds, extra_headers=()):
    """Runs one wrk per node at once, the connections split over them;
    returns (requests/s summed, p50 µs, p99 µs of the worst node, non-2xx)."""
    per = max(1, connections // len(nodes))
    procs = []
    for n in nodes:
        cmd = ["wrk", "-t", "1", "-c", str(per), "-d", f"{max(1, round(seconds))}s", "--latency", "-s", str(BENCH / "wrk" / "post.lua"),
               "-H", f"Authorization: Bearer {n.key}"]
        for h in extra_headers:
            cmd += ["-H", h]
        cmd.append(f"http://127.0.0.1:{n.port}/fn/{name}")
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL))
    rps, p50s, p99s, bad = 0.0, [], [], 0
    for p in procs:
        out = p.communicate(timeout=seconds + 60)[0].decode()
        line = next(l for l in out.splitlines() if l.startswith("WRK_JSON "))
        r = json.loads(line[len("WRK_JSON "):])
        rps += r["requests"] / (r["duration_us"] / 1e6)
        p50s.append(r["latency_us"]["p50"])
        p99s.append(r["latency_us"]["p99"])
        bad += r["errors"]["status"]
    return rps, statistics.median(p50s), max(p99s), bad


def sequential_p50(node, name, n=1500):
    c = http.client.HTTPConnection("127.0.0.1", node.port, timeout=60)
    h = {"Authorization": f"Bearer {node.key}", "Content-Type": "application/json"}
    times = []
    for _ in range(n):
        t = time.perf_counter()
        c.request("POST", f"/fn/{name}", body=b"{}", headers=h)
        r = c.getresponse()
        r.read()
        times.append((time.perf_counter() - t) * 1e6)
        if r.status != 200:
            raise RuntimeError(f"{name}: {r.status}")
    c.close()
    return statistics.median(times[n // 10:])


def home_of(nodes, name):
    """The node holding the function's warm instance after a few calls."""
    counts = []
    for n in nodes:
        status, body = n.request("GET", "/v1/instances")
        pools = json.loads(body)["instances"]
        counts.append(sum(p["instances"] for p in pools if p["function"] == name))
    return max(range(len(nodes)), key=lambda i: counts[i])


def until_answer(node, name, want, timeout=10.0):
    began = time.perf_counter()
    while time.perf_counter() - began < timeout:
        status, body = node.request("POST", f"/fn/{name}", b'{"v": 0}', {"Content-Type": "application/json"})
        if status == 200 and want in body:
            return (time.perf_counter() - began) * 1000
    return None


def start_cluster(work, count, db, nats, shared):
    args = ["--store", db_url(db), "--queue", nats.url()] if shared else []
    nodes = [Node(work, i, args) for i in range(count)]
    time.sleep(1.5)  # each node learns of later members at its next heartbeat
    return nodes


def measure(args, count, nats, shared):
    db = f"flick_bench_{os.getpid()}_{count}_{int(time.time())}"
    psql(f'CREATE DATABASE "{db}"')
    work = tempfile.mkdtemp(prefix=f"flick-bench-cluster{count}-")
    nodes = []
    out = {"nodes": count, "shared": shared, "rounds": []}
    try:
        nodes = start_cluster(work, count, db, nats, shared)
        deploy(nodes[0], "echo", ECHO)
        for n in nodes:
            n.request("POST", "/fn/echo", b"{}")
        for r in range(args.rounds):
            log(f"{count} node(s){' on PostgreSQL + JetStream' if shared else ', embedded'}: round {r + 1} of {args.rounds}")
            row = {}
            rps, p50, p99, bad = wrk(nodes, "echo", 32, args.seconds)
            row["sync"] = {"rps": rps, "p50_us": p50, "p99_us": p99, "non_2xx": bad}
            # Before the async runs: their backlog runs for a while after.
            if count > 1:
                home = home_of(nodes, "echo")
                other = (home + 1) % count
                row["forwarded"] = {"home_p50_us": sequential_p50(nodes[home], "echo"),
                                    "other_p50_us": sequential_p50(nodes[other], "echo")}
                name = f"fresh{r}"
                deploy(nodes[0], name, "def handler(e, c):\n    return {'v': 1}\n")
                row["deploy_ms"] = until_answer(nodes[-1], name, b'"v": 1')
                deploy(nodes[0], name, "def handler(e, c):\n    return {'v': 2}\n")
                until_answer(nodes[-1], name, b'"v": 2')
                status, _ = nodes[1].request("POST", f"/v1/functions/{name}/rollback", b"")
                row["rollback_ms"] = until_answer(nodes[-1], name, b'"v": 1') if status == 200 else None
            for conns in (32, 256):
                rps, p50, p99, bad = wrk(nodes, "echo", conns, args.seconds, ["X-Flick-Async: true"])
                row[f"async_{conns}"] = {"accepted_per_s": rps, "p50_us": p50, "p99_us": p99, "non_2xx": bad}
                # Each run starts with an empty queue.
                drain(nodes[0])
            out["rounds"].append(row)
    finally:
        for n in nodes:
            n.stop()
        shutil.rmtree(work, ignore_errors=True)
        psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    return out


def drain(node, timeout=300):
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        s, b = node.request("GET", "/metrics")
        if s != 200:
            return
        ready = [l for l in b.decode().splitlines() if l.startswith("flick_async_queue_items") and 'state="ready"' in l]
        if all(l.rsplit(" ", 1)[1] in ("0", "0.0") for l in ready):
            return
        time.sleep(1)


def med(rows, *path):
    vals = []
    for r in rows:
        v = r
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        if v is not None:
            vals.append(v)
    return statistics.median(vals) if vals else None


def table(results):
    none = {"rounds": []}
    emb, one, three = (results.get(k, none) for k in ("embedded", "one", "three"))
    f = lambda v, d=0: "–" if v is None else f"{v:,.{d}f}"
    lines = [
        "| measurement | 1 node, embedded (SQLite) | 1 node, PostgreSQL + JetStream | 3 nodes, one machine | 3 ÷ 1 (shared) |",
        "|---|---|---|---|---|",
    ]
    for label, path in [
        ("sync calls/s, 32 connections", ("sync", "rps")),
        ("sync p50 µs", ("sync", "p50_us")),
        ("sync p99 µs", ("sync", "p99_us")),
        ("async accepted/s, 32 connections", ("async_32", "accepted_per_s")),
        ("async accepted/s, 256 connections", ("async_256", "accepted_per_s")),
        ("async accept p50 µs (256)", ("async_256", "p50_us")),
        ("async accept p99 µs (256)", ("async_256", "p99_us")),
    ]:
        e, a, b = med(emb["rounds"], *path), med(one["rounds"], *path), med(three["rounds"], *path)
        ratio = "–" if not a or b is None else f"×{b / a:.2f}"
        lines.append(f"| {label} | {f(e)} | {f(a)} | {f(b)} | {ratio} |")
    home, other = med(three["rounds"], "forwarded", "home_p50_us"), med(three["rounds"], "forwarded", "other_p50_us")
    lines.append("")
    lines.append(f"Forwarded call, 1 client: p50 {f(home)} µs through the home node, {f(other)} µs through "
                 f"another node: forwarding adds {f(None if home is None or other is None else other - home)} µs.")
    lines.append(f"A deploy through one node answered through another after {f(med(three['rounds'], 'deploy_ms'), 1)} ms "
                 f"(median); a rollback after {f(med(three['rounds'], 'rollback_ms'), 1)} ms.")
    return "\n".join(lines)


def main():
    args = parse_args()
    if not args.no_build:
        build()
    for tool in ("wrk", "psql"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed (apt-get install {'wrk' if tool == 'wrk' else 'postgresql-client'})")
    results = {"machine": report.machine_info(), "started": datetime.now(timezone.utc).isoformat(),
               "settings": vars(args)}
    nats = Nats()
    try:
        for key, count, shared in (("embedded", 1, False), ("one", 1, True), ("three", 3, True)):
            if not args.only or key in args.only:
                results[key] = measure(args, count, nats, shared)
    finally:
        nats.stop()
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    path = out / f"cluster-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(results, indent=1))
    log(f"raw results: {path.relative_to(REPO)}")
    print(table(results))


if __name__ == "__main__":
    main()
