"""Each real service works from Python: Kafka through aiokafka, MinIO through the minio client,
ClickHouse through clickhouse-connect on chDB."""

from __future__ import annotations

import asyncio
import io
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from minio import Minio

from runstream_services.storage.clickhouse import connect


def test_kafka_produce_consume(services):
    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    payloads = [f"message-{i}".encode() for i in range(10)]

    async def run():
        producer = AIOKafkaProducer(
            bootstrap_servers=services.kafka_bootstrap, acks="all", enable_idempotence=True
        )
        await producer.start()
        try:
            for p in payloads:
                await producer.send_and_wait(topic, p, key=b"run-1")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=services.kafka_bootstrap,
            auto_offset_reset="earliest",
            group_id=f"smoke-{uuid.uuid4().hex[:8]}",
        )
        await consumer.start()
        got = []
        try:
            while len(got) < len(payloads):
                batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 30)
                for records in batch.values():
                    got.extend(r.value for r in records)
        finally:
            await consumer.stop()
        return got

    assert asyncio.run(run()) == payloads  # one key -> one partition -> order kept


def test_minio_put_get(services):
    client = Minio(
        services.s3_endpoint,
        access_key=services.s3_access_key,
        secret_key=services.s3_secret_key,
        secure=False,
    )
    bucket = f"smoke-{uuid.uuid4().hex[:8]}"
    client.make_bucket(bucket)
    data = uuid.uuid4().bytes * 1000
    client.put_object(bucket, "dir/object.bin", io.BytesIO(data), len(data))
    resp = client.get_object(bucket, "dir/object.bin")
    try:
        assert resp.read() == data
    finally:
        resp.close()
        resp.release_conn()
    assert [o.object_name for o in client.list_objects(bucket, recursive=True)] == ["dir/object.bin"]


def test_chdb_create_insert_select(chdb_dsn, database):
    client = connect(chdb_dsn)  # clickhouse-connect's client on the chdb:// DSN
    assert type(client).__module__.startswith("clickhouse_connect")
    client.command(f"CREATE DATABASE {database}")
    client.command(f"CREATE TABLE {database}.t (k String, v Float64) ENGINE = MergeTree ORDER BY k")
    client.insert(f"{database}.t", [["a", 1.5], ["b", float("nan")], ["c", 3.0]], column_names=["k", "v"])
    rows = client.query(f"SELECT k, v FROM {database}.t WHERE isFinite(v) ORDER BY k").result_rows
    assert rows == [("a", 1.5), ("c", 3.0)]
    assert client.query(f"SELECT countIf(isNaN(v)) FROM {database}.t").result_rows == [(1,)]
