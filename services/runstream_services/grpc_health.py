"""The standard gRPC health service (grpc.health.v1.Health/Check), so Kubernetes gRPC probes and
grpc_health_probe work. Check answers SERVING for the whole server and each registered service;
the two tiny messages are encoded by hand to avoid another dependency."""

from __future__ import annotations

import grpc

SERVICE = "grpc.health.v1.Health"
CHECK_METHOD = f"/{SERVICE}/Check"
_SERVING = b"\x08\x01"  # HealthCheckResponse{status: SERVING}


def _requested_service(request: bytes) -> str:
    """The `service` field (1, string) of a HealthCheckRequest; "" asks for the whole server."""
    if len(request) >= 2 and request[0] == 0x0A and request[1] < 0x80:
        return request[2 : 2 + request[1]].decode("utf-8", "replace")
    return ""


def health_handler(services: tuple[str, ...]) -> grpc.GenericRpcHandler:
    known = {"", *services}

    async def check(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        name = _requested_service(request)
        if name not in known:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"unknown service {name!r}; known: {sorted(known)}"
            )
        return _SERVING

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                check, request_deserializer=None, response_serializer=None
            )
        },
    )
