"""The record layout of the Kafka bus: Envelope <-> Kafka record.

key = topics.record_key (run events: the run id, for per-run order; artifact events: project +
name), value = the serialized IngestRequest (untouched), headers = the other Envelope fields:
client_id, seq, project, run_id, received_ms, `body` (the body kind) and `points` (metric
points), so neither the producer nor a writer sizing its blocks decodes a payload. Records
written before the `run_id` header existed were keyed by run id: the key is their run id.
Every record KafkaBus has written carries `body` and `points` (since the first version). A record without `body` (written by some other producer) is still read correctly: its
kind and points are then taken from the parsed payload, which the writer reuses.
"""

from __future__ import annotations

from typing import Protocol

from google.protobuf.message import DecodeError

from runstream.v1 import ingest_pb2
from runstream_services.bus.base import Envelope


class Record(Protocol):
    """What the codec reads of an aiokafka ConsumerRecord."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def record_headers(envelope: Envelope) -> list[tuple[str, bytes]]:
    """The headers of the record that carries `envelope` (the parsed request is not sent)."""
    return [
        ("client_id", envelope.client_id.encode()),
        ("seq", str(envelope.seq).encode()),
        ("project", envelope.project.encode()),
        ("run_id", envelope.run_id.encode()),
        ("received_ms", str(envelope.received_ms).encode()),
        ("body", envelope.kind.encode()),
        ("points", str(envelope.points).encode()),
    ]


def envelope_from_record(record: Record) -> Envelope:
    """The Envelope a KafkaBus published as `record`."""
    headers = dict(record.headers)
    payload = record.value or b""
    kind, points, request = _kind_and_points(headers, payload)
    return Envelope(
        client_id=headers["client_id"].decode(),
        seq=int(headers["seq"]),
        kind=kind,
        project=headers["project"].decode(),
        run_id=(headers.get("run_id") or record.key or b"").decode(),
        payload=payload,
        received_ms=int(headers["received_ms"]),
        points=points,
        request=request,
    )


def _kind_and_points(headers: dict[str, bytes], payload: bytes):
    kind = headers.get("body")
    if kind is not None:
        return kind.decode(), int(headers.get("points", b"0")), None
    try:  # not written by KafkaBus: learn the kind from the payload, and keep the parse
        request = ingest_pb2.IngestRequest.FromString(payload)
    except DecodeError:
        request = None
    body = request.WhichOneof("body") if request is not None else None
    if request is None or body is None:
        return "metrics", 0, None  # a placeholder: the writer parses the payload and refuses it
    return body, len(request.metrics.steps) // 8, request
