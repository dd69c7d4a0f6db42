"""KafkaWriterLoop in-process against the real Kafka and chDB, with the real StoreWriter:
blocks, commits only after inserts, exact re-forming of a half-written block."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2

from runstream.v1 import ingest_pb2
from runstream_services.artifacts.local import LocalArtifactStore
from runstream_services.bus.base import Envelope
from runstream_services.bus.kafka import KafkaBus, delete_topics, envelope_from_record, runs_topic
from runstream_services.config import ServerSettings
from runstream_services.storage.clickhouse import connect
from runstream_services.storage.migrations import migrate
from runstream_services.writers.kafka_consumer import KafkaWriterLoop, block_token
from runstream_services.writers.store import StoreWriter
from tests.chdb_inspect import STORED_SEQS

PROJECT = "p"


def run_start(seq: int, run_id: str, client_id: str) -> ingest_pb2.IngestRequest:
    return ingest_pb2.IngestRequest(
        seq=seq,
        client_id=client_id,
        run_start=ingest_pb2.RunStart(project=PROJECT, run_id=run_id, name=f"name-{run_id}", start_ms=1),
    )


def metrics(seq: int, run_id: str, client_id: str, first_step: int, n: int) -> ingest_pb2.IngestRequest:
    return ingest_pb2.IngestRequest(
        seq=seq,
        client_id=client_id,
        metrics=ingest_pb2.MetricBatch(
            project=PROJECT,
            run_id=run_id,
            keys=["loss", "acc"],
            key_index=(np.arange(n) % 2).astype("<u2").tobytes(),
            steps=np.arange(first_step, first_step + n, dtype="<i8").tobytes(),
            values=np.random.default_rng(seq).random(n).astype("<f8").tobytes(),
            times_ms=np.full(n, 1_700_000_000_000, "<i8").tobytes(),
        ),
    )


def envelope(req: ingest_pb2.IngestRequest, run_id: str) -> Envelope:
    assert getattr(req, req.WhichOneof("body")).run_id == run_id
    return Envelope.from_request(req)


def workload(client_id: str, runs: int, batches: int, points: int) -> list[Envelope]:
    out, seq = [], 0
    for r in range(runs):
        seq += 1
        out.append(envelope(run_start(seq, f"run{r}", client_id), f"run{r}"))
    for b in range(batches):
        for r in range(runs):
            seq += 1
            out.append(envelope(metrics(seq, f"run{r}", client_id, b * points, points), f"run{r}"))
    return out


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
    store = LocalArtifactStore(tmp_path / "artifacts")
    yield settings, client, store

    asyncio.run(delete_topics(services.kafka_bootstrap, prefix))


def count(client, database: str, sql: str) -> int:
    return int(client.query(sql.format(db=database)).result_rows[0][0])


async def publish(settings: ServerSettings, envelopes: list[Envelope]) -> None:
    bus = KafkaBus(settings)
    await bus.start()
    try:
        for i in range(0, len(envelopes), 16):
            await bus.publish(envelopes[i : i + 16])
    finally:
        await bus.stop()


async def drain(loop: KafkaWriterLoop, client, database: str, expected_points: int) -> None:
    for _ in range(600):  # bounded: at most ~60 s
        if (
            count(client, database, "SELECT count() FROM {db}.metrics") >= expected_points
            and loop.total_lag() == 0
        ):
            return
        await asyncio.sleep(0.1)


async def drained_loop(settings: ServerSettings, writer: StoreWriter, client, expected_points: int):
    """A writer loop run until it stored `expected_points` and has no lag, then stopped."""
    loop = KafkaWriterLoop(settings, writer, client=client)
    await loop.start()
    try:
        await drain(loop, client, settings.clickhouse_database, expected_points)
    finally:
        await loop.stop()
    return loop


async def committed_and_end_offsets(
    settings: ServerSettings, topic: str, partitions: int
) -> tuple[dict, dict]:
    """{partition: offset} the writers' group committed, and {partition: end offset}, read from
    Kafka by a fresh consumer of that group that joins nothing (no subscription, no rebalance)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.kafka_group_id,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        committed = {tp.partition: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()
    return {p: c for p, c in committed.items() if c is not None}, {tp.partition: e for tp, e in ends.items()}


def test_metrics_through_kafka_are_stored_once_and_committed(setup):
    settings, client, store = setup
    db = settings.clickhouse_database
    envelopes = workload("client-a", runs=3, batches=8, points=1_000)
    replays = envelopes[5:9]  # the SDK resent these after a reconnect: same (client_id, seq)
    expected = 3 * 8 * 1_000

    async def scenario():
        await publish(settings, envelopes + replays)
        loop = KafkaWriterLoop(settings, StoreWriter(client, db, store, settings), client=client)
        await loop.start()
        try:
            await drain(loop, client, db, expected)
            lag = loop.lag()
        finally:
            await loop.stop()
            await loop.stop()  # idempotent
        return loop, lag

    loop, lag = asyncio.run(scenario())
    loop.sink.flush()  # the ingested records follow the inserts in the background

    assert count(client, db, "SELECT count() FROM {db}.metrics") == expected
    assert (
        count(client, db, "SELECT count() FROM (SELECT DISTINCT run_id, key, step FROM {db}.metrics)")
        == expected
    )
    assert count(client, db, "SELECT count() FROM {db}.runs FINAL") == 3
    assert count(client, db, "SELECT " + STORED_SEQS + " FROM {db}.client_seqs FINAL") == len(envelopes)
    assert lag and sum(lag.values()) == 0
    assert loop.blocks_written >= 2  # 24k points in blocks of at most ~5k
    assert loop.records_written == len(envelopes) + len(replays)
    # every stored block announced its boundaries first
    intents = client.query(f"SELECT topic, first_offset, last_offset FROM {db}.writer_intents").result_rows
    assert intents and all(
        t == runs_topic(settings.kafka_topic_prefix) and f <= last for t, f, last in intents
    )


class _InsertsNoted(StoreWriter):
    """The real StoreWriter; notes the points of each metric insert as it begins."""

    def __init__(self, *args, events: list, **kwargs):
        super().__init__(*args, **kwargs)
        self.events = events

    def _insert_metrics(self, items, token, recounted=None, replay=False):
        self.events.append(("insert", sum(len(batch.steps) // 8 for _, batch in items)))
        return super()._insert_metrics(items, token, recounted, replay)


def test_the_writer_shows_each_block_to_staged_listeners_before_its_inserts(setup):
    """Past its intent and the fence a block is re-formable from Kafka, so the writer writes it as
    logged: a read cache (server.sole_writer) gets its rows before the inserts, as on the embedded
    bus; never an insert whose points were not shown first."""
    settings, client, store = setup
    db = settings.clickhouse_database
    envelopes = workload("client-s", runs=2, batches=6, points=1_000)
    expected = 2 * 6 * 1_000
    events: list = []
    failed: list = []
    writer = _InsertsNoted(client, db, store, settings, events=events)
    writer.subscribe_staged(
        lambda block: events.append(("staged", sum(len(b.steps) // 8 for _, b in block.metrics))),
        failed.append,
    )

    async def scenario():
        await publish(settings, envelopes)
        return await drained_loop(settings, writer, client, expected)

    loop = asyncio.run(scenario())
    assert count(client, db, "SELECT count() FROM {db}.metrics") == expected
    assert not failed
    assert loop.blocks_written >= 2  # 12k points in blocks of at most ~5k
    shown = inserted = 0
    for kind, points in events:
        if kind == "staged":
            shown += points
        else:
            inserted += points
            assert inserted <= shown, events  # an insert's points were shown before it began
    assert shown == inserted == expected, events


class _CrashBeforeIngestedRecord(StoreWriter):
    """The real StoreWriter, made to stop at the point a kill -9 would: after the metric inserts,
    before the request keys are recorded. (An exception stands in for the kill because the
    process must survive to run the second writer; the SIGKILL version runs through the server.)"""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        record = self._bookkeeping.add

        def add(table, rows):
            if table == "client_seqs":
                raise RuntimeError("simulated crash")
            record(table, rows)

        self._bookkeeping.add = add


def test_half_written_block_is_re_formed_exactly_after_a_crash(setup):
    settings, client, store = setup
    db = settings.clickhouse_database
    envelopes = workload("client-b", runs=1, batches=6, points=500)
    expected = 6 * 500
    topic = runs_topic(settings.kafka_topic_prefix)

    async def scenario():
        await publish(settings, envelopes)
        records = await read_all(settings, topic, len(envelopes))
        records.sort(key=lambda r: r.offset)
        # What a writer killed mid-block leaves behind: its intent, the metric rows, no request
        # keys, no committed offset. The block is RunStart + 3 metric batches.
        first, last = records[0].offset, records[3].offset
        client.insert(
            f"{db}.writer_intents",
            [[topic, records[0].partition, first, last, int(time.time() * 1000)]],
            column_names=["topic", "partition", "first_offset", "last_offset", "time_ms"],
        )
        crashed = _CrashBeforeIngestedRecord(client, db, store, settings)
        with pytest.raises(RuntimeError, match="simulated crash"):
            crashed.write(
                [envelope_from_record(r) for r in records[:4]],
                token=block_token(topic, records[0].partition, first, last),
            )
        assert count(client, db, "SELECT count() FROM {db}.metrics") == 3 * 500  # rows, but no keys

        return await drained_loop(settings, StoreWriter(client, db, store, settings), client, expected)

    loop = asyncio.run(scenario())
    loop.sink.flush()

    assert loop.replayed_blocks == 1
    assert count(client, db, "SELECT count() FROM {db}.metrics") == expected  # the first block once
    assert count(client, db, "SELECT " + STORED_SEQS + " FROM {db}.client_seqs FINAL") == len(envelopes)
    # read back from Kafka, not from the stopped loop: the group committed past every record,
    # the re-formed block included, so a restarted writer would replay nothing
    committed, ends = asyncio.run(committed_and_end_offsets(settings, topic, loop.partitions))
    assert sum(ends.values()) == len(envelopes)
    assert committed == {p: end for p, end in ends.items() if end}, (committed, ends)


def _same_partition_runs(count: int, partitions: int = 6) -> list[str]:
    from aiokafka.partitioner import murmur2

    by_part: dict[int, list[str]] = {}
    i = 0
    while True:
        name = f"run-{i}"
        part = (murmur2(name.encode()) & 0x7FFFFFFF) % partitions
        by_part.setdefault(part, []).append(name)
        if len(by_part[part]) == count:
            return by_part[part]
        i += 1


def test_a_block_with_several_runs_of_one_project_is_stored(setup):
    settings, client, store = setup
    db = settings.clickhouse_database
    runs = _same_partition_runs(2)
    envelopes = [envelope(run_start(i + 1, run, "client-c"), run) for i, run in enumerate(runs)]
    envelopes += [envelope(metrics(10 + i, run, "client-c", 0, 100), run) for i, run in enumerate(runs)]
    settings = ServerSettings(**{**settings.__dict__, "writer_flush_interval_s": 1.0})

    async def scenario():
        await publish(settings, envelopes)
        loop = KafkaWriterLoop(settings, StoreWriter(client, db, store, settings), client=client)
        await loop.start()
        try:
            for _ in range(100):  # bounded: ~10 s
                if loop.blocks_written or loop.errors:
                    break
                await asyncio.sleep(0.1)
        finally:
            await loop.stop()
        return loop

    loop = asyncio.run(scenario())
    assert loop.errors == 0
    assert count(client, db, "SELECT count() FROM {db}.metrics") == 200


def test_writer_joins_with_its_static_group_instance_id(setup):
    """kafka_group_instance_id (the Helm writer StatefulSet sets it to the pod name) makes the
    writer a static member (KIP-345): Kafka itself reports the id for the group's member, so a
    restart under that id within the session timeout takes its partitions back without
    rebalancing the others."""
    from dataclasses import replace

    from aiokafka.admin import AIOKafkaAdminClient

    settings, client, store = setup
    settings = replace(settings, kafka_group_instance_id="writer-0")
    db = settings.clickhouse_database

    async def scenario():
        loop = KafkaWriterLoop(settings, StoreWriter(client, db, store, settings), client=client)
        await loop.start()
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            for _ in range(100):  # the first join completes in the background
                (group,) = await admin.describe_consumer_groups([settings.kafka_group_id])
                members = group.to_object()["groups"][0]["members"]
                if members:
                    return members
                await asyncio.sleep(0.1)
            raise AssertionError("the writer never joined its group")
        finally:
            await admin.close()
            await loop.stop()

    members = asyncio.run(scenario())
    # The broker names a static member "<group_instance_id>-<uuid>" (a dynamic one gets
    # "<client_id>-<uuid>"); aiokafka's DescribeGroups version predates the explicit field.
    assert len(members) == 1
    assert members[0]["member_id"].startswith("writer-0-"), members[0]["member_id"]
    assert members[0]["client_id"] == "runstream-writer"


def artifact_event(seq: int, run_id: str, client_id: str, name: str) -> ingest_pb2.IngestRequest:
    data = f"{run_id}/{seq}".encode()
    return ingest_pb2.IngestRequest(
        seq=seq,
        client_id=client_id,
        artifact=ingest_pb2.ArtifactEvent(
            project=PROJECT, run_id=run_id, name=name, path="model.bin", size=len(data), inline_data=data,
            sha256=hashlib.sha256(data).hexdigest(),
        ),
    )  # fmt: skip


def test_two_writers_number_one_artifact_name_without_collisions(setup):
    """Twelve runs spread over all partitions each log an artifact "model", in three waves, while
    two writers share the group. Versions are numbered by whoever stores the event: artifact records are keyed by
    project + name, so one writer numbers them all, 1..12 once each. (Keyed by run, as run events
    are, each writer would take max+1 from its own view and hand out the same numbers twice.)"""
    settings, client, store = setup
    db = settings.clickhouse_database
    runs = [f"run-{i}" for i in range(12)]
    partitions = {(murmur2(r.encode()) & 0x7FFFFFFF) % 6 for r in runs}
    assert len(partitions) >= 4, "the runs must spread over the partitions of both writers"
    envelopes = [envelope(artifact_event(i + 1, run, "client-v", "model"), run) for i, run in enumerate(runs)]

    async def scenario():
        loops = [
            KafkaWriterLoop(settings, StoreWriter(client, db, store, settings), client=client)
            for _ in range(2)
        ]
        for loop in loops:
            await loop.start()
        try:
            for _ in range(300):  # both hold partitions before anything is published
                if all(loop._parts for loop in loops):
                    break
                await asyncio.sleep(0.1)
            assert all(loop._parts for loop in loops), "both writers got partitions"
            for wave in (envelopes[:4], envelopes[4:8], envelopes[8:]):  # each writer caches in between
                await publish(settings, wave)
                stored = count(client, db, "SELECT count() FROM {db}.artifacts") + len(wave)
                for _ in range(300):
                    if count(client, db, "SELECT count() FROM {db}.artifacts") >= stored:
                        break
                    await asyncio.sleep(0.1)
        finally:
            for loop in loops:
                await loop.stop()

    asyncio.run(scenario())
    rows = client.query(f"SELECT run_id, version FROM {db}.artifacts WHERE name = 'model'").result_rows
    assert sorted(v for _, v in rows) == list(range(1, 13)), rows
    assert sorted(r for r, _ in rows) == sorted(runs)


def test_crash_detection_judges_only_the_runs_of_owned_partitions(setup):
    """With several writers each marks crashed only the silent runs whose partition it holds."""
    settings, client, store = setup
    db = settings.clickhouse_database
    runs = [f"run-{i}" for i in range(8)]
    envelopes = [envelope(run_start(i + 1, run, "client-s"), run) for i, run in enumerate(runs)]

    async def scenario():
        writer = StoreWriter(client, db, store, settings)
        loop = KafkaWriterLoop(settings, writer, client=client)
        await publish(settings, envelopes)
        await loop.start()
        try:
            for _ in range(300):
                if count(client, db, "SELECT count() FROM {db}.runs FINAL") >= len(runs):
                    break
                await asyncio.sleep(0.1)
            owned = {r for r in runs if loop.owns_run(PROJECT, r)}
            assert owned == set(runs), "a single writer of the group owns every partition"
            # pretend this writer held only the even partitions: the others are not its to judge
            half = {r for r in runs if (murmur2(r.encode()) & 0x7FFFFFFF) % 6 % 2 == 0}
            marked = writer.mark_crashed(
                0, now_ms=int(time.time() * 1000) + 10_000, owns=lambda p, r: r in half
            )
        finally:
            await loop.stop()
        return half, marked

    half, marked = asyncio.run(scenario())
    assert {r for _, r in marked} == half and half
    states = dict(client.query(f"SELECT run_id, state FROM {db}.runs FINAL").result_rows)
    assert {r for r, s in states.items() if s == "crashed"} == half


def test_a_block_spanning_partitions_is_re_formed_whole_by_the_owner_of_its_lowest_partition(setup):
    """A block of records of every partition, half-written by a writer that died (metric rows in,
    no request records, nothing committed), and its partitions then owned by DIFFERENT writers:
    a quiet member of the group holds some while writer A starts, then writer B joins and the
    quiet member leaves. The owner of the block's lowest partition re-forms it whole under its
    token, the others commit their partitions of it once it is stored; every point is stored once
    (raw rows, FINAL, summaries), every request recorded and every record committed."""
    from dataclasses import replace

    from runstream_services.writers.kafka_consumer import ranges_text, ranges_token

    settings, client, store = setup
    settings = replace(settings, writer_max_block_points=100_000)
    db = settings.clickhouse_database
    topic = runs_topic(settings.kafka_topic_prefix)
    runs = [f"run-{i}" for i in range(12)]
    envelopes = [envelope(run_start(1, run, f"client-{run}"), run) for run in runs]
    envelopes += [
        envelope(metrics(2 + b, run, f"client-{run}", b * 100, 100), run) for b in range(3) for run in runs
    ]
    expected = 3 * 100 * len(runs)

    async def scenario():
        await publish(settings, envelopes)
        records = await read_all(settings, topic, len(envelopes))
        # the dead writer's block: every partition's records up to its first metric batch
        by_part: dict[TopicPartition, list] = {}
        for r in sorted(records, key=lambda r: r.offset):
            by_part.setdefault(TopicPartition(r.topic, r.partition), []).append(r)
        kinds = {tp: [envelope_from_record(r).kind for r in rs] for tp, rs in by_part.items()}
        block = {tp: rs[: kinds[tp].index("metrics") + 1] for tp, rs in by_part.items()}
        ranges = {tp: (rs[0].offset, rs[-1].offset) for tp, rs in block.items()}
        assert len(ranges) >= 4, "the runs spread over the partitions"
        now = int(time.time() * 1000)
        client.insert(
            f"{db}.writer_intents",
            [[tp.topic, tp.partition, f, la, now, ranges_text(ranges)] for tp, (f, la) in ranges.items()],
            column_names=["topic", "partition", "first_offset", "last_offset", "time_ms", "ranges"],
        )
        ordered = sorted((r for rs in block.values() for r in rs), key=lambda r: (r.partition, r.offset))
        with pytest.raises(RuntimeError, match="simulated crash"):
            _CrashBeforeIngestedRecord(client, db, store, settings).write(
                [envelope_from_record(r) for r in ordered], token=ranges_token(ranges)
            )
        assert count(client, db, "SELECT count() FROM {db}.metrics") == 100 * len(ranges)

        other = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=settings.kafka_group_id,
            enable_auto_commit=False,
        )
        other.subscribe([topic, f"{settings.kafka_topic_prefix}.artifacts"])
        await other.start()  # a member that holds partitions and never writes (a writer gone quiet)
        loops = [
            KafkaWriterLoop(settings, StoreWriter(client, db, store, settings), client=client)
            for _ in range(2)
        ]
        try:
            await loops[0].start()
            for _ in range(600):  # bounded: ~60 s; the quiet member stays live meanwhile
                await other.getmany(timeout_ms=50)
                if loops[0]._parts and other.assignment():
                    break
            owned_first = {tp for tp in ranges if tp in loops[0]._parts}
            await loops[1].start()
            for _ in range(100):
                await other.getmany(timeout_ms=50)
                if loops[1]._parts:
                    break
            await other.stop()  # its partitions go to the two writers
            for _ in range(600):
                split = [{tp for tp in ranges if tp in loop._parts} for loop in loops]
                if (
                    all(split)
                    and sum(map(len, split)) == len(ranges)
                    and count(client, db, "SELECT count() FROM {db}.metrics") >= expected
                    and all(loop.total_lag() == 0 for loop in loops)
                ):
                    break
                await asyncio.sleep(0.1)
        finally:
            for loop in loops:
                await loop.stop()
            await other.stop()
        assert owned_first and owned_first != set(ranges), "the block's partitions were split between members"
        assert all(split) and sum(map(len, split)) == len(ranges), "two writers share the block's partitions"
        return loops

    loops = asyncio.run(scenario())
    for loop in loops:
        loop.sink.flush()
    # one writer re-formed the block whole (the owner of its lowest partition, maybe twice when
    # a rebalance came between); the others committed their partitions of it once it was stored
    assert 1 <= sum(loop.replayed_blocks for loop in loops) <= 2
    assert count(client, db, "SELECT count() FROM {db}.metrics") == expected
    assert count(client, db, "SELECT count() FROM {db}.metrics FINAL") == expected
    assert count(client, db, "SELECT sum(count) FROM {db}.metric_summaries FINAL") == expected
    assert count(client, db, "SELECT count() FROM {db}.runs FINAL") == len(runs)
    assert count(client, db, "SELECT " + STORED_SEQS + " FROM {db}.client_seqs FINAL") == len(envelopes)
    committed, ends = asyncio.run(committed_and_end_offsets(settings, topic, loops[0].partitions))
    assert committed == {p: end for p, end in ends.items() if end}, (committed, ends)


async def read_all(settings: ServerSettings, topic: str, expected: int) -> list:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list = []
    try:
        for _ in range(100):  # bounded
            for part in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(part)
            if len(records) >= expected:
                break
    finally:
        await consumer.stop()
    return records
