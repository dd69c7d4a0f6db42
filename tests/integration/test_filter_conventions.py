"""The filter conventions of issue 15 (MLflow's spellings, like/ilike, "field DESC" sort keys) and
the dataset filter of issue 12 (datasets.<name>) answer the same on both paths of the query
service: SQL over chDB and the held copy (run_table.py, numpy). Two servicers over one seeded
store (rows inserted straight into the tables, as in test_query_cache.py: a stand-in for the
ingest path, which test_runs_export.py covers through the SDK) must give identical responses,
and the answers are checked against what the rows say."""

from __future__ import annotations

import contextlib
import json

import grpc
import pytest
from google.protobuf import json_format

from runstream.v1 import query_pb2, query_pb2_grpc
from runstream_services.query.read_cache import ReadCache
from runstream_services.query.service import QueryServicer
from runstream_services.writers.replaced_points import ReplacedPoints
from tests.integration.test_query_service import InProcessServer, _run_row, seeded  # noqa: F401 - fixture

SHA = "ab" * 32
# run -> (name, datasets JSON): versions, two references to one dataset, unreadable JSON,
# a number where text belongs, a non-object item, names that fold case unusually
ROWS = {
    "r00": ("plain", "[]"),
    "r01": ("\u212a-kelvin", json.dumps([{"name": "imagenet", "version": "v2.1", "uri": "s3://b/in"}])),
    "r02": (
        "ſtar",
        json.dumps(
            [
                {"name": "imagenet", "version": "v1.0", "uri": ""},
                {"name": "imagenet", "version": "v2.1", "uri": "s3://b/in2"},
            ]
        ),
    ),  # fmt: skip
    "r03": ("İstanbul", json.dumps([{"name": "coco", "version": SHA, "uri": "file:///data/coco"}])),
    "r04": (
        "a%b",
        json.dumps([{"name": "imagenet", "version": "v2.1"}, {"name": "coco", "version": "2017"}]),
    ),
    "r05": ("a_b", "not json"),
    "r06": ("école", json.dumps([{"name": "é-set", "version": "ÿ", "uri": ""}], ensure_ascii=False)),
    "r07": ("ÉCOLE", json.dumps([{"name": "imagenet", "version": 5}])),
    "r08": ("line\nbreak", json.dumps([1, {"name": "x.y", "version": "v", "uri": "u"}])),
    "r09": ("a\\b", ""),
    "r10": ("ǅungla", json.dumps([{"name": "imagenet", "version": "V2.1", "uri": "s3://B"}])),
    "r11": ("RUN-11", json.dumps([{"name": "", "version": "v2.1"}])),
}


class _OneClient:
    def __init__(self, client):
        self._client = client

    def client(self):
        return contextlib.nullcontext(self._client)


@pytest.fixture(scope="module")
def stubs(seeded):  # noqa: F811
    """(SQL stub, held-copy stub) over the seeded "vision" project, its run rows replaced by a
    newer version carrying the names and datasets of ROWS."""
    # the seed replays r02's loss points past the writer: recount as the writer would (see
    # test_query_cache.stubs), so both paths state the same summary
    ReplacedPoints(seeded.client, seeded.database).recount({("vision", "r02", "user", "loss")})
    rows = [
        _run_row("vision", rid, int(rid[1:]), name=name, datasets=datasets, version=10)
        for rid, (name, datasets) in ROWS.items()
    ]
    cols = list(rows[0])
    seeded.client.insert(f"{seeded.database}.runs", [[r[c] for c in cols] for r in rows], column_names=cols)
    cache = ReadCache(_OneClient(seeded.client), seeded.database)
    plain = InProcessServer(
        QueryServicer(seeded.client, seeded.database, seeded.artifact_store, None)
    ).start()
    held = InProcessServer(
        QueryServicer(seeded.client, seeded.database, seeded.artifact_store, None, cache=cache)
    ).start()
    with grpc.insecure_channel(plain.endpoint) as a, grpc.insecure_channel(held.endpoint) as b:
        yield query_pb2_grpc.QueryServiceStub(a), query_pb2_grpc.QueryServiceStub(b), cache
    plain.stop()
    held.stop()


