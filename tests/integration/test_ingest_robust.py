"""Ingest answers every request on a stream, whatever the request holds, and the stream stays open
for the next one (issue 10, items 3, 4, 5 and 10): raw gRPC against a real embedded server."""

from __future__ import annotations

import hashlib
import queue
import uuid

import grpc
import pytest

from runstream.v1 import ingest_pb2 as pb
from runstream.v1 import types_pb2
from tests.ingest_client import GRPC_OPTIONS, PROJECT, run_start, status_code

INGEST_METHOD = "/runstream.v1.IngestService/Ingest"
MAX_CONFIG_BYTES = 256 * 1024
MAX_MESSAGE_BYTES = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One embedded server with small message and config limits, shared by this module's tests."""
    from tests.server_process import ServerProcess

    proc = ServerProcess(
        tmp_path_factory.mktemp("robust"),
        env={
            "RUNSTREAM_MAX_CONFIG_BYTES": str(MAX_CONFIG_BYTES),
            "RUNSTREAM_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
        },
    ).start()
    yield proc
    proc.stop()


def raw_stream(server, payloads: list[bytes], timeout: float = 60) -> list[pb.IngestResponse]:
    """Sends raw request bytes on one Ingest stream, half-closes, returns the answers in order."""
    with grpc.insecure_channel(server.endpoint, options=GRPC_OPTIONS) as channel:
        call = channel.stream_stream(
            INGEST_METHOD, request_serializer=None, response_deserializer=pb.IngestResponse.FromString
        )
        return list(call(iter(payloads), timeout=timeout))


def good(seq: int) -> bytes:
    return run_start(seq, uuid.uuid4().hex, f"r{uuid.uuid4().hex[:8]}").SerializeToString()


def by_seq(answers: list[pb.IngestResponse]) -> dict[int, pb.IngestResponse]:
    return {a.seq: a for a in answers}


def test_undecodable_bytes_are_refused_and_the_stream_goes_on(server):
    answers = raw_stream(server, [b"\xff\xff\xff\xff", good(2)])
    assert len(answers) == 2, answers
    refused = answers[0] if not answers[0].ok else answers[1]
    assert not refused.ok and refused.seq == 0
    assert status_code(refused.code) == grpc.StatusCode.INVALID_ARGUMENT
    assert "seq" in refused.message and "decode" in refused.message
    assert by_seq(answers)[2].ok


def test_invalid_utf8_is_refused_with_its_seq(server):
    run_id = f"r{uuid.uuid4().hex[:8]}"
    raw = run_start(5, "c" * 8, run_id).SerializeToString()
    bad = raw.replace(run_id.encode(), b"\xff" + run_id.encode()[1:])
    answers = by_seq(raw_stream(server, [bad, good(6)]))
    assert set(answers) == {5, 6}
    assert not answers[5].ok and status_code(answers[5].code) == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in answers[5].message
    assert answers[6].ok


def test_deeply_nested_config_is_refused_and_the_stream_goes_on(server):
    nested = "[" * 50_000 + "]" * 50_000
    req = run_start(1, uuid.uuid4().hex, "deep", config={"x": types_pb2.Value(json=nested)})
    answers = by_seq(raw_stream(server, [req.SerializeToString(), good(2)]))
    assert set(answers) == {1, 2}
    assert not answers[1].ok and status_code(answers[1].code) == grpc.StatusCode.INVALID_ARGUMENT
    assert "nested" in answers[1].message
    assert answers[2].ok


