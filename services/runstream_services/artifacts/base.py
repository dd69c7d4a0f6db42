"""The artifact store interface. Objects are content-addressed: the key is the sha256 hex digest,
so storing the same bytes twice writes nothing and no caller-chosen name reaches a path."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import BinaryIO, Protocol

from runstream_services.errors import InvalidArgument

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def checked_digest(sha256: str) -> str:
    """The digest in lower case; InvalidArgument unless it is 64 hex digits (so it is a safe key)."""
    digest = sha256.lower()
    if not _SHA256.match(digest):
        raise InvalidArgument(f"sha256 {sha256[:80]!r} is not 64 hex digits")
    return digest


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

    def put(self, sha256: str, data: BinaryIO, size: int) -> tuple[str, bool]:
        """Stores `size` bytes read from `data` under `sha256` after checking the digest.
        Returns (uri, already_present). Raises InvalidArgument on a digest or size mismatch."""

    def uri_for(self, sha256: str) -> str:
        """Where bytes with this digest are (or will be) stored: file://... or s3://bucket/key."""

    def exists(self, sha256: str) -> bool:
        """True when bytes with this digest are stored."""

    def open(self, sha256: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The stored bytes in chunks; NotFound when absent."""
