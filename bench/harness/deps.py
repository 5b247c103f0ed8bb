"""Installs what the benchmarks need, idempotently: the flick release binary,
wrk and valgrind (Debian packages), and the peers in bench-local places
(bench/.venv, bench/peers/serverless/node_modules). Each install is skipped
when a stamp says the same inputs were installed before. Bench functions with
a requirements.txt get their packages installed (pip, from the package index)
into a scratch copy for their directly-started baselines."""

import hashlib
import os
import shutil
import subprocess
import sys

from .context import BENCH, REPO

VENV = BENCH / ".venv"
FF_REQUIREMENTS = BENCH / "peers" / "functions-framework" / "requirements.txt"
SLS_DIR = BENCH / "peers" / "serverless"
# Keep serverless 3 offline and quiet: no telemetry, update checks or prompts.
SLS_ENV = {
    "SLS_TELEMETRY_DISABLED": "1",
    "SLS_NOTIFICATIONS_MODE": "off",
    "SLS_DEPRECATION_DISABLE": "*",
    "SLS_INTERACTIVE_SETUP_DISABLE": "1",
    "npm_config_update_notifier": "false",
    "npm_config_fund": "false",
    "npm_config_audit": "false",
}


def _run(ctx, cmd, log_name, timeout, **kwargs):
    ctx.record(cmd)
    log = ctx.work / log_name
    with open(log, "ab") as out:
        proc = subprocess.run([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, timeout=timeout, **kwargs)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"`{' '.join(map(str, cmd))}` exited {proc.returncode}:\n{tail}")


def _digest(*paths):
    h = hashlib.sha256()
    for p in paths:
        if p.exists():
            h.update(p.read_bytes())
    return h.hexdigest()


# --- flick ---------------------------------------------------------------------


def _newest_source_mtime():
    newest = max((REPO / f).stat().st_mtime for f in ("Cargo.toml", "Cargo.lock"))
    for root, dirs, files in os.walk(REPO / "crates"):
        dirs[:] = [d for d in dirs if d != "target"]
        for f in files:
            newest = max(newest, os.stat(os.path.join(root, f)).st_mtime)
    return newest


def ensure_flick(ctx):
    """target/release/flick, rebuilt when missing or older than any source.
    Returns a note for the report (e.g. that a failed build left an old binary)."""
    binary = REPO / "target" / "release" / "flick"
    ctx.flick = binary
    if binary.exists() and binary.stat().st_mtime >= _newest_source_mtime():
        return "up to date"
    ctx.log("building flick: cargo build --release -p flick (several minutes on 2 cores; waits for cargo's lock)")
    try:
        _run(ctx, ["cargo", "build", "--release", "-p", "flick"], "cargo-build.log", timeout=3600, cwd=REPO)
        return "built by the harness"
    except RuntimeError as e:
        if not binary.exists():
            raise
        ctx.log(f"WARNING: the build failed, using the existing (older) binary: {e}")
        return "the build failed; an older binary was used"


# --- wrk -----------------------------------------------------------------------


def _ensure_apt(ctx, command, package):
    if shutil.which(command):
        return
    ctx.log(f"installing {package} (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run(ctx, ["apt-get", "update", "-qq"], "apt.log", timeout=600, env=env)
    _run(ctx, ["apt-get", "install", "-y", "-qq", package], "apt.log", timeout=600, env=env)


def ensure_wrk(ctx):
    _ensure_apt(ctx, "wrk", "wrk")


def ensure_valgrind(ctx):
    """valgrind with its callgrind tool and `callgrind_control`."""
    _ensure_apt(ctx, "callgrind_control", "valgrind")


# --- functions' own packages -----------------------------------------------------


def function_with_requirements(ctx, kind):
    """A scratch copy of bench/functions/<kind> with its requirements.txt
    installed where flick's deploy installs them (`.deps/python`, by
    `pip install --target`), for running the function's server directly.
    Installed with the interpreter flick's installs use (ctx.python)."""
    dst = ctx.work / "direct" / kind
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(BENCH / "functions" / kind, dst, ignore=shutil.ignore_patterns("__pycache__"))
    if (dst / "requirements.txt").exists():
        ctx.log(f"installing {kind}'s requirements.txt for its direct baseline (pip)")
        cmd = [ctx.python, "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
        cmd += ["--target", dst / ".deps" / "python", "-r", dst / "requirements.txt"]
        _run(ctx, cmd, "pip.log", timeout=900)
    return dst


# --- peers ---------------------------------------------------------------------


def ensure_functions_framework(ctx):
    """bench/.venv with functions-framework (and gunicorn) installed from the
    pinned requirements. Returns the `functions-framework` executable."""
    exe = VENV / "bin" / "functions-framework"
    stamp = VENV / ".bench-stamp"
    want = _digest(FF_REQUIREMENTS)
    if exe.exists() and stamp.exists() and stamp.read_text() == want:
        return exe
    ctx.log("installing functions-framework into bench/.venv (pip)")
    _run(ctx, [sys.executable, "-m", "venv", VENV], "pip.log", timeout=300)
    _run(ctx, [VENV / "bin" / "pip", "install", "-q", "-r", FF_REQUIREMENTS], "pip.log", timeout=900)
    stamp.write_text(want)
    return exe


def ensure_serverless(ctx):
    """serverless 3 + serverless-offline 13 in bench/peers/serverless/node_modules
    (npm ci from the committed lock file). Returns the `serverless` executable."""
    for tool in ("node", "npm"):
        if not shutil.which(tool):
            raise RuntimeError(f"`{tool}` is not installed")
    exe = SLS_DIR / "node_modules" / ".bin" / "serverless"
    stamp = SLS_DIR / "node_modules" / ".bench-stamp"
    want = _digest(SLS_DIR / "package.json", SLS_DIR / "package-lock.json")
    if exe.exists() and stamp.exists() and stamp.read_text() == want:
        return exe
    ctx.log("installing serverless 3 + serverless-offline 13 into bench/peers/serverless (npm)")
    verb = "ci" if (SLS_DIR / "package-lock.json").exists() else "install"
    env = dict(os.environ, **SLS_ENV)
    _run(
        ctx, ["npm", verb, "--no-audit", "--no-fund", "--loglevel=error"], "npm.log", timeout=900, cwd=SLS_DIR, env=env
    )
    stamp.write_text(want)
    return exe