def test_inline_artifact_with_wrong_sha256_is_refused(server):
    cid, run_id = uuid.uuid4().hex, f"r{uuid.uuid4().hex[:8]}"
    data = b"the bytes"
    artifact = pb.ArtifactEvent(
        project=PROJECT,
        run_id=run_id,
        name="m",
        path="a.bin",
        sha256="0" * 64,
        size=len(data),
        inline_data=data,
    )
    right = pb.ArtifactEvent()
    right.CopyFrom(artifact)
    right.sha256 = hashlib.sha256(data).hexdigest()
    requests = [
        run_start(1, cid, run_id),
        pb.IngestRequest(seq=2, client_id=cid, artifact=artifact),
        pb.IngestRequest(seq=3, client_id=cid, artifact=right),
    ]
    answers = by_seq(raw_stream(server, [r.SerializeToString() for r in requests]))
    assert answers[1].ok and answers[3].ok, answers
    assert not answers[2].ok and status_code(answers[2].code) == grpc.StatusCode.INVALID_ARGUMENT
    assert "sha256" in answers[2].message


def test_config_over_max_config_bytes_is_refused_naming_the_limit(server):
    cid, run_id = uuid.uuid4().hex, f"r{uuid.uuid4().hex[:8]}"
    big = {f"k{i}": types_pb2.Value(text="x" * 1000) for i in range(400)}  # ~400 KB
    start = run_start(1, cid, run_id, config=big)
    update = pb.IngestRequest(
        seq=3, client_id=cid, run_update=pb.RunUpdate(project=PROJECT, run_id=run_id, config=big)
    )
    answers = by_seq(
        raw_stream(server, [start.SerializeToString(), good(2), update.SerializeToString(), good(4)])
    )
    for seq in (1, 3):
        assert not answers[seq].ok and status_code(answers[seq].code) == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_config_bytes" in answers[seq].message and str(MAX_CONFIG_BYTES) in answers[seq].message
    assert answers[2].ok and answers[4].ok


def test_request_over_the_receive_limit_spares_other_streams(server):
    """A message over the transport limit ends its own stream with RESOURCE_EXHAUSTED (gRPC
    refuses it before any handler sees it); another stream on the same connection, and a new
    stream after it, keep working."""
    huge = run_start(1, uuid.uuid4().hex, "huge", notes="x" * (MAX_MESSAGE_BYTES + 1024))
    with grpc.insecure_channel(server.endpoint, options=GRPC_OPTIONS) as channel:
        call = channel.stream_stream(
            INGEST_METHOD, request_serializer=None, response_deserializer=pb.IngestResponse.FromString
        )
        outbox: queue.Queue = queue.Queue()
        other = call(iter(outbox.get, None), timeout=60)
        outbox.put(good(1))
        assert next(other).ok
        with pytest.raises(grpc.RpcError) as err:
            list(call(iter([huge.SerializeToString()]), timeout=60))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        outbox.put(good(2))
        assert next(other).ok
        outbox.put(None)
        assert list(other) == []
        assert [a.ok for a in call(iter([good(1)]), timeout=60)] == [True]


def test_run_context_is_validated(server):
    def start(**ctx) -> bytes:
        return run_start(
            1, uuid.uuid4().hex, f"r{uuid.uuid4().hex[:8]}", context=types_pb2.RunContext(**ctx)
        ).SerializeToString()

    bad = [
        start(host="evil\nhost"),
        start(user="a\x00b"),
        start(git_diff="d" * (MAX_CONFIG_BYTES + 1)),
        start(packages={f"pkg{i}": "1.0" for i in range(20_000)}),
        start(os="o" * 5000),
    ]
    for payload in bad:
        [answer] = raw_stream(server, [payload])
        assert not answer.ok and status_code(answer.code) == grpc.StatusCode.INVALID_ARGUMENT, answer
    [answer] = raw_stream(server, [start(host="node-1", user="me", packages={"numpy": "2.0"}, git_diff="+x")])
    assert answer.ok, answer


def test_tags_per_request_are_bounded(server):
    tags = {f"t{i}": "v" for i in range(5_000)}
    [answer] = raw_stream(server, [run_start(1, uuid.uuid4().hex, "tags", tags=tags).SerializeToString()])
    assert not answer.ok and status_code(answer.code) == grpc.StatusCode.INVALID_ARGUMENT
    assert "tags" in answer.message
