"""What the store promises about metric points, against the in-process chDB engine: last write wins
by send order, summaries agree with history (distinct points, last, finite min/max), and a writer
that gets a partition back forgets what it cached (issue 10, items 6, 7 and 12)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runstream.v1 import ingest_pb2 as pb
from runstream_services.artifacts.local import LocalArtifactStore
from runstream_services.bus.base import Envelope
from runstream_services.config import ServerSettings
from runstream_services.query import sql_runs
from runstream_services.storage.clickhouse import connect
from runstream_services.storage.migrations import migrate
from runstream_services.writers.store import StoreWriter


def _writer(chdb_dsn, database, tmp_path) -> StoreWriter:
    client = connect(chdb_dsn)
    migrate(client, database)
    return StoreWriter(client, database, LocalArtifactStore(tmp_path / "artifacts"), ServerSettings())


@pytest.fixture
def writer(chdb_dsn, database, tmp_path):
    w = _writer(chdb_dsn, database, tmp_path)
    w.write([envelope(1, run_start=pb.RunStart(project="proj", run_id="run-1"))])
    yield w
    w.close()


def envelope(seq: int, client_id: str = "client-a", received_ms: int | None = None, **body) -> Envelope:
    return Envelope.from_request(
        pb.IngestRequest(seq=seq, client_id=client_id, **body), received_ms=received_ms
    )


def batch(steps, values, key="loss", rank=0) -> pb.MetricBatch:
    return pb.MetricBatch(
        project="proj",
        run_id="run-1",
        keys=[key],
        steps=np.asarray(steps, "<i8").tobytes(),
        values=np.asarray(values, "<f8").tobytes(),
        rank=rank,
    )


def history(w: StoreWriter, key="loss") -> list[tuple[int, int, float]]:
    return w.client.query(
        f"SELECT rank, step, value FROM {w.db}.metrics FINAL WHERE run_id = 'run-1' AND key = %(k)s "
        "ORDER BY rank, step",
        parameters={"k": key},
    ).result_rows


def summary(w: StoreWriter, key="loss") -> dict:
    """The summary as the query service reads it (sql_runs.run_metric_summaries)."""
    q = sql_runs.run_metric_summaries(w.db, "proj", ["run-1"], [key])
    rows = w.client.query(q.sql, parameters=q.params).result_rows
    (_, _, last, lo, hi, count, last_step) = rows[0]
    return {"last": last, "min": lo, "max": hi, "count": count, "last_step": last_step}


# ---- item 6: NaN/inf only ---------------------------------------------------------------------


def test_a_block_of_only_nan_and_inf_has_no_finite_min_or_max(writer):
    writer.write([envelope(2, metrics=batch([0, 1, 2], [math.nan, math.inf, -math.inf]))])
    raw = writer.client.query(
        f"SELECT min(min), max(max) FROM {writer.db}.metric_summaries WHERE key = 'loss'"
    ).result_rows[0]
    assert raw == (None, None)  # absent, not 0
    s = summary(writer)
    assert math.isnan(s["min"]) and math.isnan(s["max"]) and s["count"] == 3
    writer.write([envelope(3, metrics=batch([3], [2.5]))])  # a finite value arrives later
    s = summary(writer)
    assert (s["min"], s["max"], s["last"]) == (2.5, 2.5, 2.5)


# ---- item 7: last write wins ------------------------------------------------------------------


def test_the_same_step_sent_eight_times_shows_the_last_send_everywhere(writer):
    # same receive ms: the client's seq decides (ties are what made the choice nondeterministic)
    writer.write([envelope(10 + i, received_ms=1_000, metrics=batch([5], [float(i)])) for i in range(8)])
    for i in range(8, 12):  # one at a time, out of seq order of arrival within the same ms
        writer.write([envelope(30 - i, received_ms=1_000, metrics=batch([5], [float(30 - i)]))])
    assert history(writer) == [(0, 5, 22.0)]
    s = summary(writer)
    assert (s["last"], s["count"], s["last_step"], s["min"], s["max"]) == (22.0, 1, 5, 22.0, 22.0)


def test_the_later_position_in_one_batch_wins(writer):
    writer.write([envelope(2, metrics=batch([0, 1, 1, 1, 2], [1.0, 5.0, 6.0, 7.0, 3.0]))])
    assert history(writer) == [(0, 0, 1.0), (0, 1, 7.0), (0, 2, 3.0)]
    s = summary(writer)
    assert (s["count"], s["min"], s["max"]) == (3, 1.0, 7.0)  # 5.0 and 6.0 were replaced


def test_a_resumed_process_re_logging_steps_replaces_them(writer):
    writer.write([envelope(50, client_id="old", received_ms=1_000, metrics=batch(range(10), [1.0] * 10))])
    # a new process (seq restarts at 1) re-logs steps 5..11 later: its values win
    writer.write([envelope(1, client_id="new", received_ms=2_000, metrics=batch(range(5, 12), [2.0] * 7))])
    assert [v for _, _, v in history(writer)] == [1.0] * 5 + [2.0] * 7
    s = summary(writer)
    assert (s["count"], s["last"], s["last_step"]) == (12, 2.0, 11)


def test_ranks_are_separate_points_and_counts_stay_exact_across_keys(writer):
    writer.write([envelope(2, metrics=batch(range(4), [1.0] * 4, rank=0))])
    writer.write([envelope(3, metrics=batch(range(4), [1.0] * 4, rank=1))])  # not a replacement
    writer.write([envelope(4, metrics=batch([3, 4], [9.0, 9.0], rank=1))])  # replaces rank 1 step 3
    assert summary(writer)["count"] == 9
    assert len(history(writer)) == 9


# ---- item 12: a partition that moves away and back --------------------------------------------


def test_forget_makes_a_writer_see_what_another_writer_stored(chdb_dsn, database, tmp_path):
    w1 = _writer(chdb_dsn, database, tmp_path)
    w2 = StoreWriter(w1.client, database, w1.artifact_store, ServerSettings())
    try:
        w1.write([envelope(1, run_start=pb.RunStart(project="proj", run_id="run-1"))], token="p0:0-0")
        w1.write([envelope(2, metrics=batch([0], [1.0]))], token="p0:1-1")
        # the partition moves to w2, which stores the client's next request
        w2.write([envelope(3, metrics=batch([1], [2.0]))], token="p0:2-2")
        w2.flush()
        # ...and back to w1: the Kafka writer calls forget() on assignment; the SDK resends seq 3
        # (its ack was lost) and it arrives at a new offset, so under a new block token
        w1.forget()
        result = w1.write([envelope(3, metrics=batch([1], [2.0]))], token="p0:3-3")
        assert (result.stored, result.duplicates) == (0, 1)
        assert summary(w1)["count"] == 2
    finally:
        w2.close()
        w1.close()


def test_forget_of_some_clients_and_runs_only(writer):
    writer.write([envelope(2, metrics=batch([0], [1.0]))])
    assert writer.is_stored("client-a", 2)
    writer.forget(clients=["someone-else"], runs=[("proj", "other-run")])
    assert "client-a" in writer._done and ("proj", "run-1") in writer._runs
    writer.forget(clients=["client-a"], runs=[("proj", "run-1")])
    assert "client-a" not in writer._done and ("proj", "run-1") not in writer._runs
    assert writer.is_stored("client-a", 2)  # reloaded from the table


def test_batches_arriving_out_of_order_are_no_false_alarm_but_overlaps_are():
    """The common path never recomputes: disjoint step ranges in any order are new points."""
    from runstream_services.writers.replaced_points import ReplacedPoints

    class NoStore:  # a run the store has never seen
        def query(self, *args, **kwargs):
            return type("R", (), {"result_rows": []})()

    points = ReplacedPoints(NoStore(), "db")
    assert points.suspects([batch(range(100, 200), [0.0] * 100)]) == set()
    assert points.suspects([batch(range(0, 100), [0.0] * 100)]) == set()  # earlier steps, later arrival
    assert points.suspects([batch(range(300, 310), [0.0] * 10)]) == set()  # a gap is fine
    assert points.suspects([batch([250], [0.0])]) == set()  # ...and filling it too
    assert points.suspects([batch([305], [1.0])]) == {("proj", "run-1", "user", "loss")}
    assert points.suspects([batch([400, 400], [1.0, 2.0])]) == {("proj", "run-1", "user", "loss")}
    assert points.suspects([batch([0], [1.0], rank=1)]) == set()  # another rank: another point
    two_keys = pb.MetricBatch(
        project="proj", run_id="run-1", keys=["a", "b"], key_index=np.array([0, 1, 0, 1], "<u2").tobytes(),
        steps=np.array([0, 0, 1, 1], "<i8").tobytes(), values=np.zeros(4).tobytes(),
    )  # fmt: skip
    assert points.suspects([two_keys]) == set()  # the same step under two keys


def test_suspects_never_miss_a_stored_point_whatever_the_batch_shapes():
    """Random rank-shaped batches (one step of several keys, the fast path), longer batches and
    batches naming a key twice, against every point remembered: a batch holding a point stored
    before, or one point twice, must be a suspect of its series; below MAX_RANGES per series
    nothing else may be (no false alarm)."""
    import random

    from runstream_services.writers.replaced_points import ReplacedPoints

    class NoStore:
        def query(self, *args, **kwargs):
            return type("R", (), {"result_rows": []})()

    rng = random.Random(11)
    points = ReplacedPoints(NoStore(), "db")
    seen: set[tuple[str, int, int]] = set()  # (key, rank, step) stored
    for _ in range(600):
        rank = rng.randrange(3)
        base = rng.choice([0, 1, 2, 3, 5, 8])
        shape = rng.random()
        if shape < 0.6:  # one step of several keys (maybe one of them twice)
            keys = rng.sample(["a", "b", "c", "d"], rng.randint(1, 4))
            if rng.random() < 0.1:
                keys.append(keys[0])
            step = base + rng.randrange(0, 30)
            pairs = [(k, step) for k in keys]
        else:  # a run of steps of one or two keys
            keys = rng.sample(["a", "b", "c", "d"], rng.randint(1, 2))
            start = base + rng.randrange(0, 30)
            pairs = [(k, s) for s in range(start, start + rng.randint(1, 4)) for k in keys]
        names = sorted(set(keys))
        msg = pb.MetricBatch(
            project="proj", run_id="run-1", rank=rank, keys=keys if shape < 0.6 else names,
            key_index=(np.arange(len(keys)) if shape < 0.6 else np.array([names.index(k) for k, _ in pairs]))
            .astype("<u2").tobytes(),
            steps=np.array([st for _, st in pairs], "<i8").tobytes(), values=np.zeros(len(pairs)).tobytes(),
        )  # fmt: skip
        want = {
            ("proj", "run-1", "user", k)
            for i, (k, st) in enumerate(pairs)
            if (k, rank, st) in seen or (k, st) in pairs[:i]
        }
        found = points.suspects([msg])
        assert want <= found, (pairs, rank)
        assert found == want, (pairs, rank)  # few ranges per series here: exact
        seen |= {(k, rank, st) for k, st in pairs}


def test_a_small_blocks_row_tables_beside_its_points_both_land_or_the_block_fails(writer):
    """A small block inserts its row tables on a second thread beside its points: both are
    stored before write() returns, and a failure of either fails the whole block (not acked)."""
    from runstream.v1 import types_pb2

    finish = pb.RunFinish(project="proj", run_id="run-1", state=types_pb2.RUN_STATE_FINISHED)
    result = writer.write(
        [envelope(2, metrics=batch([0, 1], [1.0, 2.0])), envelope(3, run_finish=finish)], token="blk:par:1"
    )
    assert result.stored == 2 and history(writer) == [(0, 0, 1.0), (0, 1, 2.0)]
    state = writer.client.query(f"SELECT argMax(state, version) FROM {writer.db}.runs WHERE run_id = 'run-1'")
    assert str(state.result_rows[0][0]).lower() == "finished"

    calls = []

    def failing(table, *args, **kwargs):
        calls.append(table)
        raise RuntimeError("row insert failed")

    writer._insert_rows = failing
    update = pb.RunUpdate(project="proj", run_id="run-1", summary={"best": types_pb2.Value(number=1.0)})
    with pytest.raises(RuntimeError, match="row insert failed"):
        writer.write(
            [envelope(4, metrics=batch([2], [3.0])), envelope(5, run_update=update)], token="blk:par:2"
        )
    assert calls and not writer.is_stored("client-a", 4) and not writer.is_stored("client-a", 5)


def test_bookkeeping_rows_being_inserted_still_count_as_pending():
    """A writer reloading a client's stored seqs (after forget(), or an evicted client) reads the
    table plus pending(): a row taken by a flush but not yet in the table must be in pending()."""
    import threading

    from runstream_services.writers.bookkeeping import BackgroundRows

    started, release = threading.Event(), threading.Event()

    def slow_insert(table, columns, data):
        started.set()
        release.wait(10)

    rows = BackgroundRows(slow_insert, {"ingested_requests": ("client_id", "seq")}, interval_s=3600)
    rows.add("ingested_requests", [["c", 1]])
    flusher = threading.Thread(target=rows.flush)
    flusher.start()
    assert started.wait(10)
    assert rows.pending("ingested_requests") == [["c", 1]]
    release.set()
    flusher.join(10)
    assert rows.pending("ingested_requests") == []
    rows.close()
