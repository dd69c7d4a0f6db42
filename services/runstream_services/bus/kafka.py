"""The Kafka bus (cluster mode): ingest publishes envelopes with an idempotent producer, acks=all.

Topics and ordering. A run's RunStart must reach the store before its metrics, and its updates
in the order they were sent. Kafka orders records only within one partition, so everything whose
order matters for a run travels on ONE topic keyed by run_id:

- `<prefix>.runs`       RunStart, RunUpdate, RunFinish and MetricBatch (the run's event stream)
- `<prefix>.artifacts`  ArtifactEvent (inline bytes up to 1 MiB go to the object store on the
                        writer side; kept apart so they never hold back a run's metrics)

With separate run and metric topics no writer could know, without waiting, whether a metric
batch overtook its RunStart (they would sit in different partitions, maybe on different writers
of the group). Keying one topic by run keeps per-run order through retries (idempotent producer)
and through any number of writers. Artifact manifests do not depend on the run row.

Record layout: key = run_id, value = the serialized IngestRequest (untouched), headers =
client_id, seq, project, received_ms (the Envelope fields), plus `body` (which request it is)
and `points` (metric points in it) so a writer can size blocks without decoding payloads.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer, codec
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    TopicAlreadyExistsError,
)

from runstream_services.bus.base import Envelope
from runstream_services.config import ServerSettings
from runstream_services.errors import InvalidArgument, ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

DEFAULT_PARTITIONS = 6
MAX_REPLICATION = 3
_RECORD_OVERHEAD_BYTES = 64 * 1024  # headers, key and batch framing on top of the payload

# IngestRequest oneof `body` field numbers (proto/runstream/v1/ingest.proto)
BODY_NAMES = {10: "run_start", 11: "run_update", 12: "run_finish", 13: "metrics", 14: "artifact"}
_METRICS_FIELD = 13
_ARTIFACT_FIELD = 14
_STEPS_FIELD = 5  # MetricBatch.steps: N x int64


def runs_topic(prefix: str) -> str:
    return f"{prefix}.runs"


def artifacts_topic(prefix: str) -> str:
    return f"{prefix}.artifacts"


def topics(prefix: str) -> list[str]:
    return [runs_topic(prefix), artifacts_topic(prefix)]


def compression_type() -> str | None:
    """lz4 (cheapest CPU per byte on this 2-core class of machine), else zstd, else none."""
    if codec.has_lz4():
        return "lz4"
    if codec.has_zstd():
        return "zstd"
    log.warning("no lz4/zstd codec (pip install cramjam): Kafka records go uncompressed")
    return None


def max_record_bytes(settings: ServerSettings) -> int:
    return settings.max_message_bytes + _RECORD_OVERHEAD_BYTES


# --- a minimal protobuf wire-format reader: finds the body of an IngestRequest without decoding it


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: memoryview):
    """(field number, value memoryview or None) of each top-level field; varints and fixed
    fields are skipped over."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
            yield number, None
        elif wire == 1:
            pos += 8
            yield number, None
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated length-delimited field")
            yield number, buf[pos : pos + length]
            pos += length
        elif wire == 5:
            pos += 4
            yield number, None
        else:
            raise ValueError(f"unsupported wire type {wire}")


def inspect_payload(payload: bytes) -> tuple[str, int]:
    """(body name, metric points) of a serialized IngestRequest, read from the wire format
    without copying the columns. Raises InvalidArgument when it has no known body."""
    try:
        for number, value in _fields(memoryview(payload)):
            if number in BODY_NAMES:
                points = 0
                if number == _METRICS_FIELD and value is not None:
                    for inner, column in _fields(value):
                        if inner == _STEPS_FIELD and column is not None:
                            points = len(column) // 8
                return BODY_NAMES[number], points
    except ValueError as exc:
        raise InvalidArgument(f"ingest request is not a valid runstream.v1.IngestRequest: {exc}") from None
    raise InvalidArgument(
        "ingest request has no body: set one of run_start, run_update, run_finish, metrics, artifact"
    )


def topic_for(prefix: str, body: str) -> str:
    return artifacts_topic(prefix) if body == "artifact" else runs_topic(prefix)


def headers_for(envelope: Envelope, body: str, points: int) -> list[tuple[str, bytes]]:
    return [
        ("client_id", envelope.client_id.encode()),
        ("seq", str(envelope.seq).encode()),
        ("project", envelope.project.encode()),
        ("received_ms", str(envelope.received_ms).encode()),
        ("body", body.encode()),
        ("points", str(points).encode()),
    ]


def envelope_from_record(record) -> Envelope:
    """The Envelope a KafkaBus published as `record` (an aiokafka ConsumerRecord)."""
    headers = {key: value for key, value in record.headers}
    return Envelope(
        client_id=headers["client_id"].decode(),
        seq=int(headers["seq"]),
        project=headers["project"].decode(),
        run_id=record.key.decode(),
        payload=record.value,
        received_ms=int(headers["received_ms"]),
    )


