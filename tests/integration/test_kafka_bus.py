"""KafkaBus against the real Kafka: topics, record layout, per-run order, errors."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer

from runstream.v1 import ingest_pb2, types_pb2
from runstream_services.bus.base import Envelope
from runstream_services.bus.kafka import (
    KafkaBus,
    artifacts_topic,
    delete_topics,
    envelope_from_record,
    runs_topic,
    topics,
)
from runstream_services.config import ServerSettings
from runstream_services.errors import ResourceExhausted


def metric_request(seq: int, run_id: str, n: int, client_id: str = "c1") -> ingest_pb2.IngestRequest:
    steps = np.arange(seq * n, seq * n + n, dtype="<i8")
    return ingest_pb2.IngestRequest(
        seq=seq,
        client_id=client_id,
        metrics=ingest_pb2.MetricBatch(
            project="p",
            run_id=run_id,
            keys=["loss"],
            key_index=np.zeros(n, "<u2").tobytes(),
            steps=steps.tobytes(),
            values=np.linspace(0, 1, n).astype("<f8").tobytes(),
            times_ms=np.full(n, 1_700_000_000_000, "<i8").tobytes(),
        ),
    )


def envelope(request: ingest_pb2.IngestRequest, run_id: str) -> Envelope:
    assert getattr(request, request.WhichOneof("body")).run_id == run_id
    return Envelope.from_request(request)


@pytest.fixture
def settings(services):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    yield ServerSettings(
        bus="kafka",
        kafka_allow_under_replicated=True,  # the test broker is a single node
        kafka_bootstrap=services.kafka_bootstrap,
        kafka_topic_prefix=prefix,
        max_message_bytes=2 * 1024 * 1024,
    )

    asyncio.run(delete_topics(services.kafka_bootstrap, prefix))


async def _consume(settings: ServerSettings, expected: int) -> list:
    consumer = AIOKafkaConsumer(
        *topics(settings.kafka_topic_prefix),
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.kafka_topic_prefix}-check",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 << 20,
    )
    await consumer.start()
    records = []
    try:
        for _ in range(100):  # bounded: at most ~100 s
            batch = await consumer.getmany(timeout_ms=1000)
            for part in batch.values():
                records.extend(part)
            if len(records) >= expected:
                break
    finally:
        await consumer.stop()
    return records


def test_round_trip_keeps_envelopes_topics_and_per_run_order(settings):
    runs = [f"run-{i}" for i in range(4)]
    published: list[Envelope] = []
    for seq in range(40):
        run = runs[seq % 4]
        published.append(envelope(metric_request(seq, run, 100 + seq), run))
    start = ingest_pb2.IngestRequest(
        seq=100, client_id="c1", run_start=ingest_pb2.RunStart(project="p", run_id="a")
    )
    art = ingest_pb2.IngestRequest(
        seq=101,
        client_id="c1",
        artifact=ingest_pb2.ArtifactEvent(project="p", run_id="a", name="weights", inline_data=b"z" * 1000),
    )
    published += [envelope(start, "a"), envelope(art, "a")]

    async def scenario():
        bus = KafkaBus(settings)
        await bus.start()
        try:
            first = await bus.publish(published[:20])
            await bus.publish(published[20:])
        finally:
            await bus.stop()
            await bus.stop()  # idempotent
        assert (first.stored, first.points, first.refused) == (20, sum(e.points for e in published[:20]), {})
        assert bus.published_envelopes == len(published)
        return await _consume(settings, len(published))

    records = asyncio.run(scenario())

    assert len(records) == len(published)
    by_topic = {}
    for record in records:
        by_topic.setdefault(record.topic, []).append(record)
    assert len(by_topic[runs_topic(settings.kafka_topic_prefix)]) == 41
    # artifacts are keyed by project + name: one writer numbers all versions of a name
    assert [r.key for r in by_topic[artifacts_topic(settings.kafka_topic_prefix)]] == [b"p\x00weights"]
    received = {(e.client_id, e.seq): e for e in map(envelope_from_record, records)}
    for sent in published:
        got = received[(sent.client_id, sent.seq)]
        assert got == sent
    for record in records:  # kind and points travel in headers, and agree with the payload
        request = ingest_pb2.IngestRequest.FromString(record.value)
        got = envelope_from_record(record)
        assert got.kind == request.WhichOneof("body")
        assert got.points == len(request.metrics.steps) // 8
    for run in runs:  # a run's records sit in one partition, in the order they were published
        mine = sorted((r for r in records if r.key == run.encode()), key=lambda r: r.offset)
        assert len({r.partition for r in mine}) == 1
        seqs = [envelope_from_record(r).seq for r in mine]
        assert seqs == sorted(seqs) and len(seqs) == 10


def test_oversized_request_is_refused_with_a_clear_error(settings):
    big = metric_request(1, "r", 400_000)  # ~9.6 MB > 2 MiB limit

    async def scenario():
        bus = KafkaBus(settings)
        await bus.start()
        try:
            with pytest.raises(ResourceExhausted, match="smaller batches"):
                await bus.publish([envelope(big, "r")])
            await bus.publish([envelope(metric_request(2, "r", 10), "r")])  # the bus still works
        finally:
            await bus.stop()

    asyncio.run(scenario())


def test_run_states_reach_every_ingest_process(settings):
    """A run started through one ingest process is known to one started later (a restarted or
    another replica) and to one already running; a finish by rank 0 ends it."""

    def req(seq, **body):
        return envelope(ingest_pb2.IngestRequest(seq=seq, client_id="c9", **body), "r-dir")

    start = req(1, run_start=ingest_pb2.RunStart(project="p", run_id="r-dir"))
    other_rank_finish = req(
        2,
        run_finish=ingest_pb2.RunFinish(
            project="p", run_id="r-dir", state=types_pb2.RUN_STATE_FAILED, rank=1
        ),
    )
    finish = req(
        3, run_finish=ingest_pb2.RunFinish(project="p", run_id="r-dir", state=types_pb2.RUN_STATE_FINISHED)
    )

    async def scenario():
        first, watcher = KafkaBus(settings), KafkaBus(settings)
        await first.start()
        await watcher.start()
        try:
            assert first.directory.run_state("p", "r-dir") is None
            await first.publish([start, other_rank_finish])
            assert first.directory.run_state("p", "r-dir") == "running"
            for _ in range(200):  # bounded: the watcher tails the directory
                if watcher.directory.run_state("p", "r-dir") == "running":
                    break
                await asyncio.sleep(0.05)
            assert watcher.directory.run_state("p", "r-dir") == "running"
            await first.publish([finish])
        finally:
            await first.stop()
            await watcher.stop()
        later = KafkaBus(settings)
        await later.start()
        try:
            return later.directory.run_state("p", "r-dir"), later.directory.run_state("p", "other")
        finally:
            await later.stop()

    assert asyncio.run(scenario()) == ("finished", None)
