"""Ranks of one distributed run logging through the real SDK (issue 11): what a training job's
ranks see, as opposed to many_writers.py's raw-protocol generator.

`n_ranks` ranks are `runstream.init(id=..., rank=r)` runs with default settings, hosted by
`n_procs` worker processes (the 2 cores cannot host a process per rank). Each worker logs one
`run.log` of 10 metrics per step for each of its ranks, paced at `rate` steps/s per rank, for
`seconds`; then it calls every rank's `finish()` at once (a thread each, as ranks in their own
processes would finish side by side). The SDK decides the requests: a busy
rank batches many steps per request, the ranks of a process share one stream (packed messages).

A rate step is held when every worker kept the pace (its last step logged at most LATE_LIMIT_S
behind schedule), every rank's finish() returned within FINISH_LIMIT_S of its worker's last log
(the issue's measure), and delivered everything (nothing spooled or refused).
After the ladder, the highest held step's run is read back: every rank's points of the last
metric must be there exactly once (SDK stats and the stored count agree).

Used by many_writers.py (`--only sdk` / `--only repro`); the repro row is the issue's own
measurement: 64 ranks (4 processes x 16) at 5 steps/s for 20 s, where finish() took up to 85 s.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc

KEYS = [f"m{i}" for i in range(10)]
PROJECT = "sdk-ranks"
FINISH_LIMIT_S = 2.0
#: a worker whose last step went out later than this behind schedule did not offer the rate
LATE_LIMIT_S = 0.25
#: finish() calls side by side in a worker: every rank of it at once, as ranks in their own
#: processes would finish
FINISH_THREADS = 256


def _worker(endpoint: str, ranks: list[int], world: int, jobs, results, start) -> None:
    """One worker process: for each job (run id, steps/s, seconds) from `jobs`, its ranks join
    the run, wait at `start` (a barrier: every worker logs from the same moment), log and finish; one result dict per job goes to `results`. None ends it."""
    import runstream

    while (job := jobs.get()) is not None:
        run_id, rate, seconds = job
        try:
            t0 = time.perf_counter()
            runs = [runstream.init(project=PROJECT, id=run_id, rank=r, world_size=world, endpoint=endpoint)
                    for r in ranks]  # fmt: skip
            init_s = time.perf_counter() - t0
            start.wait()
            cpu0, begin = time.process_time(), time.perf_counter()
            steps, late = int(rate * seconds), 0.0
            for step in range(steps):
                due = begin + step / rate
                now = time.perf_counter()
                if now < due:
                    time.sleep(due - now)
                else:
                    late = max(late, now - due)
                values = {key: step * 0.001 + k for k, key in enumerate(KEYS)}
                for run in runs:
                    run.log(values, step=step)
            last = time.perf_counter()
            with ThreadPoolExecutor(min(FINISH_THREADS, len(runs))) as pool:
                delivered = all(pool.map(lambda run: run.finish(), runs))
            finish_s = time.perf_counter() - last
            cpu_s = time.process_time() - cpu0
            stats = [run.stats for run in runs]
            results.put({
                "init_s": init_s, "late_s": late, "log_s": last - begin, "finish_s": finish_s,
                "delivered": delivered, "cpu_s": cpu_s,
                "requests": sum(s["submitted"] for s in stats),
                "lost": sum(s["refused"] + s["spilled"] + s["dropped"] for s in stats),
            })  # fmt: skip
        except BaseException as exc:  # reported by the parent, which would otherwise wait forever
            start.abort()
            results.put({"error": f"{type(exc).__name__}: {exc}"})


class Workers:
    """`n_procs` worker processes (spawned: no gRPC state forked) sharing out `n_ranks` ranks."""

    def __init__(self, endpoint: str, n_ranks: int, n_procs: int):
        ctx = mp.get_context("spawn")
        self.n_ranks = n_ranks
        self.results = ctx.Queue()
        self.start = ctx.Barrier(n_procs)
        self.jobs = [ctx.Queue() for _ in range(n_procs)]
        self.procs = [
            ctx.Process(
                target=_worker,
                args=(
                    endpoint,
                    list(range(i, n_ranks, n_procs)),
                    n_ranks,
                    self.jobs[i],
                    self.results,
                    self.start,
                ),
                daemon=True,
            )
            for i in range(n_procs)
        ]
        for p in self.procs:
            p.start()

    def step(self, rate: float, seconds: float, server_cpu: Callable[[], float] | None = None) -> dict:
        """One rate step on a run of its own: every worker's result, summed up."""
        run_id = f"sdk-{uuid.uuid4().hex[:10]}"
        for q in self.jobs:
            q.put((run_id, rate, seconds))
        cpu0 = server_cpu() if server_cpu else float("nan")
        parts = [self.results.get(timeout=600) for _ in self.procs]
        cpu = (server_cpu() - cpu0) if server_cpu else float("nan")
        errors = [p["error"] for p in parts if "error" in p]
        if errors:
            raise RuntimeError(f"an SDK ranks worker failed: {errors[0]}")
        steps = int(rate * seconds)
        points = steps * len(KEYS) * self.n_ranks
        log_s = max(p["log_s"] for p in parts) + 1 / rate  # n steps span n intervals of 1/rate
        late = max(p["late_s"] for p in parts)
        finish = max(p["finish_s"] for p in parts)
        delivered = all(p["delivered"] for p in parts) and sum(p["lost"] for p in parts) == 0
        return {
            "run_id": run_id,
            "steps_per_s": rate,
            "steps": steps,
            "offered_points_per_s": rate * len(KEYS) * self.n_ranks,
            "points_per_s": points / log_s,
            "sdk_requests_per_s": sum(p["requests"] for p in parts) / log_s,
            "late_s": late,
            "finish_s": finish,
            "init_s": max(p["init_s"] for p in parts),
            "delivered": delivered,
            "server_cpu_s": cpu,
            "workers_cpu_s": sum(p["cpu_s"] for p in parts),
            "held": late <= LATE_LIMIT_S and finish <= FINISH_LIMIT_S and delivered,
        }

    def close(self) -> None:
        for q in self.jobs:
            q.put(None)
        for p in self.procs:
            p.join(30)
            if p.is_alive():
                p.kill()


