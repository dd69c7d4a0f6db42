"""Session fixtures for the real services. Endpoints come from RUNSTREAM_TEST_* variables
(scripts/test.sh exports them); when they are missing, `scripts/services.sh up` is run once and
the services it started are stopped at the end, so `pytest tests/integration` works on its own."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Services:
    kafka_bootstrap: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str


def _services_env() -> dict[str, str]:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts/services.sh"), "env"], check=True, capture_output=True, text=True
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.fixture(scope="session")
def services() -> Services:
    started_here = False
    if "RUNSTREAM_TEST_KAFKA" not in os.environ:
        script = str(ROOT / "scripts/services.sh")
        status = subprocess.run(["bash", script, "status"], capture_output=True, text=True).stdout
        env = {**os.environ, "PYTHON": sys.executable}
        subprocess.run(["bash", script, "up"], check=True, env=env)
        # Stop at the end only what this session started, never services someone else is using.
        started_here = "running" not in status
        os.environ.update(_services_env())
    yield Services(
        kafka_bootstrap=os.environ["RUNSTREAM_TEST_KAFKA"],
        s3_endpoint=os.environ["RUNSTREAM_TEST_S3_ENDPOINT"],
        s3_access_key=os.environ["RUNSTREAM_TEST_S3_ACCESS_KEY"],
        s3_secret_key=os.environ["RUNSTREAM_TEST_S3_SECRET_KEY"],
    )
    if started_here:
        subprocess.run(["bash", str(ROOT / "scripts/services.sh"), "down"], check=False)


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        if "e2e" in parts:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def chdb_dsn(tmp_path_factory) -> str:
    """The one chDB folder of this test process. chDB opens one data path per process (a second
    path raises "EmbeddedServer already initialized"), so tests share it and isolate themselves
    by database name (see `database`)."""
    return f"chdb://{tmp_path_factory.mktemp('chdb')}"


@pytest.fixture
def database(request) -> str:
    """A database name unique to the test."""
    import re
    import uuid

    stem = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:40]
    return f"t_{stem}_{uuid.uuid4().hex[:6]}"


@pytest.fixture
def embedded_server(tmp_path):
    """A fresh embedded `runstream server` (chDB + local artifacts) in a child process."""
    from tests.server_process import ServerProcess

    server = ServerProcess(tmp_path / "server").start()
    yield server
    server.stop()


@pytest.fixture
def kafka_server(tmp_path, services):
    """A `runstream server` on the Kafka bus and MinIO artifacts, with its own topic prefix."""
    import uuid

    from tests.server_process import ServerProcess

    prefix = f"t{uuid.uuid4().hex[:8]}"
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
        env={
            "RUNSTREAM_KAFKA_TOPIC_PREFIX": prefix,
            "RUNSTREAM_KAFKA_GROUP_ID": f"{prefix}-writers",
            "RUNSTREAM_S3_ACCESS_KEY": services.s3_access_key,
            "RUNSTREAM_S3_SECRET_KEY": services.s3_secret_key,
        },
    ).start()
    yield server
    server.stop()
