"""Staged blocks (issue 11): the embedded bus logs a block, then the store writer collects its rows
and shows them to the read cache (`on_staged`) before it inserts them. What must hold:
- a held project shows a block's points before its insert, and exactly once after it;
- a project first read while a staged block was not yet inserted still ends up holding it (its
  snapshot was read without it);
- a block whose inserts fail leaves no point shown that the store does not hold;
- the bus stages only a block it logged (a crash re-forms it); without a block log nothing is
  shown before it is stored.

Everything runs the real StoreWriter, ReadCache and EmbeddedBus on the in-process chDB engine; the
failure test injects the insert's failure, and the bus test looks at the cache from inside the
real insert."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from runstream.v1 import ingest_pb2 as pb
from runstream_services.bus.base import Envelope
from runstream_services.bus.embedded import EmbeddedBus
from runstream_services.query.read_cache import ReadCache
from runstream_services.storage.clickhouse import ClientPool
from runstream_services.writers.store import StoreWriter

PROJECT = "proj"


@pytest.fixture
def store(sole_writer, chdb_dsn, database):
    cache = ReadCache(ClientPool(chdb_dsn, size=1), database)
    sole_writer.subscribe(cache.on_stored)
    sole_writer.subscribe_staged(cache.on_staged, cache.on_failed)
    return sole_writer, cache


def start(seq: int, run_id: str = "run-1") -> Envelope:
    body = pb.RunStart(project=PROJECT, run_id=run_id)
    return Envelope.from_request(pb.IngestRequest(seq=seq, client_id="c", run_start=body))


def points(seq: int, steps, run_id: str = "run-1") -> Envelope:
    steps = np.asarray(steps, "<i8")
    batch = pb.MetricBatch(
        project=PROJECT, run_id=run_id, keys=["loss"], steps=steps.tobytes(),
        values=(steps * 0.5).astype("<f8").tobytes(), times_ms=np.full(len(steps), 1_700_000_000_000, "<i8").tobytes(),
    )  # fmt: skip
    return Envelope.from_request(pb.IngestRequest(seq=seq, client_id="c", metrics=batch))


def held_steps(cache: ReadCache) -> list[int]:
    p = cache.ready(PROJECT)
    assert p is not None, "the project is held"
    series = p.runs["run-1"].series.get(("user", "loss"))
    return [] if series is None else series.step.tolist()


def stored_count(writer: StoreWriter) -> int:
    return writer.client.query(f"SELECT count() FROM {writer.db}.metrics FINAL").result_rows[0][0]


def before_inserts(writer: StoreWriter, monkeypatch, look) -> None:
    """Calls `look()` right before each of the writer's real metric inserts."""
    real_insert = writer._arrow.insert

    def watched_insert(*args, **kwargs):
        look()
        return real_insert(*args, **kwargs)

    monkeypatch.setattr(writer._arrow, "insert", watched_insert)


def test_a_held_project_shows_a_block_before_its_insert_and_once_after(store, monkeypatch):
    writer, cache = store
    writer.write([start(1)])
    assert cache.project(PROJECT) is not None  # held from here on
    inside = {}
    before_inserts(
        writer, monkeypatch, lambda: inside.update(held=held_steps(cache), stored=stored_count(writer))
    )
    writer.write([points(2, [0, 1, 2])], token="blk:a:1", logged=True)
    assert inside == {"held": [0, 1, 2], "stored": 0}, "shown before the insert, which had not run"
    assert held_steps(cache) == [0, 1, 2] and stored_count(writer) == 3
    assert cache._staged == {}, "the stored block closed its staged entry"


def test_a_project_first_read_while_a_block_is_staged_still_gets_that_block(store, monkeypatch):
    writer, cache = store
    writer.write([start(1)])
    loaded = []

    def load():  # the project is loaded now: its snapshot is read from the table, without this block
        p = cache.project(PROJECT)
        loaded.append(p is not None and ("user", "loss") in p.runs["run-1"].series)

    before_inserts(writer, monkeypatch, load)
    writer.write([points(2, [5, 6])], token="blk:a:1", logged=True)
    monkeypatch.undo()
    assert loaded == [False], "loaded while the block was staged, its snapshot without the block"
    assert held_steps(cache) == [5, 6], "on_stored applied the block to the project loaded meanwhile"
    writer.write([points(3, [7])], token="blk:a:2", logged=True)
    assert held_steps(cache) == [5, 6, 7]


def test_a_block_whose_insert_fails_leaves_nothing_shown(store, monkeypatch):
    writer, cache = store
    writer.write([start(1)])
    writer.write([points(2, [0])])
    assert held_steps_after_load(cache) == [0]
    seen = {}

    def broken_insert(*_args, **_kwargs):  # fault injection: the chDB insert fails
        seen["held"] = held_steps(cache)
        raise RuntimeError("simulated insert failure")

    monkeypatch.setattr(writer._arrow, "insert", broken_insert)
    with pytest.raises(RuntimeError, match="simulated"):
        writer.write([points(3, [1, 2])], token="blk:a:1", logged=True)
    assert seen["held"] == [0, 1, 2], "shown while staged"
    assert cache.ready(PROJECT) is None, "dropped: its next read loads what the table holds"
    monkeypatch.undo()
    assert held_steps_after_load(cache) == [0] and stored_count(writer) == 1
    writer.write([points(3, [1, 2])], token="blk:a:2", logged=True)  # the SDK's resend
    # (the writer may recount the series, as its steps were seen once, and the cache then reloads)
    assert held_steps_after_load(cache) == [0, 1, 2] and stored_count(writer) == 3


def held_steps_after_load(cache: ReadCache) -> list[int]:
    assert cache.project(PROJECT) is not None
    return held_steps(cache)


@pytest.mark.parametrize("logged", [True, False])
def test_the_bus_lets_a_logged_block_show_before_its_insert_and_no_other(
    store, tmp_path, monkeypatch, logged
):
    writer, cache = store
    writer.write([start(1)])
    assert cache.project(PROJECT) is not None
    seen = []
    before_inserts(writer, monkeypatch, lambda: seen.append(held_steps(cache)))

    async def main():
        bus = EmbeddedBus(writer, log_dir=tmp_path / "blocks" if logged else None)
        await bus.start()
        result = await bus.publish([points(2, [3, 4])])
        await bus.stop()
        return result

    assert asyncio.run(main()).stored == 1
    # without a block log a crash would lose the block: nothing is shown before it is stored
    assert seen == ([[3, 4]] if logged else [[]])
    assert held_steps(cache) == [3, 4] and stored_count(writer) == 2


def test_a_staged_request_is_a_replay_before_its_insert_records_it(store):
    """A staged request is acked from the bus's log: a resend that comes before its insert (the
    ack was lost) must be known as a replay, or ingest takes a replayed run event for a new one
    (the fuzz found a replayed run_start with resume making a finished run look running)."""
    writer, _ = store
    writer.write([start(1)])
    _, staged = writer.stage([points(2, [0, 1])], token="blk:a:1")
    assert staged is not None
    assert writer.is_stored_now("c", 2) is True and writer.is_stored("c", 2)  # before its insert
    assert writer.is_stored_now("c", 3) is False and not writer.is_stored("c", 3)
    writer.insert_staged([staged], "blk:a:1")
    assert writer.is_stored_now("c", 2) is True and writer.is_stored("c", 2)  # recorded by the insert
    assert not writer._staged_keys, "the insert moved the request from the staged keys to the record"
    assert stored_count(writer) == 2
