"""Runs as an MLflow user reads them, through the SDK and a real embedded server (issue 15 item 3,
issue 12 item 4): runs logged with runstream.init / use_dataset, then read back with
runstream.Api.runs (MLflow's column names, "field DESC" sort keys, MLflow's filter spellings,
datasets.<name> filters and columns), exported with Api.export_runs and `runstream runs
export|ls` to Parquet and CSV, and the files read back and compared with the frame."""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys

import pandas as pd
import pytest

import runstream
from tests import deployments
from tests.sdk_options import quick_sdk_options

PROJECT = "conventions"
# name -> (config, val_acc, f1, dataset version or None, state)
RUNS = {
    "a": ({"lr": 0.01, "opt": "adam", "x": 1.5, "layers": [1, 2]}, 0.70, 0.90, "v2.1", "finished"),
    "b": ({"lr": 0.02, "opt": "sgd", "x": "text"}, 0.95, 0.80, "v2.1", "finished"),
    "c": ({"lr": 0.03, "opt": "adam"}, 0.85, 0.88, "v1.0", "failed"),
    "d": ({"lr": 0.04, "opt": "adam"}, 0.60, 0.95, None, "finished"),
}


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One embedded `runstream server` for the module (the tests only read), with the RUNS logged
    through the SDK; run "d" uses a dataset file (hashed), "a" also a second version of imagenet
    after the first. Returns (endpoint, {name: run id}, the file's sha256)."""
    tmp_path = tmp_path_factory.mktemp("conventions")
    deployment = deployments.embedded(tmp_path)
    embedded_server = deployment.ingest
    data = tmp_path / "coco.bin"
    data.write_bytes(b"coco images" * 1000)
    sha = hashlib.sha256(data.read_bytes()).hexdigest()
    ids = {}
    for name, (config, val_acc, f1, version, state) in RUNS.items():
        run = runstream.init(PROJECT, name=name, config=config, tags={"team": "vision"},
                             **quick_sdk_options(embedded_server.endpoint, tmp_path / name))  # fmt: skip
        if version:
            run.use_dataset("imagenet", version)
        if name == "a":
            run.use_dataset("imagenet", "v3-preview")
        if name == "d":
            assert run.use_dataset("coco", data) == sha
        for step in range(3):
            run.log({"val_acc": val_acc * (step + 1) / 3, "f1": f1 * (step + 1) / 3}, step=step)
        assert run.finish(state=state, timeout_s=30)
        ids[name] = run.id
    yield embedded_server.endpoint, ids, sha
    deployment.close()


def test_runs_frame_has_mlflow_columns_and_datasets(logged):
    endpoint, ids, sha = logged
    with runstream.Api(endpoint=endpoint) as api:
        df = api.runs(PROJECT, order_by="metrics.val_acc desc")  # the call issue 15 quotes
    assert list(df.name) == ["b", "c", "a", "d"]
    assert list(df.columns[:14]) == ["run_id", "name", "state", "group", "job_type", "user", "host", "start", "end",
                                     "git_commit", "notes", "status", "start_time", "end_time"]  # fmt: skip
    by = df.set_index("name")
    assert by.loc["c", "status"] == "FAILED" and by.loc["b", "status"] == "FINISHED"
    assert (df.start_time == df.start).all() and (df.end_time == df.end).all()
    assert by.loc["a", "params.lr"] == by.loc["a", "config.lr"] == 0.01
    assert by.loc["b", "params.x"] == "text" and by.loc["a", "params.layers"] == [1, 2]
    assert by.loc["a", "datasets.imagenet"] == "v2.1"  # the first version the run used
    assert by.loc["d", "datasets.coco"] == sha and pd.isna(by.loc["d", "datasets.imagenet"])
    assert by.loc["b", "metrics.val_acc"] == pytest.approx(0.95) and by.loc["a", "tags.team"] == "vision"
    assert set(by.loc["a", ["run_id"]]) == {ids["a"]}


@pytest.mark.parametrize(
    ("flt", "order", "names"),
    [
        ('datasets.imagenet = "v2.1" and metrics.f1 > 0.85', ["run_id"], ["a"]),
        ('datasets.imagenet = "v2.1"', "metrics.val_acc DESC", ["b", "a"]),
        ('datasets.imagenet = "v3-preview"', None, ["a"]),  # a later reference counts too
        ("datasets.name = 'coco'", None, ["d"]),
        ("attributes.status = 'FINISHED' and params.opt = 'adam'", "-metrics.f1", ["d", "a"]),
        (
            "attributes.run_name LIKE 'a%' or tags.mlflow.runName = 'c'",
            "attributes.start_time ASC",
            ["a", "c"],
        ),
        ("params.opt ILIKE 'ADAM'", ["metrics.f1 asc, name"], ["c", "a", "d"]),
        ("", "datasets.imagenet desc, name", ["a", "b", "c", "d"]),
    ],
)
def test_filters_and_orders_users_type(logged, flt, order, names):
    endpoint, _, _ = logged
    with runstream.Api(endpoint=endpoint) as api:
        assert list(api.runs(PROJECT, filter=flt, order_by=order).name) == names


def test_dataset_hash_filter_finds_the_run_that_used_the_file(logged):
    endpoint, ids, sha = logged
    with runstream.Api(endpoint=endpoint) as api:
        df = api.runs(PROJECT, filter=f'datasets.coco.hash = "{sha}" and metrics.f1 > 0.85')
        assert list(df.run_id) == [ids["d"]]
        assert api.runs(PROJECT, filter=f'datasets.coco.hash = "{sha[:-1]}0"').empty
        assert api.run(PROJECT, ids["d"])["datasets"][0]["version"] == sha


def test_refused_spellings_say_what_to_write(logged):
    endpoint, _, _ = logged
    with runstream.Api(endpoint=endpoint) as api, pytest.raises(runstream.ServerError) as err:
        api.runs(PROJECT, filter="attributes.artifact_uri = 'x'")
    assert (
        err.value.code == "INVALID_ARGUMENT" and "Api.run(project, run_id)['artifacts']" in err.value.details
    )
    assert "^" in err.value.details


def _same_frames(written: pd.DataFrame, frame: pd.DataFrame) -> None:
    """The file holds the frame: same columns in order, same runs, equal cells (NaN = NaN; a
    mixed column as its text)."""
    assert list(written.columns) == list(frame.columns)
    assert len(written) == len(frame)
    for name in frame.columns:
        for got, want in zip(written[name].tolist(), frame[name].tolist(), strict=True):
            if isinstance(want, float) and math.isnan(want):
                assert got is None or (isinstance(got, float) and math.isnan(got)) or got is pd.NaT, name
            elif isinstance(want, pd.Timestamp):
                assert pd.Timestamp(got) == want, name
            elif isinstance(want, list):
                assert list(got) == want, name
            else:
                assert got == want or str(got) == str(want), (name, got, want)


def test_export_parquet_and_csv_read_back_equal(logged, tmp_path):
    endpoint, _, _ = logged
    flt, order = "metrics.val_acc > 0.5", "metrics.val_acc DESC"
    with runstream.Api(endpoint=endpoint) as api:
        frame = api.runs(PROJECT, filter=flt, order_by=order)
        assert api.export_runs(PROJECT, tmp_path / "runs.parquet", filter=flt, order_by=order) == 4
        assert api.export_runs(PROJECT, tmp_path / "runs.txt", format="csv", filter=flt, order_by=order) == 4
        with pytest.raises(ValueError, match="name it .parquet or .csv"):
            api.export_runs(PROJECT, tmp_path / "runs.xlsx")
    parquet = pd.read_parquet(tmp_path / "runs.parquet")
    # params.x holds a number and a text: written as text; params.layers a list and gaps
    assert parquet.set_index("name").loc["a", "params.x"] == "1.5"
    _same_frames(parquet.drop(columns=["params.x", "config.x"]), frame.drop(columns=["params.x", "config.x"]))
    csv = pd.read_csv(tmp_path / "runs.txt")
    assert list(csv.columns) == list(frame.columns)
    assert list(csv.run_id) == list(frame.run_id) and list(csv.status) == list(frame.status)
    assert csv["metrics.val_acc"].tolist() == pytest.approx(frame["metrics.val_acc"].tolist())
    assert pd.to_datetime(csv.start_time).tolist() == frame.start_time.tolist()
    assert csv["datasets.imagenet"].fillna("").tolist() == frame["datasets.imagenet"].fillna("").tolist()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runstream_services.cli", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "RUNSTREAM_API_KEY": ""})  # fmt: skip


def test_cli_runs_export_and_ls(logged, tmp_path):
    endpoint, ids, _ = logged
    out = tmp_path / "adam.csv"
    done = _cli("runs", "export", PROJECT, "--endpoint", endpoint, "--filter", "params.opt = 'adam'",
                "--order-by", "metrics.f1 DESC", "--order-by", "name", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote 3 runs to {out}"
    assert list(pd.read_csv(out).name) == ["d", "a", "c"]

    parquet = tmp_path / "all.data"
    done = _cli(
        "runs", "export", PROJECT, "--endpoint", endpoint, "--format", "parquet", "--out", str(parquet)
    )
    assert done.returncode == 0, done.stderr
    assert sorted(pd.read_parquet(parquet).run_id) == sorted(ids.values())

    done = _cli("runs", "ls", PROJECT, "--endpoint", endpoint, "--order-by", "metrics.val_acc desc",
                "--columns", "metrics.val_acc,datasets.*")  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["run_id", "name", "status", "start_time", "end_time", "metrics.val_acc",
                                "datasets.coco", "datasets.imagenet"]  # fmt: skip
    assert [line.split()[1] for line in lines[1:]] == ["b", "c", "a", "d"]
    assert ids["b"] in lines[1] and "FINISHED" in lines[1] and "v2.1" in lines[1]

    done = _cli("runs", "ls", PROJECT, "--endpoint", endpoint, "--filter", "metrics.f1 like '0.%'")
    assert done.returncode == 2 and "'like' matches text" in done.stderr and "^" in done.stderr
    done = _cli("runs", "ls", PROJECT, "--endpoint", endpoint, "--columns", "metrics.nope")
    assert done.returncode == 2 and "no column 'metrics.nope'" in done.stderr
