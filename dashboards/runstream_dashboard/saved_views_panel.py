"""The runs page's saved views: save the view on screen under a name, open or delete a saved one.
Views are stored on the server per project (SavedViewService), so a team shares them; opening
one puts its filter, sort, columns, curves and grouping into the widgets and the URL."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

import streamlit as st

from runstream.errors import ServerError
from runstream_dashboard import runs_url, url_state
from runstream_dashboard import view_queries as vq
from runstream_dashboard.safe_text import md

DEFAULTS_KEY = "_runs_view_defaults"  # the page's default columns and curves, for a save's callback
_MESSAGE = "_saved_views_message"


def _save(project: str) -> None:
    name = st.session_state.get("view_name", "").strip()
    view = runs_url.current(project, st.session_state.get(DEFAULTS_KEY, {}))
    try:
        vq.save_view(project, name, url_state.to_json(view))
    except ServerError as exc:
        st.session_state[_MESSAGE] = ("error", exc.details)
        return
    st.session_state[_MESSAGE] = ("success", f"Saved view “{name}”.")
    st.session_state["view_pick"] = name


def _open(project: str, views: dict) -> None:
    name = st.session_state.get("view_pick")
    if name in views:
        runs_url.open_view(project, views[name].state)
        st.session_state[_MESSAGE] = ("success", f"Opened view “{name}”.")


def _delete(project: str) -> None:
    name = st.session_state.get("view_pick")
    try:
        vq.delete_view(project, name)
    except ServerError as exc:
        st.session_state[_MESSAGE] = ("error", exc.details)
        return
    st.session_state[_MESSAGE] = ("success", f"Deleted view “{name}”.")
    st.session_state.pop("view_pick", None)


def show(project: str) -> None:
    with st.expander(
        "Saved views", icon=":material/bookmarks:", expanded=bool(st.session_state.get(_MESSAGE))
    ):
        message = st.session_state.pop(_MESSAGE, None)
        if message:
            (st.error if message[0] == "error" else st.success)(md(message[1]))
        try:
            views = {v.name: v for v in vq.saved_views(project)}
        except ServerError as exc:
            st.caption(f"Saved views unavailable: {md(exc.details)}")
            return
        left, right = st.columns(2)
        with left:
            c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
            c1.text_input(
                "Save this view as", key="view_name", placeholder="e.g. lr sweep · val curves", max_chars=200
            )
            c2.button(
                "Save", key="view_save", icon=":material/bookmark_add:", on_click=_save, args=(project,)
            )
        with right:
            if not views:
                st.caption("No saved views in this project yet.")
                return
            if st.session_state.get("view_pick") not in views:
                st.session_state.pop("view_pick", None)
            c1, c2, c3 = st.columns([2.2, 1, 1.15], vertical_alignment="bottom")
            picked = c1.selectbox("Saved views", list(views), key="view_pick")
            c2.button(
                "Open",
                key="view_open",
                icon=":material/open_in_browser:",
                on_click=_open,
                args=(project, views),
            )
            c3.button(
                "Delete", key="view_delete", icon=":material/delete:", on_click=_delete, args=(project,)
            )
            view = views[picked]
            when = datetime.fromtimestamp(view.saved_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
            link = "./runs?" + urlencode(
                {"project": project, **url_state.to_query(url_state.from_json(view.state))}, doseq=True
            )
            st.caption(f"saved by {md(view.saved_by)} · {when} · [link to this view]({link})")
