"""The standard grpc.health.v1 service answers, as Kubernetes gRPC probes expect."""

from __future__ import annotations

import signal
import time

import grpc
import pytest

from runstream_services.grpc_health import CHECK_METHOD
from tests.server_process import ServerProcess


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


def test_liveness_and_readiness_names(embedded_server):
    assert _check(embedded_server.endpoint, "liveness") == b"\x08\x01"
    assert _check(embedded_server.endpoint, "readiness") == b"\x08\x01"


def test_draining_server_is_not_ready_but_alive(tmp_path):
    """SIGTERM: readiness answers NOT_SERVING at once (for shutdown_delay_s the server still
    serves, so load balancers can stop routing first); liveness stays SERVING."""
    server = ServerProcess(tmp_path, env={"RUNSTREAM_SHUTDOWN_DELAY_S": "6"}).start()
    try:
        assert _check(server.endpoint, "") == b"\x08\x01"
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 4
        while _check(server.endpoint, "") != b"\x08\x02" and time.monotonic() < deadline:
            time.sleep(0.1)
        for name in ("", "readiness", "runstream.v1.IngestService"):
            assert _check(server.endpoint, name) == b"\x08\x02", name
        assert _check(server.endpoint, "liveness") == b"\x08\x01"
        assert server.proc.wait(30) == 0
    finally:
        server.kill()


def test_kafka_server_is_ready_when_kafka_and_the_store_answer(kafka_server):
    assert _check(kafka_server.endpoint, "readiness") == b"\x08\x01"
    assert _check(kafka_server.endpoint, "") == b"\x08\x01"
