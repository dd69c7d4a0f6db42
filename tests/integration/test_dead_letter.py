"""A record the writer can never store goes to `<prefix>.dead-letter` with its refusal, is counted
and logged, and its partition keeps flowing (issue 10, item 3): KafkaWriterLoop in-process on the
real Kafka and chDB with the real StoreWriter."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from runstream.v1 import ingest_pb2
from runstream_services.artifacts.local import LocalArtifactStore
from runstream_services.bus.base import Envelope
from runstream_services.bus.kafka import KafkaBus, delete_topics
from runstream_services.config import ServerSettings
from runstream_services.errors import InvalidArgument
from runstream_services.storage.clickhouse import connect
from runstream_services.storage.migrations import migrate
from runstream_services.writers.kafka_consumer import KafkaWriterLoop
from runstream_services.writers.store import StoreWriter
from tests.integration.test_kafka_writer import metrics, run_start

PROJECT = "p"


@pytest.fixture
def setup(services, chdb_dsn, database, tmp_path):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    settings = ServerSettings(
        bus="kafka",
        kafka_allow_under_replicated=True,  # the test broker is a single node
        kafka_bootstrap=services.kafka_bootstrap,
        kafka_topic_prefix=prefix,
        kafka_group_id=f"{prefix}-writers",
        clickhouse_dsn=chdb_dsn,
        clickhouse_database=database,
        writer_flush_interval_s=0.05,
        writer_max_block_points=5_000,
    )
    client = connect(chdb_dsn)
    migrate(client, database)
    yield settings, client, LocalArtifactStore(tmp_path / "artifacts")
    asyncio.run(delete_topics(services.kafka_bootstrap, prefix))


def artifact(seq: int, run_id: str, client_id: str, data: bytes, sha256: str) -> ingest_pb2.IngestRequest:
    return ingest_pb2.IngestRequest(
        seq=seq,
        client_id=client_id,
        artifact=ingest_pb2.ArtifactEvent(
            project=PROJECT, run_id=run_id, name=f"a{seq}", path="f.bin", sha256=sha256, size=len(data),
            inline_data=data,
        ),
    )  # fmt: skip


def count(client, sql: str) -> int:
    return int(client.query(sql).result_rows[0][0])


async def read_dead_letters(settings: ServerSettings, expected: int) -> list:
    consumer = AIOKafkaConsumer(
        f"{settings.kafka_topic_prefix}.dead-letter",
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list = []
    try:
        deadline = time.monotonic() + 20
        while len(records) < expected and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


def test_bad_records_go_to_the_dead_letter_topic_and_the_partition_flows(setup, caplog):
    settings, client, store = setup
    db, cid, run_id = settings.clickhouse_database, "client-dl", "run0"
    bad_metrics = metrics(3, run_id, cid, 0, 10)
    bad_metrics.metrics.steps = b"\x01\x02\x03"  # not int64s: no writer can ever store this batch
    data = b"some bytes"

    good = [
        Envelope.from_request(run_start(1, run_id, cid)),
        Envelope.from_request(metrics(2, run_id, cid, 0, 100)),
    ]
    bad = [
        Envelope.from_request(bad_metrics),
        Envelope.from_request(artifact(4, run_id, cid, data, "0" * 64)),  # bytes do not match the digest
    ]
    after = [
        Envelope.from_request(metrics(5, run_id, cid, 100, 100)),
        Envelope.from_request(artifact(6, run_id, cid, data, hashlib.sha256(data).hexdigest())),
    ]

    async def scenario():
        bus = KafkaBus(settings)
        await bus.start()
        try:
            await bus.publish(good)
            for envelope in bad:
                await bus.publish([envelope])
            producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
            await producer.start()
            try:  # a record no KafkaBus wrote: no headers, not a protobuf
                await producer.send_and_wait(
                    f"{settings.kafka_topic_prefix}.runs", b"\xff\xfe", key=run_id.encode()
                )
            finally:
                await producer.stop()
            await bus.publish(after)
        finally:
            await bus.stop()
        loop = KafkaWriterLoop(settings, StoreWriter(client, db, store, settings), client=client)
        await loop.start()
        try:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                if (
                    count(client, f"SELECT count() FROM {db}.metrics") >= 200
                    and count(client, f"SELECT count() FROM {db}.artifacts") >= 1
                    and loop.total_lag() == 0
                ):
                    break
                await asyncio.sleep(0.2)
            samples = {(name, tuple(sorted(labels.items()))): value for name, labels, value in loop.collect()}
        finally:
            await loop.stop()
        return samples, await read_dead_letters(settings, 3)

    with caplog.at_level(logging.WARNING):
        samples, dead = asyncio.run(scenario())

    assert count(client, f"SELECT count() FROM {db}.metrics") == 200  # the good ones, before and after
    assert count(client, f"SELECT count() FROM {db}.artifacts") == 1
    assert len(dead) == 3
    by_seq = {}
    for record in dead:
        headers = dict(record.headers)
        assert headers["refusal"]
        by_seq[headers.get("seq", b"?").decode()] = (record, headers)
    assert set(by_seq) == {"3", "4", "?"}
    record, headers = by_seq["3"]
    assert record.value == bad[0].payload and headers["client_id"] == cid.encode()
    assert b"sha256" in by_seq["4"][1]["refusal"]
    assert by_seq["?"][0].value == b"\xff\xfe"
    assert samples[("runstream_dead_letters_total", ())] == 3
    assert any(
        "dead-letter" in r.message and run_id in r.message and PROJECT in r.message for r in caplog.records
    )


class _RefusesSeq3(StoreWriter):
    """The real StoreWriter, but the store is down for its first call (transient: retried) and it
    refuses any write holding seq 3 (deterministic: that record alone must be dead-lettered)."""

    calls = 0

    def write(self, envelopes, token=None, replay=False, logged=False):
        type(self).calls += 1
        if type(self).calls == 1:
            raise RuntimeError("chDB: simulated outage")
        if any(e.seq == 3 for e in envelopes):
            raise InvalidArgument("seq 3 is refused by the store writer")
        return super().write(envelopes, token, replay, logged)


def test_a_block_refused_by_the_writer_is_split_and_only_the_guilty_record_is_dead_lettered(setup):
    settings, client, store = setup
    db, cid, run_id = settings.clickhouse_database, "client-split", "run1"
    envelopes = [Envelope.from_request(run_start(1, run_id, cid))] + [
        Envelope.from_request(metrics(seq, run_id, cid, (seq - 2) * 50, 50)) for seq in range(2, 7)
    ]

    async def scenario():
        bus = KafkaBus(settings)
        await bus.start()
        try:
            await bus.publish(envelopes)  # one publish: the records land in one block
        finally:
            await bus.stop()
        loop = KafkaWriterLoop(settings, _RefusesSeq3(client, db, store, settings), client=client)
        await loop.start()
        try:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                if count(client, f"SELECT count() FROM {db}.metrics") >= 200 and loop.total_lag() == 0:
                    break
                await asyncio.sleep(0.2)
        finally:
            await loop.stop()
        return loop, await read_dead_letters(settings, 1)

    loop, dead = asyncio.run(scenario())
    assert count(client, f"SELECT count() FROM {db}.metrics") == 200  # seqs 2, 4, 5, 6
    assert [dict(r.headers)["seq"] for r in dead] == [b"3"]
    assert b"seq 3 is refused" in dict(dead[0].headers)["refusal"]
    assert loop.dead_letters.count == 1 and loop.errors >= 2
