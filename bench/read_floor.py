"""Read floor benchmark (issue 17): the per-call cost of small reads and of the W3 runs table,
through the public `runstream.Api` against a real embedded `runstream server` child process.

    .venv/bin/python bench/read_floor.py                       # 1,000 runs like W3, fresh folder
    .venv/bin/python bench/read_floor.py --data-dir /tmp/rf    # keeps the data: the next call reuses it
    .venv/bin/python bench/read_floor.py --runs 50 --calls 20  # quick check

Data is logged through the public SDK as in bench/runstream_side.py's W3 (per run: 20 config
params, 10 metrics x 10 steps, finished), then each read is timed `--calls` times:
  history   Api.history(run_id, keys=["m0"], project=...)  (10 points; W5-loop call)
  history-p Api.history(run_id, keys=["m0"])               (project found from the run id)
  run       Api.run(project, run_id)
  keys      Api.keys(project, [run_id])
  W3a       Api.runs(project, filter='params.optimizer = "adam"', order_by=["-metrics.m0"], limit=100)
  W3b       Api.runs(project)  (all runs, with config; columnar SearchRuns pages)
  W3b-rows  the same frame from row-wise pages (Api.iter_runs; what Api.runs read before the
            columnar reply), for a same-run comparison
  fresh     log one point, finish-flush, then Api.history sees it (log -> visible, per call)
Prints p50/p99 in ms. Targets (issue 17): small reads p50 < 3 ms, p99 < 10 ms; W3a p50 < 10 ms;
W3b p50 < 25 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OPTIMIZERS = ("adam", "sgd", "adamw", "rmsprop")
PROJECT = "readfloor"


def _init(endpoint: str, spool: Path, **kwargs):
    import runstream

    kwargs.setdefault("project", PROJECT)
    return runstream.init(
        endpoint=endpoint,
        spool_dir=str(spool),
        system_metrics_interval_s=0,
        capture_packages=False,
        **kwargs,
    )


def build(endpoint: str, spool: Path, n_runs: int, n_params: int, n_metrics: int, n_steps: int) -> list[str]:
    def make_run(i: int) -> str:
        config = {"optimizer": OPTIMIZERS[i % 4], "lr": 10.0 ** -(1 + i % 5)}
        config.update({f"p{j}": i * 31 + j for j in range(n_params - 2)})
        run = _init(endpoint, spool, name=f"run-{i}", config=config)
        for step in range(n_steps):
            run.log(
                {f"m{k}": ((i * 7919 + k * 104729 + step) % 1000) / 1000.0 for k in range(n_metrics)},
                step=step,
            )
        if not run.finish():
            raise RuntimeError(f"run {run.id} could not deliver everything")
        return run.id

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(make_run, range(n_runs)))


def timed(fn, calls: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn(0)
    out = []
    for i in range(calls):
        t = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--calls", type=int, default=100, help="timed calls per row")
    ap.add_argument("--data-dir", default="", help="server folder; kept, and reused when it holds data")
    ap.add_argument("--only", default="", help="comma-separated rows to time (default: all)")
    args = ap.parse_args()

    import pandas as pd

    from runstream.api import Api
    from tests.server_process import ServerProcess

    folder = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="rs-readfloor-"))
    marker = folder / "read_floor.json"
    server = None
    try:
        server = ServerProcess(folder / "server").start(timeout_s=120)
        if marker.exists():
            run_ids = json.loads(marker.read_text())["run_ids"]
        else:
            t = time.perf_counter()
            run_ids = build(server.endpoint, folder / "spool", args.runs, 20, 10, 10)
            print(f"logged {len(run_ids)} runs in {time.perf_counter() - t:.1f}s", file=sys.stderr)
            marker.write_text(json.dumps({"run_ids": run_ids}))
        n = len(run_ids)
        api = Api(endpoint=server.endpoint)

        def history(i):
            df = api.history(run_ids[i % n], keys=["m0"], project=PROJECT)
            assert len(df) == 10, len(df)

        def history_noproject(i):
            df = api.history(run_ids[i % n], keys=["m0"])
            assert len(df) == 10, len(df)

        def one_run(i):
            r = api.run(PROJECT, run_ids[i % n])
            assert len(r["config"]) == 20 and len(r["metrics"]) == 10, r

        def keys(i):
            k = api.keys(PROJECT, [run_ids[i % n]])
            assert len(k["metrics"]) == 10, k

        def w3a(i):
            df = api.runs(PROJECT, filter='params.optimizer = "adam"', order_by=["-metrics.m0"], limit=100)
            assert len(df) == min(100, (n + 3) // 4), len(df)

        def w3b(i):
            df = api.runs(PROJECT)
            assert len(df) == listed, len(df)

        def w3b_rows(i):
            from runstream.api import _RunColumns

            columns = _RunColumns()
            for run in api.iter_runs(PROJECT):
                columns.add(run)
            df = columns.frame(pd)
            assert len(df) == listed, len(df)

        listed = (
            len(api.search_runs(PROJECT, page_size=1).runs) and api.search_runs(PROJECT, page_size=1).total
        )
        fresh_run = _init(
            server.endpoint,
            folder / "spool",
            name="fresh",
            flush_interval_s=0.001,
            project=PROJECT + "-fresh",
        )

        def fresh(i):
            fresh_run.log({"fresh": float(i)}, step=i)
            fresh_run.flush()  # returns once the server acked it
            df = api.history(fresh_run.id, keys=["fresh"], project=PROJECT + "-fresh")
            assert len(df) and df["step"].iloc[-1] == i, (i, df.tail(2))

        rows = {
            "history": (history, "Api.history(run, keys=[m0], project) 10 pts"),
            "history-p": (history_noproject, "Api.history(run, keys=[m0]) 10 pts"),
            "run": (one_run, "Api.run(project, run)"),
            "keys": (keys, "Api.keys(project, [run])"),
            "W3a": (w3a, f"W3a Api.runs filter+sort top 100 of {n}"),
            "W3b": (w3b, f"W3b Api.runs all {n} runs"),
            "W3b-rows": (w3b_rows, f"W3b from row-wise pages (before), {n} runs"),
            "fresh": (fresh, "log+flush(ack) then Api.history sees it"),
        }
        wanted = [r for r in args.only.split(",") if r] or list(rows)
        print(f"\nread floor, {n} runs; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus\n")
        print(f"| {'read':<44} | p50 ms | p99 ms |")
        print(f"|{'-' * 46}|-------:|-------:|")
        for name in wanted:
            fn, label = rows[name]
            calls = args.calls if name not in ("W3b", "W3b-rows", "fresh") else max(5, args.calls // 5)
            t = timed(fn, calls)
            print(f"| {label:<44} | {np.percentile(t, 50):6.2f} | {np.percentile(t, 99):6.2f} |", flush=True)
        fresh_run.finish()
        api.close()
        print(f"(W3b lists {listed} runs)")
    finally:
        if server is not None:
            server.stop()
        if not args.data_dir:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