def _same(stubs, request) -> dict | tuple:
    """Both servicers' answers (JSON form, or the error code), asserted equal; returns it."""
    sql, held, _ = stubs

    def call(stub):
        try:
            return json_format.MessageToDict(stub.SearchRuns(request))
        except grpc.RpcError as exc:
            return ("error", exc.code(), exc.details())

    expected, got = call(sql), call(held)
    if got != expected and isinstance(got, dict):  # name the first differing run and field
        for a, b in zip(got.get("runs", []), expected.get("runs", []), strict=False):
            assert a == b, request
    assert got == expected, request
    return got


def _ids(answer) -> list[str]:
    return [r["runId"] for r in answer.get("runs", [])]


# filter -> the runs it must match (from ROWS and the seed: val_f1 last = 0.5 + 0.04 * i)
CASES = {
    'datasets.imagenet = "v2.1"': ["r01", "r02", "r04"],
    'datasets.imagenet = "v2.1" and metrics.val_f1 > 0.6': ["r04"],
    'datasets.imagenet.version != "v2.1"': ["r02", "r07", "r10"],  # some other reference
    'not datasets.imagenet = "v2.1"': ["r00", "r03", "r05", "r06", "r07", "r08", "r09", "r10", "r11"],
    'datasets.imagenet not in ("v2.1")': ["r00", "r03", "r05", "r06", "r07", "r08", "r09", "r10", "r11"],
    'datasets.imagenet ~ "V2"': ["r01", "r02", "r04", "r10"],
    'datasets.imagenet ilike "v2%"': ["r01", "r02", "r04", "r10"],
    'datasets.imagenet like "v2%"': ["r01", "r02", "r04"],
    'datasets.imagenet = ""': ["r07"],  # a version that is not text reads as ""
    f'datasets.coco.hash = "{SHA}"': ["r03"],
    'datasets.coco in ("2017", "x")': ["r04"],
    'datasets.imagenet.uri like "s3://b/%"': ["r01", "r02"],
    'datasets.imagenet.uri >= "s3://b/in2"': ["r02"],
    'datasets.x.y = "v"': ["r08"],
    'datasets.`x.y`.uri = "u"': ["r08"],
    'datasets.`é-set` = "ÿ"': ["r06"],
    'datasets.name = "coco"': ["r03", "r04"],
    'datasets.name in ("é-set", "x.y")': ["r06", "r08"],
    'datasets.name = ""': ["r08", "r11"],  # a non-object item and a nameless reference
    'datasets.digest = "v2.1"': ["r01", "r02", "r04", "r11"],
    'datasets.nothing = "v2.1"': [],
    "attributes.status = 'FINISHED' and params.optimizer = 'adam'": ["r02", "r04", "r08", "r10"],
    'attr.run_name like "a_b"': ["r04", "r05", "r09"],
    'run_name like "a\\\\%b"': ["r04"],
    'run_name like "a\\\\_b"': ["r05"],
    'run_name like "a\\\\\\\\b"': ["r09"],
    # ilike over non-ASCII text: ClickHouse's folding depends on the pattern's shape (the Kelvin
    # sign ilike 'k' but not '%k%'); the held copy leaves it to SQL, so both say what SQL says
    'run_name ilike "k%"': None,
    'run_name ilike "%k%"': None,
    'run_name ilike "s%"': None,
    'run_name ilike "i%"': None,
    'run_name ilike "école"': None,
    'run_name like "école"': ["r06"],
    'run_name ilike "ǆ%"': None,
    'tags.dataset ilike "V2%"': ["r00", "r02", "r04", "r06", "r08", "r10"],  # ASCII: held copy answers
    'run_name like "line%"': ["r08"],  # % spans a newline
    'run_name like "line_break"': ["r08"],
    'name not like "%a%"': ["r01", "r06", "r07", "r11"],
    'tags.mlflow.runName = "RUN-11"': ["r11"],
    'tags.dataset like "v2%" and start_time >= 1700000300000': ["r06", "r08", "r10"],
    "params.\"model.depth\" = 24 and params.lr like '%'": ["r06", "r07", "r08", "r09", "r10", "r11"],
    "params.optimizer ilike '%drop%'": ["r01", "r03", "r05", "r07", "r09", "r11"],
    "params.optimizer not ilike 'ADAM'": ["r01", "r03", "r05", "r07", "r09", "r11"],
    # MLflow's IS NULL / IS NOT NULL: whether the run has the field
    "datasets.imagenet IS NULL": ["r00", "r03", "r05", "r06", "r08", "r09", "r11"],
    "datasets.name is not null": ["r01", "r02", "r03", "r04", "r06", "r07", "r08", "r10", "r11"],
    "metrics.grad_norm is not null": ["r01"],
    "metrics.long is null": [f"r{i:02d}" for i in range(1, 12)],  # held by key only: answered from SQL
    "tags.team is not null and params.nothing is null and summary.best_acc is not null": sorted(ROWS),
    "params.lr is null or tags.nope is not null": [],
    "attributes.created >= 1700000600000": ["r10", "r11"],
}


