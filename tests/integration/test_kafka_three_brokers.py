"""A 3-broker KRaft cluster (this test's own, tests/private_kafka.py): Runstream creates its topics
with replication 3 and min.insync.replicas 2 without being told; the leader of the partition a run
streams to is killed (-9) mid-stream; every acked point is stored exactly once, and what was not
acked is resent and stored once too (count() = count() FINAL = distinct points = points sent)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from runstream_services.bus.kafka import runs_topic
from tests.chdb_inspect import stored_counts
from tests.deployments import new_prefix
from tests.ingest_client import OpenStream, ingest, stub_for, workload
from tests.private_kafka import PrivateKafka
from tests.server_process import ServerProcess, wait_writer_caught_up

N_BATCHES, PER_BATCH = 40, 5_000
KILL_AT = 10  # acks before the partition leader is killed
WINDOW = 4


@pytest.fixture
def cluster(tmp_path):
    try:
        kafka = PrivateKafka(tmp_path / "kafka", nodes=3)
    except FileNotFoundError as exc:
        pytest.fail(str(exc))  # the jars come with the services every integration run needs
    kafka.format()
    kafka.start()
    yield kafka
    for node in kafka.nodes:
        node.kill()  # the data is thrown away: no controlled shutdown to wait for


def describe_runs_topic(bootstrap: str, topic: str) -> list[dict]:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    async def describe():
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            (described,) = await admin.describe_topics([topic])
            configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            return described["partitions"], configs
        finally:
            await admin.close()

    return asyncio.run(describe())


def busiest_partition_leader(bootstrap: str, topic: str) -> int:
    """The leader (node id) of the partition holding the most records: the one the run streams to."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def leader():
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
            if not tps:
                await consumer._client.force_metadata_update()
                tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
            ends = await consumer.end_offsets(tps)
            busiest = max(ends, key=ends.get)
            return consumer._client.cluster.leader_for_partition(busiest)
        finally:
            await consumer.stop()

    return asyncio.run(leader())


def test_partition_leader_killed_mid_stream_every_acked_point_once(tmp_path, cluster):
    prefix = new_prefix()
    # No RUNSTREAM_KAFKA_ALLOW_UNDER_REPLICATED: this is a cluster that can hold the defaults.
    env = {
        "RUNSTREAM_KAFKA_TOPIC_PREFIX": prefix,
        "RUNSTREAM_KAFKA_GROUP_ID": f"{prefix}-writers",
        "RUNSTREAM_WRITER_FLUSH_INTERVAL_S": "0.1",
    }
    server = ServerProcess(
        tmp_path / "server", extra_args=["--bus", "kafka", "--kafka-bootstrap", cluster.bootstrap], env=env
    ).start(timeout_s=120)
    try:
        topic = runs_topic(prefix)
        partitions, configs = describe_runs_topic(cluster.bootstrap, topic)
        assert len(partitions) == 6
        assert all(len(p["replicas"]) == 3 for p in partitions), partitions
        config = {entry[0]: entry[1] for entry in configs[0].resources[0][4]}
        assert config["min.insync.replicas"] == "2"

        requests = workload("failover", N_BATCHES, PER_BATCH)
        by_seq = {r.seq: r for r in requests}
        acked: set[int] = set()
        killed = None
        stream = OpenStream(server, requests[:WINDOW], timeout=180)
        sent = WINDOW
        try:
            for answer in stream.responses:
                if answer.ok:
                    acked.add(answer.seq)
                if killed is None and len(acked) >= KILL_AT:
                    killed = busiest_partition_leader(cluster.bootstrap.split(",")[0], topic)
                    cluster.node(killed).kill()
                if sent < len(requests):
                    stream.outbox.put(requests[sent])
                    sent += 1
                elif len(acked) == len(requests):
                    break
        except grpc.RpcError:
            pass  # the stream may break while the partition moves: the rest is resent below
        finally:
            stream.close()
        assert killed is not None, "a partition leader was killed mid-stream"
        assert len(acked) >= KILL_AT

        # A reconnecting client resends what was not acked until everything is (2 brokers = min ISR).
        deadline = time.monotonic() + 180
        while len(acked) < len(requests):
            try:
                answers = ingest(
                    stub_for(server), [by_seq[s] for s in sorted(set(by_seq) - acked)], timeout=60
                )
                acked |= {seq for seq, a in answers.items() if a.ok}
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, (
                f"{len(requests) - len(acked)} never acked:\n{server.log_tail()}"
            )
        # ... and a client that lost its acks resends everything: no-ops
        answers = ingest(stub_for(server), requests, timeout=120)
        assert all(a.ok for a in answers.values()), [a.message for a in answers.values() if not a.ok]

        wait_writer_caught_up(server, timeout_s=180)
        assert server.stop() == 0, server.log_tail()
    finally:
        server.stop()
    counts = stored_counts(server)
    total = N_BATCHES * PER_BATCH
    assert (counts.rows, counts.rows_final, counts.distinct_points, counts.summary_count) == (total,) * 4
    assert counts.requests_recorded == len(requests)
