"""Writes accepted envelopes into ClickHouse, exactly once.

Exactly-once, in three layers:
1. envelopes whose (client_id, seq) is recorded as stored are skipped: `client_seqs` keeps, per
   client and run, the stored seqs as ranges (one row per pair, not per request; migration 0005;
   `ingested_requests`, one row per request, is still read for clients from before it);
2. every insert carries an `insert_deduplication_token` derived from the caller's token or the
   envelope's idempotency key plus a per-table suffix, so re-inserting the same block after a
   crash is dropped by ClickHouse (the metric-summary view is deduplicated with it);
3. the ingested keys are recorded LAST, after every other insert succeeded — in the background,
   a moment after the ack (writers/bookkeeping.py says why that loses nothing).
Without a caller token, metric points are inserted one envelope per block, so a replay after a
crash re-forms exactly the same blocks. With a token, the caller guarantees that a replay of that
token carries the same envelopes (the Kafka writer records its block boundaries for that).

Metric points, last write wins. A point's identity is (project, run, kind, key, rank, step); the
metrics table is a ReplacingMergeTree whose version is (receive time in ms, client seq, position in
the batch), packed into a UInt128 (rows.metrics_table, migration 0004). So of a point written
twice, history (reads with FINAL) shows the value sent last: by one client, the later request or
the later position in one batch (its send order); by two clients, the one ingest received later
(no shared send order exists; like an S3 PUT, the later arrival wins). A request resent after a
later one was acked counts as received at its resend. Summaries agree with history: `last` is the
value at the highest step (a write that re-logs stored steps has its series' summary recomputed
exactly, so a replaced value never stays `last`), `count` counts distinct points, min/max range over the finite
values history shows and are NULL when there is none (writers/replaced_points.py recomputes the
summary of a series that a write may have replaced points of).

What a run event does to its run's row is decided in run_state.py; this module reads, stages and
inserts the rows. Each request is parsed once: ingest's parse travels on the Envelope in-process,
and only envelopes read back from Kafka are parsed here.

About 465 lines, on purpose: the write path (claim, stage, insert, record) reads best in one file.
What it decides elsewhere has its own module: run rules (run_state.py), rows (rows.py), replaced
points (replaced_points.py), the run cache (run_cache.py), bookkeeping rows (bookkeeping.py).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import io
import itertools
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import attrgetter

from clickhouse_connect.driver.client import Client
from google.protobuf.message import DecodeError

from runstream import states
from runstream.v1 import ingest_pb2
from runstream_services import run_state
from runstream_services.artifacts.base import ArtifactStore
from runstream_services.bus.base import Envelope, WriteResult, idempotency_key
from runstream_services.config import ServerSettings
from runstream_services.errors import InvalidArgument
from runstream_services.metrics_http import Metrics
from runstream_services.run_edits import rules as edit_rules
from runstream_services.run_state import AuditNote, RunRow
from runstream_services.storage.clickhouse import READ_YOUR_WRITES
from runstream_services.writers import rows
from runstream_services.writers.arrow_insert import ArrowInserter
from runstream_services.writers.bookkeeping import BackgroundRows
from runstream_services.writers.client_seqs import SeqRanges, load_stored_seqs
from runstream_services.writers.console_rows import CONSOLE_COLUMNS, console_rows
from runstream_services.writers.key_index import KeyIndex
from runstream_services.writers.replaced_points import ReplacedPoints, series_of
from runstream_services.writers.run_cache import RunCache

log = logging.getLogger("runstream.writer")

MAX_CACHED_CLIENTS = 4096  # SDK processes whose stored seqs are kept in memory
MAX_CACHED_RUNS = 10_000  # run rows kept in memory; least recently used ones are read back
MAX_CACHED_RUN_BYTES = 256 * 1024 * 1024  # ... and their (approximate) size
ABSENT_TTL_S = 2.0  # how long "no such run" is believed without asking the table again
MAX_ABSENT_RUNS = 100_000
CLIENT_SEQS_COLUMNS = ("client_id", "run_id", "ranges", "updated_ms")
AUDIT_COLUMNS = ("time_ms", "project", "actor", "action", "target", "detail")
#: a block of at most this many requests inserts its row tables (runs, params, ...) on a second
#: thread beside its points: a small block is waited for by its clients (an SDK's finish: 20 runs
#: through the SDK at a time, 4 workers: 23-25 -> 18-20 ms per run; one at a time: 47 -> 35-39);
#: for large blocks two chDB inserts at once each took twice as long (see _store)
PARALLEL_ROW_INSERTS_MAX_REQUESTS = 64
#: the kinds whose rows stage() collects from memory (can_stage_now)
_MEMORY_KINDS = frozenset({"metrics", "run_start", "run_update", "run_finish"})


@dataclass(frozen=True)
class StoredBlock:
    """What one write stored, handed to the writer's listeners before write() returns (so before
    ingest acks it): an in-process reader kept current from it sees every acked write."""

    runs: list[RunRow]  # the run rows as stored (copies: listeners may keep them)
    params: list[tuple]  # rows.PARAM_COLUMNS rows (rows.param_rows)
    metrics: list[tuple[Envelope, ingest_pb2.MetricBatch]]
    artifacts: list[list]  # rows.ARTIFACT_COLUMNS rows
    # series whose summary the writer replaced by its exact summary in this write (a write that
    # re-logged stored steps): a cached summary of these must be reread, not added to
    recounted: frozenset = frozenset()  # of (project, run_id, kind, key)
    edited: bool = False  # the runs changed by a person's edit (edit_run), not by run events
    # nonzero: the same rows went to the staged listeners (subscribe_staged) under this number
    # before the inserts; a listener that applied them then needs them again only for what it
    # began to hold since
    staged: int = 0


@dataclass
class _Pending:
    """Rows collected from the envelopes of one write call, inserted together."""

    runs: dict[tuple[str, str], RunRow] = field(default_factory=dict)
    params: list[tuple] = field(default_factory=list)  # rows.param_rows
    artifacts: list[list] = field(default_factory=list)
    media: list[list] = field(default_factory=list)  # rows.MEDIA_COLUMNS rows
    console: list[list] = field(default_factory=list)  # console_rows.CONSOLE_COLUMNS rows
    audit: list[tuple] = field(default_factory=list)
    metrics: list[tuple[Envelope, ingest_pb2.MetricBatch]] = field(default_factory=list)
    recounted: set = field(default_factory=set)


def _parse(env: Envelope) -> tuple[ingest_pb2.IngestRequest | None, str]:
    """The envelope's request, or None and why it cannot be stored."""
    try:
        request = ingest_pb2.IngestRequest.FromString(env.payload)
    except DecodeError as exc:
        return None, f"payload is not a runstream.v1.IngestRequest: {exc}"
    body = request.WhichOneof("body")
    if body != env.kind:
        return None, f"payload holds a {body} body, not the {env.kind} body its envelope names"
    return request, ""


