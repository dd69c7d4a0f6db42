"""The Runstream deployments the integration tests start, one per bus mode, so one test body can
run on each (the `bus_server` fixture in tests/integration/conftest.py):

- "embedded": one `runstream server` process: ingest, the in-process bus, the writer and chDB;
- "kafka": an ingest process and a writer process (`--components writer,query`, it owns chDB) on
  the real Kafka, as a scaled deployment runs them; killing ingest leaves the writer running.

`kafka_single` is the Kafka bus in one process with artifacts in MinIO (the `kafka_server` fixture).
Each Kafka deployment has its own topic prefix (also its consumer group and S3 bucket), and its
topics are deleted when it is closed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from runstream_services.bus.kafka import delete_topics
from tests.chdb_inspect import StoredCounts, stored, stored_counts
from tests.real_services import Services
from tests.server_process import ServerProcess, WriterProcess, wait_writer_caught_up

BUS_MODES = ("embedded", "kafka")


@dataclass
class BusServer:
    """One deployment under test. Clients talk to `ingest` (kill it, restart it); `writer` owns
    the chDB folder (on the embedded bus both are the same process)."""

    mode: str
    ingest: ServerProcess
    writer: ServerProcess
    kafka_bootstrap: str | None = None
    prefix: str | None = None

    @property
    def endpoint(self) -> str:
        return self.ingest.endpoint

    @property
    def processes(self) -> list[ServerProcess]:
        return [self.ingest] if self.writer is self.ingest else [self.ingest, self.writer]

    def wait_stored(self) -> None:
        """Until everything acked is stored: on Kafka the writer trails the acks."""
        if self.mode == "kafka":
            wait_writer_caught_up(self.writer)

    def stop_after_stored(self) -> None:
        """wait_stored, then stops ingest and the writer gracefully; each must exit 0."""
        self.wait_stored()
        for process in self.processes:
            code = process.stop()
            assert code == 0, f"{process.data_dir.name} exited with {code}:\n{process.log_tail()}"

    def stored(self, sql: str) -> list[list]:
        """Rows of `sql` on the stopped writer's chDB folder (`DB.` is its database)."""
        return stored(self.writer, sql)

    def stored_counts(self) -> StoredCounts:
        return stored_counts(self.writer)

    def close(self) -> None:
        for process in self.processes:
            process.stop()
        if self.prefix and self.kafka_bootstrap:
            drop_topics(self.kafka_bootstrap, self.prefix)


def embedded(tmp_path: Path) -> BusServer:
    server = ServerProcess(tmp_path / "server").start()
    return BusServer("embedded", ingest=server, writer=server)


def kafka_split(
    tmp_path: Path, services: Services, writer_args: list[str] = (), writer_env: dict | None = None
) -> BusServer:
    """Writer first (small blocks, quick flushes, so a test sees several blocks), then ingest.
    `writer_args` / `writer_env` go to the writer only (e.g. a --clickhouse-dsn)."""
    prefix = new_prefix()
    bus = ["--bus", "kafka", "--kafka-bootstrap", services.kafka_bootstrap]
    writer = WriterProcess(
        tmp_path / "writer",
        extra_args=[*bus, "--components", "writer,query", *writer_args],
        env=kafka_env(
            prefix,
            RUNSTREAM_WRITER_MAX_BLOCK_POINTS="60000",
            RUNSTREAM_WRITER_FLUSH_INTERVAL_S="0.1",
            **(writer_env or {}),
        ),
    ).start()
    ingest = ServerProcess(
        tmp_path / "ingest", extra_args=[*bus, "--components", "ingest"], env=kafka_env(prefix)
    ).start()
    return BusServer("kafka", ingest=ingest, writer=writer, kafka_bootstrap=services.kafka_bootstrap,
                     prefix=prefix)  # fmt: skip


def kafka_single(tmp_path: Path, services: Services) -> BusServer:
    """One `runstream server` on the Kafka bus, artifacts in MinIO (bucket = topic prefix)."""
    prefix = new_prefix()
    server = ServerProcess(
        tmp_path / "server",
        extra_args=[
            "--bus",
            "kafka",
            "--kafka-bootstrap",
            services.kafka_bootstrap,
            "--artifact-store",
            "s3",
            "--s3-endpoint",
            services.s3_endpoint,
            "--s3-bucket",
            prefix,
        ],  # fmt: skip
        env=kafka_env(
            prefix,
            RUNSTREAM_S3_ACCESS_KEY=services.s3_access_key,
            RUNSTREAM_S3_SECRET_KEY=services.s3_secret_key,
        ),
    ).start()
    return BusServer("kafka", ingest=server, writer=server, kafka_bootstrap=services.kafka_bootstrap,
                     prefix=prefix)  # fmt: skip


def new_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def migrated_database(clickhouse_dsn: str) -> dict[str, str]:
    """A fresh database migrated on the ClickHouse at `clickhouse_dsn` (`runstream migrate`, as an
    operator would before starting writers): the environment that points processes at it."""
    env = {
        "RUNSTREAM_CLICKHOUSE_DATABASE": f"rs_{uuid.uuid4().hex[:10]}",
        "RUNSTREAM_MIGRATE_ON_START": "false",
    }
    migrated = subprocess.run(
        [sys.executable, "-m", "runstream_services.cli", "migrate", "--clickhouse-dsn", clickhouse_dsn],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env},
    )  # fmt: skip
    assert migrated.returncode == 0, migrated.stderr
    return env


def kafka_env(prefix: str, **extra: str) -> dict[str, str]:
    """Settings of a server on the test broker: its own topics and group; a single-node broker
    cannot hold replication 3, so under-replication is allowed explicitly (as for any dev cluster)."""
    return {
        "RUNSTREAM_KAFKA_TOPIC_PREFIX": prefix,
        "RUNSTREAM_KAFKA_GROUP_ID": f"{prefix}-writers",
        "RUNSTREAM_KAFKA_ALLOW_UNDER_REPLICATED": "1",
        **extra,
    }


def drop_topics(kafka_bootstrap: str, prefix: str) -> None:
    try:
        asyncio.run(delete_topics(kafka_bootstrap, prefix))
    except Exception:
        pass  # best effort: topics of a failed test do no harm
