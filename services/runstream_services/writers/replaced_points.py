"""Keeps metric summaries counting distinct points when a write replaces stored points.

A point logged twice (same run, kind, key, rank, step) is one point in history: the metrics table
keeps the version sent last (writers/store.py states the rule). The summary view, though, counts
every inserted row. Replacing writes are rare (a step logged again, a resumed run re-logging its
last steps), so the common path stays as cheap as it was: the writer remembers the highest step
stored per series and, only for a batch that reaches at or below it (or whose steps do not rise
within the batch), recounts that series from `metrics FINAL` afterwards and inserts the
difference as a signed `count` row into the summaries. A false alarm costs one recount, never a
wrong count.

The recount runs while no other metric insert of this writer is in flight (a shared/exclusive
gate): an insert lands in `metrics` and in the summaries at two moments, and a recount between
them would see one without the other.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np
from clickhouse_connect.driver.client import Client

from runstream.v1 import ingest_pb2, types_pb2

MAX_CACHED_RUNS = 4096  # runs whose highest steps are kept in memory (reloaded when they come back)
_NO_STEP = -(2**63)

#: (project, run_id, kind, key): one series of a run's summaries (kind is "user" or "system")
Series = tuple[str, str, str, str]


def kind_name(batch: ingest_pb2.MetricBatch) -> str:
    return "system" if batch.kind == types_pb2.METRIC_KIND_SYSTEM else "user"


def key_ranges(batch: ingest_pb2.MetricBatch) -> list[tuple[str, int, int, bool]]:
    """(key, lowest step, highest step, steps strictly rise) per key of a batch, vectorized: a
    stable sort of the uint16 key indexes (a radix sort) and a few passes over the steps."""
    steps = np.frombuffer(batch.steps, "<i8")
    if len(steps) == 0:
        return []
    if not batch.key_index:
        rising = bool(np.all(steps[1:] > steps[:-1]))
        return [(batch.keys[0], int(steps.min()), int(steps.max()), rising)]
    index = np.frombuffer(batch.key_index, "<u2")
    order = np.argsort(index, kind="stable")
    k, s = index[order], steps[order]
    new_key = k[1:] != k[:-1]
    starts = np.flatnonzero(np.concatenate(([True], new_key)))
    broken = np.flatnonzero(~((s[1:] > s[:-1]) | new_key)) + 1  # positions whose step did not rise
    broken_groups = set((np.searchsorted(starts, broken, side="right") - 1).tolist())
    lows = np.minimum.reduceat(s, starts).tolist()
    highs = np.maximum.reduceat(s, starts).tolist()
    out: dict[str, tuple[int, int, bool]] = {}
    for g, start in enumerate(starts.tolist()):
        key = batch.keys[int(k[start])]
        rising = g not in broken_groups and key not in out  # a key listed twice may repeat steps
        if key in out:
            lo, hi, _ = out[key]
            out[key] = (min(lo, lows[g]), max(hi, highs[g]), False)
        else:
            out[key] = (lows[g], highs[g], rising)
    return [(key, lo, hi, rising) for key, (lo, hi, rising) in out.items()]


class SharedExclusive:
    """A readers-writer gate: many `shared()` holders at once, or one `exclusive()` holder.
    A waiting exclusive holder stops new shared ones, so it is never starved."""

    def __init__(self):
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if not self._shared:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._exclusive or self._shared:
                self._cond.wait()
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class ReplacedPoints:
    """The highest stored step per series, and the recount of series a write may have replaced."""

    def __init__(self, client: Client, database: str):
        self.client = client
        self.db = database
        self.gate = SharedExclusive()
        self._lock = threading.Lock()
        # (project, run_id) -> {(kind, key, rank): highest step stored}
        self._highest: OrderedDict[tuple[str, str], dict[tuple[str, str, int], int]] = OrderedDict()

    def suspects(self, batches: list[ingest_pb2.MetricBatch]) -> set[Series]:
        """The series of which these batches may replace stored points (or hold a point twice);
        notes their steps as stored. Call before inserting them."""
        found: set[Series] = set()
        with self._lock:
            for batch in batches:
                highest = self._run_locked(batch.project, batch.run_id)
                kind = kind_name(batch)
                for key, lo, hi, rising in key_ranges(batch):
                    top = highest.get((kind, key, batch.rank), _NO_STEP)
                    if not rising or lo <= top:
                        found.add((batch.project, batch.run_id, kind, key))
                    if hi > top:
                        highest[(kind, key, batch.rank)] = hi
        return found

    def recount(self, series: set[Series]) -> None:
        """Makes the summaries' count of each series equal its distinct points. Call after the
        insert, holding no shared gate."""
        if not series:
            return
        with self.gate.exclusive():
            for project, run_id, kind, key in sorted(series):
                params = {"p": project, "r": run_id, "k": kind, "key": key}
                where = "project = %(p)s AND run_id = %(r)s AND kind = %(k)s AND key = %(key)s"
                exact = self.client.query(f"SELECT count() FROM {self.db}.metrics FINAL WHERE {where}", parameters=params).result_rows[0][0]  # fmt: skip
                counted = self.client.query(f"SELECT sum(count) FROM {self.db}.metric_summaries WHERE {where}", parameters=params).result_rows[0][0]  # fmt: skip
                delta = int(exact) - int(counted or 0)
                if delta:
                    # a row that changes nothing but `count`: an empty `last` state, NULL min/max
                    self.client.command(
                        f"INSERT INTO {self.db}.metric_summaries "
                        "SELECT %(p)s, %(r)s, %(k)s, %(key)s, argMaxStateIf(0., (toInt64(0), toUInt128(0)), 0 = 1), "
                        f"NULL, NULL, toInt64(%(d)s), toInt64({_NO_STEP})",
                        parameters={**params, "d": delta},
                        settings={"insert_deduplicate": 0},
                    )

    def forget(self, runs: list[tuple[str, str]] | None = None) -> None:
        """Drops the remembered steps of `runs` (all when None): another writer may have stored more."""
        with self._lock:
            if runs is None:
                self._highest.clear()
            for run in runs or ():
                self._highest.pop(run, None)

    def _run_locked(self, project: str, run_id: str) -> dict[tuple[str, str, int], int]:
        run = (project, run_id)
        highest = self._highest.get(run)
        if highest is not None:
            self._highest.move_to_end(run)
            return highest
        rows = self.client.query(
            f"SELECT toString(kind), toString(key), rank, max(last_step) FROM {self.db}.metric_rollups "
            "WHERE project = %(p)s AND run_id = %(r)s GROUP BY kind, key, rank",
            parameters={"p": project, "r": run_id},
        ).result_rows
        highest = self._highest[run] = {(k, key, int(rank)): int(step) for k, key, rank, step in rows}
        while len(self._highest) > MAX_CACHED_RUNS:
            self._highest.popitem(last=False)
        return highest
