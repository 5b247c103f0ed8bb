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