def stored_points(endpoint: str, run_id: str, key: str) -> int:
    """Points of `key` stored for the run over all its ranks, as GetMetricSeries counts them."""
    from runstream.v1 import query_pb2, query_pb2_grpc

    with grpc.insecure_channel(endpoint) as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        request = query_pb2.GetMetricSeriesRequest(
            project=PROJECT, run_ids=[run_id], keys=[key], all_ranks=True, max_points=2
        )
        return sum(s.total_points for s in stub.GetMetricSeries(request, timeout=120).series)


def bench_sdk_ranks(
    endpoint: str,
    n_ranks: int,
    n_procs: int,
    rates: list[float],
    seconds: float,
    server_cpu: Callable[[], float] | None = None,
) -> dict:
    """The ladder: rates (steps/s per rank) rise until a step is not held."""
    workers = Workers(endpoint, n_ranks, n_procs)
    steps, best = [], None
    try:
        for rate in rates:
            step = workers.step(rate, seconds, server_cpu)
            steps.append(step)
            print(json.dumps({"sdk_ranks_step": step}), file=sys.stderr, flush=True)
            if not step["held"]:
                break
            best = step
    finally:
        workers.close()
    out = {
        "ranks": n_ranks,
        "processes": n_procs,
        "metrics_per_step": len(KEYS),
        # the highest held step's offered rate (held: it kept the pace); its measured rate, over
        # its logging time with the last step's lateness, is the step's points_per_s
        "held_points_per_s": best["offered_points_per_s"] if best else 0.0,
        "held_steps_per_s": best["steps_per_s"] if best else 0.0,
        "held_sdk_requests_per_s": best["sdk_requests_per_s"] if best else 0.0,
        "steps": steps,
    }
    if best:
        expected = best["steps"] * n_ranks
        stored = stored_points(endpoint, best["run_id"], KEYS[-1])
        out["check"] = {"key": KEYS[-1], "expected_points": expected, "stored_points": stored}
        if stored != expected:
            raise RuntimeError(
                f"SDK ranks: run {best['run_id']} stores {stored} points of {KEYS[-1]}, expected {expected}"
            )
    return out


def bench_repro(
    endpoint: str, n_ranks: int = 64, n_procs: int = 4, rate: float = 5.0, seconds: float = 20.0
) -> dict:
    """The issue's measurement: 64 ranks (4 processes x 16), 10 metrics at 5 steps/s for 20 s;
    finish() took up to 85 s there and spooled 22 requests per rank."""
    workers = Workers(endpoint, n_ranks, n_procs)
    try:
        step = workers.step(rate, seconds)
    finally:
        workers.close()
    stored = stored_points(endpoint, step["run_id"], KEYS[-1])
    return {**step, "ranks": n_ranks, "processes": n_procs, "expected_points": step["steps"] * n_ranks,
            "stored_points": stored}  # fmt: skip
