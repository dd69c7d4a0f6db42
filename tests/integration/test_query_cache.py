"""The query service's read cache (query/read_cache.py, query/cached_reads.py) answers exactly what
SQL answers: the same requests against two servicers over one seeded chDB store, one reading SQL
and one reading its held copy, must give identical responses (filters, sorts, pages, one run,
keys, histories; a series too long to hold goes to SQL inside a cached answer). The writer's side
(freshness after an ack, replays, re-logged steps) is tested against a real embedded server in
test_read_your_writes.py."""

from __future__ import annotations

import contextlib
import math

import grpc
import numpy as np
import pandas as pd
import pytest
from google.protobuf import json_format

from runstream.api import Api, _PagedColumns, _RunColumns
from runstream.query_client import value_of
from runstream.v1 import query_pb2, query_pb2_grpc, types_pb2
from runstream_services.query import cached_reads, read_cache
from runstream_services.query.read_cache import ReadCache
from runstream_services.query.service import QueryServicer
from runstream_services.writers.replaced_points import ReplacedPoints
from tests.integration.test_query_service import T0, InProcessServer, _run_row, seeded  # noqa: F401 - fixture


class _OneClient:
    """The read pool interface over the seeded client."""

    def __init__(self, client):
        self._client = client

    def client(self):
        return contextlib.nullcontext(self._client)


@pytest.fixture(scope="module")
def stubs(seeded):  # noqa: F811
    # The seed inserts r02's loss points twice straight into the table, past the writer; the
    # writer would have recounted that series' summary (writers/replaced_points.py), and the held
    # copy counts distinct points: recount it as the writer does, so both sides state the truth.
    ReplacedPoints(seeded.client, seeded.database).recount({("vision", "r02", "user", "loss")})
    # a project of names that order differently under careless string handling (NUL, case,
    # accents, digits), equal params, text params among numbers
    names = ["a\0", "a", "B", "b", "é", "e\u0301", "z", "10", "9", "", "a\0b", "ÿ"]
    rows = [_run_row("names", f"n{i:02d}", i, name=name, tags={"t": name}) for i, name in enumerate(names)]
    cols = list(rows[0])
    seeded.client.insert(f"{seeded.database}.runs", [[r[c] for c in cols] for r in rows], column_names=cols)
    params = [
        [
            "names",
            f"n{i:02d}",
            "config",
            "x",
            *(("number", 1.0, "1") if i % 3 else ("text", float("nan"), name)),
            1,
        ]
        for i, name in enumerate(names)
    ]
    seeded.client.insert(
        f"{seeded.database}.params", params,
        column_names=["project", "run_id", "scope", "key", "kind", "num", "str", "version"],
    )  # fmt: skip
    cache = ReadCache(_OneClient(seeded.client), seeded.database)
    plain = InProcessServer(
        QueryServicer(seeded.client, seeded.database, seeded.artifact_store, None)
    ).start()
    cached = InProcessServer(
        QueryServicer(seeded.client, seeded.database, seeded.artifact_store, None, cache=cache)
    ).start()
    _ENDPOINTS["cached"] = cached.endpoint
    with grpc.insecure_channel(plain.endpoint) as a, grpc.insecure_channel(cached.endpoint) as b:
        yield query_pb2_grpc.QueryServiceStub(a), query_pb2_grpc.QueryServiceStub(b), cache
    plain.stop()
    cached.stop()


_ENDPOINTS: dict[str, str] = {}  # the servers of `stubs` (the Api tests call them through the SDK)


