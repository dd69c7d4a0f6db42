"""The benchmark suite in smoke mode (tiny sizes, one repetition), so bench/ cannot rot.

Nothing here is timed: the assertions are that every workload ran against the real servers, that
each measured value is a positive number, and that the report renders. The Runstream side
(embedded and Kafka bus) always runs. The MLflow side runs only when its virtualenv
(bench/.mlflow-venv) already exists: installing MLflow from PyPI takes minutes, so a fresh machine
tests the Runstream side alone (`bench/run.py` itself makes the venv when run by hand)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests import ROOT


def _load_run_module():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(600)
def test_bench_smoke_runs_every_workload(services, tmp_path):
    bench_run = _load_run_module()
    import mlflow_side

    benchmarks_md = ROOT / "BENCHMARKS.md"
    before = benchmarks_md.read_text() if benchmarks_md.exists() else None
    with_mlflow = mlflow_side.venv_ready()

    report = bench_run.run_benchmark(
        ["--smoke", "--no-write", "--mlflow", "if-installed", "--json", str(tmp_path / "smoke.json")]
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
            assert r["speedup"] is not None and r["speedup"] > 0, rid
    assert rows["K-ingest"]["mlflow"] is None and rows["K-ingest"]["mlflow_na"].startswith("n/a")
    assert "| Workload | Unit | Runstream | MLflow |" in report["markdown"]
    assert (tmp_path / "smoke.json").exists()
    after = benchmarks_md.read_text() if benchmarks_md.exists() else None
    assert after == before, "--no-write must leave BENCHMARKS.md alone"
