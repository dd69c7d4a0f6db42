"""Rows that record what was stored (client_seqs) and who did what (audit_log), written in the
background a moment after the data they describe.

Why not in the request's own path: on chDB every insert costs ~10 ms however small (a new part), and
these two inserts were half of a run event's cost. Deferring them loses nothing that was acked: the
data rows are inserted (with dedup tokens) before the ack; only the record that they were stored
lags by up to `interval_s` (1 s: on chDB each insert is a new part, and the embedded bus's block
log re-forms any block whose record did not make it). A crash in that gap makes a resent request look new, and then the dedup
tokens of the data inserts drop it, as they do for any replay inside the dedup window. The Kafka
writer calls flush() before it commits a block's offsets, so there the record is exact.

The timer flushes only when no flush ran for `interval_s`: the embedded bus flushes every second
to record its blocks, and two clocks flushing at once doubled the bookkeeping parts (each insert
~15 ms of chDB CPU, merges included, measured) for nothing.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("runstream.writer")

InsertFn = Callable[[str, tuple[str, ...], list[list]], None]


class BackgroundRows:
    """Collects rows per table; a daemon thread inserts them every `interval_s`. flush() writes
    what is pending now (tests, shutdown); failed inserts are kept and retried."""

    def __init__(
        self,
        insert: InsertFn,
        columns: dict[str, tuple[str, ...]],
        interval_s: float = 1.0,
        keyed: dict[str, int] | None = None,
    ):
        """`keyed`: table -> n, for tables whose rows replace the pending row with the same first
        n columns (a (client, run)'s latest set of stored seqs supersedes the ones before it)."""
        self._insert = insert
        self._columns = columns
        self._keyed = dict(keyed or {})
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._pending: dict[str, list[list]] = {table: [] for table in columns}
        # taken by a flush and not inserted yet: still reported by pending(), so a reader never
        # sees a row in neither place (the store writer reloads stored seqs from table + pending)
        self._inserting: dict[str, list[list]] = {table: [] for table in columns}
        self._flush_lock = threading.Lock()  # one flush at a time keeps rows in order
        self._flushed_at = time.monotonic()  # when the last flush started
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="runstream-bookkeeping", daemon=True)
        self._thread.start()
        # Stop before the interpreter (and chDB's engine) shuts down: an insert running during
        # teardown crashes the process.
        atexit.register(self.close)

    def add(self, table: str, rows: list[list]) -> None:
        if rows:
            with self._lock:
                pending = self._pending[table]
                n = self._keyed.get(table)
                if n:
                    keys = {tuple(row[:n]) for row in rows}
                    pending[:] = [row for row in pending if tuple(row[:n]) not in keys]
                pending.extend(rows)

    def pending(self, table: str) -> list[list]:
        """Rows not yet inserted (a copy), including those being inserted right now."""
        with self._lock:
            return self._inserting[table] + self._pending[table]

    def flush(self) -> bool:
        """Inserts every pending row now; True when all of them are stored (failed inserts are
        kept and retried by the next flush)."""
        ok = True
        with self._flush_lock:
            self._flushed_at = time.monotonic()
            with self._lock:
                batches = {t: rows for t, rows in self._pending.items() if rows}
                self._pending = {table: [] for table in self._columns}
                self._inserting = {table: batches.get(table, []) for table in self._columns}
            for table, rows in batches.items():
                try:
                    self._insert(table, self._columns[table], rows)
                except Exception:
                    log.exception("writing %d %s rows failed; retrying", len(rows), table)
                    ok = False
                    with self._lock:
                        self._pending[table][:0] = rows
                finally:
                    with self._lock:
                        self._inserting[table] = []
        return ok

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        atexit.unregister(self.close)
        self._thread.join(5)
        self.flush()

    def due_in(self, now: float) -> float:
        """Seconds until the timer's next flush: `interval_s` after the last flush, whoever ran it."""
        return self._flushed_at + self._interval_s - now

    def _loop(self) -> None:
        wait = self._interval_s
        while not self._stop.wait(wait):
            wait = self.due_in(time.monotonic())
            if wait <= 0:
                self.flush()
                wait = self._interval_s
