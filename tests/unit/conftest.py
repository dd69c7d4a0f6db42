"""Fixtures of the unit tests."""

from __future__ import annotations

import pytest

from tests.unit.sdk_fake_ingest import FakeIngest


@pytest.fixture
def fake():
    """A running stand-in ingest server (tests/unit/sdk_fake_ingest.py), stopped afterwards."""
    server = FakeIngest()
    yield server
    server.stop()
