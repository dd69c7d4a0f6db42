"""Fixtures every test folder may use; none of them starts a service or a server process (those
are in tests/integration/conftest.py). The folder a test lives in sets its marker, so
`-m "not integration and not e2e"` selects what tests/unit selects."""

from __future__ import annotations

import os

# As `import runstream` does for users: gRPC's fork handlers are skipped (and a forked child can
# crash) while the SDK's worker thread is inside gRPC. gRPC reads this once, at its import, so it
# is set here before any test module imports grpc or runstream, whichever comes first.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import re  # noqa: E402
import uuid
from pathlib import Path

import pytest

# Plain asserts in the shared helpers report their values as asserts in test modules do.
pytest.register_assert_rewrite("tests.ingest_client", "tests.deployments", "tests.chdb_inspect")


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
    stem = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:40]
    return f"t_{stem}_{uuid.uuid4().hex[:6]}"
