"""One run's worker side: drains the caller's buffer by time (flush_interval_s) or size (woken by
the caller), numbers and sends the requests, uploads large artifact files, sends heartbeats, and at
close waits for acks and spools whatever is left for `runstream sync`.

Nothing is lost silently: an entry that cannot be packed, or an upload the server refuses as
invalid (INVALID_ARGUMENT: e.g. the file changed after log_artifact hashed it), is refused alone,
counted in Run.refused_count and warned about (RefusedWarning); an upload cut short at close, at
any point of its retries, leaves its bytes and event in the spool. close() never raises: what it
cannot deliver or save is reported and it returns False."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import warnings
from pathlib import Path

import grpc

from runstream.config import Settings
from runstream.errors import RefusedWarning, SpoolError
from runstream.v1 import ingest_pb2

from . import spool as spool_mod
from .buffer import MetricBuffer
from .files import sha256_file
from .replay import replay_file, replayable_files
from .stream import IngestStream
from .upload import upload_file
from .wakeup import Wakeup
from .worker import Worker

log = logging.getLogger("runstream")

#: UploadArtifact answers that trying again cannot change: final, reported as refused
FINAL_UPLOAD_CODES = frozenset(
    {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}
)
#: at interpreter exit, how long to wait for a server this process never reached before spooling
EXIT_UNREACHED_WAIT_S = 2.0
#: a busy run (at least BUSY_SEND_POINTS points in one timed send) waits twice as long before its
#: next send, up to BUSY_STRETCH x flush_interval_s; a send with fewer goes back to the interval.
#: The server's cost is mostly per request (~0.1 ms each on 2 cores): 1,000 ranks logging 10
#: metrics at 100 steps/s sent 5.3 k requests/s before this and 2.5 k with it, and every rank's
#: finish() came 1.83-2.03 s -> 0.53-0.60 s after the last log (bench/sdk_ranks.py)
BUSY_SEND_POINTS = 100
BUSY_STRETCH = 2.5
#: how long a caller waits for the worker to set a run's pipeline up (it takes microseconds; more
#: means the worker's loop is stuck, which a caller should hear about rather than hang on)
START_TIMEOUT_S = 60.0


def next_interval(current: float, base: float, points: int) -> float:
    """The wait before a run's next timed send, after a send of `points` metric points: twice
    `current` for a busy run, up to BUSY_STRETCH x `base` (fewer, larger requests), else `base`."""
    if points >= BUSY_SEND_POINTS:
        return min(current * 2, base * BUSY_STRETCH)
    return base


class Upload:
    """A large artifact file (or media item): its bytes go through UploadArtifact before its event.
    `source`: the file, or the bytes themselves (media encoded in memory); `field`: the event's
    IngestRequest field ("artifact" or "media")."""

    __slots__ = ("event", "source", "field")

    def __init__(self, event, source: Path | bytes, field: str = "artifact"):
        self.event, self.source, self.field = event, source, field

    @property
    def held_bytes(self) -> int:
        """Memory this upload holds until it is sent (media bytes; a file's are on disk)."""
        return len(self.source) if isinstance(self.source, bytes) else 0


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
        buffer.on_refused = self._refused_points
        self._wake_event = Wakeup(worker.loop)  # made here: the caller may wake the worker before _start ran
        # Not waited for: init goes on while the loop sets the pipeline up (a blocking hop less per
        # run: W3's init took ~1.9 ms per thread with 4 threads, ~1.0 ms without it). Whatever the
        # loop does for this pipeline later is queued behind _start (the loop runs what is handed
        # to it in order), and _after_start raises _start's error, if any, before doing it.
        self._started = worker.run_soon(self._start)

    def ready(self, timeout_s: float = START_TIMEOUT_S) -> IngestStream:
        """The pipeline's stream once the loop has set it up (raises what _start raised)."""
        self._started.result(timeout_s)
        return self.stream

    def _call(self, coro, timeout_s: float):
        """Runs `coro` on the worker's loop after the pipeline's set-up (raises what _start raised).
        The caller does not wait for the set-up first: that was a second blocking hop per run
        (its wake-up ~3 % of the worker thread in a loop of short runs)."""
        return self.worker.call(self._after_start(coro), timeout_s)

    async def _after_start(self, coro):
        try:
            if not self._started.done():  # cannot happen: _start was handed to the loop first
                raise RuntimeError("the run's pipeline was used before the worker set it up")
            self._started.result()
        except BaseException:
            coro.close()  # never run: no "coroutine was never awaited" warning on top of the error
            raise
        return await coro

    # ---- caller-thread API ----------------------------------------------------------------

    def wake(self) -> None:
        self.worker.call_soon(self._wake_event.set)

    def flush(self, timeout_s: float) -> bool:
        return self._call(self._flush(timeout_s), timeout_s + 10)

    def server_reached(self, wait_s: float = EXIT_UNREACHED_WAIT_S) -> bool:
        """True once the server answered or the channel is connected, waiting up to wait_s."""
        return self.offline or self._call(self._server_reached(wait_s), wait_s + 10)

    def close(self, timeout_s: float, at_exit: bool = False) -> bool:
        """True when everything was delivered. Never raises: a failure is warned about (False).
        `at_exit`: a server this process never reached is not waited for (EXIT_UNREACHED_WAIT_S)."""
        try:
            return self._call(self._close(timeout_s, at_exit), timeout_s + 30)
        except Exception as exc:
            warnings.warn(
                f"runstream: finishing run {self.buffer.run_id!r} failed ({type(exc).__name__}: {exc}); "
                f"what was saved is in {self.run_dir} (upload it with: runstream sync {self.run_dir})",
                RuntimeWarning,
                stacklevel=2,
            )
            return False

    # ---- loop side ----------------------------------------------------------------------

    def _start(self) -> None:
        self.spool = spool_mod.SpoolFile(self.run_dir, self.client_id)
        channel = (
            None if self.offline else self.worker.channel(self.settings.endpoint, self.settings.tls_config)
        )
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
            shared=self.worker.shared_ingest(self.settings)
            if channel is not None and self.settings.shared_stream
            else None,
        )
        self._batcher = self.worker.loop.create_task(self._batch_loop())

    async def _batch_loop(self) -> None:
        base = interval = self.settings.flush_interval_s
        next_beat = time.monotonic() + self.settings.heartbeat_interval_s
        while True:
            await self._wake_event.wait(interval)
            self._wake_event.clear()
            try:
                interval = next_interval(interval, base, self._drain())
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

    def _drain(self) -> int:
        """Sends what the caller handed over; returns the metric points sent. `on_drained(idle)`:
        idle when there was nothing, so the caller wakes the worker with its next entry: a point
        logged after a quiet tick goes at once instead of at the next one (a run that logs every
        tick keeps batching by time and size, and sends at most one request more per tick)."""
        sent = points = 0
        for field, body in self.buffer.drain():
            sent += 1
            try:
                if field == "upload":
                    self._start_upload(body)
                else:
                    if field == "metrics":
                        points += len(body.steps) >> 3
                    self.stream.submit(field, body)
            except (OverflowError, ValueError, TypeError) as exc:  # this entry alone is refused
                self._refused_points(1, f"{field} could not be packed: {type(exc).__name__}: {exc}")
        if self.on_drained is not None:
            self.on_drained(sent == 0)
        return points

    def _refused_points(self, count: int, why: str) -> None:
        """Entries the SDK itself could not pack (its caller-thread checks should have caught them)."""
        self.stream.stats.refused += count
        if len(self.refused_messages) < 100:
            self.refused_messages.append(why)
        warnings.warn(
            f"runstream: {count} entr{'y' if count == 1 else 'ies'} of run {self.buffer.run_id!r} could not "
            f"be packed and {'was' if count == 1 else 'were'} left out ({why}); the rest is sent",
            RefusedWarning,
            stacklevel=1,
        )

    def _start_upload(self, up: Upload) -> None:
        if self.offline:
            self._save_blob(up)
            return
        task = asyncio.get_running_loop().create_task(self._upload(up))
        self._uploads.add(task)
        task.add_done_callback(self._uploads.discard)

    def _park_blob(self, up: Upload) -> None:
        """Offline / unfinished upload: copy the bytes into the spool so sync can upload them.
        A file that no longer matches its hash (changed after log_artifact) is refused instead."""
        dest = spool_mod.blob_path(self.run_dir, up.event.sha256)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(".tmp")
            try:
                if isinstance(up.source, bytes):
                    tmp.write_bytes(up.source)
                else:
                    shutil.copyfile(up.source, tmp)
            except FileNotFoundError:
                self._refuse_upload(up, f"artifact file {up.source} vanished before it was saved")
                return
            if sha256_file(tmp)[0] != up.event.sha256:
                tmp.unlink()
                self._refuse_upload(up, f"artifact file {up.source} changed after log_artifact hashed it")
                return
            tmp.replace(dest)
        self.stream.submit(up.field, up.event)

    async def _upload(self, up: Upload) -> None:
        """Uploads with retries; final answers (FINAL_UPLOAD_CODES) are refusals. Cancelled at any
        point (close), the bytes and the event are saved in the spool for `runstream sync`."""
        try:
            await self._upload_with_retries(up)
        except asyncio.CancelledError:
            self._save_blob(up)
            raise

    def _save_blob(self, up: Upload) -> None:
        """_park_blob, reporting (never raising) a spool that cannot be written."""
        try:
            self._park_blob(up)
        except OSError as exc:
            self.stream.stats.dropped += 1
            warnings.warn(
                f"runstream: artifact file {up.source} of run {self.buffer.run_id!r} was not uploaded and "
                f"could not be saved in {self.run_dir} ({type(exc).__name__}: {exc}): log it again",
                RuntimeWarning,
                stacklevel=1,
            )

    async def _upload_with_retries(self, up: Upload) -> None:
        # the server takes an upload only for a run it knows: the run_start (seq 1) first
        await self.stream.wait_acked(1, self.settings.finish_timeout_s)
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
            except FileNotFoundError:
                self._refuse_upload(up, f"artifact file {up.source} vanished before upload")
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() in FINAL_UPLOAD_CODES:
                    self._refuse_upload(
                        up, f"upload of {up.source} refused: {exc.code().name}: {exc.details()}"
                    )
                    return
                log.debug("runstream: upload of %s failed (%s); retrying", up.source, exc)
            except Exception as exc:
                log.debug("runstream: upload of %s failed (%s); retrying", up.source, exc)
            else:
                self.stream.submit(up.field, up.event)
                return
            await asyncio.sleep(delay)  # outside the handler: a cancel here still parks the blob
            delay = min(delay * 2, self.settings.reconnect_max_s)

    def _refuse_upload(self, up: Upload, message: str) -> None:
        """A final refusal of an artifact file: counted, warned, and its event kept in .refused."""
        self.stream.stats.refused += 1
        req = ingest_pb2.IngestRequest(client_id=self.client_id, **{up.field: up.event})
        self._refused(ingest_pb2.IngestResponse(ok=False, message=message), req.SerializeToString())

    def _refused(self, resp: ingest_pb2.IngestResponse, data: bytes) -> None:
        try:
            spool_mod.append_record(self.run_dir / f"{self.client_id}.refused", data)
        except OSError as exc:
            log.warning("runstream: could not keep a refused request in %s: %s", self.run_dir, exc)
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

    def _last_error(self, none: str) -> str:
        """The stream's last error, with what to check when it was a failed TLS handshake."""
        error = self.stream.stats.last_error
        hint = self.settings.tls_config.hint(error) if error else ""
        return f"{error}. {hint}" if hint else (error or none)

    async def _close(self, timeout_s: float, at_exit: bool = False) -> bool:
        """Waits for acks up to timeout_s, then spools what is left. True: all delivered."""
        deadline = time.monotonic() + timeout_s
        self._batcher.cancel()
        self._drain()
        if at_exit and not self.offline and not await self._server_reached(EXIT_UNREACHED_WAIT_S):
            deadline = time.monotonic()  # nobody to wait for: spool at once
            warnings.warn(
                f"runstream: the server {self.settings.endpoint} was never reached by this process "
                f"({self._last_error('no answer')}); run {self.buffer.run_id!r} is saved in "
                f"{self.run_dir} at exit. Upload it with: runstream sync {self.run_dir}",
                RuntimeWarning,
                stacklevel=1,
            )
        ok = await self._flush(max(0.0, deadline - time.monotonic()))
        for task in list(self._uploads):
            task.cancel()  # parks the blob and spools the event
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        stream = self.stream
        await stream.close()
        lost = self._lost_message()
        if self.offline:
            if stream.pending:  # the spool could not be written while running: one more try
                return self._save_pending(lost)
            self.spool.sync()
            self.spool.close()
            return not lost
        if stream.pending:
            return self._save_pending(lost)
        self.spool.close(delete=True)
        if lost:
            warnings.warn(f"runstream: run {self.buffer.run_id!r}: {lost}", RuntimeWarning, stacklevel=1)
        return ok and not stream.pending and not lost

    def _lost_message(self) -> str:
        dropped = self.stream.stats.dropped
        return f"{dropped} request(s) were dropped (the spool could not be written)" if dropped else ""

    def _save_pending(self, lost: str) -> bool:
        """Writes the unacknowledged requests into the spool for `runstream sync`: always False."""
        stream = self.stream
        seqs = sorted(stream.pending)
        try:
            records = [stream.entry_bytes(stream.pending[seq]) for seq in seqs]
            if self.offline:
                for data in records:
                    self.spool.append(data)
                self.spool.sync()
            else:
                self.spool.rewrite(records)
            self.spool.close()
        except (OSError, SpoolError) as exc:
            warnings.warn(
                f"runstream: {len(seqs)} request(s) of run {self.buffer.run_id!r} "
                f"({stream.points_in_memory()} points) could not be delivered "
                f"(last error: {stream.stats.last_error or 'none'}) nor saved in {self.run_dir} "
                f"({type(exc).__name__}: {exc}): they are lost. {lost}",
                RuntimeWarning,
                stacklevel=1,
            )
            return False
        warnings.warn(
            f"runstream: {len(records)} request(s) of run {self.buffer.run_id!r} were not acknowledged "
            f"(last error: {self._last_error('none')}); they are saved in {self.run_dir}. "
            f"Upload them with: runstream sync {self.run_dir}" + (f". {lost}" if lost else ""),
            RuntimeWarning,
            stacklevel=1,
        )
        return False

    async def _server_reached(self, wait_s: float) -> bool:
        """True once an answer came back or the channel is connected, waiting up to wait_s."""
        deadline = time.monotonic() + wait_s
        while True:
            if self.stream.ever_connected or self.stream.acked_upto(self.stream.last_seq):
                return True
            if self._channel.get_state() == grpc.ChannelConnectivity.READY:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)

    def has_child_files(self) -> bool:
        """True when forked children (or earlier processes) left spool files in the run's folder."""
        return bool(replayable_files([self.run_dir], exclude={self.client_id}))

    def import_children(self, timeout_s: float) -> None:
        """Uploads spool files that forked children of this process (which never talk to the
        server themselves) or earlier processes left in the run's folder, once unlocked."""
        self._call(self._import_children(time.monotonic() + timeout_s), timeout_s + 30)

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
