"""A raw IngestService client for tests, built from the runstream.v1 stubs (not the SDK), so a
test controls every request, seq and stream: request builders, one-shot streams that return every
ack, and open streams a test can keep feeding while it kills the server."""

from __future__ import annotations

import queue
import uuid
from typing import Protocol

import grpc
import numpy as np

from runstream.v1 import ingest_pb2 as pb
from runstream.v1 import ingest_pb2_grpc

GRPC_OPTIONS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
PROJECT = "proj"


class HasEndpoint(Protocol):
    @property
    def endpoint(self) -> str: ...


def stub_for(server: HasEndpoint) -> ingest_pb2_grpc.IngestServiceStub:
    """A stub on a new channel: a new stream, as a reconnecting SDK would open."""
    return ingest_pb2_grpc.IngestServiceStub(grpc.insecure_channel(server.endpoint, options=GRPC_OPTIONS))


def metric_batch(
    run_id: str, start: int, n: int, keys=("loss", "acc"), project: str = PROJECT, **over
) -> pb.MetricBatch:
    """n points: step i // len(keys) for key i % len(keys), value = the point's global index i
    (from `start`), so consecutive batches continue one another. `over` sets or replaces fields
    (kind=..., values=...)."""
    idx = np.arange(start, start + n)
    fields = {
        "project": project,
        "run_id": run_id,
        "keys": list(keys),
        "key_index": (idx % len(keys)).astype("<u2").tobytes(),
        "steps": (idx // len(keys)).astype("<i8").tobytes(),
        "values": idx.astype("<f8").tobytes(),
        "times_ms": np.full(n, 1_700_000_000_000, "<i8").tobytes(),
    }
    return pb.MetricBatch(**{**fields, **over})


#: the metric names of a rank's step (rank_step_batch)
RANK_KEYS = [f"m{k}" for k in range(10)]


def rank_step_batch(project: str, run_id: str, rank: int, client: int, step: int) -> pb.MetricBatch:
    """One step of a rank's 10 metrics (RANK_KEYS), as a rank of a distributed run logs it; the
    values name the client and the step (client + step / 1000), so each point is recognisable."""
    n = len(RANK_KEYS)
    return pb.MetricBatch(
        project=project, run_id=run_id, rank=rank, keys=RANK_KEYS,
        key_index=np.arange(n, dtype="<u2").tobytes(), steps=np.full(n, step, "<i8").tobytes(),
        values=np.full(n, client + step / 1000, "<f8").tobytes(),
        times_ms=np.full(n, 1_700_000_000_000 + step, "<i8").tobytes(),
    )  # fmt: skip


def run_start(seq: int, client_id: str, run_id: str, project: str = PROJECT, **fields) -> pb.IngestRequest:
    return pb.IngestRequest(
        seq=seq, client_id=client_id, run_start=pb.RunStart(project=project, run_id=run_id, **fields)
    )


def workload(run_id: str, n_batches: int, per_batch: int) -> list[pb.IngestRequest]:
    """One new client's run: seq 1 starts the run, seqs 2.. carry `n_batches` metric batches of
    `per_batch` points (keys loss/acc), n_batches * per_batch points in all."""
    cid = uuid.uuid4().hex
    return [run_start(1, cid, run_id)] + [
        pb.IngestRequest(seq=2 + i, client_id=cid, metrics=metric_batch(run_id, i * per_batch, per_batch))
        for i in range(n_batches)
    ]


def ingest(stub, requests: list[pb.IngestRequest], timeout: float = 120) -> dict[int, pb.IngestResponse]:
    """Sends the requests on one stream, half-closes, returns every answer by seq."""
    answers = {r.seq: r for r in stub.Ingest(iter(requests), timeout=timeout)}
    assert set(answers) == {r.seq for r in requests}, "every request gets exactly one answer"
    return answers


def status_code(value: int) -> grpc.StatusCode:
    """The grpc.StatusCode of an IngestResponse.code."""
    return next(c for c in grpc.StatusCode if c.value[0] == value)


class OpenStream:
    """A stream fed from a queue and kept open until close(), so a test can kill or stop the
    server while requests are still in flight."""

    def __init__(self, server: HasEndpoint, requests: list[pb.IngestRequest] = (), timeout: float = 180):
        self.outbox: queue.Queue = queue.Queue()
        for r in requests:
            self.outbox.put(r)
        self.responses = stub_for(server).Ingest(iter(self.outbox.get, None), timeout=timeout)

    def close(self) -> None:
        self.outbox.put(None)
