"""The bus interface. Ingest publishes envelopes and acks the SDK only after publish() returned;
writers receive the same envelopes in per-run order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Envelope:
    """One accepted ingest request on its way to the writers."""

    client_id: str  # the SDK process; with seq the idempotency key
    seq: int
    project: str
    run_id: str  # the bus key: a run's envelopes stay in order
    payload: bytes  # the serialized runstream.v1.IngestRequest
    received_ms: int  # unix ms when ingest accepted it

    @property
    def idempotency_key(self) -> str:
        return f"{self.client_id}:{self.seq}"


class Bus(Protocol):
    """Carries envelopes from ingest to writers."""

    async def start(self) -> None:
        """Connects; raises runstream_services.errors.Unavailable when the bus cannot be reached."""

    async def publish(self, envelopes: list[Envelope]) -> None:
        """Returns once every envelope is durable (Kafka: acks=all; embedded: stored).
        Raises a RunstreamServiceError subclass for a refused envelope, Unavailable otherwise."""

    async def stop(self) -> None:
        """Drains what is in flight, then disconnects. Idempotent."""
