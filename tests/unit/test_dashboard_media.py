"""The media section's pure parts: histograms re-binned onto one grid over steps (counts kept,
mass where it was logged), the overlay of one step's histograms, and the table row filter."""

from __future__ import annotations

import numpy as np
import pandas as pd

from runstream.media_client import MediaItem
from runstream_dashboard import media_charts
from runstream_dashboard.media_section import filter_rows


def hist(step: int, edges, counts, run_id: str = "r") -> MediaItem:
    return MediaItem(
        project="p", run_id=run_id, key="w", step=step, index=0, rank=0, kind="histogram", caption="",
        sha256="", size=0, format="", time_ms=0, bin_edges=tuple(edges), counts=tuple(counts),
    )  # fmt: skip


def test_histograms_with_their_own_edges_share_one_grid_and_keep_their_counts():
    items = [hist(0, [0, 1, 2], [5, 1]), hist(10, [8, 9, 10], [2, 7]), hist(5, [0, 10], [4])]
    matrix, edges = media_charts.common_grid(items, bins=10)
    assert edges[0] == 0 and edges[-1] == 10 and matrix.shape == (10, 3)
    assert matrix.sum(axis=0).tolist() == [6, 9, 4]
    assert matrix[0, 0] == 5 and matrix[1, 0] == 1  # step 0's mass stays at 0..2
    assert matrix[8, 1] == 2 and matrix[9, 1] == 7
    assert matrix[5, 2] == 4  # one wide bin: its centre (5)


def test_heatmap_has_one_column_per_step_in_order_and_marks_the_chosen_one():
    items = [hist(s, [s, s + 1, s + 2], [1, s + 1]) for s in (20, 0, 10)]
    fig = media_charts.histogram_heatmap(items, "w", step=10)
    (trace,) = fig.data
    assert list(trace.x) == [0, 10, 20]
    assert np.asarray(trace.z).sum(axis=0).tolist() == [2, 12, 22]
    assert any(shape.x0 == 10 for shape in fig.layout.shapes)


def test_overlay_draws_each_runs_histogram_with_its_label():
    fig = media_charts.histogram_bars(
        [hist(3, [0, 1, 2], [1, 2], "a"), hist(3, [0, 2], [4], "b")], {"a": "alpha"}, "w"
    )
    assert [t.name for t in fig.data] == ["alpha", "b"]
    assert list(fig.data[0].x) == [0.5, 1.5] and list(fig.data[1].width) == [2]


def test_table_filter_matches_any_cell_case_insensitively():
    frame = pd.DataFrame({"id": [1, 2, 3], "label": ["Cat", "dog", "bird"], "p": [0.5, 0.25, 0.125]})
    assert filter_rows(frame, "").equals(frame)
    assert filter_rows(frame, "cat")["id"].tolist() == [1]
    assert filter_rows(frame, "0.25")["label"].tolist() == ["dog"]
    assert filter_rows(frame, "[").empty  # plain text, not a regular expression
