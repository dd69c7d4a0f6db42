"""What the fuzz tests send through and check against: the stubs of one real `runstream server`,
the fuzz project's runs and the seeded run, a snapshot of everything acked in the seeded run, and
a tally of requests sent and answers received (printed at the end of the session).

Ingest requests go on one stream per example (many requests each); raw frames use a generic
`stream_stream` with identity serializers so bytes that do not decode reach the server as sent."""

from __future__ import annotations

import struct
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field

import grpc

from runstream.v1 import ingest_pb2 as ipb
from runstream.v1 import ingest_pb2_grpc, query_pb2_grpc, types_pb2
from runstream.v1 import query_pb2 as qpb
from tests.fuzz import strategies as s
from tests.server_process import ServerProcess

STREAM_TIMEOUT_S = 120.0  # an answer that takes longer counts as silence
QUERY_TIMEOUT_S = 60.0
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 256 << 20),
    ("grpc.max_receive_message_length", 256 << 20),
]
INGEST_METHOD = "/runstream.v1.IngestService/Ingest"

# Codes a query may refuse with: the request's fault or a limit, said as such. INTERNAL, UNKNOWN
# (an exception escaped), UNAVAILABLE (server gone) and DEADLINE_EXCEEDED (no answer) are defects.
QUERY_REFUSALS = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.ALREADY_EXISTS,
})  # fmt: skip
# Status codes that are never a proper answer, even to bytes that do not decode.
NEVER = frozenset({grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED,
                   grpc.StatusCode.UNAVAILABLE})  # fmt: skip


@dataclass
class Tally:
    """Requests sent and answers received, for the session summary (and the long-form report)."""

    ingest_sent: int = 0
    ingest_answers: int = 0
    ingest_stream_errors: Counter = field(default_factory=Counter)
    query_sent: int = 0
    query_answers: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def line(self) -> str:
        return (
            f"fuzz: {self.ingest_sent} ingest requests sent, {self.ingest_answers} IngestResponses, "
            f"stream statuses {dict(self.ingest_stream_errors)}; {self.query_sent} query requests sent, "
            f"answers {dict(self.query_answers)}; {self.ingest_sent + self.query_sent} requests in all"
        )


TALLY = Tally()


@dataclass
class StreamOutcome:
    """What one Ingest stream answered: the IngestResponses and the final status."""

    answers: list[ipb.IngestResponse]
    code: grpc.StatusCode
    details: str

    def describe(self) -> str:
        seqs = [a.seq for a in self.answers]
        return f"status {self.code.name} ({self.details!r}), {len(self.answers)} answers for seqs {seqs[:20]}"


