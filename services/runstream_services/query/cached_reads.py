"""Answers of the query service computed from a held project (read_cache.py) instead of SQL:
one run, a run's keys, a history, and run search (filter, sort, page; run_table.py evaluates them
with numpy, with the meaning sql.py gives them in SQL: tests/integration/test_query_cache.py
compares the two on the same data). Each function returns None where the held copy cannot answer exactly (a
series too long to hold, a filter form kept to SQL): the caller then reads SQL.

Callers hold the cache's lock while calling these (the writer changes the project under it)."""

from __future__ import annotations

import bisect
import json
import logging
import math

import numpy as np
from google.protobuf import json_format

from runstream.states import STATE_NUMBERS
from runstream.v1 import query_pb2, types_pb2
from runstream_services.query import run_table
from runstream_services.query.filter import BoolOp, Field, Node, Not
from runstream_services.query.read_cache import Project, RunEntry
from runstream_services.query.run_table import Unsupported
from runstream_services.query.sql_series import ROLLUP_WIDTH

log = logging.getLogger("runstream.query")


def value_proto(kind: str, num: float, text: str) -> types_pb2.Value:
    """A params row (kind, number, text) as the wire Value: the cache and the SQL path share it."""
    if kind == "number":
        return types_pb2.Value(number=num)
    if kind == "flag":
        return types_pb2.Value(flag=bool(num))
    if kind == "json":
        return types_pb2.Value(json=text)
    return types_pb2.Value(text=text)


def add_datasets(run: types_pb2.Run, datasets_json: str) -> None:
    """Adds the run row's datasets (the JSON list run.use_dataset fills) to the Run, in the order
    recorded: the cache and the SQL path share it. Unreadable JSON is logged and skipped."""
    if not datasets_json or datasets_json == "[]":
        return
    try:
        for item in json.loads(datasets_json):
            run.datasets.add(
                name=str(item.get("name", "")),
                version=str(item.get("version", "")),
                uri=str(item.get("uri", "")),
            )
    except (ValueError, AttributeError, TypeError) as exc:
        log.warning("run %s has unreadable datasets: %s", run.run_id, exc)


def run_proto(project: str, entry: RunEntry) -> types_pb2.Run:
    r = entry.row
    run = types_pb2.Run(
        run_id=r.run_id, project=project, name=r.name, group=r.group, job_type=r.job_type,
        state=STATE_NUMBERS.get(r.state, types_pb2.RUN_STATE_UNSPECIFIED), start_ms=r.start_ms,
        end_ms=r.end_ms, heartbeat_ms=r.heartbeat_ms, user=r.user, host=r.host, git_commit=r.git_commit,
        git_dirty=bool(r.git_dirty), notes=r.notes, tags=r.tags,
    )  # fmt: skip
    add_datasets(run, r.datasets)
    return run


def fill_details(
    runs: list[types_pb2.Run],
    entries: list[RunEntry],
    param_keys: list[str],
    metric_keys: list[str],
    include_config: bool,
) -> list[str]:
    """Adds config/summary values and metric summaries to the runs, as the SQL path does
    (service._fill_details). Returns the run ids whose wanted summaries include a series held
    only by key (big): the caller adds those runs' summaries from SQL."""
    wanted_params = set(param_keys)
    needs_sql: list[str] = []
    for run, entry in zip(runs, entries, strict=True):
        for (scope, key), (kind, num, text, _) in entry.params.items():
            if scope == "summary":
                run.summary[key].CopyFrom(value_proto(kind, num, text))
            elif include_config and (not wanted_params or key in wanted_params):
                run.config[key].CopyFrom(value_proto(kind, num, text))
        keys = sorted(k for (kind, k) in entry.series if kind == "user")
        if metric_keys:
            wanted = set(metric_keys)
            keys = [k for k in keys if k in wanted]
            big = any(("user", k) in entry.big for k in wanted)
        else:
            big = any(kind == "user" for kind, _ in entry.big)
        if big:
            needs_sql.append(run.run_id)
            continue
        for key in keys:
            s = entry.series[("user", key)].summary()
            run.metrics.add(
                key=key, last=s.last, min=math.nan if s.min is None else s.min,
                max=math.nan if s.max is None else s.max, count=s.count, last_step=s.last_step,
            )  # fmt: skip
    return needs_sql


