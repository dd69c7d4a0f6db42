"""A stand-in IngestService for the SDK's unit tests: an in-process grpc server that stores each
(client_id, seq) once and acks it, can refuse chosen requests, and can be stopped and restarted on
the same port. The real server (`runstream server`) is exercised by tests/integration/test_sdk_*."""

from __future__ import annotations

import hashlib
import threading
from concurrent import futures

import grpc
import numpy as np

from runstream.v1 import ingest_pb2, ingest_pb2_grpc
from tests.server_process import free_port


class FakeIngest(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, refuse=None, max_message_bytes: int | None = None):
        self.refuse = refuse  # callable(IngestRequest) -> message or None
        self.max_message_bytes = max_message_bytes  # gRPC's receive limit (None: its default)
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], ingest_pb2.IngestRequest] = {}
        self.received = 0  # including replays
        self.calls = 0  # Ingest calls opened
        self.open_calls = 0  # ... and not ended yet
        self.packed_clients: list[set[str]] = []  # per packed message: the client_ids in it
        self.blobs: dict[str, bytes] = {}
        self.port = free_port()
        self.server = None
        self.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FakeIngest:
        options = (
            [("grpc.max_receive_message_length", self.max_message_bytes)] if self.max_message_bytes else []
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=options)
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(self, self.server)
        self.server.add_insecure_port(self.endpoint)
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(0).wait()

    # ---- service ----
    def Ingest(self, request_iterator, context):
        with self.lock:
            self.calls += 1
            self.open_calls += 1
        try:
            yield from self._answers(request_iterator)
        finally:
            with self.lock:
                self.open_calls -= 1

    def _answers(self, request_iterator):
        for req in request_iterator:
            if not req.packed:
                message = self._take(req)
                if message:
                    yield ingest_pb2.IngestResponse(seq=req.seq, ok=False, code=3, message=message)
                    continue
                yield ingest_pb2.IngestResponse(
                    seq=req.seq, ok=True, points_accepted=len(req.metrics.values) // 8
                )
                continue
            # a packed message (the SDK's shared stream): each request as if alone, one answer
            refused, points, clients = [], 0, set()
            for index, raw in enumerate(req.packed):
                inner = ingest_pb2.IngestRequest.FromString(raw)
                clients.add(inner.client_id)
                message = self._take(inner)
                if message:
                    refused.append(ingest_pb2.PackedRefusal(index=index, code=3, message=message))
                else:
                    points += len(inner.metrics.values) // 8
            with self.lock:
                self.packed_clients.append(clients)
            yield ingest_pb2.IngestResponse(
                seq=req.seq, ok=not refused, code=3 if refused else 0, points_accepted=points,
                message=refused[0].message if refused else "", packed_refused=refused,
            )  # fmt: skip

    def _take(self, req: ingest_pb2.IngestRequest) -> str | None:
        """Stores one request once; the refusal message when `refuse` refuses it."""
        with self.lock:
            self.received += 1
            message = self.refuse(req) if self.refuse else None
            if not message:
                self.requests.setdefault((req.client_id, req.seq), req)
            return message

    def UploadArtifact(self, request_iterator, context):
        header, chunks = None, []
        for part in request_iterator:
            if part.WhichOneof("part") == "header":
                header = part.header
            else:
                chunks.append(part.chunk)
        data = b"".join(chunks)
        if hashlib.sha256(data).hexdigest() != header.sha256:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sha256 mismatch")
        present = header.sha256 in self.blobs
        self.blobs[header.sha256] = data
        return ingest_pb2.UploadArtifactResponse(uri=f"mem://{header.sha256}", already_present=present)

    def Health(self, request, context):
        return ingest_pb2.HealthResponse(status="ok", bus="fake", store="memory", artifacts="memory")

    # ---- inspection ----
    def bodies(self, kind: str) -> list:
        with self.lock:
            reqs = [r for _, r in sorted(self.requests.items(), key=lambda kv: kv[0])]
        return [getattr(r, kind) for r in reqs if r.WhichOneof("body") == kind]

    def points(self, run_id: str | None = None, kind: int = 1) -> list[tuple[str, int, float, int]]:
        """(key, step, value, rank) of every stored metric point."""
        out = []
        for b in self.bodies("metrics"):
            if (run_id and b.run_id != run_id) or (b.kind or 1) != kind:
                continue
            n = len(b.values) // 8
            idx = np.frombuffer(b.key_index, "<u2") if b.key_index else np.zeros(n, dtype=np.uint16)
            steps = np.frombuffer(b.steps, "<i8")
            vals = np.frombuffer(b.values, "<f8")
            out.extend(
                (b.keys[i], int(s), float(v), b.rank) for i, s, v in zip(idx, steps, vals, strict=True)
            )
        return out
