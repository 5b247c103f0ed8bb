#!/usr/bin/env python3
"""Latency from a broker message to the function's start, one command:

    python3 bench/triggers.py                    # 3 rounds of 200 messages per broker
    python3 bench/triggers.py --rounds 5 --messages 300 --gap-ms 20
    python3 bench/triggers.py --flick target/debug/flick --no-build

Builds `cargo build --release -p flick` (under `nice -n 10`; minutes on 2
cores the first time) unless --no-build, starts `flick up` on a free port
with a scratch data dir, and deploys one python3 function with an MQTT
trigger (QoS 1, Mosquitto on 127.0.0.1:1883) and a NATS trigger (core
subject, nats-server on 127.0.0.1:4222). The handler answers with
`time.time_ns()` taken when it starts. Each message carries the time it
was handed to the client (`mosquitto_pub -l`, one connection, one line per
message; for NATS a raw-protocol socket, `PUB`), so

    latency = handler start - publish      (one clock: same machine)

It covers the broker, the trigger, the durable queue (each message is
queued before it is acked), the dispatcher and a warm instance. Messages
are sent one at a time `--gap-ms` apart (latency, not throughput). It
prints p50/p99 per round and the medians over rounds; raw samples go to
bench/results/triggers-<ts>.json. It only measures: nothing asserts on a
time. Standard library only; every process it starts is stopped by pid.
"""

import argparse
import json
import os
import platform
import shutil
import socket
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

HANDLER = """import time

def handler(event, context):
    t = time.time_ns()
    payload = event.get("payload") or {}
    return {"t": t, "sent": payload.get("sent"), "type": event.get("type")}
"""


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--messages", type=int, default=200, help="messages per broker per round")
    p.add_argument("--gap-ms", type=float, default=25.0, help="pause between messages")
    p.add_argument("--flick", default=str(REPO / "target" / "release" / "flick"))
    p.add_argument("--no-build", action="store_true")
    return p.parse_args()


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


class Flick:
    def __init__(self, binary):
        self.dir = tempfile.mkdtemp(prefix="flick-bench-triggers-")
        self.proc = subprocess.Popen(
            [binary, "up", "--listen", "127.0.0.1:0", "--data-dir", self.dir],
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.dir, "server.log"), "wb"),
            env={**os.environ, "FLICK_LOG": "warn"},
        )
        addr = os.path.join(self.dir, "flick.addr")
        for _ in range(600):
            if os.path.exists(addr) and open(addr).read().strip():
                break
            time.sleep(0.05)
        self.base = "http://" + open(addr).read().strip()
        self.key = open(os.path.join(self.dir, "admin.key")).read().strip()
        self.binary = binary

    def cli(self, *args):
        env = {**os.environ, "FLICK_DATA_DIR": self.dir}
        return subprocess.run([self.binary, *args], env=env, check=True, stdout=subprocess.PIPE, text=True).stdout

    def get(self, path):
        req = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {self.key}"})
        # Straight to 127.0.0.1, whatever proxy the environment names.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=60) as r:
            return json.load(r)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def deploy(flick, topic, subject):
    src = Path(flick.dir) / "src" / "lat"
    src.mkdir(parents=True)
    (src / "main.py").write_text(HANDLER)
    (src / "flick.toml").write_text(
        'name = "lat"\nruntime = "python3"\nhandler = "main.handler"\nmin_instances = 1\n\n'
        f'[[triggers]]\ntype = "mqtt"\nname = "m"\nurl = "mqtt://127.0.0.1:1883"\ntopic = "{topic}"\nqos = 1\n\n'
        f'[[triggers]]\ntype = "nats"\nname = "n"\nurl = "nats://127.0.0.1:4222"\nsubject = "{subject}"\n'
    )
    flick.cli("deploy", str(src))
    for _ in range(600):
        ts = flick.get("/v1/triggers/lat")["triggers"]
        if len(ts) == 2 and all(t["state"] == "connected" for t in ts):
            return
        time.sleep(0.05)
    sys.exit(f"triggers never connected: {ts}")


