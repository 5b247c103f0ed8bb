"""Turns a run's results into tables (for the terminal and for BENCHMARKS.md)
and checks them against the targets."""

import os
import platform
import re
import subprocess
from datetime import datetime, timezone

from .context import REPO

NOTES_BEGIN = "<!-- notes:begin (kept by --write-md) -->"
NOTES_END = "<!-- notes:end -->"


# --- machine -------------------------------------------------------------------


def machine_info():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "cpu": cpu,
        "memory_gib": round(mem_kib / 2**20, 1),
        "os": _os_name(),
        "python": platform.python_version(),
        "node": _output(["node", "--version"]),
        "wrk": _output(["wrk", "--version"]).split(" [")[0],
        "flick_commit": _output(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"]),
        "flick_tree_dirty": bool(
            _output(["git", "-C", str(REPO), "status", "--porcelain", "--", "crates", "Cargo.toml", "Cargo.lock"])
        ),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _os_name():
    try:
        with open("/etc/os-release") as f:
            return re.search(r'PRETTY_NAME="([^"]*)"', f.read()).group(1)
    except (OSError, AttributeError):
        return platform.system()


def _output(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


# --- formatting ----------------------------------------------------------------


def ms(v):
    if v is None:
        return "–"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:,.0f}"


def us(v):
    return "–" if v is None else f"{v:,.0f}"


def rps(v):
    return "–" if v is None else f"{v:,.0f}"


def mib(kib):
    return "–" if kib is None else f"{kib / 1024:.1f}"


def times(v):
    return "–" if v is None else f"×{v:.2f}"


def pct(v):
    return "–" if v is None else f"{v * 100:.0f} %"


def signed_ms(v):
    return "–" if v is None else f"{v:+.1f}" if abs(v) >= 10 else f"{v:+.2f}"


# --- the goals -----------------------------------------------------------------
# Issue 12's targets (cold starts, warm path, bursts, heavy imports, idle tree),
# with the earlier ones they do not replace. Tables show them beside the figure.

COLD_GOAL_MS = {"python3": 3, "node": 4, "exec": 2}
ADDED_P50_GOAL_US = 150
THROUGHPUT_GOAL = {"python3": 0.40, "http": 0.50}  # the long-term goal is 70 %
FLICK_CPU_GOAL_US = 15
SANDBOX_P99_GOAL = 1.5
DISTINCT_BURST_GOAL_PER_S = 200
HEAVY_GOAL_MS = 5
TREE_PSS_GOAL_MIB = 40
FLICK_RSS_GOAL_MIB = 40


# --- tables --------------------------------------------------------------------
# A table is (title, headers, rows, note); rendered as text or as markdown.


def tables(results):
    out = []
    for section, build in (
        ("cold", _cold),
        ("warm", _warm),
        ("burst", _burst),
        ("memory", _memory),
        ("peers", _peers),
        ("metrics", _metrics),
        ("heavy", _heavy),
        ("callgrind", _callgrind),
    ):
        data = results.get(section)
        if data is None:
            continue
        if "error" in data:
            out.append((f"{section}: FAILED", ["error"], [[data["error"].strip().splitlines()[-1]]], None))
            continue
        out.extend(build(data))
    return out


def _cold(d):
    rows, failures = [], []
    for rt, r in d.items():
        if rt.startswith("_"):
            continue
        for pair, (on_mode, off_mode) in (
            ("default", ("sandbox", "no-sandbox")),
            ("fork templates off", ("sandbox, fork templates off", "no-sandbox, fork templates off")),
            ("no stem cells", ("sandbox, no stem cells", "no-sandbox, no stem cells")),
        ):
            if on_mode not in r["modes"]:
                continue
            on, off = r["modes"][on_mode], r["modes"][off_mode]
            cost = r["sandbox_cost"].get(pair, {})
            stems = {
                "default": "1, fork template (default)" if rt == "python3" else "1 (default)",
                "fork templates off": "1, templates off",
                "no stem cells": "0, templates off",
            }[pair]
            if rt in ("exec", "http"):
                stems = "–"
            elif rt != "python3" and pair == "no stem cells":
                stems = "0"
            rows.append(
                [
                    rt,
                    stems,
                    ms(on["client_ms"]["p50"]),
                    ms(on["client_ms"]["p99"]),
                    ms(on["init_ms"]["p50"]),
                    ms(off["client_ms"]["p50"]),
                    ms(off["client_ms"]["p99"]),
                    ms(off["init_ms"]["p50"]),
                    signed_ms(cost.get("cost_ms")),
                    times(cost.get("ratio")),
                    f"{on['client_ms']['n']}/{off['client_ms']['n']}",
                ]
            )
            for mode_name, m in ((on_mode, on), (off_mode, off)):
                if m.get("errors"):
                    bad = len(m["samples"]) - m["client_ms"]["n"]
                    failures.append(f"{rt} ({mode_name}): {bad} bad samples: {'; '.join(m['errors'])}")
    headers = [
        "runtime",
        "stem cells",
        "sandbox p50 ms",
        "p99 ms",
        "init_ms p50",
        "no sandbox p50 ms",
        "p99 ms",
        "init_ms p50",
        "sandbox cost (p50 Δ ms)",
        "sandbox ÷ no sandbox",
        "n",
    ]
    note = (
        "Client-observed, scaled to zero → first response; init_ms is flick's own record of the instance start. "
        "Stem cells: started, function-less interpreters flick keeps ready (config `stem_cells`); "
        "0 = every cold start starts the interpreter and sandbox from nothing. Fork template (python3): a "
        "revision that comes back from zero a second time keeps a process that imported its handler and a "
        "fork of it ready; its later cold starts take that fork (all samples but the first two of the default "
        "row); 'templates off' is a revision's first cold start, from a stem cell. "
        "n = good samples (sandbox/no sandbox)."
    )
    if failures:
        note += " FAILED SAMPLES: " + " | ".join(failures)
    out = [("1. Cold start", headers, rows, note)]
    base_rows = []
    for rt, r in d.items():
        if rt.startswith("_") or "baseline: sandbox" not in r["modes"]:
            continue
        now, then = r["modes"]["sandbox"], r["modes"]["baseline: sandbox"]
        base_rows.append(
            [
                rt,
                ms(now["client_ms"]["p50"]),
                ms(now["client_ms"]["p99"]),
                ms(then["client_ms"]["p50"]),
                ms(then["client_ms"]["p99"]),
                times(r.get("vs_baseline")),
                f"{now['client_ms']['n']}/{then['client_ms']['n']}",
            ]
        )
    if base_rows:
        out.append(
            (
                "1b. Cold start against the baseline build",
                ["runtime", "this build p50 ms", "p99 ms", "baseline p50 ms", "p99 ms", "this ÷ baseline", "n"],
                base_rows,
                "Sandboxed, default settings (one stem cell per runtime), sampled in the same rounds as section 1. "
                "Baseline: the binary given with `--baseline`.",
            )
        )
    idle = d.get("_idle") or {}
    if idle:
        idle_rows = [
            [
                r["server"],
                r["runtime"],
                ms(r["client_ms"]["p50"]),
                ms(r["client_ms"]["max"]),
                ms(r["init_ms"]["p50"]),
                f"{r['prewarmed']}/{r['client_ms']['n']}",
                f"{r['client_ms']['n']}/{len(r['samples'])}",
                f"≤ {COLD_GOAL_MS[r['runtime']]} ms" if r["server"] == "this build" else "",
            ]
            for r in idle.values()
        ]
        seconds = next(iter(idle.values()))["idle_s"]
        out.append(
            (
                f"1c. Cold start after {seconds:.0f} s of idleness",
                ["server", "runtime", "p50 ms", "max ms", "init_ms p50", "ran in a stem cell", "n", "target p50"],
                idle_rows,
                f"Sandboxed, default settings, one server per runtime; each sample follows {seconds:.0f} s "
                "without any request to that server (tokio retires idle blocking threads after 10 s). "
                "'ran in a stem cell' is the activation's `prewarmed`. n = good samples (cold, 200) of all.",
            )
        )
    return out


def _warm(d):
    rows = []
    for label, r in d["results"].items():
        c1, c32 = r["c1"], r["c32"]
        bad = sum(c1["errors"].values()) + sum(c32["errors"].values())
        rows.append(
            [label, us(c1["p50_us"]), us(c1["p99_us"]), rps(c32["rps"]), us(c32["p50_us"]), us(c32["p99_us"]), str(bad)]
        )
    headers = ["target", "1 client p50 µs", "p99 µs", "32 clients req/s", "p50 µs", "p99 µs", "errors"]
    t1 = ("2. Warm path", headers, rows, "wrk, one thread, POST {}; medians over interleaved rounds.")
    cmp_rows = []
    for name, c in d["comparisons"].items():
        kind = name.split(" ")[0]
        sandboxed = "(no sandbox)" not in name
        cmp_rows.append(
            [
                name,
                us(c["added_p50_us"]),
                f"≤ {ADDED_P50_GOAL_US}" if sandboxed else "",
                pct(c["throughput_ratio"]),
                f"≥ {pct(THROUGHPUT_GOAL[kind])}" if sandboxed and kind in THROUGHPUT_GOAL else "",
                times(c.get("p99_c32_sandbox_ratio")) if "p99_c32_sandbox_ratio" in c else "",
                f"≤ {times(SANDBOX_P99_GOAL)}" if "p99_c32_sandbox_ratio" in c else "",
            ]
        )
    t2 = (
        "2b. flick against its baseline",
        [
            "function",
            "added p50 at 1 client (µs)",
            "target",
            "throughput at 32 clients (% of baseline)",
            "target",
            "p99 at 32 clients, sandbox ÷ no sandbox",
            "target",
        ],
        cmp_rows,
        "added = flick's p50 minus the baseline's p50, both at 1 client. http keeps its connections alive; "
        "http-stdlib (`http.server`, HTTP/1.0) and http-gunicorn (gunicorn's sync worker) close each one, so "
        "flick opens an upstream connection per request; each is compared with the same server started "
        "directly. Throughput targets: issue 12's step (the long-term goal is 70 %).",
    )
    out = [t1, t2]
    cpu_table = _cpu_table(d.get("cpu_per_request"))
    b = d.get("breakdown")
    if b:
        direct = b.get("http server direct (baseline)", {}).get("client_us")
        rows = []
        for label, r in b.items():
            total = r.get("total_us")
            outside = None if None in (total, direct, r["client_us"]) else r["client_us"] - direct - total
            rows.append(
                [label, us(r["client_us"]), us(total), us(r.get("exec_us")), us(r.get("queue_us")), us(outside)]
            )
        out.append(
            (
                "2c. Where the time goes at 1 client (medians, µs)",
                ["target", "client-observed", "flick `total`", "`exec`", "`queue`", "in flick outside `total`"],
                rows,
                "From flick's Server-Timing header, one Python client, sequential requests. `total` runs from "
                "taking the request to having the function's answer; `exec` is the instance's part of it. "
                "The last column is client-observed − the direct server's client-observed − `total`: what "
                "flick spends around `total` (HTTP handling, task hand-offs, the activation record).",
            )
        )
    vs = d.get("vs_baseline_build")
    if vs:
        rows = [
            [
                kind,
                us(c["p50_c1_us"][0]),
                us(c["p50_c1_us"][1]),
                times(c["p50_c1_ratio"]),
                rps(c["rps_c32"][0]),
                rps(c["rps_c32"][1]),
                times(c["rps_c32_ratio"]),
            ]
            for kind, c in vs.items()
        ]
        out.append(
            (
                "2d. This build against the baseline build (both sandboxed, same rounds)",
                ["function", "p50 1 client µs", "baseline µs", "this ÷ baseline", "req/s 32 clients", "baseline",
                 "this ÷ baseline"],
                rows,
                "Baseline: the binary given with `--baseline`, serving the same functions in the same "
                "interleaved wrk rounds.",
            )
        )
    return out + ([cpu_table] if cpu_table else [])


def _cpu_table(cpu):
    if not cpu:
        return None
    rows = []
    for label, c in cpu.items():
        if "error" in c:
            rows.append([label, "–", "–", "–", "–", "–", c["error"][:120]])
            continue
        is_flick = label.startswith("flick ")
        rows.append(
            [
                label,
                f"{c['requests']:,}",
                rps(c["rps"]),
                f"{c['own_us']:.1f}" if c["own_us"] is not None else "–",
                f"{c['below_us']:.1f}" if c.get("below_us") is not None else "–",
                f"{c['total_us']:.1f}" if c["total_us"] is not None else "–",
                f"≤ {FLICK_CPU_GOAL_US} (flick's own)" if is_flick else "",
            ]
        )
    return (
        "2f. CPU per warm request at 32 clients (µs)",
        ["target", "requests", "req/s", "own process", "below it (instances)", "whole tree", "target"],
        rows,
        "utime + stime from /proc/<pid>/stat before and after a fixed request count (wrk, 32 connections, "
        "wrk/count.lua), divided by the count. For flick: `flick up` itself (all its threads), and every "
        "process below it (the instances: python3 bootstrap or http server, and the sandbox's waiting "
        "parents). For a baseline: its server process (and a gunicorn worker below its master). "
        "Resolution: one clock tick over the request count, "
        + ", ".join(
            sorted({f"{c['tick_us']:.1f} µs" for c in cpu.values() if c.get("tick_us") is not None})
        )
        + ".",
    )


def _metrics(d):
    rows = []
    for kind, c in d["comparison"].items():
        rows.append(
            [
                kind,
                us(c["p50_c1_us"][0]),
                us(c["p50_c1_us"][1]),
                times(c["p50_c1_ratio"]),
                rps(c["rps_c32"][0]),
                rps(c["rps_c32"][1]),
                times(c["rps_c32_ratio"]),
            ]
        )
    check = d.get("check", {})
    scrapes = d.get("scrapes", {})
    note = (
        "Two sandboxed flicks serving the warm section's functions in the same interleaved wrk rounds "
        "(medians over rounds): metrics on (the default) and `--no-metrics`. The metrics-on flick was "
        f"scraped {scrapes.get('ok', 0)} times during the rounds ({scrapes.get('failed', 0)} failed, "
        f"last scrape {scrapes.get('last_bytes', 0)} bytes); afterwards it had counted "
        f"{check.get('invocations_counted_on', 0):,.0f} invocations, and the metrics-off flick answered "
        f"/metrics with {check.get('metrics_status_off')}."
    )
    return [
        (
            "2e. Warm path: metrics on vs off (same rounds)",
            ["function", "p50 1 client µs, on", "off", "on ÷ off", "req/s 32 clients, on", "off", "on ÷ off"],
            rows,
            note,
        )
    ]


def _burst(d):
    rows = []
    for mode, kinds in d.items():
        for kind, b in kinds.items():
            s = b["statuses"]
            other = ", ".join(f"{k}: {v}" for k, v in b["other"].items())
            rows.append(
                [
                    mode,
                    _burst_label(kind, b),
                    str(b["requests"]),
                    str(s["200"]),
                    str(s["429"]),
                    f"{s['other']}" + (f" ({other})" if other else ""),
                    ms(b["wall_s"]["p50"] * 1e3),
                    ms(b["latency_ms"]["p50"]),
                    ms(b["latency_ms"]["p99"]),
                    "/".join(str(c) for c in b["cold"]),
                    "–" if b.get("per_s") is None else f"{b['per_s']:.0f}",
                    "every request 200"
                    if kind == "same"
                    else f"≥ {DISTINCT_BURST_GOAL_PER_S}/s, no errors",
                ]
            )
    headers = [
        "flick",
        "burst",
        "requests",
        "200",
        "429",
        "other",
        "wall ms (median)",
        "p50 ms",
        "p99 ms",
        "cold starts per rep",
        "requests/s (requests ÷ wall, median)",
        "target",
    ]
    note = (
        "flick's default settings (`max_queue`, `queue_timeout`, one stem cell per runtime). For the distinct "
        "burst, requests ÷ wall is the cold-start rate when every request was a cold start (see the column "
        "before it)."
    )
    return [("3. Bursts against scaled-to-zero functions", headers, rows, note)]


def _burst_label(kind, b):
    per_rep = b["requests"] // max(1, len(b["cold"]))
    return f"{per_rep} → 1 function" if kind == "same" else f"1 each → {per_rep} functions"


def _memory(d):
    rows = [
        ["`flick up`, no functions", mib(d["empty_kib"])],
        [f"`flick up` after deploying {d['functions']} functions", mib(d["after_deploys_kib"])],
        [
            f"`flick up` restarted with {d['functions']} functions, {d['restarted_instances']} instances",
            mib(d["restarted_kib"]),
        ],
    ]
    below = d.get("restarted_below")
    if below:
        rows.append(
            [
                f"its {below['processes']} child processes at that point (stem cells), RSS / PSS",
                f"{mib(below['rss_kib'])} / {mib(below['pss_kib'])}",
            ]
        )
    t1 = ("4. Idle memory of flick (RSS of the `flick up` process, sandboxed)", ["state", "RSS MiB"], rows, None)
    tree = d.get("idle_tree")
    t_tree = None
    if tree:
        tree_rows = [
            [str(r["pid"]), str(r["ppid"] or "–"), r["comm"], f"`{r['cmdline'][:90]}`", mib(r["rss_kib"]),
             mib(r["pss_kib"])]
            for r in tree
        ]
        total_rss, total_pss = sum(r["rss_kib"] for r in tree), sum(r["pss_kib"] for r in tree)
        tree_rows.append(
            ["", "", f"**total ({len(tree)} processes)**", "", mib(total_rss),
             f"{mib(total_pss)} (target ≤ {TREE_PSS_GOAL_MIB})"]
        )
        stems = d.get("stem_cells") or {}
        t_tree = (
            f"4c. The whole idle tree: flick with {d['functions']} functions, no instances, stem cells ready",
            ["pid", "parent", "comm", "command line", "RSS MiB", "PSS MiB"],
            tree_rows,
            "After the restart above, once the stem cells flick keeps ready stopped changing "
            f"(/v1/instances `stem_cells`: {', '.join(f'{k} {v}' for k, v in stems.items()) or 'none'}). "
            "PSS splits shared pages among the processes sharing them: the tree's PSS is what it costs.",
        )
    inst = []
    for mode, m in d["instances"].items():
        per = m["per_instance"]
        inst.append(
            [
                mode,
                str(m["count"]),
                mib(per["rss_kib"]),
                mib(per["pss_kib"]),
                mib(m["after"]["python_rss_kib"]["p50"]),
                mib(per["cgroup_kib"]) if m["after"]["cgroup_kib"] else "–",
                mib(per["flick_rss_kib"]),
            ]
        )
    t2 = (
        "4b. Memory per warm idle python3 instance",
        [
            "flick",
            "instances",
            "RSS MiB",
            "PSS MiB",
            "python RSS MiB (median process)",
            "cgroup usage MiB",
            "flick's own RSS growth MiB",
        ],
        inst,
        "Growth of everything below flick when N idle instances are up, divided by N.",
    )
    return [t1, t2] + ([t_tree] if t_tree else [])


def _peers(d):
    out = []
    if d.get("errors"):
        out.append(
            (
                "5. Peers: unavailable",
                ["peer", "error"],
                [[k, v.strip().splitlines()[-1][:300]] for k, v in d["errors"].items()],
                None,
            )
        )
    rows = []
    for name, c in d["cold"].items():
        mem = d["memory"].get(name, {})
        calls = c["first_call_ms"]
        rows.append(
            [
                name,
                ms(c["first_response_ms"]["p50"]),
                ms(c["first_response_ms"]["p99"]),
                ms(c["listen_ms"]["p50"]),
                ms(calls.get("python3", {}).get("p50")),
                ms(calls.get("node", {}).get("p50")),
                mib(mem.get("rss_kib")),
                mib(mem.get("pss_kib")),
                str(c["first_response_ms"]["n"]),
            ]
        )
    out.append(
        (
            "5. Peers: process start → first response, idle memory",
            [
                "server",
                "start → first response p50 ms",
                "p99 ms",
                "listening p50 ms",
                "first python3 call p50 ms",
                "first node call p50 ms",
                "idle RSS MiB",
                "idle PSS MiB",
                "n",
            ],
            rows,
            None,
        )
    )
    if d.get("warm"):
        warm_rows = [
            [
                label,
                us(r["c1"]["p50_us"]),
                us(r["c1"]["p99_us"]),
                rps(r["c32"]["rps"]),
                us(r["c32"]["p50_us"]),
                us(r["c32"]["p99_us"]),
                str(sum(r["c1"]["errors"].values()) + sum(r["c32"]["errors"].values())),
            ]
            for label, r in d["warm"].items()
        ]
        out.append(
            (
                "5b. Peers: warm path",
                ["target", "1 client p50 µs", "p99 µs", "32 clients req/s", "p50 µs", "p99 µs", "errors"],
                warm_rows,
                None,
            )
        )
    cmp_rows = []
    for peer, c in d.get("comparisons", {}).items():
        cmp_rows.append(
            [
                peer,
                times(c.get("cold_start_ratio")),
                times(c.get("idle_rss_ratio")),
                times(c.get("python3_p50_c1_ratio")),
                times(c.get("python3_throughput_ratio")),
                times(c.get("python3_p99_c32_ratio")),
                times(c.get("node_throughput_ratio")),
            ]
        )
    if cmp_rows:
        out.append(
            (
                "5c. flick ÷ peer",
                [
                    "peer",
                    "start → first response",
                    "idle RSS",
                    "python3 p50 (1 client)",
                    "python3 req/s (32)",
                    "python3 p99 (32)",
                    "node req/s (32)",
                ],
                cmp_rows,
                "Below ×1 flick is faster/smaller for times and memory; above ×1 flick serves more req/s.",
            )
        )
    return out


def _heavy(d):
    rows = []
    for key, label in (("cold", "cold start after scale to zero"), ("scale_out", "second instance while one is warm")):
        r = d[key]
        rows.append(
            [
                label,
                ms(r["client_ms"]["p50"]),
                ms(r["client_ms"]["max"]),
                ms(r["init_ms"]["p50"]),
                f"{r['prewarmed']}/{r['client_ms']['n']}",
                f"{r['client_ms']['n']}/{len(r['samples'])}",
                f"≤ {HEAVY_GOAL_MS} ms",
            ]
        )
    return [
        (
            "7. Heavy imports: a python3 function importing numpy and pandas",
            ["case", "p50 ms", "max ms", "init_ms p50", "ran in a stem cell", "n", "target p50"],
            rows,
            "Sandboxed, default settings; numpy and pandas come from the function's requirements.txt, installed "
            f"by flick at deploy ({d['deploy_s']:.0f} s). Client-observed time of the request that needed the new "
            "instance; init_ms from its activation record. n = good samples (a cold start, 200) of all.",
        )
    ]


def _callgrind(d):
    per_req = lambda v: "–" if v is None else f"{v:,.0f}"  # noqa: E731
    rows = []
    for kind, c in d["functions"].items():
        rows.append(
            [
                kind,
                f"{c['requests']:,}",
                per_req(c["per_request"]),
                per_req(c["per_request_net"]),
                "–" if c["idle_instructions"] is None else f"{c['idle_instructions'] / c['seconds']:,.0f}",
                f"{c['ok']}/{c['requests']}",
            ]
        )
    mode = "sandboxed" if d.get("sandbox") else "with --insecure-no-sandbox (the sandbox did not start under valgrind)"
    out = [
        (
            "8. Instructions per warm request of `flick up` (callgrind)",
            ["function", "requests", "instructions/request", "minus idle background", "idle instructions/s", "200s"],
            rows,
            f"`flick up` under `valgrind --tool=callgrind`, {mode}; sequential requests on one kept-alive "
            "connection, counted between `callgrind_control -z` and `-d`; instances are not counted (valgrind "
            "does not follow exec). 'minus idle background' subtracts a zero/dump over as long a time without "
            "requests. A regression figure: it does not move with the machine's load.",
        )
    ]
    if "no_metrics" in d:
        rows = []
        for kind, on in d["functions"].items():
            off = d["no_metrics"][kind]
            a, b = on["per_request_net"], off["per_request_net"]
            rows.append(
                [
                    kind,
                    per_req(a),
                    per_req(b),
                    "–" if None in (a, b) else f"{a - b:+,.0f}",
                    "–" if None in (a, b) else f"×{a / b:.3f}",
                    f"{off['ok']}/{off['requests']}",
                ]
            )
        status = d.get("metrics_status", {})
        out.append(
            (
                "8b. Instructions per warm request: metrics on vs off (callgrind, same run)",
                ["function", "metrics on", "--no-metrics", "on − off", "on ÷ off", "200s off"],
                rows,
                "Instructions per request minus idle background, as in table 8 (whose figures are the metrics-on "
                "column), and the same count on a second `flick up` started with `--no-metrics`, one after the "
                f"other in this run, {mode}. GET /metrics answered {status.get('on', '–')} on the metrics-on "
                f"flick and {status.get('off', '–')} on the other. Not scraped during the count: this is the "
                "per-request cost of keeping the metrics, not of serving them.",
            )
        )
    return out


# --- targets -------------------------------------------------------------------


def targets(results):
    """[(target, goal, measured, met)] for whatever sections ran."""
    out = []

    def add(name, goal, got, met):
        out.append((name, goal, got, bool(met)))

    cold = results.get("cold")
    if cold and "error" not in cold:
        for rt, goal in COLD_GOAL_MS.items():
            v = cold.get(rt, {}).get("modes", {}).get("sandbox", {}).get("client_ms", {}).get("p50")
            add(f"cold start {rt}, sandbox, p50", f"≤ {goal} ms", f"{ms(v)} ms", v is not None and v <= goal)
        for r in (cold.get("_idle") or {}).values():
            if r["server"] != "this build":
                continue
            v, goal = r["client_ms"]["p50"], COLD_GOAL_MS[r["runtime"]]
            add(
                f"cold start {r['runtime']} after {r['idle_s']:.0f} s idle, sandbox, p50",
                f"≤ {goal} ms",
                f"{ms(v)} ms",
                v is not None and v <= goal,
            )
    warm = results.get("warm")
    if warm and "error" not in warm:
        for fn, c in warm["comparisons"].items():
            if "(no sandbox)" in fn:
                continue
            v = c["added_p50_us"]
            add(f"warm {fn}: added p50 at 1 client", f"≤ {ADDED_P50_GOAL_US} µs", f"{us(v)} µs",
                v is not None and v <= ADDED_P50_GOAL_US)
            if fn in THROUGHPUT_GOAL:
                goal = THROUGHPUT_GOAL[fn]
                add(f"warm {fn}: throughput at 32 clients", f"≥ {pct(goal)} of baseline", pct(c["throughput_ratio"]),
                    (c["throughput_ratio"] or 0) >= goal)
            if "p99_c32_sandbox_ratio" in c:
                v = c["p99_c32_sandbox_ratio"]
                add(f"warm {fn}: p99 at 32 clients, sandbox ÷ no sandbox", f"≤ {times(SANDBOX_P99_GOAL)}", times(v),
                    v is not None and v <= SANDBOX_P99_GOAL)
        for label, c in (warm.get("cpu_per_request") or {}).items():
            if label in ("flick python3", "flick http") and c.get("own_us") is not None:
                add(f"{label}: flick's own CPU per warm request (32 clients)", f"≤ {FLICK_CPU_GOAL_US} µs",
                    f"{c['own_us']:.1f} µs", c["own_us"] <= FLICK_CPU_GOAL_US)
    mem = results.get("memory")
    if mem and "error" not in mem:
        v = mem["restarted_kib"]
        add(f"idle `flick up` with {mem['functions']} functions, RSS", f"≤ {FLICK_RSS_GOAL_MIB} MiB", f"{mib(v)} MiB",
            v <= FLICK_RSS_GOAL_MIB * 1024)
        tree = mem.get("idle_tree")
        if tree:
            v = sum(r["pss_kib"] for r in tree)
            add(f"idle tree with {mem['functions']} functions and stem cells, PSS", f"≤ {TREE_PSS_GOAL_MIB} MiB",
                f"{mib(v)} MiB", v <= TREE_PSS_GOAL_MIB * 1024)
    burst = results.get("burst")
    if burst and "error" not in burst:
        for mode, kinds in burst.items():
            for kind, b in kinds.items():
                s = b["statuses"]
                if kind == "same":
                    add(f"burst {_burst_label(kind, b)} ({mode})", "every request 200",
                        f"{s['200']} × 200, {s['429']} × 429, {s['other']} other of {b['requests']}",
                        s["200"] == b["requests"])
                else:
                    rate = b.get("per_s")
                    add(f"burst {_burst_label(kind, b)} ({mode})",
                        f"≥ {DISTINCT_BURST_GOAL_PER_S} cold starts/s, no errors",
                        f"{'–' if rate is None else f'{rate:.0f}'}/s, {b['requests'] - s['200']} not 200",
                        rate is not None and rate >= DISTINCT_BURST_GOAL_PER_S and s["200"] == b["requests"])
    heavy = results.get("heavy")
    if heavy and "error" not in heavy:
        for key, label in (("cold", "cold start after scale to zero"), ("scale_out", "second instance")):
            v = heavy[key]["client_ms"]["p50"]
            add(f"numpy + pandas function: {label}, p50", f"≤ {HEAVY_GOAL_MS} ms", f"{ms(v)} ms",
                v is not None and v <= HEAVY_GOAL_MS)
    return out


# --- rendering -----------------------------------------------------------------


def _text_line(cells, widths):
    return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))


