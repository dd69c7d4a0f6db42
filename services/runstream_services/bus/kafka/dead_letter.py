"""Deterministic refusals on the Kafka writer side, and where they go.

A record no writer can ever store (its payload is not an IngestRequest, its headers are missing,
its metric columns are not whole int64/float64 arrays, its inline bytes do not hash to their
digest, the store writer refuses it as invalid) would otherwise be retried forever and stall its
partition, and every acked record behind it. Such a record goes to `<prefix>.dead-letter`
instead: the original key, value and headers, plus `refusal` (why) and `source`
(topic:partition:offset), so an operator can inspect, fix and re-publish it. Each one is counted
(runstream_dead_letters_total) and logged with its project and run; then the partition moves on.

What is NOT deterministic (the store or Kafka unreachable, timeouts, chDB's RuntimeErrors) keeps
being retried with backoff: see `is_deterministic`.

Only shape is checked here (`screen`), never ingest's limits: a record acked under other limits
(an older version, other settings) must still be stored, not dead-lettered.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import numpy as np
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from google.protobuf.message import DecodeError

from runstream.v1 import ingest_pb2
from runstream_services.bus.base import Envelope
from runstream_services.bus.kafka.topics import dead_letter_topic, max_record_bytes
from runstream_services.config import ServerSettings
from runstream_services.errors import InvalidArgument, Unavailable

log = logging.getLogger("runstream.dead_letter")

#: refusals of the input a retry cannot cure: the same records fail the same way every time.
#: Deliberately narrow: a bug (TypeError, KeyError, ...) must stall and alert, not send every
#: record to the dead-letter topic.
_DETERMINISTIC = (InvalidArgument, DecodeError, UnicodeError, RecursionError, OverflowError)


def is_deterministic(exc: BaseException) -> bool:
    """True when storing the same records again would fail the same way (dead-letter them);
    False for what may pass on retry (unreachable store, timeouts, unknown errors)."""
    return isinstance(exc, _DETERMINISTIC) and not isinstance(exc, (Unavailable, TimeoutError, OSError))


def screen(envelope: Envelope) -> tuple[Envelope, str]:
    """The envelope with its payload parsed (the store writer reuses the parse), and "" — or why
    no writer could store it."""
    try:
        request = ingest_pb2.IngestRequest.FromString(envelope.payload)
    except Exception as exc:  # DecodeError, RecursionError
        return envelope, f"payload is not a runstream.v1.IngestRequest: {exc}"
    body = request.WhichOneof("body")
    if body != envelope.kind:
        return envelope, f"payload holds a {body} body, not the {envelope.kind} body its headers name"
    if body == "metrics":
        why = _metric_columns_problem(request.metrics)
        if why:
            return envelope, why
    elif body == "media" and request.media.inline_data:
        event = request.media
        digest = hashlib.sha256(event.inline_data).hexdigest()
        if len(event.inline_data) != event.size or digest != event.sha256.lower():
            return envelope, (
                f"inline media bytes ({len(event.inline_data)} bytes, sha256 {digest}) are not the "
                f"declared ones ({event.size} bytes, sha256 {event.sha256})"
            )
    elif body == "artifact":
        event = request.artifact
        if event.inline_data or event.size == 0:
            digest = hashlib.sha256(event.inline_data).hexdigest()
            if len(event.inline_data) != event.size or digest != event.sha256.lower():
                return envelope, (
                    f"inline artifact bytes ({len(event.inline_data)} bytes, sha256 {digest}) are not the "
                    f"declared ones ({event.size} bytes, sha256 {event.sha256})"
                )
    return dataclasses.replace(envelope, request=request), ""


def _metric_columns_problem(batch: ingest_pb2.MetricBatch) -> str:
    n = len(batch.steps) // 8
    if not batch.keys or len(batch.steps) % 8:
        return "metric batch has no keys, or `steps` is not a whole int64 array"
    if len(batch.values) != 8 * n or (batch.times_ms and len(batch.times_ms) != 8 * n):
        return "metric batch `values` / `times_ms` do not hold one float64 / int64 per step"
    if batch.key_index and len(batch.key_index) != 2 * n:
        return "metric batch `key_index` does not hold one uint16 per step"
    if not batch.key_index and len(batch.keys) != 1:
        return "metric batch has several keys but no key_index"
    if batch.key_index and int(np.frombuffer(batch.key_index, "<u2").max()) >= len(batch.keys):
        return "metric batch key_index refers to a key that is not listed"
    return ""


def where(record) -> tuple[str, str]:
    """(project, run) of a record, for the log line, as far as its headers and key say."""
    headers = dict(record.headers or ())
    project = headers.get("project", b"?").decode("utf-8", "replace")
    return project, (headers.get("run_id") or record.key or b"?").decode("utf-8", "replace")


class DeadLetters:
    """The producer of `<prefix>.dead-letter` and its counter."""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.topic = dead_letter_topic(settings.kafka_topic_prefix)
        self.count = 0
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id="runstream-dead-letter",
            enable_idempotence=True,
            acks="all",
            max_request_size=max_record_bytes(self.settings),
        )
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise Unavailable(f"cannot reach Kafka at {self.settings.kafka_bootstrap}: {exc}") from exc
        self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def send(self, source_topic: str, partition: int, record, refusal: str) -> None:
        """Writes `record` with its refusal to the dead-letter topic and returns once it is
        acknowledged (before the caller commits past it). Raises Unavailable when Kafka did not
        take it: the caller retries."""
        producer = self._producer
        if producer is None:
            raise Unavailable("the dead-letter producer is not started")
        headers = [*(record.headers or ()),
                   ("refusal", refusal.encode("utf-8", "replace")),
                   ("source", f"{source_topic}:{partition}:{record.offset}".encode())]  # fmt: skip
        try:
            await producer.send_and_wait(self.topic, value=record.value, key=record.key, headers=headers)
        except KafkaError as exc:
            raise Unavailable(f"Kafka did not take the dead letter: {exc}") from exc
        self.count += 1
        project, run = where(record)
        log.error(
            "dead-letter: record %s:%d@%d of project %s run %s can never be stored (%s); it is in %s",
            source_topic, partition, record.offset, project, run, refusal, self.topic,
        )  # fmt: skip
