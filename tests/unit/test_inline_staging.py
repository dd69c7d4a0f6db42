"""Staging small blocks in the event loop (issue 11): the embedded bus stages a block of up to
INLINE_STAGE_MAX_REQUESTS requests in its event loop when the store writer can decide it from
memory alone (StoreWriter.can_stage_now), which spares two thread hand-offs per block; anything
else is staged in a worker thread, as before. What must hold:
- a small block of metrics and run events of cached runs is staged in the loop, acked, and stored
  once, and the read cache shows it;
- a block that is too large, holds another kind (console lines here), names a run whose row is
  not cached, or names a request another write holds, is staged in a worker thread;
- while another thread holds the read cache's lock (a reader, a project loading), the block goes
  to a worker thread, so the event loop keeps running instead of waiting for that lock.

Everything runs the real StoreWriter, ReadCache and EmbeddedBus on the in-process chDB engine; the
tests record which thread the writer's stage() ran in."""

from __future__ import annotations

import asyncio
import threading

import pytest

from runstream.v1 import ingest_pb2 as pb
from runstream.v1 import types_pb2
from runstream_services.bus import embedded
from runstream_services.bus.base import Envelope
from runstream_services.bus.embedded import EmbeddedBus
from runstream_services.metrics_http import Metrics
from runstream_services.query.read_cache import ReadCache
from runstream_services.storage.clickhouse import ClientPool
from runstream_services.writers.store import StoreWriter
from tests.unit.test_acked_from_log import PROJECT, points, start


def console(client: str, seq: int, run_id: str) -> Envelope:
    batch = pb.ConsoleBatch(
        project=PROJECT, run_id=run_id, streams=[types_pb2.CONSOLE_STREAM_STDOUT], line_numbers=[0],
        times_ms=[1_700_000_000_000], texts=["epoch 1"],
    )  # fmt: skip
    return Envelope.from_request(pb.IngestRequest(seq=seq, client_id=client, console=batch))


@pytest.fixture
def store(sole_writer, chdb_dsn, database, monkeypatch):
    """The writer with a read cache subscribed as the server subscribes it, and the threads its
    stage() ran in, in call order."""
    cache = ReadCache(ClientPool(chdb_dsn, size=1), database)
    sole_writer.subscribe(cache.on_stored)
    sole_writer.subscribe_staged(cache.on_staged, cache.on_failed, cache.free_now)
    threads: list[int] = []
    real_stage = StoreWriter.stage

    def stage(self, envelopes, token):
        threads.append(threading.get_ident())
        return real_stage(self, envelopes, token)

    monkeypatch.setattr(StoreWriter, "stage", stage)
    return sole_writer, cache, threads


def stored(writer: StoreWriter, run_id: str) -> int:
    sql = f"SELECT count() FROM {writer.db}.metrics WHERE run_id = '{run_id}'"  # no FINAL: exact
    return writer.client.query(sql).result_rows[0][0]


async def started_bus(writer: StoreWriter, tmp_path, metrics: Metrics) -> EmbeddedBus:
    bus = EmbeddedBus(writer, log_dir=tmp_path / "blocks", metrics=metrics)
    await bus.start()
    await bus.publish([start("c", "run-1")])
    await asyncio.to_thread(bus.wait_applied, 10)
    return bus


def test_a_small_block_of_cached_runs_is_staged_in_the_event_loop_and_stored_once(store, tmp_path):
    writer, cache, threads = store
    metrics = Metrics()

    async def main():
        bus = await started_bus(writer, tmp_path, metrics)
        try:
            assert await asyncio.to_thread(cache.project, PROJECT) is not None  # held: on_staged applies
            loop_thread = threading.get_ident()
            inline = metrics.get("runstream_writer_inline_stagings_total")
            result = await asyncio.wait_for(bus.publish([points("c", 2, "run-1", [0, 1, 2])]), 10)
            assert result.stored == 1 and result.points == 3
            assert threads[-1] == loop_thread, "staged in the event loop"
            assert metrics.get("runstream_writer_inline_stagings_total") == inline + 1
            series = cache.ready(PROJECT).runs["run-1"].series[("user", "loss")]
            assert series.step.tolist() == [0, 1, 2], "shown by the read cache at its ack"
            await asyncio.to_thread(bus.wait_applied, 10)
            # the same request again (its ack was lost): acked, staged in the loop, stored once
            await asyncio.wait_for(bus.publish([points("c", 2, "run-1", [0, 1, 2])]), 10)
            assert threads[-1] == loop_thread
            await asyncio.to_thread(bus.wait_applied, 10)
        finally:
            await asyncio.wait_for(bus.stop(), 30)

    asyncio.run(main())
    assert stored(writer, "run-1") == 3


