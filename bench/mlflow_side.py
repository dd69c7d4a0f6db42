"""The MLflow side of the benchmark.

Parent side (our venv): `ensure_venv()` makes MLflow's virtualenv once (`pip install mlflow` into
$RUNSTREAM_MLFLOW_VENV, default ~/.cache/runstream/mlflow-venv),
`MLflowServer` runs a real `mlflow server` (SQLite backend, local artifact root, free loopback
port, temp dir), and `run_workload()` runs one workload in a child process of MLflow's venv so
its dependencies never mix with ours.

Worker side: `python bench/mlflow_side.py worker ...` inside MLflow's venv, using the idiomatic
client calls (per-step `mlflow.log_metrics`, `MlflowClient.log_batch`, `search_runs`,
`get_metric_history`). It prints one JSON line with a value per repetition.

This module imports only the standard library at the top, so both interpreters can load it.
Over 400 lines on purpose: the parent and the worker side must stay in this one stdlib-only file
(the worker runs in MLflow's venv, which has no access to the rest of bench/).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import percentile, repetitions  # noqa: E402 - standard library only, like this module
from mlflow_many_writers import many_writers  # noqa: E402 - the same (mlflow is imported in the worker)

# In the machine's cache, not the checkout, so fresh clones (CI) on the same machine reuse it.
VENV = Path(
    os.environ.get("RUNSTREAM_MLFLOW_VENV")
    or Path(os.environ.get("RUNSTREAM_CACHE_DIR") or "~/.cache/runstream").expanduser() / "mlflow-venv"
)
VENV_PYTHON = VENV / "bin" / "python"
READY_MARKER = VENV / ".bench-ready"
MLFLOW_REQUIREMENT = "mlflow>=3,<4"
RESULT_PREFIX = "BENCH_RESULT "


# --------------------------------------------------------------------------- parent side


class MLflowUnavailable(RuntimeError):
    """Raised when MLflow's virtualenv cannot be made or its server does not come up."""


def venv_ready() -> bool:
    return READY_MARKER.exists() and VENV_PYTHON.exists()


