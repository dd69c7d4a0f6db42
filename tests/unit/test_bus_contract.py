"""The bus contract without a broker: Envelope fields, the Kafka record codec (Envelope <-> record
headers) and the producer's run-state changes, which read the parsed request, not the bytes."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from runstream.v1 import ingest_pb2 as pb
from runstream.v1 import types_pb2
from runstream_services.bus.base import BODY_KINDS, Envelope, WriteResult
from runstream_services.bus.kafka import envelope_from_record, record_headers, topic_for
from runstream_services.bus.kafka.producer import state_change
from runstream_services.errors import InvalidArgument


def metric_request(seq: int = 3, n: int = 1234) -> pb.IngestRequest:
    return pb.IngestRequest(
        seq=seq,
        client_id="c1",
        metrics=pb.MetricBatch(
            project="p",
            run_id="r",
            keys=["loss"],
            steps=np.arange(n, dtype="<i8").tobytes(),
            values=np.zeros(n, "<f8").tobytes(),
        ),
    )


def as_record(envelope: Envelope, headers=None) -> SimpleNamespace:
    """What aiokafka hands the writer for a record KafkaBus sent."""
    return SimpleNamespace(
        key=envelope.run_id.encode(),
        value=envelope.payload,
        headers=record_headers(envelope) if headers is None else headers,
    )


def test_envelope_carries_what_ingest_learned():
    request = metric_request()
    env = Envelope.from_request(request, received_ms=7)
    assert (env.kind, env.project, env.run_id, env.points) == ("metrics", "p", "r", 1234)
    assert (env.client_id, env.seq, env.received_ms, env.idempotency_key) == ("c1", 3, 7, "c1:3")
    assert env.request is request and env.payload == request.SerializeToString()
    start = Envelope.from_request(pb.IngestRequest(seq=1, client_id="c", run_start=pb.RunStart(run_id="x")))
    assert (start.kind, start.points, start.run_id) == ("run_start", 0, "x")
    assert set(BODY_KINDS) == {f.name for f in pb.IngestRequest.DESCRIPTOR.oneofs_by_name["body"].fields}
    with pytest.raises(InvalidArgument, match="no body"):
        Envelope.from_request(pb.IngestRequest(seq=1, client_id="c"))
    assert WriteResult() == WriteResult(stored=0, duplicates=0, points=0, refused={})


@pytest.mark.parametrize("kind", ["metrics", "run_start", "artifact"])
def test_headers_round_trip_every_field_but_the_parse(kind):
    bodies = {
        "metrics": metric_request(),
        "run_start": pb.IngestRequest(seq=4, client_id="c1", run_start=pb.RunStart(project="p", run_id="r")),
        "artifact": pb.IngestRequest(
            seq=5, client_id="c1", artifact=pb.ArtifactEvent(project="p", run_id="r", inline_data=b"x")
        ),
    }
    sent = Envelope.from_request(bodies[kind], received_ms=1_700_000_000_123)
    got = envelope_from_record(as_record(sent))
    assert got == sent  # every field (the parsed request is not part of equality)
    assert got.request is None  # never serialized: the writer parses the payload itself
    assert dict(record_headers(sent))["body"] == kind.encode()
    assert topic_for("rs", kind) == ("rs.artifacts" if kind == "artifact" else "rs.runs")


def test_a_record_without_kind_headers_is_read_from_its_payload():
    sent = Envelope.from_request(metric_request(n=10), received_ms=5)
    headers = [(k, v) for k, v in record_headers(sent) if k not in ("body", "points")]
    got = envelope_from_record(as_record(sent, headers))
    assert (got.kind, got.points) == ("metrics", 10)
    assert got.request == sent.request  # parsed once, here, and kept for the writer
    garbage = dataclasses.replace(sent, payload=b"\xff\xff\xff")
    unreadable = envelope_from_record(as_record(garbage, headers))
    assert unreadable.request is None  # the writer parses it, fails and refuses it


def test_state_changes_come_from_the_parsed_request_not_the_bytes():
    start = Envelope.from_request(
        pb.IngestRequest(seq=1, client_id="c", run_start=pb.RunStart(project="p", run_id="r"))
    )
    assert state_change(dataclasses.replace(start, payload=b"not protobuf")) == ("p", "r", "running")

    def finish(rank):
        body = pb.RunFinish(project="p", run_id="r", state=types_pb2.RUN_STATE_FAILED, rank=rank)
        return Envelope.from_request(pb.IngestRequest(seq=2, client_id="c", run_finish=body))

    assert state_change(finish(0)) == ("p", "r", "failed")
    assert state_change(finish(2)) is None  # only rank 0 finishes a run
    assert state_change(dataclasses.replace(finish(0), request=None)) == ("p", "r", "failed")
    assert state_change(Envelope.from_request(metric_request())) is None
