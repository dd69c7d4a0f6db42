"""GetConsole, mixed into the QueryServicer (query/service.py): access checks as the other reads
(the caller's key must read the project), request -> sql_console statement -> columnar lines."""

from __future__ import annotations

from runstream.v1 import query_pb2, types_pb2
from runstream_services.errors import InvalidArgument
from runstream_services.query import sql_console

DEFAULT_CONSOLE_LIMIT = 1_000
MAX_CONSOLE_LIMIT = 10_000
MAX_SEARCH_CHARS = 1_024
MAX_RANKS = 1_024
_STREAMS = {
    types_pb2.CONSOLE_STREAM_UNSPECIFIED: 0,
    types_pb2.CONSOLE_STREAM_STDOUT: 1,
    types_pb2.CONSOLE_STREAM_STDERR: 2,
}


def console_filter(request: query_pb2.GetConsoleRequest, project: str) -> sql_console.ConsoleFilter:
    """The request's filter; raises InvalidArgument with the fix."""
    if not request.run_id:
        raise InvalidArgument("run_id is empty: name the run whose console to read")
    if len(request.run_id) > 64:
        raise InvalidArgument(f"run_id is {len(request.run_id)} characters; run ids have at most 64")
    if request.stream not in _STREAMS:
        raise InvalidArgument(
            f"stream {request.stream} is unknown: use CONSOLE_STREAM_STDOUT, CONSOLE_STREAM_STDERR or "
            "leave it unset for both"
        )
    if len(request.search) > MAX_SEARCH_CHARS:
        raise InvalidArgument(f"search is {len(request.search)} characters; the limit is {MAX_SEARCH_CHARS}")
    if len(request.ranks) > MAX_RANKS:
        raise InvalidArgument(
            f"{len(request.ranks)} ranks asked; at most {MAX_RANKS}: leave ranks empty for all"
        )
    if any(rank > 65_535 for rank in request.ranks) or request.after_rank > 65_535:
        raise InvalidArgument("ranks go from 0 to 65535")
    if request.has_after and request.tail:
        raise InvalidArgument("a tail reads the newest lines: give tail or an after cursor, not both")
    after = (request.after_time_ms, request.after_rank, request.after_line) if request.has_after else None
    return sql_console.ConsoleFilter(
        project=project,
        run_id=request.run_id,
        ranks=tuple(sorted(set(request.ranks))),
        stream=_STREAMS[request.stream],
        search=request.search,
        after=after,
        tail=request.tail,
    )


class ConsoleReads:
    """The console RPC; expects the servicer's _may_read, _rows, _require_run and db."""

    async def GetConsole(self, request, context) -> query_pb2.GetConsoleResponse:
        project = self._may_read(context, request.project)
        limit = request.limit or DEFAULT_CONSOLE_LIMIT
        if limit > MAX_CONSOLE_LIMIT:
            raise InvalidArgument(
                f"limit {limit} is over {MAX_CONSOLE_LIMIT}: page forward with the after cursor instead"
            )
        console = console_filter(request, project)
        await self._require_run(project, request.run_id)
        rows = await self._rows(sql_console.console_lines(self.db, console, limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        if console.tail:
            rows.reverse()
        return query_pb2.GetConsoleResponse(
            ranks=[r[0] for r in rows],
            streams=[r[1] for r in rows],
            line_numbers=[r[2] for r in rows],
            times_ms=[r[3] for r in rows],
            texts=[r[4] for r in rows],
            more=more,
        )
