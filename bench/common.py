"""Shared parts of the benchmark: workload sizes, statistics, result rows, machine facts.

Standard library only: bench/mlflow_side.py imports nothing from here inside MLflow's own
virtualenv, but the parent process (ours) builds every row through these types."""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / ".results"


@dataclass(frozen=True)
class Sizes:
    """Workload sizes. `full()` is what issue 6 specifies; `smoke()` keeps every code path
    but finishes in seconds."""

    w1_steps: int = 2_000  # W1: per-step logging, one call per step
    w1_keys: int = 10
    w2_keys: int = 2  # W2: 200,000 points = 2 keys x 100,000 steps, so W4 can read one key
    w2_steps: int = 100_000
    w3_runs: int = 1_000  # W3: many runs
    w3_params: int = 20
    w3_metrics: int = 10
    w3_steps: int = 10
    w3_workers: int = 4  # runs made by this many threads at once, on both sides (a parallel sweep)
    w3_top: int = 100  # (a) returns the top 100
    w3_queries: int = 5  # query samples per repetition, for p50/p95
    w4_fetches: int = 2  # W4: fetches per repetition (MLflow needs ~8 s for one)
    w5_runs: int = 100  # W5: one metric's history for 100 of the W3 runs
    w5ds_runs: int = 100  # W5 at DESIGN scale (Runstream only): 100 runs x 100,000 steps ...
    w5ds_steps: int = 100_000
    w5ds_points: int = 1_000  # ... downsampled to 1,000 points per series
    w5ds_queries: int = 10
    sustained_points: int = 3_000_000  # Runstream sustained ingest, per repetition
    sustained_runs: int = 4  # ... spread over this many runs logged at once
    mlflow_sustained_s: float = 10.0  # MLflow cannot take millions of points: time-bounded instead
    latency_probes: int = 40  # log -> visible probes per repetition
    m_runs: int = 10_000  # many writers: runs created by 16 clients (bench/many_writers.py)
    m_ranks: int = 1_000  # MLflow's many-writers side (bench/mlflow_many_writers.py): ranks of one run ...
    m_mlflow_rates: str = (
        "10,20,30,50,70,100,150,200,400,800"  # ... at these requests/s, rising until not held
    )
    m_mlflow_step_s: float = 5.0  # ... each for this long
    m_mlflow_senders: int = 64  # ... sent by this many threads (a rank's client is synchronous)
    m_repro_ranks: int = 64  # the measurement: 64 ranks at 5 steps/s ...
    m_repro_s: float = 20.0  # ... for 20 s
    mlflow_m_runs_s: float = 30.0  # MLflow creates runs for this long; its time for m_runs is scaled
    mlflow_server_workers: int = 0  # 0: mlflow server's default (4); smoke: 1, to start fast
    rep_budget_s: float = 150.0  # a workload starts another repetition (beyond 2) only within this

    @classmethod
    def full(cls) -> Sizes:
        return cls()

    @classmethod
    def smoke(cls) -> Sizes:
        return cls(
            w1_steps=20,
            w1_keys=10,
            w2_keys=2,
            w2_steps=1_000,
            w3_runs=20,
            w3_params=4,
            w3_metrics=3,
            w3_steps=3,
            w3_workers=2,
            w3_top=5,
            w3_queries=2,
            w4_fetches=1,
            w5_runs=5,
            w5ds_runs=3,
            w5ds_steps=2_000,
            w5ds_points=100,
            w5ds_queries=2,
            sustained_points=20_000,
            sustained_runs=2,
            mlflow_sustained_s=1.0,
            latency_probes=3,
            m_runs=500,
            m_ranks=20,
            m_mlflow_rates="10,20",
            m_mlflow_step_s=1.0,
            m_mlflow_senders=4,
            m_repro_ranks=4,
            m_repro_s=1.0,
            mlflow_m_runs_s=1.0,
            mlflow_server_workers=1,
        )

    @property
    def w1_points(self) -> int:
        return self.w1_steps * self.w1_keys

    @property
    def w2_points(self) -> int:
        return self.w2_keys * self.w2_steps


