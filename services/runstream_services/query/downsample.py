"""Downsampling in numpy: assembling per-bucket min/max rows (computed in SQL) into series, and
largest-triangle-three-buckets (LTTB) for many series at once.

LTTB is sequential along a series (each bucket's pick depends on the previous pick), so it is
vectorized across series instead: one loop over bucket positions, each step a few numpy ops on
a (series x candidates) array. The service feeds it a coarse MINMAX pre-aggregation (a few
candidates per output point), so the loop stays short and extremes are among the candidates.
"""

from __future__ import annotations

import warnings

import numpy as np


def minmax_series(
    series_index: np.ndarray,
    bucket: np.ndarray,
    x_lo: np.ndarray,
    y_lo: np.ndarray,
    x_hi: np.ndarray,
    y_hi: np.ndarray,
    n_series: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Turns rows (series, bucket, point of the bucket's min, point of its max) into one (x, y) per
    series, ordered by x; a bucket whose min and max are the same point gives it once."""
    order = np.lexsort((bucket, series_index))
    si, xl, yl, xh, yh = (a[order] for a in (series_index, x_lo, y_lo, x_hi, y_hi))
    first_lo = xl <= xh  # the two points of a bucket in x order
    xa = np.where(first_lo, xl, xh)
    ya = np.where(first_lo, yl, yh)
    xb = np.where(first_lo, xh, xl)
    yb = np.where(first_lo, yh, yl)
    same = (xa == xb) & ((ya == yb) | (np.isnan(ya) & np.isnan(yb)))
    x = np.column_stack([xa, xb]).ravel()
    y = np.column_stack([ya, yb]).ravel()
    s = np.repeat(si, 2)
    keep = np.ones(len(x), dtype=bool)
    keep[1::2] = ~same
    x, y, s = x[keep], y[keep], s[keep]
    bounds = np.searchsorted(s, np.arange(n_series + 1))
    return [(x[bounds[i] : bounds[i + 1]], y[bounds[i] : bounds[i + 1]]) for i in range(n_series)]


def lttb(x: np.ndarray, y: np.ndarray, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """LTTB of one series (x ascending) to at most n_out points."""
    return lttb_many([(x, y)], n_out)[0]


def lttb_many(series: list[tuple[np.ndarray, np.ndarray]], n_out: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """LTTB of every series to at most n_out points (n_out >= 3); shorter series are returned whole.
    NaN values are never picked while a bucket holds a number."""
    if n_out < 3:
        raise ValueError("LTTB needs n_out >= 3")
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(series)
    todo = []
    for i, (x, y) in enumerate(series):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if len(x) <= n_out:
            out[i] = (x, y)
        else:
            todo.append((i, x, y))
    if todo:
        for i, picked in zip(
            (t[0] for t in todo), _lttb_batch([(t[1], t[2]) for t in todo], n_out), strict=True
        ):
            out[i] = picked
    return out  # type: ignore[return-value]


def _lttb_batch(
    series: list[tuple[np.ndarray, np.ndarray]], n_out: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    n_buckets = n_out - 2
    n_series = len(series)
    # Bucket b of a series of length L covers indexes [edge[b], edge[b+1]) of its middle points.
    edges = [
        np.floor(1 + np.arange(n_buckets + 1) * (len(x) - 2) / n_buckets).astype(np.int64) for x, _ in series
    ]
    width = max(int(np.max(np.diff(e))) for e in edges)
    cx = np.full((n_series, n_buckets, width), np.nan)
    cy = np.full((n_series, n_buckets, width), np.nan)
    cvalid = np.zeros((n_series, n_buckets, width), dtype=bool)
    cindex = np.zeros((n_series, n_buckets, width), dtype=np.int64)
    for s, ((x, y), e) in enumerate(zip(series, edges, strict=True)):
        idx = np.arange(1, len(x) - 1)
        b = np.searchsorted(e, idx, side="right") - 1
        slot = idx - e[b]
        cx[s, b, slot] = x[idx]
        cy[s, b, slot] = y[idx]
        cvalid[s, b, slot] = ~np.isnan(y[idx])
        cindex[s, b, slot] = idx
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN bucket has no mean: NaN is fine
        avg_x = np.nanmean(np.where(cvalid, cx, np.nan), axis=2)
        avg_y = np.nanmean(np.where(cvalid, cy, np.nan), axis=2)
    last_x = np.array([x[-1] for x, _ in series])
    last_y = np.array([y[-1] for _, y in series])
    # The third point of bucket b is the mean of bucket b+1 (the last point for the last bucket).
    next_x = np.column_stack([avg_x[:, 1:], last_x])
    next_y = np.column_stack([avg_y[:, 1:], last_y])
    ax = np.array([x[0] for x, _ in series])
    ay = np.array([y[0] for _, y in series])
    picks = np.full((n_series, n_buckets), -1, dtype=np.int64)
    rows = np.arange(n_series)
    for b in range(n_buckets):
        bx, by, ok = cx[:, b, :], cy[:, b, :], cvalid[:, b, :]
        nx, ny = next_x[:, b : b + 1], next_y[:, b : b + 1]
        area = np.abs((ax[:, None] - nx) * (by - ay[:, None]) - (ax[:, None] - bx) * (ny - ay[:, None]))
        area = np.where(ok, np.nan_to_num(area, nan=0.0), -np.inf)
        best = np.argmax(area, axis=1)
        has = ok[rows, best]
        picks[:, b] = np.where(has, cindex[:, b, :][rows, best], -1)
        ax = np.where(has, bx[rows, best], ax)
        ay = np.where(has, by[rows, best], ay)
    result = []
    for s, (x, y) in enumerate(series):
        chosen = picks[s][picks[s] >= 0]
        keep = np.concatenate([[0], chosen, [len(x) - 1]])
        result.append((x[keep], y[keep]))
    return result
