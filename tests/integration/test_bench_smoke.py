"""The benchmark suite in smoke mode (tiny sizes, one repetition), so bench/ cannot rot.

Nothing here is timed: the assertions are that every workload ran against the real servers, that
each measured value is a positive number, and that the report renders. Both sides run: the
Runstream side (embedded and Kafka bus), and the MLflow side in its own virtualenv
(~/.cache/runstream/mlflow-venv), which this test creates when it is missing
(`mlflow_side.ensure_venv`, once per machine: 2-4.5 minutes from the index on 2 cores). When it cannot be
created because the package index does not answer, the Runstream side is still checked and the
test then reports a skip naming the reason; any other failure to create it fails the test.
"""

from __future__ import annotations

import importlib.util
import re
import sys

import pytest

from tests import ROOT
from tests.integration.test_bare_install import index_unreachable


def _load_run_module():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mlflow_unavailable(mlflow_side) -> str | None:
    """Makes MLflow's virtualenv when missing; None when it is ready, else why it cannot be made
    (only an unreachable package index is an accepted reason: anything else fails the test)."""
    if mlflow_side.venv_ready():
        return None
    try:
        mlflow_side.ensure_venv(log=lambda line: print(line, file=sys.stderr))
        return None
    except mlflow_side.MLflowUnavailable as exc:
        why = index_unreachable()
        if why is None:
            pytest.fail(f"the package index answers, yet MLflow's virtualenv could not be made: {exc}")
        return (
            f"MLflow's virtualenv {mlflow_side.VENV} cannot be made: the package index is unreachable ({why})"
        )


@pytest.mark.timeout(1800)  # 600 s for the smoke itself, plus creating MLflow's venv when missing
def test_bench_smoke_runs_every_workload(services, tmp_path):
    bench_run = _load_run_module()
    import mlflow_side

    benchmarks_md = ROOT / "BENCHMARKS.md"
    before = benchmarks_md.read_text() if benchmarks_md.exists() else None
    mlflow_unavailable = _mlflow_unavailable(mlflow_side)
    with_mlflow = mlflow_unavailable is None

    report = bench_run.run_benchmark(
        [
            "--smoke",
            "--no-write",
            "--mlflow",
            "on" if with_mlflow else "off",
            "--json",
            str(tmp_path / "smoke.json"),
        ]
    )

    rows = {r["id"]: r for r in report["rows"]}
    assert set(rows) >= {"W1", "W2", "W3a-p95", "W3b-p95", "W4", "W5", "E-ingest", "E-lat-p99", "K-ingest"}
    errors = {rid: r["error"] for rid, r in rows.items() if r["error"]}
    assert not errors, errors
    for rid, r in rows.items():
        assert r["runstream"] is not None, rid
        assert all(v > 0 for v in r["runstream"]["samples"]), (rid, r["runstream"])
        if with_mlflow and not r["mlflow_na"]:
            assert r["mlflow"] is not None and r["mlflow"]["median"] > 0, rid
            assert all(v > 0 for v in r["mlflow"]["samples"]), (rid, r["mlflow"])
            assert r["speedup"] is not None and r["speedup"] > 0, rid
    assert rows["K-ingest"]["mlflow"] is None and rows["K-ingest"]["mlflow_na"].startswith("n/a")
    assert "| Workload | Unit | Runstream | MLflow |" in report["markdown"]
    for rid in ("M-ranks", "M-floor", "M-packed"):  # where each ranks ladder's CPU went, both sides
        line = rf"^- {rid}: at [\d,]+ requests/s \((?:not )?held.* the server used [\d.]+ ms and the load generator [\d.]+ ms"
        assert re.search(line, report["markdown"], re.M), (
            rid,
            report["markdown"].split("## Where the time went")[-1],
        )
    assert (tmp_path / "smoke.json").exists()
    after = benchmarks_md.read_text() if benchmarks_md.exists() else None
    assert after == before, "--no-write must leave BENCHMARKS.md alone"
    if with_mlflow:
        assert any(r["mlflow"] is not None for r in rows.values()), "the MLflow side ran no workload"
    else:
        pytest.skip(f"the Runstream side passed; the MLflow side did not run: {mlflow_unavailable}")


@pytest.mark.timeout(300)
def test_ingest_own_cost_acks_every_request_through_the_real_path(tmp_path):
    """bench/ingest_own_cost.py drives a real embedded server's ingest streams in process (no
    gRPC); it fails when a request is refused or left unacked, so a run that returns measured
    the whole path for every request."""
    import json
    import subprocess

    out = tmp_path / "own.json"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ingest_own_cost.py"), "--requests", "3000", "--ranks", "100"]
        + ["--runs", "1", "--json", str(out)],
        check=True,
        timeout=240,
    )
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    assert run["requests"] == 3000
    assert run["cpu_us_per_request"] > 0 and run["requests_per_s"] > 0
    assert result["cpu_us_per_request_median"] == run["cpu_us_per_request"]