@dataclass
class StagedWrite:
    """One write's requests and rows, collected and shown (StoreWriter.stage), waiting for their
    inserts (StoreWriter.insert_staged). Its requests stay claimed until then."""

    decoded: list
    pending: _Pending
    run_rows: list  # the run rows' column values, taken when collected
    base: str  # the tokens of its row tables start with this
    token: str | None  # its metric inserts' token
    replay: bool
    touched: set
    block: StoredBlock | None
    staged: bool  # shown to the staged listeners
    claimed: list[Envelope] = field(default_factory=list)  # released once inserted (or abandoned)

    @property
    def requests(self) -> int:
        return len(self.decoded)

    @functools.cached_property
    def points(self) -> int:
        return sum(env.points for env, _ in self.decoded)


def _merge(writes: list[StagedWrite], token: str) -> StagedWrite:
    """Several staged writes as one, inserted under `token`: their rows in order (a run's rows of
    several writes all go in: the highest version wins)."""
    pending = _Pending()
    for w in writes:
        p = w.pending
        pending.runs.update(p.runs)
        pending.params += p.params
        pending.artifacts += p.artifacts
        pending.media += p.media
        pending.console += p.console
        pending.audit += p.audit
        pending.metrics += p.metrics
        pending.recounted |= p.recounted
    return StagedWrite(
        decoded=[d for w in writes for d in w.decoded],
        pending=pending,
        run_rows=[r for w in writes for r in w.run_rows],
        base=token,
        token=token,
        replay=any(w.replay for w in writes),
        touched=set().union(*(w.touched for w in writes)),
        block=None,
        staged=False,
    )


