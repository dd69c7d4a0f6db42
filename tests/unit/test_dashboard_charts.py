"""The dashboard's pure chart helpers: smoothing, config diff, parallel coordinates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from runstream_dashboard import charts


def test_ema_is_debiased_and_keeps_nan_points():
    assert charts.ema(np.full(5, 3.0), 0.9) == pytest.approx(np.full(5, 3.0))  # no pull toward 0
    y = np.array([0.0, 10.0, np.nan, 10.0])
    out = charts.ema(y, 0.5)
    assert out[0] == 0.0 and np.isnan(out[2])
    assert 0 < out[1] < 10 and out[1] < out[3] < 10
    assert charts.ema(y, 0.0) is not None and np.array_equal(charts.ema(y, 0.0), y, equal_nan=True)


def test_config_diff_keeps_only_keys_that_differ_unless_asked():
    configs = {"a": {"lr": 0.1, "seed": 1, "opt": "adam"}, "b": {"lr": 0.01, "seed": 1}}
    diff = charts.config_diff(configs)
    assert diff.index.tolist() == ["lr", "opt"]
    assert diff.loc["opt", "b"] == "—"  # missing in one run counts as a difference
    full = charts.config_diff(configs, only_different=False)
    assert full.index.tolist() == ["lr", "opt", "seed"]
    assert full["differs"].tolist() == [True, True, False]


def test_parallel_coordinates_maps_text_params_to_categories_and_wide_ranges_to_log_axes():
    runs = pd.DataFrame({"params.lr": [0.1, 0.01], "params.opt": ["sgd", "adam"], "metrics.acc": [0.7, 0.9]})
    fig = charts.parallel_coordinates(runs, ["params.lr", "params.opt"], "metrics.acc")
    lr, opt, acc = fig.data[0].dimensions
    assert lr.label == "lr (log)" and list(lr.values) == pytest.approx([-1, -2])  # a decade apart: log axis
    assert list(lr.ticktext) == ["0.01", "0.1"]
    assert list(opt.ticktext) == ["adam", "sgd"] and list(opt.values) == [1, 0]
    assert acc.label == "acc" and list(fig.data[0].line.color) == [0.7, 0.9]


def test_learning_curves_give_one_trace_per_run_and_rank():
    series = pd.DataFrame(
        {
            "run_id": ["r1"] * 3 + ["r2"] * 3 + ["r2"] * 3,
            "key": "loss",
            "rank": [0, 0, 0, 0, 0, 0, 1, 1, 1],
            "x": [0, 1, 2] * 3,
            "y": np.arange(9.0),
            "total_points": 3,
        }
    )
    fig = charts.learning_curves(series, "loss", {"r1": "first", "r2": "second"}, x_axis="relative")
    assert [t.name for t in fig.data] == ["first (rank 0)", "second (rank 0)", "second (rank 1)"]
    assert list(fig.data[0].x) == pytest.approx([0, 1 / 60_000, 2 / 60_000])


@pytest.mark.parametrize("weight", [0.001, 0.1, 0.6, 0.9, 0.99])
def test_ema_equals_the_step_by_step_recursion(weight):
    """The vectorized EMA (blocks of cumulative sums) against the recursion written plainly: long
    series (many blocks), NaN and inf points skipped and kept, values of mixed sign and size."""
    rng = np.random.default_rng(3)
    y = rng.normal(0, 1, 5000) * np.repeat([1.0, 1e6, 1e-6, 1.0, 1e30], 1000)
    y[rng.integers(0, 5000, 200)] = np.nan
    y[[7, 4000]] = np.inf
    expected, last, n = y.copy(), 0.0, 0
    for i, v in enumerate(y.tolist()):
        if np.isfinite(v):
            last = last * weight + (1 - weight) * v
            n += 1
            expected[i] = last / (1 - weight**n)
    got = charts.ema(y, weight)
    finite = np.isfinite(y)
    assert np.array_equal(got[~finite], y[~finite], equal_nan=True)
    scale = np.maximum.accumulate(np.abs(np.where(finite, y, 0)))[
        finite
    ]  # error relative to the values so far
    assert np.all(np.abs(got[finite] - expected[finite]) <= 1e-9 * scale + 1e-300)
    huge = np.array([1e200, np.nan, -1e200, 1.0])  # the plain loop's range
    assert charts.ema(huge, weight)[3] == pytest.approx(_plain(huge, weight)[3])


def _plain(y, weight):
    out, last, n = [], 0.0, 0
    for v in y:
        if np.isfinite(v):
            last = last * weight + (1 - weight) * v
            n += 1
            out.append(last / (1 - weight**n))
        else:
            out.append(v)
    return out
