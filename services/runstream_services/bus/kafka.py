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

Run directory. An ingest process refuses requests for runs it does not know, but with Kafka an
SDK may reconnect to another ingest process (or a restarted one) that never saw the run's
RunStart, and the store may lag behind the bus. So run states also go to a small compacted topic
`<prefix>.run-states` (key project/run_id, value the state), written after the run event is
acknowledged and before publish() returns; every KafkaBus reads it whole at start and tails it,
and `run_state(project, run_id)` answers from memory.

Record layout: key = run_id, value = the serialized IngestRequest (untouched), headers =
client_id, seq, project, received_ms (the Envelope fields), plus `body` (which request it is)
and `points` (metric points in it) so a writer can size blocks without decoding payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition, codec
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    TopicAlreadyExistsError,
)

from runstream.v1 import ingest_pb2, types_pb2
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


def run_states_topic(prefix: str) -> str:
    return f"{prefix}.run-states"


def topics(prefix: str) -> list[str]:
    """The topics writers consume."""
    return [runs_topic(prefix), artifacts_topic(prefix)]


def all_topics(prefix: str) -> list[str]:
    return [*topics(prefix), run_states_topic(prefix)]


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


async def delete_topics(bootstrap: str, prefix: str) -> None:
    """Deletes every topic of the bus with this prefix (tests and benchmarks clean up with it)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(all_topics(prefix))
    finally:
        await admin.close()


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
        wanted = [t for t in all_topics(settings.kafka_topic_prefix) if t not in existing]
        if not wanted:
            return
        cluster = await admin.describe_cluster()
        replication = max(1, min(MAX_REPLICATION, len(cluster.get("brokers", [])) or 1))
        configs = {"max.message.bytes": str(max_record_bytes(settings))}
        states = run_states_topic(settings.kafka_topic_prefix)
        new = [
            NewTopic(t, 1, replication, topic_configs={"cleanup.policy": "compact"})
            if t == states
            else NewTopic(t, partitions, replication, topic_configs=configs)
            for t in wanted
        ]
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


def _run_key(project: str, run_id: str) -> bytes:
    return f"{project}/{run_id}".encode()


def state_change(payload: bytes, body: str) -> tuple[str, str, str] | None:
    """(project, run_id, new state) when this run event changes the run's state."""
    if body not in ("run_start", "run_finish"):
        return None
    req = ingest_pb2.IngestRequest.FromString(payload)
    if body == "run_start":
        return req.run_start.project, req.run_start.run_id, "running"
    finish = req.run_finish
    if finish.rank != 0:  # a run is finished when rank 0 finishes it
        return None
    return (
        finish.project,
        finish.run_id,
        types_pb2.RunState.Name(finish.state).removeprefix("RUN_STATE_").lower(),
    )


class RunDirectory:
    """Run states from the compacted `<prefix>.run-states` topic: read whole at start, then tailed."""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.topic = run_states_topic(settings.kafka_topic_prefix)
        self._states: dict[tuple[str, str], str] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None

    def get(self, project: str, run_id: str) -> str | None:
        return self._states.get((project, run_id))

    def note(self, project: str, run_id: str, state: str) -> None:
        self._states[(project, run_id)] = state

    def __len__(self) -> int:
        return len(self._states)

    def _apply(self, records) -> None:
        for record in records:
            project, _, run_id = record.key.decode().partition("/")
            if record.value is None:
                self._states.pop((project, run_id), None)
            else:
                self._states[(project, run_id)] = record.value.decode()

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id="runstream-run-directory",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        try:
            await consumer.start()
            tp = TopicPartition(self.topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                self._apply(batch.get(tp, []))
        except KafkaError as exc:
            await consumer.stop()
            raise Unavailable(f"cannot read the run directory from Kafka: {exc}") from exc
        self._consumer = consumer
        self._task = asyncio.create_task(self._tail(), name="runstream-run-directory")

    async def _tail(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=1000)
            except KafkaError as exc:
                log.warning("run directory: Kafka read failed (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            for records in batch.values():
                self._apply(records)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()


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
        self.runs = RunDirectory(settings)
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
        try:
            await self.runs.start()
        except Exception:
            await producer.stop()
            raise
        self._producer = producer

    def run_state(self, project: str, run_id: str) -> str | None:
        """'running', 'finished', ... of a run some ingest process published; None when unknown.
        Fits ingest's RunRegistry lookup for processes without a store."""
        return self.runs.get(project, run_id)

    async def publish(self, envelopes: list[Envelope]) -> None:
        producer = self._producer
        if producer is None:
            raise Unavailable("the Kafka bus is not started (or was stopped)")
        futures = []
        points = 0
        changes = []
        try:
            for envelope in envelopes:
                body, n = inspect_payload(envelope.payload)
                points += n
                change = state_change(envelope.payload, body)
                if change is not None:
                    changes.append(change)
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
        if changes:
            await self._publish_states(producer, changes)
        self.published_envelopes += len(envelopes)
        self.published_points += points

    async def _publish_states(self, producer: AIOKafkaProducer, changes: list[tuple[str, str, str]]) -> None:
        """After the run events are durable: the states they set, for every ingest process."""
        try:
            futures = [
                await producer.send(self.runs.topic, value=state.encode(), key=_run_key(project, run_id))
                for project, run_id, state in changes
            ]
            await asyncio.gather(*futures)
        except KafkaError as exc:
            raise Unavailable(f"Kafka did not take the run states: {exc}") from exc
        for project, run_id, state in changes:
            self.runs.note(project, run_id, state)

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await producer.flush()
            finally:
                await producer.stop()
                await self.runs.stop()


def run_lookup(bus, fallback=None):
    """A RunRegistry lookup that asks the bus's run directory first (fresh, shared by every ingest
    process), then `fallback` (the store) for runs from before the directory existed."""
    directory = getattr(bus, "run_state", None)
    if directory is None:
        return fallback

    def lookup(project: str, run_id: str) -> str | None:
        state = directory(project, run_id)
        if state is None and fallback is not None:
            state = fallback(project, run_id)
        return state

    return lookup


async def _settle(futures: list) -> None:
    """Waits out already-sent records so none is left unobserved after an error."""
    if futures:
        await asyncio.gather(*futures, return_exceptions=True)


__all__ = [
    "DEFAULT_PARTITIONS",
    "KafkaBus",
    "RunDirectory",
    "all_topics",
    "run_lookup",
    "run_states_topic",
    "artifacts_topic",
    "ensure_topics",
    "envelope_from_record",
    "inspect_payload",
    "record_points",
    "runs_topic",
    "topics",
]
