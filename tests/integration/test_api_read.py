"""runstream.Api (the SDK read API) against the in-process QueryService on real chDB (the seeded
project of test_query_service.py): the DataFrame methods, the one-RPC calls beneath them, and the
dashboard's loaders (runstream_dashboard.queries), which read through those calls."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import runstream
from runstream.api import SeriesArrays
from runstream.errors import ServerError, ServerUnavailableError
from runstream.states import state_name
from tests.integration.test_query_service import (  # noqa: F401 - fixtures
    ARTIFACT_BYTES,
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


# ---------------------------------------------------------------- the calls: one RPC each


def test_list_projects_and_search_runs_pages_with_total_and_token(api):
    projects = {p.name: p for p in api.list_projects()}
    assert projects["vision"].run_count == 12 and projects["vision"].last_activity_ms == T0 + 11 * 60_000
    seen, token = [], ""
    while True:
        page = api.search_runs("vision", order_by=("run_id",), page_size=5, page_token=token)
        assert page.total == 12 and len(page.runs) <= 5
        seen += [r.run_id for r in page.runs]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"r{i:02d}" for i in range(12)]
    picked = api.search_runs(
        "vision",
        filter='tags.dataset = "v2.1"',
        order_by="-metrics.val_f1",
        param_keys=["lr"],
        metric_keys=["val_f1"],
    )
    assert picked.total == 6 and [r.run_id for r in picked.runs][:2] == ["r10", "r08"]
    assert all(set(r.config) == {"lr"} and [m.key for m in r.metrics] == ["val_f1"] for r in picked.runs)
    assert not api.search_runs("vision", page_size=1).runs[0].config  # config only when asked for


def test_get_run_is_the_wire_message_with_context_and_artifacts(api, seeded):  # noqa: F811
    run = api.get_run("vision", "r00")
    assert state_name(run.state) == "failed" and run.context.git_branch == "main"
    assert [a.sha256 for a in run.artifacts] == [seeded.artifact_sha]
    assert [(d.name, d.version) for d in run.datasets] == [("imagenet", "sha:1")]


def test_series_arrays_carry_raw_float64_arrays_and_total_points(api):
    (long,) = api.series_arrays("vision", ["r00"], ["long"], max_points=200)
    assert isinstance(long, SeriesArrays) and (long.run_id, long.key, long.rank) == ("r00", "long", 0)
    assert long.x.dtype == np.float64 and len(long.x) == len(long.y) <= 200
    assert long.total_points == 100_000 and long.y.max() == 50.0
    ranks = api.series_arrays("vision", ["r01"], ["loss"], all_ranks=True)
    assert sorted((s.rank, len(s.x)) for s in ranks) == [(0, 200), (1, 50)]
    (rel,) = api.series_arrays("vision", ["r03"], ["loss"], x_axis="relative_time")
    assert rel.x[:2].tolist() == [0.0, 10.0]
    (cpu,) = api.series_arrays("vision", ["r04"], ["cpu"], kind="system")
    assert cpu.y.tolist() == [54.0]
    frame = api.series("vision", ["r00"], ["long"], max_points=200)
    assert frame.y.tolist() == long.y.tolist()  # the DataFrame is the same call, reshaped


def test_history_pages_and_download_artifact(api, seeded):  # noqa: F811
    pages = list(api.history_pages("r02", keys=["loss"], project="vision"))
    assert sum(len(p.steps) // 8 for p in pages) == 200 and list(pages[0].keys) == ["loss"]
    assert api.download_artifact("vision", "r00", seeded.artifact_sha) == ARTIFACT_BYTES
    with pytest.raises(ServerError) as err:
        api.download_artifact("vision", "r00", seeded.artifact_sha, max_bytes=1000)
    assert err.value.code == "RESOURCE_EXHAUSTED"
    with pytest.raises(ServerError) as err:
        api.download_artifact("vision", "r01", seeded.artifact_sha)  # not an artifact of r01
    assert err.value.code == "NOT_FOUND" and not err.value.unreachable


def test_refusals_carry_the_servers_words_and_unreachable_says_where(api):
    with pytest.raises(ServerError) as err:
        api.search_runs("vision", filter="params.lr >")
    assert err.value.code == "INVALID_ARGUMENT" and not err.value.unreachable
    assert "at column 12" in err.value.details and "SearchRuns" not in err.value.details
    assert str(err.value).startswith("SearchRuns failed (INVALID_ARGUMENT)")
    with (
        runstream.Api(endpoint="127.0.0.1:1", timeout_s=2) as dead,
        pytest.raises(ServerUnavailableError) as err,
    ):
        dead.list_projects()
    assert err.value.unreachable and err.value.code == "UNAVAILABLE"
    assert err.value.details.startswith("cannot reach the Runstream server at 127.0.0.1:1 (")


def test_per_call_timeout_and_message_size_limit(api, query_server):  # noqa: F811
    with pytest.raises(ServerUnavailableError) as err:
        api.series_arrays(
            "vision", ["r00"], ["long"], max_points=100_000, downsampling="none", timeout_s=1e-6
        )
    assert err.value.code == "DEADLINE_EXCEEDED" and err.value.unreachable
    assert len(api.list_projects(timeout_s=5)) == 2  # the Api's own timeout is untouched
    with runstream.Api(endpoint=query_server.endpoint, max_receive_bytes=1024) as small:
        with pytest.raises(ServerError) as err:
            small.search_runs("vision", include_config=True)
        assert err.value.code == "RESOURCE_EXHAUSTED"
        assert len(small.list_projects()) == 2


# ---------------------------------------------------------------- the dashboard's loaders


@pytest.fixture
def dashboard_queries(monkeypatch, query_server):  # noqa: F811
    """runstream_dashboard.queries pointed at the seeded server, outside a Streamlit app (its
    caches fall back to memory): the loaders the pages call, on the real read path."""
    from runstream_dashboard import queries

    monkeypatch.setenv("RUNSTREAM_ENDPOINT", query_server.endpoint)
    queries.api.clear()
    queries.clear_caches()
    yield queries
    queries.clear_caches()
    queries.api.clear()


def test_dashboard_loaders_read_through_one_api(dashboard_queries):
    q = dashboard_queries
    assert q.endpoint() == q.api().endpoint and q.api() is q.api()
    projects = q.list_projects()
    assert projects["project"].tolist() == ["nlp", "vision"]  # newest activity first
    page = q.search_runs("vision", "", ("run_id",), 5, "", ("batch_size", "layers", "lr"), ("val_f1",))
    assert page.total == 12 and page.next_page_token and len(page.runs) == 5
    first = page.runs.iloc[0]
    assert first["state"] == "failed" and first["name"] == "run-00" and first["duration_s"] == 30.0
    assert first["params.batch_size"] == 32 and page.runs["params.batch_size"].dtype.kind == "i"  # not 32.0
    assert first["params.layers"] == "[1, 2, 3]"  # JSON cells show the text as logged
    assert first["metrics.val_f1"] == pytest.approx(0.5)
    keys = q.list_keys("vision")
    assert keys.system_metric_keys == ("cpu",) and "lr" in keys.param_keys
    detail = q.get_run("vision", "r00")
    assert detail.context["git_branch"] == "main" and detail.config["layers"] == "[1, 2, 3]"
    assert detail.artifacts["name"].tolist() == ["model"]
    sha = detail.artifacts["sha256"][0]
    assert q.download_artifact("vision", "r00", sha) == ARTIFACT_BYTES
    series = q.metric_series("vision", ("r00", "r03"), ("loss",), "relative", 1000)
    assert list(series.columns) == q.SERIES_COLUMNS
    assert set(series["total_points"]) == {200} and series[series.run_id == "r03"]["x"][:2].tolist() == [
        0,
        10,
    ]
    system = q.metric_series("vision", ("r04",), ("cpu",), system=True)
    assert system["y"].tolist() == [54.0]


def test_dashboard_loaders_raise_the_sdks_error(dashboard_queries):
    with pytest.raises(ServerError) as err:
        dashboard_queries.search_runs("vision", "params.lr >")
    assert err.value.code == "INVALID_ARGUMENT" and "at column 12" in err.value.details
    with pytest.raises(ServerError) as err:
        dashboard_queries.get_run("vision", "missing")
    assert err.value.code == "NOT_FOUND" and not err.value.unreachable
