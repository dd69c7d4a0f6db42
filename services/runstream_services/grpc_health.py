"""The standard gRPC health service (grpc.health.v1.Health/Check), so Kubernetes gRPC probes and
grpc_health_probe work. The two tiny messages are encoded by hand to avoid another dependency.

Which name answers what:

- `liveness`: SERVING while the process answers at all. Point a liveness probe here: a process
  that is draining, or whose store or Kafka is down, must not be restarted for it.
- `""` (the whole server, what a probe asks without a service name), `readiness` and each
  registered service (runstream.v1.IngestService, ...): readiness. NOT_SERVING while the server
  is draining (SIGTERM received), or while a dependency is unreachable: the store (SELECT 1) or
  Kafka (cluster metadata). Dependency probes have a short timeout and are cached for a moment,
  so a burst of probes costs one round trip.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import grpc

log = logging.getLogger("runstream.health")

SERVICE = "grpc.health.v1.Health"
CHECK_METHOD = f"/{SERVICE}/Check"
LIVENESS = "liveness"
READINESS = "readiness"
SERVING = b"\x08\x01"  # HealthCheckResponse{status: SERVING}
NOT_SERVING = b"\x08\x02"  # HealthCheckResponse{status: NOT_SERVING}

#: a dependency probe: returns when the dependency answered, raises otherwise
Probe = Callable[[], Awaitable[object]]


def _requested_service(request: bytes) -> str:
    """The `service` field (1, string) of a HealthCheckRequest; "" asks for the whole server."""
    if len(request) >= 2 and request[0] == 0x0A and request[1] < 0x80:
        return request[2 : 2 + request[1]].decode("utf-8", "replace")
    return ""


class Readiness:
    """Why this process should get no new traffic now (`await reason()`), or None when ready."""

    def __init__(
        self,
        *,
        draining: Callable[[], bool] = lambda: False,
        probes: dict[str, Probe] | None = None,
        timeout_s: float = 1.0,
        cache_s: float = 2.0,
    ):
        self.draining = draining
        self.probes = dict(probes or {})
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self._checked_at = -float("inf")
        self._last: str | None = None
        self._lock = asyncio.Lock()

    async def reason(self) -> str | None:
        if self.draining():
            return "draining: the server is shutting down"
        if not self.probes:
            return None
        async with self._lock:  # one round of probes at a time; the others read its answer
            if time.monotonic() - self._checked_at >= self.cache_s:
                self._last = await self._probe_all()
                self._checked_at = time.monotonic()
            return self._last

    async def _probe_all(self) -> str | None:
        for name, probe in self.probes.items():
            try:
                await asyncio.wait_for(probe(), self.timeout_s)
            except Exception as exc:  # TimeoutError, Unavailable, the driver's own errors
                why = f"{name} unreachable ({type(exc).__name__}: {exc})"
                log.warning("not ready: %s", why)
                return why
        return None


def health_handler(services: tuple[str, ...], readiness: Readiness | None = None) -> grpc.GenericRpcHandler:
    readiness = readiness or Readiness()
    known = {"", LIVENESS, READINESS, *services}

    async def check(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        name = _requested_service(request)
        if name not in known:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"unknown service {name!r}; known: {sorted(known)}"
            )
        if name == LIVENESS:
            return SERVING
        return NOT_SERVING if await readiness.reason() is not None else SERVING

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                check, request_deserializer=None, response_serializer=None
            )
        },
    )