class FuzzTarget:
    """A started server plus its channel and stubs."""

    def __init__(self, server: ServerProcess):
        self.server = server
        self.channel = grpc.insecure_channel(server.endpoint, options=CHANNEL_OPTIONS)
        self.ingest = ingest_pb2_grpc.IngestServiceStub(self.channel)
        self.query = query_pb2_grpc.QueryServiceStub(self.channel)
        self.raw_ingest = self.channel.stream_stream(INGEST_METHOD)  # identity (de)serializers
        self.pid = server.proc.pid if server.proc else None
        self.seeded: tuple | None = None

    def close(self) -> None:
        self.channel.close()

    # ---- checks -------------------------------------------------------------------------------

    def assert_up(self) -> None:
        """The same server process is running and answers Health."""
        proc = self.server.proc
        assert proc is not None and proc.poll() is None, f"server exited:\n{self.server.log_tail()}"
        assert proc.pid == self.pid, "server process was replaced"
        self.ingest.Health(ipb.HealthRequest(), timeout=30)

    # ---- sending ------------------------------------------------------------------------------

    def send_frames(self, frames: list[bytes]) -> StreamOutcome:
        """Sends serialized frames on one Ingest stream, half-closes, reads to the end."""
        with TALLY.lock:
            TALLY.ingest_sent += len(frames)
        call = self.raw_ingest(iter(frames), timeout=STREAM_TIMEOUT_S)
        answers: list[ipb.IngestResponse] = []
        try:
            for raw in call:
                answers.append(ipb.IngestResponse.FromString(raw))
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
        with TALLY.lock:
            TALLY.ingest_answers += len(answers)
            TALLY.ingest_stream_errors[code.name] += 1
        return StreamOutcome(answers, code, details)

    def send(self, requests: list[ipb.IngestRequest]) -> StreamOutcome:
        return self.send_frames([r.SerializeToString() for r in requests])

    def query_call(self, method: str, request: bytes, streaming: bool, response_type) -> grpc.StatusCode:
        """One QueryService call with raw request bytes; the status it ended with."""
        path = f"/runstream.v1.QueryService/{method}"
        with TALLY.lock:
            TALLY.query_sent += 1
        try:
            if streaming:
                for raw in self.channel.unary_stream(path)(request, timeout=QUERY_TIMEOUT_S):
                    response_type.FromString(raw)
            else:
                response_type.FromString(self.channel.unary_unary(path)(request, timeout=QUERY_TIMEOUT_S))
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
        with TALLY.lock:
            TALLY.query_answers[code.name] += 1
        return code

    # ---- the runs fuzzing aims at, and the seeded run ------------------------------------------

    def prepare(self) -> None:
        """Starts the fuzz project's runs, then seeds and snapshots the seeded run."""
        cid = uuid.uuid4().hex
        reqs = [
            ipb.IngestRequest(
                seq=i + 1, client_id=cid, run_start=ipb.RunStart(project=s.FUZZ_PROJECT, run_id=r)
            )
            for i, r in enumerate((*s.LIVE_RUNS, s.FINISHED_RUN))
        ]
        reqs.append(ipb.IngestRequest(seq=len(reqs) + 1, client_id=cid, run_finish=ipb.RunFinish(
            project=s.FUZZ_PROJECT, run_id=s.FINISHED_RUN, state=types_pb2.RUN_STATE_FINISHED, end_ms=1)))  # fmt: skip
        self._expect_acked(self.send(reqs))
        self.seed_requests = seed_requests()
        self._expect_acked(self.send(self.seed_requests))
        self.seeded = self.seeded_snapshot()

    def _expect_acked(self, outcome: StreamOutcome) -> None:
        assert outcome.code == grpc.StatusCode.OK, outcome.describe()
        assert all(a.ok for a in outcome.answers), [a for a in outcome.answers if not a.ok]

    def seeded_snapshot(self) -> tuple:
        """Everything stored for the seeded run: every history point of both kinds, and the run
        (state, config, summary, tags, per-key metric summaries, context, datasets, artifacts)."""
        points = []
        for kind in (types_pb2.METRIC_KIND_USER, types_pb2.METRIC_KIND_SYSTEM):
            request = qpb.GetHistoryRequest(project=s.SEEDED_PROJECT, run_id=s.SEEDED_RUN, kind=kind)
            for page in self.query.GetHistory(request, timeout=QUERY_TIMEOUT_S):
                n = len(page.steps) // 8
                idx = struct.unpack(f"<{n}H", page.key_index)
                points += zip(
                    [kind] * n, [page.keys[i] for i in idx], struct.unpack(f"<{n}q", page.steps),
                    struct.unpack(f"<{n}Q", page.values),  # the bits, so NaN equals NaN
                    struct.unpack(f"<{n}q", page.times_ms), struct.unpack(f"<{n}H", page.ranks), strict=True,
                )  # fmt: skip
        run = self.query.GetRun(
            qpb.GetRunRequest(project=s.SEEDED_PROJECT, run_id=s.SEEDED_RUN), timeout=QUERY_TIMEOUT_S
        ).run
        metrics = sorted(m.SerializeToString(deterministic=True) for m in run.metrics)
        del run.metrics[:]
        return sorted(points), metrics, run.SerializeToString(deterministic=True)

    def assert_seeded_unchanged(self) -> None:
        now = self.seeded_snapshot()
        assert self.seeded is not None
        assert now[0] == self.seeded[0], "the seeded run's history changed"
        assert now[1] == self.seeded[1], "the seeded run's metric summaries changed"
        if now[2] != self.seeded[2]:
            before, after = types_pb2.Run.FromString(self.seeded[2]), types_pb2.Run.FromString(now[2])
            raise AssertionError(f"the seeded run changed:\n--- before\n{before}\n--- after\n{after}")


SEED_CLIENT = "5eed" * 8
SEED_KEYS = ("loss", "acc")


def seed_requests() -> list[ipb.IngestRequest]:
    """The seeded run: started, three metric batches (one with NaN and inf), a config and summary
    update, a system-metrics batch, finished."""
    p, r = s.SEEDED_PROJECT, s.SEEDED_RUN
    reqs = [ipb.IngestRequest(run_start=ipb.RunStart(
        project=p, run_id=r, name="anchor", tags={"t": "v"}, start_ms=1_700_000_000_000,
        config={"lr": types_pb2.Value(number=0.1), "opt": types_pb2.Value(text="adam")}))]  # fmt: skip
    for b in range(3):
        n = 20
        vals = [float(b * n + i) for i in range(n)]
        if b == 2:
            vals[3], vals[4] = float("nan"), float("inf")
        reqs.append(ipb.IngestRequest(metrics=ipb.MetricBatch(
            project=p, run_id=r, keys=list(SEED_KEYS),
            key_index=struct.pack(f"<{n}H", *[i % 2 for i in range(n)]),
            steps=struct.pack(f"<{n}q", *[(b * n + i) // 2 for i in range(n)]),
            values=struct.pack(f"<{n}d", *vals),
            times_ms=struct.pack(f"<{n}q", *[1_700_000_000_000 + b * n + i for i in range(n)]))))  # fmt: skip
    reqs.append(ipb.IngestRequest(run_update=ipb.RunUpdate(
        project=p, run_id=r, config={"depth": types_pb2.Value(number=12)},
        summary={"best": types_pb2.Value(number=0.5)})))  # fmt: skip
    reqs.append(ipb.IngestRequest(metrics=ipb.MetricBatch(
        project=p, run_id=r, keys=["cpu"], steps=struct.pack("<2q", 0, 1), values=struct.pack("<2d", 1.0, 2.0),
        times_ms=struct.pack("<2q", 1_700_000_000_000, 1_700_000_000_001),
        kind=types_pb2.METRIC_KIND_SYSTEM)))  # fmt: skip
    reqs.append(ipb.IngestRequest(run_finish=ipb.RunFinish(
        project=p, run_id=r, state=types_pb2.RUN_STATE_FINISHED, end_ms=1_700_000_001_000)))  # fmt: skip
    for i, req in enumerate(reqs):
        req.seq, req.client_id = i + 1, SEED_CLIENT
    return reqs
