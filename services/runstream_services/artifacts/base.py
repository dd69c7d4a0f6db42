"""The artifact store interface. Objects are content-addressed within a project: the key is the
project and the sha256 hex digest, so storing the same bytes twice in a project writes nothing, no
caller-chosen name reaches a path, and a digest is visible only to the projects that uploaded it
(knowing a hash never lets one project read, register or probe another project's bytes).

Before per-project keys, bytes were stored under the digest alone (the "legacy" key). Those are
still read, but only through `open(..., legacy=True)`, which callers use after checking that THIS
project's manifest names the digest.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import BinaryIO, Protocol

from runstream_services.errors import InvalidArgument

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PROJECT = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # ingest's project names (validation.check_name)
#: the URI scheme of artifacts in the local store: names the object, not the server's path
LOGICAL_SCHEME = "runstream-artifact"


def checked_digest(sha256: str) -> str:
    """The digest in lower case; InvalidArgument unless it is 64 hex digits (so it is a safe key)."""
    digest = sha256.lower()
    if not _SHA256.match(digest):
        raise InvalidArgument(f"sha256 {sha256[:80]!r} is not 64 hex digits")
    return digest


def checked_project(project: str) -> str:
    """The project, when it is a safe path component and key prefix; InvalidArgument otherwise."""
    if not _PROJECT.match(project) or set(project) == {"."}:
        raise InvalidArgument(f"project {project[:80]!r} is not a valid project name for an artifact key")
    return project


def logical_uri(project: str, sha256: str) -> str:
    """`runstream-artifact://<project>/<sha256>`: what a run's manifest shows for a local object."""
    return f"{LOGICAL_SCHEME}://{checked_project(project)}/{checked_digest(sha256)}"


def check_received(digest: str, size: int, received: int, actual: str) -> None:
    """InvalidArgument when the bytes that arrived differ in size or hash from what was declared."""
    if received != size:
        raise InvalidArgument(
            f"artifact {digest}: {received} bytes arrived but the size was declared as {size}"
        )
    if actual != digest:
        raise InvalidArgument(
            f"artifact bytes hash to {actual}, not the declared {digest}: the file changed or was corrupted"
        )


class ArtifactStore(Protocol):
    kind: str  # "local" or "s3"

    def put(self, project: str, sha256: str, data: BinaryIO, size: int) -> tuple[str, bool]:
        """Stores `size` bytes read from `data` under (project, sha256) after checking the digest.
        Returns (uri, already_present in this project). Raises InvalidArgument on a digest or
        size mismatch."""

    def uri_for(self, project: str, sha256: str) -> str:
        """The URI a manifest records: runstream-artifact://<project>/<sha256> (local) or
        s3://<bucket>/<project>/sha256/ab/<sha256>. Never a server file path."""

    def exists(self, project: str, sha256: str) -> bool:
        """True when this project stored bytes with this digest (legacy keys do not count)."""

    def open(
        self, project: str, sha256: str, chunk_size: int = 1 << 20, *, legacy: bool = False
    ) -> Iterator[bytes]:
        """The project's stored bytes in chunks; NotFound when absent. `legacy`: fall back to the
        pre-project key — only after checking that this project's manifest names the digest."""
