"""An in-process copy of the small tables of the projects being read, kept current by the store
writer, so small reads (a run, its keys, a short history, the runs table) answer without a query.

Only where this process's writer is the only writer of the database (server.sole_writer: the
embedded bus, and the Kafka bus on chDB): the writer calls `on_stored` with every block it stored
before write() returns; on the embedded bus that is before ingest acks it, so a read after the ack
sees it (read-your-writes). Earlier still, `on_staged` gets a block's rows once they are
collected, before their inserts: the bus logged the block first (the embedded bus's block log,
the Kafka writer's intent), so a crash re-forms it, and a held project shows a point one insert
sooner (issue 11: at 3,000 small requests/s a point waited for the block before its own and then
its own insert). When those inserts fail, `on_failed` drops the projects the block touched.
Everywhere else (a ClickHouse server, which other writers share) there is no cache and every read
is SQL.

What is held, per project (loaded whole from SQL on its first read, or held from birth when its
first run is written here, then kept current; a project of more than BACKGROUND_LOAD_RUNS runs is
loaded in a thread while SQL answers its reads):
- run rows (the `runs` row with the highest version), params (per run, scope and key, the row
  with the highest version), artifacts (per run, name, version tag and path, the last row);
- every metric point of each series (run, kind, key) of at most MAX_SERIES_POINTS points, with
  its version, deduplicated by point identity (rank, step) keeping the highest version as
  `metrics FINAL` does. Summaries (last, finite min/max, count, last step) are computed from these
  points, so they are exact by construction: a replayed block changes nothing and a re-logged
  step replaces its point. Series over the limit are listed by key only ("big"): their points and
  summaries are read from SQL.

Why loading never loses or doubles a write: every merge is by version (or by identity), so
applying the same row twice, or a block and a snapshot that already holds it, in either order,
gives the same state. A project is registered before its snapshot is read, so every block stored
after the snapshot reaches the registered state through `on_stored`. A project that is dropped
(eviction, or a write the writer recounted) is simply read again on its next use; a load whose
project was dropped meanwhile is discarded. One case is not covered by versions: a block that
ClickHouse dropped as a repeat (a resend after a restart) still reaches `on_stored` with a newer
version than the stored one; the writer recounts such a series (its steps overlap stored ones),
and a recount drops the project here, so the copy is read again from the table.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runstream.v1 import types_pb2
from runstream_services.run_state import RUN_COLUMNS, RunRow
from runstream_services.writers.rows import POSITION_BITS

log = logging.getLogger("runstream.query.cache")

MAX_SERIES_POINTS = 4096  # points of one series held; a longer series is read from SQL
MAX_POINTS = 2_000_000  # points held over all projects (~42 bytes each); least recently read projects go
MAX_PROJECT_RUNS = 100_000  # a project with more runs is never held
MAX_PROJECTS = 1_000  # projects held at once (an unknown name read is held too, empty)
MAX_INDEXED_RUNS = 2_000_000  # the run id -> projects index is kept up to this many runs
RETRY_UNCACHEABLE_S = 300.0  # a project too big to hold is tried again after this long
#: a project with more runs than this is loaded in a thread, and the reads that come meanwhile are
#: answered from SQL: its load takes seconds (10,000 runs of 100 points: ~2 s), a read should not
BACKGROUND_LOAD_RUNS = 2_000
#: once the backlogs (Project.backlog) hold this many points in all (of any project: the blocks stay
#: alive while they wait), their projects are let go, unread, and loaded from SQL at their first
#: read like any project not held: that bounds the memory they keep, at no cost to the writes.
#: Applying them instead held the lock (and the event loop, for blocks staged there) ~0.7 s for a
#: 1,000-rank run's first 500,000 points, and every ack waited (issue 11: ranks at 4,000 requests/s
#: saw ack p99 0.5-0.8 s)
MAX_BACKLOG_POINTS = 500_000
_SEQ_MASK = (1 << (64 - POSITION_BITS)) - 1
_INT64 = struct.Struct("<q")


class Summary:
    """A series' summary as the query service answers it (min/max None when no finite value)."""

    __slots__ = ("last", "min", "max", "count", "last_step")

    def __init__(self, last: float, lo: float | None, hi: float | None, count: int, last_step: int):
        self.last, self.min, self.max, self.count, self.last_step = last, lo, hi, count, last_step


