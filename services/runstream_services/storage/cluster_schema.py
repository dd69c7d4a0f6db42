"""The `cluster` schema variant, rendered from the same migration files as the single-node schema.

For a ClickHouse cluster (shards x replicas, Keeper) each migration statement becomes:

- CREATE TABLE t: a local table `t_local` with the Replicated* form of its engine, Keeper path
  `/clickhouse/tables/{shard}/<db>/t_local` and replica `{replica}` (the servers' macros), and a
  Distributed table `t` over it; the store's SQL keeps using `t`. Sharding: tables of runs by
  cityHash64(project, run_id), so a run's points, summaries, rollups, params and artifacts live on
  one shard (co-sharded: per-run joins and materialized views stay local); the writer's request
  records by cityHash64(client_id). Small tables that need read-after-write across the cluster
  (Kafka writer intents, the registry, the audit log, schema_migrations) are GLOBAL: one
  Replicated table on every node (Keeper path without {shard}), no Distributed table.
- non_replicated_deduplication_window becomes replicated_deduplication_window (Keeper-backed).
- CREATE MATERIALIZED VIEW: on the local tables (source and target are co-sharded).
- INSERT ... SELECT (backfills): through the Distributed tables, distributed_foreground_insert = 1.
- RENAME / DROP / ALTER: ON CLUSTER on the local tables; Distributed tables are re-created over
  a renamed local table (their structure follows the new table).
- Every DDL statement runs ON CLUSTER '<cluster>', so one `runstream migrate` applies it everywhere.

WRITER_SETTINGS and READER_SETTINGS are what the store's users need on a cluster (writer_profile and
reader_profile render them as settings profiles).

    python -m runstream_services.storage.cluster_schema --db runstream --cluster runstream

Rendered and checked by tests/unit/test_cluster_schema.py; not run against a real cluster here
(chDB cannot activate a Replicated table, see that test's module doc)."""

from __future__ import annotations

import argparse
import re
import sys

from runstream_services.errors import ConfigError
from runstream_services.storage.migrations import available, statements

GLOBAL_TABLES = frozenset(
    {
        "schema_migrations",
        "writer_intents",
        "writer_claims",
        "audit_log",
        "registered_models",
        "model_versions",
        "model_version_edits",
        "model_alias_moves",
        "registered_model_edits",
        "model_version_claims",
        "run_edits",
        "alert_rules",
        "alert_firings",
        "saved_views",
    }
)
"""Replicated on every node, not sharded: small, and read right after they are written."""

SHARDED_BY_CLIENT = frozenset({"ingested_requests", "client_seqs"})

RUN_SHARDING_KEY = "cityHash64(project, run_id)"
CLIENT_SHARDING_KEY = "cityHash64(client_id)"

READER_SETTINGS = {"distributed_product_mode": "'local'"}
"""For every user of the store: the co-sharded IN subqueries of the query SQL (checked by
storage/distributed_lint.py) read each shard's local table instead of being refused."""

WRITER_SETTINGS = {
    **READER_SETTINGS,
    "deduplicate_blocks_in_dependent_materialized_views": 1,
    "insert_deduplicate": 1,
    "distributed_foreground_insert": 1,
    "load_balancing": "'in_order'",
}
"""For the writers: a replayed block is dropped by the views too, the dedup token reaches the
shards with the block, and reads and inserts go to the same (first healthy) replica of each shard,
so the writer reads its own bookkeeping back."""

_CREATE_TABLE = re.compile(
    r"^CREATE TABLE (?:IF NOT EXISTS )?(?P<db>\w+)\.(?P<name>\w+)\s*\((?P<cols>.*)\)\s*"
    r"ENGINE\s*=\s*(?P<engine>\w*MergeTree)(?:\((?P<args>[^)]*)\))?\s*(?P<tail>.*)$",
    re.S,
)
_CREATE_MV = re.compile(
    r"^CREATE MATERIALIZED VIEW (?:IF NOT EXISTS )?(?P<db>\w+)\.(?P<name>\w+)\s+TO\s+(?P=db)\.(?P<target>\w+)\s+AS\s+(?P<select>.*)$",
    re.S,
)
_INSERT = re.compile(r"^INSERT INTO (?P<db>\w+)\.(?P<name>\w+)\b(?P<rest>.*)$", re.S)
_DROP = re.compile(r"^DROP (?P<kind>TABLE|VIEW) (?:IF EXISTS )?(?P<db>\w+)\.(?P<name>\w+)\s*$")
_RENAME = re.compile(r"^RENAME TABLE (?P<pairs>.*)$", re.S)
_ALTER_SETTING = re.compile(r"^ALTER TABLE (?P<db>\w+)\.(?P<name>\w+) MODIFY SETTING (?P<settings>.*)$", re.S)
_COLUMN = re.compile(r"^\s*`?(\w+)`?\s+[A-Z]", re.M)


