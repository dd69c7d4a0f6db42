"""Loaders and actions for saved views, grouped curves and the per-rank views (issue 16, item 4):
calls of the one runstream.Api of queries.py (`queries.api()`), cached per viewer with short TTLs.
A failed call raises runstream.errors.ServerError."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from runstream.saved_views_client import SavedView
from runstream_dashboard import curve_groups, login
from runstream_dashboard import queries as q

RANK_SERIES_COLUMNS = ["key", "rank", "x", "y", "total_points"]
GROUP_BY_RUN_GROUP = "group"


@login.per_viewer(ttl=5, show_spinner=False)
def saved_views(project: str) -> list[SavedView]:
    return q.api().saved_views(project)


def save_view(project: str, name: str, state: dict) -> SavedView:
    saved = q.api().save_view(project, name, state)
    saved_views.clear()
    return saved


def delete_view(project: str, name: str) -> None:
    q.api().delete_view(project, name)
    saved_views.clear()


def _quoted(text: str) -> str:
    return json.dumps(text)  # the filter language's strings are double-quoted with JSON escapes


@login.per_viewer(ttl=10, show_spinner=False)
def group_labels(project: str, run_ids: tuple[str, ...], group_by: str) -> dict[str, str]:
    """run_id -> the legend name of its group under `group_by` ("group", "params.<key>" or
    "tags.<key>"); runs without a value are in curve_groups.NO_VALUE."""
    if not run_ids:
        return {}
    param = group_by.removeprefix("params.") if group_by.startswith("params.") else ""
    answer = q.api().search_runs(
        project,
        filter=f"run_id in ({', '.join(_quoted(r) for r in run_ids)})",
        page_size=len(run_ids),
        param_keys=[param] if param else [],
        include_config=bool(param),
    )
    out = {}
    for run in answer.runs:
        if group_by == GROUP_BY_RUN_GROUP:
            value = run.group
        elif param:
            value = q.cell_value(run.config[param]) if param in run.config else None
        else:
            value = run.tags.get(group_by.removeprefix("tags."))
        out[run.run_id] = curve_groups.group_label(value)
    return out


@login.per_viewer(ttl=2, show_spinner=False)
def rank_series(
    project: str,
    run_id: str,
    keys: tuple[str, ...],
    system: bool = False,
    x_axis: str = "step",
    max_points: int = 1000,
    downsampling: str = "minmax",
    x_range: tuple[float, float] | None = None,
) -> pd.DataFrame:
    """One series per (key, rank) of one run: RANK_SERIES_COLUMNS, one row per point; `x_range`
    limits it to a window of the x axis."""
    if not keys:
        return pd.DataFrame(columns=RANK_SERIES_COLUMNS)
    series = q.api().series_arrays(
        project, (run_id,), keys, max_points, downsampling=downsampling, x_axis=q.X_AXES[x_axis],
        kind="system" if system else "user", all_ranks=True, x_range=x_range, timeout_s=q.SERIES_TIMEOUT_S,
    )  # fmt: skip
    if not series:
        return pd.DataFrame(columns=RANK_SERIES_COLUMNS)
    sizes = [len(s.x) for s in series]
    return pd.DataFrame(
        {
            "key": pd.Series(np.repeat(np.array([s.key for s in series], dtype=object), sizes), dtype="str"),
            "rank": np.repeat(np.array([s.rank for s in series], dtype=np.int64), sizes),
            "x": np.concatenate([s.x for s in series]),
            "y": np.concatenate([s.y for s in series]),
            "total_points": np.repeat(np.array([s.total_points for s in series], dtype=np.int64), sizes),
        }
    )
