"""One run, addressable as /run?project=<p>&run=<id>: config, summary, tags, notes, context,
metric and system-metric charts, artifacts with download and image preview. Everything the run's
logger chose reaches Markdown through safe_text (the run id in the URL too: links can be crafted)."""

from __future__ import annotations

import json
from pathlib import PurePosixPath

import pandas as pd
import streamlit as st

from runstream import states
from runstream.errors import ServerError
from runstream_dashboard import (
    charts,
    console_section,
    media_section,
    rank_views,
    run_edit_section,
    run_registry_section,
    state,
)
from runstream_dashboard import queries as q
from runstream_dashboard.safe_text import md, md_code

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
MAX_PREVIEW_BYTES = 8 * 1024 * 1024
MAX_CHARTS = 12
BADGE_COLORS = {
    states.RUNNING: "blue",
    states.FINISHED: "green",
    states.FAILED: "red",
    states.CRASHED: "orange",
    states.KILLED: "gray",
}
STATE_BADGES = {name: f":{color}-badge[{name}]" for name, color in BADGE_COLORS.items()}

project = state.require_project()
run_id = st.query_params.get("run") or ""

if not run_id:
    st.title("Run")
    try:
        recent = q.search_runs(project, "", ("-start",), 200).runs
    except ServerError as exc:
        st.error(md(exc.details))
        st.stop()
    if recent.empty:
        st.info("This project has no runs yet.")
        st.stop()
    options = dict(zip(recent["run_id"], recent["name"] + "  ·  " + recent["run_id"], strict=True))
    picked = st.selectbox("Run", list(options), format_func=options.get, index=None, placeholder="Pick a run")
    if picked:
        st.query_params["run"] = picked
        st.rerun()
    st.stop()

try:
    run = q.get_run(project, run_id)
except ServerError as exc:
    st.title("Run")
    st.error(md(exc.details))
    st.stop()
st.query_params["run"] = run_id

info = run.info
st.title(md(info["name"]))
duration = f"{info['duration_s']:.0f} s" if info.get("duration_s") is not None else "—"
badge = STATE_BADGES.get(info["state"], md(info["state"]))
st.markdown(
    f"{badge} &nbsp; {md_code(run_id)} &nbsp; "
    f"group **{md(info['group'] or '—')}** · job type **{md(info['job_type'] or '—')}** · "
    f"started {info['start']:%Y-%m-%d %H:%M:%S} · duration {duration} · "
    f"user {md(info['user'] or '—')} · host {md(info['host'] or '—')}"
    if info.get("start") is not None
    else f"{badge} {md_code(run_id)}"
)
if run.tags:
    st.markdown(
        " ".join(
            f":violet-badge[{md(k)}={md(v)}]" if v else f":violet-badge[{md(k)}]" for k, v in run.tags.items()
        )
    )
live = st.toggle(
    "Live refresh", value=run.running, key="run_live", help="Reload this run every 5 s while it runs"
)


@st.fragment(run_every=5 if live else None)
def _watch_state() -> None:
    """Reloads the whole page when the run's state or metric counts change (live runs)."""
    try:
        now = q.get_run(project, run_id)
    except ServerError:
        return
    if now.info["state"] != info["state"] or not now.metrics.equals(run.metrics):
        st.rerun()


_watch_state()

tab_overview, tab_metrics, tab_media, tab_system, tab_ranks, tab_console, tab_artifacts, tab_context = (
    st.tabs(["Overview", "Metrics", "Media", "System", "Ranks", "Console", "Artifacts", "Context"])
)


def _kv_table(values: dict) -> pd.DataFrame:
    return pd.DataFrame({"key": list(values), "value": [charts.display_value(v) for v in values.values()]})


with tab_overview:
    left, right = st.columns(2)
    with left:
        st.subheader("Config")
        if run.config:
            st.dataframe(
                _kv_table(run.config),
                hide_index=True,
                width="stretch",
                height=min(36 + 35 * len(run.config), 640),
                key="run_config",
            )
        else:
            st.caption("No config logged.")
    with right:
        st.subheader("Summary")
        if run.summary:
            st.dataframe(_kv_table(run.summary), hide_index=True, width="stretch", key="run_summary")
        st.dataframe(
            run.metrics,
            hide_index=True,
            width="stretch",
            key="run_metric_summaries",
            column_config={
                c: st.column_config.NumberColumn(c, format="%.5g") for c in ("last", "min", "max")
            },
        )
    st.subheader("Notes")
    if run.notes:
        st.text(run.notes)  # as logged: notes are anyone's text, not the page's markup
    else:
        st.caption("No notes.")
    if run.datasets:
        st.subheader("Datasets")
        st.dataframe(pd.DataFrame(run.datasets), hide_index=True, width="stretch")
    run_edit_section.show(project, run_id, info["name"], run.notes, dict(run.tags))  # edits + history
    run_registry_section.show(project, run_id)  # inputs, and model versions registered from it


