"""run_edits/rules.py: what an edit changes, and that run events made before an edit leave the
edited fields alone while later ones change them (pins)."""

from __future__ import annotations

import pytest

from runstream.v1 import ingest_pb2, run_edits_pb2
from runstream_services.errors import InvalidArgument
from runstream_services.run_edits import rules
from runstream_services.run_state import RunRow, merge_run_update


def row() -> RunRow:
    return RunRow(project="p", run_id="r", name="n", notes="old", tags={"a": "1", "b": "2"}, state="finished")


def test_plan_lists_only_changed_fields_and_apply_keeps_the_state():
    r = row()
    request = run_edits_pb2.UpdateRunRequest(
        project="p", run_id="r", name="n", notes="new", tags_add={"b": "2", "c": "3"}, tags_remove=["a", "zz"],
        outcome="it worked",
    )  # fmt: skip
    edits = rules.plan(r, {"hypothesis": "", "outcome": ""}, request)
    assert [(e.field, e.old, e.new) for e in edits] == [
        ("notes", "old", "new"),
        ("tags", {"a": "1", "c": None}, {"a": None, "c": "3"}),
        ("outcome", "", "it worked"),
    ]
    rules.apply(r, edits)
    assert (r.name, r.notes, r.tags, r.state) == ("n", "new", {"b": "2", "c": "3"}, "finished")
    assert set(rules.pins_of(edits, 5)) == {"notes", "tags:a", "tags:c"}


@pytest.mark.parametrize(
    "request_fields",
    [{"name": "   "}, {"tags_add": {"": "x"}}, {"notes": "x" * (64 * 1024 + 1)}],
)
def test_bad_edits_are_refused_before_anything_changes(request_fields):
    r = row()
    with pytest.raises(InvalidArgument):
        rules.plan(r, {}, run_edits_pb2.UpdateRunRequest(project="p", run_id="r", **request_fields))
    assert r == row()


def test_an_older_event_does_not_undo_an_edit_and_a_newer_one_does():
    r = row()
    edits = rules.plan(r, {}, run_edits_pb2.UpdateRunRequest(name="edited", tags_remove=["a"]))
    rules.apply(r, edits)
    pins = rules.pins_of(edits, 1_000)
    older = ingest_pb2.RunUpdate(
        project="p", run_id="r", name="sdk", tags={"a": "9", "d": "4"}, heartbeat_ms=999
    )
    before = RunRow(**{**r.__dict__, "tags": dict(r.tags)})
    merged, _ = merge_run_update(r, older, received_ms=2_000)
    rules.keep_edits(before, merged, pins, older.heartbeat_ms)
    assert merged.name == "edited" and merged.tags == {"b": "2", "d": "4"}  # unpinned tag d is taken
    newer = ingest_pb2.RunUpdate(
        project="p", run_id="r", name="sdk-later", tags={"a": "9"}, heartbeat_ms=1_001
    )
    before = RunRow(**{**merged.__dict__, "tags": dict(merged.tags)})
    merged, _ = merge_run_update(merged, newer, received_ms=3_000)
    rules.keep_edits(before, merged, pins, newer.heartbeat_ms)
    assert merged.name == "sdk-later" and merged.tags["a"] == "9"


def test_pins_read_back_from_stored_rows():
    edit = rules.FieldEdit("tags", {"a": "1"}, {"a": None})
    stored = rules.edit_row("p", "r", edit, "key:x", "write", 42, 1)
    assert rules.pins_from_rows([(stored[2], stored[3], stored[4], stored[7])]) == {"tags:a": 42}