@pytest.mark.parametrize("flt", list(CASES))
def test_new_filters_answer_alike_on_both_paths_and_as_the_rows_say(stubs, flt):
    answer = _same(stubs, query_pb2.SearchRunsRequest(project="vision", filter=flt, order_by=["run_id"]))
    if CASES[flt] is not None:
        assert _ids(answer) == CASES[flt]


def test_held_copy_answered(stubs):
    """The comparisons mean something only if the held copy was used for the project."""
    _, held, cache = stubs
    held.SearchRuns(query_pb2.SearchRunsRequest(project="vision", filter='datasets.name = "coco"'))
    assert cache.ready("vision") is not None and len(cache.ready("vision").runs) == 12


@pytest.mark.parametrize(
    "order",
    [
        ["metrics.val_f1 desc"],
        ["metrics.val_f1 DESC, run_id"],
        ["params.optimizer asc, -start"],
        ["datasets.imagenet DESC", "run_id"],
        ["datasets.imagenet"],
        ["-datasets.imagenet.uri"],
        ["datasets.coco.hash desc, metrics.val_f1"],
        ["attributes.start_time DESC"],
        ["run_name desc"],
        ["tags.mlflow.runName"],
    ],
)
def test_sort_keys_answer_alike_on_both_paths(stubs, order):
    token, seen = "", []
    while True:  # pages of 5: the order is total and stable across pages
        answer = _same(
            stubs,
            query_pb2.SearchRunsRequest(project="vision", order_by=order, page_size=5, page_token=token),
        )
        seen += _ids(answer)
        token = answer.get("nextPageToken", "")
        if not token:
            break
    assert sorted(seen) == sorted(ROWS)


def test_sort_directions_mean_what_they_say(stubs):
    sql, _, _ = stubs

    def ids(*order):
        return _ids(json_format.MessageToDict(sql.SearchRuns(query_pb2.SearchRunsRequest(project="vision",
                                                                                         order_by=order))))  # fmt: skip

    by_f1 = ids("metrics.val_f1 desc")
    assert by_f1 == ids("-metrics.val_f1") == ids("metrics.val_f1 DeSc")
    assert by_f1 == list(reversed(ids("metrics.val_f1 ASC")))
    assert by_f1[0] == "r11"
    # the first reference to imagenet orders the runs; runs without one come last either way
    assert ids("datasets.imagenet, run_id")[:5] == ["r07", "r10", "r02", "r01", "r04"]
    assert ids("datasets.imagenet desc, run_id")[:5] == ["r01", "r04", "r02", "r10", "r07"]


