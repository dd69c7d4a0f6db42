"""The run page's Ranks tab for multi-rank runs: a metric with one line per rank (rank overlay),
the system metrics of every rank, and the straggler view (for a per-step metric such as step
time: the slowest rank at each step and how far behind the median rank it was)."""

from __future__ import annotations

import streamlit as st

from runstream.errors import ServerError
from runstream_dashboard import queries as q
from runstream_dashboard import stragglers, view_charts
from runstream_dashboard import view_queries as vq
from runstream_dashboard.safe_text import md, md_code

MAX_RANK_CHARTS = 8
STRAGGLER_POINTS = 500_000  # points read over all ranks: a window of the newest steps when a run has more
MAX_SERIES_POINTS = 100_000  # the server's most points per series
MAX_DRAWN_STEPS = 2_000  # steps the straggler chart draws (the furthest behind of each stretch)
CHART_POINTS = 200_000  # points of one per-rank chart over all its ranks
SLOW_HINTS = ("step_time", "time", "latency", "wait", "duration")


def _default_straggler_key(keys: tuple[str, ...]) -> int:
    for hint in SLOW_HINTS:
        for i, key in enumerate(keys):
            if hint in key.lower():
                return i
    return 0


def _points_per_rank(ranks: int) -> int:
    """Points per series of the per-rank charts: 1,000, fewer past 200 ranks (a chart of 1,000
    ranks draws 200 points each), so one chart stays near 200,000 points."""
    return max(50, min(1000, CHART_POINTS // max(1, ranks)))


def _overlay(project: str, run_id: str, metric_keys: tuple[str, ...], ranks: int) -> None:
    st.subheader("Metrics per rank")
    chosen = st.multiselect(
        "Metrics", metric_keys, default=list(metric_keys[:2]), key="rank_overlay_metrics",
        max_selections=MAX_RANK_CHARTS,
    )  # fmt: skip
    if not chosen:
        return
    series = vq.rank_series(project, run_id, tuple(chosen), max_points=_points_per_rank(ranks))
    grid = st.columns(2)
    for i, key in enumerate(chosen):
        fig = view_charts.rank_lines(series, key)
        grid[i % 2].plotly_chart(fig, width="stretch", key=f"rank_overlay:{key}")


def _system(project: str, run_id: str, system_keys: tuple[str, ...], ranks: int) -> None:
    st.subheader("System metrics of every rank")
    if not system_keys:
        st.caption("No system metrics logged.")
        return
    chosen = st.multiselect(
        "System metrics", system_keys, default=list(system_keys[:4]), key="rank_system_metrics",
        max_selections=MAX_RANK_CHARTS,
    )  # fmt: skip
    if not chosen:
        return
    series = vq.rank_series(
        project, run_id, tuple(chosen), system=True, x_axis="relative", max_points=_points_per_rank(ranks)
    )
    grid = st.columns(2)
    for i, key in enumerate(chosen):
        fig = view_charts.rank_lines(series, key, x_axis="relative")
        grid[i % 2].plotly_chart(fig, width="stretch", key=f"rank_system:{key}")


def _straggler(project: str, run_id: str, metric_keys: tuple[str, ...], ranks: int) -> None:
    st.subheader("Stragglers")
    c1, c2 = st.columns([3, 2], vertical_alignment="bottom")
    key = c1.selectbox(
        "Per-step metric", metric_keys, index=_default_straggler_key(metric_keys), key="straggler_metric",
        help="A metric every rank logs each step, e.g. step time: the slowest rank per step is named",
    )  # fmt: skip
    higher = c2.toggle(
        "Higher is slower", value=True, key="straggler_higher", help="Off for throughput-like metrics"
    )
    summary = q.get_run(project, run_id).metrics.set_index("key")
    last = int(summary.loc[key, "last_step"]) if key in summary.index else 0
    first = 0  # steps count from 0 (or 1): a window is needed only when the newest steps do not all fit
    lo, hi = stragglers.step_window(first, last, ranks, STRAGGLER_POINTS, MAX_SERIES_POINTS)
    x_range = None
    if (lo, hi) != (first, last):
        lo, hi = st.slider(
            "Steps", first, last, (lo, hi), key="straggler_steps",
            help=f"Every point of the window is read: at most {STRAGGLER_POINTS:,} points over all ranks",
        )  # fmt: skip
        if (lo, hi) != stragglers.step_window(lo, hi, ranks, STRAGGLER_POINTS, MAX_SERIES_POINTS):
            lo = stragglers.step_window(lo, hi, ranks, STRAGGLER_POINTS, MAX_SERIES_POINTS)[0]
            st.caption(f"Reading steps {lo:,.0f}–{hi:,.0f}: a wider window holds too many points.")
        x_range = (lo, hi)
    series = vq.rank_series(
        project, run_id, (key,), max_points=MAX_SERIES_POINTS, downsampling="none", x_range=x_range
    )
    table = stragglers.slowest_ranks(series, higher_is_slower=higher)
    if table.empty:
        st.info(f"No step of {md_code(key)} was logged by two or more ranks.")
        return
    counts = stragglers.straggler_counts(table)
    top = counts.iloc[0]
    st.markdown(
        f"Rank **{int(top['rank'])}** held the others back most: the slowest on "
        f"**{int(top['times_slowest']):,}** of {len(table):,} steps ({top['share']:.0%}), "
        f"{top['total_behind']:.4g} behind the median rank in all ({top['mean_behind']:.4g} per step)."
    )
    shown = stragglers.thin(table, MAX_DRAWN_STEPS)
    st.plotly_chart(view_charts.straggler_chart(shown, key), width="stretch", key="straggler_chart")
    if len(shown) < len(table):
        st.caption(
            f"The chart draws the step furthest behind of every {len(table) // len(shown):,} steps; the table has them all."
        )
    left, right = st.columns([2, 3])
    left.dataframe(
        counts, hide_index=True, width="stretch", key="straggler_counts",
        column_config={"share": st.column_config.NumberColumn("share", format="percent"),
                       "mean_behind": st.column_config.NumberColumn("mean behind", format="%.4g"),
                       "total_behind": st.column_config.NumberColumn("total behind", format="%.4g")},
    )  # fmt: skip
    right.dataframe(
        table.sort_values("behind", ascending=False),
        hide_index=True, width="stretch", height=300, key="straggler_table",
        column_config={c: st.column_config.NumberColumn(c.replace("_", " "), format="%.4g")
                       for c in ("value", "median", "behind", "behind_pct")},
    )  # fmt: skip


def show(project: str, run_id: str, metric_keys: tuple[str, ...], system_keys: tuple[str, ...]) -> None:
    """The Ranks tab. Sections that need several ranks say so when the run has one."""
    try:
        probe_keys = metric_keys[:1] or system_keys[:1]
        probe = vq.rank_series(project, run_id, probe_keys, system=not metric_keys, max_points=10)
        ranks = sorted(probe["rank"].unique().tolist())
        st.caption(
            f"{len(ranks)} rank{'s' if len(ranks) != 1 else ''} logged {md_code(probe_keys[0]) if probe_keys else ''}"
        )
        if metric_keys:
            _overlay(project, run_id, metric_keys, len(ranks))
        _system(project, run_id, system_keys, len(ranks))
        if metric_keys and len(ranks) > 1:
            _straggler(project, run_id, metric_keys, len(ranks))
        elif metric_keys:
            st.subheader("Stragglers")
            st.caption("The straggler view needs a run that several ranks log into.")
    except ServerError as exc:
        st.error(md(exc.details))
