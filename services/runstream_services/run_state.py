"""Run state on the server: the one place that says what a run event does to a run.

Three jobs, one concept (the names themselves come from runstream.states, shared with the SDK):

- Transitions. A run_start makes a run running; a run_finish finishes it only when rank 0 sends it
  (other ranks of a distributed job report that they are done, the run goes on); rank 0's resume
  reopens an ended run (another rank's start joins it: a late rank must not reopen a run rank 0
  ended; any rank's resume revives a run the server declared crashed); a run_update or heartbeat revives a run declared crashed; a run silent for too
  long is crashed.
- Merging run events into the run's row (RunRow, one row of the `runs` table). The merge
  functions change the row in place and return what to audit; the store writer keeps reading,
  staging and inserting rows.
- RunRegistry: which runs exist, for ingest to refuse requests for unknown runs and restarts of
  ended ones. One lookup chain, built once by the server.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from google.protobuf import json_format

from runstream import states
from runstream.v1 import ingest_pb2, types_pb2
from runstream_services.errors import AlreadyExists, InvalidArgument, NotFound

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

#: a metric batch refreshes a running run's heartbeat at most this often (each refresh is a row)
HEARTBEAT_EVERY_MS = 30_000
#: tags label a run; more than this many on one run is refused (many values belong in config/summary)
MAX_TAGS_PER_RUN = 1_000


# ---- transitions -------------------------------------------------------------------------------


def finishes_run(finish: ingest_pb2.RunFinish) -> bool:
    """A run is finished when rank 0 finishes it; other ranks only report that they are done."""
    return finish.rank == 0


def reopens(start: ingest_pb2.RunStart, current: str) -> bool:
    """Whether this run_start reopens a run ended in state `current`: a resume by rank 0 (which
    owns the run's lifecycle), or any rank's resume of a run the server declared crashed. Other
    ranks resume by default to join a run; one that starts after rank 0 finished must not reopen it."""
    return start.resume and (start.rank == 0 or current == states.CRASHED)


def state_set_by(kind: str, request: ingest_pb2.IngestRequest, current: str | None = None) -> str | None:
    """The state a durable run event leaves its run in, as ingest and the Kafka run directory
    track it: running after a run_start, the finish state after rank 0's run_finish; None when
    the event changes no state. A run_start without resume for a run `current`ly ended changes
    nothing: admission let it through only as a replay of the run's own start (its ack was lost);
    nor does a resume that may not reopen it (see `reopens`)."""
    if kind == "run_start":
        if current in states.TERMINAL_STATES and not reopens(request.run_start, current):
            return None
        return states.RUNNING
    if kind == "run_finish" and finishes_run(request.run_finish):
        return states.state_name(request.run_finish.state)
    return None


# ---- run rows ----------------------------------------------------------------------------------


@dataclass
class RunRow:
    """The current state of one run, as kept in the `runs` table (latest version wins)."""

    project: str
    run_id: str
    name: str = ""
    group: str = ""
    job_type: str = ""
    state: str = states.RUNNING
    start_ms: int = 0
    end_ms: int = 0
    heartbeat_ms: int = 0
    user: str = ""
    host: str = ""
    git_commit: str = ""
    git_dirty: int = 0
    notes: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    context: str = "{}"
    datasets: str = "[]"
    version: int = 0

    def copy(self) -> RunRow:
        """A copy that shares nothing mutable (tags is the one mutable field): deepcopy's cost
        without its generality, for the copies the writer hands to listeners."""
        row = copy.copy(self)
        row.tags = dict(self.tags)
        return row

    def values(self) -> list:
        """The row in RUN_COLUMNS order, for an insert."""
        return [getattr(self, c) for c in RUN_COLUMNS]

    @classmethod
    def from_db(cls, row: tuple) -> RunRow:
        """A row read with `SELECT <RUN_COLUMNS> FROM runs`."""
        data = dict(zip(RUN_COLUMNS, row, strict=True))
        data["tags"] = dict(data["tags"] or {})
        return cls(**data)


#: the `runs` table's columns: RunRow's fields, in order
RUN_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(RunRow))


class AuditNote(NamedTuple):
    """Something a merge did that the audit log records (action e.g. "run.finished")."""

    action: str
    detail: dict[str, Any]


def context_json(context: types_pb2.RunContext) -> str:
    """The context as the runs table stores it; remembered by its bytes, as a process's runs repeat
    the same context (~110 us each with a hundred packages). The JSON is the same whatever the
    order of the bytes (sorted keys), so they need not be deterministic (2.5x as long)."""
    return _context_json_of(context.SerializeToString())


@lru_cache(maxsize=64)  # entries hold a context (a git diff may be ~256 KiB)
def _context_json_of(raw: bytes) -> str:
    context = types_pb2.RunContext.FromString(raw)
    return json.dumps(json_format.MessageToDict(context, preserving_proto_field_name=True), sort_keys=True)


def append_datasets(current: str, datasets) -> str:
    """The datasets JSON list with the new references added once each."""
    listed = json.loads(current or "[]")
    for ds in datasets:
        entry = {"name": ds.name, "version": ds.version, "uri": ds.uri}
        if entry not in listed:
            listed.append(entry)
    return json.dumps(listed)


def check_tag_room(row: RunRow | None, added, removed=()) -> None:
    """Raises InvalidArgument (before anything is merged) when the run would carry more than
    MAX_TAGS_PER_RUN tags after adding `added` and removing `removed`."""
    current = set(row.tags) if row is not None else set()
    total = len((current | set(added)) - (set(removed) - set(added)))
    if total > MAX_TAGS_PER_RUN:
        where = f"run {row.run_id!r}" if row is not None else "the run"
        raise InvalidArgument(
            f"{where} would carry {total} tags; the limit is {MAX_TAGS_PER_RUN} per run: remove tags "
            "(remove_tags) or log many values as config or summary instead"
        )


def merge_run_start(
    row: RunRow | None, msg: ingest_pb2.RunStart, received_ms: int
) -> tuple[RunRow, list[AuditNote]]:
    """Applies a run_start of any rank. The first start creates the row; rank 0 describes the run
    (its name, context, ... win), other ranks only fill what is still empty. A resume reopens an
    ended run. Returns the row (new when `row` is None) and what to audit. Raises InvalidArgument,
    with nothing changed, when the tags would pass MAX_TAGS_PER_RUN."""
    check_tag_room(row, msg.tags)
    audit: list[AuditNote] = []
    created = row is None
    if row is None:
        row = RunRow(project=msg.project, run_id=msg.run_id, start_ms=msg.start_ms or received_ms)
    ctx = msg.context
    lead = created or msg.rank == 0
    for attr, value in (
        ("name", msg.name), ("group", msg.group), ("job_type", msg.job_type), ("notes", msg.notes),
        ("user", ctx.user), ("host", ctx.host), ("git_commit", ctx.git_commit),
    ):  # fmt: skip
        if value and (lead or not getattr(row, attr)):
            setattr(row, attr, value)
    if ctx.ByteSize() and (lead or row.context in ("", "{}")):
        row.context = context_json(ctx)
        row.git_dirty = int(ctx.git_dirty)
    if msg.start_ms and (not row.start_ms or msg.start_ms < row.start_ms):
        row.start_ms = msg.start_ms
    row.tags.update(msg.tags)
    row.heartbeat_ms = max(row.heartbeat_ms, received_ms)
    if row.state in states.TERMINAL_STATES and reopens(msg, row.state):
        row.state, row.end_ms = states.RUNNING, 0
        audit.append(AuditNote("run.resumed", {"rank": msg.rank}))
    if created:
        audit.append(AuditNote("run.created", {"name": row.name, "rank": msg.rank}))
    return row, audit


def merge_run_update(
    row: RunRow | None, msg: ingest_pb2.RunUpdate, received_ms: int
) -> tuple[RunRow, list[AuditNote]]:
    """Applies a run_update (tags, notes, name, datasets, heartbeat; config and summary values
    are params rows, staged by the writer). An update for a crashed run revives it: the server
    declared it dead too early. A row missing here is created (events of one run sent through
    different processes may arrive out of order). Raises InvalidArgument, with nothing changed,
    when the tags would pass MAX_TAGS_PER_RUN."""
    check_tag_room(row, msg.tags, msg.remove_tags)
    audit: list[AuditNote] = []
    if row is None:
        row = RunRow(project=msg.project, run_id=msg.run_id, start_ms=received_ms)
    row.tags.update(msg.tags)
    for tag in msg.remove_tags:
        row.tags.pop(tag, None)
    if msg.has_notes:
        row.notes = msg.notes
    if msg.name:
        row.name = msg.name
    if msg.datasets:
        row.datasets = append_datasets(row.datasets, msg.datasets)
    row.heartbeat_ms = max(row.heartbeat_ms, msg.heartbeat_ms, received_ms)
    if row.state == states.CRASHED:
        row.state, row.end_ms = states.RUNNING, 0
        audit.append(AuditNote("run.revived", {}))
    return row, audit


def merge_run_finish(
    row: RunRow | None, msg: ingest_pb2.RunFinish, received_ms: int
) -> tuple[RunRow, list[AuditNote]]:
    """Applies a run_finish: rank 0's ends the run with its state; another rank's only counts as
    a heartbeat."""
    audit: list[AuditNote] = []
    if row is None:
        row = RunRow(project=msg.project, run_id=msg.run_id, start_ms=received_ms)
    row.heartbeat_ms = max(row.heartbeat_ms, received_ms)
    if finishes_run(msg):
        row.state = states.state_name(msg.state)
        row.end_ms = msg.end_ms or received_ms
        audit.append(AuditNote("run.finished", {"state": row.state}))
    return row, audit


def heartbeat_from_metrics(row: RunRow, received_ms: int) -> bool:
    """A metric batch is a sign of life; True when it moved the heartbeat (the row must be
    written). Refreshed at most every HEARTBEAT_EVERY_MS to keep run rows few."""
    if received_ms - row.heartbeat_ms > HEARTBEAT_EVERY_MS:
        row.heartbeat_ms = received_ms
        return True
    return False


def crash_if_silent(row: RunRow, cutoff_ms: int) -> AuditNote | None:
    """Marks a running run whose last heartbeat is before `cutoff_ms` as crashed (its process
    died without finishing); None when the run is not running or was heard from since."""
    if row.state != states.RUNNING or row.heartbeat_ms >= cutoff_ms:
        return None
    row.state, row.end_ms = states.CRASHED, row.heartbeat_ms
    return AuditNote("run.crashed", {"last_heartbeat_ms": row.heartbeat_ms})


# ---- the registry of known runs ----------------------------------------------------------------


class RunStateSource(Protocol):
    """Something that knows runs' states (a run directory, the store)."""

    def run_state(self, project: str, run_id: str) -> str | None:
        """'running', 'finished', ... of a known run; None when this source does not know it."""


class RunsTable:
    """RunStateSource over the `runs` table, for a process that reads the store but runs no writer
    (e.g. ingest + query against a ClickHouse server)."""

    def __init__(self, client: Client, database: str):
        self.client = client
        self.db = database

    def run_state(self, project: str, run_id: str) -> str | None:
        rows = self.client.query(
            f"SELECT state FROM {self.db}.runs FINAL WHERE project = %(p)s AND run_id = %(r)s",
            parameters={"p": project, "r": run_id},
        ).result_rows
        return rows[0][0] if rows else None


class RunRegistry:
    """Which runs exist and in which state, so ingest can refuse requests for unknown runs and
    restarts of ended ones. A lookup asks, first answer wins:

    1. this process: states it published (noted once the publish was durable) and states it
       found before (remembered);
    2. `directory`: states every ingest process published (Kafka's run-states topic), answered
       from memory: fresh, and shared by ingest replicas and restarted processes;
    3. `store`: the runs table (the store writer's run rows, or RunsTable), which may query:
       runs from before the directory, and embedded mode's only source.

    `replays(client_id, seq)` tells a resent request that was stored already (its ack was lost).
    """

    def __init__(
        self,
        *,
        directory: RunStateSource | None = None,
        store: RunStateSource | None = None,
        replays: Callable[[str, int], bool] | None = None,
        replays_now: Callable[[str, int], bool | None] | None = None,
    ):
        self.directory = directory
        self.store = store
        self._replays = replays
        # answers from memory, in the event loop (None: unknown without I/O); spares ingest a
        # worker-thread hop per run event (StoreWriter.is_stored_now, run_state_now)
        self._replays_now = replays_now
        self._state_now = getattr(store, "run_state_now", None)
        self._states: dict[tuple[str, str], str] = {}
        # run events admitted as replays of stored requests: the writer skips them, so their
        # publish must not change what this registry believes either. Counted: one stream may
        # carry the same replay twice, both in flight at once (the embedded bus pipelines them).
        # Keyed by kind too: the same seq may be replayed with several bodies, and a run_update's
        # publish must not use up the mark of a run_start replayed beside it.
        self._admitted_replays: Counter[tuple[str, int, str]] = Counter()

    async def state(self, project: str, run_id: str) -> str | None:
        key = (project, run_id)
        state = self._states.get(key)
        if state is None and self.directory is not None:
            state = self.directory.run_state(project, run_id)
        if state is None and self.store is not None:
            known, state = self._state_now(project, run_id) if self._state_now else (False, None)
            if not known:
                state = await asyncio.to_thread(self.store.run_state, project, run_id)
        if state is not None:
            self._states[key] = state
        return state

    def note(self, project: str, run_id: str, state: str) -> None:
        self._states[(project, run_id)] = state

    def published(self, kind: str, request: ingest_pb2.IngestRequest, project: str, run_id: str) -> None:
        """Notes the state a run event set, once it is durable (never for a replay: the writer
        skips a request whose (client_id, seq) is stored, whatever its body now says)."""
        replay = (request.client_id, request.seq, kind)
        if self._admitted_replays[replay] > 0:
            self._admitted_replays[replay] -= 1
            if not self._admitted_replays[replay]:
                del self._admitted_replays[replay]
            return
        state = state_set_by(kind, request, self._states.get((project, run_id)))
        if state is not None:
            self.note(project, run_id, state)

    def expect(self, kind: str, request: ingest_pb2.IngestRequest, project: str, run_id: str) -> None:
        """Notes the state a run event will set, as soon as it is admitted and published, before it
        is durable: the requests behind it on its stream are admitted against it (a bus that keeps
        a client's order, the embedded one, writes them after it). `published` confirms it;
        `withdraw` undoes it when the event was not stored."""
        if (request.client_id, request.seq, kind) in self._admitted_replays:
            return  # a replay changes no state
        state = state_set_by(kind, request, self._states.get((project, run_id)))
        if state is not None:
            self.note(project, run_id, state)

    def withdraw(self, project: str, run_id: str) -> None:
        """Forgets this process's belief about a run (a run event expected to set it was not
        stored): the next lookup asks the directory or the store."""
        self._states.pop((project, run_id), None)

    async def is_replay(self, client_id: str, seq: int) -> bool:
        """True when this process can tell the request was stored already (its ack was lost)."""
        if self._replays is None:
            return False
        if self._replays_now is not None and (now := self._replays_now(client_id, seq)) is not None:
            return now
        return await asyncio.to_thread(self._replays, client_id, seq)

    async def admit(self, kind: str, project: str, run_id: str, request: ingest_pb2.IngestRequest) -> None:
        """Raises unless the run's state admits this request: a run_start may not restart an ended
        run (AlreadyExists) unless it resumes it; every other request needs a known run
        (NotFound). A run event this process knows was stored (a replay) is admitted as it is
        and noted, so that publishing it changes no state (the writer skips it too)."""
        if kind in ("run_start", "run_finish") and await self.is_replay(request.client_id, request.seq):
            if len(self._admitted_replays) < 100_000:  # entries leave at publish; this bounds failed ones
                self._admitted_replays[(request.client_id, request.seq, kind)] += 1
            return  # stored before (its ack was lost): answered again, never applied
        state = await self.state(project, run_id)
        where = f"run {run_id!r} of project {project!r}"
        if kind == "run_start":
            if state in states.TERMINAL_STATES and not request.run_start.resume:
                raise AlreadyExists(
                    f"{where} already ended ({state}): set resume=True to continue it, or start a new run id"
                )
        elif state is None:
            raise NotFound(f"{where} is unknown: send its run_start first (runstream.init) on this server")


__all__ = [
    "HEARTBEAT_EVERY_MS",
    "RUN_COLUMNS",
    "AuditNote",
    "RunRegistry",
    "RunRow",
    "RunStateSource",
    "RunsTable",
    "append_datasets",
    "context_json",
    "crash_if_silent",
    "finishes_run",
    "heartbeat_from_metrics",
    "merge_run_finish",
    "merge_run_start",
    "merge_run_update",
    "reopens",
    "state_set_by",
]
