"""The embedded bus's block log: each group-commit block is written to a file before it is inserted,
so that a crash mid-block re-forms exactly the same block at the next start.

Why: a block's inserts carry dedup tokens derived from the block's name. After kill -9 between two
inserts of a block, the requests were never acked and their SDKs resend them, but in other blocks
(other neighbours, other tokens), so the tokens alone could not drop what the first attempt
inserted. At start-up the bus therefore writes every logged block again, with its old name,
before it accepts requests: inserts that landed are dropped by their tokens, the rest land, and
the stored (client_id, seq) record then makes the SDKs' resends duplicates.

The embedded bus acks a block once it is logged and staged, and inserts the blocks that wait
as one write: a group file (`write_group`, written before that insert) names its blocks and
its token, so a crash re-forms the same write under the same token.

A block's file is deleted once the store writer's record of its requests is durable
(StoreWriter.flush); a group's file before its blocks' files. Files are written without fsync, like chDB's own inserts: they survive the
process, not the machine. Format (v3): the first line is "v3 " and the block's name; then a 4-byte
little-endian count n, n int64 receive times (ms), n uint32 payload lengths, and the n serialized
requests one after the other. Everything else an envelope holds (client id, seq, kind, project,
run, points) is read back from its request, which ingest validated before it was logged: writing
it out (v2: one JSON list per block) was 5 % of the writer's time at 10,000 small requests/s, and
v3 writes a block of 1,000 envelopes ~8x faster (issue 11). Files of the older formats (v2; the
first one, a JSON header before each payload) written by an older server are still read at start-up.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from runstream.v1 import ingest_pb2
from runstream_services.bus.base import Envelope

log = logging.getLogger("runstream.bus")

_LEN = struct.Struct("<I")
_V2 = b"v2 "  # block names start "blk:", so no file of the first format begins like this
_V3 = b"v3 "
_GROUP = "g1 "  # a group file's first line: this, then the group's token


class BlockLog:
    """Block files in `folder`, named by a number that rises within a process and across restarts."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        numbers = [int(p.stem) for p in self.folder.glob("*.blk") if p.stem.isdigit()]
        self._next = max(numbers, default=0) + 1
        self._lock = threading.Lock()  # blocks are logged from several pool threads

    def write(self, name: str, envelopes: list[Envelope]) -> Path:
        """Logs one block; returns its file (pass it to `remove` once the block is recorded)."""
        with self._lock:
            number, self._next = self._next, self._next + 1
        n = len(envelopes)
        payloads = [env.payload for env in envelopes]
        parts = [
            _V3 + name.encode() + b"\n",
            _LEN.pack(n),
            np.fromiter([env.received_ms for env in envelopes], "<i8", n).tobytes(),
            np.fromiter(map(len, payloads), "<u4", n).tobytes(),
            *payloads,
        ]
        path = self.folder / f"{number:012d}.blk"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(b"".join(parts))
        os.replace(tmp, path)  # a block file is whole or absent
        return path

    def pending(self) -> Iterator[tuple[Path, str, list[Envelope]]]:
        """The logged blocks not yet removed, oldest first: (file, name, envelopes). A file that
        cannot be read is renamed *.bad and reported (its requests were never acked)."""
        for path in sorted(self.folder.glob("*.blk")):
            try:
                yield path, *_read(path.read_bytes())
            except (ValueError, UnicodeDecodeError, struct.error, IndexError, DecodeError) as exc:
                log.error(
                    "block file %s cannot be read (%s); kept as .bad, its requests were never acked",
                    path,
                    exc,
                )
                path.rename(path.with_suffix(".bad"))
        for tmp in self.folder.glob("*.tmp"):  # a write cut short: that block was never inserted
            tmp.unlink(missing_ok=True)

    def write_group(self, token: str, paths: list[Path]) -> Path:
        """Notes, before their insert, that the blocks in `paths` (oldest first) go into the store
        as one write under `token`; returns the group's file (remove it before its blocks). A
        crash then re-forms them as that one write, so the token drops what of it landed."""
        path = paths[0].with_suffix(".grp")
        tmp = path.with_suffix(".gtmp")
        tmp.write_text(_GROUP + token + "\n" + "".join(p.name + "\n" for p in paths))
        os.replace(tmp, path)
        return path

    def groups(self) -> list[tuple[Path, str, list[Path]]]:
        """The group files left (see write_group), oldest first: (file, token, block files)."""
        out = []
        for path in sorted(self.folder.glob("*.grp")):
            lines = path.read_text(errors="replace").splitlines()
            if len(lines) < 2 or not lines[0].startswith(_GROUP):
                log.error("group file %s cannot be read; kept as .bad, its blocks are re-formed alone", path)
                path.rename(path.with_suffix(".bad"))
                continue
            out.append((path, lines[0][len(_GROUP) :], [self.folder / name for name in lines[1:]]))
        for tmp in self.folder.glob("*.gtmp"):  # cut short: its insert never began
            tmp.unlink(missing_ok=True)
        return out

    @staticmethod
    def remove(paths: list[Path]) -> None:
        for path in paths:
            path.unlink(missing_ok=True)