class Series:
    """Every point of one (run, kind, key), all ranks, sorted by (rank, step), one per identity."""

    __slots__ = ("rank", "step", "vhi", "vlo", "value", "time", "_summary")

    def __init__(self):
        self.rank = np.empty(0, np.uint16)
        self.step = np.empty(0, np.int64)
        self.vhi = np.empty(0, np.int64)  # received_ms: the high 64 bits of the point's version
        self.vlo = np.empty(0, np.uint64)  # send order: the low 64 bits
        self.value = np.empty(0, np.float64)
        self.time = np.empty(0, np.int64)
        self._summary: Summary | None = None

    @classmethod
    def of(cls, rank, step, vhi, vlo, value, time_ms) -> Series:
        """A series holding these arrays as they are (sorted by (rank, step), one per identity)."""
        s = cls.__new__(cls)
        s.rank, s.step, s.vhi, s.vlo, s.value, s.time = rank, step, vhi, vlo, value, time_ms
        s._summary = None
        return s

    def __len__(self) -> int:
        return len(self.step)

    def merge(self, rank, step, vhi, vlo, value, time_ms) -> None:
        """Adds points (numpy arrays of equal length); of two with the same (rank, step), the one
        with the higher version stays (last write wins, as in `metrics FINAL`)."""
        self._summary = None
        m = len(step)
        if m == 1 or _rising(rank, step):
            n = len(self.step)
            r0 = int(rank[0])
            last_rank = int(self.rank[-1]) if n else -1
            if not n or r0 > last_rank or (r0 == last_rank and int(step[0]) > int(self.step[-1])):
                self._append(rank, step, vhi, vlo, value, time_ms)  # the common case: after the last point
                return
            if r0 == int(rank[-1]):  # one rank among others (many ranks interleave): no sort
                self._place(r0, step, vhi, vlo, value, time_ms)
                return
        self._append(rank, step, vhi, vlo, value, time_ms)
        self._dedupe()

    def _place(self, r: int, step, vhi, vlo, value, time_ms) -> None:
        """Puts rising steps of rank `r` in place by binary search: O(n) copies instead of the
        O(n log n) sort of _dedupe, which a run of many ranks paid on every batch of every key.
        A step already held keeps the point with the higher version. Arrays are replaced, never
        written in place: a reader may still hold the old ones."""
        lo = int(np.searchsorted(self.rank, r, "left"))
        hi = int(np.searchsorted(self.rank, r, "right"))
        pos = np.searchsorted(self.step[lo:hi], step) + lo
        held = pos < hi
        held[held] = self.step[pos[held]] == step[held]
        if held.any():
            at, new = pos[held], np.flatnonzero(held)
            wins = (vhi[new] > self.vhi[at]) | ((vhi[new] == self.vhi[at]) & (vlo[new] >= self.vlo[at]))
            at, new = at[wins], new[wins]
            if len(at):
                for name, src in (("vhi", vhi), ("vlo", vlo), ("value", value), ("time", time_ms)):
                    column = getattr(self, name).copy()
                    column[at] = src[new]
                    setattr(self, name, column)
            fresh = ~held
            pos, step, vhi, vlo, value, time_ms = (a[fresh] for a in (pos, step, vhi, vlo, value, time_ms))
        if len(pos):
            ins = np.insert
            self.rank = ins(self.rank, pos, np.uint16(r))
            self.step, self.vhi, self.vlo = (
                ins(self.step, pos, step),
                ins(self.vhi, pos, vhi),
                ins(self.vlo, pos, vlo),
            )
            self.value, self.time = ins(self.value, pos, value), ins(self.time, pos, time_ms)

    def _append(self, rank, step, vhi, vlo, value, time_ms) -> None:
        """Arrays of the stored dtypes (uint16, int64, int64, uint64, float64, int64)."""
        if not len(self.step):  # copies: a slice would keep the whole batch's buffer alive
            self.rank, self.step, self.vhi = rank.copy(), step.copy(), vhi.copy()
            self.vlo, self.value, self.time = vlo.copy(), value.copy(), time_ms.copy()
            return
        cat = np.concatenate
        self.rank = cat((self.rank, rank))
        self.step = cat((self.step, step))
        self.vhi = cat((self.vhi, vhi))
        self.vlo = cat((self.vlo, vlo))
        self.value = cat((self.value, value))
        self.time = cat((self.time, time_ms))

    def _dedupe(self) -> None:
        order = np.lexsort((self.vlo, self.vhi, self.step, self.rank))
        rank, step = self.rank[order], self.step[order]
        last = np.ones(len(order), bool)  # the highest version of each (rank, step) is the last
        last[:-1] = (rank[1:] != rank[:-1]) | (step[1:] != step[:-1])
        keep = order[last]
        self.rank, self.step, self.vhi = self.rank[keep], self.step[keep], self.vhi[keep]
        self.vlo, self.value, self.time = self.vlo[keep], self.value[keep], self.time[keep]

    def summary(self) -> Summary:
        """last = the value at the highest step, finite min/max (None when none), count of points."""
        if self._summary is None:
            top = int(np.argmax(self.step))
            finite = self.value[np.isfinite(self.value)]
            self._summary = Summary(
                float(self.value[top]),
                float(finite.min()) if len(finite) else None,
                float(finite.max()) if len(finite) else None,
                len(self.step),
                int(self.step[top]),
            )
        return self._summary


