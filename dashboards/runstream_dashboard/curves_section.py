"""Parts of the runs page's learning curves: names of runs drawn that are not on the table's page
(a link or a saved view can name any run), the "Group by" control, and grouped curves (a mean
line with a min/max band per group; curve_groups computes them)."""

from __future__ import annotations

import json

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from runstream.errors import ServerError
from runstream_dashboard import curve_groups, view_charts
from runstream_dashboard import queries as q
from runstream_dashboard import view_queries as vq
from runstream_dashboard.safe_text import md

NO_GROUPING = ""


def run_info(project: str, run_ids: tuple[str, ...], on_page: set[str]) -> dict[str, tuple[str, str]]:
    """run_id -> (name, state) of the runs in `run_ids` not on the table's page."""
    wanted = tuple(r for r in run_ids if r not in on_page)
    if not wanted:
        return {}
    try:
        found = q.search_runs(
            project, f"run_id in ({', '.join(json.dumps(r) for r in wanted)})", (), len(wanted)
        ).runs
    except ServerError:
        return {}
    return dict(zip(found["run_id"], zip(found["name"], found["state"], strict=True), strict=True))


def _group_label(option: str) -> str:
    if option == NO_GROUPING:
        return "— (a line per run)"
    if option == vq.GROUP_BY_RUN_GROUP:
        return "run group"
    return option


def group_by_control(column, keys: q.Keys, key: str = "curve_group") -> str:
    """The "Group by" selectbox: nothing, the run group, a config key or a tag."""
    options = [
        NO_GROUPING,
        vq.GROUP_BY_RUN_GROUP,
        *[f"params.{k}" for k in keys.param_keys],
        *[f"tags.{k}" for k in keys.tag_keys],
    ]
    if st.session_state.get(key) not in options:
        st.session_state.pop(key, None)  # a link's key this project lacks
    return (
        column.selectbox(
            "Group by",
            options,
            format_func=_group_label,
            key=key,
            help="Draw each group's mean per step with its min..max band, instead of a line per run",
        )
        or NO_GROUPING
    )


def groups(project: str, run_ids: tuple[str, ...], group_by: str) -> dict[str, str] | None:
    """run_id -> group name, or None (with a warning) when the server did not answer."""
    try:
        return vq.group_labels(project, run_ids, group_by)
    except ServerError as exc:
        st.warning(f"Could not group the runs: {md(exc.details)}")
        return None


def grouped_figure(
    series: pd.DataFrame, key: str, groups: dict[str, str], x_axis: str, smoothing: float, log_y: bool
) -> go.Figure:
    part = series[series["key"] == key]
    return view_charts.grouped_curves(
        curve_groups.group_curves(part, groups), key, x_axis=x_axis, smoothing=smoothing, log_y=log_y
    )
