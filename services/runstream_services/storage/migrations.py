"""Versioned schema migrations, applied in order at start-up. A migration is a file
`NNNN_name.sql` in migrations/; applied versions are recorded in `<db>.schema_migrations`."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from importlib import resources

from clickhouse_connect.driver.client import Client

from runstream_services.errors import ConfigError, Unavailable
from runstream_services.storage.clickhouse import is_chdb

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


def migrate(client: Client, db: str, lock_wait_s: float = 600, cluster: str | None = None) -> list[int]:
    """Creates `db` if needed and applies the migrations it lacks, on a server holding the
    migration lock (MigrationLock) while it does. Returns the versions applied. With `cluster`,
    the statements are the cluster variant (storage/cluster_schema.py: ON CLUSTER, Replicated +
    Distributed tables), applied once from one node for the whole cluster."""
    if not _DB_NAME.match(db):
        raise ConfigError(f"database name {db!r} must match {_DB_NAME.pattern}")
    plan = _plan(db, cluster)
    for stmt in plan[0][2]:  # the database and schema_migrations
        client.command(stmt)
    if not _missing(client, db):
        return []
    # chDB: this process owns the folder, no one else can migrate it (and a crash leaves no lock)
    owned = is_chdb(str(getattr(client, "uri", "")))
    with contextlib.nullcontext() if owned else MigrationLock(client, db, lock_wait_s):
        done = _done(client, db)  # again: another process may have applied them meanwhile
        applied = []
        for version, name, stmts in plan[1:]:
            if version in done:
                continue
            for stmt in stmts:
                client.command(stmt)
            client.insert(
                f"{db}.schema_migrations",
                [[version, name, int(time.time() * 1000)]],
                column_names=["version", "name", "applied_ms"],
            )
            applied.append(version)
        return applied


def _plan(db: str, cluster: str | None) -> list[tuple[int, str, list[str]]]:
    """(version, name, statements): first (0, "database", ...) creating the database and
    schema_migrations, then every migration."""
    if cluster:
        from runstream_services.storage.cluster_schema import ClusterSchema

        return ClusterSchema(db, cluster).render()
    head = [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
        "(version UInt32, name String, applied_ms Int64) ENGINE = MergeTree ORDER BY version",
    ]
    return [(0, "database", head)] + [(v, n, statements(sql, db)) for v, n, sql in available()]


def _done(client: Client, db: str) -> set[int]:
    return {row[0] for row in client.query(f"SELECT version FROM {db}.schema_migrations").result_rows}


def _missing(client: Client, db: str) -> list[int]:
    done = _done(client, db)
    return [v for v, _, _ in available() if v not in done]


class MigrationLock:
    """At most one process applies migrations to a database at a time, so two servers starting
    together (migrate_on_start) or two migration Jobs never both run a migration (0003's rollup
    backfill would count every point twice). The lock is the table `<db>.schema_migrations_lock`:
    CREATE TABLE without IF NOT EXISTS succeeds for exactly one caller. Its row says who holds
    it; it is dropped when the holder finishes. Others wait up to `wait_s`, then fail naming the
    holder (a crashed holder leaves the table: drop it once no migration runs)."""

    def __init__(self, client: Client, db: str, wait_s: float = 600, poll_s: float = 0.5):
        self.client, self.db, self.wait_s, self.poll_s = client, db, wait_s, poll_s
        self.table = f"{db}.schema_migrations_lock"
        self.holder = f"{socket.gethostname()} pid {os.getpid()}"

    def __enter__(self) -> MigrationLock:
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                self.client.command(
                    f"CREATE TABLE {self.table} (holder String, since_ms Int64) ENGINE = MergeTree ORDER BY tuple()"
                )
            except Exception as exc:
                if "already exists" not in str(exc).lower() and "TABLE_ALREADY_EXISTS" not in str(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise Unavailable(self._held_message()) from None
                time.sleep(self.poll_s)
                continue
            self.client.insert(
                self.table, [[self.holder, int(time.time() * 1000)]], column_names=["holder", "since_ms"]
            )
            return self

    def __exit__(self, *exc) -> None:
        self.client.command(f"DROP TABLE IF EXISTS {self.table}")

    def _held_message(self) -> str:
        try:
            rows = self.client.query(f"SELECT holder, since_ms FROM {self.table}").result_rows
        except Exception:
            rows = []
        who = (
            f"{rows[0][0]} since {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(rows[0][1] / 1000))}"
            if rows
            else "a process that has not written its name yet"
        )
        return (
            f"migrations of {self.db!r} are being applied by {who} (lock table {self.table}); waited "
            f"{self.wait_s:.0f} s. If no `runstream migrate` or starting server is applying them, a "
            f"migration crashed: check the schema, then DROP TABLE {self.table} and run again"
        )
