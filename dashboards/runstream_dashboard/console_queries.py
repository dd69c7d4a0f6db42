"""The run page's console loader: GetConsole through the one runstream.Api of queries.py
(`queries.api()`), shaped into a DataFrame and cached per viewer like queries.py's loaders
(login.per_viewer; a 2 s TTL, so a live page sees new lines at its next refresh). A failed call
raises runstream.errors.ServerError, as in queries.py."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from runstream_dashboard import login
from runstream_dashboard.queries import api

LINE_COLUMNS = ["rank", "stream", "line", "time", "text"]


@dataclass(frozen=True)
class ConsoleTail:
    lines: pd.DataFrame  # LINE_COLUMNS, in print order (time, rank, line)
    more: bool  # more lines match than were loaded


@login.per_viewer(ttl=2, show_spinner=False, max_entries=100)
def console_tail(
    project: str, run_id: str, ranks: tuple[int, ...], stream: str | None, search: str, limit: int
) -> ConsoleTail:
    """The last `limit` lines of the run's console matching the filters (ranks empty: all)."""
    lines, more = api().console_page(
        project,
        run_id,
        rank=list(ranks) or None,
        stream=stream,
        search=search or None,
        limit=limit,
        tail=True,
    )
    frame = pd.DataFrame(
        {
            "rank": [x.rank for x in lines],
            "stream": [x.stream for x in lines],
            "line": [x.line for x in lines],
            "time": pd.to_datetime([x.time_ms for x in lines], unit="ms"),
            "text": [x.text for x in lines],
        },
        columns=LINE_COLUMNS,
    )
    return ConsoleTail(frame, more)


def console_text(lines: pd.DataFrame, show_rank: bool) -> str:
    """The lines as a console transcript: `[rank] ` when several ranks are shown, `!` before
    stderr lines."""
    out = []
    for rank, stream, text in zip(lines["rank"], lines["stream"], lines["text"], strict=True):
        prefix = f"[{rank}] " if show_rank else ""
        out.append(f"{prefix}{'! ' if stream == 'stderr' else '  '}{text}")
    return "\n".join(out)
