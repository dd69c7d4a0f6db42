"""The standard grpc.health.v1 service answers, as Kubernetes gRPC probes expect."""

from __future__ import annotations

import grpc
import pytest

from runstream_services.grpc_health import CHECK_METHOD


def _check(endpoint: str, service: str) -> bytes:
    request = b"\x0a" + bytes([len(service)]) + service.encode() if service else b""
    with grpc.insecure_channel(endpoint) as channel:
        call = channel.unary_unary(CHECK_METHOD, request_serializer=None, response_deserializer=None)
        return call(request, timeout=5)


def test_health_serving_for_server_and_services(embedded_server):
    assert _check(embedded_server.endpoint, "") == b"\x08\x01"
    assert _check(embedded_server.endpoint, "runstream.v1.IngestService") == b"\x08\x01"
    assert _check(embedded_server.endpoint, "runstream.v1.QueryService") == b"\x08\x01"
    with pytest.raises(grpc.RpcError) as err:
        _check(embedded_server.endpoint, "no.such.Service")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
