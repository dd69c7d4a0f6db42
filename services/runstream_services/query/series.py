"""GetMetricSeries planning: how to read each requested series, and putting the reads back together.

The bounds query gives, per (run, key, rank) series, its step and time span and its point count.
`plan_series` then chooses per series:
- raw: every point, when downsampling is NONE or the series (within the zoom range) has at most
  max_points points;
- minmax buckets: the x range cut into equal buckets, the min and the max point of each kept
  (MINMAX: max_points / 2 buckets; LTTB: max_points buckets, a candidate set LTTB then picks
  max_points points from), computed from the 32-step rollups ("rollup") while a bucket still spans
  about two rollup rows, else from the raw points ("minmax").
NONE over MAX_RAW_POINTS_TOTAL points is refused before anything is read. `SeriesPlan.queries`
gives one read per source in use; `SeriesPlan.assemble` turns their columns into one (x, y) per
series, in request order.

Pure functions over plain values (no gRPC, no database), so planning is unit-tested on its own;
the servicer maps the request to a SeriesSpec, runs the queries and builds the protos."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from runstream_services.errors import InvalidArgument, ResourceExhausted
from runstream_services.query import sql_series
from runstream_services.query.downsample import lttb_many, minmax_series
from runstream_services.query.sql import Query

MAX_SERIES_RUNS = 1_000
MAX_SERIES_KEYS = 100
DEFAULT_MAX_POINTS = 1_000
MAX_POINTS_PER_SERIES = 100_000
MAX_RAW_POINTS_TOTAL = 5_000_000

MODES = ("minmax", "lttb", "none")
AXES = ("step", "time", "relative")  # relative: ms since the run's first point of the request


@dataclass(frozen=True)
class SeriesSpec:
    """A validated series request: which series, how many points, how to reduce them."""

    run_ids: list[str]  # in request order, without duplicates
    keys: list[str]  # in request order, without duplicates
    rank: int | None  # None: every rank
    max_points: int
    mode: str  # one of MODES
    axis: str  # one of AXES
    x_range: tuple[float, float] | None  # the zoom range on the axis; None: everything

    @property
    def all_ranks(self) -> bool:
        return self.rank is None


def series_spec(
    *,
    run_ids: Iterable[str],
    keys: Iterable[str],
    rank: int | None,
    max_points: int,
    mode: str | None,
    axis: str | None,
    x_range: tuple[float, float] | None,
) -> SeriesSpec:
    """Checks the request's sizes and choices (InvalidArgument naming the limit); max_points 0
    means DEFAULT_MAX_POINTS, mode or axis None an unknown enum value."""
    run_ids = list(dict.fromkeys(run_ids))
    keys = list(dict.fromkeys(keys))
    if not run_ids or not keys:
        raise InvalidArgument("run_ids and keys are required")
    if len(run_ids) > MAX_SERIES_RUNS:
        raise InvalidArgument(f"{len(run_ids)} run_ids is over the limit of {MAX_SERIES_RUNS} per call")
    if len(keys) > MAX_SERIES_KEYS:
        raise InvalidArgument(f"{len(keys)} keys is over the limit of {MAX_SERIES_KEYS} per call")
    max_points = max_points or DEFAULT_MAX_POINTS
    if max_points > MAX_POINTS_PER_SERIES:
        raise InvalidArgument(f"max_points {max_points} is over the limit of {MAX_POINTS_PER_SERIES}")
    if max_points < 2:
        raise InvalidArgument("max_points must be at least 2")
    if mode not in MODES or axis not in AXES:
        raise InvalidArgument("unknown downsampling or x_axis value")
    if x_range is not None and not (
        math.isfinite(x_range[0]) and math.isfinite(x_range[1]) and x_range[0] <= x_range[1]
    ):
        raise InvalidArgument("x_min and x_max must be finite numbers with x_min <= x_max")
    return SeriesSpec(run_ids, keys, rank, max_points, mode, axis, x_range)


class SeriesBounds(NamedTuple):
    """One row of sql_series.series_bounds: a series, its spans and its point count."""

    run_id: str
    key: str
    rank: int
    first_step: int
    last_step: int
    first_ms: int
    last_ms: int
    points: int


class Pick(NamedTuple):
    """One series in a read: its number in the plan, the x its buckets start at, the bucket width
    (1.0 for a raw read)."""

    series: int
    x0: float
    width: float


@dataclass(frozen=True)
class Read:
    """One query of the plan: a source ("raw", "minmax" or "rollup") and the series it reads."""

    source: str
    picks: list[Pick]


@dataclass(frozen=True)
class SeriesPlan:
    """The series found (in request order), each run's time origin, and the reads to run."""

    spec: SeriesSpec
    series: list[SeriesBounds]
    run_t0: dict[str, int]  # per run: its first point's time over the requested series
    reads: list[Read]

    def queries(self, db: str, where: dict) -> list[Query]:
        """One query per read, in `reads` order; `where` is the params of the bounds query."""
        spec = self.spec
        return [
            Query(
                sql_series.points_sql(db, read.source, spec.axis, spec.all_ranks, spec.x_range is not None),
                self._params(read, where),
            )
            for read in self.reads
        ]

    def _params(self, read: Read, where: dict) -> dict:
        n = len(self.series)
        x0s = [0.0] * n
        widths = [1.0] * n
        for i, x0, width in read.picks:
            x0s[i], widths[i] = float(x0), float(width)
        chosen = {p.series for p in read.picks}
        return sql_series.points_params(
            where,
            runs=sorted({self.series[i].run_id for i in chosen}),
            keys=sorted({self.series[i].key for i in chosen}),
            series_ids=[
                sql_series.series_id(s.run_id, s.key, s.rank) if j in chosen else ""
                for j, s in enumerate(self.series)
            ],
            x0s=x0s,
            widths=widths,
            offsets=[self.run_t0[s.run_id] for s in self.series] if self.spec.axis == "relative" else None,
            x_range=self.spec.x_range,
        )

    def assemble(self, results: Sequence[Sequence[np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(x, y) per series from the columns of each read (in `reads` order): raw reads give
        (series number, x, y), bucket reads (series number, bucket, x and y of the min, x and y of
        the max). A series no read returned points for is empty. LTTB is applied last."""
        n = len(self.series)
        xs: list[np.ndarray] = [np.empty(0)] * n
        ys: list[np.ndarray] = [np.empty(0)] * n
        for read, cols in zip(self.reads, results, strict=True):
            if read.source == "raw":
                si, x, y = cols
                order = np.argsort(si, kind="stable")
                si, x, y = si[order], x[order], y[order]
                cuts = np.searchsorted(si, np.arange(1, n + 2))
                for j in range(n):
                    if cuts[j + 1] > cuts[j]:
                        xs[j], ys[j] = x[cuts[j] : cuts[j + 1]], y[cuts[j] : cuts[j + 1]]
            else:
                si, b, xl, yl, xh, yh = cols
                for j, (sx, sy) in enumerate(minmax_series(si.astype(np.int64) - 1, b, xl, yl, xh, yh, n)):
                    if len(sx):
                        xs[j], ys[j] = sx, sy
        if self.spec.mode == "lttb":
            return lttb_many(list(zip(xs, ys, strict=True)), max(self.spec.max_points, 3))
        return list(zip(xs, ys, strict=True))


def plan_series(spec: SeriesSpec, bounds_rows: Iterable[Sequence]) -> SeriesPlan:
    """The plan for the series found by the bounds query (rows in any order); ResourceExhausted
    when downsampling is NONE and the series hold more than MAX_RAW_POINTS_TOTAL points."""
    run_pos = {r: i for i, r in enumerate(spec.run_ids)}
    key_pos = {k: i for i, k in enumerate(spec.keys)}
    series = sorted(map(SeriesBounds._make, bounds_rows), key=lambda s: (run_pos[s[0]], key_pos[s[1]], s[2]))
    run_t0: dict[str, int] = {}
    for s in series:
        run_t0[s.run_id] = min(run_t0.get(s.run_id, s.first_ms), s.first_ms)
    if spec.mode == "none":
        estimated = sum(s.points for s in series)
        if estimated > MAX_RAW_POINTS_TOTAL:
            raise ResourceExhausted(
                f"{estimated} points requested without downsampling (limit {MAX_RAW_POINTS_TOTAL}); "
                "use MINMAX or LTTB downsampling, a zoom range, or GetHistory"
            )
    picks: dict[str, list[Pick]] = {"raw": [], "minmax": [], "rollup": []}
    for i, s in enumerate(series):
        source, x0, width = _choose(spec, s, run_t0[s.run_id])
        picks[source].append(Pick(i, x0, width))
    reads = [Read(source, chosen) for source, chosen in picks.items() if chosen]
    return SeriesPlan(spec, series, run_t0, reads)


def _choose(spec: SeriesSpec, s: SeriesBounds, run_t0: int) -> tuple[str, float, float]:
    """(source, bucket origin, bucket width) for one series."""
    if spec.axis == "step":
        full = (s.first_step, s.last_step)
    elif spec.axis == "time":
        full = (s.first_ms, s.last_ms)
    else:
        full = (s.first_ms - run_t0, s.last_ms - run_t0)
    lo, hi = full
    n = s.points
    fraction = 1.0
    if spec.x_range is not None:
        lo, hi = max(lo, spec.x_range[0]), min(hi, spec.x_range[1])
        fraction = max(hi - lo, 0) / max(full[1] - full[0], 1)
        n = int(n * fraction) + 1
    if spec.mode == "none" or n <= spec.max_points:
        return "raw", lo, 1.0
    # LTTB picks from a MINMAX pre-aggregation of ~2 candidates per output point
    buckets = spec.max_points // 2 if spec.mode == "minmax" else spec.max_points
    width = max((hi - lo + 1) / buckets, 1e-9)
    # a rollup row covers 32 steps: use them while each bucket still spans a few rows
    rollup_rows = min(n, (s.last_step - s.first_step + 1) * fraction / sql_series.ROLLUP_WIDTH)
    needed = 2 * buckets if spec.mode == "minmax" else buckets
    return ("rollup" if rollup_rows >= needed else "minmax"), lo, width
