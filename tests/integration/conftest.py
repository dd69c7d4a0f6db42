"""Fixtures that start real things: the Kafka/MinIO endpoints (`services`, started on first use
only) and `runstream server` deployments. They live here, not in tests/conftest.py, so a unit test
cannot ask for them: `pytest tests/unit` needs no services and no server process.

`bus_server` runs a test once per bus mode, with ids [embedded] and [kafka]: a behaviour both
buses promise (exactly once, per-request refusals, drains) is written once against it. A test of
one mode's own machinery (the separate Kafka writer process, MinIO artifacts, local files) asks for
`embedded_server`, `kafka_server` or `kafka_split` instead. `pytest -k embedded` skips Kafka.
`module_embedded_server` is one embedded server shared by a module's tests that only add runs of
their own."""

from __future__ import annotations

import pytest

from tests import deployments
from tests.real_services import Services, real_services
from tests.server_process import ServerProcess


@pytest.fixture(scope="session")
def services() -> Services:
    with real_services() as endpoints:
        yield endpoints


@pytest.fixture(params=deployments.BUS_MODES)
def bus_server(request, tmp_path) -> deployments.BusServer:
    """A fresh deployment on each bus: embedded (one process) and kafka (ingest + writer)."""
    if request.param == "embedded":
        deployment = deployments.embedded(tmp_path)
    else:
        deployment = deployments.kafka_split(tmp_path, request.getfixturevalue("services"))
    yield deployment
    deployment.close()


@pytest.fixture
def embedded_server(tmp_path) -> ServerProcess:
    """A fresh embedded `runstream server` (chDB + local artifacts) in a child process."""
    deployment = deployments.embedded(tmp_path)
    yield deployment.ingest
    deployment.close()


@pytest.fixture(scope="module")
def module_embedded_server(tmp_path_factory) -> ServerProcess:
    """One embedded `runstream server` for a whole module, for tests that only add runs of their
    own (own project or run ids) and never stop, kill or reconfigure the server: a start and a
    stop per test saved. A test that stops the server to read its store takes `embedded_server`."""
    deployment = deployments.embedded(tmp_path_factory.mktemp("module_server"))
    yield deployment.ingest
    deployment.close()


@pytest.fixture
def kafka_server(tmp_path, services) -> ServerProcess:
    """A `runstream server` on the Kafka bus and MinIO artifacts, with its own topic prefix."""
    deployment = deployments.kafka_single(tmp_path, services)
    yield deployment.ingest
    deployment.close()


@pytest.fixture
def kafka_split(tmp_path, services) -> deployments.BusServer:
    """Ingest and writer as two processes on one Kafka prefix (`.ingest`, `.writer`)."""
    deployment = deployments.kafka_split(tmp_path, services)
    yield deployment
    deployment.close()