def repetitions(repeat: int, budget_s: float):
    """Yields up to `repeat` repetition indexes. After the second, another starts only when it is
    expected to end within `budget_s` of the first's start (some peer workloads take minutes
    each; the table shows how many repetitions a cell has when fewer than asked)."""
    import time

    start = time.monotonic()
    for i in range(repeat):
        if i >= 2:
            spent = time.monotonic() - start
            if spent + spent / i > budget_s:
                return
        yield i


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank-with-interpolation percentile (q in 0..100) of a non-empty list."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Measure:
    """One side's repetitions of one row: a value per repetition (already reduced, e.g. a
    p95 over that repetition's queries)."""

    samples: list[float]
    detail: dict = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    def to_json(self) -> dict:
        return {
            "median": self.median,
            "min": self.min,
            "max": self.max,
            "samples": self.samples,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Target:
    """A DESIGN.md target for a row: either a speed-up over MLflow (`ratio`) or an absolute
    bound on Runstream's own median (`at_least` / `at_most`, in the row's unit)."""

    text: str
    ratio: float | None = None
    at_least: float | None = None
    at_most: float | None = None

    def attainment(self, runstream: float | None, speedup: float | None) -> float | None:
        """How far the target is met: >= 1 met, < 1 the fraction reached (for a ratio or a
        lower bound) or the bound over the measured value (upper bound)."""
        if self.ratio is not None:
            return None if speedup is None else speedup / self.ratio
        if runstream is None:
            return None
        if self.at_least is not None:
            return runstream / self.at_least
        if self.at_most is not None:
            return self.at_most / runstream if runstream > 0 else float("inf")
        return None


@dataclass
class Row:
    """One line of the results table."""

    id: str
    title: str
    unit: str
    higher_is_better: bool
    targets: tuple[Target, ...] = ()
    runstream: Measure | None = None
    mlflow: Measure | None = None
    mlflow_na: str = ""  # why MLflow has no value (e.g. "n/a: no Kafka mode")
    note: str = ""
    errors: dict[str, str] = field(default_factory=dict)  # side -> why it failed; the row still prints
    not_run: set[str] = field(default_factory=set)  # sides skipped on purpose (--mlflow off, ...)

    @property
    def error(self) -> str:
        return "; ".join(self.errors.values())

    @property
    def speedup(self) -> float | None:
        """Runstream over MLflow, oriented so that > 1 means Runstream is better."""
        if not self.runstream or not self.mlflow:
            return None
        rs, ml = self.runstream.median, self.mlflow.median
        if rs <= 0 or ml <= 0:
            return None
        return rs / ml if self.higher_is_better else ml / rs

    def attainments(self) -> list[tuple[Target, float | None]]:
        rs = self.runstream.median if self.runstream else None
        return [(t, t.attainment(rs, self.speedup)) for t in self.targets]

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "title": self.title,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "runstream": self.runstream.to_json() if self.runstream else None,
            "mlflow": self.mlflow.to_json() if self.mlflow else None,
            "mlflow_na": self.mlflow_na,
            "speedup": self.speedup,
            "targets": [{**asdict(t), "attainment": a} for t, a in self.attainments()],
            "note": self.note,
            "error": self.error,
            "not_run": sorted(self.not_run),
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _kafka_version() -> str:
    pom = ROOT / "scripts" / "kafka-pom.xml"
    try:
        found = re.search(r"<kafka.version>(.*?)</kafka.version>", pom.read_text())
        return found.group(1) if found else "unknown"
    except OSError:
        return "unknown"


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def machine_info(mlflow_version: str | None, load_at_start: str = "") -> dict[str, str]:
    """Facts printed below the table, so a reader knows what the numbers were measured on.
    The load average matters on a shared 2-core machine: other work skews every figure."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": _memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "runstream": _dist_version("runstream"),
        "mlflow": mlflow_version or "not run",
        "chdb": _dist_version("chdb"),
        "clickhouse-connect": _dist_version("clickhouse-connect"),
        "kafka": _kafka_version(),
        "aiokafka": _dist_version("aiokafka"),
        "git commit": commit or "unknown",
        "load average 1/5/15 min, at start": load_at_start or "unknown",
        "load average 1/5/15 min, at end": load_average(),
    }


def log(message: str) -> None:
    """Progress goes to stderr so stdout stays clean for the table."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def dump_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
