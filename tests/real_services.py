"""The real Kafka and MinIO the integration tests use. Endpoints come from the RUNSTREAM_TEST_*
variables (`scripts/services.sh env`; scripts/test.sh exports them), so the same tests run against
services started elsewhere. When they are missing, `scripts/services.sh up` runs once, on the first
test that asks for them, and what it started is stopped at the end. Nothing here runs unless a test
requests the `services` fixture (tests/integration/conftest.py): `pytest tests/unit` starts nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests import ROOT

SCRIPT = str(ROOT / "scripts/services.sh")


@dataclass(frozen=True)
class Services:
    kafka_bootstrap: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str


def _services_env() -> dict[str, str]:
    out = subprocess.run(["bash", SCRIPT, "env"], check=True, capture_output=True, text=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@contextmanager
def real_services() -> Iterator[Services]:
    """The services named by the environment, or ones started here (and stopped on exit)."""
    started_here = False
    if "RUNSTREAM_TEST_KAFKA" not in os.environ:
        status = subprocess.run(["bash", SCRIPT, "status"], capture_output=True, text=True).stdout
        subprocess.run(["bash", SCRIPT, "up"], check=True, env={**os.environ, "PYTHON": sys.executable})
        # Stop at the end only what this session started, never services someone else is using.
        started_here = "running" not in status
        os.environ.update(_services_env())
    try:
        yield Services(
            kafka_bootstrap=os.environ["RUNSTREAM_TEST_KAFKA"],
            s3_endpoint=os.environ["RUNSTREAM_TEST_S3_ENDPOINT"],
            s3_access_key=os.environ["RUNSTREAM_TEST_S3_ACCESS_KEY"],
            s3_secret_key=os.environ["RUNSTREAM_TEST_S3_SECRET_KEY"],
        )
    finally:
        if started_here:
            subprocess.run(["bash", SCRIPT, "down"], check=False)