def _same(method: str, stubs, request) -> object:
    """Calls both servicers; their answers (or error codes) must be equal. Returns the answer."""
    sql, held, _ = stubs

    def call(stub):
        try:
            answer = getattr(stub, method)(request)
            if method == "GetHistory":
                answer = list(answer)
                return [json_format.MessageToDict(m) for m in answer]
            return json_format.MessageToDict(answer)  # NaN becomes "NaN": comparable
        except grpc.RpcError as exc:
            return ("error", exc.code())

    expected, got = call(sql), call(held)
    if got != expected and isinstance(got, dict) and "runs" in got:  # name the first differing run
        for a, b in zip(got["runs"], expected.get("runs", []), strict=False):
            assert a == b, (method, request)
    assert got == expected, (method, request)
    return got


FILTERS = [
    "",
    'params.optimizer = "adam"',
    'config.optimizer ~ "DROP"',
    'config.optimizer ~ "drop"',
    "params.use_amp = true",
    "params.use_amp != false",
    "params.use_amp in (true)",
    "params.`model.depth` = 24 and params.batch_size = 64",
    "params.model.depth in (12) and not params.batch_size = 64",
    "params.lr > 0.004 or params.lr < 0.002",
    'params.lr = "0.5"',
    'params.layers = "[1, 2, 3]"',
    "params.layers > 1",
    "params.missing = 1",
    "params.missing not in (1, 2)",
    "metrics.loss.min < 3",
    "metrics.loss < 3",
    "metrics.loss.last >= 2",
    "metrics.loss.count = 200 and metrics.loss.max >= 11",
    "metrics.loss.count in (200, 250)",
    "metrics.grad_norm.max = 1.5",
    "metrics.grad_norm.min <= 1.5",
    "metrics.grad_norm != 1",
    "metrics.val_f1 not in (0.5)",
    "metrics.long.count > 5",
    'state = "failed"',
    'state != "finished"',
    'state in ("failed", "killed") and user = "grace"',
    'name ~ "RUN-1"',
    'name >= "run-05"',
    'host != "node0" and group = "sweep-a"',
    "start >= 1700000600000",
    'start < "2023-11-14T22:15:00Z"',
    "git_dirty = true and end > 1700000400000",
    "git_dirty in (0)",
    'tags.dataset != "v2.1"',
    'tags.dataset ~ "V2"',
    'tags.missing = "x" or run_id in ("r05", "r06")',
    'tags.missing != "x"',
    "summary.best_acc >= 0.911",
    "summary.best_acc > 1",
    'not (tags.team = "vision")',
    'run_id not in ("r00", "r01") and params.lr <= 0.003',
    'notes = "baseline"',
    'notes ~ ""',
    'name ~ "ü"',
]
ORDERS = [
    [],
    ["run_id"],
    ["-start"],
    ["-params.lr"],
    ["params.optimizer"],
    ["-params.layers"],
    ["metrics.val_f1"],
    ["-metrics.val_f1"],
    ["metrics.grad_norm"],
    ["-metrics.grad_norm.min"],
    ["metrics.loss.count", "-name"],
    ["params.batch_size", "-params.lr"],
    ["-tags.dataset", "name"],
    ["state", "run_id"],
    ["-summary.best_acc"],
    ["git_dirty", "-end"],
    ["metrics.long"],
]


@pytest.mark.parametrize("flt", FILTERS)
def test_search_filters_match_sql(stubs, flt):
    for order in (["run_id"], ["-metrics.val_f1"], ["params.optimizer", "-start"]):
        request = query_pb2.SearchRunsRequest(
            project="vision", filter=flt, order_by=order, include_config=True
        )
        _same("SearchRuns", stubs, request)


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: ",".join(o) or "default")
def test_search_orders_and_pages_match_sql(stubs, order):
    token, pages = "", 0
    while True:
        request = query_pb2.SearchRunsRequest(project="vision", order_by=order, page_size=5, page_token=token)
        answer = _same("SearchRuns", stubs, request)
        token = answer.get("nextPageToken", "")
        pages += 1
        if not token:
            break
    assert pages == 3  # 12 runs in pages of 5


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"include_config": True},
        {"param_keys": ["lr", "missing"]},
        {"metric_keys": ["loss", "grad_norm"]},
        {"metric_keys": ["long"]},  # held only by key: summaries from SQL inside a cached answer
        {"metric_keys": ["nothing"], "param_keys": ["optimizer"], "include_config": True},
    ],
)
def test_search_details_match_sql(stubs, fields):
    request = query_pb2.SearchRunsRequest(project="vision", order_by=["run_id"], **fields)
    answer = _same("SearchRuns", stubs, request)
    assert answer["total"] == "12"  # int64 fields are strings in JSON form


