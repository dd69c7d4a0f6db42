"""runstream.Api (the SDK read API) against the in-process QueryService on real chDB (the seeded
project of test_query_service.py)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

import runstream
from runstream.errors import ServerError, ServerUnavailableError
from tests.integration.test_query_service import (  # noqa: F401 - fixtures
    T0,
    query_server,
    seeded,
)


@pytest.fixture(scope="module")
def api(query_server):  # noqa: F811
    with runstream.Api(endpoint=query_server.endpoint) as api:
        yield api


def test_runs_dataframe_filtered_sorted(api):
    df = api.runs("vision", filter='params.lr > 0.004 and tags.dataset = "v2.1"', order_by="-metrics.val_f1")
    assert list(df.run_id) == ["r10", "r08", "r06", "r04"]
    assert {
        "run_id",
        "name",
        "state",
        "config.lr",
        "config.model.depth",
        "metrics.loss",
        "tags.dataset",
    } <= set(df.columns)
    row = df.iloc[0]
    assert row["config.lr"] == pytest.approx(0.011) and row["config.optimizer"] == "adam"
    assert row["config.layers"] == [1, 2, 3] and bool(row["config.use_amp"]) is False
    assert row["metrics.val_f1"] == pytest.approx(0.9) and row["state"] == "finished"
    assert row["start"] == pd.Timestamp(T0 + 10 * 60_000, unit="ms", tz="UTC")


def test_runs_paging_and_limit(api):
    assert len(api.runs("vision", per_page=5)) == 12
    assert list(api.runs("vision", order_by=["run_id"], per_page=2, limit=3).run_id) == ["r00", "r01", "r02"]
    assert api.runs("vision", filter='name = "nothing"').empty


def test_history_dataframe(api):
    df = api.history("r01", keys=["loss"])
    assert list(df.columns) == ["step", "key", "value", "rank", "time"]
    assert len(df) == 250 and set(df["rank"]) == {0, 1}
    first = df[(df["rank"] == 0) & (df.step == 0)].iloc[0]
    assert first.value == pytest.approx(3.0) and first.key == "loss"
    assert first.time == pd.Timestamp(T0 + 60_000, unit="ms", tz="UTC")
    nan = api.history("r01", keys=["grad_norm"], project="vision")
    assert math.isnan(nan.value.iloc[0]) and nan.value.iloc[1] == 1.5
    assert api.history("r01", keys=["nope"]).empty


def test_series_run_projects_keys(api):
    df = api.series("vision", ["r00", "r02"], ["long", "loss"], max_points=100)
    assert set(map(tuple, df[["run_id", "key"]].drop_duplicates().values.tolist())) == {
        ("r00", "long"),
        ("r00", "loss"),
        ("r02", "loss"),
    }
    long = df[df.key == "long"]
    assert len(long) <= 100 and long.y.max() == 50.0
    run = api.run("vision", "r00")
    assert run["context"]["git_branch"] == "main" and run["config"]["layers"] == [1, 2, 3]
    assert run["metrics"]["loss"]["count"] == 200 and run["artifacts"][0]["name"] == "model"
    projects = api.projects()
    assert set(projects.name) == {"vision", "nlp"}
    assert api.keys("vision")["system_metrics"] == ["cpu"]


def test_errors_are_typed(api, query_server):  # noqa: F811
    with pytest.raises(ServerError) as err:
        api.runs("vision", filter="params.lr >")
    assert err.value.code == "INVALID_ARGUMENT" and "at column 12" in str(err.value)
    with pytest.raises(ServerError) as err:
        api.run("vision", "missing")
    assert err.value.code == "NOT_FOUND"
    with runstream.Api(endpoint="127.0.0.1:1", timeout_s=2) as dead, pytest.raises(ServerUnavailableError):
        dead.projects()


def test_endpoint_and_api_key_defaults(monkeypatch, query_server):  # noqa: F811
    monkeypatch.setenv("RUNSTREAM_ENDPOINT", query_server.endpoint)
    monkeypatch.setenv("RUNSTREAM_API_KEY", "k-123")
    with runstream.Api() as api:
        assert api.endpoint == query_server.endpoint
        assert api._metadata == (("authorization", "Bearer k-123"),)
        assert len(api.projects()) == 2
    monkeypatch.delenv("RUNSTREAM_ENDPOINT")
    monkeypatch.delenv("RUNSTREAM_API_KEY")
    with runstream.Api() as api:
        assert api.endpoint == "127.0.0.1:7777" and api._metadata == ()
