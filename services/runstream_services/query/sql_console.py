"""SQL text of GetConsole: the `console_lines` table of migration 0011, read with FINAL so a line
stored twice (a replay past the dedup window) is one row. Every value is bound; the search is a
case-insensitive substring match (positionCaseInsensitiveUTF8), so no text of the caller is a
pattern."""

from __future__ import annotations

from dataclasses import dataclass

from runstream_services.query.sql import Query

LINE_COLUMNS = ("rank", "stream", "line", "time_ms", "text")


@dataclass(frozen=True)
class ConsoleFilter:
    """Which lines of one run to read."""

    project: str
    run_id: str
    ranks: tuple[int, ...] = ()  # empty: every rank
    stream: int = 0  # 1 stdout, 2 stderr, 0 both
    search: str = ""  # substring, case-insensitive; empty: every line
    after: tuple[int, int, int] | None = None  # (time_ms, rank, line): only lines after it
    tail: bool = False  # the last `limit` lines instead of the first


def console_lines(db: str, f: ConsoleFilter, limit: int) -> Query:
    """LINE_COLUMNS (stream as 1 / 2) of at most `limit` matching lines: the first ones in
    (time_ms, rank, line) order, or for a tail the last ones, newest first."""
    params: dict[str, object] = {"project": f.project, "run": f.run_id, "limit": limit}
    where = "project = {project:String} AND run_id = {run:String}"
    if f.ranks:
        where += " AND rank IN {ranks:Array(UInt16)}"
        params["ranks"] = list(f.ranks)
    if f.stream:
        where += " AND toInt8(stream) = {stream:Int8}"
        params["stream"] = f.stream
    if f.search:
        where += " AND positionCaseInsensitiveUTF8(text, {search:String}) > 0"
        params["search"] = f.search
    if f.after is not None:
        where += " AND (time_ms, rank, line) > ({at:Int64}, {ar:UInt16}, {al:UInt64})"
        params["at"], params["ar"], params["al"] = f.after
    order = (
        "time_ms DESC, rank DESC, line DESC, client_id DESC" if f.tail else "time_ms, rank, line, client_id"
    )
    return Query(
        f"SELECT rank, toInt8(stream), line, time_ms, text FROM {db}.console_lines FINAL "
        f"WHERE {where} ORDER BY {order} LIMIT {{limit:UInt32}}",
        params,
    )