@pytest.mark.parametrize("case", ["large", "console", "uncached-run", "claimed"])
def test_a_block_that_needs_more_than_memory_is_staged_in_a_worker_thread(store, tmp_path, monkeypatch, case):
    writer, _, threads = store
    metrics = Metrics()
    if case == "large":
        monkeypatch.setattr(embedded, "INLINE_STAGE_MAX_REQUESTS", 1)

    async def main():
        bus = await started_bus(writer, tmp_path, metrics)
        try:
            loop_thread = threading.get_ident()
            envelopes = [points("c", 2, "run-1", [0])]
            if case == "large":
                envelopes.append(points("c", 3, "run-1", [1]))
            elif case == "console":
                envelopes = [console("c", 2, "run-1")]
            elif case == "uncached-run":
                writer._runs.pop((PROJECT, "run-1"))  # evicted; the run index says it may exist
            else:  # another write holds this request (a resend racing its first copy)
                claim = threading.Event()
                writer._claimed[envelopes[0].idempotency_key] = claim
                threading.Timer(
                    0.3, lambda: (writer._claimed.pop(envelopes[0].idempotency_key), claim.set())
                ).start()
            inline = metrics.get("runstream_writer_inline_stagings_total")
            result = await asyncio.wait_for(bus.publish(envelopes), 10)
            assert result.stored == len(envelopes)
            assert threads[-1] != loop_thread, "staged in a worker thread"
            assert metrics.get("runstream_writer_inline_stagings_total") == inline
            await asyncio.to_thread(bus.wait_applied, 10)
        finally:
            await asyncio.wait_for(bus.stop(), 30)

    asyncio.run(main())
    if case != "console":
        assert stored(writer, "run-1") == (2 if case == "large" else 1)


def test_the_event_loop_keeps_running_while_another_thread_holds_the_read_cache_lock(store, tmp_path):
    """A reader thread holds the cache's lock; a small block arrives. Staged in the loop, its
    on_staged would stop the whole loop until that reader let go; it goes to a worker thread
    instead, and is acked once the lock is free."""
    writer, cache, threads = store
    metrics = Metrics()
    held, loop_ran, released = threading.Event(), threading.Event(), threading.Event()
    ran_while_held: list[bool] = []

    def reader() -> None:
        with cache.lock:
            held.set()
            ran_while_held.append(loop_ran.wait(5))  # the loop runs while the lock is held
        released.set()

    async def main():
        bus = await started_bus(writer, tmp_path, metrics)
        try:
            assert await asyncio.to_thread(cache.project, PROJECT) is not None
            thread = threading.Thread(target=reader, daemon=True)
            thread.start()
            assert await asyncio.to_thread(held.wait, 5)
            published = asyncio.ensure_future(bus.publish([points("c", 2, "run-1", [0, 1])]))
            await asyncio.sleep(0.2)  # the block is taken and staged meanwhile
            loop_ran.set()
            assert not published.done(), "its staging waits for the cache's lock"
            result = await asyncio.wait_for(published, 10)
            assert result.stored == 1 and released.is_set()
            assert threads[-1] != threading.get_ident(), "staged in a worker thread"
            await asyncio.to_thread(thread.join, 5)
        finally:
            await asyncio.wait_for(bus.stop(), 30)

    asyncio.run(main())
    assert ran_while_held == [True], "the event loop ran while another thread held the cache's lock"
    assert stored(writer, "run-1") == 2


def test_a_block_whose_staging_fails_in_the_loop_is_written_one_by_one_in_a_worker_thread(
    store, tmp_path, monkeypatch
):
    """stage() fails for a block of two publishes staged in the loop: each is then written on its
    own (its own token), in a worker thread, never in the loop (write() inserts)."""
    writer, _, threads = store
    metrics = Metrics()
    staged_by_test = StoreWriter.stage  # the recording wrapper of the fixture
    writes: list[int] = []
    real_write = StoreWriter.write

    def stage(self, envelopes, token):
        if len(envelopes) > 1:
            threads.append(threading.get_ident())
            raise RuntimeError("injected: the block as a whole cannot be staged")
        return staged_by_test(self, envelopes, token)

    def write(self, envelopes, *args, **kwargs):
        writes.append(threading.get_ident())
        return real_write(self, envelopes, *args, **kwargs)

    monkeypatch.setattr(StoreWriter, "stage", stage)
    monkeypatch.setattr(StoreWriter, "write", write)

    async def main():
        bus = await started_bus(writer, tmp_path, metrics)
        try:
            await bus.publish([start("d", "run-2")])
            loop_thread = threading.get_ident()
            inline = metrics.get("runstream_writer_inline_stagings_total")
            both = [
                asyncio.ensure_future(bus.publish([points("c", 2, "run-1", [0])])),
                asyncio.ensure_future(bus.publish([points("d", 2, "run-2", [0, 1])])),
            ]  # one block: submitted in the same turn of the loop
            results = await asyncio.wait_for(asyncio.gather(*both), 10)
            assert [r.stored for r in results] == [1, 1]
            assert threads[-1] == loop_thread, "the block was staged in the loop"
            assert metrics.get("runstream_writer_inline_stagings_total") == inline + 1
            assert len(writes) == 2 and loop_thread not in writes, "then written one by one in a thread"
        finally:
            await asyncio.wait_for(bus.stop(), 30)

    asyncio.run(main())
    assert stored(writer, "run-1") == 1 and stored(writer, "run-2") == 2
