"""Reads a chDB data folder from a child process. The test process may already hold another chDB
folder (one per process), and a running server owns its own, so stop the server first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_SCRIPT = """
import json, sys
import clickhouse_connect
client = clickhouse_connect.get_client(dsn=sys.argv[1])
rows = client.query(sys.argv[2]).result_rows
print(json.dumps([list(r) for r in rows], default=str))
"""


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
