"""A `flick up` process on its own data dir, and the bench functions it runs."""

import json
import os
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

from . import httpc, procs
from .context import BENCH

FUNCTIONS = BENCH / "functions"


def make_function(ctx, kind, name, **manifest):
    """A deployable copy of bench/functions/<kind> named `name`, with the
    manifest keys in `manifest` set (e.g. keep_alive="100ms")."""
    src = FUNCTIONS / kind
    dst = ctx.work / "functions" / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    with open(src / "flick.toml", "rb") as f:
        keys = tomllib.load(f)
    keys.update(manifest, name=name)
    (dst / "flick.toml").write_text("".join(f"{k} = {_toml(v)}\n" for k, v in keys.items()))
    return dst


def _toml(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)  # a TOML basic string for the plain text used here


def cgroup_scope(data_dir):
    """flick's cgroup scope name for a data dir (FNV-1a of the path, as
    crates/sandbox/src/lib.rs `scope_for`)."""
    h = 0xCBF29CE484222325
    for b in os.fsencode(str(data_dir)):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"flick-{h:016x}"


class Flick:
    """`flick up` on 127.0.0.1 with a private data dir. Use as a context
    manager; `restart()` keeps the data dir (and so the deployed functions)."""

    def __init__(self, ctx, label, sandbox=True, port=0, config=None, binary=None, args=(), wrapper=()):
        self.ctx = ctx
        self.binary = binary or ctx.flick  # the server, and the CLI that deploys to it
        self.label = label
        self.sandbox = sandbox
        self.config = config or {}  # written to <data-dir>/config.toml
        self.args = list(args)  # extra `flick up` flags
        self.wrapper = list(wrapper)  # runs `flick up` under this (e.g. valgrind); the same pid
        self.data = (ctx.work / "data" / label).resolve()
        self.requested_port = port
        self.proc = None
        self.port = None

    def command(self):
        cmd = [self.binary, "up", "--listen", f"127.0.0.1:{self.requested_port}", "--data-dir", self.data, *self.args]
        cmd = self.wrapper + cmd
        return cmd if self.sandbox else cmd + ["--insecure-no-sandbox"]

    def start(self, timeout=60.0):
        self.data.mkdir(parents=True, exist_ok=True)
        if self.config:
            text = "".join(f"{k} = {_toml(v)}\n" for k, v in self.config.items())
            (self.data / "config.toml").write_text(text)
            self.ctx.record(["printf", repr(text), ">", self.data / "config.toml"])
        addr_file = self.data / "flick.addr"
        addr_file.unlink(missing_ok=True)
        cmd = self.command()
        self.ctx.record(cmd)
        self.proc = procs.spawn(cmd, log_path=self.ctx.work / f"flick-{self.label}.log")
        deadline = time.monotonic() + timeout
        while not addr_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"flick up ({self.label}) did not start: see {self.ctx.work}/flick-{self.label}.log")
            time.sleep(0.01)
        # The file may exist before its one write lands (slowly under valgrind).
        text = addr_file.read_text().strip()
        while ":" not in text and time.monotonic() < deadline:
            time.sleep(0.01)
            text = addr_file.read_text().strip()
        self.port = int(text.rsplit(":", 1)[1])
        return self

    def stop(self):
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None
        self.remove_cgroup_scope()

    def restart(self):
        self.stop()
        return self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def pid(self):
        return self.proc.pid

    @property
    def key(self):
        return (self.data / "admin.key").read_text().strip()

    def deploy(self, fn_dir):
        # The server's own CLI: an older build's server may not speak the
        # newer CLI's handshake.
        cmd = [self.binary, "deploy", fn_dir]
        self.ctx.record(["FLICK_DATA_DIR=" + str(self.data)] + cmd)
        env = dict(os.environ, FLICK_DATA_DIR=str(self.data))
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"flick deploy {fn_dir} failed: {out.stderr.strip() or out.stdout.strip()}")

    def invoke(self, name, timeout=60.0):
        return httpc.post_json(self.port, f"/fn/{name}", timeout)

    def api(self, path):
        resp = httpc.request(self.port, "GET", path, headers={"Authorization": f"Bearer {self.key}"})
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {resp.status} {resp.body[:200]!r}")
        return json.loads(resp.body)

    def activation(self, activation_id):
        return self.api(f"/v1/activations/{activation_id}")

    def instances(self):
        """Running instances per function (all revisions)."""
        counts = {}
        for row in self.api("/v1/instances")["instances"]:
            counts[row["function"]] = counts.get(row["function"], 0) + row["instances"]
        return counts

    def wait_instances(self, names, want, timeout=10.0, interval=0.02):
        """Polls until each function in `names` has `want` instances; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = self.instances()
            if all(counts.get(n, 0) == want for n in names):
                return True
            time.sleep(interval)
        return False

    def cgroup_dirs(self):
        """This data dir's cgroup parents (one per controller on cgroup v1)."""
        return scope_dirs(cgroup_scope(self.data))

    def remove_cgroup_scope(self):
        """Removes this data dir's cgroups once flick has stopped. flick leaves
        its (empty) instance cgroups and their parent behind at shutdown; rmdir
        only succeeds on cgroups without processes, so nothing running is
        touched, and only this data dir's scope is looked at."""
        deadline = time.monotonic() + 2.0
        for parent in self.cgroup_dirs():
            while parent.exists() and time.monotonic() < deadline:
                for child in (p for p in parent.iterdir() if p.is_dir()):
                    try:
                        child.rmdir()
                    except OSError:
                        pass
                try:
                    parent.rmdir()
                except OSError:
                    time.sleep(0.05)  # an instance may still be exiting


def scope_dirs(scope):
    """Where flick puts a scope's cgroups (crates/sandbox/src/cgroup.rs): under
    its own cgroup per v1 controller, or at the root of a v2 hierarchy. flick
    inherits the harness's cgroups, so /proc/self/cgroup tells where."""
    root = Path("/sys/fs/cgroup")
    if (root / "memory" / "cgroup.procs").exists():
        own = {}
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            for c in ctrls.split(","):
                own[c] = path.lstrip("/")
        return [root / c / own.get(c, "") / scope for c in ("memory", "pids", "cpu")]
    return [root / scope]
