"""Query-service benchmark: the runs table over 10,000 runs (20 params, 20 metrics each) and
100 runs x 100,000 steps downsampled to 1,000 points per series, through the gRPC QueryService.

    .venv/bin/python bench/query_bench.py                 # full sizes (≈ 1-2 min to build the data)
    .venv/bin/python bench/query_bench.py --smoke         # tiny sizes, checks the code paths

Data goes straight into a fresh chDB folder with insert_arrow (the materialized views fill
metric_summaries and metric_rollups as in production); the service runs in-process on grpc.aio
and is called through the runstream.v1 stubs over loopback, like the dashboard does.
Targets (DESIGN.md): runs table p95 < 100 ms; 100 x 100k -> 1,000 points p95 < 300 ms.
The runs-table rows are measured twice: reading SQL (as with the Kafka bus, where other writers
exist) and through the read cache `runstream server` keeps on the embedded bus
(query/read_cache.py; the data here is static, so the cache needs no writer to stay exact), after
the one load the first read of the project pays (printed apart).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import percentile  # noqa: E402
from runstream.v1 import query_pb2, query_pb2_grpc  # noqa: E402
from runstream_services.grpc_errors import ErrorInterceptor  # noqa: E402
from runstream_services.query.read_cache import ReadCache  # noqa: E402
from runstream_services.query.service import QueryServicer  # noqa: E402
from runstream_services.storage.clickhouse import ClientPool, connect  # noqa: E402
from runstream_services.storage.migrations import migrate  # noqa: E402

DB = "runstream"
PROJECT = "bench"
T0 = 1_700_000_000_000


def _dict(values: list[str], codes: np.ndarray) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(values))


def _const(value: str, n: int) -> pa.DictionaryArray:
    return _dict([value], np.zeros(n, dtype=np.int32))


def build(
    client,
    n_runs: int,
    n_params: int,
    n_metrics: int,
    points_per_metric: int,
    long_runs: int,
    long_steps: int,
):
    rng = np.random.default_rng(0)
    run_ids = [f"run-{i:05d}" for i in range(n_runs)]
    idx = np.arange(n_runs)
    states = ["finished", "failed", "running", "killed"]
    runs = pa.table(
        {
            "project": _const(PROJECT, n_runs),
            "run_id": pa.array(run_ids),
            "name": pa.array([f"sweep-{i % 50}-trial-{i}" for i in range(n_runs)]),
            "group": pa.array([f"sweep-{i % 50}" for i in range(n_runs)]),
            "job_type": _const("train", n_runs),
            "state": _dict(states, rng.choice(4, n_runs, p=[0.8, 0.1, 0.05, 0.05])),
            "start_ms": pa.array(T0 + idx * 60_000),
            "end_ms": pa.array(T0 + idx * 60_000 + 3_600_000),
            "heartbeat_ms": pa.array(T0 + idx * 60_000 + 3_600_000),
            "user": _dict(["ada", "grace", "alan"], idx % 3),
            "host": _dict([f"node{h}" for h in range(16)], idx % 16),
            "git_commit": pa.array([f"{i:040x}" for i in range(n_runs)]),
            "git_dirty": pa.array((idx % 2).astype(np.uint8)),
            "notes": pa.array([""] * n_runs),
            "tags": pa.array(
                [[("dataset", "v2" if i % 2 else "v1"), ("team", "vision")] for i in range(n_runs)],
                type=pa.map_(pa.string(), pa.string()),
            ),
            "context": pa.array(["{}"] * n_runs),
            "datasets": pa.array(["[]"] * n_runs),
            "version": pa.array(np.ones(n_runs, dtype=np.uint64)),
        }
    )
    client.insert_arrow(f"{DB}.runs", runs)

    n = n_runs * n_params
    pnum = rng.random(n)
    params = pa.table(
        {
            "project": _const(PROJECT, n),
            "run_id": _dict(run_ids, np.repeat(idx, n_params)),
            "scope": _const("config", n),
            "key": _dict([f"p{k}" for k in range(n_params)], np.tile(np.arange(n_params), n_runs)),
            "kind": _const("number", n),
            "num": pa.array(pnum),
            "str": pa.array([""] * n),
            "version": pa.array(np.ones(n, dtype=np.uint64)),
        }
    )
    client.insert_arrow(f"{DB}.params", params)

    # summaries come from real points through the materialized view
    per_run = n_metrics * points_per_metric
    n = n_runs * per_run
    steps = np.tile(np.arange(points_per_metric), n_runs * n_metrics)
    for start in range(0, n, 2_000_000):
        sl = slice(start, min(n, start + 2_000_000))
        rows = np.arange(sl.start, sl.stop)
        run_of = rows // per_run
        key_of = (rows // points_per_metric) % n_metrics
        client.insert_arrow(
            f"{DB}.metrics",
            pa.table(
                {
                    "project": _const(PROJECT, len(rows)),
                    "run_id": _dict(run_ids, run_of),
                    "kind": _const("user", len(rows)),
                    "key": _dict([f"m{k}" for k in range(n_metrics)], key_of),
                    "rank": pa.array(np.zeros(len(rows), dtype=np.uint16)),
                    "step": pa.array(steps[sl].astype(np.int64)),
                    "time_ms": pa.array(T0 + steps[sl].astype(np.int64) * 1000),
                    "value": pa.array(rng.random(len(rows))),
                }
            ),
        )

    # the long curves: long_runs x long_steps of "loss"
    n = long_runs * long_steps
    chunk = 2_000_000
    for start in range(0, n, chunk):
        rows = np.arange(start, min(n, start + chunk))
        step = rows % long_steps
        client.insert_arrow(
            f"{DB}.metrics",
            pa.table(
                {
                    "project": _const(PROJECT, len(rows)),
                    "run_id": _dict(run_ids, rows // long_steps),
                    "kind": _const("user", len(rows)),
                    "key": _const("loss", len(rows)),
                    "rank": pa.array(np.zeros(len(rows), dtype=np.uint16)),
                    "step": pa.array(step.astype(np.int64)),
                    "time_ms": pa.array(T0 + step.astype(np.int64) * 100),
                    "value": pa.array(np.exp(-step / 20_000) + rng.standard_normal(len(rows)) * 0.01),
                }
            ),
        )
    return run_ids


class Server:
    """The QueryServicer on a grpc.aio server in a background event loop."""

    def __init__(self, servicer):
        self.servicer = servicer
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        threading.Thread(target=self._main, daemon=True).start()
        self.ready.wait(30)

    def _main(self):
        asyncio.set_event_loop(self.loop)

        async def start():
            self.server = grpc.aio.server(interceptors=[ErrorInterceptor()])
            query_pb2_grpc.add_QueryServiceServicer_to_server(self.servicer, self.server)
            self.port = self.server.add_insecure_port("127.0.0.1:0")
            await self.server.start()
            self.ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()


def measure(fn, repeat: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, few repetitions")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--data-dir", default="", help="chDB folder to build in (default: a temp dir, removed)")
    args = ap.parse_args()
    if args.smoke:
        sizes = dict(
            n_runs=200, n_params=20, n_metrics=20, points_per_metric=3, long_runs=10, long_steps=5_000
        )
        repeat = 3
    else:
        sizes = dict(
            n_runs=10_000, n_params=20, n_metrics=20, points_per_metric=5, long_runs=100, long_steps=100_000
        )
        repeat = args.repeat
    folder = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="rs-qbench-"))
    try:
        client = connect(f"chdb://{folder}")
        migrate(client, DB)
        t = time.perf_counter()
        run_ids = build(client, **sizes)
        print(f"built {sizes} in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        # as `runstream server` builds it: reads on their own pool of chDB clients
        server = Server(QueryServicer(client, DB, None, None, readers=ClientPool(f"chdb://{folder}")))
        channel = grpc.insecure_channel(
            f"127.0.0.1:{server.port}", options=[("grpc.max_receive_message_length", 256 << 20)]
        )
        stub = query_pb2_grpc.QueryServiceStub(channel)

        runs_req = query_pb2.SearchRunsRequest(
            project=PROJECT,
            filter='params.p0 > 0.3 and metrics.m0 < 0.9 and tags.dataset = "v2" and state = "finished"',
            order_by=["-metrics.m1"],
            page_size=100,
            param_keys=[f"p{k}" for k in range(5)],
            metric_keys=[f"m{k}" for k in range(5)],
        )
        sorted_only = query_pb2.SearchRunsRequest(project=PROJECT, order_by=["params.p3"], page_size=100)
        long_ids = run_ids[: sizes["long_runs"]]
        series_req = query_pb2.GetMetricSeriesRequest(
            project=PROJECT,
            run_ids=long_ids,
            keys=["loss"],
            max_points=1000,
            downsampling=query_pb2.DOWNSAMPLING_MINMAX,
        )
        lttb_req = query_pb2.GetMetricSeriesRequest(
            project=PROJECT,
            run_ids=long_ids,
            keys=["loss"],
            max_points=1000,
            downsampling=query_pb2.DOWNSAMPLING_LTTB,
        )
        pool = ClientPool(f"chdb://{folder}")
        cached_server = Server(QueryServicer(client, DB, None, None, readers=pool, cache=ReadCache(pool, DB)))
        cached_channel = grpc.insecure_channel(
            f"127.0.0.1:{cached_server.port}", options=[("grpc.max_receive_message_length", 256 << 20)]
        )
        cached = query_pb2_grpc.QueryServiceStub(cached_channel)
        t = time.perf_counter()
        first = cached.SearchRuns(runs_req)
        load_ms = (time.perf_counter() - t) * 1000
        check = stub.SearchRuns(runs_req)
        assert first == check, "the read cache answers what SQL answers"
        series = stub.GetMetricSeries(series_req).series
        assert len(check.runs) == min(100, check.total) and check.total > 0, check.total
        assert len(series) == len(long_ids) and all(0 < len(s.x) // 8 <= 1000 for s in series)
        rows = [
            (
                "runs table: filter (4 terms) + sort by metric, top 100",
                measure(lambda: stub.SearchRuns(runs_req), repeat),
                100,
            ),
            (
                "runs table: no filter, sort by param, top 100",
                measure(lambda: stub.SearchRuns(sorted_only), repeat),
                100,
            ),
            (
                "runs table: filter (4 terms) + sort by metric, top 100 (cache)",
                measure(lambda: cached.SearchRuns(runs_req), repeat),
                100,
            ),
            (
                "runs table: no filter, sort by param, top 100 (cache)",
                measure(lambda: cached.SearchRuns(sorted_only), repeat),
                100,
            ),
            (
                f"series: {len(long_ids)} runs x {sizes['long_steps']:,} steps -> 1,000 pts, MINMAX",
                measure(lambda: stub.GetMetricSeries(series_req), repeat),
                300,
            ),
            (
                f"series: {len(long_ids)} runs x {sizes['long_steps']:,} steps -> 1,000 pts, LTTB",
                measure(lambda: stub.GetMetricSeries(lttb_req), repeat),
                300,
            ),
        ]
        print(
            f"\nquery service, {sizes['n_runs']:,} runs; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus"
        )
        print(f"(matching runs for the filter: {check.total:,}; repeat {repeat})")
        print(f"(read cache: first read of the project, loading it: {load_ms:,.0f} ms)\n")
        print(f"| {'query':<62} | p50 ms | p95 ms | target p95 |")
        print(f"|{'-' * 64}|-------:|-------:|-----------:|")
        for name, times, target in rows:
            print(
                f"| {name:<62} | {percentile(times, 50):6.1f} | {percentile(times, 95):6.1f} | < {target} ms |"
            )
        channel.close()
        cached_channel.close()
    finally:
        if not args.data_dir:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
