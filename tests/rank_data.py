"""A multi-rank run for the per-rank and straggler tests: RANKS ranks log `step_time_s` every
step (rank SLOW_RANK is 0.1 s slower on every 5th step, the last rank 1 ms slower otherwise) and a
system metric `cpu_percent` (10 x rank, a sample every 15 s), sent through the raw ingest client."""

from __future__ import annotations

import uuid

import numpy as np

from runstream.v1 import ingest_pb2 as pb
from runstream.v1 import types_pb2
from tests.ingest_client import HasEndpoint, ingest, metric_batch, run_start, stub_for

RANKS = 4
STEPS = 50
SLOW_RANK = 2
T0_MS = 1_700_000_000_000


def rank_batches(run_id: str, project: str) -> list[pb.MetricBatch]:
    out = []
    steps = np.arange(STEPS)
    for rank in range(RANKS):
        t = 0.1 + 0.001 * rank + np.where((steps % 5 == 0) & (rank == SLOW_RANK), 0.1, 0.0)
        out.append(
            metric_batch(run_id, 0, STEPS, keys=("step_time_s",), project=project, rank=rank,
                         values=t.astype("<f8").tobytes())
        )  # fmt: skip
        out.append(
            metric_batch(run_id, 0, 10, keys=("cpu_percent",), project=project, rank=rank,
                         kind=types_pb2.METRIC_KIND_SYSTEM, values=np.full(10, 10.0 * rank, "<f8").tobytes(),
                         times_ms=(T0_MS + 15_000 * np.arange(10)).astype("<i8").tobytes())
        )  # fmt: skip
    return out


def log_multi_rank_run(server: HasEndpoint, project: str, name: str = "ddp-4-ranks") -> str:
    """Logs the run; returns its id."""
    run_id, cid = "run-" + uuid.uuid4().hex[:8], uuid.uuid4().hex
    requests = [run_start(1, cid, run_id, project=project, name=name)]
    requests += [
        pb.IngestRequest(seq=2 + i, client_id=cid, metrics=b)
        for i, b in enumerate(rank_batches(run_id, project))
    ]
    answers = ingest(stub_for(server), requests)
    assert all(a.ok for a in answers.values()), [a.message for a in answers.values()]
    return run_id


LONG_RANKS = 3
LONG_STEPS = 200_000  # 600,000 points: more than the straggler view reads at once
LONG_SLOW_EVERY = 1_000  # rank 1 is 2 s slower on every 1,000th step


def log_long_run(server: HasEndpoint, project: str, name: str = "ddp-long") -> str:
    """A run too long for the straggler view to read whole: LONG_RANKS ranks, LONG_STEPS steps of
    step_time_s each (rank 1 slow on every LONG_SLOW_EVERY-th step, rank 0 otherwise 1 ms slower)."""
    run_id, cid = "run-" + uuid.uuid4().hex[:8], uuid.uuid4().hex
    requests = [run_start(1, cid, run_id, project=project, name=name)]
    steps = np.arange(LONG_STEPS, dtype="<i8")
    per_batch = 50_000
    for rank in range(LONG_RANKS):
        t = (
            0.1
            + np.where(rank == 0, 0.001, 0.0)
            + np.where((steps % LONG_SLOW_EVERY == 0) & (rank == 1), 2.0, 0.0)
        )
        for start in range(0, LONG_STEPS, per_batch):
            part = slice(start, start + per_batch)
            batch = metric_batch(
                run_id, 0, per_batch, keys=("step_time_s",), project=project, rank=rank,
                steps=steps[part].tobytes(), values=t[part].astype("<f8").tobytes(),
            )  # fmt: skip
            requests.append(pb.IngestRequest(seq=len(requests) + 1, client_id=cid, metrics=batch))
    answers = ingest(stub_for(server), requests)
    assert all(a.ok for a in answers.values()), [a.message for a in answers.values()]
    return run_id