def _charts(keys: list[str], system: bool, smoothing: float) -> None:
    if not keys:
        st.caption("Nothing logged.")
        return
    try:
        series = q.metric_series(
            project, (run_id,), tuple(keys[:MAX_CHARTS]), "step" if not system else "relative", 1000, system
        )
    except ServerError as exc:
        st.error(md(exc.details))
        return
    grid = st.columns(2)
    for i, key in enumerate(keys[:MAX_CHARTS]):
        fig = charts.learning_curves(
            series,
            key,
            {run_id: info["name"]},
            x_axis="relative" if system else "step",
            smoothing=smoothing,
            height=280,
        )
        fig.update_layout(showlegend=False)
        grid[i % 2].plotly_chart(fig, width="stretch", key=f"run_chart:{system}:{key}")
    if len(keys) > MAX_CHARTS:
        st.caption(f"Showing {MAX_CHARTS} of {len(keys)} keys.")


try:
    run_keys = q.list_keys(project, (run_id,))
except ServerError as exc:
    st.error(md(exc.details))
    st.stop()

with tab_metrics:
    smoothing = st.slider("Smoothing (EMA)", 0.0, 0.99, 0.0, 0.01, key="run_smoothing")

    @st.fragment(run_every=5 if live else None)
    def metric_charts() -> None:
        _charts(list(run_keys.metric_keys), False, smoothing)

    metric_charts()

with tab_media:  # images, audio, histograms, tables, text per step (media_section.py)
    media_section.show_run(project, run_id)

with tab_system:

    @st.fragment(run_every=5 if live else None)
    def system_charts() -> None:
        _charts(list(run_keys.system_metric_keys), True, 0.0)

    system_charts()

with tab_ranks:  # rank overlay, every rank's system metrics, stragglers (rank_views.py)
    rank_views.show(project, run_id, run_keys.metric_keys, run_keys.system_metric_keys)

with tab_console:  # captured stdout / stderr per rank, searched on the server (console_section.py)
    console_section.show(project, run_id, run.context["world_size"] or 1, live)

with tab_artifacts:
    if run.artifacts.empty:
        st.caption("No artifacts logged.")
    else:
        st.dataframe(
            run.artifacts.drop(columns=["uri"]),
            hide_index=True,
            width="stretch",
            key="run_artifacts",
            column_config={"size": st.column_config.NumberColumn("size (bytes)", format="%d")},
        )
        for i, art in run.artifacts.iterrows():
            file_name = PurePosixPath(art["path"]).name or art["name"]
            with st.container(border=True):
                st.markdown(
                    f"**{md(art['name'])}** v{art['version']} · {md_code(art['path'])} · {art['size']:,} bytes"
                )
                st.download_button(
                    f"Download {md(file_name)}",
                    data=q.artifact_loader(project, run_id, art["sha256"]),
                    file_name=file_name,
                    on_click="ignore",  # a download changes nothing on the page: no rerun
                    key=f"download:{i}",
                    icon=":material/download:",
                )
                if (
                    PurePosixPath(art["path"]).suffix.lower() in IMAGE_SUFFIXES
                    and art["size"] <= MAX_PREVIEW_BYTES
                ):
                    try:
                        st.image(
                            q.download_artifact(project, run_id, art["sha256"]),
                            caption=md(art["path"]),
                            width=420,
                        )
                    except ServerError as exc:
                        st.warning(f"Preview unavailable: {md(exc.details)}")

with tab_context:
    ctx = run.context
    c1, c2 = st.columns(2)
    with c1:
        st.subheader("Code")
        dirty = " (uncommitted changes)" if ctx["git_dirty"] else ""
        st.markdown(
            f"commit {md_code(ctx['git_commit'] or '—')}{dirty}  \nbranch {md_code(ctx['git_branch'] or '—')}  \n"
            f"remote {md_code(ctx['git_remote'] or '—')}"
        )
        if ctx["command"]:
            st.code(" ".join(ctx["command"]), language="bash")
        if ctx["seeds"]:
            st.markdown("seeds: " + ", ".join(md_code(f"{k}={v}") for k, v in ctx["seeds"].items()))
    with c2:
        st.subheader("Environment")
        st.markdown(
            f"host {md_code(ctx['host'] or '—')} · user {md_code(ctx['user'] or '—')}  \n"
            f"python {md_code(ctx['python_version'] or '—')} · env {md_code(ctx['env_name'] or '—')}  \n"
            f"os {md_code(ctx['os'] or '—')}  \ncpu {md_code(ctx['cpu'] or '—')}  \n"
            f"gpus {', '.join(md_code(g) for g in ctx['gpus']) or '—'} · world size {md(ctx['world_size'] or 1)}"
        )
    if ctx["packages"]:
        with st.expander(f"Packages ({len(ctx['packages'])})"):
            st.dataframe(
                pd.DataFrame({"package": list(ctx["packages"]), "version": list(ctx["packages"].values())}),
                hide_index=True,
                width="stretch",
            )
    if ctx["git_diff"]:
        with st.expander("git diff"):
            st.code(ctx["git_diff"], language="diff")
    with st.expander("Raw context (JSON)"):
        st.code(json.dumps({k: v for k, v in ctx.items() if k != "git_diff"}, indent=2), language="json")
