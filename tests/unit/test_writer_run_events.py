"""The writer's run-event path under many small runs (issue 11): a block of whole runs is stored
once, a failed row insert records nothing, the in-memory key index answers without a query, the
bookkeeping timer does not flush again right after another flush, the run cache weighs tags."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from runstream.v1 import ingest_pb2 as pb
from runstream.v1 import types_pb2
from runstream_services.bus.base import Envelope
from runstream_services.writers.bookkeeping import BackgroundRows
from runstream_services.writers.key_index import KeyIndex
from runstream_services.writers.store import StoreWriter


@pytest.fixture
def writer(sole_writer):
    return sole_writer


def run_envelopes(client_id: str, run_id: str, first_seq: int = 1) -> list[Envelope]:
    """run_start with config, one metric batch, run_finish: one small run as the SDK sends it."""
    config = {f"p{j}": types_pb2.Value(number=j + 0.5) for j in range(5)}
    batch = pb.MetricBatch(
        project="proj",
        run_id=run_id,
        keys=["loss", "acc"],
        key_index=(np.arange(6) % 2).astype("<u2").tobytes(),
        steps=np.repeat(np.arange(3), 2).astype("<i8").tobytes(),
        values=np.arange(6, dtype="<f8").tobytes(),
    )
    bodies = [
        {"run_start": pb.RunStart(project="proj", run_id=run_id, config=config)},
        {"metrics": batch},
        {"run_finish": pb.RunFinish(project="proj", run_id=run_id, state=types_pb2.RUN_STATE_FINISHED)},
    ]
    return [
        Envelope.from_request(pb.IngestRequest(seq=first_seq + i, client_id=client_id, **body))
        for i, body in enumerate(bodies)
    ]


def q(w: StoreWriter, sql: str):
    return w.client.query(sql.replace("DB", w.db)).result_rows


def test_a_block_of_runs_is_stored_once_with_rows_and_points_together(writer):
    block = [
        env for r in range(20) for env in run_envelopes(f"c{r % 4}", f"run-{r}", first_seq=3 * (r // 4) + 1)
    ]
    result = writer.write(block, token="blk:t:1")
    assert (result.stored, result.duplicates, result.points) == (60, 0, 120)
    again = writer.write(block, token="blk:t:2")  # a resend of the whole block
    assert (again.stored, again.duplicates) == (0, 60)
    assert q(writer, "SELECT count(), countIf(state = 'finished') FROM DB.runs FINAL") == [(20, 20)]
    assert q(writer, "SELECT count() FROM DB.params FINAL") == [(100,)]
    assert q(writer, "SELECT count() FROM DB.metrics FINAL") == [(120,)]
    assert q(writer, "SELECT sum(count) FROM DB.metric_summaries") == [(120,)]


def test_a_failed_row_insert_fails_the_block_and_nothing_is_recorded(writer, monkeypatch):
    """A row table's failed insert fails write(), leaves the requests unrecorded, and a resend
    then stores each run and point once (the summaries count each point once)."""
    original = writer._insert_rows
    failed = threading.Event()

    def flaky(table, columns, data, token):
        if table == "runs" and not failed.is_set():
            failed.set()
            raise RuntimeError("injected: runs insert failed")
        return original(table, columns, data, token)

    monkeypatch.setattr(writer, "_insert_rows", flaky)
    block = run_envelopes("client-a", "run-1") + run_envelopes("client-b", "run-2")
    with pytest.raises(RuntimeError, match="injected"):
        writer.write(block, token="blk:f:1")
    assert not writer.is_stored("client-a", 1) and not writer.is_stored("client-b", 3)
    assert writer.run_state("proj", "run-1") in (None, "finished")  # the cache was dropped: reread
    result = writer.write(block, token="blk:f:2")  # the bus resends it as a new block
    assert result.stored == 6
    assert q(writer, "SELECT run_id, state FROM DB.runs FINAL ORDER BY run_id") == [
        ("run-1", "finished"),
        ("run-2", "finished"),
    ]
    assert q(writer, "SELECT count() FROM DB.metrics FINAL") == [(12,)]
    assert q(
        writer, "SELECT key, count FROM DB.metric_summaries FINAL WHERE run_id = 'run-1' ORDER BY key"
    ) == [
        ("acc", 3),
        ("loss", 3),
    ]


def test_key_index_answers_absent_without_false_negatives():
    empty = KeyIndex()
    assert not empty.may_contain(("proj", "run-1"))
    empty.add(("proj", "run-1"))
    assert empty.may_contain(("proj", "run-1"))
    keys = [("proj", f"run-{i}") for i in range(1000)]
    loaded = KeyIndex(keys)
    assert all(loaded.may_contain(k) for k in keys)
    absent = [("proj", f"other-{i}") for i in range(1000)]
    assert sum(loaded.may_contain(k) for k in absent) <= 1  # a 64-bit hash collision at most


def test_bookkeeping_timer_is_due_a_full_interval_after_any_flush():
    """A flush by someone else (the embedded bus records its blocks every second) restarts the
    timer, so the two clocks do not each insert a part for the same rows."""
    inserts: list[tuple[str, int]] = []
    rows = BackgroundRows(
        lambda table, columns, data: inserts.append((table, len(data))), {"audit_log": ("a",)}, interval_s=1.0
    )
    try:
        rows.add("audit_log", [[1]])
        assert rows.flush() and inserts == [("audit_log", 1)]
        flushed = rows._flushed_at
        assert rows.due_in(flushed + 0.25) == pytest.approx(0.75)
        assert rows.due_in(flushed + 1.0) <= 0
        rows.add("audit_log", [[2], [3]])
    finally:
        rows.close()
    assert inserts[-1] == ("audit_log", 2)  # close() writes what was pending


def test_run_cache_counts_the_bytes_of_tags():
    """A run with large tags weighs its tags' text: the byte bound drops it, not only the count."""
    from runstream_services.run_state import RunRow
    from runstream_services.writers.run_cache import RunCache

    cache = RunCache(max_runs=100, max_bytes=100_000)
    cache[("p", "small")] = RunRow(project="p", run_id="small")
    cache[("p", "big")] = RunRow(project="p", run_id="big", tags={"k": "v" * 200_000})
    assert ("p", "small") not in cache and ("p", "big") in cache
    assert cache.nbytes > 200_000