def run_wire(p: Project, entry: RunEntry, include_config: bool) -> bytes | None:
    """The run as SearchRuns sends it without key lists (all summaries, config when asked),
    serialized once and kept until the run changes; None when a summary must come from SQL."""
    wire = entry.wire.get(include_config)
    if wire is None:
        if any(kind == "user" for kind, _ in entry.big):
            return None
        run = run_proto(p.name, entry)
        fill_details([run], [entry], [], [], include_config)
        wire = entry.wire[include_config] = run.SerializeToString()
    return wire


def runs_field(wires: list[bytes]) -> bytes:
    """The wire form of `repeated Run runs = 1` holding these serialized runs (field 1,
    length-delimited, in order), to merge into a SearchRunsResponse."""
    out = bytearray()
    for w in wires:
        out += b"\x0a"
        n = len(w)
        while n >= 0x80:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)
        out += w
    return bytes(out)


def runs_table(
    p: Project, t: run_table.RunTable, page: np.ndarray, include_config: bool
) -> query_pb2.RunsTable | None:
    """The page (row numbers of `t`) as a columnar SearchRuns reply: the same cells the `runs`
    reply carries without key lists (config with include_config, summary, every user metric's last
    value, tags), read from the table's per-field columns (kept while the project is unchanged)
    instead of one message per run. None when a run of the page has a series too long to hold
    (its summaries come from SQL: the caller answers row by row)."""
    entries = t.entries
    if p.big_keys and any(any(kind == "user" for kind, _ in entries[i].big) for i in page.tolist()):
        return None
    n = len(page)
    out = query_pb2.RunsTable(count=n)
    for field_name, attr in _TABLE_TEXT:
        getattr(out, field_name).extend(t.column(attr)[page].tolist())
    out.states = t.state_codes()[page].tobytes()
    out.start_ms = t.column("start_ms")[page].astype("<i8").tobytes()
    out.end_ms = t.column("end_ms")[page].astype("<i8").tobytes()
    out.heartbeat_ms = t.column("heartbeat_ms")[page].astype("<i8").tobytes()
    out.git_dirty = (t.column("git_dirty")[page] != 0).astype(np.uint8).tobytes()
    config_keys, summary_keys, metric_keys, tag_keys = t.keys()
    columns = [("summary", k) for k in summary_keys]
    if include_config:
        columns += [("config", k) for k in config_keys]
    for scope, key in sorted(columns, key=lambda c: f"{c[0]}.{c[1]}"):
        codes = t.value_codes(scope, key)[page]
        if not codes.any():
            continue
        _, num, text, _ = t.param(scope, key)
        col = out.values.add(name=f"{scope}.{key}", kinds=codes.tobytes())
        numeric = (codes == 1) | (codes == 2)
        col.numbers = np.where(numeric, num[page], np.nan).astype("<f8").tobytes()
        texts = codes >= 3
        if texts.any():
            col.texts.extend(text[page][texts].tolist())
    text_columns = [(f"tags.{key}", t.tag(key)) for key in tag_keys]
    text_columns += [(f"datasets.{name}", t.dataset_column(name)) for name in t.dataset_names()]
    for name, (value, present) in sorted(text_columns, key=lambda c: c[0]):
        here = present[page]
        if not here.any():
            continue
        col = out.values.add(name=name, kinds=np.where(here, 3, 0).astype(np.uint8).tobytes())
        col.texts.extend(value[page][here].tolist())
    for key in metric_keys:
        last, valid = t.metric(key, "last")
        if not valid[page].any():
            continue
        out.metric_keys.append(key)
        out.metric_last.append(np.where(valid[page], last[page], np.nan).astype("<f8").tobytes())
    return out


_TABLE_TEXT = (
    ("run_ids", "run_id"), ("names", "name"), ("groups", "group"), ("job_types", "job_type"),
    ("users", "user"), ("hosts", "host"), ("git_commits", "git_commit"), ("notes", "notes"),
)  # fmt: skip


