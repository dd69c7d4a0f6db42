"""`runstream import mlflow` against real MLflow data and a real embedded Runstream server.

The data is written by MLflow 3 itself (tests/integration/mlflow_writer.py, run in MLflow's own
virtualenv, ~/.cache/runstream/mlflow-venv, made by bench/mlflow_side.ensure_venv like the bench
smoke test does when it is missing), into each kind of store the importer reads: a SQLite store,
an mlruns/ file store, and a real `mlflow server` process read over its REST API. Then the import
runs as a user runs it (the CLI, a child process), and the test reads back from the server:
names, states, times, params, tags, every metric point with its step and timestamp, artifacts with
their sha256, the registered model's versions and alias. A second import must add nothing; an
import SIGKILLed midway must resume and end with the same data.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import runstream
from tests import ROOT
from tests.integration.import_helpers import (
    artifact_files,
    history_points,
    kill_after_first_run,
    run_import,
)
from tests.integration.test_bench_smoke import _mlflow_unavailable
from tests.server_process import free_port

WRITER = ROOT / "tests" / "integration" / "mlflow_writer.py"
pytestmark = pytest.mark.timeout(1800)  # the first test may make MLflow's venv (minutes, once per machine)
PROJECTS = {"vision exp": "vision-exp", "nlp/base": "nlp-base"}
STATES = {"FINISHED": "finished", "FAILED": "failed"}


@pytest.fixture(scope="module")
def mlflow_side():
    sys.path.insert(0, str(ROOT / "bench"))
    import mlflow_side

    why = _mlflow_unavailable(mlflow_side)
    if why:
        pytest.skip(why)
    return mlflow_side


def write_mlflow(mlflow_side, uri: str, out, *args: str, env=None) -> dict:
    done = subprocess.run(
        [str(mlflow_side.VENV_PYTHON), str(WRITER), uri, str(out), *args],
        capture_output=True, text=True, timeout=600, cwd=out.parent, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def check_landed(api: runstream.Api, truth: dict) -> None:
    for rid, src in truth["runs"].items():
        project, run_id = PROJECTS[src["experiment"]], f"mlflow-{rid}"
        run = api.run(project, run_id)
        assert run["name"] == src["name"]
        assert run["state"] == STATES[src["status"]]
        assert (run["start_ms"], run["end_ms"]) == (src["start_ms"], src["end_ms"])
        assert run["config"] == src["params"]  # "0.01" -> 0.01, "3" -> 3, "adam" stays text
        assert run["tags"]["team"] == "cv" and run["tags"]["idx"] == src["tags"]["idx"]
        assert (
            run["tags"]["import.source_id"] == rid and run["tags"]["mlflow.experiment"] == src["experiment"]
        )
        got = history_points(api, project, run_id)
        for key in ("loss", "acc"):  # every point, with its step and its MLflow timestamp
            assert got[key] == [tuple(p) for p in src["history"][key]], key
        # logged without a step (MLflow stores step 0 for each): numbered in time order
        assert got["epoch_time"] == [(i, p[1], p[2]) for i, p in enumerate(src["history"]["epoch_time"])]
        assert artifact_files(run) == src["files"]
    model_run = f"mlflow-{truth['model_run']}"
    versions = sorted(api.model_versions("vision-exp", "clf"), key=lambda v: v["version"])
    assert [
        (v["tags"]["mlflow.version"], v["run_id"], v["artifact_name"], v["description"]) for v in versions
    ] == [
        ("1", model_run, "model", "first"),
        ("2", model_run, "model", "second"),
        (
            "3",
            model_run,
            "net",
            "from a logged model",
        ),  # models:/m-...: the logged model, an artifact of its run
    ]
    model_files = {f["path"]: f["sha256"] for f in versions[0]["files"]}
    src_files = truth["runs"][truth["model_run"]]["files"]
    assert model_files == {p.split("/", 1)[1]: sha for p, sha in src_files.items() if p.startswith("model/")}
    (model,) = api.models("vision-exp")
    assert model["aliases"] == {"champion": versions[0]["version"], "candidate": versions[2]["version"]}
    net_files = {f["path"]: f["sha256"] for f in versions[2]["files"]}
    assert net_files == {p.split("/", 1)[1]: sha for p, sha in src_files.items() if p.startswith("net/")}


@pytest.mark.parametrize("store", ["sqlite", "file", "server"])
def test_mlflow_store_imports_everything_once(store, mlflow_side, embedded_server, tmp_path):
    data = tmp_path / "mlflow"
    data.mkdir()
    server = None
    if store == "sqlite":
        uri = source = f"sqlite:///{data / 'mlflow.db'}"
        env = None
    elif store == "file":
        uri, source = (data / "mlruns").as_uri(), str(data / "mlruns")
        env = {**__import__("os").environ, "MLFLOW_ALLOW_FILE_STORE": "true"}  # MLflow 3 refuses it otherwise
    else:
        server = mlflow_side.MLflowServer(free_port(), workdir=data / "server").start()
        uri = source = server.uri
        env = None
    try:
        truth = write_mlflow(mlflow_side, uri, data / "truth.json", env=env)
        first = run_import(embedded_server.endpoint, tmp_path, "mlflow", source)
        assert (first["imported"], first["skipped"], first["failed"]) == (3, 0, 0), first["out"]
        assert "model vision-exp/clf: 3 versions created, 0 already there, 2 aliases set" in first["out"]
        with runstream.Api(embedded_server.endpoint) as api:
            check_landed(api, truth)
            again = run_import(embedded_server.endpoint, tmp_path, "mlflow", source)
            assert (again["imported"], again["resumed"], again["skipped"], again["points"]) == (0, 0, 3, 0)
            assert "model vision-exp/clf: 0 versions created, 3 already there, 0 aliases set" in again["out"]
            check_landed(api, truth)  # nothing doubled: one version per artifact, three model versions
            if store == "sqlite":  # --project: every experiment into one project, the experiment as group
                one = run_import(
                    embedded_server.endpoint, tmp_path, "mlflow", source, "--project", "all-in-one"
                )
                assert (one["imported"], one["failed"]) == (3, 0), one["out"]
                runs = api.runs("all-in-one")
                groups = {f"mlflow-{rid}": src["experiment"] for rid, src in truth["runs"].items()}
                assert dict(zip(runs["run_id"], runs["group"], strict=True)) == groups
                assert [v["tags"]["mlflow.version"] for v in api.model_versions("all-in-one", "clf")] == [
                    "3",
                    "2",
                    "1",
                ]
    finally:
        if server is not None:
            server.stop()


def test_an_import_killed_midway_resumes_where_it_stopped(mlflow_side, embedded_server, tmp_path):
    data = tmp_path / "mlflow"
    data.mkdir()
    source = f"sqlite:///{data / 'mlflow.db'}"
    truth = write_mlflow(mlflow_side, source, data / "truth.json", "--runs", "6", "--steps", "2000")
    out = kill_after_first_run(embedded_server.endpoint, tmp_path, "mlflow", source)
    with runstream.Api(embedded_server.endpoint) as api:
        complete = 0
        for rid, src in truth["runs"].items():
            try:
                run = api.run(PROJECTS[src["experiment"]], f"mlflow-{rid}")
            except runstream.ServerError:
                continue
            complete += "import.fingerprint" in run["tags"] and run["state"] in ("finished", "failed")
        assert 1 <= complete < 6, out
        resumed = run_import(embedded_server.endpoint, tmp_path, "mlflow", source)
        assert resumed["skipped"] == complete, resumed["out"]
        assert resumed["imported"] + resumed["resumed"] == 6 - complete, resumed["out"]
        assert resumed["failed"] == 0, resumed["out"]
        check_landed(api, truth)
        final = run_import(embedded_server.endpoint, tmp_path, "mlflow", source)
        assert (final["skipped"], final["points"]) == (6, 0), final["out"]
