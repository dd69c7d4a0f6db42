"""Artifact bytes and manifests are scoped per project (issue 10, item 8), on a real embedded server
with API keys: knowing another project's digest neither reveals it, nor registers it, nor reads
it; uploads need a known run and stay under the size limit; URIs never show the server's path."""

from __future__ import annotations

import hashlib
import json
import uuid

import grpc
import pytest

from runstream.v1 import ingest_pb2 as pb
from runstream.v1 import query_pb2, query_pb2_grpc
from runstream_services.artifacts.local import LocalArtifactStore
from runstream_services.errors import NotFound
from tests.ingest_client import run_start, status_code, stub_for
from tests.server_process import ServerProcess

KEY_A = [("authorization", "Bearer key-a")]
KEY_B = [("authorization", "Bearer key-b")]
LIMIT = 4096


@pytest.fixture
def server(tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"key-a": {"project": "team-a", "role": "write"},
                                "key-b": {"project": "team-b", "role": "write"}}))  # fmt: skip
    env = {
        "RUNSTREAM_AUTH_REQUIRED": "true",
        "RUNSTREAM_API_KEYS_FILE": str(keys),
        "RUNSTREAM_MAX_ARTIFACT_BYTES": str(LIMIT),
    }
    server = ServerProcess(tmp_path / "server", env=env).start()
    yield server
    server.stop()


def upload(stub, project: str, run_id: str, data: bytes, key, size: int | None = None):
    header = pb.UploadHeader(
        project=project,
        run_id=run_id,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data) if size is None else size,
    )
    parts = [pb.UploadArtifactRequest(header=header), pb.UploadArtifactRequest(chunk=data)]
    return stub.UploadArtifact(iter(parts), metadata=key, timeout=30)


def send(stub, requests, key) -> dict[int, pb.IngestResponse]:
    return {a.seq: a for a in stub.Ingest(iter(requests), metadata=key, timeout=60)}


def artifact_event(seq: int, cid: str, project: str, run_id: str, data: bytes) -> pb.IngestRequest:
    event = pb.ArtifactEvent(project=project, run_id=run_id, name="model", type="model", path="model.bin",
                             sha256=hashlib.sha256(data).hexdigest(), size=len(data), version_tag="v1")  # fmt: skip
    return pb.IngestRequest(seq=seq, client_id=cid, artifact=event)


def download(server, project: str, run_id: str, data: bytes, key) -> bytes:
    with grpc.insecure_channel(server.endpoint) as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        request = query_pb2.DownloadArtifactRequest(
            project=project, run_id=run_id, sha256=hashlib.sha256(data).hexdigest()
        )
        return b"".join(c.chunk for c in stub.DownloadArtifact(request, metadata=key, timeout=30))


def test_another_projects_digest_is_neither_revealed_registered_nor_read(server):
    stub = stub_for(server)
    secret = b"team b's weights " * 100
    cid_a, cid_b = uuid.uuid4().hex, uuid.uuid4().hex
    assert send(stub, [run_start(1, cid_b, "rb", project="team-b")], KEY_B)[1].ok
    assert send(stub, [run_start(1, cid_a, "ra", project="team-a")], KEY_A)[1].ok

    stored = upload(stub, "team-b", "rb", secret, KEY_B)
    assert not stored.already_present
    digest = hashlib.sha256(secret).hexdigest()
    assert stored.uri == f"runstream-artifact://team-b/{digest}"  # no server path
    assert str(server.data_dir) not in stored.uri and "file:" not in stored.uri
    assert send(stub, [artifact_event(2, cid_b, "team-b", "rb", secret)], KEY_B)[2].ok
    assert download(server, "team-b", "rb", secret, KEY_B) == secret

    # project A names B's digest in its own run without sending the bytes: refused, nothing registered
    answer = send(stub, [artifact_event(2, cid_a, "team-a", "ra", secret)], KEY_A)[2]
    assert not answer.ok and status_code(answer.code) == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        download(server, "team-a", "ra", secret, KEY_A)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # uploading the same bytes tells A nothing about B (no existence oracle): stored for A anew
    again = upload(stub, "team-a", "ra", secret, KEY_A)
    assert not again.already_present and again.uri == f"runstream-artifact://team-a/{digest}"
    assert upload(stub, "team-a", "ra", secret, KEY_A).already_present  # ...and A's own copy is found
    # B's bytes are still B's (A's copy is a separate object)
    objects = sorted(p.relative_to(server.data_dir / "artifacts").as_posix()
                     for p in (server.data_dir / "artifacts").rglob("*") if p.is_file())  # fmt: skip
    assert objects == [f"team-a/sha256/{digest[:2]}/{digest}", f"team-b/sha256/{digest[:2]}/{digest}"]


def test_uploads_need_a_known_run_and_stay_under_the_limit(server):
    stub = stub_for(server)
    with pytest.raises(grpc.RpcError) as info:
        upload(stub, "team-a", "no-such-run", b"bytes", KEY_A)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "run_start" in info.value.details()
    assert not any(p.is_file() for p in (server.data_dir / "artifacts").rglob("*") if ".tmp" not in p.parts)

    cid = uuid.uuid4().hex
    assert send(stub, [run_start(1, cid, "ra", project="team-a")], KEY_A)[1].ok
    with pytest.raises(grpc.RpcError) as info:  # refused on the header, before any byte is read
        upload(stub, "team-a", "ra", b"x" * 10, KEY_A, size=LIMIT + 1)
    assert (
        info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_artifact_bytes" in info.value.details()
    )
    assert not upload(stub, "team-a", "ra", b"x" * LIMIT, KEY_A).already_present
    # a key of project A learns nothing about project B's runs from an upload
    with pytest.raises(grpc.RpcError) as info:
        upload(stub, "team-b", "rb", b"bytes", KEY_A)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_pre_project_objects_are_read_only_through_a_manifest_check(tmp_path):
    store = LocalArtifactStore(tmp_path)
    data = b"stored before keys were per project"
    digest = hashlib.sha256(data).hexdigest()
    legacy = store.legacy_path_for(digest)
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(data)
    assert not store.exists("team-a", digest)  # an old object is no existence oracle either
    with pytest.raises(NotFound):
        b"".join(store.open("team-a", digest))
    assert b"".join(store.open("team-a", digest, legacy=True)) == data  # DownloadArtifact, manifest checked
