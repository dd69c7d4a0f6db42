"""The run page's console tab: the captured stdout / stderr of the run's ranks (runstream.init
captures them unless console="off"), the last N lines, filtered by rank, stream and a search
text (matched on the server, case-insensitive), reloaded every few seconds while the page is live.
Kept apart from views/run.py, which only calls `show`. Lines are shown in a code block: text,
never markup."""

from __future__ import annotations

import streamlit as st

from runstream.errors import ServerError
from runstream_dashboard import console_queries as cq
from runstream_dashboard.safe_text import md

LINE_CHOICES = (100, 500, 1000, 5000)
STREAMS = {"stdout + stderr": None, "stdout": "stdout", "stderr": "stderr"}
REFRESH_S = 5


def show(project: str, run_id: str, world_size: int, live: bool) -> None:
    ranks = list(range(max(1, world_size)))
    c_rank, c_stream, c_search, c_lines = st.columns([1, 1, 3, 1])
    rank = c_rank.selectbox(
        "Rank", ["all", *ranks], key="console_rank", help="Each rank's process captures its own console"
    )
    stream = c_stream.selectbox("Stream", list(STREAMS), key="console_stream")
    search = c_search.text_input(
        "Search lines", key="console_search", placeholder="text in a line (case-insensitive)"
    ).strip()
    limit = c_lines.selectbox("Last lines", LINE_CHOICES, index=2, key="console_limit")

    @st.fragment(run_every=REFRESH_S if live else None)
    def lines() -> None:
        chosen = () if rank == "all" else (int(rank),)
        try:
            tail = cq.console_tail(project, run_id, chosen, STREAMS[stream], search, int(limit))
        except ServerError as exc:
            st.error(md(exc.details))
            return
        if tail.lines.empty:
            if search:
                st.caption(f"No console line contains {md(repr(search))}.")
            else:
                st.caption('No console output captured (runstream.init(console="off") turns capture off).')
            return
        shown = len(tail.lines)
        noun = "line" if shown == 1 else "lines"
        what = f"Last {shown:,} {noun}" if tail.more else f"{shown:,} {noun}"
        if search:
            what += f" containing {md(repr(search))}"
        st.caption(what + (f" · refreshed every {REFRESH_S} s" if live else ""))
        transcript = cq.console_text(tail.lines, show_rank=tail.lines["rank"].nunique() > 1)
        with st.container(key="console_lines"):  # the browser tests find the transcript by this key
            st.code(transcript, language=None, height=520)

    lines()
