"""`runstream migrate` applies the schema once, and a server with migrate_on_start = false refuses
to start on a store that lacks a migration (instead of racing other pods on DDL), then starts
once the migration Job has run. Real chDB stores in subprocesses, the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.server_process import ServerProcess, free_port

pytest.importorskip("chdb")


def runstream(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runstream_services.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_migrate_applies_once_and_check_reports(tmp_path):
    dsn = f"chdb://{tmp_path / 'chdb'}"
    check = runstream("migrate", "--clickhouse-dsn", dsn, "--check")
    assert check.returncode == 1, check.stderr
    assert "missing 0001_initial" in check.stdout
    first = runstream("migrate", "--clickhouse-dsn", dsn)
    assert first.returncode == 0, first.stderr
    assert "applied [1, 2" in first.stdout
    again = runstream("migrate", "--clickhouse-dsn", dsn)
    assert again.returncode == 0, again.stderr
    assert "up to date, nothing to apply" in again.stdout
    check = runstream("migrate", "--clickhouse-dsn", dsn, "--check")
    assert check.returncode == 0 and "up to date" in check.stdout


def test_server_without_migrate_on_start_refuses_a_stale_schema_then_starts(tmp_path):
    dsn = f"chdb://{tmp_path / 'chdb'}"
    env = {"RUNSTREAM_MIGRATE_ON_START": "false", "RUNSTREAM_CLICKHOUSE_DSN": dsn}
    refused = runstream(
        "server", "--port", str(free_port()), "--metrics-port", "0", "--data-dir", str(tmp_path),
        env=env, timeout=60,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "lacks migrations 0001_initial" in refused.stderr, refused.stderr[-2000:]
    assert "run `runstream migrate`" in refused.stderr
    # It created nothing behind the operator's back: every migration is still missing.
    check = runstream("migrate", "--clickhouse-dsn", dsn, "--check")
    assert check.returncode == 1 and "missing 0001_initial" in check.stdout
    # After the migration Job, the same server starts and answers health checks.
    assert runstream("migrate", "--clickhouse-dsn", dsn).returncode == 0
    server = ServerProcess(tmp_path, env=env).start()
    try:
        assert server.proc.poll() is None
    finally:
        server.stop()
