"""GetMetricSeries planning: how to read each requested series, and putting the reads back together.

The bounds query gives, per (run, key, rank) series, its step and time span and its point count.
`plan_series` then chooses per series:
- raw: every point, when downsampling is NONE or the series (within the zoom range) has at most
  max_points points;
- minmax buckets: the x range cut into equal buckets, the min and the max point of each kept
  (MINMAX: max_points / 2 buckets; LTTB: max_points buckets, a candidate set LTTB then picks
  max_points points from), computed from the 32-step rollups ("rollup") while a bucket still spans
  about two rollup rows, else from the raw points ("minmax").

Budgets, so an answer always fits in one gRPC message and a call's memory is bounded: max_points is
at most MAX_POINTS_PER_SERIES, and the points a call reads back over all its series (raw points, or
two per bucket; what the response holds is never more) are at most MAX_RESPONSE_POINTS in every
mode. The plan counts them before anything is read (a zoom is estimated from the series' density)
and refuses with ResourceExhausted; raw reads also carry a LIMIT just past the budget, and
`assemble` refuses a read that reached it, so a wrong estimate costs a refusal, never a huge answer.
`SeriesPlan.queries` gives one read per source in use; `SeriesPlan.assemble` turns their columns into
one (x, y) per series, in request order.

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
# points one call reads back and returns, over all series, in every mode: 32 MB of float64 x and y,
# half the default message limit (the rest covers the per-series fields), ~150 MiB of server memory
MAX_RESPONSE_POINTS = 2_000_000
MAX_RANK = 65_535  # ranks are stored as UInt16
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # the server's max_message_bytes default
_BYTES_PER_POINT = 16  # x and y as float64
_BYTES_PER_SERIES = 64  # a Series' field tags and lengths, rank and total_points, beyond run_id and key

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
    if rank is not None and rank > MAX_RANK:
        raise InvalidArgument(f"rank {rank} is over the limit of {MAX_RANK}")
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
    points: int = 0  # the points the reads are estimated to return, within MAX_RESPONSE_POINTS
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

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
            max_rows=MAX_RESPONSE_POINTS + 1 if read.source == "raw" else None,
        )

    def assemble(self, results: Sequence[Sequence[np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(x, y) per series from the columns of each read (in `reads` order): raw reads give
        (series number, x, y), bucket reads (series number, bucket, x and y of the min, x and y of
        the max). A series no read returned points for is empty. LTTB is applied last.
        ResourceExhausted when a raw read reached its LIMIT (the zoom estimate was wrong) or the
        curves would not fit the message limit."""
        n = len(self.series)
        xs: list[np.ndarray] = [np.empty(0)] * n
        ys: list[np.ndarray] = [np.empty(0)] * n
        for read, cols in zip(self.reads, results, strict=True):
            if read.source == "raw":
                si, x, y = cols
                if len(si) > MAX_RESPONSE_POINTS:
                    raise ResourceExhausted(
                        f"the series hold more than {MAX_RESPONSE_POINTS} points in the requested range "
                        "(limit per call); narrow the zoom (x_min/x_max), ask for fewer runs or keys, "
                        "or use GetHistory"
                    )
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
        curves = list(zip(xs, ys, strict=True))
        if self.spec.mode == "lttb":
            curves = lttb_many(curves, max(self.spec.max_points, 3))
        size = sum(_BYTES_PER_POINT * len(x) for x, _ in curves) + _series_bytes(self.series)
        if size > self.max_message_bytes:
            raise ResourceExhausted(_too_big(size, self.max_message_bytes))
        return curves


def plan_series(
    spec: SeriesSpec, bounds_rows: Iterable[Sequence], *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> SeriesPlan:
    """The plan for the series found by the bounds query (rows in any order); ResourceExhausted,
    before anything is read, when the reads would return more than MAX_RESPONSE_POINTS points or an
    answer over `max_message_bytes` (the server's gRPC message limit)."""
    run_pos = {r: i for i, r in enumerate(spec.run_ids)}
    key_pos = {k: i for i, k in enumerate(spec.keys)}
    series = sorted(map(SeriesBounds._make, bounds_rows), key=lambda s: (run_pos[s[0]], key_pos[s[1]], s[2]))
    run_t0: dict[str, int] = {}
    for s in series:
        run_t0[s.run_id] = min(run_t0.get(s.run_id, s.first_ms), s.first_ms)
    picks: dict[str, list[Pick]] = {"raw": [], "minmax": [], "rollup": []}
    points = 0
    for i, s in enumerate(series):
        source, x0, width, returned = _choose(spec, s, run_t0[s.run_id])
        picks[source].append(Pick(i, x0, width))
        points += returned
    if points > MAX_RESPONSE_POINTS:
        hint = (
            "without downsampling every point comes back: use MINMAX or LTTB downsampling, a zoom range "
            "(x_min/x_max), or GetHistory"
            if spec.mode == "none"
            else "lower max_points, ask for fewer runs or keys, or zoom (x_min/x_max)"
        )
        raise ResourceExhausted(
            f"{points} points requested over {len(series)} series (limit {MAX_RESPONSE_POINTS} per call); "
            + hint
        )
    size = _BYTES_PER_POINT * points + _series_bytes(series)
    if size > max_message_bytes:
        raise ResourceExhausted(_too_big(size, max_message_bytes))
    reads = [Read(source, chosen) for source, chosen in picks.items() if chosen]
    return SeriesPlan(spec, series, run_t0, reads, points, max_message_bytes)


def _series_bytes(series: Sequence[SeriesBounds]) -> int:
    """The response's size apart from the points: per series its run id, key and fixed fields."""
    return sum(len(s.run_id.encode()) + len(s.key.encode()) + _BYTES_PER_SERIES for s in series)


def _too_big(size: int, limit: int) -> str:
    return (
        f"the answer would be about {size} bytes, over the server's message limit of {limit} bytes; "
        "lower max_points, ask for fewer runs or keys, or zoom (x_min/x_max)"
    )


def _choose(spec: SeriesSpec, s: SeriesBounds, run_t0: int) -> tuple[str, float, float, int]:
    """(source, bucket origin, bucket width, points the read returns for it) for one series."""
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
        return "raw", lo, 1.0, n
    # LTTB picks from a MINMAX pre-aggregation of ~2 candidates per output point
    buckets = spec.max_points // 2 if spec.mode == "minmax" else spec.max_points
    width = max((hi - lo + 1) / buckets, 1e-9)
    # a rollup row covers 32 steps: use them while each bucket still spans a few rows
    rollup_rows = min(n, (s.last_step - s.first_step + 1) * fraction / sql_series.ROLLUP_WIDTH)
    needed = 2 * buckets if spec.mode == "minmax" else buckets
    return ("rollup" if rollup_rows >= needed else "minmax"), lo, width, 2 * buckets  # a min and a max each
