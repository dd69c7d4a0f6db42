"""Series planning (query/series.py) without gRPC or a database: request checks, the choice of raw,
MINMAX-from-raw or MINMAX-from-rollups per series, the points budget of every mode, the parameters
of each read, and reassembly of the read columns into per-series curves."""

from __future__ import annotations

import numpy as np
import pytest

from runstream_services.errors import InvalidArgument, ResourceExhausted
from runstream_services.query import series
from runstream_services.query.series import plan_series, series_spec


def spec(**over) -> series.SeriesSpec:
    args = dict(
        run_ids=["a", "b"], keys=["loss"], rank=0, max_points=100, mode="minmax", axis="step", x_range=None
    )
    args.update(over)
    return series_spec(**args)


def bounds(run_id="a", key="loss", rank=0, steps=(0, 999), ms=(1_000, 2_000), points=1_000) -> tuple:
    """A row as the bounds query returns it."""
    return (run_id, key, rank, steps[0], steps[1], ms[0], ms[1], points)


# ---------------------------------------------------------------- request checks


@pytest.mark.parametrize(
    ("over", "message"),
    [
        (dict(run_ids=[]), "run_ids and keys are required"),
        (dict(keys=[]), "run_ids and keys are required"),
        (dict(run_ids=[str(i) for i in range(1_001)]), "1001 run_ids is over the limit of 1000 per call"),
        (dict(keys=[str(i) for i in range(101)]), "101 keys is over the limit of 100 per call"),
        (dict(max_points=100_001), "max_points 100001 is over the limit of 100000"),
        (dict(max_points=1), "max_points must be at least 2"),
        (dict(mode=None), "unknown downsampling or x_axis value"),
        (dict(axis=None), "unknown downsampling or x_axis value"),
        (dict(x_range=(5.0, 1.0)), "x_min and x_max must be finite numbers with x_min <= x_max"),
        (dict(x_range=(0.0, float("inf"))), "x_min and x_max must be finite numbers"),
    ],
)
def test_spec_refuses_bad_requests(over, message):
    with pytest.raises(InvalidArgument) as err:
        spec(**over)
    assert message in err.value.message


def test_spec_dedupes_in_order_and_defaults_max_points():
    s = spec(run_ids=["b", "a", "b"], keys=["x", "y", "x"], max_points=0, rank=None)
    assert s.run_ids == ["b", "a"] and s.keys == ["x", "y"]
    assert s.max_points == series.DEFAULT_MAX_POINTS and s.all_ranks


# ---------------------------------------------------------------- bucket choice


def test_short_series_are_read_raw_and_ordered_as_requested():
    plan = plan_series(spec(), [bounds("b", points=50), bounds("a", points=100)])
    assert [s.run_id for s in plan.series] == ["a", "b"]
    assert [r.source for r in plan.reads] == ["raw"]
    assert plan.reads[0].picks == [(0, 0, 1.0), (1, 0, 1.0)]


def test_long_series_use_rollups_while_buckets_span_two_rollup_rows():
    # MINMAX to 100 points: 50 buckets; rollups need 2 * 50 rows = 3,200 steps
    plan = plan_series(spec(), [bounds("a", steps=(0, 3_199), points=3_200)])
    assert [r.source for r in plan.reads] == ["rollup"]
    (pick,) = plan.reads[0].picks
    assert pick.x0 == 0 and pick.width == pytest.approx(3_200 / 50)


def test_series_too_short_for_rollups_are_bucketed_from_raw_points():
    plan = plan_series(spec(), [bounds("a", steps=(0, 3_000), points=3_001), bounds("b", points=10)])
    assert [(r.source, [p.series for p in r.picks]) for r in plan.reads] == [("raw", [1]), ("minmax", [0])]


def test_lttb_buckets_once_per_output_point():
    plan = plan_series(spec(mode="lttb"), [bounds("a", steps=(0, 3_199), points=3_200)])
    # 100 buckets of candidates, each needing one rollup row: 3,200 steps = 100 rows
    assert [r.source for r in plan.reads] == ["rollup"]
    assert plan.reads[0].picks[0].width == pytest.approx(32.0)


