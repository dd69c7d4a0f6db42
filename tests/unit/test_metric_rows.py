"""rows.metrics_table builds a block's Arrow table column-wise for all its batches at once; here
every point is checked against a point-by-point reference over random blocks (several projects,
runs, kinds and ranks; batches with and without key_index and times_ms; empty batches)."""

from __future__ import annotations

import random

import numpy as np

from runstream.v1 import ingest_pb2, types_pb2
from runstream_services.writers.rows import POSITION_BITS, metrics_table


def _random_block(rng: random.Random) -> list[tuple[ingest_pb2.MetricBatch, int, int]]:
    block = []
    for i in range(rng.randint(1, 25)):
        n = rng.choice([0, 1, 3, rng.randint(1, 40)])
        keys = list(dict.fromkeys(f"k{rng.randint(0, 9)}" for _ in range(rng.randint(1, 4))))
        batch = ingest_pb2.MetricBatch(
            project=rng.choice(["p", "q"]),
            run_id=rng.choice(["r1", "r2", "r3"]),
            keys=keys,
            steps=np.array([rng.randint(0, 10**9) for _ in range(n)], "<i8").tobytes(),
            values=np.array([rng.random() for _ in range(n)], "<f8").tobytes(),
            rank=rng.randint(0, 1023),
            kind=rng.choice([types_pb2.METRIC_KIND_USER, types_pb2.METRIC_KIND_SYSTEM]),
        )
        if len(keys) > 1 or rng.random() < 0.5:
            batch.key_index = np.array([rng.randrange(len(keys)) for _ in range(n)], "<u2").tobytes()
        if rng.random() < 0.6:
            batch.times_ms = np.array([rng.randint(0, 2 * 10**12) for _ in range(n)], "<i8").tobytes()
        block.append((batch, 1_700_000_000_000 + i, rng.randint(1, 1 << 50)))
    return block


def _reference(block) -> list[tuple]:
    points = []
    for batch, received_ms, seq in block:
        n = len(batch.steps) // 8
        index = np.frombuffer(batch.key_index, "<u2") if batch.key_index else [0] * n
        times = np.frombuffer(batch.times_ms, "<i8") if batch.times_ms else [received_ms] * n
        kind = "system" if batch.kind == types_pb2.METRIC_KIND_SYSTEM else "user"
        seq_part = (seq & ((1 << (64 - POSITION_BITS)) - 1)) << POSITION_BITS
        for j in range(n):
            points.append(
                (
                    batch.project, batch.run_id, kind, batch.keys[int(index[j])], batch.rank,
                    int(np.frombuffer(batch.steps, "<i8")[j]), int(times[j]),
                    float(np.frombuffer(batch.values, "<f8")[j]), received_ms, seq_part + j,
                )
            )  # fmt: skip
    return points


def test_every_point_of_a_random_block_matches_the_point_by_point_reference():
    rng = random.Random(11)
    for _ in range(200):
        block = _random_block(rng)
        table = metrics_table(block)
        columns = [table[name].to_pylist() for name in table.column_names]
        assert list(zip(*columns, strict=True)) == _reference(block)
        assert str(table["send_order"].type) == "uint64" and str(table["rank"].type) == "uint16"
