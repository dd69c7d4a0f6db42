"""Plotly figures of the grouped and per-rank views (issue 16, item 4): grouped curves (a mean
line with a min/max band per group), one line per rank, and the straggler chart. Pure functions
of DataFrames, like charts.py; logged text goes through safe_text.plotly_text."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from runstream_dashboard.charts import PALETTE, _x_values, curve_layout, ema
from runstream_dashboard.safe_text import plotly_text


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r}, {g}, {b}, {alpha})"


def grouped_curves(
    groups: pd.DataFrame,
    key: str,
    *,
    x_axis: str = "step",
    smoothing: float = 0.0,
    log_y: bool = False,
    height: int = 360,
) -> go.Figure:
    """Per group of curve_groups.group_curves: the mean as a line and min..max as a filled band
    (the lower edge drawn first, the upper one filled down to it: Plotly's fill="tonexty")."""
    traces = []
    for i, (group, part) in enumerate(groups.groupby("group", sort=True)):
        color = PALETTE[i % len(PALETTE)]
        x = _x_values(part["x"].to_numpy(), x_axis)
        name = plotly_text(group)
        runs = int(part["count"].max())
        label = f"{name} ({runs} run{'s' if runs != 1 else ''})"
        band = {
            "mode": "lines",
            "line": {"width": 0, "color": color},
            "legendgroup": name,
            "showlegend": False,
        }
        traces.append(go.Scatter(x=x, y=ema(part["min"].to_numpy(), smoothing), hoverinfo="skip", **band))
        traces.append(
            go.Scatter(
                x=x, y=ema(part["max"].to_numpy(), smoothing), fill="tonexty", fillcolor=_rgba(color, 0.18),
                hoverinfo="skip", **band,
            )
        )  # fmt: skip
        traces.append(
            go.Scatter(
                x=x,
                y=ema(part["mean"].to_numpy(), smoothing),
                mode="lines",
                name=label,
                legendgroup=name,
                line={"color": color, "width": 2},
                customdata=np.stack([part["min"], part["max"], part["count"]], axis=1),
                hovertemplate=(
                    f"{name}<br>%{{x}}: mean %{{y:.5g}}<br>min %{{customdata[0]:.5g}} · max %{{customdata[1]:.5g}}"
                    " · %{customdata[2]} runs<extra></extra>"
                ),
            )
        )
    return curve_layout(go.Figure(data=traces), key, x_axis, height, log_y)


def rank_lines(
    series: pd.DataFrame, key: str, *, x_axis: str = "step", smoothing: float = 0.0, height: int = 300
) -> go.Figure:
    """One line per rank of metric `key` (columns key, rank, x, y)."""
    part = series[series["key"] == key]
    traces = []
    for rank, pts in part.groupby("rank", sort=True):
        order = np.argsort(pts["x"].to_numpy(), kind="stable")
        x, y = pts["x"].to_numpy()[order], pts["y"].to_numpy()[order]
        traces.append(
            go.Scatter(
                x=_x_values(x, x_axis),
                y=ema(y, smoothing),
                mode="lines",
                name=f"rank {rank}",
                line={"color": PALETTE[int(rank) % len(PALETTE)], "width": 1.4},
                hovertemplate=f"rank {rank}<br>%{{x}}: %{{y:.5g}}<extra></extra>",
            )
        )
    return curve_layout(go.Figure(data=traces), key, x_axis, height)


def straggler_chart(table: pd.DataFrame, key: str, *, height: int = 420) -> go.Figure:
    """Top: which rank was slowest at each step (a marker per step, colored by rank). Bottom: how
    far that rank was behind the median rank (the metric's unit)."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.45, 0.55])
    for rank, part in table.groupby("slowest_rank", sort=True):
        color = PALETTE[int(rank) % len(PALETTE)]
        fig.add_trace(
            go.Scatter(
                x=part["step"], y=part["slowest_rank"], mode="markers", name=f"rank {rank}",
                marker={"color": color, "size": 6}, legendgroup=str(rank),
                hovertemplate=f"step %{{x}}: rank {rank} slowest<extra></extra>",
            ),
            row=1, col=1,
        )  # fmt: skip
        fig.add_trace(
            go.Bar(
                x=part["step"], y=part["behind"], name=f"rank {rank}", marker={"color": color},
                legendgroup=str(rank), showlegend=False, customdata=part[["value", "median"]].to_numpy(),
                hovertemplate=(
                    f"step %{{x}}: rank {rank} at %{{customdata[0]:.5g}}, median %{{customdata[1]:.5g}}, "
                    "behind by %{y:.5g}<extra></extra>"
                ),
            ),
            row=2, col=1,
        )  # fmt: skip
    fig.update_yaxes(title_text="slowest rank", dtick=1, row=1, col=1)
    fig.update_yaxes(title_text="behind the median", row=2, col=1)
    fig.update_layout(bargap=0.1)
    curve_layout(fig, f"slowest rank per step · {key}", "step", height)
    fig.update_xaxes(title_text=None, row=1, col=1)
    return fig
