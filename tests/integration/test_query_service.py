"""The QueryService in-process against real chDB: migrations applied, realistic rows inserted
straight into the tables (the materialized views fill metric_summaries and metric_rollups), a
grpc.aio server on a free port with the ErrorInterceptor, queried through the runstream.v1 stubs.
Fixtures here are shared with test_api_read.py. Over 400 lines on purpose: one seeded store
(built once per module) serves every RPC's tests, and splitting would seed it once per file."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import math
import threading
import uuid
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from runstream.v1 import query_pb2, query_pb2_grpc, types_pb2
from runstream_services.artifacts.local import LocalArtifactStore
from runstream_services.grpc_errors import ErrorInterceptor
from runstream_services.query.service import QueryServicer
from runstream_services.storage.clickhouse import connect
from runstream_services.storage.migrations import migrate
from tests.server_process import free_port

T0 = 1_700_000_000_000
ARTIFACT_BYTES = b"model weights \x00\x01" * 1000


@dataclass
class Seeded:
    client: object
    database: str
    artifact_sha: str
    artifact_store: LocalArtifactStore


def _run_row(project, run_id, i, **over):
    row = {
        "project": project,
        "run_id": run_id,
        "name": f"run-{i:02d}",
        "group": "sweep-a" if i % 2 == 0 else "sweep-b",
        "job_type": "train",
        "state": "finished" if i % 3 else "failed",
        "start_ms": T0 + i * 60_000,
        "end_ms": T0 + i * 60_000 + 30_000,
        "heartbeat_ms": T0 + i * 60_000 + 30_000,
        "user": "ada" if i < 6 else "grace",
        "host": f"node{i % 3}",
        "git_commit": f"{i:040x}",
        "git_dirty": i % 2,
        "notes": "baseline" if i == 0 else "",
        "tags": {"dataset": "v2.1" if i % 2 == 0 else "v1.0", "team": "vision"},
        "context": "{}",
        "datasets": "[]",
        "version": 1,
    }
    row.update(over)
    return row


def seed(client, db: str, artifact_store: LocalArtifactStore) -> str:
    """Project "vision": 12 runs r00..r11 with config lr = 0.001 * (i+1), batch_size, optimizer,
    use_amp, model.depth; metrics loss (200 steps, decreasing) and val_f1 (20 steps, last value
    0.5 + i * 0.04), one run updated to a newer version. Project "nlp": 2 runs."""
    runs, params, metrics = [], [], []
    for i in range(12):
        rid = f"r{i:02d}"
        runs.append(_run_row("vision", rid, i))
        config = {
            "lr": ("number", 0.001 * (i + 1), ""),
            "batch_size": ("number", float(32 * (1 + i % 2)), ""),
            "optimizer": ("text", math.nan, "adam" if i % 2 == 0 else "sgd; DROP TABLE runs --"),
            "use_amp": ("flag", float(i % 2), ""),
            "model.depth": ("number", float(12 if i < 6 else 24), ""),
            "layers": ("json", math.nan, "[1, 2, 3]"),
        }
        for key, (kind, num, text) in config.items():
            params.append(
                ["vision", rid, "config", key, kind, num, text or (repr(num) if kind == "number" else ""), 1]
            )
        params.append(["vision", rid, "summary", "best_acc", "number", 0.9 + i / 1000, "", 1])
        steps = np.arange(200)
        for s in steps:
            metrics.append(
                ["vision", rid, "user", "loss", 0, int(s), T0 + i * 60_000 + int(s) * 10, 2.0 / (1 + s) + i]
            )
        for s in range(20):
            metrics.append(
                ["vision", rid, "user", "val_f1", 0, s * 10, T0 + s * 100, 0.5 + i * 0.04 * s / 19]
            )
        metrics.append(["vision", rid, "system", "cpu", 0, 0, T0, 50.0 + i])
    # r03: a newer version of the run row and of its lr param (the newest must win)
    runs.append(_run_row("vision", "r03", 3, state="killed", name="run-03-renamed", version=2))
    params.append(["vision", "r03", "config", "lr", "number", 0.5, "0.5", 2])
    # r01 has a second rank and a NaN
    for s in range(50):
        metrics.append(["vision", "r01", "user", "loss", 1, s, T0 + s, 10.0 + s])
    metrics.append(["vision", "r01", "user", "grad_norm", 0, 0, T0, math.nan])
    metrics.append(["vision", "r01", "user", "grad_norm", 0, 1, T0 + 1, 1.5])
    # r00: a long series with one spike and one dip for the downsampling tests
    long_steps = np.arange(100_000)
    long_vals = np.sin(long_steps / 1000.0)
    long_vals[12_345] = 50.0
    long_vals[67_890] = -50.0
    long_vals[500] = math.nan
    for s, v in zip(long_steps.tolist(), long_vals.tolist(), strict=True):
        metrics.append(["vision", "r00", "user", "long", 0, s, T0 + s * 5, v])
    for i in range(2):
        runs.append(_run_row("nlp", f"n{i}", 20 + i, tags={"dataset": "wiki"}))
        params.append(["nlp", f"n{i}", "config", "lr", "number", 0.1, "0.1", 1])
    context = {
        "git_commit": "abc123",
        "git_branch": "main",
        "python_version": "3.11.7",
        "packages": {"torch": "2.3.0"},
        "gpus": ["H100"],
        "world_size": 2,
        "seeds": {"torch": "42"},
        "some_future_field": 1,
    }
    runs.append(
        _run_row(
            "vision",
            "r00",
            0,
            context=json.dumps(context),
            datasets=json.dumps([{"name": "imagenet", "version": "sha:1", "uri": "s3://d"}]),
            version=3,
        )
    )

    run_cols = list(runs[0])
    client.insert(f"{db}.runs", [[r[c] for c in run_cols] for r in runs], column_names=run_cols)
    client.insert(
        f"{db}.params",
        params,
        column_names=["project", "run_id", "scope", "key", "kind", "num", "str", "version"],
    )
    cols = ["project", "run_id", "kind", "key", "rank", "step", "time_ms", "value"]
    for start in range(0, len(metrics), 50_000):
        client.insert(f"{db}.metrics", metrics[start : start + 50_000], column_names=cols)
    # a replayed block: the same points of r02/loss again (history must not show them twice)
    client.insert(
        f"{db}.metrics", [m for m in metrics if m[1] == "r02" and m[3] == "loss"], column_names=cols
    )

    sha = hashlib.sha256(ARTIFACT_BYTES).hexdigest()
    uri, _ = artifact_store.put("vision", sha, io.BytesIO(ARTIFACT_BYTES), len(ARTIFACT_BYTES))
    client.insert(
        f"{db}.artifacts",
        [["vision", "r00", "model", "model.bin", "model", 1, "t1", sha, len(ARTIFACT_BYTES), uri, T0]],
        column_names=[
            "project",
            "run_id",
            "name",
            "path",
            "type",
            "version",
            "version_tag",
            "sha256",
            "size",
            "uri",
            "created_ms",
        ],
    )
    return sha


class InProcessServer:
    """A grpc.aio server with the QueryServicer on its own event loop thread; `options` are gRPC
    server options (the real server sets max_send_message_length from its settings)."""

    def __init__(self, servicer: QueryServicer, options: list[tuple[str, int]] | None = None):
        self.servicer = servicer
        self.options = options or []
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._server = None

    def _main(self):
        asyncio.set_event_loop(self.loop)

        async def start():
            self._server = grpc.aio.server(interceptors=[ErrorInterceptor()], options=self.options)
            query_pb2_grpc.add_QueryServiceServicer_to_server(self.servicer, self._server)
            self._server.add_insecure_port(f"127.0.0.1:{self.port}")
            await self._server.start()
            self._ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> InProcessServer:
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("in-process query server did not start")
        return self

    def stop(self):
        fut = asyncio.run_coroutine_threadsafe(self._server.stop(0), self.loop)
        fut.result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def seeded(chdb_dsn, tmp_path_factory) -> Seeded:
    """Seeded once per module: the tests only read."""
    database = f"t_query_{uuid.uuid4().hex[:8]}"
    tmp_path = tmp_path_factory.mktemp("query")
    client = connect(chdb_dsn)
    migrate(client, database)
    store = LocalArtifactStore(tmp_path / "artifacts")
    sha = seed(client, database, store)
    yield Seeded(client, database, sha, store)
    client.command(f"DROP DATABASE IF EXISTS {database}")


@pytest.fixture(scope="module")
def query_server(seeded):
    server = InProcessServer(
        QueryServicer(seeded.client, seeded.database, seeded.artifact_store, None)
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stub(query_server):
    with grpc.insecure_channel(query_server.endpoint) as channel:
        yield query_pb2_grpc.QueryServiceStub(channel)


def search(stub, filter="", order_by=(), **kw):
    return stub.SearchRuns(
        query_pb2.SearchRunsRequest(project="vision", filter=filter, order_by=list(order_by), **kw)
    )


def ids(resp):
    return [r.run_id for r in resp.runs]


# ------------------------------------------------------------------ SearchRuns


def test_search_filter_from_the_issue(stub):
    resp = search(stub, 'params.lr > 0.004 and metrics.val_f1 > 0.85 and tags.dataset = "v2.1"', ["run_id"])
    # lr > 0.004: r04.. (and r03 whose newest lr is 0.5); val_f1 last = 0.5 + 0.04 i > 0.85: i >= 9; even i
    assert ids(resp) == ["r10"]
    assert resp.total == 1


def test_search_default_order_is_newest_first_and_total(stub):
    resp = search(stub)
    assert resp.total == 12
    assert ids(resp) == [f"r{i:02d}" for i in reversed(range(12))]
    assert resp.next_page_token == ""


def test_search_newest_version_of_run_and_param_wins(stub):
    resp = search(stub, "params.lr = 0.5", include_config=True)
    assert ids(resp) == ["r03"]
    run = resp.runs[0]
    assert run.name == "run-03-renamed" and run.state == types_pb2.RUN_STATE_KILLED
    assert run.config["lr"].number == 0.5
    assert search(stub, "params.lr = 0.004").total == 0  # r03's old value is gone
    assert search(stub, 'state = "killed"').total == 1


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        ('params.optimizer = "adam"', [0, 2, 4, 6, 8, 10]),
        ('config.optimizer ~ "DROP"', [1, 3, 5, 7, 9, 11]),
        ("params.use_amp = true", [1, 3, 5, 7, 9, 11]),
        ("params.`model.depth` = 24 and params.batch_size = 64", [7, 9, 11]),
        ("params.model.depth in (12) and not params.batch_size = 64", [0, 2, 4]),
        ("metrics.loss.min < 3", [0, 1, 2]),
        ("metrics.loss.count = 200 and metrics.loss.max >= 11", [9, 10, 11]),
        ("metrics.grad_norm.max = 1.5", [1]),
        ('state = "failed"', [0, 6, 9]),
        ('state in ("failed", "killed") and user = "grace"', [6, 9]),
        ('name ~ "RUN-1"', [10, 11]),
        ('host != "node0" and group = "sweep-a"', [2, 4, 8, 10]),
        ("start >= 1700000600000", [10, 11]),
        ('start < "2023-11-14T22:15:00Z"', [0, 1]),
        ("git_dirty = true and end > 1700000400000", [7, 9, 11]),
        ('tags.dataset != "v2.1"', [1, 3, 5, 7, 9, 11]),
        ('tags.missing = "x" or run_id in ("r05", "r06")', [5, 6]),
        ("summary.best_acc >= 0.911", [11]),
        ('not (tags.team = "vision")', []),
        ('run_id not in ("r00", "r01") and params.lr <= 0.003', [2]),
        ('notes = "baseline"', [0]),
    ],
)
def test_search_filters(stub, flt, expected):
    resp = search(stub, flt, ["run_id"])
    assert ids(resp) == [f"r{i:02d}" for i in expected], flt
    assert resp.total == len(expected)


def test_search_sort_by_param_metric_and_missing_last(stub):
    assert ids(search(stub, "", ["-params.lr"]))[:3] == ["r03", "r11", "r10"]
    assert ids(search(stub, "", ["metrics.val_f1"]))[:3] == ["r00", "r01", "r02"]
    # grad_norm exists only in r01: every other run (missing) sorts after it in both directions
    assert ids(search(stub, "", ["metrics.grad_norm"]))[0] == "r01"
    assert ids(search(stub, "", ["-metrics.grad_norm"]))[0] == "r01"
    both = ids(search(stub, "", ["params.batch_size", "-params.lr"]))
    assert both[:2] == ["r10", "r08"] and both[6:8] == ["r03", "r11"]
    assert ids(search(stub, "", ["-tags.dataset", "name"]))[0] == "r00"
    assert ids(search(stub, "", ["state", "run_id"]))[:2] == ["r00", "r06"]  # 'failed' sorts first


def test_search_pagination_is_complete_and_stable(stub):
    seen, token, pages = [], "", 0
    while True:
        resp = search(stub, "", ["-metrics.loss"], page_size=5, page_token=token)
        assert resp.total == 12
        seen += ids(resp)
        pages += 1
        token = resp.next_page_token
        if not token:
            break
    assert pages == 3 and len(seen) == 12 and len(set(seen)) == 12
    with pytest.raises(grpc.RpcError) as err:
        search(
            stub,
            "params.lr > 0",
            ["-metrics.loss"],
            page_size=5,
            page_token=search(stub, "", ["-metrics.loss"], page_size=5).next_page_token,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "different" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        search(stub, page_token="not a token!")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_search_fills_selected_params_and_metrics(stub):
    resp = search(
        stub, 'run_id = "r02"', param_keys=["lr", "optimizer", "use_amp", "layers"], metric_keys=["loss"]
    )
    run = resp.runs[0]
    assert set(run.config) == {"lr", "optimizer", "use_amp", "layers"}
    assert run.config["optimizer"].text == "adam"
    assert run.config["use_amp"].WhichOneof("kind") == "flag" and run.config["use_amp"].flag is False
    assert run.config["layers"].json == "[1, 2, 3]"
    assert run.summary["best_acc"].number == pytest.approx(0.902)
    assert [m.key for m in run.metrics] == ["loss"]
    loss = run.metrics[0]
    assert loss.count == 400  # the replayed block is counted by the incremental summary
    assert (
        loss.last_step == 199 and loss.min == pytest.approx(2.0 / 200 + 2) and loss.max == pytest.approx(4.0)
    )
    assert run.tags["dataset"] == "v2.1"
    # without include_config or param_keys the config stays empty; all metric summaries come
    plain = search(stub, 'run_id = "r01"').runs[0]
    assert len(plain.config) == 0 and {m.key for m in plain.metrics} == {"loss", "val_f1", "grad_norm"}


@pytest.mark.parametrize(
    ("flt", "fragment"),
    [
        ("params.lr >", "expected a value after '>' at column 12"),
        ("params.lr > 0.01 and", "at column 21"),
        ('state = "bogus"', "state is one of"),
        ('metrics.loss > "a"', "compare it with a number"),
        ("bogus = 1", "unknown field 'bogus'"),
        ("params.lr = 1; DROP TABLE runs", "unexpected character ';'"),
        ('name = "x" -- comment', "unexpected character '-'"),
        ("(params.lr > 1", "unclosed '('"),
    ],
)
def test_search_malformed_filter_is_invalid_argument(stub, flt, fragment):
    with pytest.raises(grpc.RpcError) as err:
        search(stub, flt)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in err.value.details()
    assert "^" in err.value.details()


@pytest.mark.parametrize(
    "value",
    [
        "x' OR 1=1 --",
        'x" OR 1=1 --',
        "\\' OR '1'='1",
        "'; DROP DATABASE x; --",
        "{p0:String}",
        "ü🙂\u0000",
        "%(p)s",
    ],
)
def test_search_hostile_values_are_data_not_sql(stub, seeded, value):
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\0", "\\0")
    for flt in (
        f'name = "{escaped}"',
        f'params.optimizer = "{escaped}"',
        f'tags.`{escaped.replace("`", "")}` = "1"',
    ):
        assert search(stub, flt).total == 0
    # a value that does occur matches exactly, even with SQL in it
    assert search(stub, 'params.optimizer = "sgd; DROP TABLE runs --"').total == 6
    rows = seeded.client.query(f"SELECT uniqExact(run_id) FROM {seeded.database}.runs").result_rows
    assert rows[0][0] == 14


def test_search_page_size_limit_and_unknown_project(stub):
    with pytest.raises(grpc.RpcError) as err:
        search(stub, page_size=10_001)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    empty = stub.SearchRuns(query_pb2.SearchRunsRequest(project="nope"))
    assert empty.total == 0 and not empty.runs


# ------------------------------------------------------------------ projects, run, keys


def test_list_projects(stub):
    projects = {p.name: p for p in stub.ListProjects(query_pb2.ListProjectsRequest()).projects}
    assert set(projects) == {"vision", "nlp"}
    assert projects["vision"].run_count == 12 and projects["nlp"].run_count == 2
    assert projects["vision"].last_activity_ms == T0 + 11 * 60_000


def test_get_run_with_context_datasets_artifacts(stub, seeded):
    run = stub.GetRun(query_pb2.GetRunRequest(project="vision", run_id="r00")).run
    assert run.context.git_branch == "main" and run.context.packages["torch"] == "2.3.0"
    assert run.context.gpus == ["H100"] and run.context.world_size == 2 and run.context.seeds["torch"] == 42
    assert [(d.name, d.version) for d in run.datasets] == [("imagenet", "sha:1")]
    assert len(run.artifacts) == 1 and run.artifacts[0].sha256 == seeded.artifact_sha
    assert run.config["lr"].number == pytest.approx(0.001) and "best_acc" in run.summary
    assert {m.key for m in run.metrics} == {"loss", "val_f1", "long"}
    with pytest.raises(grpc.RpcError) as err:
        stub.GetRun(query_pb2.GetRunRequest(project="nlp", run_id="r00"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_list_keys(stub):
    keys = stub.ListKeys(query_pb2.ListKeysRequest(project="vision"))
    assert list(keys.metric_keys) == ["grad_norm", "long", "loss", "val_f1"]
    assert list(keys.system_metric_keys) == ["cpu"]
    assert "model.depth" in keys.param_keys and "best_acc" not in keys.param_keys
    assert list(keys.tag_keys) == ["dataset", "team"]
    some = stub.ListKeys(query_pb2.ListKeysRequest(project="vision", run_ids=["r02"]))
    assert list(some.metric_keys) == ["loss", "val_f1"]


# ------------------------------------------------------------------ series and history


def _series(stub, **kw):
    req = query_pb2.GetMetricSeriesRequest(project="vision", **kw)
    out = {}
    for s in stub.GetMetricSeries(req).series:
        out[(s.run_id, s.key, s.rank)] = (
            np.frombuffer(s.x, "<f8"),
            np.frombuffer(s.y, "<f8"),
            s.total_points,
        )
    return out


def test_series_short_series_come_back_whole(stub):
    got = _series(stub, run_ids=["r02", "r05"], keys=["loss", "val_f1"], max_points=1000)
    assert set(got) == {("r02", "loss", 0), ("r02", "val_f1", 0), ("r05", "loss", 0), ("r05", "val_f1", 0)}
    x, y, total = got[("r05", "loss", 0)]
    assert len(x) == 200 and x[0] == 0 and x[-1] == 199 and y[0] == pytest.approx(7.0)
    x, y, _ = got[("r02", "loss", 0)]
    assert len(x) == 200  # the replayed block does not show twice


@pytest.mark.parametrize("mode", [query_pb2.DOWNSAMPLING_MINMAX, query_pb2.DOWNSAMPLING_LTTB])
@pytest.mark.parametrize("max_points", [1000, 200])
def test_series_downsampling_keeps_extremes(stub, mode, max_points):
    got = _series(stub, run_ids=["r00"], keys=["long"], max_points=max_points, downsampling=mode)
    x, y, total = got[("r00", "long", 0)]
    assert total == 100_000
    assert 0 < len(x) <= max_points
    assert np.all(np.diff(x) >= 0)
    assert y.max() == 50.0 and y.min() == -50.0
    assert not np.isnan(y).any()
    # the spike's x is exact from raw points and within one 32-step rollup row otherwise
    assert abs(x[np.argmax(y)] - 12_345) < 32


def test_series_zoom_time_axes_ranks_and_kind(stub):
    zoomed = _series(
        stub, run_ids=["r00"], keys=["long"], max_points=100, has_range=True, x_min=12_000, x_max=13_000
    )
    x, y, _ = zoomed[("r00", "long", 0)]
    assert x.min() >= 12_000 and x.max() <= 13_000 and y.max() == 50.0
    by_time = _series(stub, run_ids=["r02"], keys=["loss"], x_axis=query_pb2.X_AXIS_TIME)
    assert by_time[("r02", "loss", 0)][0][0] == T0 + 2 * 60_000
    rel = _series(stub, run_ids=["r02", "r03"], keys=["loss"], x_axis=query_pb2.X_AXIS_RELATIVE_TIME)
    assert rel[("r03", "loss", 0)][0][:2].tolist() == [0.0, 10.0]
    ranks = _series(stub, run_ids=["r01"], keys=["loss"], all_ranks=True)
    assert set(ranks) == {("r01", "loss", 0), ("r01", "loss", 1)} and len(ranks[("r01", "loss", 1)][0]) == 50
    rank1 = _series(stub, run_ids=["r01"], keys=["loss"], rank=1)
    assert list(rank1) == [("r01", "loss", 1)]
    system = _series(stub, run_ids=["r04"], keys=["cpu"], kind=types_pb2.METRIC_KIND_SYSTEM)
    assert system[("r04", "cpu", 0)][1].tolist() == [54.0]
    nan = _series(stub, run_ids=["r01"], keys=["grad_norm"], downsampling=query_pb2.DOWNSAMPLING_NONE)
    assert np.isnan(nan[("r01", "grad_norm", 0)][1][0])


def test_series_limits(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.GetMetricSeries(query_pb2.GetMetricSeriesRequest(project="vision", run_ids=["r00"]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        stub.GetMetricSeries(
            query_pb2.GetMetricSeriesRequest(
                project="vision", run_ids=[f"x{i}" for i in range(1001)], keys=["a"]
            )
        )
    assert "1000" in err.value.details().replace(",", "")


def _history(stub, **kw):
    parts = list(stub.GetHistory(query_pb2.GetHistoryRequest(**kw)))
    rows = []
    for p in parts:
        ki = np.frombuffer(p.key_index, "<u2")
        steps = np.frombuffer(p.steps, "<i8")
        values = np.frombuffer(p.values, "<f8")
        ranks = np.frombuffer(p.ranks, "<u2")
        rows += [
            (p.keys[k], int(r), int(s), float(v)) for k, r, s, v in zip(ki, ranks, steps, values, strict=True)
        ]
    return parts, rows


def test_history_pages_every_point_once(stub):
    parts, rows = _history(stub, project="vision", run_id="r02", keys=["loss", "val_f1"], page_size=70)
    assert len(rows) == 220 and len(set(rows)) == 220  # FINAL: the replayed block never shows
    assert len(parts) == 4
    assert rows[0] == ("loss", 0, 0, pytest.approx(4.0))
    parts, rows = _history(stub, run_id="r01")  # project found from the run id
    assert {r[0] for r in rows} == {"loss", "val_f1", "grad_norm"} and len(
        [r for r in rows if r[1] == 1]
    ) == 50
    with pytest.raises(grpc.RpcError) as err:
        _history(stub, project="nlp", run_id="r01")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_download_artifact_checks_the_run(stub, seeded):
    chunks = stub.DownloadArtifact(
        query_pb2.DownloadArtifactRequest(project="vision", run_id="r00", sha256=seeded.artifact_sha)
    )
    assert b"".join(c.chunk for c in chunks) == ARTIFACT_BYTES
    for project, run_id in (("vision", "r01"), ("nlp", "r00")):
        with pytest.raises(grpc.RpcError) as err:
            list(
                stub.DownloadArtifact(
                    query_pb2.DownloadArtifactRequest(
                        project=project, run_id=run_id, sha256=seeded.artifact_sha
                    )
                )
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        list(
            stub.DownloadArtifact(
                query_pb2.DownloadArtifactRequest(project="vision", run_id="r00", sha256="../../etc/passwd")
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
