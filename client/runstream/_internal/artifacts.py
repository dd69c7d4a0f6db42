"""What `run.log_artifact` and `run.use_dataset` record, built on the caller's thread from the
files as they are at the call (walked and hashed by files.py): one ArtifactEvent per file, the
bytes inline up to MAX_INLINE_BYTES and otherwise uploaded by the worker first (pipeline.Upload);
a DatasetRef whose version is the content hash of a path, or the string given."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runstream.v1 import ingest_pb2, types_pb2

from .buffer import Control
from .files import FileEntry, collect, content_hash
from .values import check_key, check_text, sanitize_name

MAX_INLINE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Artifact:
    """One log_artifact call: its name, a version tag grouping its files, and the files."""

    name: str
    version_tag: str
    files: list[FileEntry]

    def describe(self) -> dict[str, Any]:
        """The dict run.log_artifact returns."""
        return {
            "name": self.name,
            "version_tag": self.version_tag,
            "files": [{"path": f.rel, "sha256": f.sha256, "size": f.size} for f in self.files],
        }


def collect_artifact(path: str | os.PathLike, name: str | None) -> Artifact:
    """Walks and hashes `path`; `name` defaults to the file or directory name."""
    files = collect(path)
    name = name or sanitize_name(Path(path).expanduser().resolve().name)
    check_key("artifact", name)
    return Artifact(name, uuid.uuid4().hex, files)


def artifact_entries(project: str, run_id: str, artifact: Artifact, kind: str | None) -> list[Control]:
    """The buffer entries that record `artifact`: small files inline, large ones as uploads."""
    check_text("artifact type", kind or "")
    entries = []
    for f in artifact.files:
        event = ingest_pb2.ArtifactEvent(
            project=project,
            run_id=run_id,
            name=artifact.name,
            type=kind or "",
            path=f.rel,
            sha256=f.sha256,
            size=f.size,
            version_tag=artifact.version_tag,
        )
        if f.size <= MAX_INLINE_BYTES:
            event.inline_data = f.abs.read_bytes()
            entries.append(Control("artifact", event))
        else:
            from .pipeline import Upload  # asyncio and grpc.aio: loaded once a large file is logged

            entries.append(Control("upload", Upload(event, f.abs)))
    return entries


def dataset_ref(name: str, path_or_hash: str | os.PathLike, uri: str | None) -> types_pb2.DatasetRef:
    """A path that exists is hashed (sha256) and its file URI kept; anything else is the version."""
    check_key("dataset", name)
    p = Path(path_or_hash).expanduser() if isinstance(path_or_hash, (str, os.PathLike)) else None
    if p is not None and p.exists():
        version = content_hash(p)
        uri = uri or p.resolve().as_uri()
    else:
        version = str(path_or_hash)
    check_text("dataset version", version)
    check_text("dataset uri", uri or "")
    return types_pb2.DatasetRef(name=name, version=version, uri=uri or "")
