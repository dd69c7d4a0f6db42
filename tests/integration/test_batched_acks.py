"""Batched acks against real servers (issue 11): a raw stream that opts in (`x-runstream-acks:
batched`) gets every seq acked exactly once across fewer messages, a refusal in the middle in a
message of its own; a raw stream that does not opt in gets one message per request; the SDK (which
opts in) stores everything exactly once through an embedded server."""

from __future__ import annotations

import uuid
from collections import Counter

import grpc

import runstream
from runstream._internal.stream import BATCHED_ACKS, IngestStream
from runstream.v1 import ingest_pb2 as pb
from tests.chdb_inspect import STORED_SEQS, stored
from tests.ingest_client import metric_batch, run_start, status_code, stub_for
from tests.sdk_options import quick_sdk_options

N_BATCHES, PER_BATCH, BAD_SEQ = 400, 10, 200


def _requests(run_id: str) -> list[pb.IngestRequest]:
    """seq 1 starts the run, seqs 2..N_BATCHES+1 carry PER_BATCH points each; BAD_SEQ is refused
    (values not a multiple of 8 bytes) and its points are not stored."""
    cid = uuid.uuid4().hex
    requests = [run_start(1, cid, run_id)]
    for i in range(N_BATCHES):
        batch = metric_batch(run_id, i * PER_BATCH, PER_BATCH)
        if 2 + i == BAD_SEQ:
            batch.values = b"\x00" * 12
        requests.append(pb.IngestRequest(seq=2 + i, client_id=cid, metrics=batch))
    return requests


def test_an_opted_in_stream_gets_each_seq_acked_once_in_fewer_messages(bus_server):
    run_id = f"batched-{uuid.uuid4().hex[:8]}"
    requests = _requests(run_id)
    messages = list(stub_for(bus_server).Ingest(iter(requests), timeout=120, metadata=(BATCHED_ACKS,)))
    acked = Counter(seq for m in messages if m.ok for seq in (m.seq, *m.also_ok))
    assert set(acked) == {r.seq for r in requests} - {BAD_SEQ} and set(acked.values()) == {1}
    refusals = [m for m in messages if not m.ok]
    assert [(m.seq, list(m.also_ok)) for m in refusals] == [(BAD_SEQ, [])]
    assert status_code(refusals[0].code) == grpc.StatusCode.INVALID_ARGUMENT
    assert "multiple of 8" in refusals[0].message
    assert sum(m.points_accepted for m in messages if m.ok) == (N_BATCHES - 1) * PER_BATCH
    # 401 requests sent at once are committed in a few blocks: their acks share messages
    assert len(messages) < len(requests)
    bus_server.stop_after_stored()
    assert bus_server.stored(
        f"SELECT count(), uniqExact(key, step) FROM DB.metrics WHERE run_id = '{run_id}'"
    ) == [[(N_BATCHES - 1) * PER_BATCH] * 2]


def test_a_stream_without_the_opt_in_gets_one_message_per_request(module_embedded_server):
    requests = _requests(f"single-{uuid.uuid4().hex[:8]}")
    messages = list(stub_for(module_embedded_server).Ingest(iter(requests), timeout=120))
    assert sorted(m.seq for m in messages) == [r.seq for r in requests]  # one each, none twice
    assert all(not m.also_ok for m in messages)
    assert [m.seq for m in messages if not m.ok] == [BAD_SEQ]
    assert all(m.points_accepted == PER_BATCH for m in messages if m.ok and m.seq > 1)


def test_the_sdk_with_batched_acks_stores_everything_once(embedded_server, tmp_path, monkeypatch):
    messages: list[pb.IngestResponse] = []
    ack = IngestStream._ack

    def recording_ack(self, resp):
        messages.append(resp)
        ack(self, resp)

    monkeypatch.setattr(IngestStream, "_ack", recording_ack)
    steps = 5000
    run = runstream.init(  # a stream of its own (the shared one: test_sdk_shared_stream.py)
        "sdk-batched",
        **quick_sdk_options(embedded_server.endpoint, tmp_path, max_batch_points=10, shared_stream=False),
    )
    assert BATCHED_ACKS in run._pipeline.ready()._metadata
    for step in range(steps):
        run.log({"x": float(step), "y": -float(step)}, step=step)
    assert run.finish(timeout_s=120) is True
    stats = run.stats
    assert stats["acked"] == stats["submitted"] and stats["pending"] == stats["refused"] == 0, stats
    answered = Counter(seq for m in messages for seq in (m.seq, *m.also_ok))
    assert set(answered) == set(range(1, stats["submitted"] + 1)) and set(answered.values()) == {1}
    assert len(messages) < stats["submitted"]  # ~1,000 requests, 64 in flight: acks were batched
    embedded_server.stop()
    ((rows, points, requests),) = stored(
        embedded_server,
        f"SELECT (SELECT count() FROM DB.metrics WHERE run_id = '{run.id}' AND kind = 'user'), "
        f"(SELECT uniqExact(key, step) FROM DB.metrics WHERE run_id = '{run.id}' AND kind = 'user'), "
        f"(SELECT {STORED_SEQS} FROM DB.client_seqs FINAL WHERE client_id = '{run.client_id}')",
    )
    assert (rows, points) == (2 * steps, 2 * steps)
    assert requests == stats["submitted"]
