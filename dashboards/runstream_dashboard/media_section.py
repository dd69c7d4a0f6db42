"""Media logged per step (runstream.Image, Audio, Histogram, Table, Text): the run page's Media
tab (`show_run`: every media key with its own step slider) and the compare page's section
(`show_compare`: one key of the chosen runs side by side at one step). Data through
media_queries.py, figures from media_charts.py; captions, text samples and table cells are the
logger's text and reach the page as text (safe_text.md for captions, st.text / st.dataframe)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import streamlit as st

from runstream.errors import ServerError
from runstream.media_client import MediaItem
from runstream_dashboard import media_charts
from runstream_dashboard import media_queries as mq
from runstream_dashboard.safe_text import md

IMAGE_WIDTH = 220
KIND_ORDER = {"image": 0, "histogram": 1, "table": 2, "audio": 3, "text": 4}  # the run page's order
KIND_ICONS = {
    "image": ":material/image:",
    "audio": ":material/graphic_eq:",
    "histogram": ":material/bar_chart:",
    "table": ":material/table:",
    "text": ":material/notes:",
}


def show_run(project: str, run_id: str) -> None:
    """Every media key of the run (images first, then histograms, tables, audio, text; by key
    within a kind), each with a step slider over the steps it was logged at."""
    try:
        keys = mq.media_keys(project, (run_id,))
    except ServerError as exc:
        st.error(md(exc.details))
        return
    if keys.empty:
        st.caption(
            "No media logged. Log images, audio, histograms, tables or text with "
            '`run.log({"samples": runstream.Image(array, caption="...")}, step=step)`.'
        )
        return
    keys = keys.assign(order=keys["kind"].map(KIND_ORDER).fillna(len(KIND_ORDER))).sort_values(
        ["order", "key"]
    )
    for row in keys.itertuples():
        with st.container(border=True):
            st.markdown(
                f"{KIND_ICONS.get(row.kind, '')} **{md(row.key)}** · {md(row.kind)} · {row.count:,} items · "
                f"steps {row.min_step:,}–{row.max_step:,}"
            )
            try:
                items = mq.media_items(project, (run_id,), row.key)
            except ServerError as exc:
                st.error(md(exc.details))
                continue
            if not items:
                continue
            step = _step_slider([m.step for m in items], f"media_step:{run_id}:{row.key}")
            at_step = [m for m in items if m.step == step]
            if row.kind == "histogram":
                st.plotly_chart(
                    media_charts.histogram_heatmap(items, row.key, step),
                    width="stretch",
                    key=f"media_hist:{run_id}:{row.key}",
                )
            _show_items(project, at_step, f"{run_id}:{row.key}")


def show_compare(project: str, run_ids: Sequence[str], labels: dict[str, str]) -> None:
    """One media key of the runs side by side at a chosen step (the nearest earlier step of a run
    that has none at it)."""
    try:
        keys = mq.media_keys(project, tuple(run_ids))
    except ServerError as exc:
        st.error(md(exc.details))
        return
    if keys.empty:
        st.caption("None of these runs logged media.")
        return
    kinds = keys.groupby("key")["kind"].first()
    key = st.selectbox(
        "Media key",
        list(kinds.index),
        format_func=lambda k: f"{k} ({kinds[k]})",
        key=f"compare_media_key:{project}",
    )
    try:
        items = mq.media_items(project, tuple(run_ids), key)
    except ServerError as exc:
        st.error(md(exc.details))
        return
    if not items:
        return
    step = _step_slider([m.step for m in items], f"compare_media_step:{project}:{key}")
    columns = st.columns(len(run_ids))
    shown: list[MediaItem] = []
    for col, run_id in zip(columns, run_ids, strict=True):
        mine = [m for m in items if m.run_id == run_id and m.step <= step]
        with col:
            st.markdown(f"**{md(labels.get(run_id, run_id))}**")
            if not mine:
                st.caption(f"No {md(key)} at or before step {step:,}.")
                continue
            nearest = max(m.step for m in mine)
            at = [m for m in mine if m.step == nearest]
            if nearest != step:
                st.caption(f"nearest earlier step: {nearest:,}")
            shown.extend(at)
            if kinds[key] != "histogram":
                _show_items(project, at, f"compare:{run_id}:{key}")
    if kinds[key] == "histogram" and shown:
        st.plotly_chart(
            media_charts.histogram_bars([m for m in shown if m.index == 0], labels, key),
            width="stretch",
            key=f"compare_media_hist:{key}",
        )


def _step_slider(steps: list[int], widget_key: str) -> int:
    """A slider over the logged steps (the newest by default); one step needs none."""
    options = sorted(set(steps))
    if len(options) == 1:
        st.caption(f"step {options[0]:,}")
        return options[0]
    return st.select_slider(
        "Step", options=options, value=options[-1], key=widget_key, format_func=lambda s: f"{s:,}"
    )


def _show_items(project: str, items: list[MediaItem], widget_key: str) -> None:
    """The items of one step, by kind."""
    images = [m for m in items if m.kind == "image"]
    if images:
        try:
            st.image(
                [mq.media_bytes(project, m.run_id, m.sha256) for m in images],
                caption=[md(m.caption or f"step {m.step} · {m.width}x{m.height}") for m in images],
                width=IMAGE_WIDTH,
            )
        except ServerError as exc:
            st.warning(f"Images unavailable: {md(exc.details)}")
    for m in items:
        if m.kind == "audio":
            _audio(project, m)
        elif m.kind == "table":
            _table(project, m, f"{widget_key}:{m.step}:{m.rank}:{m.index}")
        elif m.kind == "text":
            if m.caption:
                st.caption(md(m.caption))
            st.text(m.text)
        elif m.kind == "histogram" and m.caption:
            st.caption(md(m.caption))


def _audio(project: str, m: MediaItem) -> None:
    try:
        data = mq.media_bytes(project, m.run_id, m.sha256)
    except ServerError as exc:
        st.warning(f"Audio unavailable: {md(exc.details)}")
        return
    st.caption(md(m.caption or "") + f" · {m.duration_s:.2f} s at {m.sample_rate:,} Hz")
    st.audio(data, format="audio/wav")


def _table(project: str, m: MediaItem, widget_key: str) -> None:
    try:
        frame = mq.media_table(project, m.run_id, m.sha256)
    except ServerError as exc:
        st.warning(f"Table unavailable: {md(exc.details)}")
        return
    if m.caption:
        st.caption(md(m.caption))
    needle = st.text_input(
        "Filter rows",
        key=f"media_table_filter:{widget_key}",
        placeholder="text in any cell (case-insensitive)",
    ).strip()
    shown = filter_rows(frame, needle)
    st.caption(f"{len(shown):,} of {len(frame):,} rows · click a column header to sort")
    st.dataframe(shown, hide_index=True, width="stretch", key=f"media_table:{widget_key}")


def filter_rows(frame: pd.DataFrame, needle: str) -> pd.DataFrame:
    """The rows with a cell whose text contains `needle` (case-insensitive); all when empty."""
    if not needle or frame.empty:
        return frame
    hit = frame.astype(str).apply(lambda col: col.str.contains(needle, case=False, regex=False)).any(axis=1)
    return frame[hit]
