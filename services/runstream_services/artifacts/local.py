"""Artifact bytes in a local folder, content-addressed per project: root/<project>/sha256/ab/<digest>
(legacy objects, from before per-project keys: root/ab/<rest of the digest>). Writes go to a
temporary file that is renamed into place only after the digest matched, so a crash never leaves a
half-written object under its final name. Manifests get a logical URI (base.logical_uri), never
the server's path."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from runstream_services.artifacts.base import check_received, checked_digest, checked_project, logical_uri
from runstream_services.errors import InvalidArgument, NotFound


class LocalArtifactStore:
    """ArtifactStore on a local folder (embedded mode)."""

    kind = "local"

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(exist_ok=True)

    def path_for(self, project: str, sha256: str) -> Path:
        digest = checked_digest(sha256)
        return self.root / checked_project(project) / "sha256" / digest[:2] / digest

    def legacy_path_for(self, sha256: str) -> Path:
        digest = checked_digest(sha256)
        return self.root / digest[:2] / digest[2:]

    def uri_for(self, project: str, sha256: str) -> str:
        return logical_uri(project, sha256)

    def exists(self, project: str, sha256: str) -> bool:
        return self.path_for(project, sha256).is_file()

    def put(self, project: str, sha256: str, data: BinaryIO, size: int) -> tuple[str, bool]:
        target = self.path_for(project, sha256)
        digest = target.name
        uri = logical_uri(project, digest)
        if target.is_file():
            _drain_and_check(data, size, digest)
            return uri, True
        hasher = hashlib.sha256()
        written = 0
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix=digest[:16] + ".")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := data.read(1 << 20):
                    written += len(chunk)
                    if written > size:
                        raise InvalidArgument(
                            f"artifact {digest}: more than the declared {size} bytes arrived"
                        )
                    hasher.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            check_received(digest, size, written, hasher.hexdigest())
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return uri, False

    def open(
        self, project: str, sha256: str, chunk_size: int = 1 << 20, *, legacy: bool = False
    ) -> Iterator[bytes]:
        path = self.path_for(project, sha256)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            if not legacy:
                raise NotFound(f"artifact bytes {sha256} are not stored for project {project!r}") from None
            try:
                handle = self.legacy_path_for(sha256).open("rb")
            except FileNotFoundError:
                raise NotFound(f"artifact bytes {sha256} are not stored for project {project!r}") from None
        return _chunks(handle, chunk_size)


def _chunks(handle, chunk_size: int) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(chunk_size):
            yield chunk


def _drain_and_check(data: BinaryIO, size: int, digest: str) -> None:
    hasher = hashlib.sha256()
    written = 0
    while chunk := data.read(1 << 20):
        written += len(chunk)
        hasher.update(chunk)
    check_received(digest, size, written, hasher.hexdigest())