def publish_mqtt(topic, n, gap):
    p = subprocess.Popen(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", "1883", "-q", "1", "-t", topic, "-l"],
        stdin=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # connected before the first timestamp
    for _ in range(n):
        p.stdin.write(json.dumps({"sent": time.time_ns()}) + "\n")
        p.stdin.flush()
        time.sleep(gap)
    p.stdin.close()
    p.wait(timeout=60)


def publish_nats(subject, n, gap):
    s = socket.create_connection(("127.0.0.1", 4222))
    s.recv(4096)  # INFO
    s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
    for _ in range(n):
        body = json.dumps({"sent": time.time_ns()}).encode()
        s.sendall(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(body), body))
        time.sleep(gap)
    s.sendall(b"PING\r\n")
    s.recv(4096)
    s.close()


def collect(flick, kind, n, since_seq):
    for _ in range(1200):
        acts = flick.get(f"/v1/activations?function=lat&cause={kind}&limit=1000")["activations"]
        done = [a for a in acts if a.get("seq", 0) > since_seq and a["status"] not in ("queued", "running")]
        if len(done) >= n:
            break
        time.sleep(0.1)
    lat = []
    for a in done:
        r = json.loads(a["response"])
        if r.get("sent"):
            lat.append((r["t"] - r["sent"]) / 1e6)
    return lat, max([a.get("seq", 0) for a in done] + [since_seq])


def main():
    args = parse_args()
    for tool in ("mosquitto_pub",):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing (apt install mosquitto-clients)")
    if not args.no_build:
        cmd = ["nice", "-n", "10", "cargo", "build", "--release", "-p", "flick"]
        print("$", " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, cwd=REPO, check=True)
    topic = f"flick-bench/{os.getpid()}/lat"
    subject = f"flick.bench.{os.getpid()}.lat"
    load_before = os.getloadavg()[0]
    flick = Flick(args.flick)
    rounds = {"mqtt": [], "nats": []}
    try:
        deploy(flick, topic, subject)
        seq = {"mqtt": 0, "nats": 0}
        # One warm-up message each: the instance and both paths are hot.
        publish_mqtt(topic, 3, 0.05)
        publish_nats(subject, 3, 0.05)
        for kind in ("mqtt", "nats"):
            _, seq[kind] = collect(flick, kind, 3, 0)
        for r in range(args.rounds):
            for kind, publish, where in (("mqtt", publish_mqtt, topic), ("nats", publish_nats, subject)):
                print(f"round {r + 1}/{args.rounds}: {kind} …", file=sys.stderr)
                publish(where, args.messages, args.gap_ms / 1000)
                lat, seq[kind] = collect(flick, kind, args.messages, seq[kind])
                rounds[kind].append(lat)
    finally:
        flick.stop()
    load_after = os.getloadavg()[0]
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print()
    print(
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, flick {commit.stdout.strip()} ({Path(args.flick).name}), "
        f"{os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}; load average {load_before:.1f} → {load_after:.1f}"
    )
    print(f"{args.rounds} rounds × {args.messages} messages, {args.gap_ms:g} ms apart; medians over rounds\n")
    print("| broker → function start | p50 | p99 | per round p50 / p99 | n |")
    print("|---|---:|---:|---|---:|")
    summary = {}
    for kind, label in (("mqtt", "MQTT QoS 1 (Mosquitto)"), ("nats", "NATS core (nats-server)")):
        ps = [(pct(l, 0.5), pct(l, 0.99)) for l in rounds[kind] if l]
        if not ps:
            print(f"| {label} | – | – | no samples | 0 |")
            continue
        p50 = statistics.median(p for p, _ in ps)
        p99 = statistics.median(q for _, q in ps)
        n = sum(len(l) for l in rounds[kind])
        per = ", ".join(f"{a:.1f} / {b:.1f}" for a, b in ps)
        summary[kind] = {"p50_ms": p50, "p99_ms": p99, "n": n}
        print(f"| {label} | **{p50:.1f} ms** | {p99:.1f} ms | {per} | {n} |")
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    path = results / f"triggers-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps({"args": vars(args), "rounds": rounds, "summary": summary}, indent=1))
    print(f"\nraw results: {path.relative_to(REPO)}", file=sys.stderr)


if __name__ == "__main__":
    main()