def text(results):
    parts = []
    for title, headers, rows, note in tables(results):
        widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
        parts.append(
            f"\n{title}\n" + _text_line(headers, widths) + "\n" + _text_line(["-" * w for w in widths], widths)
        )
        parts.extend(_text_line(r, widths) for r in rows)
        if note:
            parts.append(f"({note})")
    t = targets(results)
    if t:
        parts.append("\nTargets")
        parts.extend(f"  {'MET   ' if met else 'MISSED'} {name}: {got} (goal {goal})" for name, goal, got, met in t)
    return "\n".join(parts)


def _md_table(headers, rows):
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines.extend("| " + " | ".join(esc(c) for c in r) + " |" for r in rows)
    return "\n".join(lines)


def markdown(results, invocation, old_text=""):
    m = results["machine"]
    notes = _kept_notes(old_text)
    out = [
        "# flick benchmarks",
        "",
        f"Generated by `{invocation}` on {m['date']} (flick {m['flick_commit']}"
        f"{', uncommitted changes in crates/' if m['flick_tree_dirty'] else ''}; binary: {results['flick_build']}).",
        "Every figure comes from that one run, on the machine below. The machine is shared and noisy:",
        "trust ratios measured side by side in the same run more than absolute numbers.",
        "What each benchmark measures, and how: [bench/README.md](bench/README.md).",
        "",
        "## Machine",
        "",
        _md_table(
            ["nproc", "kernel (`uname -r`)", "CPU", "memory", "OS", "Python", "Node", "wrk"],
            [[m["nproc"], m["kernel"], m["cpu"], f"{m['memory_gib']} GiB", m["os"], m["python"], m["node"], m["wrk"]]],
        ),
        "",
        _load_line(results),
        "",
        "## Targets",
        "",
        _md_table(
            ["target", "goal", "measured", ""],
            [[n, g, v, "met" if ok else "**missed**"] for n, g, v, ok in targets(results)],
        ),
        "",
    ]
    for title, headers, rows, note in tables(results):
        out += [f"## {title}", "", _md_table(headers, rows), ""]
        if note:
            out += [note, ""]
    out += [
        "## Commands",
        "",
        "Reproduce everything (installs what is missing, builds flick if needed):",
        "",
        "```sh",
        "python3 bench/run.py --write-md        # full run, rewrites this file",
        "python3 bench/run.py --quick           # fewer samples and shorter loads",
        "python3 bench/run.py --only cold,warm  # a subset: cold, warm, burst, memory, peers, metrics, heavy,"
        " callgrind",
        "```",
        "",
        "The commands this run executed ($WORK is its scratch dir, PORT a free port; raw results: "
        f"`bench/results/{results['run_id']}.json`):",
        "",
        "```sh",
        *results["commands"],
        "```",
        "",
        "## Notes",
        "",
        NOTES_BEGIN,
        notes or "(Hand-written analysis goes here; `--write-md` keeps this block.)",
        NOTES_END,
        "",
    ]
    return "\n".join(out)


def _load_line(results):
    loads = results.get("load_average", {})
    if not loads:
        return ""
    parts = ", ".join(f"{name} {v['before']:.1f} → {v.get('after', float('nan')):.1f}" for name, v in loads.items())
    return f"1-minute load average before → after each section (other work on the machine shows here): {parts}."


def _kept_notes(old_text):
    if NOTES_BEGIN in old_text and NOTES_END in old_text:
        return old_text.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0].strip()
    return ""
