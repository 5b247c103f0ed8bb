#!/usr/bin/env python3
"""flick's benchmark harness: one command measures flick and its peers.

    python3 bench/run.py                  # everything (~10 min on 2 cores)
    python3 bench/run.py --quick          # fewer samples, shorter loads
    python3 bench/run.py --only cold,warm # a subset of the sections
    python3 bench/run.py --write-md       # also rewrite BENCHMARKS.md

Sections (bench/README.md says what each measures):
  cold    scaled to zero → first response, per runtime, sandbox on and off
  warm    latency at 1 client, throughput at 32, against the bare handler;
          close-per-request servers (http.server, gunicorn); CPU per request
  burst   200 requests to one cold function; 1 each to 50 cold functions
  memory  idle `flick up` with 100 functions, its whole process tree;
          memory per warm instance
  peers   functions-framework and serverless-offline side by side
  metrics the warm path with Prometheus metrics on vs off, same rounds
  heavy   a numpy + pandas function: cold start and scale-out
  callgrind  instructions per warm request of `flick up` under valgrind

It installs what it needs (wrk via apt-get, the peers under bench/), builds
flick in release mode when the binary is missing or older than the sources,
prints tables, and writes the raw results to bench/results/<timestamp>.json.
It only measures: nothing here asserts on a time. All traffic stays on
127.0.0.1, and every loop is bounded in count and time.

Standard library only.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import burst, callgrind, cold, deps, heavy, memory, metrics, peers, report, warm  # noqa: E402
from harness.context import BENCH, QUICK, REPO, Context, Settings  # noqa: E402

SECTIONS = {
    "cold": cold.run,
    "warm": warm.run,
    "burst": burst.run,
    "memory": memory.run,
    "peers": peers.run,
    "metrics": metrics.run,
    "heavy": heavy.run,
    "callgrind": callgrind.run,
}


def parse_args():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--only", help="comma-separated sections: " + ",".join(SECTIONS), default=",".join(SECTIONS))
    p.add_argument("--quick", action="store_true", help="fewer samples and shorter loads (a smoke run)")
    p.add_argument("--write-md", action="store_true", help="rewrite BENCHMARKS.md with this run's results")
    p.add_argument("--keep-work", action="store_true", help="keep the scratch dir (data dirs, server logs)")
    p.add_argument(
        "--baseline",
        metavar="FLICK_BINARY",
        help="another flick binary (e.g. a build of an older commit) measured side by side in the cold and warm sections",
    )
    args = p.parse_args()
    if args.baseline and not Path(args.baseline).is_file():
        p.error(f"--baseline {args.baseline}: no such file")
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s): {', '.join(unknown)} (choose from {', '.join(SECTIONS)})")
    return args


def invocation(args):
    parts = ["python3 bench/run.py"]
    if args.only != ",".join(SECTIONS):
        parts.append(f"--only {args.only}")
    parts += ["--quick"] * args.quick + ["--write-md"] * args.write_md
    parts += [f"--baseline {args.baseline}"] * bool(args.baseline)
    return " ".join(parts)


def flick_python():
    """The interpreter flick's python3 runtime runs: the real binary behind
    `python3` on PATH (crates/cli/src/server.rs resolves it the same way)."""
    out = subprocess.run(
        ["python3", "-c", "import sys; print(sys.executable)"], capture_output=True, text=True, timeout=30
    )
    return out.stdout.strip() or sys.executable


def main():
    args = parse_args()
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    work = Path(tempfile.mkdtemp(prefix=f"flick-bench-{run_id}-"))
    ctx = Context(settings=QUICK if args.quick else Settings(), work=work, python=flick_python())
    ctx.baseline = Path(args.baseline).resolve() if args.baseline else None
    results = {"run_id": run_id, "invocation": invocation(args), "settings": asdict(ctx.settings)}
    try:
        results["flick_build"] = deps.ensure_flick(ctx)
        if {"warm", "peers", "metrics"} & set(args.sections):
            deps.ensure_wrk(ctx)
        results["machine"] = report.machine_info()
        ctx.log(f"scratch dir {work}; sections: {', '.join(args.sections)}{' (quick)' if args.quick else ''}")
        for name in args.sections:
            began = time.monotonic()
            # Other work on a shared machine shows here: the 1-minute load average.
            results.setdefault("load_average", {})[name] = {"before": os.getloadavg()[0]}
            ctx.log(f"== {name}")
            try:
                results[name] = SECTIONS[name](ctx)
            except Exception:
                # One broken section must not cost the others' results.
                results[name] = {"error": traceback.format_exc()}
                ctx.log(f"{name} FAILED:\n{results[name]['error']}")
            results["load_average"][name]["after"] = os.getloadavg()[0]
            ctx.log(f"== {name} took {time.monotonic() - began:.0f}s")
    finally:
        if args.keep_work:
            ctx.log(f"kept the scratch dir {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["commands"] = ctx.commands
    write_results(results, ctx)
    print(report.text(results))
    if args.write_md:
        md = REPO / "BENCHMARKS.md"
        md.write_text(report.markdown(results, results["invocation"], md.read_text() if md.exists() else ""))
        ctx.log("rewrote BENCHMARKS.md")
    return 0


def write_results(results, ctx):
    """The raw results, written before anything renders them."""
    out_dir = BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"{results['run_id']}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    ctx.log(f"results: {path.relative_to(REPO)}")


if __name__ == "__main__":
    sys.exit(main())
