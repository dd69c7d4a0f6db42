"""Acks from the block log (issue 11): the embedded bus answers a logged block as soon as the store
writer has decided it (rows collected, refusals known), before its inserts, and inserts it after.
What must hold:
- a logged block is acked while its insert has not run; a read through a pool with the bus's
  `wait_applied` barrier waits for that insert and then sees the points (read-your-writes);
- blocks that arrive while one inserts are acked from the log too, wait in a queue, and go in
  together as one insert, noted in the log first (a group file); a crash in the middle of that
  insert re-forms the group as one write under its token, so everything lands exactly once;
- while the queue holds a block's worth of requests, acks wait (backpressure); while an insert
  runs, a busy bus lets what arrives soon after a staging wait (a bounded while) to share the
  next block, and a quiet one stages at once;
- an answered block whose insert fails (even after it landed) is inserted again and holds its
  points exactly once, summaries included;
- a bus stopped while an answered block keeps failing keeps its file: the next start stores it;
  meanwhile a read's barrier gives up with Unavailable instead of hanging;
- without a block log nothing is acked before it is stored.

Everything runs the real StoreWriter and EmbeddedBus on the in-process chDB engine; insert delays
and failures are injected around the writer's real metric insert."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time

import numpy as np
import pytest

from runstream.v1 import ingest_pb2 as pb
from runstream_services.bus import embedded
from runstream_services.bus.base import Envelope
from runstream_services.bus.block_log import BlockLog
from runstream_services.bus.embedded import EmbeddedBus
from runstream_services.config import ServerSettings
from runstream_services.errors import Unavailable
from runstream_services.metrics_http import Metrics
from runstream_services.server import RunstreamServer
from runstream_services.storage.clickhouse import ClientPool
from runstream_services.writers.store import StoreWriter

PROJECT = "proj"


def start(client: str, run_id: str) -> Envelope:
    body = pb.RunStart(project=PROJECT, run_id=run_id)
    return Envelope.from_request(pb.IngestRequest(seq=1, client_id=client, run_start=body))


def points(client: str, seq: int, run_id: str, steps) -> Envelope:
    steps = np.asarray(steps, "<i8")
    batch = pb.MetricBatch(
        project=PROJECT, run_id=run_id, keys=["loss"], steps=steps.tobytes(),
        values=(steps * 0.5).astype("<f8").tobytes(), times_ms=np.full(len(steps), 1_700_000_000_000, "<i8").tobytes(),
    )  # fmt: skip
    return Envelope.from_request(pb.IngestRequest(seq=seq, client_id=client, metrics=batch))


def count(writer: StoreWriter, sql: str) -> int:
    return writer.client.query(sql.replace("DB", writer.db)).result_rows[0][0]


def stored_points(writer: StoreWriter, run_id: str = "run-1") -> int:
    return count(writer, f"SELECT count() FROM DB.metrics WHERE run_id = '{run_id}'")  # no FINAL: exact


def summary_count(writer: StoreWriter, run_id: str = "run-1") -> int:
    return count(writer, f"SELECT sum(count) FROM DB.metric_summaries FINAL WHERE run_id = '{run_id}'")


class InsertGate:
    """Holds each of the writer's real metric inserts until `allow` lets it through (all of them
    once `open()` is called, or from the start with opened=True); the first `failures` fail after
    (`land=True`) or instead of the real insert."""

    def __init__(
        self,
        writer: StoreWriter,
        monkeypatch,
        gates: list | None = None,
        *,
        opened=False,
        failures=0,
        land=False,
    ):
        self.permits = threading.Semaphore(0)
        self.opened = threading.Event()
        if opened:
            self.opened.set()
        self.entered = threading.Event()
        self.calls = 0
        self.failures = failures
        real = writer._arrow.insert

        def gated(*args, **kwargs):
            self.calls += 1
            self.entered.set()
            for _ in range(200):  # 20 s at most
                if self.opened.is_set() or self.permits.acquire(timeout=0.1):
                    break
            else:
                raise AssertionError("the test never let this insert through")
            if self.failures:
                self.failures -= 1
                if land:
                    real(*args, **kwargs)
                raise RuntimeError("simulated insert failure")
            return real(*args, **kwargs)

        monkeypatch.setattr(writer._arrow, "insert", gated)
        if gates is not None:
            gates.append(self)  # running_bus opens it on the way out

    def allow(self, inserts: int = 1) -> None:
        for _ in range(inserts):
            self.permits.release()

    def open(self) -> None:
        self.opened.set()


@contextlib.asynccontextmanager
async def running_bus(
    writer: StoreWriter, log_dir, gates: list[InsertGate], starts=(("c", "run-1"),), **options
):
    """A started EmbeddedBus on `log_dir` (None: no log; `options`: EmbeddedBus's) that has stored
    the run_starts of `starts` ((client, run) pairs; no metric insert: not gated), its insert
    queue empty. On the way out every gate in `gates` opens and the bus stops, also when an
    assertion failed."""
    bus = EmbeddedBus(writer, log_dir=log_dir, **options)
    await bus.start()
    try:
        for client, run in starts:
            await bus.publish([start(client, run)])
        await asyncio.to_thread(bus.wait_applied, 10)
        yield bus
    finally:
        for gate in gates:
            gate.open()
        await asyncio.wait_for(bus.stop(), 30)


def in_thread(fn) -> tuple[threading.Thread, list]:
    """Runs fn in a thread; the list gets its result or exception."""
    out: list = []

    def run():
        try:
            out.append(fn())
        except Exception as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_a_logged_block_is_acked_before_its_insert_and_a_read_waits_for_the_insert(
    sole_writer, tmp_path, monkeypatch, chdb_dsn
):
    writer = sole_writer

    async def main():
        gates: list[InsertGate] = []
        async with running_bus(writer, tmp_path / "blocks", gates) as bus:
            gate = InsertGate(writer, monkeypatch, gates)
            result = await asyncio.wait_for(bus.publish([points("c", 2, "run-1", [0, 1])]), 10)
            assert result.stored == 1 and result.points == 2
            assert await asyncio.to_thread(gate.entered.wait, 10)
            assert stored_points(writer) == 0, "acked while its insert waits"
            readers = ClientPool(chdb_dsn, size=1, before_read=bus.wait_applied)

            def read():
                with readers.client() as client:
                    return client.query(f"SELECT count() FROM {writer.db}.metrics").result_rows[0][0]

            thread, out = in_thread(read)
            thread.join(0.3)
            assert thread.is_alive(), "the read waits for the acked block's insert"
            gate.open()
            thread.join(10)
            assert out == [2], "and then sees its points"

    asyncio.run(main())
    assert stored_points(writer) == 2 and summary_count(writer) == 2


def test_blocks_acked_while_one_inserts_wait_in_a_queue_and_go_in_as_one_insert(
    sole_writer, tmp_path, monkeypatch
):
    writer = sole_writer

    monkeypatch.setattr(embedded, "RECORD_EVERY_S", 600)  # the group file stays to be looked at

    async def main():
        gates: list[InsertGate] = []
        starts = (("c", "run-1"), ("d", "run-2"), ("e", "run-3"))
        async with running_bus(writer, tmp_path / "blocks", gates, starts) as bus:
            gate = InsertGate(writer, monkeypatch, gates)
            await asyncio.wait_for(bus.publish([points("c", 2, "run-1", [0])]), 10)
            assert await asyncio.to_thread(gate.entered.wait, 10)
            # acked one after the other while the first insert waits: each its own block
            for client, run in (("d", "run-2"), ("e", "run-3")):
                assert (await asyncio.wait_for(bus.publish([points(client, 2, run, [0])]), 10)).stored == 1
            assert len(bus._queue) == 2 and stored_points(writer, "run-2") == 0
            gate.open()
            await asyncio.to_thread(bus.wait_applied, 10)
            assert [stored_points(writer, r) for r in ("run-1", "run-2", "run-3")] == [1, 1, 1]
            assert gate.calls == 2, "the two queued blocks went in as one metric insert"
            assert writer.metrics.get("runstream_writer_envelopes_total", outcome="stored") == 6
            token, members = BlockLog(tmp_path / "blocks").groups()[-1][1:]
            assert token.startswith("grp:") and len(members) == 2, "noted in the log before that insert"

    asyncio.run(main())
    assert [summary_count(writer, r) for r in ("run-1", "run-2", "run-3")] == [1, 1, 1]


def test_a_group_that_cannot_be_logged_goes_in_block_by_block(sole_writer, tmp_path, monkeypatch):
    """A full disk when the group record is written: its blocks (each logged already) are inserted
    one by one under their own names, so each stays exactly-once on its own, and nothing waits for
    the next start."""
    import errno

    writer = sole_writer

    def full_disk(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    async def main():
        gates: list[InsertGate] = []
        starts = (("c", "run-1"), ("d", "run-2"), ("e", "run-3"))
        async with running_bus(writer, tmp_path / "blocks", gates, starts) as bus:
            monkeypatch.setattr(bus._log, "write_group", full_disk)
            gate = InsertGate(writer, monkeypatch, gates)
            await asyncio.wait_for(bus.publish([points("c", 2, "run-1", [0])]), 10)
            assert await asyncio.to_thread(gate.entered.wait, 10)
            for client, run in (("d", "run-2"), ("e", "run-3")):
                assert (await asyncio.wait_for(bus.publish([points(client, 2, run, [0])]), 10)).stored == 1
            assert len(bus._queue) == 2
            gate.open()
            await asyncio.to_thread(bus.wait_applied, 10)
            assert [stored_points(writer, r) for r in ("run-1", "run-2", "run-3")] == [1, 1, 1]
            assert gate.calls == 3, "the two queued blocks went in one by one"

    asyncio.run(main())
    assert [summary_count(writer, r) for r in ("run-1", "run-2", "run-3")] == [1, 1, 1]
    assert not list((tmp_path / "blocks").iterdir()), "each recorded and dropped"


def test_acks_wait_while_the_insert_queue_is_full(sole_writer, tmp_path, monkeypatch):
    writer = sole_writer

    async def main():
        gates: list[InsertGate] = []
        starts = [(f"c{i}", f"run-{i}") for i in range(4)]
        async with running_bus(writer, tmp_path / "blocks", gates, starts, max_block_requests=2) as bus:
            gate = InsertGate(writer, monkeypatch, gates)
            await asyncio.wait_for(bus.publish([points("c0", 2, "run-0", [0])]), 10)  # inserting
            await asyncio.wait_for(bus.publish([points("c1", 2, "run-1", [0])]), 10)  # queued
            await asyncio.wait_for(bus.publish([points("c2", 2, "run-2", [0])]), 10)  # queued: full
            fourth = asyncio.ensure_future(bus.publish([points("c3", 2, "run-3", [0])]))
            await asyncio.sleep(0.3)
            assert not fourth.done(), "not staged while the queue holds max_block_requests"
            gate.open()
            assert (await asyncio.wait_for(fourth, 10)).stored == 1
            await asyncio.to_thread(bus.wait_applied, 10)
            assert [stored_points(writer, f"run-{i}") for i in range(4)] == [1, 1, 1, 1]

    asyncio.run(main())


def test_a_group_cut_short_by_a_crash_is_re_formed_as_one_write_under_its_token(
    sole_writer, chdb_dsn, database, tmp_path, monkeypatch
):
    """Two staged blocks insert as a group; the crash comes after the group's metric insert
    landed and before its run rows did. A new writer (the next process) re-forms the group from
    the log: the token drops the metrics that landed, the rest lands, all exactly once."""
    writer = sole_writer
    log = BlockLog(tmp_path / "blocks")
    blocks = [
        ("blk:x:1", [start("c", "run-1"), points("c", 2, "run-1", [0, 1])]),
        ("blk:x:2", [start("d", "run-2"), points("d", 2, "run-2", [5])]),
    ]
    entries, writes = [], []
    for name, envelopes in blocks:
        entries.append(log.write(name, envelopes))
        result, write = writer.stage(envelopes, name)
        assert result.stored == 2 and write is not None
        writes.append(write)
    log.write_group("grp:x:1-2", entries)
    real_insert_rows = writer._insert_rows

    def crash_before_the_run_rows(table, *args, **kwargs):
        if table == "runs":
            raise RuntimeError("simulated crash")
        return real_insert_rows(table, *args, **kwargs)

    monkeypatch.setattr(writer, "_insert_rows", crash_before_the_run_rows)
    monkeypatch.setattr(writer, "_row_inserts", _Inline())  # the run rows go last, after the metrics
    with pytest.raises(RuntimeError, match="simulated crash"):
        writer.insert_staged(writes, "grp:x:1-2")
    assert stored_points(writer, "run-1") == 2 and count(writer, "SELECT count() FROM DB.runs") == 0
    monkeypatch.undo()

    fresh = StoreWriter(writer.client, writer.db, writer.artifact_store, ServerSettings(), sole_writer=True)

    async def next_start():
        bus = EmbeddedBus(fresh, log_dir=tmp_path / "blocks")
        await bus.start()  # re-forms the group under its token
        await bus.stop()

    asyncio.run(next_start())
    fresh.close()
    assert [stored_points(writer, r) for r in ("run-1", "run-2")] == [2, 1], "the token dropped the metrics"
    assert [summary_count(writer, r) for r in ("run-1", "run-2")] == [2, 1]
    assert count(writer, "SELECT count() FROM DB.runs FINAL") == 2
    assert not list((tmp_path / "blocks").iterdir()), "recorded, then removed"


def test_blocks_and_a_group_logged_by_an_older_server_as_files_are_re_formed_and_deleted(
    sole_writer, tmp_path
):
    """An older server logged a file per block and per group (v3 .blk, .grp); the first start of
    this one re-forms the group as one write under its token, then deletes the files."""
    from runstream_services.bus.block_log import block_bytes

    folder = tmp_path / "blocks"
    folder.mkdir()
    blocks = [
        ("blk:old:1", [start("c", "run-1"), points("c", 2, "run-1", [0, 1])]),
        ("blk:old:2", [start("d", "run-2"), points("d", 2, "run-2", [5])]),
    ]
    for number, (name, envelopes) in enumerate(blocks, 1):
        (folder / f"{number:012d}.blk").write_bytes(block_bytes(name, envelopes))
    (folder / "000000000001.grp").write_text("g1 grp:old:1-2\n000000000001.blk\n000000000002.blk\n")
    [(_, token, members)] = BlockLog(folder).groups()
    assert token == "grp:old:1-2" and [m.name for m in members] == ["000000000001.blk", "000000000002.blk"]

    async def next_start():
        bus = EmbeddedBus(sole_writer, log_dir=folder)
        await bus.start()
        await bus.stop()

    asyncio.run(next_start())
    assert [stored_points(sole_writer, r) for r in ("run-1", "run-2")] == [2, 1]
    assert not list(folder.iterdir()), "re-formed, recorded, deleted"


class _Inline:
    """An executor that runs what it is given at once, in the caller's thread."""

    def submit(self, fn, *args):
        future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:
            future.set_exception(exc)
        return future


@pytest.mark.parametrize("busy", [True, False], ids=["busy", "quiet"])
def test_while_an_insert_runs_a_busy_bus_gathers_the_next_block_and_a_quiet_one_stages_at_once(
    sole_writer, tmp_path, monkeypatch, busy
):
    """While an insert runs, a bus whose stagings keep it busy stages no sooner than a share of
    the recent inserts' time after the last staging (capped: here 0.4 s), so the requests that
    arrive meanwhile share a block, acked while the insert is still held; a quiet bus stages
    each at once."""
    writer = sole_writer
    monkeypatch.setattr(embedded, "STAGE_WAIT_MAX_S", 0.4)
    metrics = Metrics()

    async def main():
        gates: list[InsertGate] = []
        starts = (("c", "run-1"), ("d", "run-2"), ("e", "run-3"))
        async with running_bus(writer, tmp_path / "blocks", gates, starts, metrics=metrics) as bus:
            gate = InsertGate(writer, monkeypatch, gates)
            # inserts have been slow (the share is capped at 0.4 s), the last one long ago (the
            # next goes in at once: INSERT_GAP_SHARE)
            bus._insert_s, bus._inserted_at = 10.0, 0.0
            # stagings took all (busy) or almost none (quiet) of the time between them
            bus._stage_s, bus._stage_every_s = (5.0, 1.0) if busy else (0.001, 5.0)
            await asyncio.wait_for(bus.publish([points("c", 2, "run-1", [0])]), 10)  # no insert ran
            assert await asyncio.to_thread(gate.entered.wait, 10)
            blocks = metrics.get("runstream_writer_blocks_total")
            later = [
                asyncio.ensure_future(bus.publish([points(c, 2, r, [0])]))
                for c, r in (("d", "run-2"), ("e", "run-3"))
            ]
            await asyncio.sleep(0.15)
            if busy:
                assert not any(f.done() for f in later), "staged no sooner than 0.4 s after the last staging"
            else:
                assert all(f.done() for f in later), "a quiet bus stages at once, insert or not"
            for f in later:
                assert (await asyncio.wait_for(f, 5)).stored == 1
            assert not gate.opened.is_set(), "acked while the insert is still held"
            if busy:
                assert metrics.get("runstream_writer_blocks_total") == blocks + 1, "both in one staged block"

    asyncio.run(main())
    assert [stored_points(writer, r) for r in ("run-1", "run-2", "run-3")] == [1, 1, 1]


@pytest.mark.parametrize("land", [False, True], ids=["failed", "landed-then-failed"])
def test_an_answered_block_whose_insert_fails_is_stored_again_exactly_once(
    sole_writer, tmp_path, monkeypatch, land
):
    writer = sole_writer

    async def main():
        gates: list[InsertGate] = []
        async with running_bus(writer, tmp_path / "blocks", gates) as bus:
            gate = InsertGate(writer, monkeypatch, opened=True, failures=1, land=land)
            result = await asyncio.wait_for(bus.publish([points("c", 2, "run-1", [0, 1, 2])]), 10)
            assert result.stored == 1
            await asyncio.to_thread(bus.wait_applied, 20)  # the retry landed
            assert gate.failures == 0

    asyncio.run(main())
    assert stored_points(writer) == 3, "the retry's token dropped what the first attempt inserted"
    assert summary_count(writer) == 3, "the summary counts each point once (recounted as a replay)"
    assert writer.run_state(PROJECT, "run-1") == "running"


def test_a_bus_stopped_while_an_answered_block_fails_keeps_it_for_the_next_start(
    sole_writer, tmp_path, monkeypatch
):
    writer = sole_writer

    async def first_life():
        async with running_bus(writer, tmp_path / "blocks", []) as bus:
            InsertGate(writer, monkeypatch, opened=True, failures=10**6)
            assert (await asyncio.wait_for(bus.publish([points("c", 2, "run-1", [4, 5])]), 10)).stored == 1
            with pytest.raises(Unavailable, match="not taken acked requests"):
                await asyncio.to_thread(bus.wait_applied, 0.3)
        # (the bus stopped on the way out, giving up the retries)

    asyncio.run(first_life())
    assert stored_points(writer) == 0 and list(BlockLog(tmp_path / "blocks").pending()), (
        "the block stays logged"
    )
    monkeypatch.undo()

    async def second_life():
        bus = EmbeddedBus(writer, log_dir=tmp_path / "blocks")
        await bus.start()  # re-forms the logged block
        await bus.stop()

    asyncio.run(second_life())
    assert stored_points(writer) == 2 and summary_count(writer) == 2


def test_without_a_block_log_nothing_is_acked_before_it_is_stored(sole_writer, monkeypatch):
    writer = sole_writer

    async def main():
        gates: list[InsertGate] = []
        async with running_bus(writer, None, gates) as bus:
            gate = InsertGate(writer, monkeypatch, gates)
            publish = asyncio.ensure_future(bus.publish([points("c", 2, "run-1", [0])]))
            await asyncio.sleep(0.3)
            assert gate.entered.is_set() and not publish.done(), "no ack while the insert waits"
            gate.open()
            assert (await asyncio.wait_for(publish, 10)).stored == 1

    asyncio.run(main())
    assert stored_points(writer) == 1


def test_the_embedded_server_reads_behind_its_bus_barrier(tmp_path):
    server = RunstreamServer(ServerSettings(data_dir=str(tmp_path)), port=0, metrics_port=0)
    barrier = server._read_barrier()
    assert barrier is not None
    calls = []
    server.bus = type("Bus", (), {"wait_applied": lambda self: calls.append(1)})()
    barrier()
    assert calls == [1]
    kafka = RunstreamServer(ServerSettings(data_dir=str(tmp_path), bus="kafka"), port=0, metrics_port=0)
    assert kafka._read_barrier() is None, "the Kafka bus acks from Kafka: no barrier"


@pytest.mark.parametrize("start_by", ["read", "stop"])
def test_under_load_queued_blocks_wait_for_the_insert_gap_unless_a_read_or_stop_needs_them(
    sole_writer, tmp_path, monkeypatch, start_by
):
    """An insert has just ended and inserts have been slow: the next acked block waits in the
    queue for the gap (INSERT_GAP_SHARE of the recent inserts' time, capped: here 60 s), so what
    arrives meanwhile would share its insert. A read waiting in wait_applied, or the bus
    stopping, starts that insert at once."""
    writer = sole_writer
    monkeypatch.setattr(embedded, "INSERT_GAP_MAX_S", 60.0)

    async def main():
        async with running_bus(writer, tmp_path / "blocks", []) as bus:
            bus._insert_s, bus._inserted_at = 100.0, time.monotonic()
            assert (await asyncio.wait_for(bus.publish([points("c", 2, "run-1", [0, 1])]), 10)).stored == 1
            await asyncio.sleep(0.3)
            assert stored_points(writer) == 0 and len(bus._queue) == 1, "acked, its insert waits for the gap"
            if start_by == "read":
                await asyncio.to_thread(bus.wait_applied, 10)  # well before the 60 s gap
                assert stored_points(writer) == 2, "the read started the insert and sees the points"
        # start_by == "stop": running_bus stops the bus (within 30 s: not after the 60 s gap)

    asyncio.run(main())
    assert stored_points(writer) == 2 and summary_count(writer) == 2
    assert not list((tmp_path / "blocks").iterdir()), "stored and recorded"


def test_a_quiet_bus_inserts_an_acked_block_at_once(sole_writer, tmp_path, monkeypatch):
    """The last insert ended long ago (more than the gap): the next block goes in without
    waiting for a read."""
    writer = sole_writer
    monkeypatch.setattr(embedded, "INSERT_GAP_MAX_S", 60.0)

    async def main():
        async with running_bus(writer, tmp_path / "blocks", []) as bus:
            bus._insert_s, bus._inserted_at = 100.0, time.monotonic() - 61.0
            await asyncio.wait_for(bus.publish([points("c", 2, "run-1", [0, 1])]), 10)
            for _ in range(100):  # no wait_applied here: nothing asks for the insert
                if stored_points(writer) == 2:
                    break
                await asyncio.sleep(0.1)
            assert stored_points(writer) == 2

    asyncio.run(main())
