"""API keys on a real server: a key reaches only its project, per request on a live stream."""

from __future__ import annotations

import json
import uuid

import grpc
import pytest

from runstream.v1 import ingest_pb2 as pb
from tests.ingest_client import run_start, status_code, stub_for
from tests.server_process import ServerProcess


@pytest.fixture
def auth_server(tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"key-a": {"project": "team-a", "role": "write"},
                                "read-a": {"project": "team-a", "role": "read"}}))  # fmt: skip
    server = ServerProcess(
        tmp_path / "server", env={"RUNSTREAM_AUTH_REQUIRED": "true", "RUNSTREAM_API_KEYS_FILE": str(keys)}
    ).start()
    yield server
    server.stop()


def test_keys_are_checked_per_project(auth_server):
    stub = stub_for(auth_server)
    assert stub.Health(pb.HealthRequest()).status == "ok"  # probes need no key
    cid = uuid.uuid4().hex
    requests = [
        run_start(1, cid, "r", project="team-a"),
        run_start(2, cid, "r", project="team-b"),
    ]
    answers = {a.seq: a for a in stub.Ingest(iter(requests), metadata=[("authorization", "Bearer key-a")])}
    assert answers[1].ok
    assert not answers[2].ok and status_code(answers[2].code) == grpc.StatusCode.PERMISSION_DENIED
    assert "team-b" in answers[2].message
    read_only = {
        a.seq: a for a in stub.Ingest(iter(requests[:1]), metadata=[("authorization", "Bearer read-a")])
    }
    assert status_code(read_only[1].code) == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Ingest(iter(requests)))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Ingest(iter(requests), metadata=[("authorization", "Bearer wrong")]))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "unknown API key" in info.value.details()
