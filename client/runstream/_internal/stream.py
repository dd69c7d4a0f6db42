"""Numbered requests of one client id over the bidirectional Ingest stream: a call of its own,
or (the SDK's default) the call the runs of this process share (shared_stream.py), which sends
what every attached stream has ready and routes the answers back here.

Every request gets (client_id, seq) and stays in `pending` until the server acks that seq. After a
broken stream, every pending request is resent in seq order on a new stream (reconnect with
exponential backoff and +-20% jitter); the server stores each (client_id, seq) once. Memory is
bounded: past `max_memory_bytes` of pending requests, new ones are appended to the disk spool and
kept there by offset. Offline streams only write the spool. Runs on the worker's event loop.

The stream asks for batched acks (call metadata `x-runstream-acks: batched`): one IngestResponse may
ack several seqs (seq + also_ok), which saves the server a message per request under load; a server
that does not know it answers one message per request, and both are handled alike.

When the spool cannot be written (full disk, a file where its folder should be), requests stay in
memory up to a hard cap (MEMORY_HARD_CAP_FACTOR x max_memory_bytes) with one clear warning naming
the spool and the points at risk; past the cap they are dropped, counted (stats.dropped) and warned
about. Nothing here raises into the pipeline for a spool failure.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import warnings
from collections import deque
from collections.abc import Callable

import grpc

from runstream.errors import SpoolError
from runstream.v1 import ingest_pb2

from .shared_stream import SharedIngest
from .spool import SpoolFile
from .wakeup import Wakeup

log = logging.getLogger("runstream")

INGEST_METHOD = "/runstream.v1.IngestService/Ingest"
#: with the spool unwritable, requests are kept in memory up to this many times max_memory_bytes
MEMORY_HARD_CAP_FACTOR = 4
#: call metadata asking the server for batched acks (proto: IngestService.Ingest)
BATCHED_ACKS = ("x-runstream-acks", "batched")


def call_metadata(api_key: str) -> tuple:
    """The Ingest call's metadata: the API key, and batched acks."""
    return ((("authorization", f"Bearer {api_key}"),) if api_key else ()) + (BATCHED_ACKS,)


class StreamStats:
    __slots__ = ("submitted", "acked", "refused", "spilled", "dropped", "reconnects", "last_error")

    def __init__(self) -> None:
        self.submitted = self.acked = self.refused = self.spilled = self.dropped = self.reconnects = 0
        self.last_error = ""

    def as_dict(self, pending: int) -> dict:
        """What run.stats shows; `pending`: requests sent but not acknowledged yet."""
        return {name: getattr(self, name) for name in self.__slots__} | {"pending": pending}


