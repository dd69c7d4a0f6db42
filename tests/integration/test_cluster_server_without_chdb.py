"""The cluster ingest path of the lean install (`runstream[server]`, no chDB) serves: a `runstream
server --bus kafka --components ingest` with chDB blocked (tests/no_chdb.py) starts against the real
Kafka with MinIO artifacts, answers the grpc.health.v1 readiness check, takes a run from the SDK
(acked once on Kafka), drains on SIGTERM, and never asked for chDB. The writer and query need a
ClickHouse server for that, which this machine cannot run (tests/unit/test_server_without_chdb.py
covers their start-up up to the connection)."""

from __future__ import annotations

import os

import grpc

import runstream
from runstream_services.grpc_health import CHECK_METHOD
from tests.deployments import drop_topics, kafka_env, new_prefix
from tests.no_chdb import NoChdb
from tests.sdk_options import quick_sdk_options
from tests.server_process import ServerProcess


def _readiness(endpoint: str) -> bytes:
    with grpc.insecure_channel(endpoint) as channel:
        check = channel.unary_unary(CHECK_METHOD, request_serializer=None, response_deserializer=None)
        return check(b"", timeout=10)


def test_cluster_ingest_serves_without_chdb(services, tmp_path):
    blocker = NoChdb(tmp_path / "block")
    prefix = new_prefix()
    env = kafka_env(
        prefix,
        RUNSTREAM_S3_ACCESS_KEY=services.s3_access_key,
        RUNSTREAM_S3_SECRET_KEY=services.s3_secret_key,
    )
    server = ServerProcess(
        tmp_path / "ingest",
        extra_args=["--bus", "kafka", "--kafka-bootstrap", services.kafka_bootstrap, "--components", "ingest",
                    "--artifact-store", "s3", "--s3-endpoint", services.s3_endpoint, "--s3-bucket", prefix],
        env=blocker.env({**os.environ, **env}),
    )  # fmt: skip
    try:
        server.start()
        assert _readiness(server.endpoint) == b"\x08\x01"  # SERVING: Kafka answers
        run = runstream.init(project="lean", **quick_sdk_options(server.endpoint, tmp_path))
        for step in range(20):
            run.log({"loss": 1.0 / (step + 1)}, step=step)
        assert run.finish(timeout_s=60)
        assert server.stop() == 0
    finally:
        server.stop()
        drop_topics(services.kafka_bootstrap, prefix)
    assert blocker.refused() == []
