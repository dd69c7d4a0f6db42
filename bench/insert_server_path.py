"""The writer's metric insert (writers/arrow_insert.py) on its two paths, same blocks, same schema
(migrated, materialized views included): chDB in this process (the Python() table function reads
the Arrow table in place) vs a server DSN (clickhouse-connect insert_arrow over HTTP) through
tests/clickhouse_standin.py - a STAND-IN for a ClickHouse server (chDB behind ClickHouse's HTTP
interface in a child process), so the second figure is the HTTP client path plus chDB, not a
ClickHouse server's own insert rate.

    .venv/bin/python bench/insert_server_path.py --blocks 20 --block-points 100000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runstream_services.storage.clickhouse import connect  # noqa: E402
from runstream_services.storage.migrations import migrate  # noqa: E402
from runstream_services.writers.arrow_insert import ArrowInserter  # noqa: E402
from tests.clickhouse_standin import StandinProcess  # noqa: E402

KEYS = ["loss", "acc", "lr", "grad_norm"]


def block(i: int, n: int) -> pa.Table:
    idx = np.arange(i * n, (i + 1) * n)
    return pa.table(
        {
            "project": pa.array(["bench"] * n).dictionary_encode(),
            "run_id": pa.array([f"run-{i % 4}"] * n),
            "kind": pa.array(["user"] * n),
            "key": pa.array([KEYS[j % len(KEYS)] for j in range(n)]).dictionary_encode(),
            "rank": pa.array(np.zeros(n, np.uint16)),
            "step": pa.array(idx // len(KEYS)),
            "time_ms": pa.array(1_700_000_000_000 + idx),
            "value": pa.array(np.sin(idx / 1000.0)),
            "received_ms": pa.array(np.full(n, 1_700_000_000_000, np.int64)),
            "send_order": pa.array(idx.astype(np.uint64)),
        }
    )


def rate(dsn: str, blocks: list[pa.Table]) -> dict:
    client = connect(dsn)
    migrate(client, "bench")
    inserter = ArrowInserter(client)
    start = time.perf_counter()
    for i, table in enumerate(blocks):
        inserter.insert("bench.metrics", table, f"bench-{i}")
    elapsed = time.perf_counter() - start
    stored = client.query("SELECT count() FROM bench.metrics").result_rows[0][0]
    points = sum(t.num_rows for t in blocks)
    assert stored == points, (stored, points)
    inserter.close()
    return {
        "mode": inserter.mode,
        "points": points,
        "seconds": round(elapsed, 2),
        "points_per_s": int(points / elapsed),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, default=20)
    p.add_argument("--block-points", type=int, default=100_000)
    args = p.parse_args()
    blocks = [block(i, args.block_points) for i in range(args.blocks)]
    with tempfile.TemporaryDirectory() as tmp:
        standin = StandinProcess(Path(tmp) / "standin").start()
        try:
            server = rate(standin.dsn, blocks)
        finally:
            standin.stop()
        embedded = rate(f"chdb://{Path(tmp) / 'chdb'}", blocks)
    print(json.dumps({"chdb_direct": embedded, "server_via_standin": server}, indent=1))


if __name__ == "__main__":
    main()
