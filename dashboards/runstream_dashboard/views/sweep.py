"""Sweep view: parallel coordinates of params → a chosen metric over the runs a filter selects
(e.g. one group), plus the best runs."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from runstream.errors import ServerError
from runstream_dashboard import charts, state
from runstream_dashboard import queries as q
from runstream_dashboard.safe_text import md, md_code, md_code_block

MAX_RUNS = 2000
MAX_PARAMS = 40

project = state.require_project()
st.title(f"Sweep · {md(project)}")

try:
    keys = q.list_keys(project)
except ServerError as exc:
    st.error(md(exc.details))
    st.stop()
if not keys.metric_keys or not keys.param_keys:
    st.info("A sweep view needs runs with params and metrics.")
    st.stop()

c_filter, c_metric, c_goal = st.columns([5, 3, 2], vertical_alignment="bottom")
filter_text = c_filter.text_input(
    "Runs (filter)", key="sweep_filter", placeholder='group = "grid-1" and state = "finished"'
).strip()
filter_error = c_filter.empty()
preferred = sorted(keys.metric_keys, key=lambda k: (not k.startswith("val"), k))
metric = c_metric.selectbox("Metric", preferred, key=f"sweep_metric:{project}")
goal = c_goal.segmented_control("Best is", ["max", "min"], default="max", key="sweep_goal") or "max"

param_keys = tuple(keys.param_keys[:MAX_PARAMS])
try:
    page = q.search_runs(
        project,
        filter_text,
        (f"-metrics.{metric}" if goal == "max" else f"metrics.{metric}",),
        MAX_RUNS,
        "",
        param_keys,
        (metric,),
    )
except ServerError as exc:
    if exc.unreachable:
        st.error(md(exc.details))
    else:
        filter_error.error(f"**{md(exc.code)}**\n\n{md_code_block(exc.details)}", icon=":material/error:")
    st.stop()

runs = page.runs
metric_col = f"metrics.{metric}"
runs = runs[pd.to_numeric(runs[metric_col], errors="coerce").notna()]
if runs.empty:
    st.info(f"No run matching the filter has logged {md_code(metric)}.")
    st.stop()


def _is_swept(values: pd.Series) -> bool:
    """Varies across runs, but is not unique per run (seeds, paths): a real sweep axis."""
    distinct = values.astype(str).nunique()
    return values.notna().any() and distinct > 1 and (distinct < len(values) or len(values) <= 3)


varying = [f"params.{k}" for k in param_keys if _is_swept(runs[f"params.{k}"])]
dims = st.multiselect(
    "Params (axes)",
    [f"params.{k}" for k in param_keys],
    default=varying[:10],
    format_func=lambda c: c.removeprefix("params."),
    key=f"sweep_dims:{project}:{filter_text}",
)
if not dims:
    st.info("Choose at least one param.")
    st.stop()

st.caption(
    f"{len(runs):,} runs"
    + (f" of {page.total:,} (the best {MAX_RUNS:,} are shown)" if page.total > len(runs) else "")
    + f" · color = {md(metric)}"
)
st.plotly_chart(charts.parallel_coordinates(runs, dims, metric_col), width="stretch", key="sweep_parcoords")

st.subheader(f"Best runs by {md(metric)} ({goal})")
st.dataframe(
    runs[["name", "state", *dims, metric_col]].head(10),
    hide_index=True,
    width="stretch",
    column_config={
        metric_col: st.column_config.NumberColumn(metric, format="%.5g"),
        **{d: st.column_config.Column(d.removeprefix("params.")) for d in dims},
    },
)
