"""The standard grpc.health.v1 service answers, as Kubernetes gRPC probes expect."""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request

import grpc
import pytest

from runstream_services.grpc_health import CHECK_METHOD
from tests.server_process import ServerProcess


def _check(endpoint: str, service: str) -> bytes:
    request = b"\x0a" + bytes([len(service)]) + service.encode() if service else b""
    with grpc.insecure_channel(endpoint) as channel:
        call = channel.unary_unary(CHECK_METHOD, request_serializer=None, response_deserializer=None)
        return call(request, timeout=5)


def test_health_serving_for_server_and_services(module_embedded_server):
    assert _check(module_embedded_server.endpoint, "") == b"\x08\x01"
    assert _check(module_embedded_server.endpoint, "runstream.v1.IngestService") == b"\x08\x01"
    assert _check(module_embedded_server.endpoint, "runstream.v1.QueryService") == b"\x08\x01"
    with pytest.raises(grpc.RpcError) as err:
        _check(module_embedded_server.endpoint, "no.such.Service")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_liveness_and_readiness_names(module_embedded_server):
    assert _check(module_embedded_server.endpoint, "liveness") == b"\x08\x01"
    assert _check(module_embedded_server.endpoint, "readiness") == b"\x08\x01"


def _http(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_http_probes_on_the_metrics_port(module_embedded_server):
    """/readyz and /livez: what the kubelet uses when gRPC speaks TLS, and on writers."""
    assert _http(module_embedded_server.metrics_port, "/livez") == (200, "alive\n")
    assert _http(module_embedded_server.metrics_port, "/readyz") == (200, "ready\n")
    assert _http(module_embedded_server.metrics_port, "/nope")[0] == 404


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
        status, body = _http(server.metrics_port, "/readyz")
        assert status == 503 and "draining" in body
        assert _http(server.metrics_port, "/livez")[0] == 200
        assert server.proc.wait(30) == 0
    finally:
        server.kill()


def test_kafka_server_is_ready_when_kafka_and_the_store_answer(kafka_server):
    assert _check(kafka_server.endpoint, "readiness") == b"\x08\x01"
    assert _check(kafka_server.endpoint, "") == b"\x08\x01"


def test_a_writer_is_not_ready_while_kafka_is_away_but_stays_alive(tmp_path):
    """A writer process (no gRPC API): /readyz turns 503 naming Kafka when its broker stops (the
    pod leaves rotation, dashboards see it), /livez stays 200 (no restart for an outage that is
    not the pod's), and /readyz is 200 again once the broker is back."""
    from tests.deployments import kafka_env, new_prefix
    from tests.private_kafka import PrivateKafka
    from tests.server_process import WriterProcess

    kafka = PrivateKafka(tmp_path / "kafka")
    kafka.format()
    kafka.start()
    writer = WriterProcess(
        tmp_path / "writer",
        extra_args=["--bus", "kafka", "--kafka-bootstrap", kafka.bootstrap, "--components", "writer"],
        env=kafka_env(new_prefix()),
    )
    try:
        writer.start()
        assert _http(writer.metrics_port, "/readyz") == (200, "ready\n")
        kafka.stop()
        deadline = time.monotonic() + 60
        while (answer := _http(writer.metrics_port, "/readyz"))[0] == 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert answer[0] == 503 and "kafka unreachable" in answer[1], answer
        assert _http(writer.metrics_port, "/livez")[0] == 200
        kafka.start()
        deadline = time.monotonic() + 90
        while (answer := _http(writer.metrics_port, "/readyz"))[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert answer == (200, "ready\n")
    finally:
        writer.stop()
        kafka.stop()
