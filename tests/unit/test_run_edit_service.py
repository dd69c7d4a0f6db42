"""RunEditServicer in a process without a store writer (a query-only deployment): the run's row is
read, edited and inserted with a newer version; the state stays; run_edits and audit_log hold the
edit. Real chDB, called without a gRPC server (auth off, so no call context is read)."""

from __future__ import annotations

import asyncio
import json

import pytest

from runstream.v1 import run_edits_pb2
from runstream_services import run_state
from runstream_services.errors import NotFound
from runstream_services.run_edits.service import RunEditServicer
from runstream_services.run_state import RunRow
from runstream_services.storage.clickhouse import ClientPool
from runstream_services.storage.migrations import migrate


def test_edit_without_a_writer(chdb_dsn, database):
    pool = ClientPool(chdb_dsn, size=1)
    with pool.client() as client:
        migrate(client, database)
        row = RunRow(project="p", run_id="r", name="n", tags={"a": "1"}, state="finished", version=5)
        client.insert(f"{database}.runs", [row.values()], column_names=list(run_state.RUN_COLUMNS))
    servicer = RunEditServicer(pool, database)
    request = run_edits_pb2.UpdateRunRequest(
        project="p", run_id="r", name="m", tags_remove=["a"], hypothesis="h"
    )
    answer = asyncio.run(servicer.UpdateRun(request, None))
    assert (answer.name, dict(answer.tags), answer.hypothesis, answer.state) == ("m", {}, "h", "finished")
    with pool.client() as client:
        stored = client.query(f"SELECT name, tags, state FROM {database}.runs FINAL").result_rows
        audit = client.query(f"SELECT actor, action, detail FROM {database}.audit_log").result_rows
    assert stored == [("m", {}, "finished")]
    [(actor, action, detail)] = audit
    assert (actor, action) == ("anonymous", "run.edited") and json.loads(detail)["name"] == {
        "from": "n",
        "to": "m",
    }
    history = asyncio.run(
        servicer.ListRunEdits(run_edits_pb2.ListRunEditsRequest(project="p", run_id="r"), None)
    )
    assert [e.field for e in history.edits] == ["name", "tags", "hypothesis"] and history.hypothesis == "h"
    with pytest.raises(NotFound):
        asyncio.run(
            servicer.UpdateRun(run_edits_pb2.UpdateRunRequest(project="p", run_id="nope", name="x"), None)
        )
