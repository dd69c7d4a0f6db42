"""The cluster path of the lean install (`runstream[server]`, no chDB) serves with chDB blocked in
every Runstream process (tests/no_chdb.py), and none of them ever asks for it:

- the default embedded store (a chdb:// DSN) stops start-up with a ConfigError naming the extra to
  install; a server on an http:// DSN with nothing listening stops at `cannot reach ClickHouse`
  without having asked for chDB (neither needs the real services);
- `runstream server --bus kafka --components ingest` on the real Kafka with MinIO artifacts answers
  the grpc.health.v1 readiness check, takes a run from the SDK (acked once on Kafka) and drains;
- the whole cluster, `runstream migrate`, ingest and a `--components writer,query` process with
  `--clickhouse-dsn http://...`, stores a run and reads it back. The ClickHouse server there is
  tests/clickhouse_standin.py, a STAND-IN (chDB behind ClickHouse's HTTP interface, in a process of
  its own, started before the blocker): no ClickHouse server can run on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import grpc
import pytest

import runstream
from runstream.errors import ServerError
from runstream_services.grpc_health import CHECK_METHOD
from tests.clickhouse_standin import StandinProcess, server_deployment
from tests.deployments import drop_topics, kafka_env, new_prefix
from tests.no_chdb import NoChdb
from tests.sdk_options import quick_sdk_options
from tests.server_process import ServerProcess, free_port


def _readiness(endpoint: str) -> bytes:
    with grpc.insecure_channel(endpoint) as channel:
        check = channel.unary_unary(CHECK_METHOD, request_serializer=None, response_deserializer=None)
        return check(b"", timeout=10)


def _server(blocker: NoChdb, tmp_path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "runstream_services.cli", "server", "--port", str(free_port()),
           "--metrics-port", "0", "--data-dir", str(tmp_path / "data"), *args]  # fmt: skip
    env = {k: v for k, v in blocker.env().items() if not k.startswith("RUNSTREAM_")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)


def test_the_default_embedded_store_without_chdb_says_what_to_install(tmp_path):
    blocker = NoChdb(tmp_path / "block")
    out = _server(blocker, tmp_path)  # no --clickhouse-dsn: chdb://<data-dir>/chdb
    assert out.returncode == 2, out.stdout + out.stderr
    assert "chDB is not installed" in out.stderr and "pip install 'runstream[embedded]'" in out.stderr
    assert "--clickhouse-dsn" in out.stderr
    assert "Traceback" not in out.stderr
    assert blocker.refused() and blocker.refused()[0] == "chdb"  # the blocker is what stopped it


def test_a_server_on_a_clickhouse_server_dsn_never_asks_for_chdb(tmp_path):
    """Nothing listens on the DSN's port: start-up stops at the store with `cannot reach
    ClickHouse` (no ClickHouse server runs on this machine); up to there chDB was not asked for.
    The Kafka address is never dialled: the store is opened first."""
    blocker = NoChdb(tmp_path / "block")
    dsn = f"http://default:@127.0.0.1:{free_port()}"
    out = _server(
        blocker, tmp_path, "--bus", "kafka", "--kafka-bootstrap", "127.0.0.1:1", "--clickhouse-dsn", dsn
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "cannot reach ClickHouse" in out.stderr
    assert "Traceback" not in out.stderr
    assert len(blocker.loaded()) == 1 and blocker.refused() == []


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
    assert any("--components ingest" in cmd for cmd in blocker.loaded()), blocker.loaded()
    assert blocker.refused() == []


def test_cluster_on_a_clickhouse_server_stores_and_reads_without_chdb(services, tmp_path, monkeypatch):
    pytest.importorskip("chdb")  # the stand-in ClickHouse server runs on chDB, in its own process
    standin = StandinProcess(tmp_path / "standin").start()
    blocker = NoChdb(tmp_path / "block")
    blocked = blocker.env()
    for name in ("PYTHONPATH", "NO_CHDB_LOG"):  # every child from here on: migrate, writer, ingest
        monkeypatch.setenv(name, blocked[name])
    steps = 30
    deployment = None
    try:
        deployment = server_deployment(tmp_path, standin, "kafka", services)
        run = runstream.init(project="lean", **quick_sdk_options(deployment.ingest.endpoint, tmp_path))
        for step in range(steps):
            run.log({"loss": 1.0 / (step + 1)}, step=step)
        assert run.finish(timeout_s=60)
        count, deadline = None, time.monotonic() + 90
        with runstream.Api(deployment.writer.endpoint) as api:
            while count != steps and time.monotonic() < deadline:
                time.sleep(0.3)
                try:
                    count = api.run("lean", run.id)["metrics"].get("loss", {}).get("count")
                except ServerError as exc:  # NOT_FOUND until the writer stored the run
                    assert exc.code == "NOT_FOUND", exc
        assert count == steps
        assert _readiness(deployment.writer.endpoint) == b"\x08\x01"  # its store probe: SELECT 1 over HTTP
    finally:
        if deployment is not None:
            deployment.close()
        standin.stop()
    loaded = blocker.loaded()  # the blocker was in every Runstream process, none asked for chDB
    assert any(" migrate " in cmd for cmd in loaded), loaded
    assert any("--components writer,query" in cmd for cmd in loaded), loaded
    assert any("--components ingest" in cmd for cmd in loaded), loaded
    assert blocker.refused() == []