def test_get_run_keys_history_match_sql(stubs):
    for project in ("vision", "nlp", "nowhere"):
        for run_id in ("r00", "r01", "r03", "r07", "n0", "nope"):
            _same("GetRun", stubs, query_pb2.GetRunRequest(project=project, run_id=run_id))
            for keys in ([], ["loss"], ["val_f1", "loss", "loss"], ["nothing"], ["long"]):
                for kind in (types_pb2.METRIC_KIND_USER, types_pb2.METRIC_KIND_SYSTEM):
                    # small pages only where the 100,000-point series is not asked for
                    for page in (0, 7) if "loss" in keys else (0,):
                        request = query_pb2.GetHistoryRequest(
                            project=project, run_id=run_id, keys=keys, kind=kind, page_size=page
                        )
                        _same("GetHistory", stubs, request)
        for run_ids in ([], ["r01"], ["r01", "n0", "nope"]):
            _same("ListKeys", stubs, query_pb2.ListKeysRequest(project=project, run_ids=run_ids))
    # the project found from the run id
    _same("GetHistory", stubs, query_pb2.GetHistoryRequest(run_id="r01", keys=["loss"]))


def _page_walk(stub, query) -> list[dict]:
    """GetHistoryPage from the first page along each answer's cursor; the pages with points."""
    pages, after = [], None
    while True:
        answer = stub.GetHistoryPage(query_pb2.GetHistoryPageRequest(query=query, after=after))
        if answer.page.steps:
            pages.append(json_format.MessageToDict(answer.page))
        if not answer.HasField("next"):
            return pages
        after = answer.next
        assert len(pages) < 1000, "the cursor does not move"


def test_history_page_cursors_match_sql(stubs):
    """GetHistoryPage, the SDK's unary form: walking its cursors gives exactly GetHistory's pages,
    the last page says no more (also when the points fill it), and any cursor, mid-series, between
    ranks or keys, before or after everything, answers as SQL does."""
    cursors = [
        ("", 0, 0), ("loss", 0, 3), ("loss", 1, -1), ("loss", 0, 2**63 - 1), ("loss", 2**32 - 1, 0),
        ("m", 0, 0), ("val_f1", 1, 49), ("zzz", 0, -(2**63)), ("grad_norm", 0, 10),
    ]  # fmt: skip
    for run_id in ("r01", "r03"):
        for keys in ([], ["loss"], ["val_f1", "loss"]):
            for page in (7, 50, 0):
                query = query_pb2.GetHistoryRequest(
                    project="vision", run_id=run_id, keys=keys, page_size=page
                )
                streamed = _same("GetHistory", stubs, query)
                assert _page_walk(stubs[0], query) == _page_walk(stubs[1], query) == streamed
                for key, rank, step in cursors:
                    after = query_pb2.HistoryCursor(key=key, rank=rank, step=step)
                    _same("GetHistoryPage", stubs, query_pb2.GetHistoryPageRequest(query=query, after=after))
    # 200 points in pages of 50: four pages, the last without a cursor (not a fifth, empty one)
    query = query_pb2.GetHistoryRequest(project="vision", run_id="r03", keys=["loss"], page_size=50)
    for stub in stubs[:2]:
        assert len(_page_walk(stub, query)) == 4
        after = query_pb2.HistoryCursor(key="loss", rank=0, step=149)
        last = stub.GetHistoryPage(query_pb2.GetHistoryPageRequest(query=query, after=after))
        assert np.frombuffer(last.page.steps, "<i8").tolist() == list(range(150, 200))
        assert not last.HasField("next")


