"""The local spool: append-only files of length-prefixed serialized IngestRequests.

Layout: `<spool_dir>/<run_id>/<client_id>.spool` (records: 4-byte little-endian length, then the
bytes), `<client_id>.lock` (flock'ed while the writing process lives, so `runstream sync` leaves a
live file alone), `<client_id>.synced` (written by sync), `<client_id>.refused` (requests the
server refused, same record format), `blobs/<sha256>` (artifact files too large to go inline),
`run.json` (project, run id, mode).
"""

from __future__ import annotations

import functools
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from runstream.errors import SpoolError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; sync then trusts the .synced markers only
    fcntl = None  # type: ignore[assignment]

_LEN = struct.Struct("<I")


class SpoolFile:
    """One client's append-only spool file. Not thread-safe: used by the worker thread only."""

    def __init__(self, run_dir: Path, client_id: str):
        self.run_dir = run_dir if isinstance(run_dir, Path) else Path(run_dir)
        self.client_id = client_id
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._touched = False  # whether this object made its files (close(delete=True) removes them)
        self.size = 0

    @functools.cached_property
    def path(self) -> Path:
        """Made when first needed: most runs never spool, and pathlib's joins were ~5 % of the
        SDK worker thread in a loop of short runs."""
        return self.run_dir / f"{self.client_id}.spool"

    def _open(self) -> int:
        if self._fd is None:
            self._touched = True
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                if self._lock_fd is None:
                    self._lock_fd = hold_lock(self.run_dir / f"{self.client_id}.lock")
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            except OSError as exc:
                raise SpoolError(f"cannot open spool file {self.path}: {exc}") from exc
            self.size = os.fstat(self._fd).st_size
        return self._fd

    def append(self, data: bytes) -> tuple[int, int]:
        """Writes one record; returns (offset of the data, length)."""
        fd = self._open()
        try:
            os.write(fd, _LEN.pack(len(data)) + data)
        except OSError as exc:
            raise SpoolError(f"cannot write spool file {self.path}: {exc} (disk full?)") from exc
        offset = self.size + _LEN.size
        self.size += _LEN.size + len(data)
        return offset, len(data)

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self._open(), length, offset)

    def sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self, delete: bool = False) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if delete and self._touched:  # (most runs never spool: no files, no system calls)
            for path in (self.path, self.run_dir / f"{self.client_id}.lock"):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
            try:
                self.run_dir.rmdir()  # only when nothing else is left
            except OSError:
                pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def rewrite(self, records: list[bytes]) -> None:
        """Replaces the file's content with `records` (compaction at finish)."""
        self._touched = True
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self._lock_fd is None:
            self._lock_fd = hold_lock(self.run_dir / f"{self.client_id}.lock")
        tmp = self.path.with_suffix(".spool.tmp")
        with open(tmp, "wb") as f:
            for data in records:
                f.write(_LEN.pack(len(data)) + data)
            f.flush()
            os.fsync(f.fileno())
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        os.replace(tmp, self.path)
        self._open()


def hold_lock(path: Path) -> int | None:
    """Opens and flocks `path` exclusively; the lock lives as long as the returned fd."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
    return fd


def try_lock(path: Path) -> int | None:
    """Like hold_lock, but None when another live process holds it."""
    try:
        return hold_lock(path)
    except OSError:
        return None


def release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def read_records(path: Path) -> Iterator[bytes]:
    """Records of a spool file; a torn last record (crash mid-write) is ignored."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos + _LEN.size <= len(data):
        (length,) = _LEN.unpack_from(data, pos)
        pos += _LEN.size
        if pos + length > len(data):
            break
        yield data[pos : pos + length]
        pos += length


def append_record(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write(_LEN.pack(len(data)) + data)


def write_run_meta(run_dir: Path, meta: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "run.json"
    if not path.exists():
        path.write_text(json.dumps(meta, indent=1))


def blob_path(run_dir: Path, sha256: str) -> Path:
    return Path(run_dir) / "blobs" / sha256
