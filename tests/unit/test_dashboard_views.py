"""The pure parts of the dashboard's views (issue 16, item 4): the runs page's URL state and its
round trip through a URL and a saved view's JSON, grouped curves (mean with a min/max band) and
the straggler table of a multi-rank run."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode

import numpy as np
import pandas as pd
import pytest

from runstream_dashboard import curve_groups, stragglers, url_state
from runstream_dashboard.url_state import RunsView

# ---------------------------------------------------------------- URL state


def through_url(view: RunsView) -> RunsView:
    """As a browser carries it: encoded into a query string, parsed back."""
    query = urlencode(url_state.to_query(view), doseq=True)
    parsed = parse_qs(query, keep_blank_values=True)
    return url_state.from_query(lambda name: parsed.get(name, []))


def test_a_view_survives_a_url_and_a_saved_view():
    view = RunsView(
        filter='params.lr > 0.01 and tags.dataset = "v2,1"',
        sort="metrics.val_loss",
        desc=False,
        rows=250,
        params=("lr", "optimizer,kind"),  # a key with a comma: lists are repeated parameters
        metrics=(),  # no metric columns at all, which is not the default
        curves=("val_loss", "train/loss"),
        runs=("r1", "r2"),
        x="relative",
        smooth=0.25,
        log=True,
        group="params.optimizer",
    )
    assert through_url(view) == view
    assert url_state.from_json(url_state.to_json(view)) == view
    assert url_state.to_json(view)["metrics"] == []


def test_defaults_stay_out_of_the_url_and_bad_values_fall_back():
    assert url_state.to_query(RunsView()) == {}
    assert url_state.to_json(RunsView()) == {}
    assert through_url(RunsView()) == RunsView()
    assert url_state.to_query(RunsView(params=None, rows=50)) == {"rows": "50"}
    hand_edited = {"rows": ["7"], "x": ["sideways"], "smooth": ["lots"], "desc": ["maybe"], "log": ["true"]}
    view = url_state.from_query(lambda name: hand_edited.get(name, []))
    assert view == RunsView(log=True)
    assert url_state.from_json({"rows": 1000, "future_key": 1}) == RunsView(rows=1000)


# ---------------------------------------------------------------- grouped curves


def frame(points: dict[str, tuple[list[float], list[float]]]) -> pd.DataFrame:
    rows = [(run, x, y) for run, (xs, ys) in points.items() for x, y in zip(xs, ys, strict=True)]
    return pd.DataFrame(rows, columns=["run_id", "x", "y"])


def test_group_mean_and_band_over_misaligned_steps():
    series = frame(
        {
            "a": ([0, 10, 20], [0.0, 10.0, 20.0]),
            "b": ([5, 15], [15.0, 25.0]),  # other steps, inside a's range
            "c": ([0, 20], [100.0, 100.0]),  # another group
        }
    )
    out = curve_groups.group_curves(series, {"a": "adam", "b": "adam", "c": "sgd"})
    adam = out[out["group"] == "adam"].set_index("x")
    assert adam.index.tolist() == [0, 5, 10, 15, 20]
    # at x=10: a logged 10, b interpolated between (5, 15) and (15, 25) -> 20
    assert adam.loc[10, ["mean", "min", "max", "count"]].tolist() == [15.0, 10.0, 20.0, 2]
    # at x=0 and x=20 only a covers the step (b is never extrapolated)
    assert adam.loc[0, ["mean", "min", "max", "count"]].tolist() == [0.0, 0.0, 0.0, 1]
    assert adam.loc[20, "count"] == 1
    sgd = out[out["group"] == "sgd"]
    assert sgd["mean"].tolist() == sgd["min"].tolist() == sgd["max"].tolist() == [100.0, 100.0]  # one run


def test_nan_points_are_left_out_and_runs_without_a_group_gather():
    series = frame(
        {"a": ([0, 1, 2], [1.0, np.nan, 3.0]), "b": ([0, 1, 2], [3.0, 3.0, np.inf]), "d": ([0], [np.nan])}
    )
    out = curve_groups.group_curves(series, {"a": "g", "b": "g"}).set_index("x")
    assert out["group"].unique().tolist() == ["g"]  # d has no finite point and no group: no row
    assert out.loc[1, "mean"] == pytest.approx((2.0 + 3.0) / 2)  # a interpolated over its NaN
    assert out.loc[2, ["mean", "count"]].tolist() == [3.0, 1]  # b's inf left out, b ends at x=1
    lone = curve_groups.group_curves(frame({"z": ([0], [1.0])}), {})
    assert lone["group"].tolist() == [curve_groups.NO_VALUE]
    assert curve_groups.group_curves(frame({}), {}).columns.tolist() == curve_groups.GROUP_COLUMNS


def test_a_long_grid_is_thinned_to_max_points():
    xs = np.arange(5000, dtype=float)
    out = curve_groups.group_curves(frame({"a": (xs, xs * 2), "b": (xs + 0.5, xs * 2)}), {}, max_points=100)
    assert len(out) == 100 and out["x"].iloc[0] == 0 and out["x"].iloc[-1] == 4999.5
    assert curve_groups.group_label(float("nan")) == curve_groups.group_label("") == curve_groups.NO_VALUE
    assert curve_groups.group_label(0.001) == "0.001"


# ---------------------------------------------------------------- stragglers


def test_slowest_rank_per_step_and_its_lag_behind_the_median():
    rows = []
    for step in range(6):
        for rank in range(4):
            t = 1.0 + 0.01 * rank
            if rank == 3 and step % 2 == 0:
                t = 2.0  # rank 3 straggles on even steps
            rows.append((rank, step, t))
    rows.append((0, 6, 1.0))  # a step only one rank logged: no straggler to name
    rows.append((4, 5, np.nan))  # a rank whose only value is NaN does not count
    series = pd.DataFrame(rows, columns=["rank", "x", "y"])
    table = stragglers.slowest_ranks(series)
    assert table["step"].tolist() == [0, 1, 2, 3, 4, 5]
    assert table["slowest_rank"].tolist() == [3, 3, 3, 3, 3, 3]
    even = table.set_index("step").loc[0]
    assert even["median"] == pytest.approx(1.015) and even["behind"] == pytest.approx(0.985)
    assert even["behind_pct"] == pytest.approx(0.985 / 1.015 * 100)
    assert table.set_index("step").loc[5, "ranks"] == 4
    counts = stragglers.straggler_counts(table)
    assert counts.iloc[0][["rank", "times_slowest", "share"]].tolist() == [3, 6, 1.0]
    assert counts.iloc[0]["total_behind"] == pytest.approx(table["behind"].sum())
    # a rank slightly slower on many steps comes after one far behind on a few
    mixed = pd.DataFrame(
        {"step": [0, 1, 2, 3], "slowest_rank": [1, 1, 1, 2], "behind": [0.01, 0.01, 0.01, 1.0]}
    )
    assert stragglers.straggler_counts(mixed)["rank"].tolist() == [2, 1]


def test_lower_is_slower_ties_and_empty():
    series = pd.DataFrame({"rank": [0, 1, 2, 0, 1], "x": [0, 0, 0, 1, 1], "y": [5.0, 3.0, 3.0, 2.0, 2.0]})
    table = stragglers.slowest_ranks(series, higher_is_slower=False)  # e.g. throughput
    assert table["slowest_rank"].tolist() == [1, 0]  # ties go to the lowest rank
    assert table["behind"].tolist() == [0.0, 0.0]
    assert stragglers.slowest_ranks(series.iloc[0:0]).empty
    assert stragglers.straggler_counts(stragglers.slowest_ranks(series.iloc[0:0])).empty


def test_the_straggler_window_is_the_newest_steps_that_fit():
    assert stragglers.step_window(0, 49, 4, 500_000) == (0, 49)  # the whole run fits
    assert stragglers.step_window(0, 999_999, 1000, 500_000) == (999_500, 999_999)  # 500 steps x 1000 ranks
    assert stragglers.step_window(0, 999_999, 2, 500_000, max_steps=100_000) == (900_000, 999_999)
    assert stragglers.step_window(10, 10, 8, 1) == (10, 10)  # always at least one step


def test_a_long_straggler_table_is_thinned_for_drawing_keeping_the_spikes():
    steps = np.arange(10_000)
    behind = np.full(10_000, 0.001)
    behind[[17, 5_003, 9_999]] = [1.0, 2.0, 3.0]
    table = pd.DataFrame({"step": steps, "slowest_rank": steps % 4, "behind": behind})
    shown = stragglers.thin(table, 100)
    assert len(shown) == 100 and shown["step"].is_monotonic_increasing
    assert {17, 5_003, 9_999} <= set(shown["step"])
    assert stragglers.thin(table.iloc[:50], 100).equals(table.iloc[:50])
