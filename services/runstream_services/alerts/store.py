"""Alert rules and firings in the store (migration 0008): every statement of the alerts package.
Blocking calls (the servicer runs them in a thread; the evaluator's threads call them directly)."""

from __future__ import annotations

import threading
import time

from runstream_services.alerts import rules
from runstream_services.alerts.rules import Rule
from runstream_services.query.sql import checked_db
from runstream_services.registry.sql import AUDIT_COLUMNS
from runstream_services.storage.clickhouse import ClientPool

_RULE_SELECT = "SELECT project, rule_id, name, kind, key, op, value, last_n, minutes, webhook_url, secret, creator, created_ms"


class AlertStore:
    def __init__(self, pool: ClientPool, database: str):
        self.pool = pool
        self.db = checked_db(database)
        self._lock = threading.Lock()
        self._last_revision = 0

    def revision(self) -> int:
        """Increasing unix microseconds: a newer row of a rule or firing always wins."""
        with self._lock:
            self._last_revision = max(self._last_revision + 1, time.time_ns() // 1000)
            return self._last_revision

    def _query(self, sql: str, params: dict) -> list[tuple]:
        with self.pool.client() as client:
            return client.query(sql, parameters=params).result_rows

    def _insert(self, table: str, columns, data: list[list]) -> None:
        with self.pool.client() as client:
            client.insert(f"{self.db}.{table}", data, column_names=list(columns))

    def audit(self, row: list) -> None:
        """One audit_log row (time_ms, project, actor, action, target, detail)."""
        self._insert("audit_log", AUDIT_COLUMNS, [row])

    def rules(self, project: str | None = None) -> list[Rule]:
        """The live rules of `project` (every project's when None), oldest first."""
        cond, params = ("AND project = {p:String}", {"p": project}) if project is not None else ("", {})
        rows = self._query(
            f"{_RULE_SELECT} FROM {self.db}.alert_rules FINAL WHERE deleted = 0 {cond} ORDER BY created_ms, rule_id",
            params,
        )
        return [Rule(*r[:7], int(r[7]), *r[8:]) for r in rows]

    def add_rule(self, rule: Rule) -> None:
        self._insert("alert_rules", rules.RULE_COLUMNS, [rule.row(self.revision())])

    def delete_rule(self, rule: Rule) -> None:
        self._insert("alert_rules", rules.RULE_COLUMNS, [rule.row(self.revision(), deleted=True)])

    def record_firing(self, firing: dict) -> None:
        """Inserts (or, by a newer revision, replaces) a firing row; `firing` has FIRING_COLUMNS
        but revision."""
        self._insert(
            "alert_firings",
            rules.FIRING_COLUMNS,
            [[firing[c] for c in rules.FIRING_COLUMNS[:-1]] + [self.revision()]],
        )

    def firings(self, project: str, rule_id: str = "", limit: int = 100) -> list[tuple]:
        """Rows in FIRING_COLUMNS order (without revision), newest first."""
        cols = ", ".join(rules.FIRING_COLUMNS[:-1])
        cond = "AND rule_id = {r:String}" if rule_id else ""
        return self._query(
            f"SELECT {cols} FROM {self.db}.alert_firings FINAL WHERE project = {{p:String}} {cond} "
            "ORDER BY fired_ms DESC, firing_id LIMIT {n:UInt32}",
            {"p": project, "r": rule_id, "n": limit},
        )

    def pending_firings(self, since_ms: int) -> list[dict]:
        """Firings fired since `since_ms` whose delivery never ended (the server stopped first)."""
        cols = rules.FIRING_COLUMNS[:-1]
        rows = self._query(
            f"SELECT {', '.join(cols)} FROM {self.db}.alert_firings FINAL "
            "WHERE status = 'pending' AND fired_ms >= {t:Int64} ORDER BY fired_ms",
            {"t": since_ms},
        )
        return [dict(zip(cols, row, strict=True)) for row in rows]

    def running_runs(self) -> list[tuple[str, str, int]]:
        """(project, run_id, heartbeat_ms) of the runs running now, for the evaluator's start."""
        return self._query(
            f"SELECT project, run_id, heartbeat_ms FROM {self.db}.runs FINAL WHERE state = 'running'", {}
        )