def record_points(record) -> int:
    """Metric points a record carries (at least 1, so run events count toward a block too)."""
    for key, value in record.headers:
        if key == "points":
            return max(1, int(value))
    return 1


async def ensure_topics(settings: ServerSettings, partitions: int = DEFAULT_PARTITIONS) -> None:
    """Creates the bus topics that are missing (idempotent; safe when several processes race).
    Replication follows the cluster: min(3, brokers)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, client_id="runstream-admin", request_timeout_ms=30000
    )
    try:
        await admin.start()
    except KafkaError as exc:
        raise Unavailable(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in topics(settings.kafka_topic_prefix) if t not in existing]
        if not wanted:
            return
        cluster = await admin.describe_cluster()
        replication = max(1, min(MAX_REPLICATION, len(cluster.get("brokers", [])) or 1))
        configs = {"max.message.bytes": str(max_record_bytes(settings))}
        new = [NewTopic(t, partitions, replication, topic_configs=configs) for t in wanted]
        response = await admin.create_topics(new)
        for topic, code, message in _topic_errors(response):
            if code and code != TopicAlreadyExistsError.errno:
                raise Unavailable(f"Kafka refused to create topic {topic!r}: error {code} {message or ''}")
        log.info("created Kafka topics %s (%d partitions, replication %d)", wanted, partitions, replication)
    except KafkaError as exc:
        raise Unavailable(f"cannot create Kafka topics at {settings.kafka_bootstrap}: {exc}") from exc
    finally:
        await admin.close()


def _topic_errors(response) -> list[tuple[str, int, str | None]]:
    out = []
    for item in response.topic_errors:
        topic, code = item[0], item[1]
        out.append((topic, code, item[2] if len(item) > 2 else None))
    return out


class KafkaBus:
    """Bus on Kafka. publish() returns once every envelope is acknowledged by all in-sync
    replicas; a run's envelopes stay in order (key = run_id, idempotent producer)."""

    def __init__(self, settings: ServerSettings, *, partitions: int = DEFAULT_PARTITIONS, linger_ms: int = 5):
        if not settings.kafka_bootstrap:
            raise Unavailable("bus=kafka needs kafka_bootstrap (host:port) / RUNSTREAM_KAFKA_BOOTSTRAP")
        self.settings = settings
        self.partitions = partitions
        self.linger_ms = linger_ms
        self.prefix = settings.kafka_topic_prefix
        self._producer: AIOKafkaProducer | None = None
        self.published_envelopes = 0
        self.published_points = 0

    async def start(self) -> None:
        await ensure_topics(self.settings, self.partitions)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id="runstream-ingest",
            enable_idempotence=True,
            acks="all",
            compression_type=compression_type(),
            linger_ms=self.linger_ms,
            max_batch_size=1 << 20,
            max_request_size=max_record_bytes(self.settings),
            request_timeout_ms=30000,
        )
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise Unavailable(f"cannot reach Kafka at {self.settings.kafka_bootstrap}: {exc}") from exc
        self._producer = producer

    async def publish(self, envelopes: list[Envelope]) -> None:
        producer = self._producer
        if producer is None:
            raise Unavailable("the Kafka bus is not started (or was stopped)")
        futures = []
        points = 0
        try:
            for envelope in envelopes:
                body, n = inspect_payload(envelope.payload)
                points += n
                futures.append(
                    await producer.send(
                        topic_for(self.prefix, body),
                        value=envelope.payload,
                        key=envelope.run_id.encode(),
                        headers=headers_for(envelope, body, n),
                    )
                )
            results = await asyncio.gather(*futures, return_exceptions=True)
        except MessageSizeTooLargeError as exc:
            await _settle(futures)
            raise ResourceExhausted(
                f"an ingest request of {max(len(e.payload) for e in envelopes)} bytes is over the bus limit "
                f"of {self.settings.max_message_bytes} bytes: send smaller batches"
            ) from exc
        except (KafkaTimeoutError, KafkaConnectionError, KafkaError) as exc:
            await _settle(futures)
            raise Unavailable(
                f"Kafka at {self.settings.kafka_bootstrap} did not take the batch: {exc}"
            ) from exc
        for result in results:
            if isinstance(result, MessageSizeTooLargeError):
                raise ResourceExhausted(f"Kafka refused an ingest request as too large: {result}")
            if isinstance(result, BaseException):
                raise Unavailable(f"Kafka at {self.settings.kafka_bootstrap} did not acknowledge: {result}")
        self.published_envelopes += len(envelopes)
        self.published_points += points

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await producer.flush()
            finally:
                await producer.stop()


async def _settle(futures: list) -> None:
    """Waits out already-sent records so none is left unobserved after an error."""
    if futures:
        await asyncio.gather(*futures, return_exceptions=True)


__all__ = [
    "DEFAULT_PARTITIONS",
    "KafkaBus",
    "artifacts_topic",
    "ensure_topics",
    "envelope_from_record",
    "inspect_payload",
    "record_points",
    "runs_topic",
    "topics",
]
