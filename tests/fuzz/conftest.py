"""One real `runstream server` (embedded: ingest, bus, writer and chDB in a child process) for
the whole fuzz session, prepared once: the fuzz project's runs started and the seeded run stored
and snapshotted. Also the hypothesis settings every fuzz test uses, and the session's tally of
requests and answers in the terminal summary (and in $RUNSTREAM_FUZZ_REPORT when set)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.fuzz.harness import TALLY, FuzzTarget
from tests.server_process import ServerProcess

EXAMPLES = int(os.environ.get("RUNSTREAM_FUZZ_EXAMPLES", "100"))
"""Hypothesis examples per fuzz test (each sends up to 24 requests); CI's short form uses the
default (about 2,500 requests in all), the long form `RUNSTREAM_FUZZ_EXAMPLES=1000` (over 10,000)."""

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,  # a server round trip; slow moments are not failures
    derandomize=True,  # the same examples on every run, so CI is reproducible
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    print_blob=True,
)
SNAPSHOT_SETTINGS = settings(FUZZ_SETTINGS, max_examples=max(10, EXAMPLES // 5))
"""For tests that read the seeded run back after every example (slower per example)."""


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
    (and so fail every later test's check for a reason not theirs)."""
    with started_target(tmp_path / "server") as target:
        yield target
        target.assert_up()
        target.assert_seeded_unchanged()


def pytest_terminal_summary(terminalreporter):
    if TALLY.ingest_sent or TALLY.query_sent:
        terminalreporter.write_line(TALLY.line())
        report = os.environ.get("RUNSTREAM_FUZZ_REPORT")
        if report:
            Path(report).write_text(TALLY.line() + "\n")