def test_zoom_counts_only_the_points_in_range():
    # 1,000 points over steps 0..999; the range 0..50 holds about 51 of them: raw
    plan = plan_series(spec(x_range=(0.0, 50.0)), [bounds("a")])
    assert [r.source for r in plan.reads] == ["raw"]
    plan = plan_series(spec(x_range=(100.0, 900.0)), [bounds("a")])
    assert plan.reads[0].source == "minmax" and plan.reads[0].picks[0].x0 == 100.0


def test_relative_axis_measures_from_the_runs_first_point():
    rows = [bounds("a", key="loss", ms=(5_000, 9_000)), bounds("a", key="acc", ms=(3_000, 4_000))]
    plan = plan_series(spec(keys=["loss", "acc"], axis="relative", max_points=2), rows)
    assert plan.run_t0 == {"a": 3_000}
    picks = {p.series: p for r in plan.reads for p in r.picks}
    assert picks[0].x0 == 2_000 and picks[1].x0 == 0


# ---------------------------------------------------------------- the NONE budget


def test_none_reads_everything_raw_within_the_budget():
    plan = plan_series(spec(mode="none"), [bounds("a", points=1_000_000)])
    assert [r.source for r in plan.reads] == ["raw"]


def test_none_over_the_budget_is_refused_before_any_read():
    rows = [bounds("a", points=1_500_000), bounds("b", points=1_500_000)]
    with pytest.raises(ResourceExhausted) as err:
        plan_series(spec(mode="none"), rows)
    assert "3000000 points requested over 2 series (limit 2000000 per call)" in err.value.message
    assert "use MINMAX or LTTB downsampling, a zoom range (x_min/x_max), or GetHistory" in err.value.message


# ---------------------------------------------------------------- read parameters


def test_queries_name_only_the_series_each_read_covers():
    rows = [bounds("a", steps=(0, 3_199), points=3_200), bounds("b", points=10)]
    plan = plan_series(spec(x_range=(0.0, 5_000.0)), rows)
    where = {"project": "p", "kind": "user", "runs": ["a", "b"], "keys": ["loss"], "rank": 0}
    raw, rollup = plan.queries("db", where)
    assert "FROM db.metrics FINAL" in raw.sql and "db.metric_rollups" in rollup.sql
    assert raw.params["runs"] == ["b"] and raw.params["sids"] == ["", "b\0loss\0" + "0"]
    assert rollup.params["sids"] == ["a\0loss\0" + "0", ""] and rollup.params["idx"] == [1, 2]
    assert rollup.params["ws"][1] == 1.0 and rollup.params["x0s"][1] == 0.0
    assert (raw.params["x_min"], raw.params["x_max"]) == (0.0, 5_000.0) and "offs" not in raw.params
    assert where["runs"] == ["a", "b"]  # the bounds params are not changed


# ---------------------------------------------------------------- reassembly


def test_assemble_splits_raw_and_bucket_reads_per_series():
    rows = [bounds("a", steps=(0, 3_000), points=3_001), bounds("b", points=10), bounds("c", points=10)]
    plan = plan_series(spec(run_ids=["a", "b", "c"]), rows)
    assert [r.source for r in plan.reads] == ["raw", "minmax"]
    # raw columns (series number, 1-based; x; y) for series 2 and 3, out of order
    raw = [np.array([3, 2, 2]), np.array([5.0, 1.0, 2.0]), np.array([0.5, 0.1, 0.2])]
    # one bucket of series 1: min at x=7 (y=-1), max at x=3 (y=4)
    buckets = [np.array([v]) for v in (1, 0, 7.0, -1.0, 3.0, 4.0)]
    (ax, ay), (bx, by), (cx, cy) = plan.assemble([raw, buckets])
    assert ax.tolist() == [3.0, 7.0] and ay.tolist() == [4.0, -1.0]
    assert bx.tolist() == [1.0, 2.0] and by.tolist() == [0.1, 0.2]
    assert cx.tolist() == [5.0] and cy.tolist() == [0.5]


def test_assemble_leaves_series_without_points_empty():
    plan = plan_series(spec(), [bounds("a", points=5), bounds("b", points=5)])
    empty = [np.array([], dtype=np.uint32), np.array([]), np.array([])]
    assert [len(x) for x, _ in plan.assemble([empty])] == [0, 0]


