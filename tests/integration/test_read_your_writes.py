"""Reads through the query service's read cache (query/read_cache.py) see every acknowledged
write and stay exact: the StoreWriter's hook updates the held copy before write() returns (so
before ingest acks), a replayed request changes nothing, and a write that replaces stored points
(a re-logged step, or a resend after a restart that ClickHouse drops as a repeat) leaves the
summaries equal to history.

The in-process tests wire StoreWriter -> ReadCache -> QueryServicer as `runstream server` does
on the embedded bus, call write() as the bus does, and read through the servicer's RPC methods;
each asserts the answer came from the held copy. The last test goes through the real server
process with the public SDK and runstream.Api."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

import runstream
from runstream.v1 import ingest_pb2 as pb
from runstream.v1 import query_pb2
from runstream_services.artifacts.local import LocalArtifactStore
from runstream_services.bus.base import Envelope, WriteResult
from runstream_services.config import ServerSettings
from runstream_services.errors import InvalidArgument
from runstream_services.query.read_cache import ReadCache
from runstream_services.query.service import QueryServicer
from runstream_services.storage.clickhouse import ClientPool, connect
from runstream_services.storage.migrations import migrate
from runstream_services.writers.store import StoreWriter
from tests.sdk_options import quick_sdk_options

PROJECT = "ryw"


class Wired:
    """A StoreWriter and a QueryServicer with a read cache on one chDB database."""

    def __init__(self, dsn: str, database: str, artifacts, sole_writer: bool = False):
        self.client = connect(dsn)
        migrate(self.client, database)
        self.dsn, self.db, self.artifacts = dsn, database, artifacts
        self.sole_writer = sole_writer
        self.readers = ClientPool(dsn, size=1)
        self.cache = ReadCache(self.readers, database)
        self.writer = self.new_writer()
        self.query = QueryServicer(
            self.client, database, artifacts, None, readers=self.readers, cache=self.cache
        )
        self.sql = QueryServicer(self.client, database, artifacts, None, readers=self.readers)

    def new_writer(self) -> StoreWriter:
        """A writer that remembers nothing, as after a restart, wired to the cache as the server
        wires it (a sole writer also tells the cache which projects are new)."""
        writer = StoreWriter(
            self.client, self.db, self.artifacts, ServerSettings(), sole_writer=self.sole_writer
        )
        writer.subscribe(self.cache.on_stored)
        if self.sole_writer:
            writer.subscribe_projects(self.cache.on_new_project)
        return writer

    def restart_writer(self) -> None:
        self.writer.close()
        self.writer = self.new_writer()

    def write(self, *envelopes: Envelope) -> WriteResult:
        return self.writer.write(list(envelopes))

    def call(self, method: str, request, servicer=None):
        servicer = servicer or self.query
        return asyncio.run(getattr(servicer, method)(request, None))

    def history(self, run_id: str, key: str, servicer=None) -> list[tuple[int, float]]:
        async def collect():
            out = []
            servicer_ = servicer or self.query
            request = query_pb2.GetHistoryRequest(project=PROJECT, run_id=run_id, keys=[key])
            async for page in servicer_.GetHistory(request, None):
                steps, values = np.frombuffer(page.steps, "<i8"), np.frombuffer(page.values, "<f8")
                out += zip(steps.tolist(), values.tolist(), strict=True)
            return out

        return asyncio.run(collect())

    def summary(self, run_id: str, key: str, servicer=None) -> dict:
        run = self.call("GetRun", query_pb2.GetRunRequest(project=PROJECT, run_id=run_id), servicer).run
        found = [m for m in run.metrics if m.key == key]
        assert len(found) == 1, run.metrics
        m = found[0]
        return {"last": m.last, "min": m.min, "max": m.max, "count": m.count, "last_step": m.last_step}


@pytest.fixture
def wired(chdb_dsn, database, tmp_path):
    w = Wired(chdb_dsn, database, LocalArtifactStore(tmp_path / "artifacts"))
    yield w
    w.writer.close()


def start(client_id: str, seq: int, run_id: str, **config) -> Envelope:
    body = pb.RunStart(project=PROJECT, run_id=run_id, name=run_id)
    for k, v in config.items():
        body.config[k].number = v
    return Envelope.from_request(pb.IngestRequest(seq=seq, client_id=client_id, run_start=body))


def update(client_id: str, seq: int, run_id: str, **summary) -> Envelope:
    body = pb.RunUpdate(project=PROJECT, run_id=run_id)
    for k, v in summary.items():
        body.summary[k].number = v
    return Envelope.from_request(pb.IngestRequest(seq=seq, client_id=client_id, run_update=body))


def points(client_id: str, seq: int, run_id: str, steps, values, key="loss", received_ms=None) -> Envelope:
    n = len(steps)
    batch = pb.MetricBatch(
        project=PROJECT, run_id=run_id, keys=[key], steps=np.asarray(steps, "<i8").tobytes(),
        values=np.asarray(values, "<f8").tobytes(), times_ms=np.full(n, 1_700_000_000_000, "<i8").tobytes(),
    )  # fmt: skip
    request = pb.IngestRequest(seq=seq, client_id=client_id, metrics=batch)
    return Envelope.from_request(request, received_ms=received_ms)


def search(w: Wired, flt: str, order=("run_id",), servicer=None) -> list[str]:
    request = query_pb2.SearchRunsRequest(project=PROJECT, filter=flt, order_by=list(order))
    return [r.run_id for r in w.call("SearchRuns", request, servicer).runs]


def test_every_acked_write_is_read_back_through_the_cache(wired):
    w = wired
    w.write(start("c", 1, "a", lr=0.1))
    assert search(w, "") == ["a"]  # loads the project: from here on, the hook keeps it current
    loads = w.cache.loads
    assert w.cache.ready(PROJECT) is not None

    w.write(points("c", 2, "a", [0, 1, 2], [3.0, 2.0, 1.0]))
    assert w.history("a", "loss") == [(0, 3.0), (1, 2.0), (2, 1.0)]
    assert w.summary("a", "loss") == {"last": 1.0, "min": 1.0, "max": 3.0, "count": 3, "last_step": 2}
    assert search(w, "metrics.loss < 1.5") == ["a"]

    w.write(start("d", 1, "b", lr=0.5), update("c", 3, "a", best=0.9))
    assert search(w, "params.lr > 0.2") == ["b"]
    assert search(w, "summary.best = 0.9") == ["a"]
    assert search(w, "", ["-params.lr"]) == ["b", "a"]

    w.write(points("c", 4, "a", [3], [math.nan]), points("d", 2, "b", [0], [7.0], key="acc"))
    assert w.summary("a", "loss") == {"last": pytest.approx(math.nan, nan_ok=True), "min": 1.0, "max": 3.0,
                                      "count": 4, "last_step": 3}  # fmt: skip
    keys = w.call("ListKeys", query_pb2.ListKeysRequest(project=PROJECT))
    assert list(keys.metric_keys) == ["acc", "loss"] and list(keys.param_keys) == ["lr"]
    assert w.cache.loads == loads  # every answer above came from the held copy, kept current by the hook
    for run_id, key in (("a", "loss"), ("b", "acc")):  # and it equals what SQL says
        assert repr(w.history(run_id, key)) == repr(w.history(run_id, key, w.sql))  # NaN == NaN
        assert repr(w.summary(run_id, key)) == repr(w.summary(run_id, key, w.sql))


def test_a_replayed_request_is_not_counted_twice(wired):
    w = wired
    w.write(start("c", 1, "a"))
    search(w, "")
    batch = points("c", 2, "a", [0, 1], [1.0, 2.0])
    w.write(batch)
    w.write(batch)  # a resend of the same request (same client and seq)
    w.write(points("c", 2, "a", [0, 1], [1.0, 2.0]))  # ... and the same bytes in a new envelope
    assert w.summary("a", "loss")["count"] == 2
    assert w.history("a", "loss") == [(0, 1.0), (1, 2.0)]
    assert search(w, "metrics.loss.count = 2") == ["a"]
    assert w.cache.ready(PROJECT) is not None


def test_a_resend_after_restart_that_clickhouse_drops_leaves_summaries_exact(wired):
    """After a restart the writer no longer knows seq 2 was stored (its bookkeeping row may not
    have been written yet), so the resend reaches the insert, which ClickHouse drops as a repeat
    (same dedup token) while the hook still sees the block; meanwhile seq 3 re-logged step 1.
    History keeps seq 3's value; the held copy must not bring the resend's value back."""
    w = wired
    w.write(start("c", 1, "a"))
    search(w, "")
    w.write(points("c", 2, "a", [0, 1], [1.0, 2.0], received_ms=1_000))
    w.write(points("c", 3, "a", [1], [5.0], received_ms=2_000))
    assert w.history("a", "loss") == [(0, 1.0), (1, 5.0)]
    w.restart_writer()
    w.client.command(f"TRUNCATE TABLE {w.db}.client_seqs")  # the bookkeeping a crash lost
    assert (
        w.write(points("c", 2, "a", [0, 1], [1.0, 2.0], received_ms=3_000)).stored == 1
    )  # reached the insert
    assert w.history("a", "loss", w.sql) == [(0, 1.0), (1, 5.0)]  # what is stored
    assert w.history("a", "loss") == [(0, 1.0), (1, 5.0)]
    assert w.summary("a", "loss") == {"last": 5.0, "min": 1.0, "max": 5.0, "count": 2, "last_step": 1}
    assert search(w, "metrics.loss.max = 5") == ["a"]


def test_re_logged_steps_keep_summaries_exact(wired):
    w = wired
    w.write(start("c", 1, "a"))
    search(w, "")
    w.write(points("c", 2, "a", [0, 1, 2], [1.0, 9.0, 3.0]))
    w.write(points("c", 3, "a", [1, 2], [2.0, 0.5]))  # re-logs steps 1 and 2
    expected = {"last": 0.5, "min": 0.5, "max": 2.0, "count": 3, "last_step": 2}
    assert w.summary("a", "loss") == expected
    assert w.summary("a", "loss", w.sql) == expected
    assert search(w, "metrics.loss.max > 5") == []
    assert w.history("a", "loss") == [(0, 1.0), (1, 2.0), (2, 0.5)]


def test_history_without_project_finds_runs_acked_after_the_index_was_read(wired):
    w = wired
    w.write(start("c", 1, "a"), points("c", 2, "a", [0], [1.0]))
    request = query_pb2.GetHistoryRequest(run_id="a", keys=["loss"])

    def history():
        async def collect():
            return [p async for p in w.query.GetHistory(request, None)]

        return asyncio.run(collect())

    assert len(history()) == 1  # reads the run index once; the hook keeps it current
    w.write(start("d", 1, "b"), points("d", 2, "b", [0], [2.0]))
    request = query_pb2.GetHistoryRequest(run_id="b", keys=["loss"])
    assert np.frombuffer(history()[0].values, "<f8").tolist() == [2.0]
    other = pb.RunStart(project="elsewhere", run_id="b")
    w.write(Envelope.from_request(pb.IngestRequest(seq=3, client_id="d", run_start=other)))
    with pytest.raises(InvalidArgument, match="several projects"):
        history()
    assert w.cache.indexed_projects("b") == ["elsewhere", PROJECT]


def test_a_project_first_written_by_a_sole_writer_is_read_without_a_load(chdb_dsn, database, tmp_path):
    """A project with no run when the (sole) writer started is held from its first run on, so
    its reads load nothing from SQL and still equal SQL's answers; a project that had runs
    before is loaded on its first read, as before."""
    w = Wired(chdb_dsn, database, LocalArtifactStore(tmp_path / "artifacts"), sole_writer=True)
    try:
        old = pb.RunStart(project="older", run_id="o", name="o")
        w.write(Envelope.from_request(pb.IngestRequest(seq=1, client_id="e", run_start=old)))
        w.restart_writer()  # "older" now has a run in the store the new writer starts from
        assert w.cache.ready("older") is not None  # born under the first writer: held
        w.cache.clear()

        w.write(start("c", 1, "a", lr=0.1), points("c", 2, "a", [0, 1, 2], [3.0, 2.0, 1.0]))
        w.write(start("d", 1, "b", lr=0.5), update("c", 3, "a", best=0.9))
        w.write(points("d", 2, "b", [0, 1], [7.0, 6.0], key="acc"))
        w.write(Envelope.from_request(pb.IngestRequest(seq=2, client_id="e", run_update=pb.RunUpdate(
            project="older", run_id="o"))))  # fmt: skip
        assert w.cache.ready("older") is None  # not new to this writer: never held unread
        assert w.cache.ready(PROJECT) is not None

        for flt, order in (("", ["run_id"]), ("params.lr > 0.2", []), ("metrics.loss.count = 3", []),
                           ("summary.best = 0.9", []), ("", ["-metrics.acc"])):  # fmt: skip
            assert search(w, flt, order) == search(w, flt, order, w.sql)
        for run_id, key in (("a", "loss"), ("b", "acc")):
            assert repr(w.history(run_id, key)) == repr(w.history(run_id, key, w.sql))
            assert w.summary(run_id, key) == w.summary(run_id, key, w.sql)
        assert search(w, "metrics.loss.count = 3") == ["a"]
        assert w.cache.loads == 0  # every answer above came from the copy held since birth

        request = query_pb2.SearchRunsRequest(project="older")
        assert [r.run_id for r in w.call("SearchRuns", request).runs] == ["o"]
        assert w.cache.loads == 1  # the older project was read from SQL
    finally:
        w.writer.close()


def test_a_project_let_go_unread_at_the_backlog_bound_is_read_whole_from_sql(
    chdb_dsn, database, tmp_path, monkeypatch
):
    """A project held from birth whose backlog reaches MAX_BACKLOG_POINTS is let go unapplied
    (applying it stalled every ack, issue 11): its first read loads it from SQL and sees every
    point written before and after, as the SQL-only service does."""
    from runstream_services.query import read_cache

    monkeypatch.setattr(read_cache, "MAX_BACKLOG_POINTS", 6)
    w = Wired(chdb_dsn, database, LocalArtifactStore(tmp_path / "artifacts"), sole_writer=True)
    try:
        w.write(start("c", 1, "a"), points("c", 2, "a", [0, 1, 2], [3.0, 2.0, 1.0]))
        assert (
            w.cache._projects[PROJECT].backlog is not None
        )  # held from birth, unread (ready() would read it)
        w.write(points("c", 3, "a", [3, 4, 5], [0.5, 0.4, 0.3]))  # 6 points: the bound
        assert PROJECT not in w.cache._projects and w.cache._backlog_points == 0
        w.write(points("c", 4, "a", [6], [0.2]))  # not held again by later writes
        assert PROJECT not in w.cache._projects

        assert w.history("a", "loss") == [(s, v) for s, v in enumerate([3.0, 2.0, 1.0, 0.5, 0.4, 0.3, 0.2])]
        assert w.cache.loads == 1  # read from SQL once, then held
        assert repr(w.history("a", "loss")) == repr(w.history("a", "loss", w.sql))
        assert w.summary("a", "loss") == w.summary("a", "loss", w.sql)
        w.write(points("c", 5, "a", [7], [0.1]))  # held again: applied as it comes
        assert w.summary("a", "loss")["count"] == 8 and w.cache.loads == 1
    finally:
        w.writer.close()


def test_sdk_reads_its_writes_through_the_public_api(embedded_server, tmp_path):
    """Against the real server: each read follows the ack of the write before it (flush)."""
    with runstream.Api(endpoint=embedded_server.endpoint) as api:
        run = runstream.init(
            project=PROJECT, config={"lr": 0.01}, **quick_sdk_options(embedded_server.endpoint, tmp_path)
        )
        run.flush()
        assert len(api.runs(PROJECT)) == 1  # the project is held from here on
        for step in range(5):
            run.log({"loss": 1.0 / (step + 1)}, step=step)
            run.flush()
            hist = api.history(run.id, keys=["loss"], project=PROJECT)
            assert list(hist.step) == list(range(step + 1))
            assert api.run(PROJECT, run.id)["metrics"]["loss"]["count"] == step + 1
            assert len(api.runs(PROJECT, filter=f"metrics.loss.count = {step + 1}")) == 1
            table = api.runs(PROJECT)  # the columnar reply
            assert table["metrics.loss"].tolist() == [1.0 / (step + 1)] and table["config.lr"].tolist() == [
                0.01
            ]
            curve = api.series(PROJECT, [run.id], ["loss"])  # GetMetricSeries from the held points
            assert curve.x.tolist() == list(range(step + 1))
        run.summary["best"] = 0.5
        run.flush()
        assert api.run(PROJECT, run.id)["summary"] == {"best": 0.5}
        assert run.finish()
        assert api.run(PROJECT, run.id)["state"] == "finished"
