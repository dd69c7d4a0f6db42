"""The bus contract. Ingest turns each accepted request into an Envelope, publishes it and acks the
SDK only after publish() returned; writers receive the same envelopes in per-run order through a
Sink.

An Envelope carries what ingest learned while validating (the body's kind, the run, the metric
points) next to the untouched request bytes, so no one downstream re-derives them from the bytes.
In-process it also carries the parsed request: the embedded path parses each request once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

from runstream.v1 import ingest_pb2
from runstream_services.errors import InvalidArgument

#: the body of a runstream.v1.IngestRequest (the name of the `body` oneof field it sets)
BodyKind = Literal["run_start", "run_update", "run_finish", "metrics", "artifact", "media", "console"]
BODY_KINDS: tuple[BodyKind, ...] = get_args(BodyKind)
#: the bodies that change a run's row; applied in the order they were sent
RUN_EVENTS: frozenset[BodyKind] = frozenset({"run_start", "run_update", "run_finish"})


def idempotency_key(client_id: str, seq: int) -> str:
    """The key of request `seq` of SDK process `client_id` (Envelope.idempotency_key)."""
    return f"{client_id}:{seq}"


@dataclass(frozen=True)
class Envelope:
    """One accepted ingest request on its way to the writers."""

    client_id: str  # the SDK process; with seq the idempotency key
    seq: int
    kind: BodyKind
    project: str
    run_id: str  # the bus key: a run's envelopes stay in order
    payload: bytes  # the serialized runstream.v1.IngestRequest, as the SDK sent it
    received_ms: int  # unix ms when ingest accepted it
    points: int = 0  # metric points in a metrics body (0 for the other kinds)
    # The parsed payload, when this process parsed it already (ingest did). Never serialized: an
    # envelope read back from Kafka has None and the writer parses the payload itself.
    request: ingest_pb2.IngestRequest | None = field(default=None, compare=False, repr=False)

    @property
    def idempotency_key(self) -> str:
        return idempotency_key(self.client_id, self.seq)

    @classmethod
    def from_request(
        cls,
        request: ingest_pb2.IngestRequest,
        payload: bytes | None = None,
        received_ms: int | None = None,
    ) -> Envelope:
        """The envelope of an (already valid) request: tests, benchmarks and tools that publish
        without the ingest service. Raises InvalidArgument when the request has no body."""
        kind = request.WhichOneof("body")
        if kind is None:
            raise InvalidArgument(
                f"request {request.seq} has no body: set one of run_start, run_update, run_finish, "
                "metrics, artifact"
            )
        body = getattr(request, kind)
        return cls(
            client_id=request.client_id,
            seq=request.seq,
            kind=kind,
            project=body.project,
            run_id=body.run_id,
            payload=request.SerializeToString() if payload is None else payload,
            received_ms=int(time.time() * 1000) if received_ms is None else received_ms,
            points=len(request.metrics.steps) // 8 if kind == "metrics" else 0,
            request=request,
        )


@dataclass
class WriteResult:
    """What a publish (or a sink's write) did with a list of envelopes."""

    stored: int = 0  # envelopes made durable by this call (on the bus, or in the store)
    duplicates: int = 0  # envelopes skipped: stored before (the store knows; the bus never says)
    points: int = 0  # metric points in the stored envelopes
    refused: dict[str, str] = field(default_factory=dict)  # idempotency key -> why it was not stored


class Bus(Protocol):
    """Carries envelopes from ingest to writers."""

    #: True when the writers apply one client's envelopes in the order they were published, even
    #: while earlier ones are not yet durable (ingest then need not wait for a run event's ack)
    keeps_client_order: bool

    async def start(self) -> None:
        """Connects; raises runstream_services.errors.Unavailable when the bus cannot be reached."""

    async def publish(self, envelopes: list[Envelope]) -> WriteResult:
        """Returns once every envelope not in `refused` is durable (Kafka: acks=all; embedded:
        in the block log with its outcome decided, or stored where there is no log). Raises a RunstreamServiceError subclass when the whole batch failed
        (Unavailable: retry)."""

    async def ping(self) -> None:
        """Returns once the bus answered (readiness); raises when it cannot be reached."""

    async def stop(self) -> None:
        """Drains what is in flight, then disconnects. Idempotent."""


class Sink(Protocol):
    """Where the bus delivers envelopes: the store writer (writers/store.py)."""

    def write(
        self,
        envelopes: list[Envelope],
        token: str | None = None,
        replay: bool = False,
        logged: bool = False,
    ) -> WriteResult:
        """Stores the envelopes not stored before and returns once they are durable. `token`
        names the block for deduplication (the same token must carry the same envelopes).
        `replay`: the block is re-formed after a crash and may have been stored, wholly or in
        part, already (the writer then re-derives what the tokens cannot guard, see store.py).
        `logged`: the caller logged the block where a crash re-forms it (the embedded bus's
        block log; Kafka, under the writer's intent), so the writer may show its rows before they
        are inserted. Thread-safe; raises on a storage failure."""

    def stage(self, envelopes: list[Envelope], token: str) -> tuple[WriteResult, Any]:
        """The first half of write() for a logged block: the result decided (rows collected, shown
        to readers), the inserts left to insert_staged; the second item is what to pass there
        (None: nothing left to insert). The embedded bus acks from its log in between."""

    def can_stage_now(self, envelopes: list[Envelope]) -> bool:
        """Whether stage() of these envelopes would decide them from memory alone, without a lock
        held elsewhere, a query or a byte written: the embedded bus then stages a small block in
        its event loop instead of a worker thread."""

    def insert_staged(self, writes: list, token: str, replay: bool = False) -> None:
        """Inserts staged writes as one under `token`; raises on a storage failure (call again
        with replay=True)."""

    def abandon_staged(self, writes: list) -> None:
        """Forgets staged writes this process will not insert (their log re-forms them)."""

    def flush(self) -> bool:
        """Makes the record of what was stored durable now (the Kafka writer calls it before it
        commits offsets; the embedded bus before it drops its logged blocks); False when that
        failed (it is retried)."""

    def forget(
        self, *, clients: Iterable[str] | None = None, runs: Iterable[tuple[str, str]] | None = None
    ) -> None:
        """Drops cached knowledge of what other writers stored (everything when both are None);
        the Kafka writer calls it when partitions are assigned."""
