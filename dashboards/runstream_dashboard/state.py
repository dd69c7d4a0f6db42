"""State shared by the pages: the current project (kept in the URL as ?project=), the runs
selected in the runs table, and the sidebar that picks them. Pages read; the sidebar writes."""

from __future__ import annotations

import streamlit as st

from runstream.errors import ServerError
from runstream_dashboard import queries as q
from runstream_dashboard.safe_text import md, md_code

PROJECT_KEY = "project"
SELECTED_KEY = "selected_runs"  # list of run ids, in table order
LABELS_KEY = "run_labels"  # run_id -> display name, for runs seen in the table
_SYNCED_KEY = "_project_in_url"


def sidebar() -> str | None:
    """Project picker and server status in the sidebar. Returns the current project (or None
    when the server is unreachable or holds no project yet)."""
    with st.sidebar:
        try:
            projects = q.list_projects()
        except ServerError as exc:
            st.error(md(exc.details))
            return None
        names = projects["project"].tolist()
        if not names:
            st.info("No projects yet. Log a run with the SDK, or start with `runstream up --demo`.")
            return None
        in_url = st.query_params.get(PROJECT_KEY)
        if in_url and in_url != st.session_state.get(_SYNCED_KEY) and in_url in names:
            st.session_state[PROJECT_KEY] = in_url  # the URL changed (link, switch_page, reload)
        if st.session_state.get(PROJECT_KEY) not in names:
            st.session_state[PROJECT_KEY] = names[0]
        project = st.selectbox("Project", names, key=PROJECT_KEY, on_change=_forget_selection)
        st.query_params[PROJECT_KEY] = project
        st.session_state[_SYNCED_KEY] = project
        if st.button("Refresh data", icon=":material/refresh:", width="stretch"):
            q.clear_caches()
        st.caption(f"server {md_code(q.endpoint())}")
    return project


def _forget_selection() -> None:
    st.session_state[SELECTED_KEY] = []


def project() -> str | None:
    return st.session_state.get(PROJECT_KEY)


def selected_runs() -> list[str]:
    return list(st.session_state.get(SELECTED_KEY, []))


def set_selected_runs(run_ids: list[str], labels: dict[str, str]) -> None:
    st.session_state[SELECTED_KEY] = list(run_ids)
    known = dict(st.session_state.get(LABELS_KEY, {}))
    known.update(labels)
    st.session_state[LABELS_KEY] = known


def label(run_id: str) -> str:
    return st.session_state.get(LABELS_KEY, {}).get(run_id, run_id)


def require_project() -> str:
    """The current project, or stop the page with a hint."""
    current = project()
    if not current:
        st.info("Pick a project in the sidebar once the server holds runs.")
        st.stop()
    return current
