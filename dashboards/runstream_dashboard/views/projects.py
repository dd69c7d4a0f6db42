"""Projects: run counts and last activity; picking one opens its runs."""

from __future__ import annotations

import streamlit as st

from runstream.errors import ServerError
from runstream_dashboard import queries as q
from runstream_dashboard import state
from runstream_dashboard.safe_text import md

st.title("Projects")
try:
    projects = q.list_projects()
except ServerError as exc:
    st.error(md(exc.details))
    st.stop()

if projects.empty:
    st.info("The server holds no runs yet. Log one with `runstream.init(project=...)`.")
    st.stop()

c1, c2, c3 = st.columns(3)
c1.metric("Projects", len(projects))
c2.metric("Runs", int(projects["runs"].sum()))
c3.metric(
    "Last activity",
    f"{projects['last_activity'].max():%Y-%m-%d %H:%M}" if projects["last_activity"].notna().any() else "—",
)

event = st.dataframe(
    projects,
    hide_index=True,
    width="stretch",
    on_select="rerun",
    selection_mode="single-row",
    key="projects_table",
    column_config={
        "project": st.column_config.TextColumn("Project"),
        "runs": st.column_config.NumberColumn("Runs", format="%d"),
        "last_activity": st.column_config.DatetimeColumn("Last activity", format="YYYY-MM-DD HH:mm:ss"),
    },
)
st.caption("Select a project to open its runs.")
rows = event.selection.rows if event else []
if rows:
    chosen = projects.iloc[rows[0]]["project"]
    st.session_state[state.SELECTED_KEY] = []
    st.switch_page("views/runs.py", query_params={"project": chosen})
