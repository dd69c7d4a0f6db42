"""Caller-thread cost of the SDK's logging calls, per point.

    .venv/bin/python bench/sdk_log_cost.py [--steps 100000] [--repeats 5] [--endpoint host:port]

Workloads: `run.log(dict of 10 metrics, step=i)` and the bulk path `run.log_arrays({10 keys: numpy
arrays}, steps)`. Modes: `disabled` (checks + append only, no worker), `offline` (the worker packs
batches and writes the spool meanwhile, competing for the GIL as it would in training) and, with
--endpoint, `online` against a running server. The dicts are built before the clock starts: what is
timed is the call only, as wall-clock time (includes waiting for the GIL while the worker packs and
for the CPU while other processes run) and as the calling thread's own CPU time
(time.thread_time). Medians of --repeats runs; target: <= 1 us per point for run.log.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

import runstream

KEYS = [f"metric_{i}" for i in range(10)]


def _run(mode: str, spool: str, endpoint: str | None):
    kw = dict(mode=mode, spool_dir=spool, system_metrics_interval_s=0, capture_packages=False)
    if endpoint:
        kw["endpoint"] = endpoint
    return runstream.init("bench-sdk", **kw)


def per_step_cost(mode: str, steps: int, spool: str, endpoint: str | None) -> float:
    rng = np.random.default_rng(0)
    rows = [dict(zip(KEYS, map(float, rng.random(len(KEYS))), strict=True)) for _ in range(steps)]
    run = _run(mode, spool, endpoint)
    log = run.log
    c0, t0 = time.thread_time(), time.perf_counter()
    for i, row in enumerate(rows):
        log(row, i)
    elapsed, cpu = time.perf_counter() - t0, time.thread_time() - c0
    run.finish(timeout_s=120)
    return elapsed / (steps * len(KEYS)), cpu / (steps * len(KEYS))


def bulk_cost(mode: str, steps: int, spool: str, endpoint: str | None) -> float:
    rng = np.random.default_rng(0)
    series = {k: rng.random(steps) for k in KEYS}
    step_arr = np.arange(steps)
    run = _run(mode, spool, endpoint)
    c0, t0 = time.thread_time(), time.perf_counter()
    run.log_arrays(series, step_arr)
    elapsed, cpu = time.perf_counter() - t0, time.thread_time() - c0
    run.finish(timeout_s=120)
    return elapsed / (steps * len(KEYS)), cpu / (steps * len(KEYS))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--endpoint", help="also measure online mode against this server")
    args = ap.parse_args()
    modes = ["disabled", "offline"] + (["online"] if args.endpoint else [])
    rows = []
    with tempfile.TemporaryDirectory() as spool:
        for mode in modes:
            for name, fn in (("run.log(10-key dict)", per_step_cost), ("run.log_arrays(10 keys)", bulk_cost)):
                samples = [fn(mode, args.steps, spool, args.endpoint) for _ in range(args.repeats)]
                wall = [w * 1e9 for w, _ in samples]
                cpu = [c * 1e9 for _, c in samples]
                rows.append(
                    (name, mode, statistics.median(wall), min(wall), max(wall), statistics.median(cpu))
                )
    print(f"\ncaller-thread cost per point ({args.steps} steps x {len(KEYS)} keys, median of {args.repeats})")
    print(f"{'call':<26}{'mode':<10}{'wall ns/pt':>12}{'min':>9}{'max':>9}{'cpu ns/pt':>11}{'points/s':>13}")
    for name, mode, med, lo, hi, cpu in rows:
        print(f"{name:<26}{mode:<10}{med:>12.1f}{lo:>9.1f}{hi:>9.1f}{cpu:>11.1f}{1e9 / med:>13,.0f}")
    worst = max(r[2] for r in rows if r[0].startswith("run.log("))
    worst_cpu = max(r[5] for r in rows if r[0].startswith("run.log("))
    print(
        f"\nrun.log target <= 1000 ns/point: wall {'met' if worst <= 1000 else 'MISSED'} (worst median "
        f"{worst:.0f} ns), caller-thread cpu {'met' if worst_cpu <= 1000 else 'MISSED'} ({worst_cpu:.0f} ns)"
    )
    if hasattr(os, "getloadavg"):
        print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")


if __name__ == "__main__":
    main()
