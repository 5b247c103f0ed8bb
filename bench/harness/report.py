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
            ("no stem cells", ("sandbox, no stem cells", "no-sandbox, no stem cells")),
        ):
            if on_mode not in r["modes"]:
                continue
            on, off = r["modes"][on_mode], r["modes"][off_mode]
            cost = r["sandbox_cost"].get(pair, {})
            stems = "–" if rt in ("exec", "http") else ("1 (default)" if pair == "default" else "0")
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
        "0 = every cold start starts the interpreter and sandbox from nothing. n = good samples (sandbox/no sandbox)."
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
    idle = d.get("_idle_exec") or {}
    if idle:
        idle_rows = [
            [
                label,
                ms(r["client_ms"]["p50"]),
                ms(r["client_ms"]["max"]),
                ms(r["init_ms"]["p50"]),
                f"{r['prewarmed']}/{r['client_ms']['n']}",
                f"{r['client_ms']['n']}/{len(r['samples'])}",
            ]
            for label, r in idle.items()
        ]
        out.append(
            (
                "1c. exec cold start after 30 s of idleness",
                ["server", "p50 ms", "max ms", "init_ms p50", "ran in a stem cell", "n"],
                idle_rows,
                "Sandboxed, default settings; each sample follows 30 s without any request to that server "
                "(tokio retires idle blocking threads after 10 s). 'ran in a stem cell' is the activation's "
                "`prewarmed` (recorded for exec only by builds that have it).",
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
    cmp_rows = [[name, us(c["added_p50_us"]), pct(c["throughput_ratio"])] for name, c in d["comparisons"].items()]
    t2 = (
        "2b. flick against its baseline",
        ["function", "added p50 at 1 client (µs)", "throughput at 32 clients (% of baseline)"],
        cmp_rows,
        "added = flick's p50 minus the baseline's p50, both at 1 client.",
    )
    out = [t1, t2]
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
    return out


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
                    "200 → 1 function" if kind == "same" else "1 each → 50 functions",
                    str(b["requests"]),
                    str(s["200"]),
                    str(s["429"]),
                    f"{s['other']}" + (f" ({other})" if other else ""),
                    ms(b["wall_s"]["p50"] * 1e3),
                    ms(b["latency_ms"]["p50"]),
                    ms(b["latency_ms"]["p99"]),
                    "/".join(str(c) for c in b["cold"]),
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
    ]
    return [("3. Bursts against scaled-to-zero functions", headers, rows, None)]


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
    return [t1, t2]


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


# --- targets -------------------------------------------------------------------


def targets(results):
    """[(target, goal, measured, met)] for whatever sections ran."""
    out = []
    cold = results.get("cold")
    if cold and "error" not in cold:
        for rt, goal in (("python3", 10), ("node", 20), ("exec", 3)):
            v = cold.get(rt, {}).get("modes", {}).get("sandbox", {}).get("client_ms", {}).get("p50")
            out.append((f"cold start {rt}, sandbox, p50", f"≤ {goal} ms", f"{ms(v)} ms", v is not None and v <= goal))
    warm = results.get("warm")
    if warm and "error" not in warm:
        for fn in ("python3", "http"):
            c = warm["comparisons"][fn]
            out.append(
                (
                    f"warm {fn}: added p50 at 1 client",
                    "≤ 150 µs",
                    f"{us(c['added_p50_us'])} µs",
                    c["added_p50_us"] <= 150,
                )
            )
            out.append(
                (
                    f"warm {fn}: throughput at 32 clients",
                    "≥ 70 % of baseline",
                    pct(c["throughput_ratio"]),
                    (c["throughput_ratio"] or 0) >= 0.7,
                )
            )
    mem = results.get("memory")
    if mem and "error" not in mem:
        v = mem["restarted_kib"]
        out.append(
            (f"idle `flick up` with {mem['functions']} functions, RSS", "≤ 40 MiB", f"{mib(v)} MiB", v <= 40 * 1024)
        )
    burst = results.get("burst")
    if burst and "error" not in burst:
        for mode, kinds in burst.items():
            for kind, b in kinds.items():
                other = b["statuses"]["other"]
                label = "200 → 1 function" if kind == "same" else "1 each → 50 functions"
                out.append((f"burst {label} ({mode})", "only 200/429", f"{other} other of {b['requests']}", other == 0))
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
        "python3 bench/run.py --only cold,warm  # a subset: cold, warm, burst, memory, peers, metrics",
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
