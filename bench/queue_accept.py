#!/usr/bin/env python3
"""Accept rate of flick's durable queue (crates/queue), one command:

    python3 bench/queue_accept.py                       # 5 rounds of 5 s per measurement
    python3 bench/queue_accept.py --rounds 3 --seconds 3 --concurrency 1,16,256,1024

Builds `cargo build --release -p flick-queue --example enqueue_bench` (under
`nice -n 10`; minutes on 2 cores the first time), then runs it `--rounds`
times. Each run measures, on fresh SQLite files in WAL mode with
`synchronous = FULL` in a scratch dir on the repository's file system:

  sqlite, 1 row per commit     plain SQLite, one fsync'd transaction per row
  sqlite, 100 rows per commit  the same rows in transactions of 100
  flick-queue enqueue  N       N tasks calling `SqliteQueue::enqueue` in a loop
                               (tokio, 2 worker threads); each Ok is committed
                               and fsync'd (group commit)
  flick-queue lease 4 + 4 acks 64 tasks draining the last backlog: lease 4,
                               ack each (the queue's drain ceiling)

and prints medians over the rounds: accepted per second, enqueue latency
p50/p99, requests per commit. Raw results go to bench/results/queue-<ts>.json.
It only measures: nothing here asserts on a time. Standard library only.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BINARY = REPO / "target" / "release" / "examples" / "enqueue_bench"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="runs of the whole set (medians over them)")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    p.add_argument("--concurrency", default="1,16,256", help="concurrent enqueuers, comma-separated")
    p.add_argument("--dir", default=str(REPO / "target"), help="where the scratch databases go")
    p.add_argument("--no-build", action="store_true", help="use the example binary as it is")
    return p.parse_args()


def build():
    cmd = ["nice", "-n", "10", "cargo", "build", "--release", "-p", "flick-queue", "--example", "enqueue_bench"]
    print("$", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, cwd=REPO, check=True)


def one_run(args):
    cmd = [str(BINARY), "--seconds", str(args.seconds), "--concurrency", args.concurrency, "--dir", args.dir]
    out = subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.PIPE, timeout=600).stdout.decode()
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def machine():
    def first(cmd):
        try:
            return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.strip()
        except OSError:
            return "?"

    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    fs = first(["df", "--output=fstype,source", args_dir()]).splitlines()[-1:]
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "fs": " ".join(fs)}


_ARGS = None


def args_dir():
    return _ARGS.dir if _ARGS else str(REPO)


def main():
    global _ARGS
    args = _ARGS = parse_args()
    if not args.no_build:
        build()
    if not BINARY.exists():
        sys.exit(f"{BINARY} is missing (build failed?)")
    info = machine()
    load_before = os.getloadavg()[0]
    rounds = []
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds} …", file=sys.stderr)
        rounds.append(one_run(args))
    load_after = os.getloadavg()[0]

    by_key = {}
    for run in rounds:
        for m in run:
            by_key.setdefault((m["what"], m["concurrency"]), []).append(m)
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    print()
    print(
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, flick {commit.stdout.strip()}, {info['nproc']} CPUs "
        f"({info['cpu']}), kernel {info['kernel']}, {info['fs']}; load average {load_before:.1f} → {load_after:.1f}"
    )
    print(f"medians of {args.rounds} rounds × {args.seconds:g} s, WAL + synchronous = FULL\n")
    print("| what | concurrent | accepted/s | p50 | p99 | per commit | commit |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    summary = []
    for (what, conc), ms in by_key.items():
        med = {k: statistics.median(m[k] for m in ms) for k in ("per_s", "p50_us", "p99_us", "group", "commit_us")}
        rates = ", ".join(f"{m['per_s']:.0f}" for m in ms)
        summary.append({"what": what, "concurrency": conc, **med, "rates": [m["per_s"] for m in ms]})
        print(
            f"| {what} | {conc} | **{med['per_s']:,.0f}** ({rates}) | {med['p50_us'] / 1000:.1f} ms "
            f"| {med['p99_us'] / 1000:.1f} ms | {med['group']:.1f} | {med['commit_us'] / 1000:.1f} ms |"
        )
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    path = results / f"queue-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(
        json.dumps(
            {"machine": info, "load": [load_before, load_after], "args": vars(args), "rounds": rounds, "summary": summary},
            indent=1,
        )
    )
    print(f"\nraw results: {path.relative_to(REPO)}", file=sys.stderr)


if __name__ == "__main__":
    if shutil.which("cargo") is None:
        sys.exit("cargo is not on PATH")
    main()
