"""MLflow's side of the many-writers rows (group M; bench/many_writers.py measures Runstream's).

The same shapes through MLflow's own client (`MlflowClient.log_batch`, synchronous, as ranks log
by default), against the `mlflow server` of the other MLflow rows. It runs in MLflow's virtualenv
as the `MANY` workload of bench/mlflow_side.py, so it imports only the standard library and mlflow.

- ranks: `m_ranks` ranks of one run, each request one log_batch of 10 metrics (keys
  `rank{r}/m{k}`: MLflow has no ranks, so each rank's series gets its own keys). A rising request
  rate, `m_mlflow_step_s` per step; `m_mlflow_senders` threads each send the requests of their
  ranks in due order, one at a time (a rank's client is synchronous). A step is held when every
  request returned within 2 s after the step's end and none failed, as on Runstream's side.
- repro: the issue's 64 ranks at 5 steps/s for 20 s, one thread per rank: the time from each
  rank's last log being due until it returned (what its end_run would wait for), the worst rank.
  Requests the server refuses (its database connection pool runs dry under 64 writers) are
  counted and named in the cell: MLflow's client does not retry them, so those points are lost.
- runs: 16 threads create runs (create_run, one log_batch of 20 params + 100 metrics,
  set_terminated) for `mlflow_m_runs_s`; the time for `m_runs` runs at the measured rate
  (MLflow would need minutes for all 10,000; the cell says so).
- fresh: log_metric of one point, then get_run until it shows; idle and at 50 % of the held
  ranks rate (MLflow's own held rate, as Runstream's row uses its own).
"""

from __future__ import annotations

import math
import threading
import time

from common import percentile  # standard library only, like this module

DRAIN_LIMIT_S = 2.0  # as bench/many_writers.py: every request back within 2 s after the step's end
KEYS = 10


class _Load:
    """`ranks` ranks of `run_id` logging at `rate` requests/s in all (rank r's step i is due at
    (i + r/ranks) / steps_per_s), sent by `senders` threads, each owning every senders-th rank
    and sending its requests in due order, one at a time. Runs for `seconds`, or until stop()
    when seconds is None. With `give_up`, a sender more than DRAIN_LIMIT_S behind at the end
    skips the rest (the step is not held; the ladder stays bounded in time)."""

    def __init__(
        self,
        client,
        run_id: str,
        ranks: int,
        rate: float,
        senders: int,
        seconds: float | None,
        give_up: bool = True,
        step_base: int = 0,
    ):
        from mlflow.entities import Metric

        self.metric = Metric
        self.client = client
        self.run_id = run_id
        self.ranks = ranks
        self.steps_per_s = rate / ranks
        self.senders = min(senders, ranks)
        self.seconds = seconds
        self.give_up = give_up
        self.stopped = threading.Event()
        self.sent = 0
        self.given_up = 0
        self.errors: list[str] = []
        self.last_done = 0.0  # seconds after t0
        self.rank_finish: dict[int, float] = {}  # rank -> its last request's return - its due time
        self.step_base = step_base  # the first step number (a ladder's steps follow one another)
        self._lock = threading.Lock()

    def _due(self, k: int):
        """(due s, rank, step) of sender k's ranks, in due order, without end when seconds is None."""
        mine = list(range(k, self.ranks, self.senders))
        i = 0
        while True:
            for r in mine:
                due = (i + r / self.ranks) / self.steps_per_s
                if self.seconds is not None and due >= self.seconds:
                    return
                yield due, r, self.step_base + i
            i += 1

    def _send(self, k: int, t0: float) -> None:
        sent, last_done = 0, 0.0
        finish: dict[int, float] = {}
        for due, r, step in self._due(k):
            while (wait := t0 + due - time.perf_counter()) > 0:
                if self.stopped.wait(min(wait, 0.05)):
                    break
            if self.stopped.is_set():
                break
            now = time.perf_counter() - t0
            if self.give_up and self.seconds is not None and now > self.seconds + DRAIN_LIMIT_S:
                with self._lock:
                    self.given_up += 1
                continue
            ts = int(time.time() * 1000)
            batch = [
                self.metric(f"rank{r}/m{j}", 1.0 / (1 + step) + 0.001 * j, ts, step) for j in range(KEYS)
            ]
            try:
                self.client.log_batch(self.run_id, metrics=batch)
                sent += 1
            except Exception as exc:  # counted: the step is not held (a refusal also ends the wait)
                with self._lock:
                    self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
            last_done = time.perf_counter() - t0
            finish[r] = last_done - due
        with self._lock:
            self.sent += sent
            self.last_done = max(self.last_done, last_done)
            self.rank_finish.update(finish)

    def start(self) -> _Load:
        t0 = time.perf_counter()
        self.threads = [threading.Thread(target=self._send, args=(k, t0)) for k in range(self.senders)]
        for t in self.threads:
            t.start()
        return self

    def join(self) -> _Load:
        for t in self.threads:
            t.join()
        return self

    def stop(self) -> _Load:
        self.stopped.set()
        return self.join()


