"""The read cache's merge of stored blocks (query/read_cache.py), without a database: metric
batches of several keys, ranks, repeated and out-of-order steps must leave each held series equal
to what `metrics FINAL` keeps (per (rank, step), the point with the highest version), with
summaries computed from those points; a series over the limit is held by key only; a recount
drops the project. The reference here is a plain dict of points."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runstream.v1 import ingest_pb2 as pb
from runstream.v1 import types_pb2
from runstream_services.bus.base import Envelope
from runstream_services.query import read_cache
from runstream_services.query.read_cache import Project, ReadCache
from runstream_services.writers.store import StoredBlock

PROJECT = "p"


class _NoSQL:
    def client(self):
        raise AssertionError("these tests never read SQL")


@pytest.fixture
def cache() -> ReadCache:
    c = ReadCache(_NoSQL(), "db")
    held = Project(PROJECT, ready=True)
    c._projects[PROJECT] = held  # held from the start: every block below reaches it
    return c


def block(seq: int, received_ms: int, keys, key_index, steps, values, rank=0, run_id="r") -> StoredBlock:
    batch = pb.MetricBatch(
        project=PROJECT, run_id=run_id, rank=rank, keys=list(keys),
        key_index=np.asarray(key_index, "<u2").tobytes() if key_index is not None else b"",
        steps=np.asarray(steps, "<i8").tobytes(), values=np.asarray(values, "<f8").tobytes(),
        times_ms=np.asarray(steps, "<i8").tobytes(),
    )  # fmt: skip
    request = pb.IngestRequest(seq=seq, client_id="c", metrics=batch)
    env = Envelope.from_request(request, received_ms=received_ms)
    return StoredBlock(runs=[], params=[], metrics=[(env, batch)], artifacts=[])


def test_merged_series_equal_final_of_every_point(cache):
    rng = np.random.default_rng(7)
    reference: dict[
        tuple[str, int, int], tuple[tuple[int, int], float]
    ] = {}  # (key, rank, step) -> (version, value)
    keys = ["a", "b", "c"]
    for seq in range(1, 60):
        n = int(rng.integers(1, 12))
        key_index = rng.integers(0, 3, n)
        steps = rng.integers(0, 40, n)  # repeats and any order
        values = rng.normal(size=n)
        values[rng.random(n) < 0.1] = math.nan
        rank = int(rng.integers(0, 2))
        received = 1_000 + seq // 3  # several requests share a millisecond: seq decides
        cache.on_stored(block(seq, received, keys, key_index, steps, values, rank=rank))
        for pos in range(n):
            ident = (keys[key_index[pos]], rank, int(steps[pos]))
            version = (received, (seq << read_cache.POSITION_BITS) + pos)
            if ident not in reference or version >= reference[ident][0]:
                reference[ident] = (version, float(values[pos]))
    run = cache.ready(PROJECT).runs["r"]
    for key in keys:
        s = run.series[("user", key)]
        got = list(zip(s.rank.tolist(), s.step.tolist(), s.value.tolist(), strict=True))
        want = sorted((r, st, v) for (k, r, st), (_, v) in reference.items() if k == key)
        assert repr(got) == repr(want)
        summary = s.summary()
        top = max(want, key=lambda p: p[1])[1]
        finite = [v for _, _, v in want if math.isfinite(v)]
        assert summary.count == len(want) and summary.last_step == top
        assert summary.min == (min(finite) if finite else None) and summary.max == (
            max(finite) if finite else None
        )
        at_top = {repr(v) for _, st, v in want if st == top}
        assert repr(summary.last) in at_top  # two ranks may share the top step: either is SQL's argMax


def test_a_new_series_keeps_the_last_of_a_step_its_first_block_repeats(cache):
    """A series' first block is held as it comes (no merge): the block's own repeats must already
    be gone, each (rank, step) keeping its last, highest version, across batches too."""
    first = block(1, 1_000, ["a", "b"], [0, 0, 1, 0, 1], [0, 1, 1, 1, 2], [1.0, 2.0, 5.0, 3.0, 6.0])
    later = block(2, 1_000, ["a"], None, [0, 2], [9.0, 4.0])
    cache.on_stored(StoredBlock(runs=[], params=[], metrics=first.metrics + later.metrics, artifacts=[]))
    run = cache.ready(PROJECT).runs["r"]
    a, b = run.series[("user", "a")], run.series[("user", "b")]
    assert list(zip(a.step.tolist(), a.value.tolist(), strict=True)) == [(0, 9.0), (1, 3.0), (2, 4.0)]
    assert list(zip(b.step.tolist(), b.value.tolist(), strict=True)) == [(1, 5.0), (2, 6.0)]
    assert a.summary().count == 3 and cache.ready(PROJECT).points == 5


def test_a_project_held_from_birth_applies_its_blocks_at_its_first_read(monkeypatch):
    """Blocks of a project held from birth wait in its backlog until it is read (or until they
    hold MAX_BACKLOG_POINTS); what a read then sees equals applying each block as it came."""
    from runstream_services.run_state import RunRow

    rng = np.random.default_rng(3)
    blocks = []
    for seq in range(1, 40):
        n = int(rng.integers(1, 8))
        steps, values = rng.integers(0, 30, n), rng.normal(size=n)
        points = block(seq, 1_000 + seq % 4, ["a", "b"], rng.integers(0, 2, n), steps, values, rank=seq % 2)
        run_id = f"r{seq % 5}"  # rows of five runs, re-written with rising versions
        rows = [RunRow(project=PROJECT, run_id=run_id, name=f"v{seq}", version=seq)]
        params = [(PROJECT, run_id, "config", "lr", "number", float(seq), "", seq)]
        artifacts = [[PROJECT, run_id, "model", f"s3://m/{seq}", "model", seq, "latest", "", 1, "", 0]]
        blocks.append(StoredBlock(runs=rows, params=params, metrics=points.metrics, artifacts=artifacts))

    def held(c: ReadCache):
        project = c.ready(PROJECT)
        return {
            run_id: (
                run.row and (run.row.name, run.row.version), sorted(run.params.items()), sorted(run.artifacts.items()),
                {k: list(zip(s.rank.tolist(), s.step.tolist(), s.value.tolist(), strict=True)) for k, s in run.series.items()},
            )
            for run_id, run in sorted(project.runs.items())
        }  # fmt: skip

    direct = ReadCache(_NoSQL(), "db")
    direct._projects[PROJECT] = Project(PROJECT, ready=True)
    born = ReadCache(_NoSQL(), "db")
    born.on_new_project(PROJECT)
    for b in blocks:
        direct.on_stored(b)
        born.on_stored(b)
    waiting = born._projects[PROJECT]
    assert len(waiting.backlog) == len(blocks) and waiting.points == 0  # nothing applied yet
    assert held(born) == held(direct) and born.ready(PROJECT).points == direct.ready(PROJECT).points
    assert born.ready(PROJECT).backlog is None  # read once: from here on blocks apply as they come
    born.on_stored(block(99, 5_000, ["a"], None, [0], [7.0]))
    direct.on_stored(block(99, 5_000, ["a"], None, [0], [7.0]))
    assert held(born) == held(direct)

    monkeypatch.setattr(read_cache, "MAX_BACKLOG_POINTS", 20)  # a backlog never read is bounded
    capped = ReadCache(_NoSQL(), "db")
    capped.on_new_project(PROJECT)
    kept = 0
    for b in blocks:
        capped.on_stored(b)
        waiting = capped._projects.get(PROJECT)
        if waiting is None:
            break  # let go, unapplied: its first read loads it from SQL
        kept += 1
        assert waiting.backlog is not None and waiting.backlog_points < 20 and waiting.points == 0
    assert 0 < kept < len(blocks)  # held while under the bound, let go at it
    assert capped._backlog_points == 0 and not capped._backlogged
    capped.on_stored(block(99, 5_000, ["a"], None, [0], [7.0]))  # later blocks do not hold it again
    assert PROJECT not in capped._projects


def _project_block(seq: int, name: str) -> StoredBlock:
    b = block(seq, 1_000, ["a"], None, [seq, seq + 100], [1.0, 2.0])
    batch = b.metrics[0][1]
    batch.project = name
    return StoredBlock(runs=[], params=[], metrics=[(b.metrics[0][0], batch)], artifacts=[])


def test_backlogs_are_bounded_in_all_and_a_project_too_big_once_applied_is_left_to_sql(monkeypatch):
    """MAX_BACKLOG_POINTS bounds the blocks all backlogs keep alive, not each one: at the bound
    every unread project is let go, unapplied (a held project that was read stays); a first read
    whose backlog makes the project too big to hold (MAX_POINTS) answers None: read SQL."""
    monkeypatch.setattr(read_cache, "MAX_BACKLOG_POINTS", 10)
    c = ReadCache(_NoSQL(), "db")
    for name in ("p", "q", "read"):
        c.on_new_project(name)
    assert c.ready("read").backlog is None  # read once: its blocks apply as they come
    for seq in range(1, 5):  # 2 blocks of 2 points each for p and q: 8 points, under the bound
        c.on_stored(_project_block(seq, "pq"[seq % 2]))
        c.on_stored(_project_block(seq, "read"))
    assert c._backlog_points == sum(c._projects[n].backlog_points for n in "pq") == 8
    c.on_stored(_project_block(5, "q"))  # 10 points: the bound
    assert "p" not in c._projects and "q" not in c._projects  # let go, unapplied: SQL loads them
    assert c._backlog_points == 0 and not c._backlogged
    assert len(c.ready("read").runs["r"].series[("user", "a")]) == 8  # the read project stays held
    c.on_stored(_project_block(6, "p"))
    assert "p" not in c._projects and c._backlog_points == 0

    monkeypatch.setattr(read_cache, "MAX_BACKLOG_POINTS", 1_000)
    c = ReadCache(_NoSQL(), "db")
    c.on_new_project("q")
    for seq in range(1, 16):
        c.on_stored(_project_block(seq, "q"))
    monkeypatch.setattr(read_cache, "MAX_POINTS", 20)
    assert c.ready("q") is None and "q" not in c._projects  # 30 points once applied
    assert c._backlog_points == 0 and not c._backlogged


def test_interleaved_ranks_with_rising_steps_equal_final(cache):
    """The many-ranks shape (each batch one rank's rising steps, ranks interleaved, re-logged
    steps, older versions arriving late) is placed by binary search, not sorted: the same FINAL
    rule must hold, ties going to the later write."""
    rng = np.random.default_rng(11)
    reference: dict[tuple[int, int], tuple[tuple[int, int], float]] = {}  # (rank, step) -> (version, value)
    for seq in range(1, 400):
        rank = int(rng.integers(0, 8))
        steps = np.unique(rng.integers(0, 60, int(rng.integers(1, 6))))  # rising, may repeat held steps
        values = rng.normal(size=len(steps))
        received = 5_000 + int(rng.integers(-3, 4))  # late and early arrivals, and ties on the ms
        cache.on_stored(block(seq, received, ["a"], None, steps, values, rank=rank))
        for pos, step in enumerate(steps.tolist()):
            version = (received, (seq << read_cache.POSITION_BITS) + pos)
            if (rank, step) not in reference or version >= reference[(rank, step)][0]:
                reference[(rank, step)] = (version, float(values[pos]))
    s = cache.ready(PROJECT).runs["r"].series[("user", "a")]
    got = list(zip(s.rank.tolist(), s.step.tolist(), s.value.tolist(), strict=True))
    assert got == sorted((r, st, v) for (r, st), (_, v) in reference.items())
    assert s.summary().count == len(reference)


def test_blocks_of_many_batches_merge_as_one_batch_at_a_time(cache, monkeypatch):
    """A block's batches are merged at once (one decode and sort for the block): blocks of many
    batches over two runs, both kinds, several keys and ranks, steps repeated inside a block,
    batches without times, a project not held, and a series crossing the size limit inside a
    block must leave the cache as the FINAL rule says, with its point count right."""
    monkeypatch.setattr(read_cache, "MAX_SERIES_POINTS", 80)
    rng = np.random.default_rng(5)
    keys = ["a", "b", "c", "d"]
    reference: dict[tuple, tuple[tuple[int, int], float, int]] = {}  # (run, kind, key, rank, step) -> ...
    seq = 0
    for _ in range(40):
        metrics = []
        for _ in range(int(rng.integers(1, 30))):
            seq += 1
            n = int(rng.integers(1, 8))
            key_index = rng.integers(0, len(keys), n)
            steps = rng.integers(0, 80, n)
            values = rng.normal(size=n)
            rank, run_id = int(rng.integers(0, 3)), "s" if rng.random() < 0.2 else "r"  # "r" goes big
            kind = [types_pb2.METRIC_KIND_USER, types_pb2.METRIC_KIND_SYSTEM][int(rng.integers(0, 2))]
            project = PROJECT if rng.random() < 0.9 else "not-held"
            received = 2_000 + seq // 4 + int(rng.integers(-5, 6))  # late and early arrivals
            with_times = rng.random() < 0.7
            batch = pb.MetricBatch(
                project=project, run_id=run_id, rank=rank, keys=keys, kind=kind,
                key_index=np.asarray(key_index, "<u2").tobytes(), steps=np.asarray(steps, "<i8").tobytes(),
                values=np.asarray(values, "<f8").tobytes(),
                times_ms=np.asarray(steps + 7, "<i8").tobytes() if with_times else b"",
            )  # fmt: skip
            env = Envelope.from_request(
                pb.IngestRequest(seq=seq, client_id="c", metrics=batch), received_ms=received
            )
            metrics.append((env, batch))
            if project != PROJECT:
                continue
            kind_name = "system" if kind == types_pb2.METRIC_KIND_SYSTEM else "user"
            for pos in range(n):
                ident = (run_id, kind_name, keys[key_index[pos]], rank, int(steps[pos]))
                version = (received, (seq << read_cache.POSITION_BITS) + pos)
                if ident not in reference or version >= reference[ident][0]:
                    when = int(steps[pos]) + 7 if with_times else received
                    reference[ident] = (version, float(values[pos]), when)
        cache.on_stored(StoredBlock(runs=[], params=[], metrics=metrics, artifacts=[]))
    held = cache.ready(PROJECT)
    assert set(held.runs) == {"r", "s"} and cache.ready("not-held") is None
    counted = 0
    for run_id, run in held.runs.items():
        for kind in ("user", "system"):
            for key in keys:
                want = sorted(
                    (r, st, v, t, *version)
                    for (ru, k, ke, r, st), (version, v, t) in reference.items()
                    if (ru, k, ke) == (run_id, kind, key)
                )
                if len(want) > 80:  # over the limit: listed by key only, read from SQL
                    assert (kind, key) in run.big and (kind, key) not in run.series
                    continue
                s = run.series[(kind, key)]
                got = list(
                    zip(
                        s.rank.tolist(),
                        s.step.tolist(),
                        s.value.tolist(),
                        s.time.tolist(),
                        s.vhi.tolist(),
                        s.vlo.tolist(),
                        strict=True,
                    )
                )
                assert got == want, (run_id, kind, key)
                counted += len(s)
    assert held.points == counted and any(run.big for run in held.runs.values())


def test_a_series_over_the_limit_is_held_by_key_only(cache, monkeypatch):
    monkeypatch.setattr(read_cache, "MAX_SERIES_POINTS", 10)
    cache.on_stored(block(1, 1, ["x", "y"], [0, 0, 0, 1], [0, 1, 2, 0], [1, 2, 3, 4]))
    cache.on_stored(block(2, 2, ["x"], None, list(range(3, 20)), [0.5] * 17))
    held = cache.ready(PROJECT)
    run = held.runs["r"]
    assert ("user", "x") in run.big and ("user", "x") not in run.series
    assert len(run.series[("user", "y")]) == 1
    assert held.big_keys == {"x": {"r"}} and held.points == 1
    cache.on_stored(block(3, 3, ["x"], None, [50], [1.0]))  # later points of a big series are not held
    assert ("user", "x") not in run.series and held.points == 1


def test_a_recount_drops_the_project(cache):
    cache.on_stored(block(1, 1, ["x"], None, [0, 1], [1.0, 2.0]))
    recount = StoredBlock(
        runs=[], params=[], metrics=[], artifacts=[], recounted=frozenset({(PROJECT, "r", "user", "x")})
    )
    cache.on_stored(recount)
    assert cache.ready(PROJECT) is None  # the next read loads it again from SQL


def test_points_over_the_budget_drop_the_least_recently_read_projects(cache, monkeypatch):
    monkeypatch.setattr(read_cache, "MAX_POINTS", 5)
    cache._projects["q"] = Project("q", ready=True)
    cache.on_stored(block(1, 1, ["x"], None, [0, 1, 2, 3], [1.0] * 4))
    assert cache.ready(PROJECT) is not None  # 4 points: under the budget; now read after "q"
    cache.on_stored(block(2, 2, ["x"], None, [4, 5], [1.0] * 2))
    # 6 points: "q" goes first (least recently read), then the project over the budget on its own
    assert cache.ready("q") is None and cache.ready(PROJECT) is None
    assert cache.project(PROJECT) is None  # ... and left to SQL for a while (no load: no SQL here)


def test_minmax_buckets_of_held_points_follow_the_sql_rules():
    """cached_reads._minmax_buckets as sql_series.minmax_sql computes them: buckets of
    floor((x - x0) / width); per bucket the x and value of the smallest and the largest value, NaN
    never winning while a bucket holds a number, an all-NaN bucket left out; of equal values the
    first in order; checked against a plain loop."""
    from runstream_services.query.cached_reads import _minmax_buckets

    rng = np.random.default_rng(7)
    x = np.arange(40, dtype=np.float64) * 1.5 + 3
    y = rng.integers(0, 4, 40).astype(np.float64)  # many ties
    y[[5, 6, 30]] = math.nan
    y[10:14] = math.nan  # bucket 1 (x0 3, width 15: x 18..31.5, points 10..19): not all NaN
    y[20:30] = math.nan  # bucket 2 all NaN: left out
    si, b, xl, yl, xh, yh = _minmax_buckets(3, x, y, 3.0, 15.0)
    expected = {}
    for xi, yi in zip(x.tolist(), y.tolist(), strict=True):
        bucket = math.floor((xi - 3.0) / 15.0)
        lo = math.inf if math.isnan(yi) else yi
        hi = -math.inf if math.isnan(yi) else yi
        cur = expected.setdefault(bucket, [xi, lo, xi, hi])
        if lo < cur[1]:
            cur[0], cur[1] = xi, lo
        if hi > cur[3]:
            cur[2], cur[3] = xi, hi
    expected = {k: v for k, v in expected.items() if v[1] <= v[3]}
    assert 2 not in expected and sorted(expected) == b.tolist()
    assert set(si.tolist()) == {3}
    got = {int(k): [a, c, d, e] for k, a, c, d, e in zip(b, xl, yl, xh, yh, strict=True)}
    assert got == expected
    empty = _minmax_buckets(1, np.empty(0), np.empty(0), 0.0, 1.0)
    assert [len(c) for c in empty] == [0] * 6
