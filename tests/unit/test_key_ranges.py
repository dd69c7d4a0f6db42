"""key_ranges' shortcuts give the general path's answer (replaced_points.py): the plain-Python path
for small batches, and the grid shortcut (an SDK flush: rows of one step of every key) at any size,
against the numpy sort."""

from __future__ import annotations

import numpy as np
import pytest

from runstream.v1 import ingest_pb2
from runstream_services.writers import replaced_points
from runstream_services.writers.replaced_points import key_ranges


def _batch(rng: np.random.Generator, n: int, keys: list[str], with_index: bool) -> ingest_pb2.MetricBatch:
    steps = rng.integers(-3, 6, n) if rng.random() < 0.5 else np.arange(n) // max(1, len(keys)) + 10
    batch = ingest_pb2.MetricBatch(project="p", run_id="r", keys=keys, steps=steps.astype("<i8").tobytes())
    if with_index:
        batch.key_index = rng.integers(0, len(keys), n).astype("<u2").tobytes()
    return batch


@pytest.mark.parametrize("seed", range(40))
def test_small_path_matches_numpy(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(50):
        n = int(rng.integers(1, 130))
        with_index = rng.random() < 0.8
        names = ["a", "b", "c", "d"] if rng.random() < 0.7 else ["a", "b", "a"]  # a key listed twice
        keys = names[: int(rng.integers(1, len(names) + 1))] if with_index else names[:1]
        batch = _batch(rng, n, keys, with_index)
        small = sorted(key_ranges(batch))
        monkeypatch.setattr(replaced_points, "SMALL_BATCH_POINTS", 0)
        vectorized = sorted(key_ranges(batch))
        monkeypatch.setattr(replaced_points, "SMALL_BATCH_POINTS", 128)
        assert small == vectorized, (n, keys)


def test_empty_batch() -> None:
    assert key_ranges(ingest_pb2.MetricBatch(project="p", run_id="r", keys=["a"])) == []


@pytest.mark.parametrize(
    "keys, steps",
    [
        (["a", "b", "c"], [7, 7, 7]),  # one step of three metrics: the shortcut
        (["a", "b", "a"], [7, 7, 7]),  # a key listed twice: not rising
        (["a", "b", "c"], [7, 8, 7]),  # steps differ: the general loop
        ([f"k{i}" for i in range(64)], [3] * 64),
    ],
)
def test_one_step_of_each_key_matches_numpy(keys, steps, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = ingest_pb2.MetricBatch(
        project="p",
        run_id="r",
        keys=keys,
        steps=np.array(steps, "<i8").tobytes(),
        key_index=np.arange(len(keys), dtype="<u2").tobytes(),
    )
    small = sorted(key_ranges(batch))
    monkeypatch.setattr(replaced_points, "SMALL_BATCH_POINTS", 0)
    assert small == sorted(key_ranges(batch))


@pytest.mark.parametrize(
    "keys, rows",
    [
        (["a", "b", "c"], [[1, 1, 1], [2, 2, 2], [5, 5, 5]]),  # an SDK flush of 3 steps: the grid shortcut
        (["a", "b", "c"], [[1, 1, 1], [2, 3, 2], [5, 5, 5]]),  # a row of different steps: the general loop
        (["a", "b", "c"], [[4, 4, 4], [2, 2, 2]]),  # rows falling
        (["a", "b", "c"], [[4, 4, 4], [4, 4, 4]]),  # a step logged twice
        (["a", "b", "a"], [[1, 1, 1], [2, 2, 2]]),  # a key listed twice
        ([f"m{i}" for i in range(10)], [[s] * 10 for s in range(10)]),  # 10 metrics x 10 steps
        ([f"m{i}" for i in range(10)], [[s] * 10 for s in range(100, 120)]),  # 20 steps: numpy's grid
        ([f"m{i}" for i in range(10)], [[s] * 10 for s in range(0, 60, 3)]),  # steps with gaps
        ([f"m{i}" for i in range(10)], [[s] * 10 for s in range(20, 0, -1)]),  # large, falling
        ([f"m{i}" for i in range(10)], [[s] * 10 for s in [*range(10), *range(10)]]),  # large, repeated
        ([f"m{i}" for i in range(10)], [[s] * 9 + [s + 1] for s in range(20)]),  # large, one key off
        ([*[f"m{i}" for i in range(9)], "m0"], [[s] * 10 for s in range(20)]),  # large, a key twice
    ],
)
def test_grid_of_steps_and_keys_matches_the_general_path(keys, rows, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = ingest_pb2.MetricBatch(
        project="p",
        run_id="r",
        keys=keys,
        steps=np.array(rows, "<i8").ravel().tobytes(),
        key_index=np.tile(np.arange(len(keys), dtype="<u2"), len(rows)).tobytes(),
    )
    small = sorted(key_ranges(batch))  # the Python path up to 128 points, numpy's grid shortcut above
    monkeypatch.setattr(replaced_points, "SMALL_BATCH_POINTS", 0)
    grid = sorted(key_ranges(batch))
    monkeypatch.setattr(replaced_points, "_grid_ranges", lambda *args: None)
    general = sorted(key_ranges(batch))
    assert small == grid == general
