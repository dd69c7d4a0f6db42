"""The framework examples in client/examples/ run as a user runs them (a child process, the server
named by RUNSTREAM_ENDPOINT) against a real embedded server, on small settings, and leave the runs
they promise: so the examples cannot rot."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import runstream

EXAMPLES = Path(__file__).resolve().parents[2] / "client" / "examples"
CASES = {  # example -> (extra modules it needs, arguments, runs it leaves, a metric every run has)
    "sklearn_search.py": (["sklearn"], ["--folds", "2"], 9, None),  # 8 candidates + the refit
    "xgboost_train.py": (["xgboost"], ["--rounds", "15"], 1, "valid/rmse"),
    "lightgbm_train.py": (["lightgbm"], ["--rounds", "15"], 1, "valid/auc"),
    "optuna_study.py": (["optuna", "sklearn"], ["--trials", "4", "--epochs", "3"], 4, "val_accuracy"),
    "keras_train.py": (["jax", "keras", "sklearn"], ["--epochs", "1"], 1, "val_loss"),
    "media_example.py": (["numpy", "pandas", "pyarrow"], ["--steps", "3"], 1, "loss"),
}


@pytest.mark.parametrize("example", sorted(CASES))
def test_example_runs_and_its_runs_arrive(example, module_embedded_server, tmp_path):
    modules, args, runs, metric = CASES[example]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]  # found, not imported (keras
    if missing:  # would pick its backend in this process)
        pytest.skip(f"{example} needs {', '.join(missing)} (pip install -e '.[dev]')")
    project = example.removesuffix(".py").replace("_", "-")
    env = {
        **os.environ,
        "RUNSTREAM_ENDPOINT": module_embedded_server.endpoint,
        "RUNSTREAM_SPOOL_DIR": str(tmp_path / "spool"),
        "RUNSTREAM_SYSTEM_METRICS_INTERVAL_S": "0",
        "RUNSTREAM_CAPTURE_PACKAGES": "false",
    }
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / example), "--project", project, *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with runstream.Api(endpoint=module_embedded_server.endpoint) as api:
        table = api.runs(project)
    assert len(table) == runs and set(table.state) == {"finished"}, table[["name", "state"]]
    metric_columns = [c for c in table.columns if c.startswith("metrics.")]
    assert metric_columns and table[metric_columns].notna().any(axis=1).all()  # every run has metrics
    if metric is not None:
        assert table[f"metrics.{metric}"].notna().all()
