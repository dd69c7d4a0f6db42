from __future__ import annotations

import pytest

from runstream_services.errors import ConfigError
from runstream_services.storage import migrations
from runstream_services.storage.clickhouse import connect


def test_statements_split_and_fill_db():
    sql = (
        "-- c\nCREATE TABLE {db}.a (x Int8) ENGINE=Memory\n;;\n\nCREATE TABLE {db}.b (x Int8) ENGINE=Memory\n"
    )
    assert migrations.statements(sql, "rs") == [
        "CREATE TABLE rs.a (x Int8) ENGINE=Memory",
        "CREATE TABLE rs.b (x Int8) ENGINE=Memory",
    ]


def test_migrate_applies_once(chdb_dsn, database):
    client = connect(chdb_dsn)
    first = migrations.migrate(client, database)
    assert first == [v for v, _, _ in migrations.available()] and first[0] == 1
    assert migrations.migrate(client, database) == []
    tables = {r[0] for r in client.query(f"SHOW TABLES FROM {database}").result_rows}
    assert {"runs", "params", "metrics", "metric_summaries", "artifacts", "audit_log"} <= tables


def test_bad_database_name_refused(chdb_dsn):
    with pytest.raises(ConfigError, match="database name"):
        migrations.migrate(connect(chdb_dsn), "x; DROP TABLE y")


def test_0004_versions_points_and_recomputes_old_summaries(chdb_dsn, database):
    """Data written under schema v3 (summaries with min = max = 0 for a NaN-only series, a point
    stored twice counted twice) is corrected when 0004 runs; later writes are versioned."""
    client = connect(chdb_dsn)
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    client.command(
        f"CREATE TABLE {database}.schema_migrations "
        "(version UInt32, name String, applied_ms Int64) ENGINE = MergeTree ORDER BY version"
    )
    for version, name, sql in migrations.available():
        if version < 4:
            for stmt in migrations.statements(sql, database):
                client.command(stmt)
            client.insert(f"{database}.schema_migrations", [[version, name, 0]], column_names=["version", "name", "applied_ms"])  # fmt: skip
    cols = ["project", "run_id", "kind", "key", "rank", "step", "time_ms", "value"]
    client.insert(
        f"{database}.metrics", [["p", "r", "user", "nan", 0, 0, 0, float("nan")]], column_names=cols
    )
    for value in (1.0, 2.0):  # the same point twice, in two blocks
        client.insert(f"{database}.metrics", [["p", "r", "user", "dup", 0, 7, 0, value]], column_names=cols)
    summaries = f"SELECT key, min(min), max(max), sum(count) FROM {database}.metric_summaries GROUP BY key ORDER BY key"  # fmt: skip
    assert client.query(summaries).result_rows == [("dup", 1.0, 2.0, 2), ("nan", 0.0, 0.0, 1)]

    assert migrations.migrate(client, database) == [v for v, _, _ in migrations.available() if v >= 4]

    rows = client.query(summaries).result_rows
    assert rows[1] == ("nan", None, None, 1)
    assert (
        rows[0][0] == "dup" and rows[0][3] == 1
    )  # one point: which of the two is unknown (v3 kept no order)
    rollup_rows = f"SELECT sum(count) FROM {database}.metric_rollups"
    assert client.query(rollup_rows).result_rows[0][0] == 3  # kept as they were, not fed twice
    # after the migration, writes carry versions through the ephemeral columns
    client.insert(
        f"{database}.metrics",
        [["p", "r", "user", "dup", 0, 7, 0, 3.0, 1, 1]],
        column_names=[*cols, "received_ms", "send_order"],
    )
    assert client.query(f"SELECT value FROM {database}.metrics FINAL WHERE key = 'dup'").result_rows == [
        (3.0,)
    ]
    assert client.query(rollup_rows).result_rows[0][0] == 4  # the rollup view is attached again
