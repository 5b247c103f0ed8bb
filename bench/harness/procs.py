"""Processes the harness starts, and how much memory a process tree uses.

Every process is started through `spawn`, so the harness can stop exactly
what it started (by pid, never by name) when it exits, whatever happened.
"""

import atexit
import os
import signal
import socket
import subprocess
import time

_started = []


def spawn(cmd, log_path=None, **kwargs):
    """Starts `cmd` in its own session (so its whole group can be signalled),
    output to `log_path` (or discarded), and remembers it for cleanup."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **kwargs,
        )
    finally:
        if log_path:
            out.close()
    _started.append(proc)
    return proc


def stop(proc, grace=15.0):
    """SIGTERM to the process group `proc` leads, then SIGKILL after `grace` s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


@atexit.register
def _stop_all():
    for proc in _started:
        try:
            stop(proc, grace=5.0)
        except Exception:
            pass


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, timeout, proc=None, interval=0.002):
    """Seconds until 127.0.0.1:port accepts a connection (polled every
    `interval` s); None on timeout or if `proc` exits first."""
    began = time.perf_counter()
    deadline = began + timeout
    while time.perf_counter() < deadline:
        if proc is not None and proc.poll() is not None:
            return None
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return time.perf_counter() - began
        except OSError:
            time.sleep(interval)
    return None


# --- memory -------------------------------------------------------------------


def _status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid):
    """Resident set size of one process, KiB."""
    return _status_kib(pid, "VmRSS")


def pss_kib(pid):
    """Proportional set size of one process, KiB: shared pages are divided
    among the processes sharing them, so PSS sums over a tree without
    counting a forked worker's shared pages twice."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children_map():
    """pid -> list of child pids, for every process on the host."""
    kids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def descendants(pid, kids=None):
    """Every process below `pid` (not `pid` itself)."""
    kids = children_map() if kids is None else kids
    out, todo = [], list(kids.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def tree_memory(pid):
    """RSS and PSS summed over `pid` and its descendants, KiB."""
    pids = [pid] + descendants(pid)
    return {
        "processes": len(pids),
        "rss_kib": sum(rss_kib(p) for p in pids),
        "pss_kib": sum(pss_kib(p) for p in pids),
    }


def process_rows(pid):
    """`pid` and every process below it, one row each: pid, parent, comm,
    command line (up to 120 characters), RSS and PSS in KiB. Tree order
    (a parent before its children)."""
    kids = children_map()
    rows, todo = [], [(pid, None)]
    while todo:
        p, parent = todo.pop(0)
        rows.append(
            {
                "pid": p,
                "ppid": parent,
                "comm": comm(p),
                "cmdline": cmdline(p)[:120],
                "rss_kib": rss_kib(p),
                "pss_kib": pss_kib(p),
            }
        )
        todo[:0] = [(c, p) for c in sorted(kids.get(p, []))]
    return rows


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


# --- CPU ----------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of one process (all its threads), seconds; None when it
    is gone. Fields 14 and 15 of /proc/<pid>/stat, in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu(pid):
    """{pid: CPU seconds} for `pid` and every process below it."""
    out = {}
    for p in [pid] + descendants(pid):
        s = cpu_seconds(p)
        if s is not None:
            out[p] = s
    return out


def cpu_delta(before, after):
    """CPU seconds spent between two `tree_cpu` readings by the processes
    alive at the second (one that started in between counts from zero; one
    that exited in between is lost, as its CPU went to no reading)."""
    return sum(s - before.get(p, 0.0) for p, s in after.items())