class StoreWriter:
    """The Sink of both buses (bus/base.py). Thread-safe: several threads may call write() at once
    (metric inserts run in parallel; run rows are read-modify-written under a lock)."""

    def __init__(
        self,
        client: Client,
        database: str,
        artifact_store: ArtifactStore,
        settings: ServerSettings,
        *,
        metrics: Metrics | None = None,
        insert_handles: int = 2,
        sole_writer: bool = False,
    ):
        self.client = client
        self.db = database
        self.artifact_store = artifact_store
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._lock = threading.Lock()  # idempotency state
        # client_id -> seqs known stored; least recently seen clients are dropped past
        # MAX_CACHED_CLIENTS and reloaded from the tables when they come back. Per client: all its
        # stored seqs, and per run the ones the row of (client, run) holds.
        self._done: OrderedDict[str, SeqRanges] = OrderedDict()
        self._done_by_run: dict[str, dict[str, SeqRanges]] = {}
        self._claimed: dict[str, threading.Event] = {}  # idempotency key -> set when its writer ends
        # idempotency keys of staged requests (acked from the bus's log, durable) until their insert
        # records them in _done: a replay that comes in between is a replay (is_stored_now)
        self._staged_keys: set[str] = set()
        self._meta_lock = threading.Lock()  # run rows and artifact versions (read-modify-write)
        self._runs = RunCache(MAX_CACHED_RUNS, MAX_CACHED_RUN_BYTES)
        # fields people edited per run, with when (run_edits/rules.py): a run event sent before
        # an edit does not undo it. Loaded with each run's row; edits are rare, so never evicted.
        self._pins: dict[tuple[str, str], dict[str, int]] = {}
        self._artifact_versions: dict[tuple[str, str], dict[str, int]] = {}
        self._replaced = ReplacedPoints(client, database)  # summaries count distinct points
        self._last_version = 0
        self._arrow = ArrowInserter(client, handles=insert_handles)
        self._row_inserts = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="runstream-row-insert"
        )
        self._listeners: list = []
        self._staged_listeners: list = []  # subscribe_staged's on_staged, and its on_failed below
        self._failed_listeners: list = []
        self._staged_ready: list = []  # subscribe_staged's ready_now: can_stage_now asks them
        self._staged_numbers = itertools.count(1)
        # sole_writer (server.sole_writer): no other writer adds runs or clients, so an in-memory index
        # answers "no such run / never seen this client" without a query (writers/key_index.py)
        self._run_index: KeyIndex | None = None
        self._client_index: KeyIndex | None = None
        # ... and which projects have a run: a project's first run row goes to subscribe_projects'
        # listeners (the read cache holds such a project from birth instead of loading it)
        self._projects: set[str] | None = None
        self._project_listeners: list = []
        if sole_writer:
            run_keys = client.query(f"SELECT DISTINCT project, run_id FROM {database}.runs").result_rows
            self._run_index = KeyIndex(tuple(r) for r in run_keys)
            self._projects = {r[0] for r in run_keys}
            self._client_index = KeyIndex(
                r[0]
                for table in ("client_seqs", "ingested_requests")
                for r in client.query(f"SELECT DISTINCT client_id FROM {database}.{table}").result_rows
            )
        self._column_types: dict[tuple[str, tuple[str, ...]], list] = {}
        # runs looked up and not found, with when: spares a query per new run (admission asks,
        # then the writer merges its run_start). Short-lived, since in Kafka mode another
        # writer may create the run; staging a row here drops the entry.
        self._absent: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._bookkeeping = BackgroundRows(
            lambda table, columns, data: self._insert_rows(table, columns, data, None),
            {"client_seqs": CLIENT_SEQS_COLUMNS, "audit_log": AUDIT_COLUMNS},
            keyed={"client_seqs": 2},  # one row per (client_id, run_id)
        )

    # ---- public -------------------------------------------------------------------------------

    def write(
        self,
        envelopes: list[Envelope],
        token: str | None = None,
        replay: bool = False,
        logged: bool = False,
    ) -> WriteResult:
        """Stores the envelopes (those not stored before) and returns once every insert is done.
        Raises on a storage failure; nothing of this call is then recorded as ingested.
        `replay`: a block re-formed after a crash (bus/base.py Sink.write): its inserts are
        dropped by their tokens when they landed before, but the summaries of every series it
        touches are recomputed from history afterwards, as for a replacing write: a crash inside
        an insert can leave a materialized view's target holding the block while a token
        re-insert feeds it again, and a summary must never count a point twice.
        `logged`: the caller logged these envelopes where a crash re-forms them (the embedded
        bus's block log; the Kafka writer's intent), so their rows may be shown before they are
        inserted: the staged listeners (subscribe_staged) get them once they are collected."""
        result = WriteResult()
        pending = list(envelopes)
        round_no = 0
        while pending:
            mine, waits, duplicates = self._claim(pending)
            result.duplicates += duplicates
            if mine:
                round_token = token if token is None or round_no == 0 else f"{token}#r{round_no}"
                try:
                    self._store(mine, round_token, result, replay, logged)
                finally:
                    self._release(mine)
            for event in {id(e): e for _, e in waits}.values():
                event.wait()
            pending = [env for env, _ in waits]
            round_no += 1
        self.metrics.inc("runstream_writer_envelopes_total", result.stored, outcome="stored")
        self.metrics.inc("runstream_writer_envelopes_total", result.duplicates, outcome="duplicate")
        return result

    def stage(self, envelopes: list[Envelope], token: str) -> tuple[WriteResult, StagedWrite | None]:
        """The first half of write() for a logged block (the embedded bus acks from its log): claims
        the requests, collects their rows (run state decided, refusals known) and shows them to the
        staged listeners, without inserting. Returns the decided result and the StagedWrite to pass
        to insert_staged (None when nothing is left to insert). When another call is writing one of
        these requests (a resend whose first copy is not inserted yet), the block is written whole
        here, as write() does, and None comes back."""
        mine, waits, duplicates = self._claim(envelopes)
        if waits:
            self._release(mine)
            return self.write(envelopes, token=token, logged=True), None
        result = WriteResult(duplicates=duplicates)
        staged = None
        try:
            if mine:
                staged = self._store(mine, token, result, logged=True, defer=True)
        finally:
            if staged is None:
                self._release(mine)
        if staged is not None:
            staged.claimed = mine
            with self._lock:
                self._staged_keys.update(env.idempotency_key for env, _ in staged.decoded)
        self.metrics.inc("runstream_writer_envelopes_total", result.duplicates, outcome="duplicate")
        return result, staged

    def can_stage_now(self, envelopes: list[Envelope]) -> bool:
        """True when stage() of `envelopes` needs nothing but memory: metric and run events only
        (artifact and media rows may read versions or write bytes), every client's stored seqs and
        every run's row cached (or known absent), no request claimed by another write, and neither
        lock, nor a staged listener's (subscribe_staged's ready_now), held elsewhere right now.
        Checked without waiting; the embedded bus then stages a small block in its event loop,
        which spares it two thread hand-offs (issue 11)."""
        if any(env.kind not in _MEMORY_KINDS for env in envelopes):
            return False
        if not all(ready() for ready in self._staged_ready):
            return False
        if not self._lock.acquire(blocking=False):
            return False
        try:
            done, claimed, index = self._done, self._claimed, self._client_index
            for env in envelopes:
                if env.idempotency_key in claimed:
                    return False
                if env.client_id not in done and (index is None or index.may_contain(env.client_id)):
                    return False
        finally:
            self._lock.release()
        if not self._meta_lock.acquire(blocking=False):
            return False
        try:
            runs = self._runs
            return all(
                (env.project, env.run_id) in runs or self._known_absent((env.project, env.run_id))
                for env in envelopes
            )
        finally:
            self._meta_lock.release()

    def insert_staged(self, writes: list[StagedWrite], token: str, replay: bool = False) -> None:
        """Inserts staged writes as one write under `token` (one: its own token, which must then
        be the one it was staged with), records them stored, hands their blocks to the listeners
        and releases their claims. Raises on a storage failure, with everything kept for a call
        again with the same writes and token and `replay=True` (the tokens drop what landed; the
        summaries of its series are recomputed, as a failed insert may have fed a view)."""
        write = writes[0] if len(writes) == 1 else _merge(writes, token)
        if replay:
            write = dataclasses.replace(write, replay=True)
        self._insert_staged(write, WriteResult(), answered=True, blocks=[w.block for w in writes])
        self.abandon_staged(writes)
        self.metrics.inc("runstream_writer_envelopes_total", write.requests, outcome="stored")

    def abandon_staged(self, writes: list[StagedWrite]) -> None:
        """Releases the claims of staged writes that will not be inserted by this process (the bus
        stops: their block log re-forms them at the next start)."""
        for w in writes:
            claimed, w.claimed = w.claimed, []
            self._release(claimed)

    def subscribe(self, listener) -> None:
        """Calls `listener(StoredBlock)` after every successful write, before write() returns (in
        the writing thread: keep it short). A listener that raises is logged and never fails the
        write."""
        self._listeners.append(listener)

    def subscribe_staged(self, on_staged, on_failed, ready_now=None) -> None:
        """Calls `on_staged(StoredBlock)` with the rows of a write made with `logged=True` as soon as
        they are collected, before they are inserted, and `on_failed(that block)` when those
        inserts then fail (what was shown is not stored: the SDKs resend it). The same rows reach
        the listeners of `subscribe` after the inserts, with `StoredBlock.staged` set to the
        number the staged block carried. In the writing thread, which may be the embedded bus's
        event loop: keep it short. `ready_now()`: False while on_staged would wait (a lock held
        elsewhere); can_stage_now then leaves the block to a worker thread."""
        self._staged_listeners.append(on_staged)
        self._failed_listeners.append(on_failed)
        if ready_now is not None:
            self._staged_ready.append(ready_now)

    def subscribe_projects(self, on_new_project) -> None:
        """Calls `on_new_project(project)` when a project gets its first run in this store, while
        that run's row is staged: before any listener sees a row of the project. Only for a sole
        writer (server.sole_writer): with other writers, a project new here may exist there.
        Every row of a project follows its first run (ingest refuses requests of unknown runs),
        so a listener that starts the project empty and applies every block after is exact."""
        self._project_listeners.append(on_new_project)

    def _notify(self, block: StoredBlock, listeners: list | None = None) -> None:
        """Calls `listeners` (default: those of `subscribe`) with the block."""
        for listener in self._listeners if listeners is None else listeners:
            try:
                listener(block)
            except Exception:
                log.exception("a store listener failed on a block of %d runs", len(block.runs))

    def flush(self) -> bool:
        """Writes the pending client_seqs and audit_log rows now; True when they are stored."""
        return self._bookkeeping.flush()

    def close(self) -> None:
        """Writes the pending bookkeeping rows and releases the writer's own connection handles
        (the shared client stays open)."""
        self._bookkeeping.close()
        self._row_inserts.shutdown(wait=True)
        self._arrow.close()

    def run_state(self, project: str, run_id: str) -> str | None:
        """'running', 'finished', ... for a known run; None when no such run is stored."""
        with self._meta_lock:
            row = self._get_run_locked(project, run_id)
        return row.state if row else None

    def mark_crashed(
        self, stale_after_ms: int, now_ms: int | None = None, owns: Callable[[str, str], bool] | None = None
    ) -> list[tuple[str, str]]:
        """Marks 'running' runs whose last heartbeat is older than `stale_after_ms` as crashed: their
        process died without finishing. A later heartbeat or resume makes them running again.
        `owns(project, run_id)`: only runs whose events this writer stores (several Kafka writers:
        each judges its own partitions, so none overwrites a heartbeat another just stored).
        Returns the (project, run_id) pairs marked."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        cutoff = now_ms - stale_after_ms
        stale = self.client.query(
            f"SELECT project, run_id FROM {self.db}.runs FINAL WHERE state = %(s)s AND heartbeat_ms < %(t)s",
            parameters={"s": states.RUNNING, "t": cutoff},
        ).result_rows
        pending, marked = _Pending(), []
        with self._meta_lock:
            for project, run_id in stale:
                if owns is not None and not owns(project, run_id):
                    continue
                row = self._get_run_locked(project, run_id)
                note = run_state.crash_if_silent(row, cutoff) if row is not None else None
                if row is None or note is None:
                    continue  # heard from since the query
                self._stage_run(row, pending)
                self._audit(pending, now_ms, "server", row, note)
                marked.append((project, run_id))
        if marked:
            run_rows = [r.values() for r in pending.runs.values()]
            self._insert_rows("runs", run_state.RUN_COLUMNS, run_rows, None)
            self._bookkeeping.add("audit_log", pending.audit)
            if self._listeners:
                self._notify(StoredBlock([r.copy() for r in pending.runs.values()], [], [], []))
        return marked

    def edit_run(
        self, project: str, run_id: str, change: Callable[[RunRow], dict[str, int]]
    ) -> RunRow | None:
        """Applies a person's edit (run_edits/service.py): `change(row)` edits the row in place and
        returns its pins (field -> edit time ms); the row is then stored with a new version and
        handed to the listeners. None when no such run is stored. The state is left as it is."""
        key = (project, run_id)
        pending = _Pending()
        with self._meta_lock:
            row = self._get_run_locked(project, run_id)
            if row is None:
                return None
            pins = change(row)
            if not pins:
                return row.copy()
            self._pins.setdefault(key, {}).update(pins)
            self._stage_run(row, pending)
            stored = row.copy()
        try:
            self._insert_rows("runs", run_state.RUN_COLUMNS, [stored.values()], None)
        except BaseException:
            with self._meta_lock:
                self._runs.pop(key, None)  # the cache is ahead of the table: reload on next use
            raise
        if self._listeners:
            self._notify(StoredBlock([stored.copy()], [], [], [], edited=True))
        return stored

    def forget(
        self, *, clients: Iterable[str] | None = None, runs: Iterable[tuple[str, str]] | None = None
    ) -> None:
        """Drops what this writer remembers of other writers' work, so the next use reloads it from
        the tables: the stored seqs of `clients`, the rows, artifact versions and highest steps of
        `runs` ((project, run_id) pairs); everything when both are None. The Kafka writer calls it
        when partitions are assigned: while a partition was away, another writer may have stored
        requests of its runs, and a resend of one of them must be seen as a replay."""
        everything = clients is None and runs is None
        with self._lock:
            if everything:
                self._done.clear()
                self._done_by_run.clear()
            for client_id in clients or ():
                self._done.pop(client_id, None)
                self._done_by_run.pop(client_id, None)
        with self._meta_lock:
            self._absent.clear()
            if everything:
                self._runs.clear()
                self._artifact_versions.clear()
                self._replaced.forget()
            for key in runs or ():
                self._runs.pop(key, None)
                self._replaced.forget([key])
                for name_key in [k for k in self._artifact_versions if k[0] == key[0]]:
                    self._artifact_versions.pop(name_key, None)  # versions are per project and name

    def is_stored(self, client_id: str, seq: int) -> bool:
        """True when the request (client_id, seq) was stored before (or staged: acked from the
        bus's log, inserted soon): a replay."""
        if idempotency_key(client_id, seq) in self._staged_keys:
            return True
        return seq in self._seen_seqs(client_id)

    def is_stored_now(self, client_id: str, seq: int) -> bool | None:
        """is_stored from memory alone, without waiting for a lock or asking the tables: None when
        that needs either (ingest then asks is_stored in a worker thread)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if idempotency_key(client_id, seq) in self._staged_keys:
                return True  # acked from the log; its insert has not recorded it yet
            seqs = self._done.get(client_id)
            if seqs is not None:
                return seq in seqs
            if self._client_index is not None and not self._client_index.may_contain(client_id):
                return False  # never seen: nothing stored
            return None
        finally:
            self._lock.release()

    def run_state_now(self, project: str, run_id: str) -> tuple[bool, str | None]:
        """run_state from memory alone: (True, state or None when no such run) when the cache
        answers it, (False, None) when that needs a lock held elsewhere or a query."""
        if not self._meta_lock.acquire(blocking=False):
            return False, None
        try:
            key = (project, run_id)
            row = self._runs.get(key)
            if row is not None:
                return True, row.state
            if self._known_absent(key):
                return True, None
            return False, None
        finally:
            self._meta_lock.release()

    # ---- idempotency --------------------------------------------------------------------------

    def _seen_seqs(self, client_id: str) -> SeqRanges:
        return self._seen_seqs_of([client_id])[client_id]

    def _seen_seqs_of(self, client_ids: Iterable[str]) -> dict[str, SeqRanges]:
        """The stored seqs of each client: from memory, else one query for all the others (their
        client_seqs rows, rows not yet written, and the old per-request table)."""
        out: dict[str, SeqRanges] = {}
        missing: list[str] = []
        with self._lock:
            for client_id in client_ids:
                seqs = self._done.get(client_id)
                if seqs is not None:
                    self._done.move_to_end(client_id)
                    out[client_id] = seqs
                elif self._client_index is not None and not self._client_index.may_contain(client_id):
                    out[client_id] = self._remember_locked(client_id, {})  # never seen: nothing stored
                else:
                    missing.append(client_id)
        if not missing:
            return out
        by_run = load_stored_seqs(self.client, self.db, missing)
        for client_id, run_id, ranges, _ in self._bookkeeping.pending("client_seqs"):
            if client_id in by_run:
                by_run[client_id].setdefault(run_id, SeqRanges()).merge(SeqRanges(ranges))
        with self._lock:
            for client_id, runs in by_run.items():
                known = self._done.get(client_id)  # loaded by another thread meanwhile
                out[client_id] = known if known is not None else self._remember_locked(client_id, runs)
        return out

    def _remember_locked(self, client_id: str, runs: dict[str, SeqRanges]) -> SeqRanges:
        union = SeqRanges()
        for seqs in runs.values():
            union.merge(seqs)
        self._done[client_id] = union
        self._done_by_run[client_id] = runs
        while len(self._done) > MAX_CACHED_CLIENTS:
            evicted, _ = self._done.popitem(last=False)
            self._done_by_run.pop(evicted, None)
        return union

    def _record_stored(self, decoded: list, attempt: int = 0) -> None:
        """Adds the stored requests' seqs to their clients' sets and queues each touched (client,
        run) row with its whole set (written by the bookkeeping thread, replacing the last). One
        pass, one lookup of each (client, run) per block: this runs for every stored request."""
        done, by_run = self._done, self._done_by_run
        # _claim loaded these clients a moment ago; one evicted since is loaded again (a row must
        # hold the whole set). Read outside the lock: a client evicted after this check is retried.
        evicted = {env.client_id for env, _ in decoded if env.client_id not in done}
        if evicted:
            self._seen_seqs_of(evicted)
        now_ms = int(time.time() * 1000)
        touched: dict[tuple[str, str], SeqRanges] = {}
        missed = []
        with self._lock:
            for item in decoded:
                env = item[0]
                client_id = env.client_id
                union = done.get(client_id)
                runs = by_run.get(client_id)
                if union is None or runs is None:  # evicted meanwhile: reload, then record
                    missed.append(item)
                    continue
                union.add(env.seq)
                key = (client_id, env.run_id)
                seqs = touched.get(key)
                if seqs is None:
                    seqs = runs.get(env.run_id)
                    if seqs is None:  # (setdefault would build a SeqRanges per request)
                        seqs = runs[env.run_id] = SeqRanges()
                    touched[key] = seqs
                seqs.add(env.seq)
            rows_ = [
                [client_id, run_id, seqs.ranges(), now_ms] for (client_id, run_id), seqs in touched.items()
            ]
        self._bookkeeping.add("client_seqs", rows_)
        if missed and attempt < 3:  # only when more than MAX_CACHED_CLIENTS clients write at once
            self._record_stored(missed, attempt + 1)
        elif missed:
            log.warning(
                "%d stored requests not recorded (client cache thrashing); a resend is dropped by the dedup tokens",
                len(missed),
            )

    def _claim(self, envelopes: list[Envelope]):
        seen = self._seen_seqs_of({e.client_id for e in envelopes})
        mine: list[Envelope] = []
        waits: list[tuple[Envelope, threading.Event]] = []
        duplicates = 0
        done = threading.Event()  # one for the whole claim: _release sets them all at once
        with self._lock:
            for env in envelopes:
                key = env.idempotency_key
                if env.seq in seen[env.client_id]:
                    duplicates += 1
                elif key in self._claimed:
                    if any(m.idempotency_key == key for m in mine):
                        duplicates += 1  # the same request twice in one call
                    else:
                        waits.append((env, self._claimed[key]))
                else:
                    self._claimed[key] = done
                    mine.append(env)
        return mine, waits, duplicates

    def _release(self, envelopes: list[Envelope]) -> None:
        events = {}
        with self._lock:
            for env in envelopes:
                self._staged_keys.discard(env.idempotency_key)
                event = self._claimed.pop(env.idempotency_key, None)
                if event is not None:
                    events[id(event)] = event
        for event in events.values():
            event.set()

    # ---- storing ------------------------------------------------------------------------------

    def _store(
        self,
        envelopes: list[Envelope],
        token: str | None,
        result: WriteResult,
        replay: bool = False,
        logged: bool = False,
        defer: bool = False,
    ) -> StagedWrite | None:
        """Collects and stores (or with `defer`, only collects and shows: see stage) the envelopes."""
        decoded: list[tuple[Envelope, ingest_pb2.IngestRequest]] = []
        for env in envelopes:
            request = env.request  # parsed by ingest in this process (embedded bus)
            if request is None:  # read from Kafka: parse it here, once
                request, why = _parse(env)
                if request is None:
                    result.refused[env.idempotency_key] = why
                    log.error("envelope %s refused: %s", env.idempotency_key, why)
                    continue
            decoded.append((env, request))
        if not decoded:
            return
        base = token or decoded[0][0].idempotency_key + (f"+{len(decoded)}" if len(decoded) > 1 else "")
        pending = _Pending()
        refused: dict[str, str] = {}
        touched = self._collect(decoded, pending, refused)
        if refused:  # deterministic refusals (e.g. too many tags): answered, never stored
            result.refused.update(refused)
            decoded = [(e, r) for e, r in decoded if e.idempotency_key not in refused]
            if not decoded:
                return
        staged = logged and bool(self._staged_listeners)  # shown before the inserts
        # The run rows as they are now, for the listeners (copies: they may keep them) and the
        # insert (column values): the cached rows may change before the insert, once the
        # embedded bus answered this write and collects the next one. Under the lock another
        # write's collect changes them with.
        with self._meta_lock:
            block = None
            if staged or self._listeners:
                block = StoredBlock(
                    runs=[r.copy() for r in pending.runs.values()],
                    params=pending.params,
                    metrics=pending.metrics,
                    artifacts=pending.artifacts,
                    staged=next(self._staged_numbers) if staged else 0,
                )
            # RunRow.values() in C: one attrgetter call per row instead of a getattr per column
            run_rows = list(map(attrgetter(*run_state.RUN_COLUMNS), pending.runs.values()))
        write = StagedWrite(decoded, pending, run_rows, base, token, replay, touched, block, staged)
        if staged:
            self._notify(block, self._staged_listeners)
        if not defer:
            self._insert_staged(write, result)
            return None
        result.stored += write.requests  # decided: insert_staged stores them (or a replay does)
        result.points += write.points
        return write

    def _insert_staged(
        self, write: StagedWrite, result: WriteResult, answered: bool = False, blocks: list | None = None
    ) -> None:
        """Inserts a collected write and records it as stored; `blocks`: what the listeners get
        (default: the write's own block). On a failure of a write not yet answered, the cached
        run rows it changed are dropped (reloaded from the tables) and the staged listeners hear
        of it; an answered one keeps both: it is inserted again until it lands."""
        pending, decoded, base, token = write.pending, write.decoded, write.base, write.token
        try:
            # a large block: one table after the other: on 2 cores the row inserts on a second
            # thread beside the points' insert made both slower (10,000 runs of
            # bench/many_writers.py: metric insert seconds 3.7 -> 6.4, blocks 16.2 -> 17.3 s), as
            # two chDB inserts at once do; a small one is waited for (PARALLEL_ROW_INSERTS_MAX_REQUESTS)
            row_tables = (
                pending.params or pending.runs or pending.artifacts or pending.media or pending.console
            )
            metrics = pending.metrics
            if row_tables and metrics and len(decoded) <= PARALLEL_ROW_INSERTS_MAX_REQUESTS:
                rows_done = self._row_inserts.submit(self._insert_row_tables, pending, write.run_rows, base)
                try:
                    points = self._insert_metrics(metrics, token, pending.recounted, write.replay)
                finally:
                    rows_done.result()  # both stored before the block is answered (or its error raised)
            else:
                self._insert_row_tables(pending, write.run_rows, base)
                points = self._insert_metrics(metrics, token, pending.recounted, write.replay)
            self._bookkeeping.add("audit_log", pending.audit)
            self._record_stored(decoded)
        except BaseException:
            if not answered:
                with self._meta_lock:  # the cache may now be ahead of the table: reload on next use
                    for key in write.touched:
                        self._runs.pop(key, None)
                    for project, name in {(a[0], a[2]) for a in pending.artifacts}:
                        self._artifact_versions.pop((project, name), None)
                if write.staged:
                    self._notify(write.block, self._failed_listeners)
            raise
        if self._client_index is not None:
            for client_id in {env.client_id for env, _ in decoded}:
                self._client_index.add(client_id)
        result.points += points
        result.stored += len(decoded)
        if self._listeners:
            recounted = frozenset(pending.recounted)
            for block in [write.block] if blocks is None else blocks:
                self._notify(dataclasses.replace(block, recounted=recounted))
        now_ms = time.time() * 1000
        self.metrics.set(
            "runstream_writer_lag_seconds", max(0.0, (now_ms - decoded[-1][0].received_ms) / 1000)
        )

    def _insert_row_tables(self, pending: _Pending, run_rows: list, base: str) -> None:
        """Inserts a block's rows of every table but the metric points, each with its token."""
        self._insert_rows("params", rows.PARAM_COLUMNS, pending.params, f"{base}:params")
        self._insert_rows("artifacts", rows.ARTIFACT_COLUMNS, pending.artifacts, f"{base}:artifacts")
        self._insert_rows("media", rows.MEDIA_COLUMNS, pending.media, f"{base}:media")
        self._insert_rows("console_lines", CONSOLE_COLUMNS, pending.console, f"{base}:console")
        self._insert_rows("runs", run_state.RUN_COLUMNS, run_rows, f"{base}:runs")

    def _insert_rows(self, table: str, columns, data: list[list], token: str | None) -> None:
        if not data:
            return
        started = time.perf_counter()
        name = f"{self.db}.{table}"
        types = self._column_types.get((name, tuple(columns)))
        if types is None:  # clickhouse-connect asks the server (DESCRIBE) unless told the types
            context = self.client.create_insert_context(name, list(columns))
            types = self._column_types[(name, tuple(columns))] = context.column_types
        self.client.insert(
            name,
            data,
            column_names=list(columns),
            column_types=types,
            settings={"insert_deduplication_token": token} if token else None,
        )
        self._count_insert(table, started)

    def _count_insert(self, table: str, started: float) -> None:
        """One insert into `table` that began at perf_counter() `started`, for /metrics."""
        self.metrics.inc("runstream_writer_insert_seconds_total", time.perf_counter() - started, table=table)
        self.metrics.inc("runstream_writer_inserts_total", 1, table=table)

    def _insert_metrics(
        self,
        items: list[tuple[Envelope, ingest_pb2.MetricBatch]],
        token: str | None,
        recounted: set | None = None,
        replay: bool = False,
    ) -> int:
        if not items:
            return 0
        if token is None:  # one block per envelope: a replay re-forms the same blocks
            groups = [([item], f"{item[0].idempotency_key}:metrics") for item in items]
        else:
            groups, group, size = [], [], 0
            for item in items:
                group.append(item)
                size += len(item[1].steps) // 8
                if size >= self.settings.writer_max_block_points:
                    groups.append((group, f"{token}:metrics:{len(groups)}"))
                    group, size = [], 0
            if group:
                groups.append((group, f"{token}:metrics:{len(groups)}" if groups else f"{token}:metrics"))
        suspects = self._replaced.suspects([batch for _, batch in items])
        if replay:
            suspects |= series_of([batch for _, batch in items])
        points = 0
        for group, group_token in groups:
            table = rows.metrics_table([(batch, env.received_ms, env.seq) for env, batch in group])
            started = time.perf_counter()
            with self._replaced.gate.shared():
                self._arrow.insert(f"{self.db}.metrics", table, group_token)
            self._count_insert("metrics", started)
            points += table.num_rows
        self._replaced.recount(suspects)
        if recounted is not None:
            recounted.update(suspects)
        self.metrics.inc("runstream_writer_points_total", points)
        return points

    # ---- turning requests into rows -----------------------------------------------------------

    def _collect(self, decoded, pending: _Pending, refused: dict[str, str]) -> set[tuple[str, str]]:
        """Stages the rows of every request; returns the runs whose cached row changed. A run event
        its run's rules refuse (run_state raises InvalidArgument before changing anything) lands
        in `refused` by idempotency key instead."""
        touched: set[tuple[str, str]] = set()
        with self._meta_lock:
            missing = {
                (e.project, e.run_id) for e, _ in decoded if e.kind not in ("artifact", "media", "console")
            }
            missing = [k for k in missing if k not in self._runs and not self._known_absent(k)]
            if missing:
                self._load_runs_locked(missing)
            refused_starts: dict[tuple[str, str, str], int] = {}  # (client, project, run) -> seq
            last_run, row = None, None
            for env, req in decoded:
                kind = env.kind
                start = refused_starts.get((env.client_id, env.project, env.run_id))
                if start is not None:  # published behind a run_start this write refused
                    refused[env.idempotency_key] = (
                        f"request {env.seq} was not stored: its run_start {start} was refused"
                    )
                    continue
                if kind == "metrics":
                    pending.metrics.append((env, req.metrics))
                    if (env.project, env.run_id) != last_run:  # a block's batches mostly share a run
                        last_run = (env.project, env.run_id)
                        row = self._get_run_locked(env.project, env.run_id)
                    if row is not None and run_state.heartbeat_from_metrics(row, env.received_ms):
                        self._stage_run(row, pending)
                        touched.add((row.project, row.run_id))
                    continue
                last_run = None  # a run event may replace its run's row
                if kind == "artifact":
                    pending.artifacts.append(self._artifact_row(env, req.artifact))
                elif kind == "media":
                    pending.media.append(self._media_row(env, req.media))
                elif kind == "console":
                    pending.console.extend(console_rows(env.client_id, req.console))
                else:
                    try:
                        touched.add(self._merge_run_event(env, req, pending))
                    except InvalidArgument as exc:
                        refused[env.idempotency_key] = exc.message
                        if kind == "run_start":
                            refused_starts[(env.client_id, env.project, env.run_id)] = env.seq
                        log.warning("request %s refused: %s", env.idempotency_key, exc.message)
        return touched

    def _merge_run_event(
        self, env: Envelope, req: ingest_pb2.IngestRequest, pending: _Pending
    ) -> tuple[str, str]:
        """Merges a run event into its run's row (the rules are in run_state.py) and stages the
        row, its config/summary params and its audit rows. Returns the run's key."""
        known = self._get_run_locked(env.project, env.run_id)
        pins = self._pins.get((env.project, env.run_id))
        before = known.copy() if pins and known is not None else None
        if env.kind == "run_start":
            row, notes = run_state.merge_run_start(known, req.run_start, env.received_ms)
            self._stage_params(row, "config", req.run_start.config, pending)
        elif env.kind == "run_update":
            row, notes = run_state.merge_run_update(known, req.run_update, env.received_ms)
            self._stage_params(row, "config", req.run_update.config, pending)
            self._stage_params(row, "summary", req.run_update.summary, pending)
        else:
            row, notes = run_state.merge_run_finish(known, req.run_finish, env.received_ms)
        if before is not None and pins:  # people's edits outlive events sent before them
            edit_rules.keep_edits(before, row, pins, edit_rules.event_time_ms(env.kind, req))
        key = (row.project, row.run_id)
        self._runs[key] = row
        for note in notes:
            self._audit(pending, env.received_ms, f"client:{env.client_id}", row, note)
        self._stage_run(row, pending)
        return key

    def _version(self) -> int:
        self._last_version = max(time.time_ns(), self._last_version + 1)
        return self._last_version

    def _get_run_locked(self, project: str, run_id: str) -> RunRow | None:
        key = (project, run_id)
        row = self._runs.get(key)
        if row is None and not self._known_absent(key):
            self._load_runs_locked([key])
            row = self._runs.get(key)
        return row

    def _known_absent(self, key: tuple[str, str]) -> bool:
        if self._run_index is not None and not self._run_index.may_contain(key):
            self._absent[key] = time.monotonic()  # so that staging it tells ReplacedPoints
            return True
        seen = self._absent.get(key)
        if seen is None:
            return False
        if time.monotonic() - seen > ABSENT_TTL_S:
            del self._absent[key]
            return False
        return True

    def _load_runs_locked(self, keys: list[tuple[str, str]]) -> None:
        """Reads the rows of runs not in the cache, one query for all of them; notes the absent."""
        cols = ", ".join(f"`{c}`" for c in run_state.RUN_COLUMNS)
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            found = self.client.query(
                f"SELECT {cols} FROM {self.db}.runs FINAL WHERE (project, run_id) IN %(keys)s",
                parameters={"keys": chunk},
            ).result_rows
            now = time.monotonic()
            loaded = []
            for values in found:
                row = RunRow.from_db(values)
                self._runs[(row.project, row.run_id)] = row
                loaded.append((row.project, row.run_id))
            edits = (  # only runs that exist can have edits: new runs cost no second query
                self.client.query(
                    f"SELECT project, run_id, field, old_value, new_value, time_ms FROM {self.db}.run_edits "
                    "WHERE (project, run_id) IN %(keys)s AND field IN ('name', 'notes', 'tags')",
                    parameters={"keys": loaded},
                ).result_rows
                if loaded
                else []
            )
            for project, run_id, *edit in edits:
                pins = self._pins.setdefault((project, run_id), {})
                for pin, edited_ms in edit_rules.pins_from_rows([tuple(edit)]).items():
                    pins[pin] = max(pins.get(pin, 0), edited_ms)
            for key in chunk:
                if key not in self._runs:
                    self._absent[key] = now
                    self._absent.move_to_end(key)
            while len(self._absent) > MAX_ABSENT_RUNS:
                self._absent.popitem(last=False)

    def _stage_run(self, row: RunRow, pending: _Pending) -> None:
        if self._absent.pop((row.project, row.run_id), None) is not None:
            self._replaced.new_run(row.project, row.run_id)  # no points stored: nothing to ask
        if self._run_index is not None:
            self._run_index.add((row.project, row.run_id))
            if row.project not in self._projects:
                self._projects.add(row.project)
                for listener in self._project_listeners:
                    try:
                        listener(row.project)
                    except Exception:
                        log.exception("a new-project listener failed on project %s", row.project)
        row.version = self._version()
        pending.runs[(row.project, row.run_id)] = row

    def _stage_params(self, row: RunRow, scope: str, values, pending: _Pending) -> None:
        if not values:
            return
        version = self._version()  # one per event: its keys are distinct, a later event wins
        pending.params.extend(rows.param_rows(row.project, row.run_id, scope, values, version))

    @staticmethod
    def _audit(pending: _Pending, time_ms: int, actor: str, row: RunRow, note: AuditNote) -> None:
        pending.audit.append((time_ms, row.project, actor, note.action, row.run_id, json.dumps(note.detail)))

    def _media_row(self, env: Envelope, msg: ingest_pb2.MediaEvent) -> list:
        """Puts inline media bytes into the artifact store (content-addressed: a replay writes
        nothing new) and returns the item's row."""
        if msg.inline_data:
            _, present = self.artifact_store.put(
                msg.project, msg.sha256.lower(), io.BytesIO(msg.inline_data), msg.size
            )
            if not present:
                self.metrics.inc("runstream_artifact_bytes_total", msg.size)
        return rows.media_row(msg, env.received_ms, env.seq)

    def _artifact_row(self, env: Envelope, msg: ingest_pb2.ArtifactEvent) -> list:
        sha = msg.sha256.lower()
        if msg.inline_data or msg.size == 0:
            uri, present = self.artifact_store.put(msg.project, sha, io.BytesIO(msg.inline_data), msg.size)
            if not present:
                self.metrics.inc("runstream_artifact_bytes_total", msg.size)
        else:
            uri = self.artifact_store.uri_for(msg.project, sha)
        tag = msg.version_tag or env.idempotency_key  # untagged: each event is its own version
        versions = self._artifact_versions.get((msg.project, msg.name))
        if versions is None:
            found = self.client.query(
                f"SELECT version_tag, max(version) FROM {self.db}.artifacts "
                "WHERE project = %(p)s AND name = %(n)s GROUP BY version_tag",
                parameters={"p": msg.project, "n": msg.name},
                settings=READ_YOUR_WRITES,
            ).result_rows
            versions = self._artifact_versions[(msg.project, msg.name)] = {t: int(v) for t, v in found}
        if tag not in versions:
            versions[tag] = max(versions.values(), default=0) + 1
        return [
            msg.project, msg.run_id, msg.name, msg.path, msg.type, versions[tag], tag, sha, msg.size, uri,
            env.received_ms,
        ]  # fmt: skip
