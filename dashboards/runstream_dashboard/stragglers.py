"""The straggler view of a multi-rank run: for one per-step metric whose larger values mean a
slower rank (step time, data-loading wait), which rank was slowest at each step and how far it was
behind the median rank. Pure functions over a long-form series frame (rank, x = step, y)."""

from __future__ import annotations

import numpy as np
import pandas as pd

STRAGGLER_COLUMNS = ["step", "slowest_rank", "value", "median", "behind", "behind_pct", "ranks"]
COUNT_COLUMNS = ["rank", "times_slowest", "share", "mean_behind", "total_behind"]


def slowest_ranks(series: pd.DataFrame, higher_is_slower: bool = True) -> pd.DataFrame:
    """One row per step that at least two ranks logged (finite values only): the slowest rank
    (largest value, or smallest with higher_is_slower=False; ties go to the lowest rank), its value,
    the median over the ranks, how far behind the median it is (always >= 0) and in percent of the
    median (NaN when the median is 0), and how many ranks logged the step."""
    frame = series[["rank", "x", "y"]].copy()
    frame = frame[np.isfinite(frame["x"].astype(float)) & np.isfinite(frame["y"].astype(float))]
    frame = frame.groupby(["x", "rank"], as_index=False)["y"].mean()  # one value per (step, rank)
    if frame.empty:
        return pd.DataFrame(columns=STRAGGLER_COLUMNS)
    stats = frame.groupby("x")["y"].agg(["median", "size"])
    stats = stats[stats["size"] >= 2]
    frame = frame[frame["x"].isin(stats.index)]
    if frame.empty:
        return pd.DataFrame(columns=STRAGGLER_COLUMNS)
    ordered = frame.sort_values(["x", "y", "rank"], ascending=[True, not higher_is_slower, True])
    worst = ordered.drop_duplicates("x", keep="first").set_index("x")
    median = stats.loc[worst.index, "median"]
    behind = (worst["y"] - median).abs()
    pct = np.where(median != 0, behind / median.abs() * 100.0, np.nan)
    out = pd.DataFrame(
        {
            "step": worst.index.to_numpy(),
            "slowest_rank": worst["rank"].to_numpy(np.int64),
            "value": worst["y"].to_numpy(float),
            "median": median.to_numpy(float),
            "behind": behind.to_numpy(float),
            "behind_pct": pct,
            "ranks": stats.loc[worst.index, "size"].to_numpy(np.int64),
        }
    )
    return out.sort_values("step", ignore_index=True)


def straggler_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Per rank that was ever slowest: how often, its share of the steps, and its lag behind the
    median on those steps (mean and total); the rank that held the others back most (largest
    total lag) first: a rank 1 ms slower on every step matters less than one 100 ms slower on some."""
    if table.empty:
        return pd.DataFrame(columns=COUNT_COLUMNS)
    counts = table.groupby("slowest_rank").agg(
        times_slowest=("step", "size"), mean_behind=("behind", "mean"), total_behind=("behind", "sum")
    )
    counts["share"] = counts["times_slowest"] / len(table)
    counts = counts.reset_index().rename(columns={"slowest_rank": "rank"})
    return counts[COUNT_COLUMNS].sort_values(
        ["total_behind", "rank"], ascending=[False, True], ignore_index=True
    )


def step_window(
    first_step: float, last_step: float, ranks: int, budget_points: int, max_steps: int = 100_000
) -> tuple[float, float]:
    """The newest steps whose points (one per step and rank) fit in `budget_points`, and at most
    `max_steps` of them (the server's points per series): the straggler view reads every point of
    the window, as downsampled series of different ranks would not share their steps. The whole
    run when it fits."""
    steps = max(1, min(max_steps, budget_points // max(1, ranks)))
    return (max(first_step, last_step - steps + 1), last_step)


def thin(table: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    """At most about `max_rows` rows of a slowest_ranks table for drawing: the steps cut into
    `max_rows` equal buckets, the step furthest behind kept from each (a spike is never dropped)."""
    if len(table) <= max_rows:
        return table
    bucket = (
        (table["step"] - table["step"].min()) * max_rows // (table["step"].max() - table["step"].min() + 1)
    )
    return table.loc[table.groupby(bucket)["behind"].idxmax()].sort_values("step", ignore_index=True)
