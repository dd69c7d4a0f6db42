"""One run's worker side: drains the caller's buffer by time (flush_interval_s) or size (woken by
the caller), numbers and sends the requests, uploads large artifact files, sends heartbeats, and at
close waits for acks and spools whatever is left for `runstream sync`."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import warnings
from pathlib import Path

from runstream.config import Settings
from runstream.errors import RefusedWarning
from runstream.v1 import ingest_pb2

from . import spool as spool_mod
from .buffer import MetricBuffer
from .replay import replay_file, replayable_files
from .stream import IngestStream
from .upload import upload_file
from .worker import Worker

log = logging.getLogger("runstream")


class Upload:
    """A large artifact file: its bytes go through UploadArtifact before its ArtifactEvent."""

    __slots__ = ("event", "source")

    def __init__(self, event: ingest_pb2.ArtifactEvent, source: Path):
        self.event, self.source = event, source


class Pipeline:
    def __init__(
        self,
        *,
        worker: Worker,
        buffer: MetricBuffer,
        settings: Settings,
        run_dir: Path,
        client_id: str,
        offline: bool,
        send_heartbeats: bool,
        on_drained=None,
    ):
        self.worker = worker
        self.buffer = buffer
        self.settings = settings
        self.run_dir = run_dir
        self.client_id = client_id
        self.offline = offline
        self.send_heartbeats = send_heartbeats
        self.on_drained = on_drained  # lets the caller's size trigger fire again
        self.refused_messages: list[str] = []
        self.stream: IngestStream | None = None
        self._uploads: set[asyncio.Task] = set()
        self._closing = False
        worker.call(self._start())

    # ---- caller-thread API ----------------------------------------------------------------

    def wake(self) -> None:
        self.worker.call_soon(self._wake_event.set)

    def flush(self, timeout_s: float) -> bool:
        return self.worker.call(self._flush(timeout_s), timeout_s + 10)

    def close(self, timeout_s: float) -> bool:
        return self.worker.call(self._close(timeout_s), timeout_s + 30)

    # ---- loop side ----------------------------------------------------------------------

    async def _start(self) -> None:
        self._wake_event = asyncio.Event()
        self.spool = spool_mod.SpoolFile(self.run_dir, self.client_id)
        channel = None if self.offline else self.worker.channel(self.settings.endpoint)
        self._channel = channel
        self.stream = IngestStream(
            channel=channel,
            client_id=self.client_id,
            spool=self.spool,
            offline=self.offline,
            api_key=self.settings.api_key,
            max_memory_bytes=self.settings.max_memory_bytes,
            max_inflight=self.settings.max_inflight_requests,
            reconnect_initial_s=self.settings.reconnect_initial_s,
            reconnect_max_s=self.settings.reconnect_max_s,
            on_refused=self._refused,
        )
        self._batcher = asyncio.get_running_loop().create_task(self._batch_loop())

    async def _batch_loop(self) -> None:
        interval = self.settings.flush_interval_s
        next_beat = time.monotonic() + self.settings.heartbeat_interval_s
        while True:
            try:
                await asyncio.wait_for(self._wake_event.wait(), interval)
            except TimeoutError:
                pass
            self._wake_event.clear()
            try:
                self._drain()
                if self.send_heartbeats and not self.offline and time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.settings.heartbeat_interval_s
                    self.stream.submit(
                        "run_update",
                        ingest_pb2.RunUpdate(
                            project=self.buffer.project,
                            run_id=self.buffer.run_id,
                            heartbeat_ms=int(time.time() * 1000),
                        ),
                    )
            except Exception:
                log.exception("runstream: the batcher failed; retrying on the next tick")

    def _drain(self) -> None:
        for field, body in self.buffer.drain():
            if field == "upload":
                self._start_upload(body)
            else:
                self.stream.submit(field, body)
        if self.on_drained is not None:
            self.on_drained()

    def _start_upload(self, up: Upload) -> None:
        if self.offline:
            self._park_blob(up)
            return
        task = asyncio.get_running_loop().create_task(self._upload(up))
        self._uploads.add(task)
        task.add_done_callback(self._uploads.discard)

    def _park_blob(self, up: Upload) -> None:
        """Offline / unfinished upload: copy the bytes into the spool so sync can upload them."""
        dest = spool_mod.blob_path(self.run_dir, up.event.sha256)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(up.source, dest)
        self.stream.submit("artifact", up.event)

    async def _upload(self, up: Upload) -> None:
        delay = self.settings.reconnect_initial_s
        while True:
            try:
                await upload_file(
                    self._channel,
                    self.settings.api_key,
                    up.event.project,
                    up.event.run_id,
                    up.source,
                    up.event.sha256,
                    up.event.size,
                )
                self.stream.submit("artifact", up.event)
                return
            except asyncio.CancelledError:
                self._park_blob(up)
                raise
            except FileNotFoundError:
                warnings.warn(
                    f"runstream: artifact file {up.source} vanished before upload",
                    RefusedWarning,
                    stacklevel=1,
                )
                return
            except Exception as exc:
                log.debug("runstream: upload of %s failed (%s); retrying", up.source, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.reconnect_max_s)

    def _refused(self, resp: ingest_pb2.IngestResponse, data: bytes) -> None:
        spool_mod.append_record(self.run_dir / f"{self.client_id}.refused", data)
        msg = f"runstream: the server refused a request of run {self.buffer.run_id!r}: {resp.message}"
        if len(self.refused_messages) < 100:
            self.refused_messages.append(resp.message)
        warnings.warn(msg, RefusedWarning, stacklevel=1)

    async def _flush(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        self._drain()
        while self._uploads and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self._uploads:
            return False
        return await self.stream.wait_acked(self.stream.last_seq, max(0.0, deadline - time.monotonic()))

    async def _close(self, timeout_s: float) -> bool:
        """Waits for acks up to timeout_s, then spools what is left. True: all delivered."""
        deadline = time.monotonic() + timeout_s
        self._batcher.cancel()
        self._drain()
        ok = await self._flush(max(0.0, deadline - time.monotonic()))
        for task in list(self._uploads):
            task.cancel()  # parks the blob and spools the event
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        stream = self.stream
        await stream.close()
        if self.offline:
            self.spool.sync()
            self.spool.close()
            return True
        if stream.pending:
            records = [stream._data(stream.pending[seq]) for seq in sorted(stream.pending)]
            self.spool.rewrite(records)
            self.spool.close()
            warnings.warn(
                f"runstream: {len(records)} request(s) of run {self.buffer.run_id!r} were not acknowledged "
                f"(last error: {stream.stats.last_error or 'none'}); they are saved in {self.run_dir}. "
                f"Upload them with: runstream sync {self.run_dir}",
                RuntimeWarning,
                stacklevel=1,
            )
            return False
        self.spool.close(delete=True)
        return ok and not stream.pending

    def has_child_files(self) -> bool:
        """True when forked children (or earlier processes) left spool files in the run's folder."""
        return bool(replayable_files([self.run_dir], exclude={self.client_id}))

    def import_children(self, timeout_s: float) -> None:
        """Uploads spool files that forked children of this process (which never talk to the
        server themselves) or earlier processes left in the run's folder, once unlocked."""
        self.worker.call(self._import_children(time.monotonic() + timeout_s), timeout_s + 30)

    async def _import_children(self, deadline: float) -> None:
        for path in replayable_files([self.run_dir], exclude={self.client_id}):
            try:
                result = await replay_file(
                    self.worker, self.settings, path, max(1.0, deadline - time.monotonic())
                )
            except Exception as exc:
                warnings.warn(
                    f"runstream: could not upload {path} ({exc}); run `runstream sync {self.run_dir}`",
                    RuntimeWarning,
                    stacklevel=1,
                )
                continue
            if result is None:
                continue  # still written by a live process: `runstream sync` later
            for message in result.messages:
                warnings.warn(
                    f"runstream: the server refused a request from {path.name}: {message}",
                    RefusedWarning,
                    stacklevel=1,
                )
            if not result.complete:
                warnings.warn(
                    f"runstream: {path} was not fully acknowledged; run `runstream sync {self.run_dir}`",
                    RuntimeWarning,
                    stacklevel=1,
                )
