"""The artifact store interface. Objects are content-addressed: the key is the sha256 hex digest,
so storing the same bytes twice writes nothing and no caller-chosen name reaches a path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO, Protocol


class ArtifactStore(Protocol):
    kind: str  # "local" or "s3"

    def put(self, sha256: str, data: BinaryIO, size: int) -> tuple[str, bool]:
        """Stores `size` bytes read from `data` under `sha256` after checking the digest.
        Returns (uri, already_present). Raises InvalidArgument on a digest or size mismatch."""

    def exists(self, sha256: str) -> bool:
        """True when bytes with this digest are stored."""

    def open(self, sha256: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The stored bytes in chunks; NotFound when absent."""
