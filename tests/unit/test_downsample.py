"""Downsampling in numpy: LTTB (single and batched) and the MINMAX row assembly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runstream_services.query.downsample import lttb, lttb_many, minmax_series


def _reference_lttb(x, y, n_out):
    """Plain-Python LTTB, written from the algorithm's description, to check the batched one."""
    n = len(x)
    picks = [0]
    a = 0
    n_buckets = n_out - 2
    edges = [math.floor(1 + i * (n - 2) / n_buckets) for i in range(n_buckets + 1)]
    for b in range(n_buckets):
        lo, hi = edges[b], edges[b + 1]
        if b + 1 < n_buckets:
            nlo, nhi = edges[b + 1], edges[b + 2]
            nx, ny = sum(x[nlo:nhi]) / (nhi - nlo), sum(y[nlo:nhi]) / (nhi - nlo)
        else:
            nx, ny = x[-1], y[-1]
        best, best_area = lo, -1.0
        for i in range(lo, hi):
            area = abs((x[a] - nx) * (y[i] - y[a]) - (x[a] - x[i]) * (ny - y[a]))
            if area > best_area:
                best, best_area = i, area
        picks.append(best)
        a = best
    picks.append(n - 1)
    return picks


def test_lttb_matches_the_reference():
    rng = np.random.default_rng(1)
    x = np.arange(5000, dtype=float)
    y = rng.standard_normal(5000).cumsum()
    got_x, got_y = lttb(x, y, 100)
    want = _reference_lttb(x.tolist(), y.tolist(), 100)
    assert got_x.tolist() == x[want].tolist() and got_y.tolist() == y[want].tolist()


def test_lttb_keeps_first_last_and_spikes():
    x = np.arange(100_000, dtype=float)
    y = np.sin(x / 500)
    y[31_337] = 40.0
    y[77_000] = -40.0
    gx, gy = lttb(x, y, 500)
    assert len(gx) == 500 and gx[0] == 0 and gx[-1] == 99_999
    assert gy.max() == 40.0 and gy.min() == -40.0 and gx[np.argmax(gy)] == 31_337
    assert np.all(np.diff(gx) > 0)


def test_lttb_many_mixes_lengths_and_keeps_short_series_whole():
    short = (np.arange(10.0), np.arange(10.0) ** 2)
    long_a = (np.arange(3000.0), np.cos(np.arange(3000.0) / 30))
    long_b = (np.linspace(0, 1, 777), np.random.default_rng(3).standard_normal(777).cumsum())
    out = lttb_many([short, long_a, long_b], 50)
    assert out[0][0].tolist() == short[0].tolist()
    assert len(out[1][0]) == 50 and len(out[2][0]) == 50
    # each series' result is what it gets alone (batching does not mix series)
    assert out[1][1].tolist() == lttb(*long_a, 50)[1].tolist()
    assert out[2][1].tolist() == lttb(*long_b, 50)[1].tolist()


def test_lttb_never_picks_nan_when_a_number_is_there():
    x = np.arange(1000.0)
    y = np.where(np.arange(1000) % 2 == 0, np.nan, np.arange(1000.0))
    y[0] = 0.0
    y[-1] = 1.0
    gx, gy = lttb(x, y, 20)
    assert not np.isnan(gy).any()


def test_lttb_all_nan_bucket_is_skipped():
    x = np.arange(100.0)
    y = np.ones(100)
    y[10:60] = np.nan
    gx, gy = lttb(x, y, 10)
    assert not np.isnan(gy[1:-1]).any() and len(gx) < 10


def test_lttb_needs_three_points():
    with pytest.raises(ValueError):
        lttb(np.arange(10.0), np.arange(10.0), 2)


def test_minmax_assembly_orders_points_and_merges_single_points():
    # series 0: two buckets, one where min comes after max; series 1: a bucket holding one point
    si = np.array([1, 0, 0])
    b = np.array([0, 1, 0])
    xl = np.array([7.0, 15.0, 3.0])
    yl = np.array([1.0, -5.0, 0.0])
    xh = np.array([7.0, 12.0, 1.0])
    yh = np.array([1.0, 9.0, 4.0])
    out = minmax_series(si, b, xl, yl, xh, yh, 3)
    assert out[0][0].tolist() == [1.0, 3.0, 12.0, 15.0] and out[0][1].tolist() == [4.0, 0.0, 9.0, -5.0]
    assert out[1][0].tolist() == [7.0] and out[1][1].tolist() == [1.0]
    assert len(out[2][0]) == 0


def test_minmax_of_random_data_keeps_every_bucket_extreme():
    rng = np.random.default_rng(7)
    x = np.arange(10_000.0)
    y = rng.standard_normal(10_000)
    bucket = (x // 100).astype(np.int64)
    lo_idx = np.array([np.argmin(y[k * 100 : (k + 1) * 100]) + k * 100 for k in range(100)])
    hi_idx = np.array([np.argmax(y[k * 100 : (k + 1) * 100]) + k * 100 for k in range(100)])
    out = minmax_series(
        np.zeros(100, dtype=np.int64), np.unique(bucket), x[lo_idx], y[lo_idx], x[hi_idx], y[hi_idx], 1
    )
    gx, gy = out[0]
    assert len(gx) == 200 and gy.max() == y.max() and gy.min() == y.min() and np.all(np.diff(gx) > 0)
