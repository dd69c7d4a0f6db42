"""server.sole_writer: where this process's writer is the only writer its database can have, so the
read cache (query/read_cache.py) and the writer's run and client indexes stay exact."""

from __future__ import annotations

import subprocess
import sys

import pytest

from runstream_services.config import ServerSettings
from runstream_services.server import sole_writer

KAFKA = {"bus": "kafka", "kafka_bootstrap": "127.0.0.1:9092"}
HOLD = """import chdb, sys
held = chdb.connect(sys.argv[1])
held.query("CREATE TABLE t (a Int32) ENGINE = MergeTree ORDER BY a")
print("held", flush=True)
sys.stdin.read()
held.close()
"""


@pytest.mark.parametrize(
    ("settings", "sole"),
    [
        ({}, True),  # the embedded default: chDB in this process
        (KAFKA, True),  # Kafka on chDB: chDB locks its folder to one process
        ({**KAFKA, "clickhouse_dsn": "chdb:///var/lib/runstream/chdb"}, True),
        ({**KAFKA, "clickhouse_dsn": "http://clickhouse:8123"}, False),  # a server: other writers
        ({**KAFKA, "clickhouse_dsn": "https://user:pw@ch.example:8443/runstream"}, False),
    ],
)
def test_a_writer_is_the_sole_writer_on_the_embedded_bus_and_on_chdb(tmp_path, settings, sole):
    assert sole_writer(ServerSettings(data_dir=str(tmp_path), **settings).validate()) is sole


def test_a_second_process_cannot_open_a_chdb_folder(tmp_path):
    """What sole_writer rests on for the Kafka bus: chDB refuses a folder another process holds.
    Both sides are child processes: chDB serves one folder per process, and this one (pytest)
    may already hold another test's."""
    folder = str(tmp_path / "chdb")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, folder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        other = subprocess.run(
            [sys.executable, "-c", "import chdb, sys; chdb.connect(sys.argv[1]).query('SELECT 1')", folder],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.communicate("", timeout=120)  # EOF: the holder closes its connection and exits
    assert holder.returncode == 0
    assert other.returncode != 0
    assert "Cannot lock file" in other.stderr, other.stderr[-2000:]
