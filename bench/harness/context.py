"""What every benchmark section gets: paths, settings, the flick binary, and
a log of the commands that were run (for BENCHMARKS.md)."""

import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
REPO = BENCH.parent


@dataclass(frozen=True)
class Settings:
    """How many runs each figure is made of. `--quick` uses QUICK."""

    cold_samples: int = 25  # per runtime and sandbox mode
    warm_rounds: int = 3  # interleaved rounds per target and client count
    warm_seconds: float = 5.0  # one wrk run
    warm_warmup: float = 3.0  # at 32 clients, before the first round
    burst_reps: int = 3
    idle_functions: int = 100
    distinct_cold: int = 50
    burst_size: int = 200
    warm_instances: int = 8  # idle python3 instances measured for memory
    peer_cold_samples: int = 10  # flick up and functions-framework
    sls_cold_samples: int = 5  # serverless-offline takes ~3 s to start
    peer_memory_samples: int = 3
    breakdown_requests: int = 2000  # sequential requests read for Server-Timing
    idle_samples: int = 5  # cold starts (python3, node, exec) after a long idle time, per server
    idle_seconds: float = 60.0  # how long the server is left alone before each
    cpu_requests: int = 20000  # requests at 32 clients over which CPU per request is read
    callgrind_requests: int = 1000  # warm requests counted under callgrind, per function
    heavy_samples: int = 5  # numpy+pandas function: cold starts and scale-outs
    metrics_rounds: int = 5  # interleaved rounds of the metrics on/off comparison
    metrics_scrape_every: float = 5.0  # seconds between scrapes of the metrics-on flick


QUICK = Settings(
    cold_samples=6,
    warm_rounds=1,
    warm_seconds=2.0,
    warm_warmup=1.0,
    burst_reps=1,
    warm_instances=4,
    peer_cold_samples=3,
    sls_cold_samples=2,
    peer_memory_samples=1,
    breakdown_requests=300,
    idle_samples=2,
    metrics_rounds=2,
    cpu_requests=5000,
    callgrind_requests=200,
    heavy_samples=2,
)


@dataclass
class Context:
    settings: Settings
    work: Path  # scratch dir of this run (data dirs, logs, function copies)
    flick: Path = None  # the flick binary
    baseline: Path = None  # another flick binary to compare with (`--baseline`)
    python: str = sys.executable  # the interpreter flick's python3 runtime uses
    commands: list = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def log(self, msg):
        print(f"[{time.time() - self.started:7.1f}s] {msg}", file=sys.stderr, flush=True)

    def record(self, cmd):
        """Remembers a command line for the report, with this run's ports and
        scratch dir replaced by placeholders so it reads as a recipe."""
        text = " ".join(str(c) for c in cmd)
        text = text.replace(str(self.work), "$WORK").replace(str(REPO) + "/", "")
        text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", text)
        text = re.sub(r"(--(?:http|lambda)Port|--port) \d+", r"\1 PORT", text)
        text = re.sub(r"PORT=\d+", "PORT=PORT", text)
        # One line stands for a family of numbered functions (idle-000 … idle-099).
        text = re.sub(r"\b(idle|burst)-\d+\b", r"\1-NN", text)
        text = re.sub(r"callgrind\.out\.\d+", "callgrind.out.PID", text)
        text = re.sub(r"(callgrind_control -[zd]) \d+", r"\1 PID", text)
        if text not in self.commands:
            self.commands.append(text)