def test_assemble_applies_lttb_last():
    plan = plan_series(spec(mode="lttb", max_points=10, run_ids=["a"]), [bounds("a", points=5)])
    x = np.arange(50, dtype=float)
    ((out_x, out_y),) = plan.assemble([[np.ones(50, dtype=np.uint32), x, np.sin(x)]])
    assert len(out_x) == 10 and out_x[0] == 0 and out_x[-1] == 49


def test_no_series_found_plans_no_reads():
    plan = plan_series(spec(), [])
    assert plan.series == [] and plan.reads == [] and plan.assemble([]) == []


# ---------------------------------------------------------------- the points budget of every mode (issue 10, item 9)


@pytest.mark.parametrize("mode", ["minmax", "lttb", "none"])
def test_every_mode_is_refused_over_the_points_budget_before_any_read(mode):
    """60 series of 100,000 points at max_points=100,000: MINMAX and LTTB read them raw (each is
    within max_points), so they once fetched 6 M points and failed on the message size."""
    rows = [bounds(f"r{i}", steps=(0, 99_999), points=100_000) for i in range(60)]
    with pytest.raises(ResourceExhausted) as err:
        plan_series(spec(run_ids=[f"r{i}" for i in range(60)], mode=mode, max_points=100_000), rows)
    message = err.value.message
    assert f"6000000 points requested over 60 series (limit {series.MAX_RESPONSE_POINTS} per call)" in message
    assert ("lower max_points" in message) if mode != "none" else ("use MINMAX or LTTB" in message)


def test_bucketed_series_count_the_points_their_buckets_return():
    # MINMAX to 100,000 points: at most 100,000 per series, whatever their length
    rows = [bounds(f"r{i}", steps=(0, 9_999_999), points=10_000_000) for i in range(20)]
    plan = plan_series(spec(run_ids=[f"r{i}" for i in range(20)], max_points=100_000), rows)
    assert plan.points == 2_000_000 <= series.MAX_RESPONSE_POINTS
    rows.append(bounds("r20", steps=(0, 9_999_999), points=10_000_000))
    with pytest.raises(ResourceExhausted):
        plan_series(spec(run_ids=[f"r{i}" for i in range(21)], max_points=100_000), rows)
    # LTTB reads two candidates per output point
    with pytest.raises(ResourceExhausted):
        plan_series(spec(run_ids=[f"r{i}" for i in range(11)], mode="lttb", max_points=100_000), rows[:11])


def test_the_response_must_fit_the_message_limit():
    rows = [bounds("a", points=1_000), bounds("b", points=1_000)]
    plan = plan_series(spec(max_points=1_000), rows, max_message_bytes=64 * 1024)
    assert plan.points == 2_000
    with pytest.raises(ResourceExhausted) as err:
        plan_series(spec(max_points=1_000), rows, max_message_bytes=16 * 1024)
    assert "over the server's message limit of 16384 bytes" in err.value.message


def test_raw_reads_stop_past_the_budget_and_the_answer_is_refused():
    """A zoom estimate can be wrong (time zooms on uneven series): the raw read is capped by a LIMIT
    and a read that reaches it is refused rather than returned in part."""
    plan = plan_series(spec(mode="none", run_ids=["a"]), [bounds("a", points=10)])
    (query,) = plan.queries("db", {"project": "p", "kind": "user", "runs": ["a"], "keys": ["loss"]})
    assert (
        "LIMIT {max_rows:UInt64}" in query.sql and query.params["max_rows"] == series.MAX_RESPONSE_POINTS + 1
    )
    n = series.MAX_RESPONSE_POINTS + 1
    with pytest.raises(ResourceExhausted) as err:
        plan.assemble([[np.ones(n, dtype=np.uint32), np.arange(n, dtype=float), np.zeros(n)]])
    assert "more than" in err.value.message and "zoom" in err.value.message


def test_rank_beyond_uint16_is_refused():
    with pytest.raises(InvalidArgument) as err:
        spec(rank=70_000)
    assert "rank 70000 is over the limit of 65535" in err.value.message