def get_run(p: Project, run_id: str) -> tuple[types_pb2.Run, bool] | None:
    """The run with config, summary, context, datasets, artifacts and (unless the second value is
    True: then the caller adds them from SQL) its metric summaries; None when unknown."""
    entry = p.runs.get(run_id)
    if entry is None or entry.row is None:
        return None
    run = run_proto(p.name, entry)
    row = entry.row
    if row.context:
        try:
            json_format.Parse(row.context, run.context, ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError) as exc:
            log.warning("run %s has an unreadable context: %s", run_id, exc)
    for a in sorted(entry.artifacts.values(), key=lambda a: (a[2], a[5], a[3])):  # name, version, path
        _, rid, name, path, typ, version, _, sha, size, uri, created = a
        run.artifacts.add(
            run_id=rid, name=name, path=path, type=typ, version=version,
            sha256=sha.decode() if isinstance(sha, bytes) else sha, size=size, uri=uri, created_ms=created,
        )  # fmt: skip
    needs_sql = fill_details([run], [entry], [], [], include_config=True)
    return run, bool(needs_sql)


def history_keys(entry: RunEntry, kind: str, wanted: list[str]) -> list[str] | None:
    """The run's keys of this kind (only `wanted` when given), sorted; None when one is big."""
    have = entry.series_keys(kind)
    keys = sorted(k for k in wanted if k in have) if wanted else sorted(have)
    if any((kind, k) in entry.big for k in keys):
        return None
    return keys


def history_slice(
    entry: RunEntry, kind: str, keys: list[str], after: tuple[str, int, int] | None, page: int
) -> tuple[tuple[np.ndarray, ...] | None, bool]:
    """(key index, rank, step, value, time_ms) of up to `page` points of `keys` after the
    (key, rank, step) `after` (None: from the first), ordered by key, rank, step (the order history
    pages have), copied (None: no points); and whether more points follow. Only the series the page
    reaches are read."""
    parts: list[tuple] = []
    left = page
    first = 0 if after is None else bisect.bisect_left(keys, after[0])
    for i in range(first, len(keys)):
        s = entry.series[(kind, keys[i])]
        start = 0
        if after is not None and keys[i] == after[0]:  # the points of this key after (rank, step)
            lo, hi = np.searchsorted(s.rank, after[1], "left"), np.searchsorted(s.rank, after[1], "right")
            start = int(lo + np.searchsorted(s.step[lo:hi], after[2], "right"))
        end = min(len(s), start + left)
        if end > start:
            parts.append((i, s.rank[start:end], s.step[start:end], s.value[start:end], s.time[start:end]))
            left -= end - start
        if end < len(s):  # points of this key are left for the next page
            return _history_columns(parts), True
    return _history_columns(parts), False


def _history_columns(parts: list[tuple]) -> tuple[np.ndarray, ...] | None:
    if not parts:
        return None
    cat = np.concatenate
    return (
        cat([np.full(len(p[1]), p[0], np.uint16) for p in parts]),
        *(cat([p[c] for p in parts]) for c in range(1, 5)),
    )


def series_bounds(
    p: Project, kind: str, run_ids: list[str], keys: list[str], rank: int | None
) -> list[tuple] | None:
    """The rows sql_series.series_bounds reads from the rollups (run, key, rank, first/last step,
    first/last ms, points), from the held points; None when a requested series is too long to
    hold (the caller reads SQL). One difference, on purpose: a step logged again counts once here
    (as in history), while the rollups add up every row inserted for it."""
    rows: list[tuple] = []
    for run_id in run_ids:
        entry = p.runs.get(run_id)
        if entry is None:
            continue
        for key in keys:
            sk = (kind, key)
            if sk in entry.big:
                return None
            s = entry.series.get(sk)
            if s is None or not len(s):
                continue
            for r, a, b in _rank_slices(s, rank):
                t = s.time[a:b]
                rows.append(
                    (run_id, key, r, int(s.step[a]), int(s.step[b - 1]), int(t.min()), int(t.max()), b - a)
                )
    return rows


