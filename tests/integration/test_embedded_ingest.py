"""The embedded server's own artifact path, through the raw gRPC client of tests/ingest_client.py:
UploadArtifact into the local content-addressed folder, manifest rows, per-request refusals of bad
paths and missing bytes. What both buses promise (exactly once, refusals, drains) is tested once per
bus in test_exactly_once.py."""

from __future__ import annotations

import hashlib
import uuid

import grpc
import numpy as np
import pytest

from runstream.v1 import ingest_pb2 as pb
from tests.chdb_inspect import stored
from tests.ingest_client import ingest, run_start, status_code, stub_for


def test_artifact_upload_manifest_and_refusals(embedded_server):
    stub = stub_for(embedded_server)
    cid = uuid.uuid4().hex
    data = np.random.default_rng(0).bytes(3 * 1024 * 1024 + 17)
    sha = hashlib.sha256(data).hexdigest()

    def upload(payload: bytes, declared_sha: str, size: int):
        header = pb.UploadArtifactRequest(
            header=pb.UploadHeader(project="proj", run_id="r4", sha256=declared_sha, size=size)
        )
        chunks = [
            pb.UploadArtifactRequest(chunk=payload[i : i + (1 << 20)])
            for i in range(0, len(payload), 1 << 20)
        ]
        return stub.UploadArtifact(iter([header, *chunks]), timeout=60)

    assert ingest(stub, [run_start(1, cid, "r4")])[1].ok  # uploads need a known run
    with pytest.raises(grpc.RpcError) as bad:
        upload(data, "0" * 64, len(data))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "hash" in bad.value.details()
    first = upload(data, sha, len(data))
    assert not first.already_present and first.uri == f"runstream-artifact://proj/{sha}"
    assert upload(data, sha, len(data)).already_present

    def event(seq, path, **over):
        fields = {"project": "proj", "run_id": "r4", "name": "model", "type": "model", "path": path,
                  "sha256": sha, "size": len(data), "version_tag": "v-a"}  # fmt: skip
        fields.update(over)
        return pb.IngestRequest(seq=seq, client_id=cid, artifact=pb.ArtifactEvent(**fields))

    small = b"config: 1\n"
    answers = ingest(
        stub,
        [
            run_start(1, cid, "r4"),
            event(2, "weights/model.bin"),
            event(
                3, "config.yaml", sha256=hashlib.sha256(small).hexdigest(), size=len(small), inline_data=small
            ),
            event(4, "/etc/shadow"),
            event(5, "a\\b"),
            event(6, "other.bin", sha256="ab" * 32, size=10),  # bytes never uploaded
        ],
    )
    assert [answers[s].ok for s in (1, 2, 3)] == [True, True, True]
    assert (
        status_code(answers[4].code) == grpc.StatusCode.INVALID_ARGUMENT and "absolute" in answers[4].message
    )
    assert (
        status_code(answers[5].code) == grpc.StatusCode.INVALID_ARGUMENT and "backslash" in answers[5].message
    )
    assert (
        status_code(answers[6].code) == grpc.StatusCode.NOT_FOUND and "UploadArtifact" in answers[6].message
    )
    assert embedded_server.stop() == 0
    rows = stored(
        embedded_server, "SELECT path, version, size, sha256, uri FROM DB.artifacts FINAL ORDER BY path"
    )
    assert [r[:3] for r in rows] == [["config.yaml", 1, len(small)], ["weights/model.bin", 1, len(data)]]
    blob = embedded_server.data_dir / "artifacts" / "proj" / "sha256" / sha[:2] / sha
    assert rows[1][4] == first.uri and hashlib.sha256(blob.read_bytes()).hexdigest() == sha
