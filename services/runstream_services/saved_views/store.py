"""saved_views in the store (migration 0012): every statement of the saved_views package.
Blocking calls; the servicer runs them in a thread."""

from __future__ import annotations

from runstream_services.query.sql import checked_db
from runstream_services.registry.sql import AUDIT_COLUMNS
from runstream_services.saved_views.rules import VIEW_COLUMNS
from runstream_services.storage.clickhouse import ClientPool

_SELECT = "SELECT project, name, state, created_by, created_ms, saved_by, saved_ms"


class SavedViewStore:
    def __init__(self, pool: ClientPool, database: str):
        self.pool = pool
        self.db = checked_db(database)

    def views(self, project: str, name: str | None = None) -> list[tuple]:
        """Live views of `project` (only `name` when given), by name: rows of _SELECT's columns."""
        cond = "AND name = {n:String}" if name is not None else ""
        with self.pool.client() as client:
            return client.query(
                f"{_SELECT} FROM {self.db}.saved_views FINAL "
                f"WHERE project = {{p:String}} {cond} AND deleted = 0 ORDER BY name",
                parameters={"p": project, "n": name or ""},
            ).result_rows

    def write(self, row: list) -> None:
        """One row in VIEW_COLUMNS order: a save, or with deleted = 1 a tombstone; the newest
        revision of (project, name) wins."""
        with self.pool.client() as client:
            client.insert(f"{self.db}.saved_views", [row], column_names=list(VIEW_COLUMNS))

    def audit(self, row: list) -> None:
        """One audit_log row (time_ms, project, actor, action, target, detail)."""
        with self.pool.client() as client:
            client.insert(f"{self.db}.audit_log", [row], column_names=list(AUDIT_COLUMNS))
