"""Pure Plotly figures of logged histograms (runstream.Histogram): a key's distribution over
steps as a heatmap (bins x steps; each step's bins are re-binned onto one common grid, since
each step may have its own edges), and one step's histograms of several runs overlaid."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from runstream.media_client import MediaItem

GRID_BINS = 64


def common_grid(items: Sequence[MediaItem], bins: int = GRID_BINS) -> tuple[np.ndarray, np.ndarray]:
    """(matrix bins x items, edges): each item's counts spread onto one grid of `bins`
    equal bins spanning every item's edges (a count goes to the grid bin of its bin's centre)."""
    lo = min(m.bin_edges[0] for m in items)
    hi = max(m.bin_edges[-1] for m in items)
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    matrix = np.zeros((bins, len(items)))
    for col, m in enumerate(items):
        e = np.asarray(m.bin_edges)
        centres = (e[:-1] + e[1:]) / 2
        matrix[:, col], _ = np.histogram(centres, bins=edges, weights=np.asarray(m.counts))
    return matrix, edges


def histogram_heatmap(
    items: Sequence[MediaItem], key: str, step: int | None = None, height: int = 320
) -> go.Figure:
    """The distribution of `key` over steps (one column per step: the first item of each step)."""
    per_step: dict[int, MediaItem] = {}
    for m in items:
        per_step.setdefault(m.step, m)
    steps = sorted(per_step)
    matrix, edges = common_grid([per_step[s] for s in steps])
    centres = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure(
        go.Heatmap(
            x=[str(s) for s in steps] if len(steps) < 3 else steps,
            y=centres,
            z=matrix,
            colorscale="Viridis",
            colorbar={"title": "count"},
            hovertemplate="step %{x}<br>value %{y:.4g}<br>count %{z:.4g}<extra></extra>",
        )
    )
    if step is not None and step in per_step and len(steps) >= 3:
        fig.add_vline(x=step, line_width=2, line_dash="dot", line_color="white")
    fig.update_layout(
        title=f"{key}: distribution over steps",
        xaxis_title="step",
        yaxis_title="value",
        height=height,
        margin={"l": 40, "r": 10, "t": 40, "b": 40},
    )
    return fig


def histogram_bars(
    items: Sequence[MediaItem], labels: dict[str, str], key: str, height: int = 320
) -> go.Figure:
    """One step's histogram of each run, overlaid (bars at bin centres, bin widths kept)."""
    fig = go.Figure()
    for m in items:
        e = np.asarray(m.bin_edges)
        fig.add_bar(
            x=(e[:-1] + e[1:]) / 2,
            y=list(m.counts),
            width=np.diff(e),
            name=labels.get(m.run_id, m.run_id),
            opacity=0.6,
        )
    fig.update_layout(
        barmode="overlay", title=key, xaxis_title="value", yaxis_title="count", height=height,
        margin={"l": 40, "r": 10, "t": 40, "b": 40},
    )  # fmt: skip
    return fig
