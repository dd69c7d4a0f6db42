"""Reading a run's captured console (QueryService.GetConsole), a mixin of runstream.Api on the
query channel (same auth header, deadlines and typed errors):

    api = runstream.Api()
    api.console("mnist", run_id)                                  # the first 1,000 lines, in order
    api.console("mnist", run_id, rank=1, search="nan", tail=True)  # the last matching lines of rank 1
    for line in api.iter_console("mnist", run_id, stream="stderr"):  # every line, paged
        print(line.rank, line.text)

Lines are ordered by (time_ms, rank, line); `line` numbers one SDK process's output (stdout and
stderr share the count)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from runstream.errors import InvalidValueError
from runstream.v1 import query_pb2, types_pb2

_STREAMS = {None: 0, "stdout": types_pb2.CONSOLE_STREAM_STDOUT, "stderr": types_pb2.CONSOLE_STREAM_STDERR}
_NAMES = {types_pb2.CONSOLE_STREAM_STDOUT: "stdout", types_pb2.CONSOLE_STREAM_STDERR: "stderr"}


@dataclass(frozen=True)
class ConsoleLine:
    """One captured line of a run's console."""

    rank: int
    stream: str  # "stdout" or "stderr"
    line: int  # its number in the capturing process's output
    time_ms: int  # unix ms when it was printed
    text: str


def _ranks(rank: int | Iterable[int] | None) -> list[int]:
    if rank is None:
        return []
    if isinstance(rank, int):
        return [rank]
    return [int(r) for r in rank]


class ConsoleCalls:
    """GetConsole over a QueryClient's channel (a mixin; expects QueryClient._call)."""

    def console_page(
        self: Any,
        project: str,
        run_id: str,
        *,
        rank: int | Iterable[int] | None = None,
        stream: str | None = None,
        search: str | None = None,
        limit: int = 1000,
        tail: bool = False,
        after: tuple[int, int, int] | None = None,
    ) -> tuple[list[ConsoleLine], bool]:
        """One GetConsole answer: (lines, more), `more` when further lines match beyond `limit`."""
        if stream not in _STREAMS:
            raise InvalidValueError(f"stream={stream!r}: use 'stdout', 'stderr' or None for both")
        request = query_pb2.GetConsoleRequest(
            project=project, run_id=run_id, ranks=_ranks(rank), stream=_STREAMS[stream], search=search or "",
            limit=limit, tail=tail,
        )  # fmt: skip
        if after is not None:
            request.after_time_ms, request.after_rank, request.after_line = after
            request.has_after = True
        answer = self._call("GetConsole", request)
        lines = [
            ConsoleLine(rank=r, stream=_NAMES.get(s, "stdout"), line=n, time_ms=t, text=x)
            for r, s, n, t, x in zip(
                answer.ranks, answer.streams, answer.line_numbers, answer.times_ms, answer.texts, strict=True
            )
        ]
        return lines, answer.more

    def console(
        self: Any,
        project: str,
        run_id: str,
        rank: int | Iterable[int] | None = None,
        search: str | None = None,
        *,
        stream: str | None = None,
        limit: int = 1000,
        tail: bool = False,
    ) -> list[ConsoleLine]:
        """Captured console lines of a run, in print order: the first `limit` ones (at most
        10,000), or with tail=True the last ones. `rank`: one rank or several (None: all);
        `stream`: "stdout" or "stderr" (None: both); `search`: only lines containing this text,
        case-insensitive."""
        lines, _ = self.console_page(
            project, run_id, rank=rank, stream=stream, search=search, limit=limit, tail=tail
        )
        return lines

    def iter_console(
        self: Any,
        project: str,
        run_id: str,
        rank: int | Iterable[int] | None = None,
        search: str | None = None,
        *,
        stream: str | None = None,
        page_size: int = 5000,
    ) -> Iterator[ConsoleLine]:
        """Every matching console line of a run, in print order, fetched `page_size` at a time."""
        after = None
        while True:
            lines, more = self.console_page(
                project, run_id, rank=rank, stream=stream, search=search, limit=page_size, after=after
            )
            yield from lines
            if not more or not lines:
                return
            last = lines[-1]
            after = (last.time_ms, last.rank, last.line)
