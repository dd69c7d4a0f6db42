"""`runstream migrate` (flags here; store imports only when it runs, so `runstream --help`
works on the bare SDK install): apply the schema migrations once, outside the servers (the Helm chart's
pre-install/pre-upgrade Job), and the start-up check of servers that do not migrate themselves
(`migrate_on_start = false`): several pods starting together must never race on DDL or run a
backfill twice."""

from __future__ import annotations

import argparse
import logging
import sys

from runstream_services.errors import ConfigError, Unavailable

log = logging.getLogger("runstream.migrate")


def missing(client, db: str) -> list[tuple[int, str]]:
    """(version, name) of the shipped migrations that `db` lacks; all of them for a new store."""
    from runstream_services.storage.migrations import available  # clickhouse-connect: server extra

    exists = client.query(
        "SELECT count() FROM system.tables WHERE database = {db:String} AND name = 'schema_migrations'",
        parameters={"db": db},
    ).result_rows[0][0]
    done = set()
    if exists:
        done = {row[0] for row in client.query(f"SELECT version FROM {db}.schema_migrations").result_rows}
    return [(version, name) for version, name, _ in available() if version not in done]


def require_current(client, db: str) -> None:
    """Raises ConfigError naming the missing migrations when the schema is behind this build."""
    lacking = missing(client, db)
    if lacking:
        names = ", ".join(f"{v:04d}_{n}" for v, n in lacking)
        raise ConfigError(
            f"the store's schema in database {db!r} lacks migrations {names}, and migrate_on_start is "
            "false: run `runstream migrate` (the Helm chart's migration Job does) with the same "
            "settings, or set migrate_on_start = true for a single server"
        )


def add_commands(sub) -> None:
    p = sub.add_parser(
        "migrate",
        help="apply the store's schema migrations once and exit (for clusters whose servers run "
        "with migrate_on_start = false; the Helm chart runs it as a pre-install/upgrade Job)",
    )
    p.add_argument("--config", help="TOML settings file ([server] table), as for `runstream server`")
    p.add_argument("--clickhouse-dsn", help="chdb://<folder> or http://user:pass@host:8123")
    p.add_argument("--check", action="store_true", help="only list missing migrations; exit 1 if any")
    p.add_argument(
        "--cluster",
        help="a ClickHouse cluster name (remote_servers): apply the cluster variant, ON CLUSTER, with "
        "Replicated local tables and Distributed tables (print it: python -m "
        "runstream_services.storage.cluster_schema)",
    )
    p.add_argument("--log-level", default="INFO", help="python logging level (default INFO)")
    p.set_defaults(run="runstream_services.storage.migrate_command:main")


def main(args: argparse.Namespace) -> int:
    from runstream_services.config import load_settings
    from runstream_services.storage.clickhouse import connect
    from runstream_services.storage.migrations import migrate

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = load_settings({"clickhouse_dsn": args.clickhouse_dsn}, config_file=args.config)
        client = connect(settings.resolved_clickhouse_dsn)
        db = settings.clickhouse_database
        if args.check:
            lacking = missing(client, db)
            for version, name in lacking:
                print(f"missing {version:04d}_{name}")
            print(f"{db}: {'up to date' if not lacking else f'{len(lacking)} migration(s) missing'}")
            return 1 if lacking else 0
        applied = migrate(client, db, cluster=args.cluster)
    except (ConfigError, Unavailable) as exc:  # e.g. the migration lock held too long
        print(f"runstream migrate: {exc}", file=sys.stderr)
        return 2
    print(f"{db}: applied {applied}" if applied else f"{db}: up to date, nothing to apply")
    return 0
