"""gRPC server limits (issue 10, item 13): a bound on open Ingest streams per server, and idle
connections closed after max connection idle. A real embedded server with test-sized limits."""

from __future__ import annotations

import threading
import time
import uuid

import grpc
import pytest

from runstream.v1 import ingest_pb2, ingest_pb2_grpc
from tests.ingest_client import OpenStream, run_start
from tests.server_process import ServerProcess

MAX_STREAMS = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = ServerProcess(
        tmp_path_factory.mktemp("limits"),
        env={"RUNSTREAM_MAX_INGEST_STREAMS": str(MAX_STREAMS), "RUNSTREAM_GRPC_MAX_CONNECTION_IDLE_S": "1"},
    ).start()
    yield proc
    proc.stop()


def acked_stream(server) -> OpenStream:
    stream = OpenStream(server, [run_start(1, uuid.uuid4().hex, f"r{uuid.uuid4().hex[:8]}")], timeout=60)
    assert next(stream.responses).ok  # the server holds this stream now
    return stream


def test_streams_over_the_bound_are_refused(server):
    streams = [acked_stream(server) for _ in range(MAX_STREAMS)]
    try:
        extra = OpenStream(server, [run_start(1, uuid.uuid4().hex, "extra")], timeout=30)
        with pytest.raises(grpc.RpcError) as err:
            next(extra.responses)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_ingest_streams" in err.value.details()
    finally:
        for stream in streams:
            stream.close()
            assert list(stream.responses) == []
    deadline = time.monotonic() + 10  # the closed streams leave the server's count
    while True:
        try:
            acked_stream(server).close()
            break
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_idle_connection_is_closed(server):
    states: list[grpc.ChannelConnectivity] = []
    idle = threading.Event()

    def seen(state):
        states.append(state)
        if state == grpc.ChannelConnectivity.IDLE and grpc.ChannelConnectivity.READY in states:
            idle.set()

    with grpc.insecure_channel(server.endpoint) as channel:
        ingest_pb2_grpc.IngestServiceStub(channel).Health(ingest_pb2.HealthRequest(), timeout=5)
        channel.subscribe(seen, try_to_connect=False)
        assert idle.wait(10), f"the connection was not closed while idle: {states}"
