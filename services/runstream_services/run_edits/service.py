"""The runstream.v1 RunEditService: people edit a run's name, notes, tags, hypothesis and outcome
after the fact (the dashboard's run page, `runstream.Api().update_run`).

Where the edit is applied:
- a process that runs a store writer (always, embedded): through that writer
  (StoreWriter.edit_run), under the lock it merges run events with, so its cached row, its pins
  (run_edits/rules.py) and the query service's in-process read cache all see the edit at once;
- a process without one (a query-only deployment on a ClickHouse server): the run's row is read,
  edited and inserted with a newer version from here.
Kafka with several writer processes: a writer other than this process's learns of the edit only
when it next reads the run's row from the table (a restart, a rebalance, cache eviction); until
then a run event of that run stored by such a writer, if it still caches the row, writes the
pre-edit name, notes and tags again. Editing runs that have ended (the common case) is safe.

Every changed field is a run_edits row (who: the key's id and role; when; before and after) and
the call also writes one audit_log row ("run.edited"). An edit never changes the run's state.
Authorization: write role on the run's project; reads of the history need read."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from runstream.v1 import run_edits_pb2, run_edits_pb2_grpc
from runstream_services import run_state
from runstream_services.auth.keys import authorized
from runstream_services.errors import NotFound
from runstream_services.query.sql import checked_db
from runstream_services.registry.rules import Revisions, actor_of
from runstream_services.registry.sql import AUDIT_COLUMNS
from runstream_services.run_edits import rules
from runstream_services.run_state import RunRow
from runstream_services.storage.clickhouse import ClientPool


class RunEditServicer(run_edits_pb2_grpc.RunEditServiceServicer):
    """`writer`: this process's StoreWriter, None when it runs none."""

    def __init__(self, readers: ClientPool, database: str, auth: Any = None, writer: Any = None):
        self.readers = readers
        self.db = checked_db(database)
        self.auth = auth
        self.writer = writer
        self._revisions = Revisions()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def _allowed(self, context, project: str, need: str):
        """(project, principal) after checking the caller may `need` the project."""
        return authorized(self.auth, context, project, need)

    async def _rows(self, sql: str, params: dict) -> list[tuple]:
        def run() -> list[tuple]:
            with self.readers.client() as client:
                return client.query(sql, parameters=params).result_rows

        return await asyncio.to_thread(run)

    async def _insert(self, table: str, columns, data: list[list]) -> None:
        def run() -> None:
            with self.readers.client() as client:
                client.insert(f"{self.db}.{table}", data, column_names=list(columns))

        await asyncio.to_thread(run)

    async def _history(self, project: str, run_id: str) -> list[tuple]:
        return await self._rows(
            f"SELECT field, old_value, new_value, actor, role, time_ms FROM {self.db}.run_edits "
            "WHERE project = {p:String} AND run_id = {r:String} ORDER BY revision",
            {"p": project, "r": run_id},
        )

    @staticmethod
    def _extra(history: list[tuple]) -> dict[str, str]:
        """Current hypothesis and outcome: the newest edit of each."""
        out = {f: "" for f in rules.EXTRA_FIELDS}
        for field, _old, new, *_ in history:
            if field in out:
                out[field] = json.loads(new)
        return out

    async def _read_row(self, project: str, run_id: str) -> RunRow | None:
        cols = ", ".join(f"`{c}`" for c in run_state.RUN_COLUMNS)
        found = await self._rows(
            f"SELECT {cols} FROM {self.db}.runs FINAL WHERE project = {{p:String}} AND run_id = {{r:String}}",
            {"p": project, "r": run_id},
        )
        return RunRow.from_db(found[0]) if found else None

    async def UpdateRun(self, request, context):
        project, principal = self._allowed(context, request.project, "write")
        run_id = request.run_id
        actor, role = actor_of(principal), (principal.role if principal is not None else "")
        missing = NotFound(f"run {run_id!r} of project {project!r} does not exist")
        async with self._locks.setdefault((project, run_id), asyncio.Lock()):
            extra = self._extra(await self._history(project, run_id))
            now_ms = int(time.time() * 1000)
            planned: list[rules.FieldEdit] = []

            def change(row: RunRow) -> dict[str, int]:
                planned[:] = rules.plan(row, extra, request)  # raises before anything changes
                rules.apply(row, planned)
                return rules.pins_of(planned, now_ms)

            if self.writer is not None:
                row = await asyncio.to_thread(self.writer.edit_run, project, run_id, change)
                if row is None:
                    raise missing
            else:
                row = await self._read_row(project, run_id)
                if row is None:
                    raise missing
                if change(row):
                    row.version = max(time.time_ns(), row.version + 1)
                    await self._insert("runs", run_state.RUN_COLUMNS, [row.values()])
            if planned:
                await self._insert(
                    "run_edits",
                    rules.EDIT_COLUMNS,
                    [
                        rules.edit_row(project, run_id, e, actor, role, now_ms, self._revisions.next())
                        for e in planned
                    ],
                )
                detail = {e.field: {"from": e.old, "to": e.new} for e in planned}
                detail["role"] = role  # type: ignore[assignment]
                await self._insert(
                    "audit_log",
                    AUDIT_COLUMNS,
                    [[now_ms, project, actor, "run.edited", run_id, json.dumps(detail)]],
                )
                for e in planned:
                    if e.field in extra:
                        extra[e.field] = e.new  # type: ignore[assignment]
        return run_edits_pb2.UpdateRunResponse(
            edits=[
                run_edits_pb2.RunEdit(
                    field=e.field, old_value=json.dumps(e.old), new_value=json.dumps(e.new), actor=actor, role=role,
                    time_ms=now_ms,
                )  # fmt: skip
                for e in planned
            ],
            name=row.name, notes=row.notes, tags=row.tags, hypothesis=extra["hypothesis"], outcome=extra["outcome"],
            state=row.state,
        )  # fmt: skip

    async def ListRunEdits(self, request, context):
        project, _ = self._allowed(context, request.project, "read")
        history = await self._history(project, request.run_id)
        extra = self._extra(history)
        return run_edits_pb2.ListRunEditsResponse(
            edits=[
                run_edits_pb2.RunEdit(field=f, old_value=o, new_value=n, actor=a, role=r, time_ms=t)
                for f, o, n, a, r, t in history
            ],
            hypothesis=extra["hypothesis"],
            outcome=extra["outcome"],
        )
