"""The Runstream side of the benchmark: a real `runstream server` in a child process (embedded:
chDB + local artifacts; or the Kafka bus), driven through the public SDK (`runstream.init`,
`run.log`, `run.log_arrays`, `run.finish`) and read back through the query service
(`runstream.Api` where it covers the call, the QueryService gRPC contract otherwise).

"Durable and queryable" is checked, not assumed: every ingest workload stops its clock only
when a query through the query service sees the last point.

Over 400 lines on purpose: it holds every workload of one side (W1-W5, the DESIGN-scale W5,
sustained ingest, latency) so they can be read against mlflow_side.py workload by workload.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from common import Sizes, percentile, repetitions

PROJECT_PREFIX = "bench"
OPTIMIZERS = ("adam", "sgd", "adamw", "rmsprop")


class RunstreamSide:
    def __init__(self, workdir: Path, bus: str, sizes: Sizes):
        self.workdir = Path(workdir)
        self.bus = bus
        self.sizes = sizes
        self.server = None
        self.channel: grpc.Channel | None = None
        self.query = None
        self.api = None
        self.state: dict = {}
        # After the producers are done, how long the pipeline may take to make it all visible.
        self.sustained_wait_s = 60.0 + sizes.sustained_points / 50_000
        self._stamp = str(int(time.time()))

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> RunstreamSide:
        from tests.server_process import ServerProcess

        extra, env = [], {}
        if self.bus == "kafka":
            kafka = _kafka_bootstrap()
            prefix = f"bench{self._stamp}"
            extra = ["--bus", "kafka", "--kafka-bootstrap", kafka]
            env = {
                "RUNSTREAM_KAFKA_TOPIC_PREFIX": prefix,
                "RUNSTREAM_KAFKA_GROUP_ID": f"{prefix}-writers",
                "RUNSTREAM_KAFKA_ALLOW_UNDER_REPLICATED": "1",  # the local single-node broker
            }
        self.server = ServerProcess(self.workdir / "server", extra_args=extra, env=env).start(timeout_s=120)
        try:
            from runstream.v1 import query_pb2_grpc

            options = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
            self.channel = grpc.insecure_channel(self.server.endpoint, options=options)
            self.query = query_pb2_grpc.QueryServiceStub(self.channel)
            self.api = _make_api(self.server.endpoint)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.api is not None and hasattr(self.api, "close"):
            self.api.close()
        if self.channel is not None:
            self.channel.close()
        if self.server is not None:
            self.server.stop()

    def run(self, workload: str, repeat: int) -> dict:
        return getattr(self, f"_{workload.lower()}")(repeat)

    # ---- helpers ------------------------------------------------------------------------

    def _project(self, name: str) -> str:
        return f"{PROJECT_PREFIX}-{name}-{self.bus}-{self._stamp}"

    def _init(self, project: str, **kwargs):
        import runstream

        return runstream.init(
            project=project,
            endpoint=self.server.endpoint,
            spool_dir=str(self.workdir / "spool"),
            system_metrics_interval_s=0,  # no sampler thread competing with the measured loop
            **kwargs,
        )

    def _point_count(self, project: str, run_id: str, key: str) -> int:
        """Points of `key` in a run as the query service sees them (0 while unknown)."""
        from runstream.v1 import query_pb2

        try:
            resp = self.query.GetMetricSeries(
                query_pb2.GetMetricSeriesRequest(project=project, run_ids=[run_id], keys=[key], max_points=2),
                timeout=30,
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return 0
            raise
        return sum(s.total_points for s in resp.series if s.key == key)

    def _wait_visible(self, project: str, run_id: str, key: str, count: int, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            seen = self._point_count(project, run_id, key)
            if seen >= count:
                return
            time.sleep(0.005)
        raise TimeoutError(
            f"{project}/{run_id} shows {seen} of {count} points of {key!r} after {timeout_s:.0f}s; "
            f"server log: {self._server_complaint()}"
        )

    def _server_complaint(self) -> str:
        """The server's last warning or error line, so a stuck workload says why."""
        for line in reversed(self.server.log_tail(200).splitlines()):
            if " WARNING " in line or " ERROR " in line:
                return line[:400]
        return "(no warning)"

    def _finish(self, run) -> None:
        if not run.finish():
            raise RuntimeError(f"run {run.id} could not deliver everything (stats {run.stats})")

    # ---- W1 / W2: logging until queryable -------------------------------------------------

    def _w1(self, repeat: int) -> dict:
        steps, keys = self.sizes.w1_steps, self.sizes.w1_keys
        project = self._project("w1")
        names = [f"m{k}" for k in range(keys)]
        samples, phases = [], []
        for _ in repetitions(repeat, self.sizes.rep_budget_s):
            t0 = time.perf_counter()
            run = self._init(project)
            t1 = time.perf_counter()
            for step in range(steps):
                run.log({name: 1.0 / (1 + step) + 0.001 * k for k, name in enumerate(names)}, step=step)
            t2 = time.perf_counter()
            self._finish(run)
            t3 = time.perf_counter()
            self._wait_visible(project, run.id, names[-1], steps)
            t4 = time.perf_counter()
            samples.append(steps * keys / (t4 - t0))
            phases.append(_phases(t0, t1, t2, t3, t4))
        return {
            "samples": samples,
            "detail": {"points": steps * keys, "api": "run.log(dict, step=)", "phases_s": phases},
        }

    def _w2(self, repeat: int) -> dict:
        keys, steps = self.sizes.w2_keys, self.sizes.w2_steps
        project = self._project("w2")
        step_arr = np.arange(steps, dtype=np.int64)
        # Built before the clock starts, as for MLflow: only logging, transfer and storage count.
        series = {f"m{k}": 1.0 / (1 + step_arr) + 0.001 * k for k in range(keys)}
        samples, phases = [], []
        for _ in repetitions(repeat, self.sizes.rep_budget_s):
            t0 = time.perf_counter()
            run = self._init(project)
            t1 = time.perf_counter()
            run.log_arrays(series, step_arr)
            t2 = time.perf_counter()
            self._finish(run)
            t3 = time.perf_counter()
            self._wait_visible(project, run.id, f"m{keys - 1}", steps)
            t4 = time.perf_counter()
            samples.append(keys * steps / (t4 - t0))
            phases.append(_phases(t0, t1, t2, t3, t4))
            self.state["w2"] = (project, run.id)
        return {
            "samples": samples,
            "detail": {"points": keys * steps, "api": "run.log_arrays(dict, steps)", "phases_s": phases},
        }

    # ---- W3: many runs, then search -------------------------------------------------------

    def _w3_setup(self) -> tuple[str, list[str], float]:
        if "w3" in self.state:
            return self.state["w3"]
        s = self.sizes
        project = self._project("w3")

        def make_run(i: int) -> str:
            config = {"optimizer": OPTIMIZERS[i % 4], "lr": 10.0 ** -(1 + i % 5)}
            config.update({f"p{j}": i * 31 + j for j in range(s.w3_params - 2)})
            run = self._init(project, name=f"run-{i}", config=config)
            for step in range(s.w3_steps):
                run.log(
                    {f"m{k}": ((i * 7919 + k * 104729 + step) % 1000) / 1000.0 for k in range(s.w3_metrics)},
                    step=step,
                )
            self._finish(run)
            return run.id

        from concurrent.futures import ThreadPoolExecutor

        t0 = time.perf_counter()
        with ThreadPoolExecutor(s.w3_workers) as pool:
            run_ids = list(pool.map(make_run, range(s.w3_runs)))
        # One query checks them all: every run shows all points of its last metric.
        self._wait_runs(project, s.w3_runs, flt=f"metrics.m{s.w3_metrics - 1}.count >= {s.w3_steps}")
        setup_s = time.perf_counter() - t0
        self.state["w3"] = (project, run_ids, setup_s)
        return self.state["w3"]

    def _wait_runs(self, project: str, count: int, flt: str = "", timeout_s: float = 120) -> None:
        from runstream.v1 import query_pb2

        deadline = time.monotonic() + timeout_s
        total = 0
        while time.monotonic() < deadline:
            total = self.query.SearchRuns(
                query_pb2.SearchRunsRequest(project=project, filter=flt, page_size=1), timeout=30
            ).total
            if total >= count:
                return
            time.sleep(0.01)
        raise TimeoutError(f"{project} shows {total} of {count} runs after {timeout_s}s")

    def _search_filtered(self, project: str) -> int:
        top = self.sizes.w3_top
        flt, order = 'params.optimizer = "adam"', ["-metrics.m0"]
        if self.api is not None:
            return int(self.api.runs(project, filter=flt, order_by=order, limit=top).shape[0])
        from runstream.v1 import query_pb2

        resp = self.query.SearchRuns(
            query_pb2.SearchRunsRequest(project=project, filter=flt, order_by=order, page_size=top),
            timeout=60,
        )
        return len(resp.runs)

    def _list_all(self, project: str) -> int:
        if self.api is not None:
            return int(self.api.runs(project).shape[0])
        from runstream.v1 import query_pb2

        n, token = 0, ""
        while True:
            resp = self.query.SearchRuns(
                query_pb2.SearchRunsRequest(project=project, page_size=1000, page_token=token), timeout=60
            )
            n += len(resp.runs)
            token = resp.next_page_token
            if not token:
                return n

    def _w3(self, repeat: int) -> dict:
        project, _, setup_s = self._w3_setup()
        n, top = self.sizes.w3_runs, self.sizes.w3_top
        out = {"a_p50": [], "a_p95": [], "b_p50": [], "b_p95": []}
        # one untimed query of each kind first: the first Api.runs of a process imports pandas
        # (~250 ms), which was the W3a p95 of the first repetition (5 queries: p95 ~ the slowest)
        self._search_filtered(project)
        self._list_all(project)
        for _ in repetitions(repeat, self.sizes.rep_budget_s):
            a_times, b_times = [], []
            for _ in range(self.sizes.w3_queries):
                t0 = time.perf_counter()
                got = self._search_filtered(project)
                a_times.append(time.perf_counter() - t0)
                if got != min(top, (n + 3) // 4):
                    raise RuntimeError(f"W3a returned {got} runs")
                t0 = time.perf_counter()
                got = self._list_all(project)
                b_times.append(time.perf_counter() - t0)
                if got != n:
                    raise RuntimeError(f"W3b listed {got} runs, expected {n}")
            out["a_p50"].append(percentile(a_times, 50) * 1000)
            out["a_p95"].append(percentile(a_times, 95) * 1000)
            out["b_p50"].append(percentile(b_times, 50) * 1000)
            out["b_p95"].append(percentile(b_times, 95) * 1000)
        return {"parts": out, "detail": {"setup_s": setup_s, "runs": n, "via": self._via("runs")}}

    def _via(self, method: str = "") -> str:
        return f"runstream.Api.{method}" if self.api is not None else "QueryService gRPC"

    # ---- W4 / W5: histories ---------------------------------------------------------------

    def _history_len(self, project: str, run_id: str, key: str) -> int:
        if self.api is not None:
            return _length(self.api.history(run_id, keys=[key], project=project))
        from runstream.v1 import query_pb2

        n = 0
        for page in self.query.GetHistory(
            query_pb2.GetHistoryRequest(project=project, run_id=run_id, keys=[key]), timeout=120
        ):
            n += len(page.steps) // 8
        return n

    def _w4(self, repeat: int) -> dict:
        steps = self.sizes.w2_steps
        if "w2" not in self.state:
            self._w2(1)
        project, run_id = self.state["w2"]
        samples = []
        for _ in repetitions(repeat, self.sizes.rep_budget_s):
            times = []
            for _ in range(self.sizes.w4_fetches):
                t0 = time.perf_counter()
                got = self._history_len(project, run_id, "m0")
                times.append(time.perf_counter() - t0)
                if got != steps:
                    raise RuntimeError(f"W4 fetched {got} points, expected {steps}")
            samples.append(percentile(times, 50) * 1000)
        return {"samples": samples, "detail": {"steps": steps, "via": self._via("history")}}

    def _w5(self, repeat: int) -> dict:
        project, run_ids, _ = self._w3_setup()
        run_ids = run_ids[: self.sizes.w5_runs]
        expected = len(run_ids) * self.sizes.w3_steps
        samples = []
        for _ in repetitions(repeat, self.sizes.rep_budget_s):
            t0 = time.perf_counter()
            total = self._series_points(project, run_ids, "m0", self.sizes.w3_steps, downsample=False)
            samples.append((time.perf_counter() - t0) * 1000)
            if total != expected:
                raise RuntimeError(f"W5 fetched {total} points, expected {expected}")
        return {"samples": samples, "detail": {"runs": len(run_ids), "via": self._via("series")}}

    def _w5loop(self, repeat: int) -> dict:
        """W5 as a script writes it: one Api.history call per run (what MLflow's W5 does)."""
        project, run_ids, _ = self._w3_setup()
        run_ids = run_ids[: self.sizes.w5_runs]
        if self.api is None:
            raise RuntimeError("this build has no runstream.Api")
        samples = []
        for _ in repetitions(repeat, self.sizes.rep_budget_s):
            t0 = time.perf_counter()
            total = sum(len(self.api.history(run_id, keys=["m0"], project=project)) for run_id in run_ids)
            samples.append((time.perf_counter() - t0) * 1000)
            if total != len(run_ids) * self.sizes.w3_steps:
                raise RuntimeError(f"W5 loop fetched {total} points")
        return {"samples": samples, "detail": {"runs": len(run_ids), "via": "runstream.Api.history"}}

    def _series_points(
        self, project: str, run_ids: list[str], key: str, max_points: int, downsample: bool
    ) -> int:
        """One call for many runs: Api.series (GetMetricSeries); the number of points returned."""
        if self.api is not None:
            df = self.api.series(
                project,
                run_ids,
                [key],
                max_points=max_points,
                downsampling="minmax" if downsample else "none",
            )
            return int(df.shape[0])
        from runstream.v1 import query_pb2

        resp = self.query.GetMetricSeries(
            query_pb2.GetMetricSeriesRequest(
                project=project,
                run_ids=run_ids,
                keys=[key],
                max_points=max_points,
                downsampling=query_pb2.DOWNSAMPLING_MINMAX if downsample else query_pb2.DOWNSAMPLING_NONE,
            ),
            timeout=60,
        )
        return sum(len(s.y) // 8 for s in resp.series)

    def _w5ds(self, repeat: int) -> dict:
        """DESIGN's scale: 100 runs x 100,000 steps logged through the SDK (log_arrays, from
        w3_workers threads), then one series call for all of them, downsampled on the server."""
        s = self.sizes
        project = self._project("w5ds")
        steps = np.arange(s.w5ds_steps, dtype=np.int64)
        values = np.sin(steps * 0.0001)

        def make_run(i: int) -> str:
            run = self._init(project, name=f"long-{i}")
            run.log_arrays({"m0": values + i}, steps)
            self._finish(run)
            return run.id

        from concurrent.futures import ThreadPoolExecutor

        t0 = time.perf_counter()
        with ThreadPoolExecutor(s.w3_workers) as pool:
            run_ids = list(pool.map(make_run, range(s.w5ds_runs)))
        self._wait_runs(project, s.w5ds_runs, flt=f"metrics.m0.count >= {s.w5ds_steps}", timeout_s=300)
        setup_s = time.perf_counter() - t0
        out = {"p50": [], "p95": []}
        for _ in repetitions(repeat, self.sizes.rep_budget_s):
            times = []
            for _ in range(s.w5ds_queries):
                t0 = time.perf_counter()
                got = self._series_points(project, run_ids, "m0", s.w5ds_points, downsample=True)
                times.append((time.perf_counter() - t0) * 1000)
                if not 0 < got <= s.w5ds_runs * s.w5ds_points:
                    raise RuntimeError(f"W5ds returned {got} points for {s.w5ds_runs} runs")
            out["p50"].append(percentile(times, 50))
            out["p95"].append(percentile(times, 95))
        return {
            "parts": out,
            "detail": {
                "setup_s": setup_s,
                "points_logged": s.w5ds_runs * s.w5ds_steps,
                "setup_points_per_s": s.w5ds_runs * s.w5ds_steps / setup_s,
                "via": self._via("series"),
            },
        }

    # ---- sustained ingest and log -> visible latency --------------------------------------

    def _sustained(self, repeat: int) -> dict:
        """`sustained_points` points spread over `sustained_runs` runs, each logged by its own
        thread in chunks through run.log_arrays; the clock stops when every run's last point
        is visible through the query service."""
        s = self.sizes
        project = self._project("sustained")
        per_run = s.sustained_points // s.sustained_runs
        keys = 10
        chunk_steps = 10_000  # 100,000 points per log_arrays call
        steps_per_run = per_run // keys
        chunks = []
        for start in range(0, steps_per_run, chunk_steps):
            st = np.arange(start, min(start + chunk_steps, steps_per_run), dtype=np.int64)
            chunks.append((st, {f"m{k}": np.sin(st * 0.001 + k) for k in range(keys)}))
        samples = []
        for _ in repetitions(repeat, self.sizes.rep_budget_s):
            runs = [self._init(project) for _ in range(s.sustained_runs)]
            errors: list[BaseException] = []

            def produce(run, errors=errors) -> None:
                try:
                    for st, series in chunks:
                        run.log_arrays(series, st)
                    self._finish(run)
                except BaseException as exc:  # reported after join
                    errors.append(exc)

            t0 = time.perf_counter()
            threads = [threading.Thread(target=produce, args=(r,)) for r in runs]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
            deadline = time.monotonic() + self.sustained_wait_s
            for run in runs:
                left = max(deadline - time.monotonic(), 1.0)
                self._wait_visible(project, run.id, f"m{keys - 1}", steps_per_run, timeout_s=left)
            samples.append(steps_per_run * keys * len(runs) / (time.perf_counter() - t0))
        return {
            "samples": samples,
            "detail": {"runs": s.sustained_runs, "points": steps_per_run * keys * s.sustained_runs},
        }

    def _latency(self, repeat: int) -> dict:
        """One point logged with run.log (default SDK settings: the worker sends at least every
        flush_interval_s), then GetMetricSeries polled until that point is counted."""
        project = self._project("latency")
        out = {"p50": [], "p99": []}
        for _ in repetitions(repeat, self.sizes.rep_budget_s):
            run = self._init(project)
            times = []
            for i in range(self.sizes.latency_probes):
                t0 = time.perf_counter()
                run.log({"probe": float(i)}, step=i)
                self._wait_visible(project, run.id, "probe", i + 1, timeout_s=30)
                times.append((time.perf_counter() - t0) * 1000)
            self._finish(run)
            out["p50"].append(percentile(times, 50))
            out["p99"].append(percentile(times, 99))
        return {
            "parts": out,
            "detail": {
                "probes": self.sizes.latency_probes,
                "flush_interval_s": float(os.environ.get("RUNSTREAM_FLUSH_INTERVAL_S", "0.2")),
                "median_ms": statistics.median(out["p50"]),
            },
        }


def _phases(t0: float, t1: float, t2: float, t3: float, t4: float) -> dict[str, float]:
    """Where a logging workload's time went: init, the caller's log calls, finish (send + acks),
    and the wait until a query sees the last point."""
    return {"init": t1 - t0, "log": t2 - t1, "finish": t3 - t2, "visible": t4 - t3}


def _make_api(endpoint: str):
    """runstream.Api when this build has it; None sends the bench to the gRPC contract."""
    try:
        from runstream.api import Api
    except ImportError:
        return None
    return Api(endpoint=endpoint)


def _length(history) -> int:
    """Points in whatever runstream.Api.history returns (a DataFrame, a dict of arrays, rows)."""
    if hasattr(history, "shape"):
        return int(history.shape[0])
    if isinstance(history, dict):
        first = next(iter(history.values()), [])
        return len(first)
    return len(list(history))


def _kafka_bootstrap() -> str:
    """Kafka from `scripts/services.sh env`; started with `services.sh up` when nothing listens."""
    import socket
    import subprocess
    import sys

    from common import ROOT

    script = str(ROOT / "scripts/services.sh")
    out = subprocess.run(["bash", script, "env"], capture_output=True, text=True, check=True).stdout
    bootstrap = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)["RUNSTREAM_TEST_KAFKA"]
    host, port = bootstrap.split(",")[0].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        subprocess.run(["bash", script, "up"], check=True, env={**os.environ, "PYTHON": sys.executable})
    return bootstrap
