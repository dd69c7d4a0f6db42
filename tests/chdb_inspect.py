"""Reads what a server stored, from its chDB data folder, in a child process. The test process may
already hold another chDB folder (one per process), and a running server owns its own, so stop the
server first."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

DATABASE = "runstream"
"""The database `runstream server` writes to (its default clickhouse_database)."""

_SCRIPT = """
import json, sys
import clickhouse_connect
client = clickhouse_connect.get_client(dsn=sys.argv[1])
rows = client.query(sys.argv[2]).result_rows
print(json.dumps([list(r) for r in rows], default=str))
"""


class HasDataDir(Protocol):
    data_dir: Path


def query_folder(chdb_folder: Path | str, sql: str) -> list[list]:
    """Rows of `sql` run on the chDB folder (e.g. `<data_dir>/chdb` of a stopped server)."""
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, f"chdb://{chdb_folder}", sql],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def stored(server: HasDataDir, sql: str) -> list[list]:
    """Rows of `sql` on a stopped server's chDB folder; `DB.` in `sql` stands for its database."""
    return query_folder(Path(server.data_dir) / "chdb", sql.replace("DB.", f"{DATABASE}."))


@dataclass(frozen=True)
class StoredCounts:
    """What the exactly-once tests compare, read in one query."""

    rows: int  # metric rows as stored, without FINAL: a duplicate would show here
    rows_final: int  # metric rows after ReplacingMergeTree dedup
    distinct_points: int  # distinct (key, step)
    summary_count: int  # sum(count) of metric_summaries: each point counted once
    summary_last_step: int  # max(last_step) of metric_summaries
    requests_recorded: int  # (client_id, seq) pairs recorded as stored (client_seqs ranges, FINAL)


#: how many seqs the client_seqs rows record (each row holds closed ranges)
STORED_SEQS = "toInt64(sum(arraySum(arrayMap(r -> toInt64(r.2) - toInt64(r.1) + 1, ranges))))"


def stored_counts(server: HasDataDir, query=None) -> StoredCounts:
    """StoredCounts of every run on a stopped server; `query(server, sql)` reads the rows
    (default `stored`: its chDB folder)."""
    (row,) = (query or stored)(
        server,
        "SELECT (SELECT count() FROM DB.metrics), (SELECT count() FROM DB.metrics FINAL), "
        "(SELECT uniqExact(key, step) FROM DB.metrics), (SELECT sum(count) FROM DB.metric_summaries), "
        "(SELECT max(last_step) FROM DB.metric_summaries), "
        f"(SELECT {STORED_SEQS} FROM DB.client_seqs FINAL)",
    )
    return StoredCounts(*(int(v) for v in row))