class IngestStream:
    def __init__(
        self,
        *,
        channel: grpc.aio.Channel | None,
        client_id: str,
        spool: SpoolFile | None,
        offline: bool = False,
        api_key: str = "",
        max_memory_bytes: int = 64 << 20,
        max_inflight: int = 64,
        reconnect_initial_s: float = 0.2,
        reconnect_max_s: float = 5.0,
        on_refused: Callable[[ingest_pb2.IngestResponse, bytes], None] | None = None,
        shared: SharedIngest | None = None,
    ):
        self.client_id = client_id
        self.offline = offline
        self.spool = spool
        self.next_seq = 1
        self.last_seq = 0
        self.pending: dict[int, bytes | tuple[int, int]] = {}  # seq -> bytes, or (offset, len) in the spool
        self.mem_bytes = 0
        self.spooled_pending = 0
        self.max_memory_bytes = max_memory_bytes
        self.max_inflight = max_inflight
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self.on_refused = on_refused
        self.stats = StreamStats()
        self.connected = False
        self.ever_connected = False  # an answer came back on some stream
        self.spool_error = ""  # the last failure to write the spool, "" while it works
        self._metadata = call_metadata(api_key)
        self.acked_event = Wakeup()  # set on every ack; wait_acked sleeps on it, no polling
        self.to_send: deque[int] = deque()
        self.sent_here: set[int] = set()  # sent on the current call and not known acked
        self.detached = False
        self._task: asyncio.Task | None = None
        self._shared = None if offline else shared
        self._changed = self._shared.changed if self._shared is not None else Wakeup()
        if self._shared is not None:  # the process's shared stream sends for it (shared_stream.py)
            self._shared.attach(self)
        elif not offline and channel is not None:
            self._method = channel.stream_stream(
                INGEST_METHOD,
                request_serializer=None,  # requests are already serialized bytes
                response_deserializer=ingest_pb2.IngestResponse.FromString,
            )
            self._task = asyncio.get_running_loop().create_task(self._run())

    # ---- producer side (worker loop) -------------------------------------------------------

    def submit(self, field: str, body) -> int:
        seq = self.next_seq
        self.next_seq += 1
        req = ingest_pb2.IngestRequest(seq=seq, client_id=self.client_id)
        getattr(req, field).CopyFrom(body)
        self.submit_raw(seq, req.SerializeToString())
        return seq

    def submit_raw(self, seq: int, data: bytes) -> None:
        """Queues an already numbered request (sync replays spooled ones this way)."""
        self.stats.submitted += 1
        self.last_seq = max(self.last_seq, seq)
        self.next_seq = max(self.next_seq, seq + 1)
        if self.offline or (self.mem_bytes + len(data) > self.max_memory_bytes and self.spool is not None):
            try:
                where = self.spool.append(data)
            except SpoolError as exc:
                self._spool_failed(exc)
            else:
                if self.offline:
                    return
                self.pending[seq] = where
                self.spooled_pending += 1
                self.stats.spilled += 1
                self.to_send.append(seq)
                self._changed.set()
                return
        if self.mem_bytes + len(data) > self.max_memory_bytes * MEMORY_HARD_CAP_FACTOR:
            self.stats.dropped += 1
            if self.stats.dropped == 1:
                warnings.warn(
                    f"runstream: the spool {self.spool.path if self.spool else '(none)'} cannot be written "
                    f"({self.spool_error}) and {self.mem_bytes >> 20} MiB are held in memory already: "
                    "requests are being dropped (counted in run.stats['dropped']); free the disk or fix "
                    "spool_dir",
                    RuntimeWarning,
                    stacklevel=1,
                )
            return
        self.pending[seq] = data
        self.mem_bytes += len(data)
        if not self.offline:
            self.to_send.append(seq)
            self._changed.set()

    def _spool_failed(self, exc: SpoolError) -> None:
        first = not self.spool_error
        self.spool_error = str(exc)
        if first:
            warnings.warn(
                f"runstream: cannot write the spool {self.spool.path} ({exc}); keeping requests in memory "
                f"instead (up to {self.max_memory_bytes * MEMORY_HARD_CAP_FACTOR >> 20} MiB). "
                f"{self.points_in_memory()} points are at risk: they are lost if this process ends before "
                "the server acknowledges them. Free the disk or fix spool_dir",
                RuntimeWarning,
                stacklevel=1,
            )

    def points_in_memory(self) -> int:
        """Metric points of the requests held in memory only (parsed: called when warning)."""
        total = 0
        for entry in self.pending.values():
            if type(entry) is bytes:
                req = ingest_pb2.IngestRequest.FromString(entry)
                total += len(req.metrics.values) // 8 if req.WhichOneof("body") == "metrics" else 0
        return total

    def entry_bytes(self, entry: bytes | tuple[int, int]) -> bytes:
        return entry if type(entry) is bytes else self.spool.read(*entry)

    # ---- acks ---------------------------------------------------------------------------

    def _ack(self, resp: ingest_pb2.IngestResponse) -> None:
        """One answer: a refusal, or an ack of `seq` and (batched acks) every seq in also_ok."""
        answered = self.answered(resp.seq, resp)
        if resp.also_ok:
            for seq in resp.also_ok:
                answered = self.answered(seq, resp) or answered
        if answered:
            self._changed.set()
            self.acked_event.set()

    def answered(self, seq: int, resp: ingest_pb2.IngestResponse) -> bool:
        """Drops `seq` from pending (False when it is not there: a duplicate ack after a resend)."""
        entry = self.pending.pop(seq, None)
        if entry is None:
            return False
        if not resp.ok:
            self.stats.refused += 1
            if self.on_refused is not None:
                try:
                    self.on_refused(resp, self.entry_bytes(entry))
                except Exception:  # reporting must never break the stream
                    log.exception("runstream: reporting a refused request failed")
        self.stats.acked += 1
        if type(entry) is bytes:
            self.mem_bytes -= len(entry)
        else:
            self.spooled_pending -= 1
            if self.spooled_pending == 0 and self.spool is not None:
                self.spool.close(delete=True)  # everything spilled is acked: reclaim the disk
        return True

    def acked_upto(self, seq: int) -> bool:
        """True when no request numbered <= seq is pending."""
        if not self.pending:
            return True
        return min(self.pending) > seq

    async def wait_acked(self, seq: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.acked_upto(seq):
            remaining = deadline - time.monotonic()
            if self.offline or remaining <= 0:
                return self.offline
            self.acked_event.clear()
            if self.acked_upto(seq):
                break
            await self.acked_event.wait(remaining)
        return True

    # ---- connection ---------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self.reconnect_initial_s
        while True:
            acked_before = self.stats.acked
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                self.stats.last_error = f"{exc.code().name}: {exc.details()}"
            except Exception as exc:
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
            self.connected = False
            self.stats.reconnects += 1
            if self.stats.acked > acked_before:
                delay = self.reconnect_initial_s
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.reconnect_max_s)

    def new_call(self) -> None:
        """A new call: everything unacked goes again, in order; nothing is in flight on it yet."""
        self.to_send = deque(sorted(self.pending))
        self.sent_here = set()

    def next_seq_to_send(self) -> int | None:
        """The next pending request to send on the current call, if the window
        (max_inflight_requests) has room; not taken yet (take_seq)."""
        sent = self.sent_here
        if len(sent) >= self.max_inflight:
            sent.intersection_update(self.pending.keys())
            if len(sent) >= self.max_inflight:
                return None
        to_send = self.to_send
        while to_send:
            if to_send[0] in self.pending:
                return to_send[0]
            to_send.popleft()  # acked meanwhile
        return None

    def take_seq(self, seq: int) -> None:
        """`seq` (next_seq_to_send's) goes out on the current call."""
        self.to_send.popleft()
        self.sent_here.add(seq)

    async def _session(self) -> None:
        call = self._method(metadata=self._metadata)
        self.new_call()
        reader = asyncio.ensure_future(self._read(call))
        reader.add_done_callback(lambda _: self._changed.set())  # a broken call wakes the loop
        try:
            while True:
                if reader.done():
                    reader.result()
                    raise ConnectionError("the server closed the ingest stream")
                seq = self.next_seq_to_send()
                if seq is None:
                    self._changed.clear()
                    await self._changed.wait()
                    continue
                self.take_seq(seq)
                await call.write(self.entry_bytes(self.pending[seq]))
        finally:
            reader.cancel()
            call.cancel()

    async def _read(self, call) -> None:
        async for resp in call:
            self.connected = self.ever_connected = True
            self._ack(resp)

    async def close(self) -> None:
        if self._shared is not None:
            self._shared.detach(self)
            self._shared = None
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