def _rising(rank: np.ndarray, step: np.ndarray) -> bool:
    """Whether (rank, step) pairs strictly rise (so sorted and without repeats)."""
    if len(step) < 2:
        return True
    return bool(np.all((rank[1:] > rank[:-1]) | ((rank[1:] == rank[:-1]) & (step[1:] > step[:-1]))))


@dataclass
class RunEntry:
    row: RunRow | None = None
    params: dict[tuple[str, str], tuple[str, float, str, int]] = field(default_factory=dict)
    series: dict[tuple[str, str], Series] = field(default_factory=dict)  # (kind, key)
    big: set[tuple[str, str]] = field(default_factory=set)  # series over MAX_SERIES_POINTS
    artifacts: dict[tuple[str, str, str], list] = field(default_factory=dict)
    # the run's SearchRuns wire form per include_config, built once (cached_reads.run_wire);
    # cleared whenever the run, its params or its series change
    wire: dict[bool, bytes] = field(default_factory=dict)

    def series_keys(self, kind: str) -> set[str]:
        return {k for (sk, k) in self.series if sk == kind} | {k for (sk, k) in self.big if sk == kind}


@dataclass
class Project:
    name: str
    runs: dict[str, RunEntry] = field(default_factory=dict)
    ready: bool = False
    points: int = 0
    # runs holding a big series, per user metric key (filters/sorts on these keys go to SQL)
    big_keys: dict[str, set[str]] = field(default_factory=dict)
    version: int = 0  # bumped by every change: run_table.RunTable columns are kept while it stays
    table: Any = None  # run_table.RunTable of this version, built by the first search
    registered: int = 0  # ReadCache's count of registrations when this one was made
    # held from birth and never read yet: its blocks wait here, applied at once on the first read
    # (or let go with the project when the backlogs reach MAX_BACKLOG_POINTS), so a project nobody
    # reads costs its writes nothing
    backlog: list | None = None
    backlog_points: int = 0  # points of the blocks in the backlog, of every project they hold

    def run(self, run_id: str) -> RunEntry:
        entry = self.runs.get(run_id)
        if entry is None:
            entry = self.runs[run_id] = RunEntry()
        return entry


