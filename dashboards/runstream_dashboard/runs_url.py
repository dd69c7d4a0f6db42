"""Keeps the runs page's widgets and its URL in step (url_state names the parameters).

Before the widgets are drawn, `open_from_url` puts a view found in the URL into the widgets'
session state, when it is not the view this session wrote there last: a link opened, a reload,
or a saved view opened (`open_view`). After the widgets, `write_url` puts the view they show into
the URL, so copying the address bar copies the view. Widgets not drawn in a run (the curve
controls while no run is selected) keep the URL's value."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st

from runstream_dashboard import url_state
from runstream_dashboard.url_state import RunsView

_WRITTEN = "_runs_url_written"  # (project, the query this session last put in the URL)
_TABLE_SEEN = "_runs_table_selection_seen"
CURVE_RUNS_KEY = "curve_runs"


def widget_keys(project: str) -> dict[str, str]:
    """RunsView field -> the key of the widget that shows it."""
    return {
        "filter": "runs_filter",
        "sort": "runs_sort",
        "desc": "runs_desc",
        "rows": "runs_page_size",
        "params": f"runs_param_cols:{project}",
        "metrics": f"runs_metric_cols:{project}",
        "curves": f"curve_metrics:{project}",
        "runs": CURVE_RUNS_KEY,
        "x": "curve_x",
        "smooth": "curve_smoothing",
        "log": "curve_log",
        "group": "curve_group",
    }


def url_view() -> RunsView:
    return url_state.from_query(st.query_params.get_all)


def _push(view: RunsView, project: str) -> None:
    for name, key in widget_keys(project).items():
        value = getattr(view, name)
        if value is None:  # the page's default columns / curves
            st.session_state.pop(key, None)
        else:
            st.session_state[key] = list(value) if isinstance(value, tuple) else value


def open_from_url(project: str) -> RunsView:
    """The URL's view, put into the widgets unless this session wrote it (call before the widgets)."""
    view = url_view()
    if st.session_state.get(_WRITTEN) != (project, url_state.to_query(view)):
        _push(view, project)
        st.session_state[_WRITTEN] = (project, url_state.to_query(view))
    return view


def open_view(project: str, state: dict[str, Any]) -> None:
    """Shows a saved view: its parameters replace the URL's (call from a button's callback)."""
    view = url_state.from_json(state)
    _push(view, project)
    _write(project, view)


def kwargs(key: str, **default: Any) -> dict[str, Any]:
    """A widget's default argument, left out when its session state already holds a value (a
    default next to a value set through session state draws a warning on the page)."""
    return {} if key in st.session_state else default


def keep_known(key: str, options: Sequence) -> None:
    """Drops values a multiselect's options lack (a link made when other keys existed)."""
    if key in st.session_state:
        st.session_state[key] = [v for v in st.session_state[key] if v in options]


def follow_table(selection: list[str]) -> None:
    """The runs drawn follow the table's selection whenever that selection changes; a view from
    a link or a saved view keeps its runs until the table is clicked."""
    seen = st.session_state.get(_TABLE_SEEN)
    st.session_state[_TABLE_SEEN] = list(selection)
    if list(selection) != (seen if seen is not None else []):
        st.session_state[CURVE_RUNS_KEY] = list(selection)


def current(project: str, defaults: dict[str, tuple[str, ...]]) -> RunsView:
    """The view the widgets show (a widget not drawn this run: the URL's value); a column or
    curve choice equal to the page's default (`defaults`) is kept as None, so links stay short."""
    fallback = url_view()
    values: dict[str, Any] = {}
    for name, key in widget_keys(project).items():
        if key not in st.session_state:
            values[name] = getattr(fallback, name)
            continue
        value = st.session_state[key]
        if isinstance(value, list):
            value = tuple(value)
            if name in defaults and value == tuple(defaults[name]):
                value = None
        values[name] = value
    if values["x"] is None:
        values["x"] = url_state.DEFAULT.x
    return url_state.from_json(url_state.to_json(RunsView(**values)))  # checked like a link


def _write(project: str, view: RunsView) -> None:
    query = url_state.to_query(view)
    for name in widget_keys(project):
        if name in query:
            if st.query_params.get_all(name) != (
                query[name] if isinstance(query[name], list) else [query[name]]
            ):
                st.query_params[name] = query[name]
        elif name in st.query_params:
            del st.query_params[name]
    st.session_state[_WRITTEN] = (project, query)


def write_url(project: str, defaults: dict[str, tuple[str, ...]]) -> RunsView:
    """Puts the widgets' view into the URL; returns it (what a saved view stores)."""
    view = current(project, defaults)
    _write(project, view)
    return view
