"""Streams one artifact file through IngestService.UploadArtifact (header first, then 1 MiB chunks)."""

from __future__ import annotations

import io
from pathlib import Path

import grpc

from runstream.v1 import ingest_pb2

UPLOAD_METHOD = "/runstream.v1.IngestService/UploadArtifact"
CHUNK_BYTES = 1024 * 1024


async def upload_file(
    channel: grpc.aio.Channel,
    api_key: str,
    project: str,
    run_id: str,
    path: Path | bytes,
    sha256: str,
    size: int,
) -> ingest_pb2.UploadArtifactResponse:
    """`path`: the file, or the bytes themselves (media encoded in memory)."""
    method = channel.stream_unary(
        UPLOAD_METHOD,
        request_serializer=ingest_pb2.UploadArtifactRequest.SerializeToString,
        response_deserializer=ingest_pb2.UploadArtifactResponse.FromString,
    )
    f = io.BytesIO(path) if isinstance(path, bytes) else open(path, "rb")  # noqa: SIM115 - closed below

    async def parts():
        try:
            yield ingest_pb2.UploadArtifactRequest(
                header=ingest_pb2.UploadHeader(project=project, run_id=run_id, sha256=sha256, size=size)
            )
            while chunk := f.read(CHUNK_BYTES):
                yield ingest_pb2.UploadArtifactRequest(chunk=chunk)
        finally:
            f.close()

    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
    return await method(parts(), metadata=metadata, timeout=max(60.0, size / (5 << 20)))
