"""The query service's statements about metric points: per-series bounds, the points of a series
downsampled to min/max per bucket (from the raw points or the 32-step rollups), every raw point,
and history pages. Each returns SQL text (or a Query); the placeholders of the series statements
are filled by `series_bounds` and `points_params`, so their names live only here.

Series are addressed by number: `series_ids` lists "run\\0key\\0rank" per series (empty for one a
read skips) and SQL maps each row to its 1-based number `si` with transform(), no join needed."""

from __future__ import annotations

from collections.abc import Sequence

from runstream_services.query.sql import Query

# ---------------------------------------------------------------- series

ROLLUP_WIDTH = 32  # steps per metric_rollups row (migration 0003)
_SERIES_ID = "transform(concat(run_id, '\\0', toString(key), '\\0', toString(rank)), {sids:Array(String)}, {idx:Array(UInt32)}, toUInt32(0))"


def series_id(run_id: str, key: str, rank: int) -> str:
    """The identity `_SERIES_ID` computes in SQL, to map rows back to series without a join."""
    return f"{run_id}\0{key}\0{rank}"


def series_where(db_table: str, all_ranks: bool) -> str:
    rank = "" if all_ranks else " AND rank = {rank:UInt16}"
    return (
        f"FROM {db_table} WHERE project = {{project:String}} AND kind = {{kind:String}} "
        f"AND run_id IN {{runs:Array(String)}} AND key IN {{keys:Array(String)}}{rank}"
    )


def bounds_sql(db: str, all_ranks: bool) -> str:
    """Per series: step and time span and point count, read from the rollups (cheap)."""
    return (
        "SELECT run_id, toString(key), rank, min(first_step), max(last_step), min(first_ms), max(last_ms), "
        f"sum(count) {series_where(db + '.metric_rollups', all_ranks)} GROUP BY run_id, key, rank"
    )


_X_RAW = {"step": "step", "time": "time_ms"}
_X_ROLLUP = {"step": "first_step", "time": "first_ms"}


def _x_expr(axis: str, rollup: bool) -> str:
    """x of a row as Float64; relative time subtracts the series' run offset."""
    col = (_X_ROLLUP if rollup else _X_RAW)["step" if axis == "step" else "time"]
    if axis == "relative":
        return f"toFloat64({col} - {{offs:Array(Int64)}}[si])"
    return f"toFloat64({col})"


def minmax_sql(db: str, axis: str, rollup: bool, all_ranks: bool, zoom: bool) -> str:
    """Per series and bucket: the point of the min value and the point of the max value. Buckets are
    equal x ranges: bucket = floor((x - x0[si]) / w[si]); NaN never wins unless a bucket is all NaN
    (then the bucket is dropped). From the rollups, x is the first step/time of the 32-step row."""
    table = f"{db}.metric_rollups" if rollup else f"{db}.metrics"
    lo = "lo" if rollup else "if(isNaN(value), inf, value)"
    hi = "hi" if rollup else "if(isNaN(value), -inf, value)"
    inner = f"SELECT {_SERIES_ID} AS si, * {series_where(table, all_ranks)}"
    rows = f"SELECT si, {_x_expr(axis, rollup)} AS x, {lo} AS lo, {hi} AS hi FROM ({inner}) WHERE si > 0"
    where = "WHERE x >= {x_min:Float64} AND x <= {x_max:Float64} " if zoom else ""
    return (
        "SELECT si, toInt64(floor((x - {x0s:Array(Float64)}[si]) / {ws:Array(Float64)}[si])) AS b, "
        f"argMin(x, lo), min(lo), argMax(x, hi), max(hi) FROM ({rows}) {where}"
        "GROUP BY si, b HAVING min(lo) <= max(hi)"
    )


def raw_points_sql(db: str, axis: str, all_ranks: bool, zoom: bool) -> str:
    """Every point of the chosen series (FINAL: a replayed point never shows twice), at most
    `max_rows` of them: a read that returns that many is over the plan's budget."""
    return (
        f"SELECT si, x, value FROM (SELECT si, {_x_expr(axis, False)} AS x, value "
        f"FROM (SELECT {_SERIES_ID} AS si, step, time_ms, value {series_where(db + '.metrics FINAL', all_ranks)}) "
        "WHERE si > 0) "
        + ("WHERE x >= {x_min:Float64} AND x <= {x_max:Float64} " if zoom else "")
        + "ORDER BY si, x LIMIT {max_rows:UInt64}"
    )


