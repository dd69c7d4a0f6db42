"""Uploads spool files with the (client_id, seq) they were recorded with, so replaying a file
twice stores nothing twice. Used by `runstream sync` and by a run importing its forked children's
spool files at finish."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from runstream.config import Settings
from runstream.errors import SpoolError
from runstream.v1 import ingest_pb2

from . import spool as spool_mod
from .stream import IngestStream
from .upload import upload_file
from .worker import Worker


class ReplayResult:
    __slots__ = ("path", "requests", "points", "refused", "messages", "complete")

    def __init__(self, path: Path):
        self.path = path
        self.requests = self.points = self.refused = 0
        self.messages: list[str] = []
        self.complete = False


def replayable_files(paths: Iterable[Path], exclude: set[str] = frozenset()) -> list[Path]:
    """Spool files under `paths` that are not synced yet (locked ones are skipped later)."""
    found: list[Path] = []
    for root in paths:
        root = Path(root).expanduser()
        try:
            mode = os.stat(root).st_mode  # one stat: a run's finish asks this of its (absent) folder
        except OSError:
            continue
        if stat.S_ISREG(mode) and root.suffix == ".spool":
            candidates = [root]
        elif stat.S_ISDIR(mode):
            candidates = sorted(root.rglob("*.spool"))
        else:
            continue
        for path in candidates:
            if path.stem in exclude or path.with_suffix(".synced").exists():
                continue
            found.append(path)
    return found


def _points(req: ingest_pb2.IngestRequest) -> int:
    return len(req.metrics.values) // 8 if req.WhichOneof("body") == "metrics" else 0


async def replay_file(
    worker: Worker,
    settings: Settings,
    path: Path,
    timeout_s: float,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult | None:
    """Sends every record of `path`; None when a live process holds the file."""
    result = ReplayResult(path)
    lock = spool_mod.try_lock(path.with_suffix(".lock"))
    if lock is None:
        return None
    try:
        requests: dict[int, bytes] = {}
        blobs: dict[
            int, ingest_pb2.ArtifactEvent | ingest_pb2.MediaEvent
        ] = {}  # seq -> event, file in blobs/
        client_id = path.stem
        for data in spool_mod.read_records(path):
            req = ingest_pb2.IngestRequest.FromString(data)
            client_id = req.client_id or client_id
            if req.seq not in requests:
                requests[req.seq] = data
                result.points += _points(req)
                body = req.WhichOneof("body")
                if body == "artifact" and not req.artifact.inline_data:
                    blobs[req.seq] = req.artifact
                elif body == "media" and req.media.sha256 and not req.media.inline_data:
                    blobs[req.seq] = req.media  # a large media item: its bytes are in blobs/ too
        result.requests = len(requests)
        channel = worker.channel(settings.endpoint, settings.tls_config)

        def refused(resp, _data):
            result.refused += 1
            if len(result.messages) < 20:
                result.messages.append(resp.message)

        stream = IngestStream(
            channel=channel,
            client_id=client_id,
            spool=None,
            api_key=settings.api_key,
            max_memory_bytes=1 << 62,
            max_inflight=settings.max_inflight_requests,
            reconnect_initial_s=settings.reconnect_initial_s,
            reconnect_max_s=settings.reconnect_max_s,
            on_refused=refused,
        )
        try:
            deadline = time.monotonic() + timeout_s
            for seq in sorted(requests):
                if seq in blobs:
                    # the server takes an upload only for a run it knows: what precedes it
                    # (the run_start) is acknowledged first
                    await stream.wait_acked(stream.last_seq, max(0.0, deadline - time.monotonic()))
                    await _upload_blob(worker, settings, path.parent, blobs[seq])
                stream.submit_raw(seq, requests[seq])
            total = len(requests)
            while stream.pending and time.monotonic() < deadline:
                if progress:
                    progress(total - len(stream.pending), total)
                await asyncio.sleep(0.05)
            if progress:
                progress(total - len(stream.pending), total)
            result.complete = not stream.pending
        finally:
            await stream.close()
        if result.complete:
            path.with_suffix(".synced").write_text(
                json.dumps(
                    {
                        "synced_ms": int(time.time() * 1000),
                        "requests": result.requests,
                        "refused": result.refused,
                    }
                )
            )
        return result
    finally:
        spool_mod.release(lock)


async def _upload_blob(
    worker: Worker, settings: Settings, run_dir: Path, event: ingest_pb2.ArtifactEvent | ingest_pb2.MediaEvent
) -> None:
    blob = spool_mod.blob_path(run_dir, event.sha256)
    if not blob.exists():
        raise SpoolError(
            f"{'media ' + repr(event.key) if isinstance(event, ingest_pb2.MediaEvent) else 'artifact file ' + repr(event.path)}"
            f" ({event.sha256[:12]}...) has no copy in {blob.parent}; "
            "the spool folder is incomplete"
        )
    await upload_file(
        worker.channel(settings.endpoint, settings.tls_config),
        settings.api_key,
        event.project,
        event.run_id,
        blob,
        event.sha256,
        event.size,
    )