def ensure_venv(log=print) -> str:
    """Creates MLflow's virtualenv (VENV) with MLflow 3.x once; returns the installed MLflow version."""
    if not venv_ready():
        log(f"creating {VENV} with {MLFLOW_REQUIREMENT} (once; a few minutes)")
        base_python = getattr(sys, "_base_executable", None) or shutil.which("python3") or sys.executable
        try:
            if not VENV_PYTHON.exists():
                subprocess.run([base_python, "-m", "venv", str(VENV)], check=True)
            subprocess.run(
                [str(VENV_PYTHON), "-m", "pip", "install", "-q", MLFLOW_REQUIREMENT],
                check=True,
                timeout=1200,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise MLflowUnavailable(f"could not install MLflow into {VENV}: {exc}") from exc
        READY_MARKER.write_text("ok\n")
    out = subprocess.run(
        [str(VENV_PYTHON), "-c", "import importlib.metadata as m; print(m.version('mlflow'))"],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise MLflowUnavailable(f"MLflow in {VENV} does not import: {out.stderr.strip()[-500:]}")
    return out.stdout.strip()


class MLflowServer:
    """A real `mlflow server` with a SQLite backend in a temp dir, on a free loopback port."""

    def __init__(self, port: int, workdir: Path | None = None, workers: int = 0):
        self.port = port
        self.workers = workers  # 0: the server's default
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="bench-mlflow-")
        self.workdir = Path(workdir or self._tmp.name)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "mlflow-server.log"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120) -> MLflowServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        artifacts = self.workdir / "artifacts"
        artifacts.mkdir(exist_ok=True)
        cmd = [
            str(VENV / "bin" / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{self.workdir / 'mlflow.db'}",
            "--default-artifact-root", artifacts.as_uri(),
            "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip
        if self.workers:
            cmd += ["--workers", str(self.workers)]
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        # Own process group: the server forks workers, and stop() must end them all.
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise MLflowUnavailable(
                    f"mlflow server exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise MLflowUnavailable(f"mlflow server not healthy after {timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            import signal

            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._tmp:
            self._tmp.cleanup()

    def __enter__(self) -> MLflowServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_workloads(
    names: list[str], uri: str, sizes: dict, repeat: int, state_file: Path, timeout_s: float = 1800
):
    """Runs the workloads in one child process of MLflow's venv (mlflow is imported once) and
    yields (name, result) as each finishes; result is {"samples"/"parts": ..., "detail": ...}
    or an exception for a workload that failed."""
    import threading

    cmd = [
        str(VENV_PYTHON), str(Path(__file__).resolve()), "worker", ",".join(names),
        "--uri", uri, "--sizes", json.dumps(sizes), "--repeat", str(repeat), "--state", str(state_file),
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    stderr_path = state_file.with_suffix(".stderr")
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        watchdog = threading.Timer(timeout_s, proc.kill)
        watchdog.start()
        pending = list(names)
        try:
            for line in proc.stdout:
                if not line.startswith(RESULT_PREFIX):
                    continue
                message = json.loads(line[len(RESULT_PREFIX) :])
                pending.remove(message["workload"])
                if "error" in message:
                    yield message["workload"], RuntimeError(message["error"])
                else:
                    yield message["workload"], message["result"]
            proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if pending:
        tail = stderr_path.read_text(errors="replace").strip()[-2000:]
        why = f"ran past {timeout_s:.0f}s" if proc.returncode in (-9, 137) else f"exit {proc.returncode}"
        for name in pending:
            yield name, RuntimeError(f"MLflow worker died before {name} ({why}):\n{tail}")


# --------------------------------------------------------------------------- worker side


class _State:
    """Run ids shared between workloads (W4 reads W2's run, W5 reads W3's runs)."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data))


def _value(step: int, key: int) -> float:
    return 1.0 / (1 + step) + 0.001 * key


def _experiment(client, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name)


def _wait_latest(client, run_id: str, key: str, expected: float | None) -> None:
    """Data is 'queryable' once the run's latest value of `key` (MLflow keeps it per key, at
    the highest step) is `expected` (or just present when None). MLflow writes synchronously,
    so this normally holds on the first look; it is checked, not assumed."""
    for _ in range(1000):
        value = client.get_run(run_id).data.metrics.get(key)
        if value is not None and (expected is None or value == expected):
            return
        time.sleep(0.01)
    raise RuntimeError(f"MLflow never showed {key}={expected} for run {run_id}")


def _w1(client, mlflow, sizes, repeat, state) -> dict:
    """Per-step logging: one mlflow.log_metrics call per step, until queryable."""
    steps, keys = sizes["w1_steps"], sizes["w1_keys"]
    mlflow.set_experiment("bench-w1")
    samples = []
    for _ in repetitions(repeat, sizes["rep_budget_s"]):
        t0 = time.perf_counter()
        with mlflow.start_run() as run:
            for step in range(steps):
                mlflow.log_metrics({f"m{k}": _value(step, k) for k in range(keys)}, step=step)
        _wait_latest(client, run.info.run_id, f"m{keys - 1}", _value(steps - 1, keys - 1))
        samples.append(steps * keys / (time.perf_counter() - t0))
    return {"samples": samples, "detail": {"points": steps * keys}}


def _w2(client, mlflow, sizes, repeat, state) -> dict:
    """Bulk logging with log_batch (MLflow's limit: 1,000 metrics per call), until queryable."""
    from mlflow.entities import Metric

    keys, steps = sizes["w2_keys"], sizes["w2_steps"]
    exp = _experiment(client, "bench-w2")
    now = int(time.time() * 1000)
    # Built before the clock starts: only the transfer and storage are measured.
    points = [Metric(f"m{k}", _value(s, k), now + s, s) for k in range(keys) for s in range(steps)]
    batches = [points[i : i + 1000] for i in range(0, len(points), 1000)]
    samples = []
    for _ in repetitions(repeat, sizes["rep_budget_s"]):
        run_id = client.create_run(exp).info.run_id
        t0 = time.perf_counter()
        for batch in batches:
            client.log_batch(run_id, metrics=batch)
        _wait_latest(client, run_id, f"m{keys - 1}", _value(steps - 1, keys - 1))
        samples.append(len(points) / (time.perf_counter() - t0))
        client.set_terminated(run_id)
        state.data["w2_run"] = run_id
    state.data["w2_steps"] = steps
    return {"samples": samples, "detail": {"points": len(points), "batch": 1000}}


def _w3_setup(client, sizes, state) -> tuple[str, float]:
    """1,000 runs x 20 params x 10 metrics x 10 steps: create_run, one log_batch, set_terminated,
    from `w3_workers` threads at once (a parallel sweep; Runstream gets the same)."""
    from mlflow.entities import Metric, Param

    if "w3_experiment" in state.data:
        return state.data["w3_experiment"], state.data["w3_setup_s"]
    exp = _experiment(client, f"bench-w3-{int(time.time())}")
    optimizers = ["adam", "sgd", "adamw", "rmsprop"]

    def make_run(i: int) -> str:
        run_id = client.create_run(exp, run_name=f"run-{i}").info.run_id
        params = [Param("optimizer", optimizers[i % 4]), Param("lr", str(10 ** -(1 + i % 5)))]
        params += [Param(f"p{j}", str(i * 31 + j)) for j in range(sizes["w3_params"] - 2)]
        now = int(time.time() * 1000)
        metrics = [
            Metric(f"m{k}", ((i * 7919 + k * 104729 + s) % 1000) / 1000.0, now, s)
            for k in range(sizes["w3_metrics"])
            for s in range(sizes["w3_steps"])
        ]
        for start in range(0, len(metrics), 1000):
            client.log_batch(
                run_id, metrics=metrics[start : start + 1000], params=params if start == 0 else []
            )
        client.set_terminated(run_id)
        return run_id

    from concurrent.futures import ThreadPoolExecutor

    t0 = time.perf_counter()
    with ThreadPoolExecutor(sizes["w3_workers"]) as pool:
        run_ids = list(pool.map(make_run, range(sizes["w3_runs"])))
    setup_s = time.perf_counter() - t0
    state.data.update(w3_experiment=exp, w3_setup_s=setup_s, w3_runs=run_ids)
    return exp, setup_s


def _w3(client, mlflow, sizes, repeat, state) -> dict:
    """p50/p95 of (a) filtered on a param + sorted by a metric, top 100; (b) all runs listed."""
    exp, setup_s = _w3_setup(client, sizes, state)
    n, top = sizes["w3_runs"], sizes["w3_top"]
    out = {"a_p50": [], "a_p95": [], "b_p50": [], "b_p95": []}
    # one untimed query of each kind first, as on the Runstream side (a process's first call)
    client.search_runs(
        [exp], filter_string="params.optimizer = 'adam'", order_by=["metrics.m0 DESC"], max_results=top
    )
    client.search_runs([exp], max_results=max(n, 1))
    for _ in repetitions(repeat, sizes["rep_budget_s"]):
        a_times, b_times = [], []
        for _ in range(sizes["w3_queries"]):
            t0 = time.perf_counter()
            runs = client.search_runs(
                [exp],
                filter_string="params.optimizer = 'adam'",
                order_by=["metrics.m0 DESC"],
                max_results=top,
            )
            a_times.append(time.perf_counter() - t0)
            if len(runs) != min(top, (n + 3) // 4):
                raise RuntimeError(f"W3a returned {len(runs)} runs")
            t0 = time.perf_counter()
            runs = client.search_runs([exp], max_results=max(n, 1))
            b_times.append(time.perf_counter() - t0)
            if len(runs) != n:
                raise RuntimeError(f"W3b returned {len(runs)} runs, expected {n}")
        out["a_p50"].append(percentile(a_times, 50) * 1000)
        out["a_p95"].append(percentile(a_times, 95) * 1000)
        out["b_p50"].append(percentile(b_times, 50) * 1000)
        out["b_p95"].append(percentile(b_times, 95) * 1000)
    return {"parts": out, "detail": {"setup_s": setup_s, "runs": n}}


def _w4(client, mlflow, sizes, repeat, state) -> dict:
    """One metric's 100,000-step history fetched whole with get_metric_history."""
    steps = sizes["w2_steps"]
    if state.data.get("w2_steps") != steps or "w2_run" not in state.data:
        _w2(client, mlflow, sizes, 1, state)
    run_id = state.data["w2_run"]
    samples = []
    for _ in repetitions(repeat, sizes["rep_budget_s"]):
        times = []
        for _ in range(sizes["w4_fetches"]):
            t0 = time.perf_counter()
            history = client.get_metric_history(run_id, "m0")
            times.append(time.perf_counter() - t0)
            if len(history) != steps:
                raise RuntimeError(f"W4 fetched {len(history)} points, expected {steps}")
        samples.append(percentile(times, 50) * 1000)
    return {"samples": samples, "detail": {"steps": steps}}


def _w5(client, mlflow, sizes, repeat, state) -> dict:
    """One metric's history for 100 of the W3 runs: one get_metric_history call per run."""
    _w3_setup(client, sizes, state)
    run_ids = state.data["w3_runs"][: sizes["w5_runs"]]
    samples = []
    for _ in repetitions(repeat, sizes["rep_budget_s"]):
        t0 = time.perf_counter()
        total = 0
        for run_id in run_ids:
            total += len(client.get_metric_history(run_id, "m0"))
        samples.append((time.perf_counter() - t0) * 1000)
        if total != len(run_ids) * sizes["w3_steps"]:
            raise RuntimeError(f"W5 fetched {total} points")
    return {"samples": samples, "detail": {"runs": len(run_ids), "steps_per_run": sizes["w3_steps"]}}


def _sustained(client, mlflow, sizes, repeat, state) -> dict:
    """log_batch of 1,000 points from several threads (one run each) for a fixed time."""
    import threading

    from mlflow.entities import Metric

    exp = _experiment(client, "bench-sustained")
    duration = sizes["mlflow_sustained_s"]
    samples = []
    for _ in repetitions(repeat, sizes["rep_budget_s"]):
        run_ids = [client.create_run(exp).info.run_id for _ in range(sizes["sustained_runs"])]
        counts = [0] * len(run_ids)
        stop_at = time.perf_counter() + duration

        def produce(i: int, run_id: str, stop_at: float = stop_at, counts: list = counts) -> None:
            step = 0
            while time.perf_counter() < stop_at:
                now = int(time.time() * 1000)
                batch = [
                    Metric(f"m{k}", _value(step + s, k), now, step + s) for s in range(100) for k in range(10)
                ]
                client.log_batch(run_id, metrics=batch)
                step += 100
                counts[i] += len(batch)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=produce, args=(i, r)) for i, r in enumerate(run_ids)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for run_id in run_ids:
            _wait_latest(client, run_id, "m9", None)
        samples.append(sum(counts) / (time.perf_counter() - t0))
    return {"samples": samples, "detail": {"threads": sizes["sustained_runs"], "seconds": duration}}


def _latency(client, mlflow, sizes, repeat, state) -> dict:
    """log_metric of one point, then get_run until its latest value is visible."""
    exp = _experiment(client, "bench-latency")
    out = {"p50": [], "p99": []}
    for _ in repetitions(repeat, sizes["rep_budget_s"]):
        run_id = client.create_run(exp).info.run_id
        times = []
        for i in range(sizes["latency_probes"]):
            t0 = time.perf_counter()
            client.log_metric(run_id, "probe", float(i), step=i)
            while client.get_run(run_id).data.metrics.get("probe") != float(i):
                time.sleep(0.001)
            times.append((time.perf_counter() - t0) * 1000)
        out["p50"].append(percentile(times, 50))
        out["p99"].append(percentile(times, 99))
        client.set_terminated(run_id)
    return {"parts": out, "detail": {"probes": sizes["latency_probes"]}}


WORKLOADS = {
    "W1": _w1,
    "W2": _w2,
    "W3": _w3,
    "W4": _w4,
    "W5": _w5,
    "SUSTAINED": _sustained,
    "LATENCY": _latency,
    "MANY": many_writers,  # group M: bench/mlflow_many_writers.py
}


def worker_main(argv: list[str]) -> int:
    import traceback

    parser = argparse.ArgumentParser(prog="mlflow_side.py worker")
    parser.add_argument("workloads", help=f"comma list of {','.join(WORKLOADS)}")
    parser.add_argument("--uri", required=True)
    parser.add_argument("--sizes", required=True)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--state", required=True)
    args = parser.parse_args(argv)

    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(args.uri)
    client = MlflowClient(tracking_uri=args.uri)
    state = _State(Path(args.state))
    sizes = json.loads(args.sizes)
    for name in args.workloads.split(","):
        try:
            message = {"workload": name, "result": WORKLOADS[name](client, mlflow, sizes, args.repeat, state)}
        except Exception as exc:  # reported to the parent; the next workload still runs
            traceback.print_exc()
            message = {"workload": name, "error": f"{type(exc).__name__}: {exc}"}
        state.save()
        print(RESULT_PREFIX + json.dumps(message), flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        sys.exit(worker_main(sys.argv[2:]))
    print("usage: run through bench/run.py; `worker` is for MLflow's virtualenv", file=sys.stderr)
    sys.exit(2)
