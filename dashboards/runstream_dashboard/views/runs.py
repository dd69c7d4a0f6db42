"""Runs table (server-side filter, sort and pages, so it stays fast at 10,000+ runs) and the
learning curves of the runs selected in it."""

from __future__ import annotations

from urllib.parse import urlencode

import streamlit as st

from runstream.errors import ServerError
from runstream_dashboard import charts, state
from runstream_dashboard import queries as q
from runstream_dashboard.safe_text import md, md_code, md_code_block

FILTER_HELP = (
    "Filter language, evaluated on the server: `params.lr > 0.01 and metrics.val_acc > 0.8`, "
    '`tags.dataset = "v2.1"`, `state in ("failed", "crashed")`, `name ~ "adam"`; '
    "fields params.*, config.*, metrics.* (.min/.max/.count), tags.*, state, name, group, job_type, "
    "user, host, start, end; operators = != < <= > >= ~ in, and, or, not, ( )."
)
BASE_SORTS = ["start", "name", "state", "group", "end"]
DEFAULT_PARAM_COLUMNS = 8
DEFAULT_METRIC_COLUMNS = 6
MAX_PROBED_PARAMS = 40
MAX_PLOTTED_RUNS = 50

project = state.require_project()

try:
    keys = q.list_keys(project)
except ServerError as exc:
    st.error(md(exc.details))
    st.stop()

st.title(f"Runs · {md(project)}")

# ---------------------------------------------------------------- controls
col_filter, col_sort, col_dir, col_size = st.columns([6, 2, 1, 1], vertical_alignment="bottom")
filter_text = col_filter.text_input(
    "Filter",
    key="runs_filter",
    placeholder='params.lr > 0.001 and metrics.val_acc > 0.8 and datasets.imagenet = "v2.1"',
    help=FILTER_HELP,
).strip()
filter_error = col_filter.empty()


def _varying_params(project: str, param_keys: tuple[str, ...]) -> list[str]:
    """Params that differ among the newest runs: the columns worth showing by default."""
    try:
        recent = q.search_runs(project, "", ("-start",), 100, "", param_keys[:MAX_PROBED_PARAMS], ()).runs
    except ServerError:
        return list(param_keys[:DEFAULT_PARAM_COLUMNS])
    varying = [k for k in param_keys[:MAX_PROBED_PARAMS] if recent[f"params.{k}"].astype(str).nunique() > 1]
    return (varying or list(param_keys))[:DEFAULT_PARAM_COLUMNS]


with st.expander("Columns", icon=":material/view_column:"):
    c1, c2 = st.columns(2)
    param_cols = c1.multiselect(
        "Params",
        keys.param_keys,
        default=_varying_params(project, keys.param_keys),
        key=f"runs_param_cols:{project}",
    )
    preferred = sorted(keys.metric_keys, key=lambda k: (not k.startswith(("val", "loss", "train")), k))
    metric_cols = c2.multiselect(
        "Metrics (last value)",
        keys.metric_keys,
        default=preferred[:DEFAULT_METRIC_COLUMNS],
        key=f"runs_metric_cols:{project}",
    )

sort_options = BASE_SORTS + [f"metrics.{k}" for k in metric_cols] + [f"params.{k}" for k in param_cols]
sort_by = col_sort.selectbox("Sort by", sort_options, key="runs_sort")
descending = col_dir.toggle("Desc", value=True, key="runs_desc")
page_size = col_size.selectbox("Rows", [50, 100, 250, 1000], index=1, key="runs_page_size")
order_by = (f"-{sort_by}" if descending else sort_by,)

# ---------------------------------------------------------------- paging: a stack of tokens
signature = (project, filter_text, order_by, page_size)
pager = st.session_state.get("runs_pager")
if not pager or pager["signature"] != signature:
    generation = pager["generation"] + 1 if pager else 0  # new table key: old selections are dropped
    pager = {"signature": signature, "tokens": [""], "index": 0, "generation": generation}
    st.session_state["runs_pager"] = pager

try:
    page = q.search_runs(
        project,
        filter_text,
        order_by,
        page_size,
        pager["tokens"][pager["index"]],
        tuple(param_cols),
        tuple(metric_cols),
    )
except ServerError as exc:
    if exc.unreachable:
        st.error(md(exc.details))
        st.stop()
    filter_error.error(f"**{md(exc.code)}**\n\n{md_code_block(exc.details)}", icon=":material/error:")
    st.stop()