class ClusterSchema:
    """Renders the migrations for `db` on `cluster`, remembering each table's kind as it goes."""

    def __init__(self, db: str, cluster: str):
        if not re.fullmatch(r"[A-Za-z_]\w*", db) or not re.fullmatch(r"[A-Za-z_][\w.-]*", cluster):
            raise ConfigError(f"database {db!r} and cluster {cluster!r} must be plain names")
        self.db, self.cluster = db, cluster
        self.on = f"ON CLUSTER '{cluster}'"
        self.sharding: dict[str, str | None] = {}  # table -> sharding key; None: GLOBAL

    # ------------------------------------------------------------------ per table

    def _sharding_of(self, name: str, columns: list[str]) -> str | None:
        base = re.sub(r"_v\d+$", "", name)  # metrics_v4 is the next `metrics`
        if base in GLOBAL_TABLES:
            return None
        if base in SHARDED_BY_CLIENT:
            return CLIENT_SHARDING_KEY
        if "project" in columns and "run_id" in columns:
            return RUN_SHARDING_KEY
        raise ConfigError(
            f"table {name!r} has no (project, run_id) to shard by: add it to GLOBAL_TABLES or "
            "SHARDED_BY_CLIENT in storage/cluster_schema.py"
        )

    def _local(self, name: str) -> str:
        return f"{name}_local" if self.sharding.get(name) else name

    def _distributed(self, name: str) -> str:
        key = self.sharding[name]
        return (
            f"CREATE TABLE IF NOT EXISTS {self.db}.{name} {self.on} AS {self.db}.{name}_local\n"
            f"ENGINE = Distributed('{self.cluster}', '{self.db}', '{name}_local', {key})"
        )

    def create_table(self, m: re.Match) -> list[str]:
        name, cols, engine, args, tail = m["name"], m["cols"], m["engine"], m["args"], m["tail"]
        key = self._sharding_of(name, _COLUMN.findall(cols))
        self.sharding[name] = key
        local = f"{name}_local" if key else name
        shard = "{shard}" if key else "all"
        keeper = [f"'/clickhouse/tables/{shard}/{self.db}/{local}'", "'{replica}'"]
        engine_args = ", ".join(keeper + ([args] if args else []))
        tail = tail.replace("non_replicated_deduplication_window", "replicated_deduplication_window")
        out = [
            f"CREATE TABLE IF NOT EXISTS {self.db}.{local} {self.on}\n({cols})\n"
            f"ENGINE = Replicated{engine}({engine_args})\n{tail}".rstrip()
        ]
        if key:
            out.append(self._distributed(name))
        return out

    def create_view(self, m: re.Match) -> list[str]:
        select = m["select"]
        sources = set(re.findall(rf"\b{self.db}\.(\w+)\b", select))
        keys = {self.sharding.get(t) for t in sources | {m["target"]}}
        if len(keys) != 1:
            raise ConfigError(
                f"view {m['name']!r}: its source {sorted(sources)} and target {m['target']!r} are "
                "not sharded alike, so it cannot run on the local tables"
            )
        for t in sources:
            select = re.sub(rf"\b{self.db}\.{t}\b", f"{self.db}.{self._local(t)}", select)
        return [
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {self.db}.{m['name']} {self.on}\n"
            f"TO {self.db}.{self._local(m['target'])} AS\n{select}"
        ]

    def insert(self, m: re.Match) -> list[str]:
        stmt = m.group(0).rstrip()
        s = re.search(r"\bSETTINGS\s+([^()]*)$", stmt)
        if s:
            return [f"{stmt}, distributed_foreground_insert = 1"]
        return [f"{stmt}\nSETTINGS distributed_foreground_insert = 1"]

    def drop(self, m: re.Match) -> list[str]:
        name = m["name"]
        if m["kind"] == "VIEW":
            return [f"DROP VIEW IF EXISTS {self.db}.{name} {self.on} SYNC"]
        out = [f"DROP TABLE IF EXISTS {self.db}.{self._local(name)} {self.on} SYNC"]
        if self.sharding.get(name):
            out.append(f"DROP TABLE IF EXISTS {self.db}.{name} {self.on} SYNC")
        self.sharding.pop(name, None)
        return out

    def rename(self, m: re.Match) -> list[str]:
        pairs = re.findall(rf"\b{self.db}\.(\w+)\s+TO\s+{self.db}\.(\w+)", m["pairs"])
        if not pairs:
            raise ConfigError(f"cannot read the RENAME statement {m.group(0)!r}")
        kinds = {a: self.sharding.get(a) for a, _ in pairs}

        def local(name: str, key: str | None) -> str:
            return f"{name}_local" if key else name

        moves = ", ".join(
            f"{self.db}.{local(a, kinds[a])} TO {self.db}.{local(b, kinds[a])}" for a, b in pairs
        )
        out = [f"RENAME TABLE {moves} {self.on}"]
        # A Distributed table names its local table and copies its columns: drop them, re-create.
        for a, b in pairs:
            if kinds[a]:
                out += [f"DROP TABLE IF EXISTS {self.db}.{n} {self.on} SYNC" for n in (a, b)]
        for a, _ in pairs:
            self.sharding.pop(a, None)
        for a, b in pairs:
            self.sharding[b] = kinds[a]
            if kinds[a]:
                out.append(self._distributed(b))
        return list(dict.fromkeys(out))

    def alter_settings(self, m: re.Match) -> list[str]:
        settings = m["settings"].replace(
            "non_replicated_deduplication_window", "replicated_deduplication_window"
        )
        return [f"ALTER TABLE {self.db}.{self._local(m['name'])} {self.on} MODIFY SETTING {settings}"]

    # ------------------------------------------------------------------ all

    def render_statement(self, stmt: str) -> list[str]:
        for pattern, handler in (
            (_CREATE_TABLE, self.create_table),
            (_CREATE_MV, self.create_view),
            (_INSERT, self.insert),
            (_DROP, self.drop),
            (_RENAME, self.rename),
            (_ALTER_SETTING, self.alter_settings),
        ):
            m = pattern.match(stmt)
            if m:
                return handler(m)
        raise ConfigError(
            f"the cluster schema cannot render this migration statement; teach "
            f"storage/cluster_schema.py its form:\n{stmt[:200]}"
        )

    def render(self) -> list[tuple[int, str, list[str]]]:
        """(version, name, statements) of every migration; first the database and the
        schema_migrations table (GLOBAL), as migrations.migrate creates them."""
        head = [
            f"CREATE DATABASE IF NOT EXISTS {self.db} {self.on}",
            *self.render_statement(
                f"CREATE TABLE IF NOT EXISTS {self.db}.schema_migrations "
                "(version UInt32, name String, applied_ms Int64) ENGINE = MergeTree ORDER BY version"
            ),
        ]
        out = [(0, "database", head)]
        for version, name, sql in available():
            out.append(
                (version, name, [r for stmt in statements(sql, self.db) for r in self.render_statement(stmt)])
            )
        return out


