"""Plotly figures for the dashboard. Pure functions of DataFrames: no Streamlit, no data access.
Logged text (keys, run names, param values) goes into titles, legends and ticks through
safe_text.plotly_text, as Plotly renders <a href> and a few other tags there."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from runstream_dashboard.safe_text import plotly_text

PALETTE = qualitative.Plotly + qualitative.D3 + qualitative.Set2
X_TITLES = {"step": "step", "time": "time", "relative": "minutes since the run's first point"}


def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's smoothing). `weight` in [0, 1): 0 is no
    smoothing. NaN points are skipped (they keep the running average) and stay NaN.

    Vectorized (a 50-run overlay of 1,000-point curves is 50,000 points per chart): over the finite
    values u, last_k = w last_(k-1) + (1 - w) u_k is, within a block starting at a,
    w^(k-a+1) last_(a-1) + (1 - w) w^(k-a) cumsum(u_j w^(a-j)); blocks are short enough that
    w^(a-j) stays far from overflow. Values too large for that use the plain loop."""
    y = np.asarray(values, dtype=float)
    if weight <= 0 or y.size == 0:
        return y
    out = y.copy()
    finite = np.isfinite(y)
    u = y[finite]
    if not u.size:
        return out
    if np.abs(u).max() > 1e100:
        out[finite] = _ema_loop(u, weight)
        return out
    log_w = math.log(weight)
    block = max(1, int(300 / -log_w)) if log_w < 0 else u.size
    last = np.empty_like(u)
    carry = 0.0
    for a in range(0, u.size, block):
        part = u[a : a + block]
        k = np.arange(part.size, dtype=float)
        grow = np.exp(-k * log_w)  # w^-k
        decay = np.exp(k * log_w)  # w^k
        last[a : a + part.size] = weight * decay * carry + (1 - weight) * decay * np.cumsum(part * grow)
        carry = last[a + part.size - 1]
    count = np.arange(1, u.size + 1, dtype=float)
    out[finite] = last / (1 - np.power(weight, count))
    return out


def _ema_loop(u: np.ndarray, weight: float) -> np.ndarray:
    out = np.empty_like(u)
    last = 0.0
    for i, v in enumerate(u.tolist()):
        last = last * weight + (1 - weight) * v
        out[i] = last / (1 - weight ** (i + 1))
    return out


def _x_values(x: np.ndarray, x_axis: str) -> np.ndarray | pd.DatetimeIndex:
    if x_axis == "time":
        return pd.to_datetime(x, unit="ms")
    if x_axis == "relative":
        return x / 60_000.0
    return x


def learning_curves(
    series: pd.DataFrame,
    key: str,
    labels: dict[str, str],
    *,
    x_axis: str = "step",
    smoothing: float = 0.0,
    log_y: bool = False,
    height: int = 360,
) -> go.Figure:
    """One trace per (run, rank) of metric `key`, overlaid; `labels` maps run_id -> legend name
    and fixes the color order, so a run keeps its color across charts."""
    colors = {run_id: PALETTE[i % len(PALETTE)] for i, run_id in enumerate(labels)}
    part = series[series["key"] == key]
    several_ranks = part["rank"].nunique() > 1
    traces = []
    for (run_id, rank), pts in part.groupby(["run_id", "rank"], sort=False):
        x, y = pts["x"].to_numpy(), pts["y"].to_numpy()
        if len(x) > 1 and (x[1:] < x[:-1]).any():  # the server sends each series in x order
            order = np.argsort(x, kind="stable")
            x, y = x[order], y[order]
        name = plotly_text(labels.get(run_id, run_id))
        if several_ranks:
            name = f"{name} (rank {rank})"
        traces.append(
            go.Scatter(
                x=_x_values(x, x_axis),
                y=ema(y, smoothing),
                mode="lines",
                name=name,
                line={"color": colors.get(run_id), "width": 1.6},
                hovertemplate=f"{name}<br>%{{x}}: %{{y:.5g}}<extra></extra>",
            )
        )
    # one pass over the traces (add_trace per trace validated twice)
    return curve_layout(go.Figure(data=traces), key, x_axis, height, log_y)


def curve_layout(fig: go.Figure, title: str, x_axis: str, height: int, log_y: bool = False) -> go.Figure:
    """The look every curve chart shares: title, margins, legend, x-axis title, log y."""
    fig.update_layout(
        title={"text": plotly_text(title), "x": 0.01, "font": {"size": 15}},
        height=height,
        margin={"l": 50, "r": 10, "t": 40, "b": 40},
        legend={"font": {"size": 11}},
        hovermode="closest",
        template="plotly_white",
    )
    fig.update_xaxes(title_text=X_TITLES.get(x_axis, x_axis))
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def parallel_coordinates(
    runs: pd.DataFrame, dimensions: list[str], metric: str, *, height: int = 480
) -> go.Figure:
    """Parallel coordinates: one axis per column in `dimensions` (numbers as they are, text as
    categories), the last axis and the line color is `metric`."""
    dims = []
    for col in [*dimensions, metric]:
        values = runs[col]
        label = plotly_text(col.split(".", 1)[-1])
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.notna().all():
            values = numeric.to_numpy(dtype=float)
            if col != metric and (values > 0).all() and values.max() / values.min() >= 10:
                # spans a decade or more (learning rates, weight decay): a log axis
                ticks = np.unique(values)
                dims.append(
                    {"label": f"{label} (log)", "values": np.log10(values), "tickvals": np.log10(ticks),
                     "ticktext": [f"{t:g}" for t in ticks]}
                )  # fmt: skip
                continue
            dims.append({"label": label, "values": values})
            continue
        cats = sorted(values.astype(str).unique())
        codes = values.astype(str).map({c: i for i, c in enumerate(cats)})
        dims.append(
            {
                "label": label,
                "values": codes.to_numpy(),
                "tickvals": list(range(len(cats))),
                "ticktext": [plotly_text(c) for c in cats],
            }
        )
    color = pd.to_numeric(runs[metric], errors="coerce")
    fig = go.Figure(
        go.Parcoords(
            line={
                "color": color.fillna(color.min() if color.notna().any() else 0),
                "colorscale": "Viridis",
                "showscale": True,
                "colorbar": {"title": {"text": plotly_text(metric.split(".", 1)[-1])}},
            },
            dimensions=dims,
        )
    )
    fig.update_layout(height=height, margin={"l": 60, "r": 40, "t": 50, "b": 30}, template="plotly_white")
    return fig


def config_diff(configs: dict[str, dict], only_different: bool = True) -> pd.DataFrame:
    """Rows: config keys; columns: runs (by label). With `only_different`, keys whose value is the
    same in every run are dropped. A `differs` column says which rows disagree."""
    keys = sorted(set().union(*[c.keys() for c in configs.values()])) if configs else []
    rows = {}
    for key in keys:
        rows[key] = {label: display_value(cfg.get(key, "—")) for label, cfg in configs.items()}
    df = pd.DataFrame.from_dict(rows, orient="index", columns=list(configs))
    df.index.name = "key"
    differs = df.nunique(axis=1, dropna=False) > 1 if not df.empty else pd.Series(dtype=bool)
    df["differs"] = differs
    if only_different:
        df = df[df["differs"]]
    return df


def display_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
