"""Files of an artifact or dataset: walked, hashed (sha256) on the caller's thread, so what is
recorded is what was there at the call. A symlink inside a folder is followed only when it
resolves inside the folder: one leading out of it (to /etc/passwd, say) is skipped with a warning
naming it, so logging a folder never uploads what lies outside it."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

from runstream.errors import InvalidValueError

from .values import check_text


class FileEntry:
    __slots__ = ("rel", "abs", "sha256", "size")

    def __init__(self, rel: str, abs_path: Path, sha256: str, size: int):
        self.rel, self.abs, self.sha256, self.size = rel, abs_path, sha256, size


def sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def collect(path: str | os.PathLike) -> list[FileEntry]:
    """Every regular file of `path` (a file, or a directory walked recursively, sorted)."""
    root = Path(path).expanduser()
    if root.is_file():
        sha, size = sha256_file(root)
        return [FileEntry(root.name, root.resolve(), sha, size)]
    if not root.is_dir():
        raise InvalidValueError(f"artifact path {str(root)!r} does not exist (give a file or a directory)")
    out = []
    outside = []
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):  # does not descend into symlinked folders
        dirnames.sort()
        for fname in sorted(filenames):
            abs_path = Path(dirpath) / fname
            if not abs_path.is_file():
                continue  # sockets, broken links
            rel = check_text("artifact file name", abs_path.relative_to(root).as_posix())
            resolved = abs_path.resolve()
            if abs_path.is_symlink() and not resolved.is_relative_to(real_root):
                outside.append(rel)
                continue
            sha, size = sha256_file(abs_path)
            out.append(FileEntry(rel, resolved, sha, size))
    if outside:
        shown = ", ".join(outside[:20]) + (f" and {len(outside) - 20} more" if len(outside) > 20 else "")
        warnings.warn(
            f"runstream: {len(outside)} symlink(s) in {str(root)!r} lead outside it and were skipped: "
            f"{shown}. Copy the files into the folder to include them",
            RuntimeWarning,
            stacklevel=3,
        )
    out.sort(key=lambda e: e.rel)
    if not out:
        raise InvalidValueError(f"artifact directory {str(root)!r} holds no files")
    return out


def content_hash(path: str | os.PathLike) -> str:
    """A version for a dataset: the file's sha256, or for a directory the sha256 of its sorted
    (relative path, file sha256) list."""
    entries = collect(path)
    if Path(path).expanduser().is_file():
        return entries[0].sha256
    h = hashlib.sha256()
    for e in entries:
        h.update(f"{e.rel}\0{e.sha256}\n".encode())
    return h.hexdigest()
