"""Versioned schema migrations, applied in order at start-up. A migration is a file
`NNNN_name.sql` in migrations/; applied versions are recorded in `<db>.schema_migrations`."""

from __future__ import annotations

import re
import time
from importlib import resources

from clickhouse_connect.driver.client import Client

from runstream_services.errors import ConfigError

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def available() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped with the package, oldest first."""
    found = []
    for entry in resources.files("runstream_services.storage").joinpath("migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append((int(m.group(1)), m.group(2), entry.read_text()))
    return sorted(found)


def statements(sql: str, db: str) -> list[str]:
    """The statements of one migration file, with `{db}` filled in."""
    parts = re.split(r"^\s*;;\s*$", sql, flags=re.MULTILINE)
    out = []
    for part in parts:
        body = "\n".join(line for line in part.splitlines() if not line.strip().startswith("--"))
        if body.strip():
            out.append(body.replace("{db}", db).strip())
    return out


def migrate(client: Client, db: str) -> list[int]:
    """Creates `db` if needed and applies the migrations it lacks. Returns the versions applied."""
    if not _DB_NAME.match(db):
        raise ConfigError(f"database name {db!r} must match {_DB_NAME.pattern}")
    client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    client.command(
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
        "(version UInt32, name String, applied_ms Int64) ENGINE = MergeTree ORDER BY version"
    )
    done = {row[0] for row in client.query(f"SELECT version FROM {db}.schema_migrations").result_rows}
    applied = []
    for version, name, sql in available():
        if version in done:
            continue
        for stmt in statements(sql, db):
            client.command(stmt)
        client.insert(
            f"{db}.schema_migrations",
            [[version, name, int(time.time() * 1000)]],
            column_names=["version", "name", "applied_ms"],
        )
        applied.append(version)
    return applied
