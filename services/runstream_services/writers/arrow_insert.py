"""Inserts Arrow tables of metric points, the writer's hot path.

On chDB the inserter opens chDB connection handles of its own (the engine allows many per process)
and reads the Arrow table in place with the Python() table function: no Arrow IPC encoding, no
temporary file, and inserts on different handles run in parallel (clickhouse-connect serializes
every call on one client). On a ClickHouse server it uses clickhouse-connect's insert_arrow.
Either way each insert carries its dedup token, and `optimize_on_insert` is off: merging
duplicate rows at insert time costs a third of the insert CPU, and the ReplacingMergeTree (and
FINAL reads) collapse them anyway.
"""

from __future__ import annotations

import logging
import queue
from typing import Any

import pyarrow as pa

from runstream_services.storage.clickhouse import is_chdb

log = logging.getLogger("runstream.writer")

INSERT_SETTINGS = {"optimize_on_insert": 0}


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class ArrowInserter:
    def __init__(self, client: Any, handles: int = 2):
        self.client = client
        self._handles: queue.Queue | None = None
        path = getattr(client, "path", None)
        if is_chdb(str(getattr(client, "uri", ""))) and path:
            try:
                import chdb

                opened = [chdb.connect(str(path)) for _ in range(max(1, handles))]
            except Exception as exc:  # older chDB, or a path chDB spells differently
                log.warning("chDB fast insert path unavailable (%s); using insert_arrow", exc)
            else:
                self._handles = queue.Queue()
                for handle in opened:
                    self._handles.put(handle)

    @property
    def mode(self) -> str:
        return "chdb-python" if self._handles is not None else "insert_arrow"

    def insert(self, table_name: str, table: pa.Table, token: str) -> None:
        if self._handles is None:
            self.client.insert_arrow(
                table_name, table, settings={"insert_deduplication_token": token, **INSERT_SETTINGS}
            )
            return
        columns = ", ".join(f"`{c}`" for c in table.column_names)
        settings = ", ".join(
            [f"insert_deduplication_token = {_sql_string(token)}"]
            + [f"{k} = {v}" for k, v in INSERT_SETTINGS.items()]
        )
        handle = self._handles.get()
        try:
            points = table  # noqa: F841 - read by name through Python(points)
            handle.query(
                f"INSERT INTO {table_name} ({columns}) SETTINGS {settings} SELECT {columns} FROM Python(points)"
            )
        finally:
            self._handles.put(handle)

    def close(self) -> None:
        if self._handles is None:
            return
        while not self._handles.empty():
            try:
                self._handles.get_nowait().close()
            except Exception:
                pass
