"""What a person's edit of a run changes, and how an edit outlives run events sent before it.

Editable: the run's name, notes and tags (columns of the `runs` row) and its hypothesis and
outcome (kept in `run_edits` only; the newest edit is current). An edit never touches the run's
state, times or heartbeat.

Edits against replays (last write wins, by when the change was made): the store writer stamps a
run row with a new version at every run event it merges, so a run event sent *before* an edit but
stored after it (a resend after a lost ack, `runstream sync` of a spooled run, a Kafka replay)
would otherwise write the pre-edit name, notes or tags over the edit. So the writer keeps, per run,
the fields people edited and when ("pins": "name", "notes", "tags:<key>" -> edit time in ms), and
after merging a run event restores every pinned field the event changed unless the event itself
was made after the edit (its client-side time: RunStart.start_ms, RunUpdate.heartbeat_ms; an event
without one counts as older than any edit)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from runstream.v1 import ingest_pb2
from runstream_services.errors import InvalidArgument
from runstream_services.ingest.validation import MAX_TEXT_CHARS, check_key
from runstream_services.run_state import RunRow, check_tag_room

#: fields of the run row an edit may change
ROW_FIELDS = ("name", "notes", "tags")
#: fields kept in run_edits only
EXTRA_FIELDS = ("hypothesis", "outcome")
EDIT_COLUMNS = (
    "project",
    "run_id",
    "field",
    "old_value",
    "new_value",
    "actor",
    "role",
    "time_ms",
    "revision",
)
MAX_NAME_CHARS = 256


@dataclass(frozen=True)
class FieldEdit:
    """One changed field: for tags, `old`/`new` hold only the changed keys (None: absent)."""

    field: str
    old: object
    new: object

    def pins(self) -> list[str]:
        if self.field == "tags":
            return [f"tags:{k}" for k in {**self.old, **self.new}]  # type: ignore[dict-item]
        return [self.field] if self.field in ROW_FIELDS else []


def _text(what: str, value: str) -> str:
    if len(value) > MAX_TEXT_CHARS:
        raise InvalidArgument(f"{what} is {len(value):,} characters; the limit is {MAX_TEXT_CHARS:,}")
    return value


def plan(row: RunRow, extra: Mapping[str, str], request) -> list[FieldEdit]:
    """The fields an UpdateRunRequest changes on `row` (hypothesis/outcome from `extra`); nothing
    is changed here. Raises InvalidArgument, before anything is written, on a bad value."""
    edits: list[FieldEdit] = []
    if request.HasField("name"):
        name = request.name.strip()
        if not name or len(name) > MAX_NAME_CHARS:
            raise InvalidArgument(f"a run name must be 1 to {MAX_NAME_CHARS} characters (not only spaces)")
        if name != row.name:
            edits.append(FieldEdit("name", row.name, name))
    if request.HasField("notes") and _text("notes", request.notes) != row.notes:
        edits.append(FieldEdit("notes", row.notes, request.notes))
    added = dict(request.tags_add)
    for key, value in added.items():
        check_key("tag", key)
        _text(f"tag {key!r}", value)
    removed = [k for k in request.tags_remove if k not in added]
    check_tag_room(row, added, removed)
    old: dict[str, str | None] = {}
    new: dict[str, str | None] = {}
    for key in removed:
        if key in row.tags:
            old[key], new[key] = row.tags[key], None
    for key, value in added.items():
        if row.tags.get(key) != value:
            old[key], new[key] = row.tags.get(key), value
    if new:
        edits.append(FieldEdit("tags", old, new))
    for field in EXTRA_FIELDS:
        if request.HasField(field):
            value = _text(field, getattr(request, field))
            if value != extra.get(field, ""):
                edits.append(FieldEdit(field, extra.get(field, ""), value))
    return edits


def apply(row: RunRow, edits: Iterable[FieldEdit]) -> None:
    """Writes the row fields of `edits` into `row` (hypothesis/outcome are not row fields)."""
    for edit in edits:
        if edit.field in ("name", "notes"):
            setattr(row, edit.field, edit.new)
        elif edit.field == "tags":
            for key, value in edit.new.items():  # type: ignore[attr-defined]
                if value is None:
                    row.tags.pop(key, None)
                else:
                    row.tags[key] = value


def pins_of(edits: Iterable[FieldEdit], time_ms: int) -> dict[str, int]:
    return {pin: time_ms for edit in edits for pin in edit.pins()}


def pins_from_rows(rows: Iterable[tuple[str, str, str, int]]) -> dict[str, int]:
    """Pins from stored run_edits rows (field, old_value, new_value, time_ms)."""
    pins: dict[str, int] = {}
    for field, old, new, time_ms in rows:
        edit = FieldEdit(field, json.loads(old), json.loads(new))
        for pin in edit.pins():
            pins[pin] = max(pins.get(pin, 0), int(time_ms))
    return pins


def event_time_ms(kind: str, request: ingest_pb2.IngestRequest) -> int:
    """When the SDK made a run event (client clock), 0 when the event does not say."""
    if kind == "run_start":
        return request.run_start.start_ms
    if kind == "run_update":
        return request.run_update.heartbeat_ms
    return 0


def keep_edits(before: RunRow, row: RunRow, pins: Mapping[str, int], event_ms: int) -> None:
    """Restores in `row` every pinned field that a run event made before the edit changed."""
    for pin, edited_ms in pins.items():
        if event_ms > edited_ms:
            continue
        if pin in ("name", "notes"):
            setattr(row, pin, getattr(before, pin))
        elif pin.startswith("tags:"):
            key = pin[5:]
            if key in before.tags:
                row.tags[key] = before.tags[key]
            else:
                row.tags.pop(key, None)


def edit_row(
    project: str, run_id: str, edit: FieldEdit, actor: str, role: str, time_ms: int, revision: int
) -> list:
    return [
        project,
        run_id,
        edit.field,
        json.dumps(edit.old),
        json.dumps(edit.new),
        actor,
        role,
        time_ms,
        revision,
    ]
