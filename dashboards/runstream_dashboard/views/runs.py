"""Runs table (server-side filter, sort and pages, so it stays fast at 10,000+ runs) and the
learning curves of the runs selected in it."""

from __future__ import annotations

from urllib.parse import urlencode

import streamlit as st

from runstream.errors import ServerError
from runstream_dashboard import charts, curves_section, runs_url, saved_views_panel, state
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
runs_url.open_from_url(project)  # a link's or a saved view's filter, sort, columns and curves
saved_views_panel.show(project)

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
    default_params = _varying_params(project, keys.param_keys)
    runs_url.keep_known(f"runs_param_cols:{project}", keys.param_keys)
    param_cols = c1.multiselect(
        "Params",
        keys.param_keys,
        **runs_url.kwargs(f"runs_param_cols:{project}", default=default_params),
        key=f"runs_param_cols:{project}",
    )
    preferred = sorted(keys.metric_keys, key=lambda k: (not k.startswith(("val", "loss", "train")), k))
    runs_url.keep_known(f"runs_metric_cols:{project}", keys.metric_keys)
    metric_cols = c2.multiselect(
        "Metrics (last value)",
        keys.metric_keys,
        **runs_url.kwargs(f"runs_metric_cols:{project}", default=preferred[:DEFAULT_METRIC_COLUMNS]),
        key=f"runs_metric_cols:{project}",
    )

sort_options = BASE_SORTS + [f"metrics.{k}" for k in metric_cols] + [f"params.{k}" for k in param_cols]
if st.session_state.get("runs_sort") and st.session_state["runs_sort"] not in sort_options:
    sort_options.append(st.session_state["runs_sort"])  # a link's sort on a column not shown
sort_by = col_sort.selectbox("Sort by", sort_options, key="runs_sort")
descending = col_dir.toggle("Desc", **runs_url.kwargs("runs_desc", value=True), key="runs_desc")
page_size = col_size.selectbox(
    "Rows", [50, 100, 250, 1000], **runs_url.kwargs("runs_page_size", index=1), key="runs_page_size"
)
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
runs_url.follow_table(selected["run_id"].tolist())  # a click in the table picks the runs drawn
known = dict(zip(runs["run_id"], zip(runs["name"], runs["state"], strict=True), strict=True))
known |= curves_section.run_info(
    project, tuple(st.session_state.get(runs_url.CURVE_RUNS_KEY, [])), set(known)
)
curve_runs = st.multiselect(
    "Runs drawn",
    list(dict.fromkeys([*st.session_state.get(runs_url.CURVE_RUNS_KEY, []), *runs["run_id"]])),
    format_func=lambda r: f"{known[r][0]} · {r[:8]}" if r in known else r,
    key=runs_url.CURVE_RUNS_KEY,
    placeholder="Select runs in the table, or pick them here",
)
default_metrics = [k for k in preferred if k in keys.metric_keys][:2]
view_defaults = {
    "params": tuple(default_params),
    "metrics": tuple(preferred[:DEFAULT_METRIC_COLUMNS]),
    "curves": tuple(default_metrics),
}
st.session_state[saved_views_panel.DEFAULTS_KEY] = view_defaults
if not curve_runs:
    runs_url.write_url(project, view_defaults)
    st.info("Select runs in the table (the checkbox column) to overlay their learning curves.")
    st.stop()
if len(curve_runs) > MAX_PLOTTED_RUNS:
    st.warning(f"Plotting the first {MAX_PLOTTED_RUNS} of {len(curve_runs)} selected runs.")
    curve_runs = curve_runs[:MAX_PLOTTED_RUNS]

c1, c2, c3, c4, c5, c6 = st.columns([2.3, 1.9, 1.6, 2.0, 1.0, 1.2], vertical_alignment="bottom")
runs_url.keep_known(f"curve_metrics:{project}", keys.metric_keys)
chosen_metrics = c1.multiselect(
    "Metrics",
    keys.metric_keys,
    **runs_url.kwargs(f"curve_metrics:{project}", default=default_metrics),
    key=f"curve_metrics:{project}",
)
x_axis = (
    c2.segmented_control(
        "X axis", ["step", "time", "relative"], **runs_url.kwargs("curve_x", default="step"), key="curve_x"
    )
    or "step"
)
smoothing = c3.slider(
    "Smoothing (EMA)",
    0.0,
    0.99,
    **runs_url.kwargs("curve_smoothing", value=0.6),
    step=0.01,
    key="curve_smoothing",
)
group_by = curves_section.group_by_control(c4, keys)
log_y = c5.toggle("Log y", key="curve_log")
any_running = any(known.get(r, ("", ""))[1] == "running" for r in curve_runs)
live = c6.toggle("Live", value=any_running, key="curve_live", help="Refresh the curves every 5 s")
runs_url.write_url(project, view_defaults)

labels = {r: known[r][0] if r in known else r for r in curve_runs}
run_ids = tuple(curve_runs)


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
    groups = curves_section.groups(project, run_ids, group_by) if group_by else None
    for i, key in enumerate(chosen_metrics):
        if groups is not None:
            fig = curves_section.grouped_figure(series, key, groups, x_axis, smoothing, log_y)
        else:
            fig = charts.learning_curves(series, key, labels, x_axis=x_axis, smoothing=smoothing, log_y=log_y)
        grid[i % len(grid)].plotly_chart(fig, width="stretch", key=f"curve:{key}")
    total = int(series.drop_duplicates(["run_id", "key", "rank"])["total_points"].sum())
    st.caption(f"{len(series):,} points drawn of {total:,} logged (min/max downsampled on the server)")


curves()
