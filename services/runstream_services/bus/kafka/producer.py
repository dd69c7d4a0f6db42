"""KafkaBus, the bus of cluster mode: ingest publishes envelopes with an idempotent producer,
acks=all. Each envelope becomes one record (headers.py) on its kind's topic (topics.py), keyed by
run so a run's envelopes stay in order; the states run events set go to the run directory
(directory.py) before publish() returns. Nothing on this path parses a payload: the kind and the
points come with the Envelope, and the state a run event sets is read from the request that ingest
parsed already.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer, codec
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError, MessageSizeTooLargeError

from runstream.v1 import ingest_pb2
from runstream_services import run_state
from runstream_services.bus.base import Envelope, WriteResult
from runstream_services.bus.kafka.directory import RunDirectory
from runstream_services.bus.kafka.headers import record_headers
from runstream_services.bus.kafka.topics import ensure_topics, max_record_bytes, ping, record_key, topic_for
from runstream_services.config import ServerSettings
from runstream_services.errors import ResourceExhausted, Unavailable

log = logging.getLogger(__name__)


def compression_type(setting: str = "auto") -> str | None:
    """The producer's codec: kafka_compression, or for "auto" zstd (else lz4, else none).

    zstd, not lz4: aiokafka compresses lz4 at level 9 (LZ4 HC, the broker's default level), which
    ran at 40 MB/s on a metrics batch and left it at 0.67 of its size; zstd (level 3) ran at
    1.3 GB/s and left 0.10 (steps and key indexes compress well, values little). On the sustained
    Kafka row lz4 was the ingest path's largest cost (py-spy: 14 % of the server's samples)."""
    if setting == "none":
        return None
    if setting != "auto":
        available = {"lz4": codec.has_lz4, "zstd": codec.has_zstd, "gzip": codec.has_gzip}[setting]()
        if not available:
            raise Unavailable(
                f"kafka_compression={setting}, but its codec is not installed (pip install cramjam)"
            )
        return setting
    if codec.has_zstd():
        return "zstd"
    if codec.has_lz4():
        return "lz4"
    log.warning("no lz4/zstd codec (pip install cramjam): Kafka records go uncompressed")
    return None


def state_change(envelope: Envelope, current: str | None = None) -> tuple[str, str, str] | None:
    """(project, run_id, new state) when this envelope's run event changes its run's state
    (`current`: the state the run directory knows)."""
    if envelope.kind not in ("run_start", "run_finish"):
        return None
    request = envelope.request
    if request is None:  # built without its parsed request (not by ingest): run events are few
        request = ingest_pb2.IngestRequest.FromString(envelope.payload)
    state = run_state.state_set_by(envelope.kind, request, current)
    return None if state is None else (envelope.project, envelope.run_id, state)


class KafkaBus:
    """Bus on Kafka. publish() returns once every envelope is acknowledged by all in-sync
    replicas; a run's envelopes stay in order (key = run_id, idempotent producer). `directory`
    knows the state of every run any ingest process published."""

    # a retried batch may land after a later one of the same client: ingest waits for run events
    keeps_client_order = False

    def __init__(self, settings: ServerSettings, *, partitions: int | None = None, linger_ms: int = 5):
        if not settings.kafka_bootstrap:
            raise Unavailable("bus=kafka needs kafka_bootstrap (host:port) / RUNSTREAM_KAFKA_BOOTSTRAP")
        self.settings = settings
        self.partitions = partitions or settings.kafka_partitions
        self.linger_ms = linger_ms
        self.prefix = settings.kafka_topic_prefix
        self._producer: AIOKafkaProducer | None = None
        self.directory = RunDirectory(settings)
        self.published_envelopes = 0
        self.published_points = 0

    async def start(self) -> None:
        await ensure_topics(self.settings, self.partitions)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id="runstream-ingest",
            enable_idempotence=True,
            acks="all",
            compression_type=compression_type(self.settings.kafka_compression),
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
            await self.directory.start()
        except Exception:
            await producer.stop()
            raise
        self._producer = producer

    async def publish(self, envelopes: list[Envelope]) -> WriteResult:
        producer = self._producer
        if producer is None:
            raise Unavailable("the Kafka bus is not started (or was stopped)")
        futures = []
        changes = []
        try:
            for envelope in envelopes:
                change = state_change(envelope, self.directory.run_state(envelope.project, envelope.run_id))
                if change is not None:
                    changes.append(change)
                futures.append(
                    await producer.send(
                        topic_for(self.prefix, envelope.kind),
                        value=envelope.payload,
                        key=record_key(envelope),
                        headers=record_headers(envelope),
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
        if changes:  # after the run events are durable: the states they set, for every ingest process
            await self.directory.publish(producer, changes)
        points = sum(e.points for e in envelopes)
        self.published_envelopes += len(envelopes)
        self.published_points += points
        return WriteResult(stored=len(envelopes), points=points)

    async def ping(self) -> None:
        """Returns once Kafka answered a metadata request (readiness); raises when it did not."""
        producer = self._producer
        await ping(producer.client if producer is not None else None, self.settings.kafka_bootstrap, "bus")

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await producer.flush()
            finally:
                await producer.stop()
                await self.directory.stop()


async def _settle(futures: list) -> None:
    """Waits out already-sent records so none is left unobserved after an error."""
    if futures:
        await asyncio.gather(*futures, return_exceptions=True)
