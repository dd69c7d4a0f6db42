"""Connects to ClickHouse through clickhouse-connect: `chdb://<folder>` for the in-process engine,
`http(s)://user:pass@host:port` for a server. Only the DSN differs between the two."""

from __future__ import annotations

import contextlib
import queue
import re
import threading
from collections.abc import Callable

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.httpclient import HttpClient

from runstream_services.errors import ConfigError, Unavailable
from runstream_services.storage.large_binds import ServerClient

_chdb_lock = threading.Lock()
_chdb_clients: dict[str, Client] = {}


def is_chdb(dsn: str) -> bool:
    """Whether `dsn` (or a client's `uri`) names the in-process chDB engine, not a server."""
    return dsn.startswith("chdb://")


def connect(dsn: str) -> Client:
    """A client for `dsn`. chDB allows one engine per process, so chDB clients are shared per DSN
    (threads of the process may use it at once); server clients are new each call."""
    if not dsn:
        raise ConfigError("no ClickHouse DSN: use chdb://<folder> or http://host:8123")
    if is_chdb(dsn):
        with _chdb_lock:
            client = _chdb_clients.get(dsn)
            if client is None:
                try:
                    client = clickhouse_connect.get_client(dsn=dsn)
                except ImportError as exc:  # the lean `runstream[server]` install has no chDB
                    raise ConfigError(
                        f"{dsn!r} is the embedded chDB store, and chDB is not installed here: "
                        "pip install 'runstream[embedded]', or point --clickhouse-dsn "
                        "(RUNSTREAM_CLICKHOUSE_DSN) at a ClickHouse server, http://user:pass@host:8123"
                    ) from exc
                except Exception as exc:  # chDB raises plain RuntimeError
                    raise Unavailable(
                        f"cannot open chDB at {dsn!r}: {exc}. One process owns a chDB folder; "
                        "stop the other `runstream server` using it or choose another --data-dir"
                    ) from exc
                _chdb_clients[dsn] = client
            return client
    try:
        client = clickhouse_connect.get_client(dsn=dsn, autogenerate_session_id=False)
    except Exception as exc:
        raise Unavailable(f"cannot reach ClickHouse at {redacted(dsn)!r}: {exc}") from exc
    require_server_version(client.server_version, dsn)
    if type(client) is HttpClient:
        # Same object, one more behaviour: large bind values go in the body (see large_binds).
        client.__class__ = ServerClient
    return client


READ_YOUR_WRITES = {"select_sequential_consistency": 1}
"""Settings of the writers' bookkeeping reads (claims, intents, stored seqs, artifact versions):
on a replicated cluster the read sees every insert acknowledged before it, whichever replica
serves it (a no-op on chDB and non-replicated tables)."""

MIN_SERVER_VERSION = (24, 8)
"""The oldest ClickHouse server the store runs on: the LTS release that has everything the schema
and queries use (lttb() since 23.10, lightweight DELETE, insert dedup tokens carried into the
materialized views). Checked when a server client connects; chDB bundles its own engine."""


def require_server_version(version: str | None, dsn: str) -> None:
    """Raises ConfigError when the server is older than MIN_SERVER_VERSION."""
    try:
        found = tuple(int(part) for part in str(version).split(".")[:2])
    except ValueError:
        raise ConfigError(
            f"ClickHouse at {redacted(dsn)!r} reports version {version!r}, which is not a version"
        ) from None
    if found < MIN_SERVER_VERSION:
        need = ".".join(map(str, MIN_SERVER_VERSION))
        raise ConfigError(
            f"ClickHouse at {redacted(dsn)!r} is version {version}; Runstream needs {need} or newer "
            "(its schema and queries use lttb(), lightweight DELETE and deduplicated materialized "
            "views): upgrade the server, or use the embedded store (chdb://)"
        )


def redacted(dsn: str) -> str:
    """`dsn` without its password, for messages."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", dsn)


class ClientPool:
    """Clients for concurrent reads. One clickhouse-connect client runs one call at a time; on chDB
    every client is its own connection to the process's engine, so `size` clients let reads run in
    parallel with each other and with the writers' inserts (measured: two concurrent summary
    queries 33 ms vs 62 ms on one client). HTTP clients already run calls concurrently: one is shared.

    `before_read`: called before a client is handed out; the embedded server passes its bus's
    wait_applied, so a read sees every request acked before it (acks come from the block log,
    a moment before the inserts land)."""

    def __init__(self, dsn: str, size: int = 3, before_read: Callable[[], None] | None = None):
        self.before_read = before_read
        if is_chdb(dsn):
            connect(dsn)  # opens the engine (or raises the actionable error) before the extra clients
            clients = [clickhouse_connect.get_client(dsn=dsn) for _ in range(max(1, size))]
        else:
            clients = [connect(dsn)]
        self._free: queue.SimpleQueue[Client] = queue.SimpleQueue()
        for c in clients:
            self._free.put(c)
        self._shared = None if is_chdb(dsn) else clients[0]

    @contextlib.contextmanager
    def client(self):
        if self.before_read is not None:
            self.before_read()
        if self._shared is not None:
            yield self._shared
            return
        c = self._free.get()
        try:
            yield c
        finally:
            self._free.put(c)
