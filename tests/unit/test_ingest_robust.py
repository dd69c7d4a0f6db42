"""Unit checks of issue 10's ingest robustness pieces: every request is answered (a bug in one
request is a per-request INTERNAL refusal), undecodable requests keep their seq when it can be
read, readiness follows draining and dependency probes, and the Kafka writer tells deterministic
refusals from transient failures."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf.message import DecodeError

from runstream.v1 import ingest_pb2 as pb
from runstream_services.auth.keys import ApiKeys
from runstream_services.bus.base import Envelope, WriteResult
from runstream_services.bus.kafka.dead_letter import is_deterministic, screen
from runstream_services.config import ServerSettings
from runstream_services.errors import InvalidArgument, Unavailable
from runstream_services.grpc_health import Readiness
from runstream_services.ingest import service as ingest_service
from runstream_services.ingest.service import IngestServicer
from runstream_services.metrics_http import Metrics
from runstream_services.run_state import RunRegistry


class _Bus:
    keeps_client_order = False

    async def publish(self, envelopes):
        return WriteResult(stored=len(envelopes))


class _Context:
    def invocation_metadata(self):
        return ()


def _start(seq: int, run_id: str) -> pb.IngestRequest:
    return pb.IngestRequest(seq=seq, client_id="c", run_start=pb.RunStart(project="p", run_id=run_id))


def test_an_unexpected_error_in_one_request_is_an_internal_refusal_and_the_stream_goes_on():
    class BrokenRegistry(RunRegistry):
        async def admit(self, kind, project, run_id, request):
            if run_id == "boom":
                raise RuntimeError("a bug")
            return await super().admit(kind, project, run_id, request)

    servicer = IngestServicer(
        _Bus(), ServerSettings(), artifact_store=None, runs=BrokenRegistry(),
        auth=ApiKeys.from_settings(ServerSettings()), metrics=Metrics(),
    )  # fmt: skip
    requests = [_start(1, "boom"), _start(2, "fine")]

    async def scenario():
        async def incoming():
            for r in requests:
                yield ingest_service._decode_request(r.SerializeToString())

        return [r async for r in servicer.Ingest(incoming(), _Context())]

    answers = {a.seq: a for a in asyncio.run(scenario())}
    assert set(answers) == {1, 2}
    assert not answers[1].ok and answers[1].code == grpc.StatusCode.INTERNAL.value[0]
    assert "see the server log" in answers[1].message
    assert answers[2].ok


def test_the_seq_of_an_undecodable_request_is_read_when_possible():
    raw = _start(123456789, "r").SerializeToString()
    broken = raw + b"\xff"  # a truncated trailing field
    with pytest.raises(DecodeError):
        pb.IngestRequest.FromString(broken)
    received = ingest_service._decode_request(broken)
    assert received.request is None and received.seq == 123456789 and "request 123456789" in received.why
    assert ingest_service._decode_request(b"\xff\xff").seq == 0
    assert ingest_service._decode_request(raw).request == _start(123456789, "r")


def test_readiness_follows_draining_and_probes():
    state = {"draining": False, "store_up": True, "calls": 0}

    async def store():
        state["calls"] += 1
        if not state["store_up"]:
            raise Unavailable("store down")

    async def slow():
        await asyncio.sleep(5)

    async def scenario():
        ready = Readiness(draining=lambda: state["draining"], probes={"store": store}, cache_s=0.05)
        assert await ready.reason() is None
        assert await ready.reason() is None and state["calls"] == 1  # cached
        state["store_up"] = False
        await asyncio.sleep(0.06)
        assert "store unreachable" in await ready.reason()
        state["store_up"] = True
        state["draining"] = True
        assert "draining" in await ready.reason()
        hung = Readiness(probes={"kafka": slow}, timeout_s=0.05)
        assert "kafka unreachable" in await hung.reason()

    asyncio.run(scenario())


def test_deterministic_and_transient_failures_are_told_apart():
    assert is_deterministic(InvalidArgument("bad digest"))
    assert is_deterministic(DecodeError("garbage"))
    assert not is_deterministic(KeyError("a bug must stall and alert, not dead-letter everything"))
    assert not is_deterministic(Unavailable("store down"))
    assert not is_deterministic(RuntimeError("chDB: cannot open"))
    assert not is_deterministic(TimeoutError())
    assert not is_deterministic(ConnectionError())


def test_screen_refuses_what_no_writer_can_store():
    good = Envelope.from_request(_start(1, "r"))
    screened, why = screen(good)
    assert why == "" and screened.request == good.request
    garbage = Envelope(
        client_id="c", seq=2, kind="metrics", project="p", run_id="r", payload=b"\xff", received_ms=0
    )
    assert "not a runstream.v1.IngestRequest" in screen(garbage)[1]
    wrong_kind = Envelope(**{**good.__dict__, "kind": "metrics", "request": None})
    assert "run_start body" in screen(wrong_kind)[1]
    batch = pb.IngestRequest(
        seq=3, client_id="c", metrics=pb.MetricBatch(project="p", run_id="r", keys=["a"])
    )
    batch.metrics.steps = b"\x01\x02\x03"
    assert "int64" in screen(Envelope.from_request(batch))[1]


def test_the_store_writers_run_cache_is_bounded(chdb_dsn, database, tmp_path, monkeypatch):
    from runstream.v1 import types_pb2
    from runstream_services.artifacts.local import LocalArtifactStore
    from runstream_services.storage.clickhouse import connect
    from runstream_services.storage.migrations import migrate
    from runstream_services.writers import store

    monkeypatch.setattr(store, "MAX_CACHED_RUN_BYTES", 500_000, raising=False)
    client = connect(chdb_dsn)
    migrate(client, database)
    writer = store.StoreWriter(client, database, LocalArtifactStore(tmp_path / "a"), ServerSettings())
    try:
        for i in range(20):
            start = pb.RunStart(
                project="p", run_id=f"run{i}", context=types_pb2.RunContext(git_diff="d" * 100_000)
            )
            writer.write([Envelope.from_request(pb.IngestRequest(seq=i + 1, client_id="c", run_start=start))])
        assert 1 <= len(writer._runs) <= 5  # ~100 KB each, 500 KB allowed
        assert writer.run_state("p", "run0") == "running"  # evicted: read back from the table
    finally:
        writer.close()
