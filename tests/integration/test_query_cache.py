"""The query service's read cache (query/read_cache.py, query/cached_reads.py) answers exactly what
SQL answers: the same requests against two servicers over one seeded chDB store, one reading SQL
and one reading its held copy, must give identical responses (filters, sorts, pages, one run,
keys, histories; a series too long to hold goes to SQL inside a cached answer). The writer's side
(freshness after an ack, replays, re-logged steps) is tested against a real embedded server in
test_read_your_writes.py."""

from __future__ import annotations

import contextlib

import grpc
import pytest
from google.protobuf import json_format

from runstream.v1 import query_pb2, query_pb2_grpc, types_pb2
from runstream_services.query import read_cache
from runstream_services.query.read_cache import ReadCache
from runstream_services.query.service import QueryServicer
from runstream_services.writers.replaced_points import ReplacedPoints
from tests.integration.test_query_service import InProcessServer, _run_row, seeded  # noqa: F401 - fixture


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
    with grpc.insecure_channel(plain.endpoint) as a, grpc.insecure_channel(cached.endpoint) as b:
        yield query_pb2_grpc.QueryServiceStub(a), query_pb2_grpc.QueryServiceStub(b), cache
    plain.stop()
    cached.stop()


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


@pytest.mark.parametrize(
    "order", [["name"], ["-name"], ["tags.t"], ["-tags.t", "name"], ["params.x"], ["-params.x"]]
)
def test_text_orders_match_sql(stubs, order):
    for flt in ("", 'name < "b"', 'name >= "a"', 'tags.t in ("a", "é")', 'params.x = "z"'):
        request = query_pb2.SearchRunsRequest(project="names", filter=flt, order_by=order)
        _same("SearchRuns", stubs, request)
