"""Batched acks (issue 11): a stream opened with `x-runstream-acks: batched` gets the acks that are
ready together in one IngestResponse (seq + also_ok), refusals one message each; a stream without
the opt-in gets one message per request, as before. Server side with a bus whose publishes finish
together (like one group-commit block); SDK side through IngestStream._ack."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from runstream._internal.spool import SpoolFile
from runstream._internal.stream import BATCHED_ACKS, IngestStream
from runstream.v1 import ingest_pb2 as pb
from runstream_services.auth.keys import ApiKeys
from runstream_services.bus.base import WriteResult
from runstream_services.config import ServerSettings
from runstream_services.ingest import service as ingest_service
from runstream_services.ingest.service import IngestServicer
from runstream_services.metrics_http import Metrics
from runstream_services.run_state import RunRegistry

REFUSED_BY_STORE = 5  # the bus refuses this seq inside the block
UNDECODABLE = 7  # refused as it is read, before any block


class _BlockBus:
    """Like the embedded bus: `submit` hands back futures, and every publish of the stream
    finishes in one event-loop turn once `block` of them are waiting, as one block commit does."""

    keeps_client_order = True

    def __init__(self, block: int):
        self.block = block
        self.waiting: list[tuple] = []

    def submit(self, envelopes):
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((envelopes[0], future))
        if len(self.waiting) == self.block:
            asyncio.get_running_loop().call_soon(self._commit)
        return future

    def _commit(self):
        for env, future in self.waiting:
            if env.seq == REFUSED_BY_STORE:
                future.set_result(WriteResult(refused={env.idempotency_key: "the store refused it"}))
            else:
                future.set_result(WriteResult(stored=1))


class _Context:
    def __init__(self, metadata=()):
        self.metadata = metadata

    def invocation_metadata(self):
        return self.metadata


def _start(seq: int) -> bytes:
    return pb.IngestRequest(
        seq=seq, client_id="c", run_start=pb.RunStart(project="p", run_id=f"r{seq}")
    ).SerializeToString()


def _answers(metadata, n: int = 10) -> list[pb.IngestResponse]:
    """Requests 1..n (n - 1 of them valid run starts, seq UNDECODABLE garbage with its seq)."""
    servicer = IngestServicer(
        _BlockBus(block=n - 1), ServerSettings(), artifact_store=None, runs=RunRegistry(),
        auth=ApiKeys.from_settings(ServerSettings()), metrics=Metrics(),
    )  # fmt: skip

    async def scenario():
        async def incoming():
            for seq in range(1, n + 1):
                raw = _start(seq) + (b"\xff" if seq == UNDECODABLE else b"")
                yield ingest_service._decode_request(raw)

        return [r async for r in servicer.Ingest(incoming(), _Context(metadata))]

    return asyncio.run(scenario())


def _acked_seqs(answers: list[pb.IngestResponse]) -> list[int]:
    return [seq for a in answers if a.ok for seq in (a.seq, *a.also_ok)]


def test_opted_in_acks_of_one_block_come_in_one_message_and_refusals_alone():
    answers = _answers((BATCHED_ACKS,))
    acked = _acked_seqs(answers)
    assert sorted(acked) == [1, 2, 3, 4, 6, 8, 9, 10]  # each seq acked exactly once
    refusals = [a for a in answers if not a.ok]
    assert [(a.seq, a.also_ok) for a in refusals] == [(UNDECODABLE, []), (REFUSED_BY_STORE, [])]
    assert refusals[0].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert refusals[1].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "the store refused it" in refusals[1].message
    # the block's acks around its refusal: one message before it, one after, in block order
    assert [(a.seq, list(a.also_ok)) for a in answers if a.ok] == [(1, [2, 3, 4]), (6, [8, 9, 10])]


def test_without_the_opt_in_every_request_gets_its_own_message_as_before():
    for metadata in [(), (("x-runstream-acks", "single"),)]:
        answers = _answers(metadata)
        assert sorted(a.seq for a in answers) == list(range(1, 11))
        assert all(not a.also_ok for a in answers)
        ok = [a for a in answers if a.ok]
        assert len(ok) == 8
        assert all(
            a.SerializeToString() == pb.IngestResponse(seq=a.seq, ok=True).SerializeToString() for a in ok
        )


def test_a_large_run_of_acks_is_split_into_bounded_messages(monkeypatch):
    monkeypatch.setattr(ingest_service, "MAX_ACKS_PER_MESSAGE", 3)
    refusal = pb.IngestResponse(seq=99, ok=False, code=3, message="no")
    items = [(1, 10), (2, 10), (3, 10), (4, 10), refusal, (5, 1), None]
    messages = ingest_service._coalesce(items)
    assert [(m.seq, list(m.also_ok), m.points_accepted, m.ok) for m in messages] == [
        (1, [2, 3], 30, True),
        (4, [], 10, True),
        (99, [], 0, False),
        (5, [], 1, True),
    ]


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_the_sdk_acks_every_seq_of_a_batched_message_once(tmp_path, loop):
    refused: list[int] = []

    async def scenario():
        stream = IngestStream(
            channel=None, client_id="c", spool=SpoolFile(tmp_path, "c"), max_memory_bytes=30,
            on_refused=lambda resp, data: refused.append(pb.IngestRequest.FromString(data).seq),
        )  # fmt: skip
        assert BATCHED_ACKS in stream._metadata
        for _ in range(6):
            stream.submit("run_start", pb.RunStart(project="p", run_id="r"))
        assert stream.spooled_pending > 0 and stream.spool.path.exists()  # past 30 bytes: spilled
        waiter = asyncio.ensure_future(stream.wait_acked(6, timeout_s=60))
        stream._ack(pb.IngestResponse(seq=1, ok=True, also_ok=[2, 3]))
        stream._ack(pb.IngestResponse(seq=4, ok=False, code=3, message="bad"))
        stream._ack(pb.IngestResponse(seq=1, ok=True, also_ok=[2]))  # a duplicate after a resend: ignored
        assert not waiter.done() and sorted(stream.pending) == [5, 6]
        stream._ack(pb.IngestResponse(seq=5, ok=True, also_ok=[6]))
        assert await waiter
        return stream

    stream = loop.run_until_complete(scenario())
    assert stream.stats.acked == 6 and stream.stats.refused == 1 and refused == [4]
    assert not stream.pending and stream.mem_bytes == 0 and stream.spooled_pending == 0
    assert not stream.spool.path.exists()  # everything spilled was acked: the spool is reclaimed