class ReadCache:
    """The held projects; thread-safe (one lock). Readers call `project(name)` (None: read SQL)
    and read the returned Project under `lock`; the writer calls `on_stored`."""

    def __init__(self, readers: Any, database: str, background_load_runs: int = BACKGROUND_LOAD_RUNS):
        self.readers = readers  # storage.clickhouse.ClientPool (or anything with .client())
        self.db = database
        self.background_load_runs = background_load_runs
        self.lock = threading.RLock()
        self._projects: OrderedDict[str, Project] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._background: dict[str, threading.Thread] = {}  # projects being loaded in a thread
        self._uncacheable: dict[str, float] = {}  # project -> monotonic time it was found too big
        self._points = 0
        self.loads = 0  # projects read from SQL (tests and benchmarks look)
        self._registrations = 0
        # staged blocks not yet stored: their number -> the count of registrations when applied
        self._staged: dict[int, int] = {}
        self._backlogged: set[str] = set()  # held projects with a backlog (Project.backlog)
        self._backlog_points = 0  # their backlog_points, summed
        # run id -> projects holding it, over every project (for reads that name no project):
        # None until first used; union-only (runs are never deleted), so loading it while the
        # writer adds runs loses nothing
        self._run_index: dict[str, set[str]] | None = None
        self._run_index_ready = False
        self._run_index_lock = threading.Lock()

    # ---- reads ----------------------------------------------------------------------------

    def ready(self, project: str) -> Project | None:
        """The held project when it is loaded (no I/O); None otherwise."""
        with self.lock:
            p = self._projects.get(project)
            if p is not None and p.ready:
                if p.backlog is not None:
                    self._catch_up(p)
                    if self._projects.get(project) is not p:
                        return None  # too big to hold once applied (_evict): read SQL
                self._projects.move_to_end(project)
                return p
        return None

    def project(self, project: str) -> Project | None:
        """The held project, loaded from SQL first when needed (blocking: call from a thread);
        None when it is too big to hold, or being loaded in a thread (read SQL)."""
        p = self.ready(project)
        if p is not None:
            return p
        with self.lock:
            since = self._uncacheable.get(project)
            if since is not None and time.monotonic() - since < RETRY_UNCACHEABLE_S:
                return None
            if project in self._background:
                return None
            gate = self._loading.setdefault(project, threading.Lock())
        with gate:  # one load per project at a time; the others wait for it
            try:
                p = self.ready(project)
                if p is not None:
                    return p
                return self._load(project)
            finally:
                with self.lock:
                    if self._loading.get(project) is gate:
                        del self._loading[project]

    def indexed_projects(self, run_id: str) -> list[str] | None:
        """projects_of_run without I/O: None while the index is not loaded."""
        with self.lock:
            if self._run_index_ready:
                return sorted(self._run_index.get(run_id, ()))
        return None

    def projects_of_run(self, run_id: str) -> list[str] | None:
        """The projects holding a run with this id (blocking the first time: call from a
        thread); None when the index is not kept (too many runs: read SQL)."""
        found = self.indexed_projects(run_id)
        if found is not None:
            return found
        with self._run_index_lock:
            with self.lock:
                if self._run_index_ready:
                    return sorted(self._run_index.get(run_id, ()))
                if self._run_index is None:
                    self._run_index = {}
            with self.readers.client() as client:
                rows = client.query(
                    f"SELECT DISTINCT run_id, project FROM {self.db}.runs LIMIT {MAX_INDEXED_RUNS + 1}"
                ).result_rows
            with self.lock:
                if len(rows) > MAX_INDEXED_RUNS:
                    self._run_index = None  # stays None: SQL answers
                    self._run_index_ready = False
                    return None
                for rid, project in rows:
                    self._run_index.setdefault(rid, set()).add(project)
                self._run_index_ready = True
                return sorted(self._run_index.get(run_id, ()))

    # ---- writes ---------------------------------------------------------------------------

    def free_now(self) -> bool:
        """Whether on_staged would get the lock at once (no other thread holds it right now)."""
        if not self.lock.acquire(blocking=False):
            return False
        self.lock.release()
        return True

    def on_new_project(self, project: str) -> None:
        """StoreWriter.subscribe_projects listener: a project whose first run is being staged is
        held from birth, empty and ready, so its first read loads nothing from SQL (a sweep of
        1,000 runs x 100 points created and then searched: ~280 ms of load). Registered before
        any block that writes it is shown, so every block reaches it as it would a loaded one.
        Until its first read the blocks only wait in its backlog (Project.backlog): applying each
        one before its ack cost a sweep's server ~0.3 ms of CPU per run."""
        with self.lock:
            if project in self._projects or project in self._background:
                return  # held, or being loaded: its load sees the rows as for any project
            p = Project(project, backlog=[])
            self._registrations += 1
            p.registered = self._registrations
            p.ready = True
            self._projects[project] = p
            self._backlogged.add(project)
            self._evict()

    def on_staged(self, block) -> None:
        """StoreWriter staged listener: applies a block's rows before they are inserted (the bus
        logged them first: a crash re-forms the block), so a held project shows them one insert
        earlier. Its on_stored then applies them again only to projects registered since: their
        snapshot may have been read before the insert landed."""
        with self.lock:
            self._staged[block.staged] = self._registrations
            self._apply(block, self._projects)

    def on_failed(self, block) -> None:
        """StoreWriter staged listener: the staged block's inserts failed; the projects it touched
        are read again from SQL on their next use (the SDKs resend what was not stored)."""
        with self.lock:
            self._staged.pop(block.staged, None)
            for project in _projects_of(block):
                self.drop(project)

    def on_stored(self, block) -> None:
        """StoreWriter listener: applies one stored block (writers/store.py StoredBlock) to the
        held projects; blocks of projects not held are ignored (they are read when loaded)."""
        with self.lock:
            projects = self._projects
            applied = self._staged.pop(block.staged, None) if block.staged else None
            if applied is not None:  # on_staged applied it: only projects registered since
                since = self._registrations > applied
                projects = {k: p for k, p in projects.items() if p.registered > applied} if since else {}
            self._apply(block, projects)

    def _apply(self, block, projects: dict[str, Project]) -> None:
        if self._run_index is not None:
            for row in block.runs:
                self._run_index.setdefault(row.run_id, set()).add(row.project)
        if not self._projects:
            return
        for project, *_ in getattr(block, "recounted", ()):
            # the writer replaced a series' stored points: read the project again from SQL
            self.drop(project)
        if not projects:
            return
        if self._backlogged:
            self._defer(block, projects)
        self._apply_blocks([block], projects)
        self._evict()

    def _apply_blocks(self, blocks: list, projects: dict[str, Project]) -> None:
        """The blocks' rows, in order, and all their points in one merge, to those of `projects`
        without a backlog."""
        for block in blocks:
            for row in block.runs:
                p = projects.get(row.project)
                if p is not None and p.backlog is None:
                    p.version += 1
                    _merge_run(p.run(row.run_id), row)
            for prow in block.params:
                p = projects.get(prow[0])
                if p is not None and p.backlog is None:
                    p.version += 1
                    _merge_param(p.run(prow[1]), prow)
            for arow in block.artifacts:
                p = projects.get(arow[0])
                if p is not None and p.backlog is None:
                    p.run(arow[1]).artifacts[(arow[2], arow[6], arow[3])] = list(arow)
        held = [
            (p, env, batch)
            for block in blocks
            for env, batch in block.metrics
            if (p := projects.get(batch.project)) is not None and p.backlog is None
        ]
        if held:
            self._merge_metrics(held)

    def _defer(self, block, projects: dict[str, Project]) -> None:
        """Puts the block in the backlog of each project it touches that has one."""
        points = None
        for name in _projects_of(block) & self._backlogged:
            p = projects.get(name)
            if p is None or p.backlog is None or self._projects.get(name) is not p:
                continue  # (not held any more: let go with the other unread ones, or evicted)
            if points is None:
                points = sum(len(batch.steps) >> 3 for _, batch in block.metrics)
                if self._backlog_points + points >= MAX_BACKLOG_POINTS:
                    self._let_go_unread()
                    continue  # (this project went too: a read loads it from SQL)
            p.backlog.append(block)
            p.backlog_points += points
            self._backlog_points += points

    def _let_go_unread(self) -> None:
        """Lets go of every project with a backlog (held from birth, never read): see
        MAX_BACKLOG_POINTS. Their first reads load them from SQL."""
        for name in list(self._backlogged):
            self.drop(name)

    def _catch_up(self, p: Project) -> None:
        """Applies a project's backlog at its first read (in order; all its points in one merge)
        and ends it."""
        self._backlog_points -= p.backlog_points
        blocks, p.backlog, p.backlog_points = p.backlog, None, 0  # None: _apply_blocks applies to it
        self._apply_blocks(blocks, {p.name: p})
        self._backlogged.discard(p.name)
        self._evict()

    def drop(self, project: str) -> None:
        with self.lock:
            p = self._projects.pop(project, None)
            if p is not None:
                self._points -= p.points
                self._forget_backlog(p)

    def clear(self) -> None:
        with self.lock:
            self._projects.clear()
            self._backlogged.clear()
            self._backlog_points = 0
            self._points = 0

    def _forget_backlog(self, p: Project) -> None:
        """A project leaves the cache: its backlog goes with it."""
        if p.backlog is not None:
            self._backlogged.discard(p.name)
            self._backlog_points -= p.backlog_points

    # ---- internals ------------------------------------------------------------------------

    def _merge_metrics(self, items: list[tuple[Project, Any, Any]]) -> None:
        """Merges a block's metric batches (of held projects) at once: the points of every batch
        are decoded into one set of arrays (bytes joined, one frombuffer each), sorted once by
        (series, rank, step, version), and each series touched gets one merge. Per batch that is
        a few attribute reads; a merge per batch and key took ~30 numpy calls per key, and a
        1,266-request block of a watched 1,000-rank run spent 1.2 s here before its ack."""
        targets: list[tuple[Project, RunEntry, str, tuple[str, str]]] = []
        target_of: dict[tuple[str, str, tuple[str, str]], int] = {}
        flat: list[int] = []  # each batch's keys in order: their target (-1: a big series)
        bases, counts, ranks, received, seqs = [], [], [], [], []
        steps, values, times, key_index = [], [], [], []
        for p, env, batch in items:
            kind = "system" if batch.kind == types_pb2.METRIC_KIND_SYSTEM else "user"
            run = p.run(batch.run_id)
            keys = batch.keys
            if not keys or (run.big and all((kind, k) in run.big for k in keys)):
                continue  # every key read from SQL (checked first: reading a bytes field copies it)
            step_bytes = batch.steps
            n = len(step_bytes) >> 3
            if not n:
                continue
            p.version += 1
            bases.append(len(flat))
            for k in keys:
                sk = (kind, k)
                if sk in run.big:
                    flat.append(-1)
                    continue
                ident = (p.name, batch.run_id, sk)
                t = target_of.get(ident)
                if t is None:
                    t = target_of[ident] = len(targets)
                    targets.append((p, run, batch.run_id, sk))
                flat.append(t)
            counts.append(n)
            ranks.append(batch.rank)
            received.append(env.received_ms)
            seqs.append(env.seq & _SEQ_MASK)
            steps.append(step_bytes)
            values.append(batch.values)
            times.append(batch.times_ms or _INT64.pack(env.received_ms) * n)
            key_index.append(batch.key_index if len(keys) > 1 and batch.key_index else b"\0\0" * n)
        if not counts:
            return
        ns = np.array(counts, np.int64)
        starts = np.cumsum(ns) - ns
        where = np.frombuffer(b"".join(key_index), "<u2").astype(np.int64) + np.repeat(np.array(bases), ns)
        target = np.array(flat, np.int64)[where]
        position = np.arange(int(ns.sum()), dtype=np.int64) - np.repeat(starts, ns)  # in its batch
        columns = (
            np.repeat(np.array(ranks, np.uint16), ns),
            np.frombuffer(b"".join(steps), "<i8"),
            np.repeat(np.array(received, np.int64), ns),  # version: received_ms, then send order
            np.repeat(np.array(seqs, np.uint64) << np.uint64(POSITION_BITS), ns) + position.astype(np.uint64),
            np.frombuffer(b"".join(values), "<f8"),
            np.frombuffer(b"".join(times), "<i8"),
        )
        rank, step, vhi, vlo = columns[:4]
        order = np.lexsort((vlo, vhi, step, rank, target))
        order = order[target[order] >= 0]  # points of big series are read from SQL
        if not len(order):
            return
        # of each identity (series, rank, step) the last, highest version, for all series at once
        target, rank, step = target[order], rank[order], step[order]
        last = np.ones(len(order), bool)
        last[:-1] = (target[1:] != target[:-1]) | (rank[1:] != rank[:-1]) | (step[1:] != step[:-1])
        if not last.all():
            order, target = order[last], target[last]
        columns = tuple(c[order] for c in columns)
        c_rank, c_step, c_vhi, c_vlo, c_value, c_time = columns
        edges = np.flatnonzero(target[1:] != target[:-1]) + 1
        starts = [0, *edges.tolist()]
        for a, b, t in zip(starts, [*starts[1:], len(target)], target[starts].tolist(), strict=True):
            p, run, run_id, sk = targets[t]
            run.wire.clear()
            s = run.series.get(sk)
            if s is None:  # a new series (most of a sweep's): the points as they are, no checks
                # views of this merge's own arrays, as a snapshot load holds them: they keep the
                # arrays alive until every series that took a slice has grown (copying each slice
                # was a third of a 1,000-run backlog's catch-up)
                s = run.series[sk] = Series.of(
                    c_rank[a:b], c_step[a:b], c_vhi[a:b], c_vlo[a:b], c_value[a:b], c_time[a:b]
                )
                grown = b - a
            else:
                before = len(s)
                s.merge(c_rank[a:b], c_step[a:b], c_vhi[a:b], c_vlo[a:b], c_value[a:b], c_time[a:b])
                grown = len(s) - before
            p.points += grown
            self._points += grown
            if grown and len(s) > MAX_SERIES_POINTS:
                self._make_big(p, run, run_id, sk)

    def _make_big(self, p: Project, run: RunEntry, run_id: str, sk: tuple[str, str]) -> None:
        run.wire.clear()
        s = run.series.pop(sk, None)
        if s is not None:
            p.points -= len(s)
            self._points -= len(s)
        run.big.add(sk)
        if sk[0] == "user":
            p.big_keys.setdefault(sk[1], set()).add(run_id)

    def _evict(self) -> None:
        """Drops least recently read projects while over MAX_POINTS; a project that is over it on
        its own (it grew while held) is then left to SQL for a while."""
        while len(self._projects) > MAX_PROJECTS:
            name, p = self._projects.popitem(last=False)
            self._points -= p.points
            self._forget_backlog(p)
        while self._points > MAX_POINTS and self._projects:
            name, p = self._projects.popitem(last=False)
            self._points -= p.points
            self._forget_backlog(p)
            if not self._projects:
                self._uncacheable[name] = time.monotonic()
            log.info(
                "read cache: dropped project %s (%d points) to stay under %d", name, p.points, MAX_POINTS
            )

    def wait_loaded(self, project: str, timeout_s: float | None = None) -> None:
        """Waits for a background load of `project`, if one runs (tests, benchmarks)."""
        with self.lock:
            thread = self._background.get(project)
        if thread is not None:
            thread.join(timeout_s)

    def _load(self, name: str) -> Project | None:
        with self.readers.client() as client:
            runs_n = client.query(
                f"SELECT count() FROM {self.db}.runs WHERE project = {{p:String}}", parameters={"p": name}
            ).result_rows[0][0]
        if runs_n > MAX_PROJECT_RUNS:
            with self.lock:
                self._uncacheable[name] = time.monotonic()
            return None
        if runs_n <= self.background_load_runs:
            return self._load_snapshot(name)
        with self.lock:
            if name not in self._background:
                # not a daemon: exiting mid-query in chDB crashes the process; a load takes seconds
                thread = threading.Thread(
                    target=self._load_in_background, args=(name,), name="runstream-cache-load"
                )
                self._background[name] = thread
                thread.start()
        return None

    def _load_in_background(self, name: str) -> None:
        try:
            self._load_snapshot(name)
        except Exception:
            log.exception("read cache: loading project %s failed; its reads stay on SQL", name)
        finally:
            with self.lock:
                self._background.pop(name, None)

    def _load_snapshot(self, name: str) -> Project | None:
        """Registers the project, reads its snapshot and applies it (see the module docstring)."""
        with self.readers.client() as client:
            p = Project(name)
            with self.lock:  # registered first: every block stored from now on reaches it
                old = self._projects.pop(name, None)
                if old is not None:
                    self._points -= old.points
                    self._forget_backlog(old)
                self._registrations += 1
                p.registered = self._registrations
                self._projects[name] = p
            started = time.perf_counter()
            try:
                snapshot = self._read(client, name)
            except BaseException:
                self.drop(name)
                raise
        with self.lock:
            if self._projects.get(name) is not p:
                return None  # dropped while loading: the next read loads it again
            self._apply_snapshot(p, *snapshot)
            p.version += 1
            p.ready = True
            self._uncacheable.pop(name, None)
            self.loads += 1
            if p.points > MAX_POINTS:
                self.drop(name)
                self._uncacheable[name] = time.monotonic()
                return None
            self._evict()
        log.info(
            "read cache: loaded project %s (%d runs, %d points) in %.0f ms",
            name, len(p.runs), p.points, (time.perf_counter() - started) * 1000,
        )  # fmt: skip
        return p

    def _read(self, client, name: str):
        params = {"p": name}
        cols = ", ".join(f"`{c}`" for c in RUN_COLUMNS)
        runs = client.query(
            f"SELECT {cols} FROM {self.db}.runs FINAL WHERE project = {{p:String}}", parameters=params
        ).result_rows
        prows = client.query(
            f"SELECT run_id, toString(scope), key, toString(kind), num, str, version FROM {self.db}.params FINAL "
            "WHERE project = {p:String}",
            parameters=params,
        ).result_rows
        arows = client.query(
            f"SELECT project, run_id, name, path, type, version, version_tag, sha256, size, uri, created_ms "
            f"FROM {self.db}.artifacts FINAL WHERE project = {{p:String}}",
            parameters=params,
        ).result_rows
        points = client.query_arrow(
            f"SELECT run_id, toString(kind) AS k, toString(key) AS key, rank, step, time_ms, value, "
            "toInt64(bitShiftRight(version, 64)) AS vhi, toUInt64(bitAnd(version, toUInt128('18446744073709551615'))) AS vlo "
            f"FROM {self.db}.metrics FINAL WHERE project = {{p:String}} AND (run_id, kind, key) IN "
            f"(SELECT run_id, kind, key FROM {self.db}.metric_summaries WHERE project = {{p:String}} "
            f"GROUP BY run_id, kind, key HAVING sum(count) <= {MAX_SERIES_POINTS}) "
            "ORDER BY run_id, k, key, rank, step",
            parameters=params,
        )
        # after the points: a series counted over the limit here is big even if points came
        # for it (counts only grow; a recount drops the whole project)
        listed = client.query(
            f"SELECT run_id, toString(kind), toString(key), sum(count) FROM {self.db}.metric_summaries "
            "WHERE project = {p:String} GROUP BY run_id, kind, key",
            parameters=params,
        ).result_rows
        return runs, prows, arows, listed, points

    def _apply_points(self, p: Project, points) -> None:
        """The snapshot's points, sorted by (run, kind, key, rank, step) and one per identity
        (FINAL): each series is a slice; series the hook already started during the load merge."""
        cols = {c: points.column(c) for c in points.column_names}
        arrays = tuple(
            cols[c].to_numpy() if cols[c].num_chunks == 1 else cols[c].combine_chunks().to_numpy()
            for c in ("rank", "step", "vhi", "vlo", "value", "time_ms")
        )
        ident = (_codes(cols["run_id"]), _codes(cols["k"]), _codes(cols["key"]))
        n = points.num_rows
        change = np.zeros(n, bool)
        change[0] = True
        for codes in ident:
            change[1:] |= codes[1:] != codes[:-1]
        starts = np.flatnonzero(change)
        ends = np.append(starts[1:], n).tolist()
        starts = starts.tolist()
        run_ids = cols["run_id"].take(starts).to_pylist()
        kinds = cols["k"].take(starts).to_pylist()
        keys = cols["key"].take(starts).to_pylist()
        for a, b, run_id, kind, key in zip(starts, ends, run_ids, kinds, keys, strict=True):
            run = p.run(run_id)
            sk = (kind, key)
            run.wire.clear()
            if sk in run.big:
                continue
            s = run.series.get(sk)
            if s is None:  # the common case: the snapshot's points as they are
                rank, step, vhi, vlo, value, time_ms = arrays
                s = run.series[sk] = Series.of(
                    rank[a:b], step[a:b], vhi[a:b], vlo[a:b], value[a:b], time_ms[a:b]
                )
                before = 0
            else:
                before = len(s)
                s.merge(*(x[a:b] for x in arrays))
            p.points += len(s) - before
            self._points += len(s) - before
            if len(s) > MAX_SERIES_POINTS:
                self._make_big(p, run, run_id, sk)

    def _apply_snapshot(self, p: Project, runs, prows, arows, listed, points) -> None:
        for r in runs:
            _merge_run(p.run(r[1]), RunRow.from_db(r))
        for run_id, scope, key, kind, num, text, version in prows:
            _merge_param(p.run(run_id), (p.name, run_id, scope, key, kind, num, text, int(version)))
        for a in arows:
            row = list(a)
            if isinstance(row[7], bytes):
                row[7] = row[7].decode()
            p.run(a[1]).artifacts.setdefault((a[2], a[6], a[3]), row)  # a block's row is as new or newer
        if points.num_rows:
            self._apply_points(p, points)
        for run_id, kind, key, count in listed:
            run = p.run(run_id)
            if count > MAX_SERIES_POINTS and (kind, key) not in run.big:
                self._make_big(p, run, run_id, (kind, key))


def _codes(column) -> np.ndarray:
    """Integer codes of an Arrow string column (equal strings, equal codes)."""
    import pyarrow.compute as pc

    return pc.dictionary_encode(column).combine_chunks().indices.to_numpy(zero_copy_only=False)


def _merge_run(entry: RunEntry, row: RunRow) -> None:
    if entry.row is None or row.version >= entry.row.version:
        entry.row = row
        entry.wire.clear()


def _merge_param(entry: RunEntry, prow) -> None:
    _, _, scope, key, kind, num, text, version = prow
    cur = entry.params.get((scope, key))
    if cur is None or version >= cur[3]:
        entry.params[(scope, key)] = (kind, float(num), text, int(version))
        entry.wire.clear()


def _projects_of(block) -> set[str]:
    """The projects a StoredBlock touches."""
    found = {row.project for row in block.runs} | {prow[0] for prow in block.params}
    found |= {arow[0] for arow in block.artifacts}
    found |= {batch.project for _, batch in block.metrics}
    return found
