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