class _ServerWithoutHistoryPage(QueryServicer):
    """A server from before GetHistoryPage: the call is not there (UNIMPLEMENTED, as gRPC answers a
    method a server does not have), the GetHistory stream is."""

    async def GetHistoryPage(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")


def test_sdk_history_over_pages_and_from_an_older_server(stubs, seeded):  # noqa: F811
    """Api.history reads r00's 100,220 points in two unary pages (100,000 a page), and the same
    frame from a server without GetHistoryPage, through the stream."""
    _, held_stub, cache = stubs
    older = InProcessServer(
        _ServerWithoutHistoryPage(seeded.client, seeded.database, seeded.artifact_store, None, cache=cache)
    ).start()
    try:
        with Api(endpoint=_ENDPOINTS["cached"]) as api, Api(endpoint=older.endpoint) as old_api:
            pages = list(api.history_pages("r00", project="vision"))
            assert [len(p.steps) // 8 for p in pages] == [100_000, 220]
            frame = api.history("r00", project="vision")
            assert len(frame) == 100_220 and frame["key"].value_counts().to_dict() == {
                "long": 100_000, "loss": 200, "val_f1": 20,
            }  # fmt: skip
            assert frame["key"].is_monotonic_increasing  # ordered by key, then rank and step
            assert all(g["step"].is_monotonic_increasing for _, g in frame.groupby("key"))
            pd.testing.assert_frame_equal(old_api.history("r00", project="vision"), frame)
            with pytest.raises(grpc.RpcError) as err:
                held_stub.GetHistoryPage(query_pb2.GetHistoryPageRequest())  # the real one answers
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        older.stop()


def test_cache_answered_without_sql(stubs):
    """The comparisons above mean something only if the held copy answered: it was loaded, holds
    the runs, and lists the 100,000-point series by key only."""
    _, held_stub, cache = stubs
    held_stub.GetRun(query_pb2.GetRunRequest(project="vision", run_id="r01"))
    project = cache.ready("vision")
    assert project is not None and len(project.runs) == 12
    assert ("user", "long") in project.runs["r00"].big
    r01 = project.runs["r01"]
    assert len(r01.series[("user", "loss")]) == 250  # two ranks: 200 + 50 points
    assert len(r01.series[("user", "loss")]) <= read_cache.MAX_SERIES_POINTS


def test_a_large_project_loads_in_a_thread_and_reads_meanwhile_answer_from_sql(stubs, seeded):  # noqa: F811
    """Past background_load_runs runs, a read does not wait for the project's load: it answers from
    SQL (the same answer) while the load runs, and from the held copy once it is done."""
    import threading

    sql_stub = stubs[0]
    cache = ReadCache(_OneClient(seeded.client), seeded.database, background_load_runs=5)
    release = threading.Event()
    read = cache._read

    def slow_read(client, name):  # the load's snapshot query, held until the test lets it go
        release.wait(60)
        return read(client, name)

    cache._read = slow_read
    servicer = InProcessServer(
        QueryServicer(seeded.client, seeded.database, seeded.artifact_store, None, cache=cache)
    ).start()
    request = query_pb2.SearchRunsRequest(project="vision", filter="metrics.loss < 2", order_by=["run_id"])
    expected = json_format.MessageToDict(sql_stub.SearchRuns(request))
    try:
        with grpc.insecure_channel(servicer.endpoint) as channel:
            stub = query_pb2_grpc.QueryServiceStub(channel)
            for _ in range(2):  # answered while the load waits: from SQL
                assert json_format.MessageToDict(stub.SearchRuns(request)) == expected
            assert cache.ready("vision") is None and cache.loads == 0
            release.set()
            cache.wait_loaded("vision", 60)
            assert cache.ready("vision") is not None and cache.loads == 1
            assert json_format.MessageToDict(stub.SearchRuns(request)) == expected
            assert cache.loads == 1  # the held copy answered
    finally:
        release.set()
        servicer.stop()
    assert len(expected["runs"]) > 0


@pytest.mark.parametrize(
    "order", [["name"], ["-name"], ["tags.t"], ["-tags.t", "name"], ["params.x"], ["-params.x"]]
)
def test_text_orders_match_sql(stubs, order):
    for flt in ("", 'name < "b"', 'name >= "a"', 'tags.t in ("a", "é")', 'params.x = "z"'):
        request = query_pb2.SearchRunsRequest(project="names", filter=flt, order_by=order)
        _same("SearchRuns", stubs, request)


# ---------------------------------------------------------------- columnar SearchRuns


def _cells_of_runs(runs) -> list[dict]:
    """Every field the columnar reply carries, per run, from Run messages."""
    return [
        {
            "run_id": r.run_id, "name": r.name, "group": r.group, "job_type": r.job_type, "state": r.state,
            "start_ms": r.start_ms, "end_ms": r.end_ms, "heartbeat_ms": r.heartbeat_ms, "user": r.user,
            "host": r.host, "git_commit": r.git_commit, "git_dirty": r.git_dirty, "notes": r.notes,
            **{f"config.{k}": repr(value_of(v)) for k, v in r.config.items()},
            **{f"summary.{k}": repr(value_of(v)) for k, v in r.summary.items()},
            **{f"tags.{k}": v for k, v in r.tags.items()},
            **{f"metrics.{m.key}": repr(m.last) for m in r.metrics},
        }
        for r in runs
    ]  # fmt: skip


def _cells_of_table(t: query_pb2.RunsTable) -> list[dict]:
    """The same from a RunsTable, decoded here on its own (not with the SDK's decoder)."""
    n = t.count
    rows = []
    i64 = {f: np.frombuffer(getattr(t, f), "<i8").tolist() for f in ("start_ms", "end_ms", "heartbeat_ms")}
    for i in range(n):
        rows.append(
            {
                "run_id": t.run_ids[i], "name": t.names[i], "group": t.groups[i], "job_type": t.job_types[i],
                "state": t.states[i], "start_ms": i64["start_ms"][i], "end_ms": i64["end_ms"][i],
                "heartbeat_ms": i64["heartbeat_ms"][i], "user": t.users[i], "host": t.hosts[i],
                "git_commit": t.git_commits[i], "git_dirty": bool(t.git_dirty[i]), "notes": t.notes[i],
            }
        )  # fmt: skip
    for col in t.values:
        kinds, numbers, texts = col.kinds, np.frombuffer(col.numbers, "<f8").tolist(), list(col.texts)
        if not any(k in (1, 2) for k in kinds):
            numbers = numbers or [math.nan] * n  # may be left out
        assert len(kinds) == len(numbers) == n and len(texts) == sum(k >= 3 for k in kinds), col.name
        for i, kind in enumerate(kinds):
            if kind == 0:
                continue
            if col.name.startswith("tags."):
                rows[i][col.name] = texts.pop(0)
                continue
            value = types_pb2.Value(
                **{1: {"number": numbers[i]}, 2: {"flag": bool(numbers[i])}}.get(kind, {})
                or ({"text": texts.pop(0)} if kind == 3 else {"json": texts.pop(0)})
            )
            rows[i][col.name] = repr(value_of(value))
    assert len(t.metric_keys) == len(t.metric_last) and list(t.metric_keys) == sorted(t.metric_keys)
    for key, last in zip(t.metric_keys, t.metric_last, strict=True):
        for i, v in enumerate(np.frombuffer(last, "<f8").tolist()):
            if not math.isnan(v):  # NaN: absent (or a NaN last value: _nan_metrics_dropped)
                rows[i][f"metrics.{key}"] = repr(v)
    return rows


def _nan_metrics_dropped(rows: list[dict]) -> list[dict]:
    """A metric whose last value is NaN reads as absent in a column of floats (both replies)."""
    return [{k: v for k, v in r.items() if not (k.startswith("metrics.") and v == "nan")} for r in rows]


COLUMNAR_CASES = [
    ("vision", "", ["run_id"]),
    ("vision", 'params.optimizer = "adam"', ["-metrics.val_f1"]),
    ("vision", "metrics.loss < 3", ["params.optimizer", "-start"]),
    ("vision", "params.use_amp = true", ["-summary.best_acc"]),
    ("vision", 'run_id in ("r05", "r06")', ["-tags.dataset", "name"]),
    ("names", "", ["name"]),
    ("names", 'params.x = "z"', ["-params.x"]),
    ("nlp", "", []),
    ("nowhere", "", []),
]


@pytest.mark.parametrize("project,flt,order", COLUMNAR_CASES)
def test_columnar_search_carries_the_rows_cells(stubs, project, flt, order):
    """A columnar reply holds, cell for cell, what the row-wise reply of the held copy holds (and
    that equals SQL's: the tests above), in the same order, with the same total and page token;
    pages with a run whose summaries come from SQL (r00's 100,000-point series) are row-wise."""
    _, held, _ = stubs
    tables = 0
    for include_config in (False, True):
        for page_size in (5, 100):
            token = ""
            while True:
                fields = dict(
                    project=project, filter=flt, order_by=order, page_size=page_size, page_token=token,
                    include_config=include_config,
                )  # fmt: skip
                rows = held.SearchRuns(query_pb2.SearchRunsRequest(**fields))
                cols = held.SearchRuns(query_pb2.SearchRunsRequest(columnar=True, **fields))
                assert (cols.total, cols.next_page_token) == (rows.total, rows.next_page_token)
                if cols.HasField("table"):
                    tables += 1
                    assert not cols.runs
                    got = _cells_of_table(cols.table)
                    assert _nan_metrics_dropped(got) == _nan_metrics_dropped(_cells_of_runs(rows.runs))
                    assert "r00" not in {r["run_id"] for r in got}
                else:
                    assert list(cols.runs) == list(rows.runs)
                token = rows.next_page_token
                if not token:
                    break
    if project in ("vision", "names") and not flt:
        assert tables  # the columns were used, not only the fallback


def _frame_row_wise(api: Api, project: str, **kwargs) -> pd.DataFrame:
    columns = _RunColumns()
    for run in api.iter_runs(project, **kwargs):
        columns.add(run)
    return columns.frame(pd)


@pytest.mark.parametrize("project,flt,order", COLUMNAR_CASES)
def test_api_runs_columnar_frame_equals_row_wise(stubs, project, flt, order):
    """Api.runs over columnar pages (mixed with row-wise ones where r00 is on the page) gives the
    very frame the row-wise path builds: values, dtypes, column order, NaN for absent cells."""
    with Api(endpoint=_ENDPOINTS["cached"]) as api:
        for per_page, limit in ((1000, None), (5, None), (3, 7), (4, 1)):
            got = api.runs(project, filter=flt, order_by=order, per_page=per_page, limit=limit)
            expected = _frame_row_wise(
                api, project, filter=flt, order_by=order, per_page=per_page, limit=limit
            )
            pd.testing.assert_frame_equal(got, expected, check_exact=True)


def test_paged_columns_join_pages_of_both_forms():
    """Pages as columns and as runs, with columns that only some pages have, make the frame the
    row-wise path makes for all the runs (flags, JSON, text among numbers, NaN gaps)."""

    def run(i: int, **config) -> types_pb2.Run:
        r = types_pb2.Run(run_id=f"r{i}", name=f"n{i}", state=types_pb2.RUN_STATE_FINISHED, start_ms=1000 + i,
                          end_ms=0 if i % 2 else 2000 + i, tags={"t": "x"} if i % 3 else {})  # fmt: skip
        for k, v in config.items():
            r.config[k].CopyFrom(v)
        if i % 2:
            r.metrics.add(key="m", last=float(i))
        return r

    num, flag = types_pb2.Value(number=1.5), types_pb2.Value(flag=True)
    text, js = types_pb2.Value(text="a"), types_pb2.Value(json='{"a": [1]}')
    runs = [run(0, a=num), run(1, a=text, b=flag), run(2, b=flag), run(3, c=js), run(4, a=num, c=num), run(5)]

    def table(page) -> query_pb2.RunsTable:
        t = query_pb2.RunsTable(count=len(page))
        for name, field in (("run_id", "run_ids"), ("name", "names"), ("group", "groups"),
                            ("job_type", "job_types"), ("user", "users"), ("host", "hosts"),
                            ("git_commit", "git_commits"), ("notes", "notes")):  # fmt: skip
            getattr(t, field).extend(getattr(r, name) for r in page)
        t.states = bytes(r.state for r in page)
        for f in ("start_ms", "end_ms", "heartbeat_ms"):
            setattr(t, f, np.array([getattr(r, f) for r in page], "<i8").tobytes())
        t.git_dirty = bytes(len(page))
        names = sorted({f"config.{k}" for r in page for k in r.config} | {"tags.t" for r in page if r.tags})
        for name in names:
            col = t.values.add(name=name)
            kinds, numbers = [], []
            for r in page:
                if name == "tags.t":
                    kinds.append(3 if r.tags else 0)
                    numbers.append(math.nan)
                    if r.tags:
                        col.texts.append(r.tags["t"])
                    continue
                v = r.config.get(name[7:])
                kind = (
                    0 if v is None else {"number": 1, "flag": 2, "text": 3, "json": 4}[v.WhichOneof("kind")]
                )
                kinds.append(kind)
                numbers.append(v.number if kind == 1 else 1.0 if kind == 2 else math.nan)
                if kind >= 3:
                    col.texts.append(v.text or v.json)
            col.kinds, col.numbers = bytes(kinds), np.array(numbers, "<f8").tobytes()
        keys = sorted({m.key for r in page for m in r.metrics})
        for key in keys:
            t.metric_keys.append(key)
            lasts = [next((m.last for m in r.metrics if m.key == key), math.nan) for r in page]
            t.metric_last.append(np.array(lasts, "<f8").tobytes())
        return t

    expected = _RunColumns()
    for r in runs:
        expected.add(r)
    for split in ((2, 4), (1, 5), (3, 3), (6, 6)):
        paged = _PagedColumns(np)
        paged.add_table(table(runs[: split[0]]))
        paged.add_runs(runs[split[0] : split[1]])
        paged.add_table(table(runs[split[1] :]))
        assert paged.n == 6
        pd.testing.assert_frame_equal(paged.frame(pd), expected.frame(pd), check_exact=True)


# ---------------------------------------------------------------- GetMetricSeries


SERIES_RUNS = [["r01"], ["r03", "r01", "r05"], [f"r{i:02d}" for i in range(12) if i != 2] + ["nope"]]
SERIES_CASES = [
    dict(keys=["loss"]),
    dict(keys=["val_f1", "loss", "grad_norm"], x_axis=query_pb2.X_AXIS_TIME),
    dict(keys=["loss", "val_f1"], x_axis=query_pb2.X_AXIS_RELATIVE_TIME, all_ranks=True),
    dict(keys=["loss"], rank=1),
    dict(keys=["loss"], all_ranks=True, has_range=True, x_min=20, x_max=120.5),
    dict(keys=["loss"], x_axis=query_pb2.X_AXIS_RELATIVE_TIME, has_range=True, x_min=100, x_max=1500),
    dict(keys=["loss", "nothing"], downsampling=query_pb2.DOWNSAMPLING_LTTB, max_points=50),
    dict(keys=["loss"], max_points=50, all_ranks=True),  # min/max buckets over the held points
    dict(
        keys=["loss"],
        max_points=40,
        x_axis=query_pb2.X_AXIS_TIME,
        has_range=True,
        x_min=T0 + 500,
        x_max=T0 + 200_000,
    ),
    dict(
        keys=["loss"],
        max_points=30,
        x_axis=query_pb2.X_AXIS_RELATIVE_TIME,
        has_range=True,
        x_min=300,
        x_max=1e9,
    ),
    dict(keys=["loss"], max_points=4),  # buckets of rollup rows, formed from the held points
    dict(keys=["loss", "val_f1"], max_points=4, x_axis=query_pb2.X_AXIS_TIME, all_ranks=True),  # rollups
    dict(keys=["loss"], max_points=4, all_ranks=True, has_range=True, x_min=20, x_max=190),  # rollups, zoomed
    dict(keys=["loss"], max_points=2, downsampling=query_pb2.DOWNSAMPLING_LTTB),  # rollups
    dict(keys=["loss"], downsampling=query_pb2.DOWNSAMPLING_LTTB, max_points=300),
    dict(keys=["val_f1"], downsampling=query_pb2.DOWNSAMPLING_NONE),
    dict(keys=["grad_norm"], max_points=2),
    dict(keys=["cpu"], kind=types_pb2.METRIC_KIND_SYSTEM),
    dict(keys=["long", "loss"], max_points=5000, downsampling=query_pb2.DOWNSAMPLING_NONE),  # big: SQL
]


@pytest.mark.parametrize("case", SERIES_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_series_match_sql(stubs, case, monkeypatch):
    """GetMetricSeries from held points (every series held, read whole, as min/max buckets of its
    points, or of the 32-step rollup rows its points make) equals SQL's answer: ranks, axes, zoom,
    LTTB; series too long to hold are read from SQL inside the cached servicer, so they match too."""
    held_reads = []
    points = cached_reads.series_points
    monkeypatch.setattr(cached_reads, "series_points", lambda *a: held_reads.append(1) or points(*a))
    reduced = False  # some series came back with fewer points than logged
    for run_ids in SERIES_RUNS:
        answer = _same(
            "GetMetricSeries",
            stubs,
            query_pb2.GetMetricSeriesRequest(project="vision", run_ids=run_ids, **case),
        )
        reduced |= any(
            len(s.get("x", "")) * 3 // 4 // 8 < int(s["totalPoints"]) for s in answer.get("series", [])
        )
    # the zoomed cases and those asking for fewer points than loss's 200 (buckets)
    assert reduced == ("x_min" in case or ("loss" in case["keys"] and case.get("max_points", 1000) < 200)), (
        case
    )
    # the held copy answered (r00's long series is held by key only: its calls read SQL, the
    # others not)
    assert held_reads
    _same(
        "GetMetricSeries", stubs, query_pb2.GetMetricSeriesRequest(project="nowhere", run_ids=["r01"], **case)
    )


def test_series_from_the_cache_count_distinct_points(stubs):
    """The one intended difference: r02's loss was inserted twice (a replay); the rollups count
    400 rows, the held copy 200 distinct points, as history and the summary (recounted) say. The
    points themselves are the same."""
    sql, held, _ = stubs
    request = query_pb2.GetMetricSeriesRequest(
        project="vision", run_ids=["r02"], keys=["loss"], max_points=1000
    )
    (from_sql,) = sql.GetMetricSeries(request).series
    (from_cache,) = held.GetMetricSeries(request).series
    assert (from_sql.total_points, from_cache.total_points) == (400, 200)
    assert from_cache.x == from_sql.x and from_cache.y == from_sql.y and len(from_cache.x) == 200 * 8
