"""Editable runs on a real embedded server with API keys: a finished run is edited through
runstream.Api (name, notes, tags, hypothesis, outcome); the edit is in the run, in its history
and in the audit log with who and when; the run stays finished; a resend of the run's original
events (from another client, as `runstream sync` would) does not undo the edit, while an update
made after the edit does change it; read keys and other projects' keys cannot edit."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest

import runstream
from runstream.errors import ServerError
from runstream.v1 import ingest_pb2 as pb
from runstream.v1 import types_pb2
from tests.ingest_client import stub_for
from tests.server_process import ServerProcess

PROJECT = "team-a"
KEYS = {
    "write-a": {"project": PROJECT, "role": "write"},
    "read-a": {"project": PROJECT, "role": "read"},
    "write-b": {"project": "team-b", "role": "write"},
}


@pytest.fixture
def server(tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(KEYS))
    process = ServerProcess(
        tmp_path / "server", env={"RUNSTREAM_AUTH_REQUIRED": "true", "RUNSTREAM_API_KEYS_FILE": str(keys)}
    ).start()
    yield process
    process.stop()


def send(server, requests, key="write-a"):
    answers = list(
        stub_for(server).Ingest(iter(requests), metadata=[("authorization", f"Bearer {key}")], timeout=60)
    )
    assert all(a.ok for a in answers), [a.message for a in answers]


def original_events(client_id: str, run_id: str, made_ms: int) -> list[pb.IngestRequest]:
    return [
        pb.IngestRequest(seq=1, client_id=client_id, run_start=pb.RunStart(
            project=PROJECT, run_id=run_id, name="first-name", notes="first notes", tags={"a": "1"},
            start_ms=made_ms)),
        pb.IngestRequest(seq=2, client_id=client_id, run_update=pb.RunUpdate(
            project=PROJECT, run_id=run_id, name="sdk-name", notes="sdk notes", tags={"a": "2", "c": "3"},
            heartbeat_ms=made_ms + 1)),
    ]  # fmt: skip


def audit_rows(data_dir, run_id: str) -> list[dict]:
    """The audit_log rows of the run, read from the stopped server's chDB folder in a child
    process (chDB: one process per data folder)."""
    code = (
        "import json, sys, clickhouse_connect\n"
        "c = clickhouse_connect.get_client(dsn='chdb://' + sys.argv[1])\n"
        'rows = c.query("SELECT actor, action, time_ms, detail FROM runstream.audit_log WHERE target = %(r)s '
        "ORDER BY time_ms\", parameters={'r': sys.argv[2]}).result_rows\n"
        "print(json.dumps([dict(actor=a, action=b, time_ms=t, detail=json.loads(d)) for a, b, t, d in rows]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(data_dir / "chdb"), run_id],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_edit_after_finish_is_kept_audited_and_authorized(server):
    run_id = "r-" + uuid.uuid4().hex[:8]
    client_id = uuid.uuid4().hex
    made_ms = int(time.time() * 1000) - 60_000
    events = original_events(client_id, run_id, made_ms)
    finish = pb.IngestRequest(seq=3, client_id=client_id, run_finish=pb.RunFinish(
        project=PROJECT, run_id=run_id, state=types_pb2.RUN_STATE_FINISHED, end_ms=made_ms + 2))  # fmt: skip
    send(server, [*events, finish])

    with runstream.Api(endpoint=server.endpoint, api_key="write-a") as api:
        before_ms = int(time.time() * 1000)
        answer = api.update_run(
            PROJECT, run_id, name="edited", notes="what we learned", tags_add={"b": "x"}, tags_remove=["a"],
            hypothesis="wider is better", outcome="it was not",
        )  # fmt: skip
        assert answer.state == "finished"
        assert (answer.name, answer.notes, dict(answer.tags)) == (
            "edited",
            "what we learned",
            {"b": "x", "c": "3"},
        )
        assert {e.field for e in answer.edits} == {"name", "notes", "tags", "hypothesis", "outcome"}
        edit = answer.edits[0]
        assert edit.actor.startswith("key:") and edit.role == "write" and edit.time_ms >= before_ms
        # an edit that changes nothing records nothing
        assert not api.update_run(PROJECT, run_id, name="edited").edits

        # the original events again, from another client (a spool synced twice): older than the edit
        replay_client = uuid.uuid4().hex
        send(server, [pb.IngestRequest(seq=r.seq, client_id=replay_client, run_update=r.run_update)
                      for r in events[1:]])  # fmt: skip
        got = api.run(PROJECT, run_id)
        assert got["state"] == "finished"
        assert (got["name"], got["notes"]) == ("edited", "what we learned")
        assert got["tags"] == {"b": "x", "c": "3"}, "a replay of older events must not undo the edit"

        # an update made after the edit wins (last write), and leaves the other edited fields alone
        send(server, [pb.IngestRequest(seq=1, client_id=uuid.uuid4().hex, run_update=pb.RunUpdate(
            project=PROJECT, run_id=run_id, tags={"b": "later"}, heartbeat_ms=int(time.time() * 1000) + 1000))])  # fmt: skip
        got = api.run(PROJECT, run_id)
        assert (
            got["tags"] == {"b": "later", "c": "3"} and got["name"] == "edited" and got["state"] == "finished"
        )

        history = api.run_edits(PROJECT, run_id)
        assert (history.hypothesis, history.outcome) == ("wider is better", "it was not")
        assert [e.field for e in history.edits] == ["name", "notes", "tags", "hypothesis", "outcome"]
        assert json.loads(history.edits[2].new_value) == {"a": None, "b": "x"}

    for key, code in (
        ("read-a", "PERMISSION_DENIED"),
        ("write-b", "PERMISSION_DENIED"),
    ):
        with runstream.Api(endpoint=server.endpoint, api_key=key) as api, pytest.raises(ServerError) as info:
            api.update_run(PROJECT, run_id, name="not allowed")
        assert info.value.code == code, key
    with runstream.Api(endpoint=server.endpoint, api_key="read-a") as api:
        assert api.run(PROJECT, run_id)["name"] == "edited"  # refused edits changed nothing
        assert len(api.run_edits(PROJECT, run_id).edits) == 5  # reading the history needs read only
        with pytest.raises(ServerError) as info:
            api.update_run(PROJECT, "no-such-run", name="x")
        assert info.value.code == "PERMISSION_DENIED"  # the role check comes first

    with (
        runstream.Api(endpoint=server.endpoint, api_key="write-a") as api,
        pytest.raises(ServerError) as info,
    ):
        api.update_run(PROJECT, "no-such-run", name="x")
    assert info.value.code == "NOT_FOUND"

    server.stop()
    audit = [r for r in audit_rows(server.data_dir, run_id) if r["action"] == "run.edited"]
    assert len(audit) == 1, audit
    assert audit[0]["actor"].startswith("key:") and audit[0]["detail"]["role"] == "write"
    assert audit[0]["detail"]["name"] == {"from": "sdk-name", "to": "edited"}
    assert audit[0]["time_ms"] >= before_ms


def test_edit_survives_a_server_restart_and_a_replay(server):
    """The writer reads the pins back with the run's row: after a restart (empty cache) an older
    event still does not undo the edit."""
    run_id = "r-" + uuid.uuid4().hex[:8]
    made_ms = int(time.time() * 1000) - 60_000
    events = original_events(uuid.uuid4().hex, run_id, made_ms)
    send(server, events)
    with runstream.Api(endpoint=server.endpoint, api_key="write-a") as api:
        api.update_run(PROJECT, run_id, name="kept", tags_remove=["c"])
    server.restart()
    send(
        server,
        [
            pb.IngestRequest(seq=r.seq, client_id=uuid.uuid4().hex, run_update=r.run_update)
            for r in events[1:]
        ],
    )
    with runstream.Api(endpoint=server.endpoint, api_key="read-a") as api:
        got = api.run(PROJECT, run_id)
    assert got["name"] == "kept" and "c" not in got["tags"] and got["state"] == "running"