def series_points(p: Project, kind: str, plan) -> list[tuple[np.ndarray, ...]]:
    """The columns of each read of a series plan (series.SeriesPlan), as sql_series returns them:
    raw (series number from 1, x, y), each series' points ordered by x; minmax (series number,
    bucket, x and y of the bucket's min, x and y of its max), NaN ranking last as in SQL and an
    all-NaN bucket left out; rollup: minmax over the 32-step rows the metric_rollups view would
    hold for these points (x: a row's first step or time), so the answer is SQL's; each within the
    zoom range. Of equal values in a bucket the first in step order is picked (SQL may pick another
    equal one); a step logged again counts with its last value only (SQL's rollups keep both)."""
    spec = plan.spec
    out = []
    for read in plan.reads:
        parts: list[tuple[np.ndarray, ...]] = []
        for pick in read.picks:
            b = plan.series[pick.series]
            s = p.runs[b.run_id].series[(kind, b.key)]
            (_, lo, hi), *_ = _rank_slices(s, b.rank)
            if spec.axis == "step":
                x = s.step[lo:hi].astype(np.float64)
            else:
                t = s.time[lo:hi]
                x = (t - plan.run_t0[b.run_id] if spec.axis == "relative" else t).astype(np.float64)
            y = s.value[lo:hi]
            if read.source == "rollup":
                x, y_lo, y_hi = _rollup_rows(s.step[lo:hi], x, y)
                if spec.x_range is not None:
                    keep = (x >= spec.x_range[0]) & (x <= spec.x_range[1])
                    x, y_lo, y_hi = x[keep], y_lo[keep], y_hi[keep]
                parts.append(_minmax_of(pick.series + 1, x, y_lo, y_hi, pick.x0, pick.width))
                continue
            if spec.axis != "step":  # steps rise within a rank; times need not
                order = np.argsort(x, kind="stable")
                x, y = x[order], y[order]
            if spec.x_range is not None:
                keep = (x >= spec.x_range[0]) & (x <= spec.x_range[1])
                x, y = x[keep], y[keep]
            if read.source == "raw":
                parts.append((np.full(len(x), pick.series + 1, np.uint32), x, y))
            else:
                parts.append(_minmax_buckets(pick.series + 1, x, y, pick.x0, pick.width))
        if parts:
            out.append(tuple(np.concatenate(c) for c in zip(*parts, strict=True)))
        elif read.source == "raw":
            out.append((np.empty(0, np.uint32), np.empty(0), np.empty(0)))
        else:
            out.append((np.empty(0, np.uint32), np.empty(0, np.int64), *(np.empty(0) for _ in range(4))))
    return out


