"""The hand-off between the caller's thread and the worker.

The caller only appends one tuple per `run.log` call to a `collections.deque` (append and popleft
are atomic, so neither side takes a lock); the worker pops everything and packs it into columnar
`MetricBatch` messages (one key dictionary, little-endian byte columns). Control messages (config
updates, artifacts, finish) travel in the same deque so their order relative to metrics is kept.

The hand-off is bounded by bytes (max_memory_bytes): `queued_bytes` estimates what the deque holds
(its length times the newest entry's accounted size, O(1)); the Run checks it each time it wakes
the worker and, over the bound, waits for the worker to drain (see Run._wait_for_drain).

Everything is checked on the caller's thread; should packing a batch still fail, the batch is
packed again point by point and only the points that cannot travel are refused (reported through
`on_refused`), so one bad entry never takes the good ones down with it.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from runstream.v1 import ingest_pb2, types_pb2

USER = types_pb2.METRIC_KIND_USER
SYSTEM = types_pb2.METRIC_KIND_SYSTEM
_SWAP = sys.byteorder != "little"


class Bulk:
    """Whole series from run.log_arrays: already packed little-endian on the caller's thread.
    `times` (n x int64 unix ms) when each step has its own time, else every point gets `time_ms`."""

    __slots__ = ("key", "steps", "values", "n", "time_ms", "times")

    def __init__(
        self, key: str, steps: bytes, values: bytes, n: int, time_ms: int, times: bytes | None = None
    ):
        self.key, self.steps, self.values, self.n, self.time_ms = key, steps, values, n, time_ms
        self.times = times


class Control:
    """A non-metric request body, e.g. ("run_update", RunUpdate(...))."""

    __slots__ = ("field", "body")

    def __init__(self, field: str, body: Any):
        self.field, self.body = field, body


#: accounted memory of one queued run.log call: the tuple, its time and its dict, plus per point
#: the dict slot and a float object (sys.getsizeof, CPython 3.11, rounded up)
ENTRY_BYTES = 160
POINT_BYTES = 64


def entry_bytes(entry: Any) -> int:
    """The accounted size of one queued entry (an estimate of the memory it holds)."""
    if type(entry) is tuple:
        return ENTRY_BYTES + POINT_BYTES * len(entry[2])
    if type(entry) is Bulk:
        return ENTRY_BYTES + len(entry.values) + len(entry.steps) + (len(entry.times) if entry.times else 0)
    body = getattr(entry, "body", None)
    if hasattr(body, "ByteSize"):
        return ENTRY_BYTES + body.ByteSize()
    return ENTRY_BYTES + getattr(body, "held_bytes", 0)  # an upload of media bytes held in memory


def _le(a: array) -> bytes:
    if _SWAP:
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def _repeat_each(items: list[int], n: int) -> bytes:
    """int64 little-endian bytes of `items`, each repeated n times in place ([a, b] -> [a, a, b, b]
    for n=2): n strided copies in C instead of a Python list of every point."""
    col = array("q", items)
    if n == 1:
        return _le(col)
    out = array("q", bytes(8 * len(col) * n))
    view = memoryview(out)
    for j in range(n):
        view[j::n] = col
    return _le(out)


class _Columns:
    """Points of one kind collected into the next MetricBatch.

    While every log() call of the batch names the same keys in the same order (a training loop's
    usual shape), a call costs one extend of its values and an append of its step and time; the
    per-point step, time and key-index columns are made once per batch (_repeat_each, a repeated
    index array). A call with other keys turns the batch into per-point lists (`_spread`), built
    with list extends from dict views, which run in C."""

    def __init__(self) -> None:
        self.keys: dict[str, int] = {}
        self.values: list[float] = []
        # uniform calls (all with the keys `_names`, at indexes `_index`): one step and time per call
        self._names: tuple | None = None
        self._index: tuple[int, ...] = ()
        self._call_steps: list[int] = []
        self._call_times: list[int] = []
        # mixed calls: one key index, step and time per point
        self._mixed = False
        self._index_of: dict[tuple, tuple] = {}  # key tuple of a log() call -> key indexes
        self.key_index: list[int] = []
        self.steps: list[int] = []
        self.times: list[int] = []

    def __len__(self) -> int:
        return len(self.values)

    def add(self, step: int, time_ms: int, data: dict) -> None:
        names = tuple(data)
        if not self._mixed:
            if self._names is None:  # the batch's first call sets its keys
                self.keys = {key: i for i, key in enumerate(names)}
                self._names, self._index = names, tuple(range(len(names)))
                self._index_of[names] = self._index
            if names == self._names:
                self.values.extend(data.values())
                self._call_steps.append(step)
                self._call_times.append(time_ms)
                return
            self._spread()
        index = self._index_of.get(names)
        if index is None:
            keys = self.keys
            for key in names:
                if key not in keys:
                    keys[key] = len(keys)
            index = self._index_of[names] = tuple(keys[k] for k in names)
        n = len(index)
        self.key_index.extend(index)
        self.values.extend(data.values())
        if n == 1:
            self.steps.append(step)
            self.times.append(time_ms)
        else:
            self.steps.extend([step] * n)
            self.times.extend([time_ms] * n)

    def _spread(self) -> None:
        """Uniform calls -> per-point lists (the next call has other keys, or a point is bad)."""
        if self._mixed:
            return
        self._mixed = True
        index, n = self._index, len(self._index)
        for step, time_ms in zip(self._call_steps, self._call_times, strict=True):
            self.key_index.extend(index)
            self.steps.extend([step] * n)
            self.times.extend([time_ms] * n)
        self._call_steps, self._call_times = [], []

    def without_bad_points(self) -> tuple[_Columns, int, str]:
        """A copy holding only the points that can be packed: (columns, points left out, why)."""
        self._spread()
        good = _Columns()
        names = list(self.keys)
        index = self.key_index if self.key_index else [0] * len(self.values)
        refused, why = 0, ""
        for i, value in enumerate(self.values):
            key, step, time_ms = names[index[i]], self.steps[i], self.times[i]
            problem = _point_problem(key, step, value, time_ms)
            if problem:
                refused += 1
                why = why or problem
                continue
            good.add(step, time_ms, {key: value})
        return good, refused, why

    def to_batch(self, project: str, run_id: str, rank: int, kind: int) -> ingest_pb2.MetricBatch:
        if self._mixed:
            key_index = _le(array("H", self.key_index)) if len(self.keys) > 1 else b""
            steps, times = _le(array("q", self.steps)), _le(array("q", self.times))
        else:
            n = len(self._index)
            key_index = _le(array("H", self._index) * len(self._call_steps)) if n > 1 else b""
            steps, times = _repeat_each(self._call_steps, n), _repeat_each(self._call_times, n)
        return ingest_pb2.MetricBatch(
            project=project,
            run_id=run_id,
            keys=list(self.keys),
            key_index=key_index,
            steps=steps,
            values=_le(array("d", self.values)),
            times_ms=times,
            rank=rank,
            kind=kind,
        )


def _point_problem(key: Any, step: Any, value: Any, time_ms: Any) -> str:
    """Why one point cannot be packed, or "" when it can."""
    if type(key) is not str:
        return f"metric key {key!r} is not a str"
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return f"metric key {key[:80]!r} is not valid UTF-8"
    if type(step) is not int or not 0 <= step < 2**63:
        return f"{key!r}: step {str(step)[:40]} is not an int64 >= 0"
    if type(time_ms) is not int or not 0 <= time_ms < 2**63:
        return f"{key!r}: time {str(time_ms)[:40]} is not an int64 of unix ms"
    if type(value) is not float and type(value) is not int:
        return f"{key!r}: value {str(value)[:40]} is a {type(value).__name__}, not a number"
    try:
        math.isnan(value)  # converts to float: fails for ints beyond float64
    except OverflowError:
        return f"{key!r}: value {str(value)[:40]} is not a float64"
    return ""


class MetricBuffer:
    """Caller side: `entries.append(...)`. Worker side: `drain()`."""

    def __init__(self, project: str, run_id: str, rank: int, max_batch_points: int):
        self.project, self.run_id, self.rank = project, run_id, rank
        self.max_batch_points = max_batch_points
        self.entries: deque = deque()
        #: called with (points refused, why) when packing had to leave points out
        self.on_refused: Callable[[int, str], None] | None = None

    def queued_bytes(self) -> int:
        """Accounted bytes waiting in the hand-off: entries x the newest entry's size (O(1))."""
        entries = self.entries
        try:
            return len(entries) * entry_bytes(entries[-1])
        except IndexError:
            return 0

    def _batch(self, cols: _Columns, kind: int) -> ingest_pb2.MetricBatch | None:
        try:
            return cols.to_batch(self.project, self.run_id, self.rank, kind)
        except (OverflowError, ValueError, TypeError):  # checked on the caller's thread: rare
            good, refused, why = cols.without_bad_points()
            if self.on_refused is not None:
                self.on_refused(refused, why)
            return good.to_batch(self.project, self.run_id, self.rank, kind) if len(good) else None

    def drain(self) -> Iterator[tuple[str, Any]]:
        """Yields (oneof field, body) in log order until the deque is empty."""
        pop = self.entries.popleft
        cols: _Columns | None = None
        kind = USER
        limit = self.max_batch_points
        while True:
            try:
                entry = pop()
            except IndexError:
                break
            if type(entry) is tuple:
                entry_kind = entry[3] if len(entry) == 4 else USER
                data = entry[2]
                if cols is not None and (
                    entry_kind != kind or len(cols) + len(data) > limit or len(cols.keys) + len(data) > 65_535
                ):
                    batch = self._batch(cols, kind)
                    if batch is not None:
                        yield "metrics", batch
                    cols = None
                if cols is None:
                    cols, kind = _Columns(), entry_kind
                if len(data) > limit:  # a single huge dict: split it
                    items = list(data.items())
                    for start in range(0, len(items), limit):
                        part = _Columns()
                        part.add(entry[0], int(entry[1] * 1000), dict(items[start : start + limit]))
                        batch = self._batch(part, entry_kind)
                        if batch is not None:
                            yield "metrics", batch
                    cols = None
                    continue
                cols.add(entry[0], int(entry[1] * 1000), data)
                continue
            if cols is not None:
                batch = self._batch(cols, kind)
                if batch is not None:
                    yield "metrics", batch
                cols = None
            if type(entry) is Bulk:
                yield from self._bulk_batches(entry)
            else:
                yield entry.field, entry.body
        if cols is not None:
            batch = self._batch(cols, kind)
            if batch is not None:
                yield "metrics", batch

    def _bulk_batches(self, bulk: Bulk) -> Iterator[tuple[str, Any]]:
        limit = self.max_batch_points
        time_col = _le(array("q", [bulk.time_ms]))
        for start in range(0, bulk.n, limit):
            n = min(limit, bulk.n - start)
            yield (
                "metrics",
                ingest_pb2.MetricBatch(
                    project=self.project,
                    run_id=self.run_id,
                    keys=[bulk.key],
                    steps=bulk.steps[start * 8 : (start + n) * 8],
                    values=bulk.values[start * 8 : (start + n) * 8],
                    times_ms=time_col * n if bulk.times is None else bulk.times[start * 8 : (start + n) * 8],
                    rank=self.rank,
                    kind=USER,
                ),
            )
