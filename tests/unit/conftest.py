"""Fixtures of the unit tests."""

from __future__ import annotations

import pytest

from runstream_services.artifacts.local import LocalArtifactStore
from runstream_services.config import ServerSettings
from runstream_services.storage.clickhouse import connect
from runstream_services.storage.migrations import migrate
from runstream_services.writers.store import StoreWriter
from tests.unit.sdk_fake_ingest import FakeIngest


@pytest.fixture
def fake():
    """A running stand-in ingest server (tests/unit/sdk_fake_ingest.py), stopped afterwards."""
    server = FakeIngest()
    yield server
    server.stop()


@pytest.fixture
def sole_writer(chdb_dsn, database, tmp_path):
    """The embedded server's StoreWriter (the only writer of its database) on a migrated chDB
    database of the test's own, closed afterwards."""
    client = connect(chdb_dsn)
    migrate(client, database)
    writer = StoreWriter(
        client, database, LocalArtifactStore(tmp_path / "artifacts"), ServerSettings(), sole_writer=True
    )
    yield writer
    writer.close()