def render(db: str = "runstream", cluster: str = "runstream") -> list[tuple[int, str, list[str]]]:
    return ClusterSchema(db, cluster).render()


def writer_profile(
    cluster: str = "runstream", name: str = "runstream_writer", settings: dict | None = None
) -> str:
    """A settings profile (WRITER_SETTINGS by default), for the user the writers connect as."""
    listed = ", ".join(f"{k} = {v}" for k, v in (WRITER_SETTINGS if settings is None else settings).items())
    return f"CREATE SETTINGS PROFILE IF NOT EXISTS {name} ON CLUSTER '{cluster}' SETTINGS {listed}"


def reader_profile(cluster: str = "runstream", name: str = "runstream_reader") -> str:
    """A settings profile with READER_SETTINGS, for the query service's user."""
    return writer_profile(cluster, name, READER_SETTINGS)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="print the cluster variant of the Runstream schema (ON CLUSTER DDL)"
    )
    p.add_argument("--db", default="runstream", help="database name (default runstream)")
    p.add_argument(
        "--cluster", default="runstream", help="cluster name in remote_servers (default runstream)"
    )
    args = p.parse_args(argv)
    for version, name, stmts in render(args.db, args.cluster):
        print(f"-- {version:04d}_{name}")
        for stmt in stmts:
            print(stmt + "\n;;")
    print(
        f"-- the writers' and readers' users\n{writer_profile(args.cluster)}\n;;\n{reader_profile(args.cluster)}\n;;"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
