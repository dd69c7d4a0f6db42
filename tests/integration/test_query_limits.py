"""The query service's budgets and its answers to keys of other projects, in-process on real chDB
(issue 10, items 9 and 14): order_by is bounded, GetMetricSeries refuses answers over the points
budget or the server's message limit in every downsampling mode (never a message-too-large error),
and GetHistory without a project answers a key that may not read the run's project exactly as for
a run that does not exist."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from runstream.v1 import query_pb2, query_pb2_grpc
from runstream_services.auth.keys import ApiKeys
from runstream_services.query import series
from runstream_services.query.filter import MAX_SORT_KEYS
from runstream_services.query.service import QueryServicer
from runstream_services.storage.clickhouse import connect
from runstream_services.storage.migrations import migrate
from tests.integration.test_query_service import T0, InProcessServer, _run_row

MESSAGE_LIMIT = 4 * 1024 * 1024  # the server's max_message_bytes here: 3 x 100,000 points are over it
WIDE_POINTS = 100_000
KEYS = {"vision-reader": ("vision", "read"), "nlp-reader": ("nlp", "read"), "admin": ("*", "read")}
METRIC_COLUMNS = ["project", "run_id", "kind", "key", "rank", "step", "time_ms", "value"]


def _points(project: str, run_id: str, key: str, steps: np.ndarray, times: np.ndarray) -> list[list]:
    """Column-oriented metric rows of one series."""
    n = len(steps)
    return [
        [project] * n,
        [run_id] * n,
        ["user"] * n,
        [key] * n,
        [0] * n,
        steps.tolist(),
        times.tolist(),
        np.sin(steps / 1000.0).tolist(),
    ]


def _seed(client, db: str) -> None:
    """vision: w0..w2 with 100,000 points of "wide" each; "uneven" whose 100,000 "lumpy" points lie
    in its first 100 s but one a year later; "shared" (also a run of nlp), 10 points of "loss".
    nlp: "shared" with 5 points of "loss"."""
    runs = [_run_row("vision", f"w{i}", i) for i in range(3)]
    runs += [_run_row("vision", "uneven", 3), _run_row("vision", "shared", 4), _run_row("nlp", "shared", 5)]
    cols = list(runs[0])
    client.insert(f"{db}.runs", [[r[c] for c in cols] for r in runs], column_names=cols)
    steps = np.arange(WIDE_POINTS, dtype=np.int64)
    blocks = [_points("vision", f"w{i}", "wide", steps, T0 + steps) for i in range(3)]
    lumpy_times = T0 + steps
    lumpy_times[-1] = T0 + 365 * 86_400_000
    blocks.append(_points("vision", "uneven", "lumpy", steps, lumpy_times))
    blocks.append(_points("vision", "shared", "loss", steps[:10], T0 + steps[:10]))
    blocks.append(_points("nlp", "shared", "loss", steps[:5], T0 + steps[:5]))
    for block in blocks:
        client.insert(f"{db}.metrics", block, column_names=METRIC_COLUMNS, column_oriented=True)


@pytest.fixture(scope="module")
def server(chdb_dsn):
    database = f"t_limits_{uuid.uuid4().hex[:8]}"
    client = connect(chdb_dsn)
    migrate(client, database)
    _seed(client, database)
    auth = ApiKeys(KEYS, required=True)
    settings = SimpleNamespace(max_message_bytes=MESSAGE_LIMIT)
    servicer = QueryServicer(client, database, None, settings, auth)
    options = [
        ("grpc.max_send_message_length", MESSAGE_LIMIT),
        ("grpc.max_receive_message_length", MESSAGE_LIMIT),
    ]
    running = InProcessServer(servicer, options).start()
    yield running
    running.stop()
    client.command(f"DROP DATABASE IF EXISTS {database}")


@pytest.fixture(scope="module")
def stub(server):
    options = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
    with grpc.insecure_channel(server.endpoint, options=options) as channel:
        yield query_pb2_grpc.QueryServiceStub(channel)


def _as(key: str) -> tuple:
    return (("authorization", f"Bearer {key}"),)


def _refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


# ---------------------------------------------------------------- item 9: order_by


def test_order_by_with_too_many_keys_is_refused_naming_the_limit(stub):
    request = query_pb2.SearchRunsRequest(
        project="vision", order_by=[f"params.p{i}" for i in range(MAX_SORT_KEYS + 1)]
    )
    err = _refusal(lambda: stub.SearchRuns(request, metadata=_as("vision-reader"), timeout=30))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"over the limit of {MAX_SORT_KEYS}" in err.details()
    request = query_pb2.SearchRunsRequest(project="vision", order_by=["params." + "k" * 5_000])
    err = _refusal(lambda: stub.SearchRuns(request, metadata=_as("vision-reader"), timeout=30))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "characters" in err.details()
    ok = stub.SearchRuns(
        query_pb2.SearchRunsRequest(
            project="vision", order_by=[f"params.p{i}" for i in range(MAX_SORT_KEYS)]
        ),
        metadata=_as("vision-reader"),
    )
    assert ok.total == 5


# ---------------------------------------------------------------- item 9: the points budget


def _series_request(**kw) -> query_pb2.GetMetricSeriesRequest:
    return query_pb2.GetMetricSeriesRequest(project="vision", run_ids=["w0", "w1", "w2"], keys=["wide"], **kw)


@pytest.mark.parametrize(
    "mode", [query_pb2.DOWNSAMPLING_MINMAX, query_pb2.DOWNSAMPLING_LTTB, query_pb2.DOWNSAMPLING_NONE]
)
def test_series_over_the_message_limit_are_refused_saying_what_to_lower(stub, mode):
    """MINMAX/LTTB with max_points=100,000 read each 100,000-point series raw: 4.8 MB for three, over
    the 4 MiB the server may send. Before the fix the answer was built and failed as too large."""
    request = _series_request(max_points=100_000, downsampling=mode)
    err = _refusal(lambda: stub.GetMetricSeries(request, metadata=_as("vision-reader"), timeout=60))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"over the server's message limit of {MESSAGE_LIMIT} bytes" in err.details()
    assert "lower max_points" in err.details()


def test_series_within_the_budget_still_come_back(stub):
    got = stub.GetMetricSeries(
        _series_request(max_points=1_000, downsampling=query_pb2.DOWNSAMPLING_MINMAX),
        metadata=_as("vision-reader"),
    )
    assert all(900 <= len(s.y) // 8 <= 1_000 for s in got.series) and len(got.series) == 3
    assert [s.total_points for s in got.series] == [WIDE_POINTS] * 3


def test_series_over_the_points_budget_are_refused_before_reading(stub, monkeypatch):
    monkeypatch.setattr(series, "MAX_RESPONSE_POINTS", 150_000, raising=False)
    request = _series_request(max_points=60_000, downsampling=query_pb2.DOWNSAMPLING_MINMAX)
    err = _refusal(lambda: stub.GetMetricSeries(request, metadata=_as("vision-reader"), timeout=60))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "180000 points requested over 3 series (limit 150000 per call)" in err.details()


def test_a_zoom_that_hides_most_points_from_the_estimate_is_cut_at_the_budget(stub, monkeypatch):
    """100,000 points in the first 100 s of a series spanning a year: a zoom on those 100 s is
    estimated at a few points and read raw; the read stops at the budget and the call is refused."""
    monkeypatch.setattr(series, "MAX_RESPONSE_POINTS", 50_000, raising=False)
    request = query_pb2.GetMetricSeriesRequest(
        project="vision",
        run_ids=["uneven"],
        keys=["lumpy"],
        downsampling=query_pb2.DOWNSAMPLING_NONE,
        x_axis=query_pb2.X_AXIS_TIME,
        has_range=True,
        x_min=T0,
        x_max=T0 + 100_000,
    )
    err = _refusal(lambda: stub.GetMetricSeries(request, metadata=_as("vision-reader"), timeout=60))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "more than 50000 points in the requested range" in err.details()


# ---------------------------------------------------------------- item 14: no existence oracle


def _history(stub, key: str, run_id: str, project: str = "") -> list:
    return list(
        stub.GetHistory(
            query_pb2.GetHistoryRequest(project=project, run_id=run_id), metadata=_as(key), timeout=30
        )
    )


def test_history_without_a_project_does_not_reveal_runs_of_other_projects(stub):
    """An nlp key asking for a vision run learns nothing more than for a run that does not exist."""
    hidden = _refusal(lambda: _history(stub, "nlp-reader", "w0"))
    missing = _refusal(lambda: _history(stub, "nlp-reader", "no-such-run"))
    assert hidden.code() == missing.code() == grpc.StatusCode.NOT_FOUND
    assert hidden.details() == missing.details().replace("no-such-run", "w0")
    assert "vision" not in hidden.details()


def test_history_without_a_project_counts_only_the_projects_the_key_may_read(stub):
    """ "shared" exists in vision and nlp: an nlp key gets nlp's run (not "exists in several
    projects", which told it about vision); a key for both must still name the project."""
    parts = _history(stub, "nlp-reader", "shared")
    assert sum(len(p.steps) // 8 for p in parts) == 5
    parts = _history(stub, "vision-reader", "shared")
    assert sum(len(p.steps) // 8 for p in parts) == 10
    err = _refusal(lambda: _history(stub, "admin", "shared"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "give the project" in err.details()


def test_history_naming_a_project_the_key_may_not_read_is_denied_whether_or_not_the_run_exists(stub):
    for run_id in ("w0", "no-such-run"):
        err = _refusal(lambda run_id=run_id: _history(stub, "nlp-reader", run_id, project="vision"))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
