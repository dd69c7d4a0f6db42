"""Compare 2+ runs (/compare?project=<p>&runs=<id>,<id>): the config keys that differ,
highlighted, their metric summaries side by side, one metric overlaid, and one media key side
by side at a chosen step."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from runstream.errors import ServerError
from runstream_dashboard import charts, curves_section, media_section, state
from runstream_dashboard import queries as q
from runstream_dashboard.safe_text import md

MAX_COMPARED = 10
HIGHLIGHT = "background-color: rgba(255, 176, 0, 0.38)"
ROW_HIGHLIGHT = "background-color: rgba(255, 196, 0, 0.12)"

project = state.require_project()
st.title(f"Compare · {md(project)}")

try:
    recent = q.search_runs(project, "", ("-start",), 500).runs
except ServerError as exc:
    st.error(md(exc.details))
    st.stop()

from_url = [r for r in (st.query_params.get("runs") or "").split(",") if r]
wanted = from_url or state.selected_runs()
names = dict(zip(recent["run_id"], recent["name"], strict=True))
for run_id in wanted:
    names.setdefault(run_id, state.label(run_id))

chosen = st.multiselect(
    "Runs",
    list(names),
    default=[r for r in wanted if r in names][:MAX_COMPARED],
    format_func=lambda r: f"{names.get(r, r)} · {r[:8]}",
    max_selections=MAX_COMPARED,
    key=f"compare_runs:{project}:{','.join(wanted)}",
)
st.query_params["runs"] = ",".join(chosen)
if len(chosen) < 2:
    st.info("Pick two or more runs (or select them in the Runs table and press *Compare selected*).")
    st.stop()

details = {}
for run_id in chosen:
    try:
        details[run_id] = q.get_run(project, run_id)
    except ServerError as exc:
        st.error(md(f"{run_id}: {exc.details}"))
        st.stop()

labels = {}
for run_id, run in details.items():
    label = run.info["name"]
    labels[run_id] = label if label not in labels.values() else f"{label} · {run_id[:6]}"

only_different = st.toggle("Only keys that differ", value=True, key="compare_only_diff")
diff = charts.config_diff({labels[r]: d.config for r, d in details.items()}, only_different=only_different)
st.subheader("Config")
n_diff = int(diff["differs"].sum()) if not diff.empty else 0
st.caption(f"{n_diff} differing keys; values that differ from the first run are highlighted")
if diff.empty:
    st.success("The configs are identical.")
else:
    shown = diff.drop(columns=["differs"])
    first = shown.columns[0]

    def _highlight(row: pd.Series) -> list[str]:
        """Differing rows get a light band; cells that differ from the first run a strong one."""
        if not diff.loc[row.name, "differs"]:
            return [""] * len(row)
        return [HIGHLIGHT if col != first and row[col] != row[first] else ROW_HIGHLIGHT for col in row.index]

    styled = shown.style.apply(_highlight, axis=1)
    st.dataframe(styled, width="stretch", key="compare_config")

st.subheader("Metrics (last value)")
summary = pd.DataFrame({labels[r]: d.metrics.set_index("key")["last"] for r, d in details.items()})
if summary.empty:
    st.caption("No metrics logged.")
else:
    summary.index.name = "metric"
    st.dataframe(summary.style.format("{:.5g}", na_rep="—"), width="stretch", key="compare_metrics")
    pick_metric, pick_group = st.columns([3, 2], vertical_alignment="bottom")
    metric = pick_metric.selectbox("Overlay", list(summary.index), key=f"compare_metric:{project}")
    try:
        group_by = curves_section.group_by_control(pick_group, q.list_keys(project), key="compare_group")
        series = q.metric_series(project, tuple(chosen), (metric,), "step", 1000)
    except ServerError as exc:
        st.error(md(exc.details))
        st.stop()
    groups = curves_section.groups(project, tuple(chosen), group_by) if group_by else None
    if groups is not None:  # a mean line with a min/max band per group
        fig = curves_section.grouped_figure(series, metric, groups, "step", 0.0, False)
    else:
        fig = charts.learning_curves(series, metric, labels)
    st.plotly_chart(fig, width="stretch", key="compare_curve")

st.subheader("Media")  # one media key of the runs side by side at one step (media_section.py)
media_section.show_compare(project, chosen, labels)
