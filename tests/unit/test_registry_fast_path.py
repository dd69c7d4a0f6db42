"""Ingest's admission answered from the writer's memory (issue 11): StoreWriter.is_stored_now and
run_state_now answer without I/O or waiting for a lock, or say they cannot; RunRegistry then
skips its worker-thread hop, and falls back to it with the same answer. Real StoreWriter on chDB."""

from __future__ import annotations

import asyncio
import threading

import pytest

from runstream import states
from runstream.v1 import ingest_pb2 as pb
from runstream.v1 import types_pb2
from runstream_services.artifacts.local import LocalArtifactStore
from runstream_services.bus.base import Envelope
from runstream_services.config import ServerSettings
from runstream_services.run_state import RunRegistry, RunRow
from runstream_services.storage.clickhouse import connect
from runstream_services.storage.migrations import migrate
from runstream_services.writers.store import StoreWriter


@pytest.fixture
def client(chdb_dsn, database):
    client = connect(chdb_dsn)
    migrate(client, database)
    return client


def _writer(client, database, tmp_path, sole: bool) -> StoreWriter:
    return StoreWriter(
        client, database, LocalArtifactStore(tmp_path / "artifacts"), ServerSettings(), sole_writer=sole
    )


def _start(seq: int, run_id: str, client_id: str = "c1") -> Envelope:
    body = pb.RunStart(project="p", run_id=run_id, config={"lr": types_pb2.Value(number=0.1)})
    return Envelope.from_request(pb.IngestRequest(seq=seq, client_id=client_id, run_start=body))


def test_memory_answers_match_the_stored_state(client, database, tmp_path):
    writer = _writer(client, database, tmp_path, sole=True)
    try:
        assert writer.is_stored_now("c1", 1) is False  # a client never seen stored nothing
        assert writer.run_state_now("p", "r1") == (True, None)  # no such run
        writer.write([_start(1, "r1")])
        assert writer.is_stored_now("c1", 1) is True
        assert writer.is_stored_now("c1", 2) is False
        assert writer.run_state_now("p", "r1") == (True, states.RUNNING)
        assert writer.is_stored("c1", 1) and not writer.is_stored("c1", 2)  # the slow path agrees
    finally:
        writer.close()
    # a writer that is not the only one must ask the tables about a client it has not loaded
    other = _writer(client, database, tmp_path, sole=False)
    try:
        assert other.is_stored_now("c1", 1) is None
        assert other.run_state_now("p", "r1") == (False, None)
        assert other.is_stored("c1", 1) is True  # loaded: now memory knows
        assert other.is_stored_now("c1", 1) is True
        assert other.run_state("p", "r1") == states.RUNNING
        assert other.run_state_now("p", "r1") == (True, states.RUNNING)
    finally:
        other.close()


def test_a_held_lock_makes_them_defer_instead_of_wait(client, database, tmp_path):
    writer = _writer(client, database, tmp_path, sole=True)
    try:
        writer.write([_start(1, "r1")])
        with writer._meta_lock:  # a block being collected
            assert writer.run_state_now("p", "r1") == (False, None)
        with writer._lock:
            assert writer.is_stored_now("c1", 1) is None
    finally:
        writer.close()


def test_registry_uses_memory_and_falls_back_to_the_thread(client, database, tmp_path):
    writer = _writer(client, database, tmp_path, sole=True)
    calls: list[str] = []

    def replays(client_id: str, seq: int) -> bool:
        calls.append(threading.current_thread().name)
        return writer.is_stored(client_id, seq)

    try:
        writer.write([_start(1, "r1")])
        registry = RunRegistry(store=writer, replays=replays, replays_now=writer.is_stored_now)
        assert asyncio.run(registry.is_replay("c1", 1)) is True
        assert asyncio.run(registry.is_replay("c1", 5)) is False
        assert calls == []  # answered from memory, no worker-thread hop
        held, release = threading.Event(), threading.Event()

        def hold() -> None:  # another thread holds the seqs lock: memory cannot answer now
            with writer._lock:
                held.set()
                release.wait(5)

        holder = threading.Thread(target=hold)
        holder.start()
        held.wait(5)
        threading.Timer(0.3, release.set).start()
        assert asyncio.run(registry.is_replay("c1", 1)) is True  # the worker thread answered
        holder.join()
        assert len(calls) == 1 and calls[0] != threading.current_thread().name
        assert asyncio.run(registry.state("p", "r1")) == states.RUNNING
        assert asyncio.run(registry.state("p", "nope")) is None
        # a run_start of a known ended run is refused the same way either path
        writer.write(
            [
                Envelope.from_request(
                    pb.IngestRequest(
                        seq=2,
                        client_id="c1",
                        run_finish=pb.RunFinish(project="p", run_id="r1", state=types_pb2.RUN_STATE_FINISHED),
                    )
                )
            ]
        )
        fresh = RunRegistry(store=writer, replays=replays, replays_now=writer.is_stored_now)
        assert asyncio.run(fresh.state("p", "r1")) == states.FINISHED
    finally:
        writer.close()


def test_run_row_copy_shares_nothing_mutable():
    row = RunRow(project="p", run_id="r", tags={"a": "1"}, name="n")
    copied = row.copy()
    copied.tags["b"] = "2"
    copied.name = "m"
    assert row.tags == {"a": "1"} and row.name == "n"
    assert copied.values()[:3] == ["p", "r", "m"]
