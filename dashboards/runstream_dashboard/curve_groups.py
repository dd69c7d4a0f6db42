"""Grouped learning curves: many runs' series of one metric reduced to a mean line with a min/max
band per group (a config value, a tag or the run group), so a sweep of 40 runs reads as 4 lines.

Runs log at different steps and the server downsamples each series on its own (min/max buckets),
so the runs of a group rarely share x values. Each run is therefore read on a common grid by
linear interpolation between its own points, only inside its own x range (never extrapolated):
at an x, the group's mean, min and max are over the runs that cover that x, and `count` says how
many did. Non-finite values (NaN, +-inf) are left out, as a point never logged would be."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

GROUP_COLUMNS = ["group", "x", "mean", "min", "max", "count"]
MAX_GRID_POINTS = 1000
NO_VALUE = "(none)"  # the group of runs without the grouping key


def _run_points(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Finite points sorted by x, one per x (points sharing an x averaged)."""
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) == 0:
        return x, y
    ux, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=y, minlength=len(ux))
    counts = np.bincount(inverse, minlength=len(ux))
    return ux, sums / counts


def _grid(xs: list[np.ndarray], max_points: int) -> np.ndarray:
    grid = np.unique(np.concatenate(xs))
    if len(grid) > max_points:
        grid = np.linspace(grid[0], grid[-1], max_points)
    return grid


def group_curves(
    series: pd.DataFrame, groups: Mapping[str, str], max_points: int = MAX_GRID_POINTS
) -> pd.DataFrame:
    """`series`: one metric's points, columns run_id, x, y (other columns ignored). `groups`:
    run_id -> group name; runs missing from it fall into NO_VALUE. Returns GROUP_COLUMNS, one row
    per (group, x) covered by at least one run, sorted by group then x."""
    frames = []
    runs_by_group: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for run_id, points in series.groupby("run_id", sort=True):
        x, y = _run_points(points["x"].to_numpy(float), points["y"].to_numpy(float))
        if len(x):
            runs_by_group.setdefault(groups.get(str(run_id), NO_VALUE), []).append((x, y))
    for group in sorted(runs_by_group):
        runs = runs_by_group[group]
        grid = _grid([x for x, _ in runs], max_points)
        values = np.full((len(runs), len(grid)), np.nan)
        for i, (x, y) in enumerate(runs):
            inside = (grid >= x[0]) & (grid <= x[-1])
            values[i, inside] = np.interp(grid[inside], x, y)
        count = np.sum(~np.isnan(values), axis=0)
        covered = count > 0
        v = values[:, covered]
        frames.append(
            pd.DataFrame(
                {
                    "group": group,
                    "x": grid[covered],
                    "mean": np.nanmean(v, axis=0),
                    "min": np.nanmin(v, axis=0),
                    "max": np.nanmax(v, axis=0),
                    "count": count[covered],
                }
            )
        )
    if not frames:
        return pd.DataFrame(columns=GROUP_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def group_label(value) -> str:
    """How a run's grouping value is named in the legend (empty or missing: NO_VALUE)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return NO_VALUE
    text = str(value)
    return text if text else NO_VALUE