def points_sql(db: str, source: str, axis: str, all_ranks: bool, zoom: bool) -> str:
    """The read for one source of a series plan: "raw" (raw_points_sql), "minmax" (minmax_sql over
    the raw points) or "rollup" (minmax_sql over the rollups)."""
    if source == "raw":
        return raw_points_sql(db, axis, all_ranks, zoom)
    if source in ("minmax", "rollup"):
        return minmax_sql(db, axis, source == "rollup", all_ranks, zoom)
    raise ValueError(f"unknown series source {source!r}")


def series_bounds(
    db: str, project: str, kind: str, run_ids: list[str], keys: list[str], rank: int | None
) -> Query:
    """bounds_sql for these series (rank None: every rank). Its params are the `where` that
    points_params narrows for each read."""
    params: dict[str, object] = {"project": project, "kind": kind, "runs": run_ids, "keys": keys}
    if rank is not None:
        params["rank"] = rank
    return Query(bounds_sql(db, rank is None), params)


def points_params(
    where: dict,
    *,
    runs: list[str],
    keys: list[str],
    series_ids: list[str],
    x0s: list[float],
    widths: list[float],
    offsets: list[int] | None,
    x_range: tuple[float, float] | None,
    max_rows: int | None = None,
) -> dict:
    """Values of the placeholders of points_sql: `where` (series_bounds' params) narrowed to `runs` and
    `keys`; per series its id ("" to skip it), bucket origin x0 and bucket width; per series the
    run's time origin when the axis is relative; the zoom range when there is one; the row limit
    of a raw read."""
    params = dict(where)
    params.update(
        runs=runs,
        keys=keys,
        sids=series_ids,
        idx=list(range(1, len(series_ids) + 1)),
        x0s=x0s,
        ws=widths,
    )
    if offsets is not None:
        params["offs"] = offsets
    if x_range is not None:
        params["x_min"], params["x_max"] = float(x_range[0]), float(x_range[1])
    if max_rows is not None:
        params["max_rows"] = max_rows
    return params


# ---------------------------------------------------------------- history


def history_keys(db: str, project: str, run_id: str, kind: str, keys: Sequence[str]) -> Query:
    """Rows (key,) of the run's metrics of this kind (only `keys` when given), sorted."""
    params: dict[str, object] = {"project": project, "run": run_id, "kind": kind}
    key_cond = ""
    if keys:
        key_cond = " AND key IN {keys:Array(String)}"
        params["keys"] = list(keys)
    return Query(
        f"SELECT DISTINCT toString(key) AS k FROM {db}.metric_summaries WHERE project = {{project:String}} "
        f"AND run_id = {{run:String}} AND kind = {{kind:String}}{key_cond} ORDER BY k",
        params,
    )


def history_page(
    db: str, project: str, run_id: str, kind: str, keys: list[str], after: tuple[str, int, int], page: int
) -> Query:
    """Columns (key index into `keys`, rank, step, value, time_ms) of up to `page` points after the
    (key, rank, step) `after`, in that order (FINAL: a replayed point never shows twice)."""
    return Query(
        f"SELECT toUInt16(indexOf({{keys:Array(String)}}, key) - 1) AS ki, rank, step, value, time_ms "
        f"FROM {db}.metrics FINAL WHERE project = {{project:String}} AND run_id = {{run:String}} "
        f"AND kind = {{kind:String}} AND key IN {{keys:Array(String)}} "
        f"AND (key, rank, step) > ({{after_key:String}}, {{after_rank:Int32}}, {{after_step:Int64}}) "
        f"ORDER BY key, rank, step LIMIT {{page:UInt64}}",
        {
            "project": project,
            "run": run_id,
            "kind": kind,
            "keys": keys,
            "after_key": after[0],
            "after_rank": after[1],
            "after_step": after[2],
            "page": page,
        },
    )