def _rollup_rows(step: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """The metric_rollups rows of one rank's points (step order): per intDiv(step, 32), the row's
    x (its smallest x: first step or first time) and its lo / hi (NaN as +inf / -inf)."""
    if not len(step):
        return np.empty(0), np.empty(0), np.empty(0)
    row = np.where(step < 0, -(-step // ROLLUP_WIDTH), step // ROLLUP_WIDTH)  # intDiv truncates
    starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
    nan = np.isnan(y)
    lo = np.minimum.reduceat(np.where(nan, np.inf, y), starts)
    hi = np.maximum.reduceat(np.where(nan, -np.inf, y), starts)
    return np.minimum.reduceat(x, starts), lo, hi


def _minmax_buckets(si: int, x: np.ndarray, y: np.ndarray, x0: float, width: float) -> tuple[np.ndarray, ...]:
    """sql_series.minmax_sql over one series' points: per bucket floor((x - x0) / width), the x of
    the smallest value and that value, the x of the largest and that value (NaN counts as +inf for
    the min and -inf for the max); buckets with no number left out."""
    nan = np.isnan(y)
    return _minmax_of(si, x, np.where(nan, np.inf, y), np.where(nan, -np.inf, y), x0, width)


def _minmax_of(
    si: int, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, x0: float, width: float
) -> tuple[np.ndarray, ...]:
    """_minmax_buckets over rows that carry a low and a high value each (points: both the value)."""
    n = len(x)
    if not n:
        return (np.empty(0, np.uint32), np.empty(0, np.int64), *(np.empty(0) for _ in range(4)))
    bucket = np.floor((x - x0) / width).astype(np.int64)
    position = np.arange(n)
    by_lo = np.lexsort((position, lo, bucket))  # per bucket: smallest value first, then earliest
    by_hi = np.lexsort((position, -hi, bucket))
    sorted_bucket = bucket[by_lo]
    first = np.ones(n, dtype=bool)
    first[1:] = sorted_bucket[1:] != sorted_bucket[:-1]
    i_lo, i_hi = by_lo[first], by_hi[first]  # both orders group the buckets alike
    keep = lo[i_lo] <= hi[i_hi]
    i_lo, i_hi = i_lo[keep], i_hi[keep]
    return (np.full(len(i_lo), si, np.uint32), bucket[i_lo], x[i_lo], lo[i_lo], x[i_hi], hi[i_hi])


def _rank_slices(s, rank: int | None) -> list[tuple[int, int, int]]:
    """(rank, start, end) of each rank's points in a held series (sorted by rank, step); only
    `rank`'s when given."""
    ranks = s.rank
    if rank is not None:
        a, b = np.searchsorted(ranks, [rank, rank + 1]).tolist()
        return [(rank, a, b)] if b > a else []
    if ranks[0] == ranks[-1]:
        return [(int(ranks[0]), 0, len(ranks))]
    cuts = np.flatnonzero(ranks[1:] != ranks[:-1]) + 1
    starts = [0, *cuts.tolist()]
    ends = [*cuts.tolist(), len(ranks)]
    return [(int(ranks[a]), a, b) for a, b in zip(starts, ends, strict=True)]


def list_keys(p: Project, run_ids: list[str]) -> tuple[list[str], list[str], list[str], list[str]]:
    """(user metric keys, system metric keys, config keys, tag keys), each sorted."""
    entries = [p.runs[r] for r in dict.fromkeys(run_ids) if r in p.runs] if run_ids else list(p.runs.values())
    user, system, config, tags = set(), set(), set(), set()
    for e in entries:
        user |= e.series_keys("user")
        system |= e.series_keys("system")
        config.update(key for scope, key in e.params if scope == "config")
        if e.row is not None:
            tags.update(e.row.tags)
    return sorted(user), sorted(system), sorted(config), sorted(tags)


# ---------------------------------------------------------------- run search


def search_rows(
    p: Project, node: Node | None, order_by: list[tuple[Field, bool]], limit: int, offset: int
) -> tuple[run_table.RunTable, np.ndarray, int]:
    """`search` as (the project's table, the page as its row numbers, match count)."""
    _check_supported(p, node, order_by)
    return run_table.search_rows(p, node, order_by, limit, offset)


def search(
    p: Project, node: Node | None, order_by: list[tuple[Field, bool]], limit: int, offset: int
) -> tuple[list[RunEntry], int]:
    """The page of matching runs and the match count, as sql_runs.search_runs orders them
    (run_table.py: numpy over the project's columns). Raises Unsupported for forms kept to SQL."""
    _check_supported(p, node, order_by)
    return run_table.search(p, node, order_by, limit, offset)


def _check_supported(p: Project, node: Node | None, order_by: list[tuple[Field, bool]]) -> None:
    for f, _ in order_by:
        if f.kind == "metric" and p.big_keys.get(f.key):
            raise Unsupported(f"metric {f.key} has series too long to hold")
    stack = [node] if node is not None else []
    while stack:
        n = stack.pop()
        if isinstance(n, BoolOp):
            stack.extend(n.items)
        elif isinstance(n, Not):
            stack.append(n.item)
        else:
            f = n.field
            if f.kind == "metric" and p.big_keys.get(f.key):
                raise Unsupported(f"metric {f.key} has series too long to hold")
            if n.op == "~":
                needle = n.values[0].value
                if not isinstance(needle, str) or not needle.isascii():
                    raise Unsupported("substring match of a non-ASCII or non-text value")