# ---------------------------------------------------------------- table
runs = page.runs.copy()
runs.insert(0, "open", [f"./run?{urlencode({'project': project, 'run': r})}" for r in runs["run_id"]])
first = pager["index"] * page_size
st.caption(
    f"{page.total:,} runs match · showing {first + 1 if len(runs) else 0:,}–{first + len(runs):,}"
    + (f" · filter {md_code(filter_text)}" if filter_text else "")
)
table = st.dataframe(
    runs,
    hide_index=True,
    width="stretch",
    height=min(38 + 35 * max(len(runs), 1), 460),
    on_select="rerun",
    selection_mode="multi-row",
    key=f"runs_table:{pager['generation']}:{pager['index']}",
    column_order=[
        "open",
        "name",
        "state",
        "group",
        *[f"params.{k}" for k in param_cols],
        *[f"metrics.{k}" for k in metric_cols],
        "datasets",
        "tags",
        "start",
        "duration_s",
        "run_id",
    ],  # fmt: skip
    column_config={
        "open": st.column_config.LinkColumn("", display_text="open", width="small"),
        "start": st.column_config.DatetimeColumn("start", format="YYYY-MM-DD HH:mm"),
        "duration_s": st.column_config.NumberColumn("duration (s)", format="%.0f"),
        "datasets": st.column_config.TextColumn("datasets", help="name@version of each dataset the run used"),
        **{
            c: st.column_config.NumberColumn(c.removeprefix("metrics."), format="%.4g")
            for c in runs.columns
            if c.startswith("metrics.")
        },
        **{
            c: st.column_config.Column(c.removeprefix("params."))
            for c in runs.columns
            if c.startswith("params.")
        },
    },
)


def _turn_page(step: int, next_token: str = "") -> None:
    """Prev / Next, as the buttons' callbacks: the pager moves before the script runs again, so a
    click costs one run of the page, not two (a click handled in the body needed st.rerun())."""
    moved = st.session_state["runs_pager"]
    if step > 0:
        moved["tokens"] = moved["tokens"][: moved["index"] + 1] + [next_token]
    moved["index"] += step


prev_col, info_col, next_col, open_col, compare_col = st.columns([1, 2, 1, 2, 2], vertical_alignment="center")
prev_col.button("← Prev", disabled=pager["index"] == 0, key="runs_prev", on_click=_turn_page, args=(-1,))
pages_total = max(1, -(-page.total // page_size))
info_col.caption(f"page {pager['index'] + 1} of {pages_total:,}")
next_col.button(
    "Next →",
    disabled=not page.next_page_token,
    key="runs_next",
    on_click=_turn_page,
    args=(1, page.next_page_token),
)

rows = table.selection.rows if table else []
selected = runs.iloc[rows] if rows else runs.iloc[0:0]
state.set_selected_runs(
    selected["run_id"].tolist(), dict(zip(selected["run_id"], selected["name"], strict=True))
)
if open_col.button(
    "Open run page", disabled=len(selected) != 1, key="runs_open", icon=":material/open_in_new:"
):
    st.switch_page("views/run.py", query_params={"project": project, "run": selected.iloc[0]["run_id"]})
if compare_col.button(
    "Compare selected", disabled=len(selected) < 2, key="runs_compare", icon=":material/compare_arrows:"
):
    st.switch_page(
        "views/compare.py", query_params={"project": project, "runs": ",".join(selected["run_id"])}
    )

# ---------------------------------------------------------------- learning curves
st.subheader("Learning curves")
if selected.empty:
    st.info("Select runs in the table (the checkbox column) to overlay their learning curves.")
    st.stop()
if len(selected) > MAX_PLOTTED_RUNS:
    st.warning(f"Plotting the first {MAX_PLOTTED_RUNS} of {len(selected)} selected runs.")
    selected = selected.iloc[:MAX_PLOTTED_RUNS]

c1, c2, c3, c4, c5 = st.columns([3, 2, 2, 1.1, 1.1], vertical_alignment="bottom")
default_metrics = [k for k in preferred if k in keys.metric_keys][:2]
chosen_metrics = c1.multiselect(
    "Metrics", keys.metric_keys, default=default_metrics, key=f"curve_metrics:{project}"
)
x_axis = c2.segmented_control("X axis", ["step", "time", "relative"], default="step", key="curve_x") or "step"
smoothing = c3.slider("Smoothing (EMA)", 0.0, 0.99, 0.6, 0.01, key="curve_smoothing")
log_y = c4.toggle("Log y", key="curve_log")
any_running = bool((selected["state"] == "running").any())
live = c5.toggle("Live", value=any_running, key="curve_live", help="Refresh the curves every 5 s")

labels = dict(zip(selected["run_id"], selected["name"], strict=True))
run_ids = tuple(selected["run_id"])


@st.fragment(run_every=5 if live else None)
def curves() -> None:
    if not chosen_metrics:
        st.info("Choose at least one metric.")
        return
    try:
        series = q.metric_series(project, run_ids, tuple(chosen_metrics), x_axis, 1000)
    except ServerError as exc:
        st.error(md(exc.details))
        return
    if series.empty:
        st.info("The selected runs have no points for these metrics yet.")
        return
    grid = st.columns(2 if len(chosen_metrics) > 1 else 1)
    for i, key in enumerate(chosen_metrics):
        fig = charts.learning_curves(series, key, labels, x_axis=x_axis, smoothing=smoothing, log_y=log_y)
        grid[i % len(grid)].plotly_chart(fig, width="stretch", key=f"curve:{key}")
    total = int(series.drop_duplicates(["run_id", "key", "rank"])["total_points"].sum())
    st.caption(f"{len(series):,} points drawn of {total:,} logged (min/max downsampled on the server)")


curves()
