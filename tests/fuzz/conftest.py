"""One real `runstream server` (embedded: ingest, bus, writer and chDB in a child process) for
the whole fuzz session, prepared once: the fuzz project's runs started and the seeded run stored
and snapshotted; and the session's tally of requests and answers in the terminal summary (and in
$RUNSTREAM_FUZZ_REPORT when set)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.fuzz.harness import TALLY, FuzzTarget
from tests.server_process import ServerProcess


@contextmanager
def started_target(data_dir: Path) -> Iterator[FuzzTarget]:
    server = ServerProcess(data_dir).start()
    target = FuzzTarget(server)
    try:
        target.prepare()
        yield target
    finally:
        target.close()
        server.stop()


@pytest.fixture(scope="session")
def fuzz_target(tmp_path_factory) -> Iterator[FuzzTarget]:
    with started_target(tmp_path_factory.mktemp("fuzz") / "server") as target:
        yield target


@pytest.fixture
def fuzz(fuzz_target) -> FuzzTarget:
    """The session's server; after each test it must still be up, and the seeded run unchanged."""
    yield fuzz_target
    fuzz_target.assert_up()
    fuzz_target.assert_seeded_unchanged()


@pytest.fixture
def own_fuzz_target(tmp_path) -> Iterator[FuzzTarget]:
    """A server of the test's own, for a test whose failure would leave the seeded run changed
    (and so fail every later test's check for a reason not theirs). The test checks the seeded run
    itself, so its verdict (and an xfail) covers it."""
    with started_target(tmp_path / "server") as target:
        yield target


def pytest_terminal_summary(terminalreporter):
    if TALLY.ingest_sent or TALLY.query_sent:
        terminalreporter.write_line(TALLY.line())
        report = os.environ.get("RUNSTREAM_FUZZ_REPORT")
        if report:
            Path(report).write_text(TALLY.line() + "\n")