def _read(data: bytes) -> tuple[str, list[Envelope]]:
    end = data.index(b"\n")
    if data.startswith(_V3):
        return _read_v3(data, end)
    if not data.startswith(_V2):
        return _read_v1(data, end)
    name = data[len(_V2) : end].decode()
    pos = end + 1
    raw, pos = _payload(data, pos)
    headers = json.loads(raw)
    envelopes = []
    for header in headers:
        payload, pos = _payload(data, pos)
        envelopes.append(_envelope(header, payload))
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} bytes after the last payload")
    return name, envelopes


def _read_v3(data: bytes, end: int) -> tuple[str, list[Envelope]]:
    name = data[len(_V3) : end].decode()
    pos = end + 1
    (n,) = _LEN.unpack_from(data, pos)
    pos += 4
    if len(data) < pos + 12 * n:
        raise ValueError("truncated block file")
    received = np.frombuffer(data, "<i8", n, pos).tolist()
    lengths = np.frombuffer(data, "<u4", n, pos + 8 * n).tolist()
    pos += 12 * n
    if pos + sum(lengths) != len(data):
        raise ValueError(f"payloads of {sum(lengths)} bytes announced, {len(data) - pos} there")
    envelopes = []
    for received_ms, length in zip(received, lengths, strict=True):
        payload = data[pos : pos + length]
        pos += length
        request = ingest_pb2.IngestRequest.FromString(payload)
        envelopes.append(Envelope.from_request(request, payload, received_ms))
    return name, envelopes


def _write_v2(name: str, envelopes: list[Envelope]) -> bytes:
    """A block file as a server of the second format wrote it (for the tests of the reader)."""
    headers = json.dumps(
        [[e.client_id, e.seq, e.kind, e.project, e.run_id, e.received_ms, e.points] for e in envelopes]
    ).encode()
    parts = [_V2 + name.encode() + b"\n", _LEN.pack(len(headers)), headers]
    for env in envelopes:
        parts += [_LEN.pack(len(env.payload)), env.payload]
    return b"".join(parts)


def _read_v1(data: bytes, end: int) -> tuple[str, list[Envelope]]:
    """A block file of the first format: a header before each payload."""
    name = data[:end].decode()
    pos, envelopes = end + 1, []
    while pos < len(data):
        raw, pos = _payload(data, pos)
        header = json.loads(raw)
        payload, pos = _payload(data, pos)
        envelopes.append(_envelope(header, payload))
    return name, envelopes


def _payload(data: bytes, pos: int) -> tuple[bytes, int]:
    """The length-prefixed bytes at `pos`, and the position after them."""
    (m,) = _LEN.unpack_from(data, pos)
    payload = data[pos + 4 : pos + 4 + m]
    if len(payload) != m:
        raise ValueError("truncated block file")
    return payload, pos + 4 + m


def _envelope(header: list, payload: bytes) -> Envelope:
    client_id, seq, kind, project, run_id, received_ms, points = header
    return Envelope(client_id, seq, kind, project, run_id, payload, received_ms, points)