def _ladder(client, exp: str, sizes: dict) -> dict:
    run_id = client.create_run(exp, run_name="ranks").info.run_id
    ranks, seconds = sizes["m_ranks"], sizes["m_mlflow_step_s"]
    steps, best, step_base = [], None, 0
    for rate in (float(r) for r in str(sizes["m_mlflow_rates"]).split(",")):
        load = _Load(client, run_id, ranks, rate, sizes["m_mlflow_senders"], seconds, step_base=step_base)
        load.start().join()
        step_base += math.ceil(seconds * load.steps_per_s) + 1
        drain_s = load.last_done - seconds
        step = {
            "offered_rps": rate,
            "sent_rps": round(load.sent / seconds, 1),
            "drain_s": round(drain_s, 3),
            "errors": load.errors[:3],
            # every request due was sent (none failed, none given up) and came back in time
            "held": not load.errors and not load.given_up and drain_s <= DRAIN_LIMIT_S,
        }
        steps.append(step)
        if not step["held"]:
            break
        best = step
    client.set_terminated(run_id)
    # the highest held step's offered rate, as Runstream's ranks rows report it (bench/many_writers.py)
    return {"held_requests_per_s": best["offered_rps"] if best else 0.0, "steps": steps}


def _repro(client, exp: str, sizes: dict) -> dict:
    """The issue's 64 ranks × 5 steps/s × 20 s, one synchronous client thread per rank."""
    run_id = client.create_run(exp, run_name="repro").info.run_id
    ranks = sizes["m_repro_ranks"]
    load = _Load(client, run_id, ranks, ranks * 5.0, ranks, sizes["m_repro_s"], give_up=False).start().join()
    client.set_terminated(run_id)
    return {
        "finish_s": max(load.rank_finish.values()),
        "requests": load.sent + len(load.errors),
        "failed": len(load.errors),
        "first_error": load.errors[0] if load.errors else "",
        "ranks": ranks,
    }


def _runs(client, exp: str, sizes: dict) -> dict:
    """16 threads create runs like W3 setup's (20 params, 10 metrics x 10 steps) for a time budget."""
    from concurrent.futures import ThreadPoolExecutor

    from mlflow.entities import Metric, Param

    budget, target = sizes["mlflow_m_runs_s"], sizes["m_runs"]
    made = [0]
    lock = threading.Lock()

    def client_loop(c: int) -> None:
        i = 0
        while time.perf_counter() < deadline:
            run_id = client.create_run(exp, run_name=f"m-{c}-{i}").info.run_id
            params = [Param(f"p{j}", str(c * 1000 + i + j)) for j in range(20)]
            now = int(time.time() * 1000)
            metrics = [
                Metric(f"m{k}", ((i * 7 + k + s) % 100) / 100.0, now, s) for k in range(10) for s in range(10)
            ]
            client.log_batch(run_id, metrics=metrics, params=params)
            client.set_terminated(run_id)
            i += 1
            with lock:
                made[0] += 1
                if made[0] >= target:
                    return

    t0 = time.perf_counter()
    deadline = t0 + budget
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(client_loop, range(16)))
    elapsed = time.perf_counter() - t0
    runs_per_s = made[0] / elapsed
    return {"runs_made": made[0], "seconds": round(elapsed, 2), "runs_per_s": round(runs_per_s, 1),
            "time_for_target_s": target / runs_per_s, "target_runs": target}  # fmt: skip


def _probe(client, run_id: str, probes: int, offset: int) -> list[float]:
    times = []
    for i in range(offset, offset + probes):
        t0 = time.perf_counter()
        client.log_metric(run_id, "probe", float(i), step=i)
        while client.get_run(run_id).data.metrics.get("probe") != float(i):
            time.sleep(0.001)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def many_writers(client, mlflow, sizes, repeat, state) -> dict:
    """The MANY workload (one pass, as Runstream's group M): parts for the M rows MLflow can do."""
    found = client.get_experiment_by_name("bench-many-writers")
    exp = found.experiment_id if found else client.create_experiment("bench-many-writers")
    ladder = _ladder(client, exp, sizes)
    repro = _repro(client, exp, sizes)
    runs = _runs(client, exp, sizes)
    probe_run = client.create_run(exp, run_name="fresh").info.run_id
    idle = _probe(client, probe_run, sizes["latency_probes"], 0)
    held = ladder["held_requests_per_s"]
    load_run = client.create_run(exp, run_name="fresh-load").info.run_id
    load = _Load(
        client, load_run, sizes["m_ranks"], max(held / 2, 1.0), sizes["m_mlflow_senders"], None
    ).start()
    try:
        loaded = _probe(client, probe_run, sizes["latency_probes"], sizes["latency_probes"])
    finally:
        load.stop()
    for run_id in (probe_run, load_run):
        client.set_terminated(run_id)
    scaled = runs["runs_made"] < runs["target_runs"]
    return {
        "parts": {
            "ranks_rps": [held],
            "ranks_pps": [held * KEYS],
            "repro_finish_s": [repro["finish_s"]],
            "runs_s": [runs["time_for_target_s"]],
            "idle_p99": [percentile(idle, 99)],
            "load_p99": [percentile(loaded, 99)],
        },
        "detail": {
            "ranks": ladder,
            "repro": repro,
            "runs": runs,
            "fresh": {
                "idle_p50_ms": percentile(idle, 50),
                "load_p50_ms": percentile(loaded, 50),
                "load_rps": held / 2,
            },
            "notes": {
                "repro_finish_s": (
                    f"{repro['failed']:,} of {repro['requests']:,} requests refused: "
                    + repro["first_error"].split(": ", 1)[-1].split(",")[0][:80]
                    if repro["failed"]
                    else ""
                ),
                "runs_s": (
                    f"{runs['runs_made']:,} runs in {runs['seconds']:.0f} s, scaled to {runs['target_runs']:,}"
                    if scaled
                    else ""
                ),
            },
        },
    }