def test_searched_runs_carry_their_datasets_on_both_paths(stubs):
    """SearchRuns fills Run.datasets (in the order recorded), row-wise on both paths; the held
    copy's columnar reply carries datasets.<name> columns (the first reference's version)."""
    answer = _same(stubs, query_pb2.SearchRunsRequest(project="vision", order_by=["run_id"]))
    by_id = {r["runId"]: r.get("datasets", []) for r in answer["runs"]}
    assert by_id["r02"] == [{"name": "imagenet", "version": "v1.0"},
                            {"name": "imagenet", "version": "v2.1", "uri": "s3://b/in2"}]  # fmt: skip
    assert by_id["r00"] == [] and by_id["r05"] == []
    _, held, _ = stubs
    reply = held.SearchRuns(
        query_pb2.SearchRunsRequest(
            project="vision",
            filter='run_id in ("r01", "r02", "r03", "r04")',
            order_by=["run_id"],
            columnar=True,
        )  # fmt: skip
    )
    assert reply.HasField("table")
    columns = {c.name: c for c in reply.table.values}
    assert list(columns["datasets.imagenet"].texts) == ["v2.1", "v1.0", "v2.1"]
    assert bytes(columns["datasets.imagenet"].kinds) == bytes([3, 3, 0, 3])
    assert list(columns["datasets.coco"].texts) == [SHA, "2017"]


@pytest.mark.parametrize(
    ("flt", "says"),
    [
        ('attributes.artifact_uri = "x"', "Api.run(project, run_id)['artifacts']"),
        ('datasets.context = "train"', 'datasets.<name> = "<version>"'),
        ("metrics.val_f1 like '0.%'", "'like' matches text"),
        ("attributes.status is null", "every run has state"),
    ],
)
def test_refusals_are_invalid_argument_with_the_runstream_spelling(stubs, flt, says):
    code = _same(stubs, query_pb2.SearchRunsRequest(project="vision", filter=flt))
    assert code[1] == grpc.StatusCode.INVALID_ARGUMENT and says in code[2] and "^" in code[2]


# ---------------------------------------------------------------- token soup on both paths

_FIELDS = (
    "datasets.imagenet", "datasets.coco.hash", "datasets.imagenet.uri", "datasets.name", "datasets.digest",
    "datasets.`x.y`", "attributes.status", "attr.run_name", "run.start_time", "tags.mlflow.runName",
    "params.optimizer", 'params."model.depth"', "metrics.val_f1", "name", "status", "tags.dataset",
)  # fmt: skip
_OPS = ("=", "!=", "<", ">=", "~", "like", "ilike", "not like", "not ilike", "in", "not in", "is null",
        "is not null")  # fmt: skip
_VALUES = ("'v2.1'", '"V2%"', "'%'", "'_'", '"a\\\\%b"', "'k%'", '"é%"', "'FINISHED'", "12", "0.6", '""',
           "'%a%'", "'ÿ'", "1700000300000")  # fmt: skip
_ORDERS = ("datasets.imagenet desc", "-datasets.coco.uri", "metrics.val_f1 ASC", "run_name DESC, -start",
           "attributes.status", "tags.mlflow.runName asc", "datasets.`x.y` DESC")  # fmt: skip


def test_random_filters_answer_alike_on_both_paths(stubs):
    """Random filters and sort keys of the new spellings: both paths give the same runs in the
    same order, or the same refusal, and nothing is an internal error. Most of them are valid
    (the count is asserted), so the comparison is about answers, not only refusals."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    term = st.builds(
        lambda f, op, v, w: f"{f} {op} ({v}, {w})" if op.endswith("in") else f"{f} {op}" if op.startswith("is")
        else f"{f} {op} {v}",
        st.sampled_from(_FIELDS), st.sampled_from(_OPS), st.sampled_from(_VALUES), st.sampled_from(_VALUES),
    )  # fmt: skip
    joined = st.lists(st.tuples(st.sampled_from(("and", "or", "and not")), term), max_size=3)
    answered = []

    @settings(max_examples=200, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
    @given(term, joined, st.lists(st.sampled_from(_ORDERS), max_size=2))
    def check(first, rest, order):
        flt = " ".join([first, *(f"{j} {t}" for j, t in rest)])
        answer = _same(stubs, query_pb2.SearchRunsRequest(project="vision", filter=flt, order_by=order,
                                                          page_size=5))  # fmt: skip
        assert isinstance(answer, dict) or answer[1] == grpc.StatusCode.INVALID_ARGUMENT, answer
        answered.append(isinstance(answer, dict))

    check()
    assert sum(answered) >= 40, f"{sum(answered)} of {len(answered)} filters were valid"
