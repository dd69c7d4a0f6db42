"""Console capture: this process's `sys.stdout` / `sys.stderr`, line by line, into the run.

`ConsoleCapture.start` puts a `_Tee` in place of each stream. A tee writes to the original stream
first (the terminal, or whatever stood there, still sees everything, unchanged) and then hands the
text to the capture, which splits it into lines (a `\\r` without `\\n` redraws the line in place, as
progress bars do; only the last drawing is kept). Complete lines are numbered (stdout and stderr
share one count, so a rank's lines read back in print order) and kept in a list; every
`flush_interval_s` they move into the run's hand-off deque as one `ConsoleBatch` control entry, so
they travel on the ingest stream with the metrics: same seq, acks, resends and spool. One daemon
thread per process (`_Flusher`) does that for every capture: a thread started and joined per run
cost a sweep that starts runs back to back ~0.3 ms of CPU and more of wall time per run (issue 11).

Bounded, never blocking: a line longer than `console_max_line_chars` is cut and ends with a marker
saying how much was cut; lines beyond `console_max_bytes_per_s` (a token bucket holding two
seconds' worth) or past `console_max_total_bytes` per run are dropped and counted, and a marker
line "[runstream: N console lines dropped ...]" takes their place once lines are kept again (or at
the next flush). Nothing here ever raises into the caller's `print`.

`logging.StreamHandler`s made before the capture started (logging.basicConfig at the top of a
script) write to the original stream object: they are pointed at its tee while capturing, and
back at stop. Not captured: bytes written to `sys.stdout.buffer` or to file descriptor 1/2 directly (C
extensions, child processes). In a forked child the tees only write through (the parent's run
owns the capture). `stop()` flushes what is left and puts the original streams back; when
something else has wrapped a tee meanwhile, the tee stays but only writes through.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from runstream.v1 import ingest_pb2, types_pb2

from .buffer import Control

STDOUT = types_pb2.CONSOLE_STREAM_STDOUT
STDERR = types_pb2.CONSOLE_STREAM_STDERR
LINE_OVERHEAD_BYTES = 16  # accounted per line on top of its text (number, time, stream)
MAX_BATCH_LINES = 4096
MAX_BATCH_BYTES = 1024 * 1024


class _Tee:
    """Stands in for sys.stdout or sys.stderr: writes through, then feeds the capture."""

    def __init__(self, original: TextIO, stream: int, capture: ConsoleCapture):
        self._original = original
        self._stream = stream
        self._capture: ConsoleCapture | None = capture

    def write(self, text: str) -> int:
        written = self._original.write(text)
        capture = self._capture
        if capture is not None and type(text) is str and text:
            try:
                capture.feed(self._stream, text)
            except Exception:  # never into the caller's print
                capture.errors += 1
        return written

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._original.flush()

    def detach_capture(self) -> None:
        self._capture = None

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty, buffer, ...
        return getattr(self._original, name)


class ConsoleCapture:
    """Captures this process's console output for one run (see the module docstring)."""

    def __init__(
        self,
        emit: Callable[[ingest_pb2.ConsoleBatch], None],
        *,
        project: str,
        run_id: str,
        rank: int,
        max_line_chars: int,
        max_bytes_per_s: int,
        max_total_bytes: int,
        flush_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._emit = emit  # hands a ConsoleBatch to the run (its hand-off deque)
        self.project, self.run_id, self.rank = project, run_id, rank
        self.max_line_chars = max_line_chars
        self.max_bytes_per_s = max_bytes_per_s
        self.max_total_bytes = max_total_bytes
        self.flush_interval_s = flush_interval_s
        self._clock = clock
        # reentrant: a signal handler that prints while this thread is inside feed() must not
        # deadlock (_feeding then makes that inner write pass through uncaptured)
        self._lock = threading.RLock()
        self._feeding = False
        self._partial: dict[int, str] = {STDOUT: "", STDERR: ""}
        self._cut: dict[int, int] = {STDOUT: 0, STDERR: 0}  # characters beyond the partial line's limit
        self._lines: list[tuple[int, int, int, str]] = []  # (stream, number, time ms, text)
        self._next_line = 0
        self._tokens = float(2 * max_bytes_per_s)
        self._refilled = clock()
        self._pending_drops = 0  # dropped since the last marker
        self.kept_lines = 0
        self.kept_bytes = 0
        self.dropped_lines = 0
        self.truncated_lines = 0
        self.errors = 0
        self._tees: list[tuple[str, _Tee]] = []
        self._handlers: list[tuple[Any, _Tee]] = []  # logging handlers pointed at a tee
        self._stopped = False
        # held while kept lines are taken and handed to the run: after stop() has it, the
        # flusher thread hands over nothing more (the run's finish follows its last lines)
        self._flush_lock = threading.Lock()

    # ---- starting and stopping ------------------------------------------------------------

    @classmethod
    def start(cls, entries, *, project: str, run_id: str, rank: int, settings) -> ConsoleCapture | None:
        """Tees sys.stdout / sys.stderr into `entries` (the run's hand-off deque). None when another
        run of this process captures already (its tees stay in place)."""
        if isinstance(sys.stdout, _Tee) or isinstance(sys.stderr, _Tee):
            return None
        capture = cls(
            lambda batch: entries.append(Control("console", batch)),
            project=project,
            run_id=run_id,
            rank=rank,
            max_line_chars=settings.console_max_line_chars,
            max_bytes_per_s=settings.console_max_bytes_per_s,
            max_total_bytes=settings.console_max_total_bytes,
            flush_interval_s=settings.flush_interval_s,
        )
        capture.install()
        return capture

    def install(self) -> None:
        """Puts the tees in place and registers with the process's flusher thread."""
        for name, stream in (("stdout", STDOUT), ("stderr", STDERR)):
            original = getattr(sys, name)
            if original is None:  # pythonw: no console
                continue
            tee = _Tee(original, stream, self)
            setattr(sys, name, tee)
            self._tees.append((name, tee))
        self._repoint_logging()
        _FLUSHER.add(self)

    def stop(self) -> None:
        """Completes partial lines, sends every kept line and puts the original streams back.
        Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        _FLUSHER.remove(self)
        for handler, tee in self._handlers:
            if handler.stream is tee:
                handler.setStream(tee._original)
        for name, tee in self._tees:
            if getattr(sys, name) is tee:
                setattr(sys, name, tee._original)
            tee.detach_capture()  # wrapped by someone else meanwhile: it only writes through now
        with self._flush_lock:  # waits for a flush the flusher thread is in the middle of
            with self._lock:
                for stream in (STDOUT, STDERR):
                    if self._partial[stream] or self._cut[stream]:
                        self._complete(stream, self._partial[stream])
                self._marker_if_dropped()
            self._hand_over()

    def _repoint_logging(self) -> None:
        """logging.StreamHandlers made before init (logging.basicConfig at the top of a script)
        hold the original stream, not sys.stderr: they are pointed at its tee until stop()."""
        logging = sys.modules.get("logging")
        if logging is None:
            return
        tees = {id(tee._original): tee for _, tee in self._tees}
        for handler in _handlers(logging):
            tee = tees.get(id(getattr(handler, "stream", None)))
            if tee is not None and type(handler) is logging.StreamHandler:
                handler.setStream(tee)
                self._handlers.append((handler, tee))

    @property
    def active(self) -> bool:
        return not self._stopped

    def stats(self) -> dict[str, int]:
        return {
            "console_lines": self.kept_lines,
            "console_dropped_lines": self.dropped_lines,
            "console_truncated_lines": self.truncated_lines,
        }

    # ---- the caller's side ----------------------------------------------------------------

    def feed(self, stream: int, text: str) -> None:
        """Text written to `stream`: completes and keeps (or drops) lines, keeps the partial one."""
        with self._lock:
            if self._feeding or self._stopped:
                return
            partial = self._partial[stream]
            if "\n" not in text and "\r" not in text and len(partial) + len(text) <= self.max_line_chars:
                self._partial[stream] = partial + text  # the common fragment of a print: no line yet
                return
            self._feeding = True
            try:
                parts = text.split("\n")
                if len(parts) == 1:
                    self._extend_partial(stream, text)
                    return
                self._complete(stream, self._partial[stream] + parts[0])
                for middle in parts[1:-1]:
                    self._complete(stream, middle)
                self._partial[stream], self._cut[stream] = "", 0
                self._extend_partial(stream, parts[-1])
            finally:
                self._feeding = False

    def _extend_partial(self, stream: int, text: str) -> None:
        partial = self._partial[stream] + text
        if "\r" in text:  # redrawn in place: only what follows the last \r is on screen
            body = partial[:-1] if partial.endswith("\r") else partial  # the \r of a \r\n may follow
            cut_at = body.rfind("\r")
            if cut_at >= 0:
                partial, self._cut[stream] = partial[cut_at + 1 :], 0
        room = self.max_line_chars + 1
        if len(partial) > room:
            self._cut[stream] += len(partial) - room
            partial = partial[:room]
        self._partial[stream] = partial

    def _complete(self, stream: int, line: str) -> None:
        cut = self._cut[stream]
        self._cut[stream] = 0
        if line.endswith("\r"):
            line = line[:-1]
        if "\r" in line:
            line = line.rpartition("\r")[2]
        if len(line) + cut > self.max_line_chars:
            extra = len(line) + cut - self.max_line_chars
            line = f"{line[: self.max_line_chars]} … [runstream: {extra} more characters cut]"
            self.truncated_lines += 1
        try:
            cost = len(line.encode("utf-8")) + LINE_OVERHEAD_BYTES  # UTF-8 bytes, as sent
        except UnicodeEncodeError:  # lone surrogates: protobuf strings must be UTF-8
            line = line.encode("utf-8", "replace").decode("utf-8")
            cost = len(line.encode("utf-8")) + LINE_OVERHEAD_BYTES
        if not self._take(cost):
            self.dropped_lines += 1
            self._pending_drops += 1
            return
        self._marker_if_dropped()
        self._keep(stream, line, cost)

    def _take(self, cost: int) -> bool:
        """Spends `cost` bytes of the rate and total budgets; False (nothing spent) when over."""
        if self.kept_bytes + cost > self.max_total_bytes:
            return False
        now = self._clock()
        burst = 2.0 * self.max_bytes_per_s
        self._tokens = min(burst, self._tokens + (now - self._refilled) * self.max_bytes_per_s)
        self._refilled = now
        if self._tokens < cost:
            return False
        self._tokens -= cost
        return True

    def _marker_if_dropped(self) -> None:
        if not self._pending_drops:
            return
        if self.kept_bytes + LINE_OVERHEAD_BYTES > self.max_total_bytes:
            why = f"past console_max_total_bytes={self.max_total_bytes}"
        else:
            why = f"over console_max_bytes_per_s={self.max_bytes_per_s}"
        text = f"[runstream: {self._pending_drops} console lines dropped ({why})]"
        self._pending_drops = 0
        self._keep(STDERR, text, 0)  # markers spend no budget: a cut must always be visible

    def _keep(self, stream: int, text: str, cost: int) -> None:
        self._lines.append((stream, self._next_line, int(time.time() * 1000), text))
        self._next_line += 1
        self.kept_lines += 1
        self.kept_bytes += cost

    # ---- handing lines to the run ---------------------------------------------------------

    def tick(self) -> None:
        """The flusher thread's call every flush_interval_s: markers for drops, then the kept
        lines go to the run; nothing once stop() has begun (stop sends the rest itself)."""
        with self._flush_lock:
            if self._stopped:
                return
            try:
                with self._lock:
                    self._marker_if_dropped()
                self._hand_over()
            except Exception:
                self.errors += 1

    def _hand_over(self) -> None:
        """Hands the kept lines to the run as ConsoleBatch entries (split by lines and bytes);
        called with _flush_lock held."""
        with self._lock:
            lines, self._lines = self._lines, []
        start = 0
        while start < len(lines):
            end, size = start, 0
            while (
                end < len(lines)
                and end - start < MAX_BATCH_LINES
                and (size < MAX_BATCH_BYTES or end == start)
            ):
                size += len(lines[end][3]) + LINE_OVERHEAD_BYTES
                end += 1
            chunk = lines[start:end]
            self._emit(
                ingest_pb2.ConsoleBatch(
                    project=self.project,
                    run_id=self.run_id,
                    rank=self.rank,
                    streams=[line[0] for line in chunk],
                    line_numbers=[line[1] for line in chunk],
                    times_ms=[line[2] for line in chunk],
                    texts=[line[3] for line in chunk],
                )
            )
            start = end


def _handlers(logging) -> list:
    """Every logging handler that exists: from logging's own list of them (weak references, kept
    for logging.shutdown) when it has one, else from every logger's. Walking every logger at each
    init cost ~12 us with 14 loggers; a process with large libraries (transformers) has hundreds,
    and few handlers."""
    refs = getattr(logging, "_handlerList", None)
    if isinstance(refs, list):
        return [h for h in (ref() for ref in list(refs)) if h is not None]
    loggers = [logging.getLogger()] + [
        lg for lg in list(logging.Logger.manager.loggerDict.values()) if isinstance(lg, logging.Logger)
    ]
    return [h for lg in loggers for h in list(lg.handlers)]


class _Flusher:
    """One daemon thread for the process: calls each installed capture's tick() every
    flush_interval_s. Started with the first capture; idle (waiting, not polling) while none is
    installed."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._due: dict[ConsoleCapture, float] = {}  # capture -> when its next tick is due
        self._thread: threading.Thread | None = None
        self._sleeps_until = 0.0  # when the thread wakes by itself (it is waiting until then)
        self._linger_s = 0.0  # the last capture just left: wait this long before sleeping for long

    def add(self, capture: ConsoleCapture) -> None:
        with self._cond:
            due = self._due[capture] = time.monotonic() + capture.flush_interval_s
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._main, name="runstream-console", daemon=True)
                self._thread.start()
            elif due < self._sleeps_until:
                # woken only when it would sleep past this capture's first tick: a run started
                # beside others is due after them and costs the thread no wake-up
                self._cond.notify()

    def remove(self, capture: ConsoleCapture) -> None:
        with self._cond:
            self._due.pop(capture, None)
            if not self._due:  # a sweep's next run likely starts soon: its capture is due after that
                self._linger_s = capture.flush_interval_s

    def _main(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [capture for capture, at in self._due.items() if at <= now]
                for capture in due:
                    self._due[capture] = now + capture.flush_interval_s
                if not due:
                    if self._due:
                        self._sleeps_until = min(self._due.values())
                    else:  # a run started one after another adds its capture with no wake-up
                        self._sleeps_until = now + (self._linger_s or 3600.0)
                        self._linger_s = 0.0
                    self._cond.wait(self._sleeps_until - now)
                    self._sleeps_until = 0.0
                    continue
            for capture in due:  # outside the lock: a capture's stop() may wait for its tick
                capture.tick()

    def reset_after_fork(self) -> list[ConsoleCapture]:
        """In a forked child: the parent's thread is gone and its lock may have been held. Returns
        the captures that were installed (not stopped) in the parent."""
        captures = list(self._due)
        self._cond = threading.Condition(threading.Lock())
        self._due = {}
        self._thread = None
        self._sleeps_until = 0.0
        self._linger_s = 0.0
        return captures


_FLUSHER = _Flusher()


def _after_fork_in_child() -> None:
    """A forked child's tees only write through: the parent's run owns the capture (and the
    flusher thread does not exist here)."""
    for capture in _FLUSHER.reset_after_fork():
        for _, tee in capture._tees:
            tee.detach_capture()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
