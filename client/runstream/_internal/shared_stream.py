"""One Ingest stream shared by every run of this process that talks to the same server.

A run's `IngestStream` keeps its own numbering, pending requests, spool and acks (stream.py);
attached here, it no longer opens a gRPC call of its own. The shared stream sends what the
attached runs have ready as packed messages (IngestRequest.packed: each request keeps its own
client_id and seq, so idempotency is per run as before), numbered by this stream, and routes
each answer back: an ok acks every request in the message, `packed_refused` refuses the ones it
names, a refusal of the whole message refuses them all.

Why (issue 11): a sweep or a notebook that starts runs back to back paid a gRPC call per run,
set up and torn down on both sides, and one message per request; with runs sharing a stream, the
requests that fall due together travel in one message. Each run's window (max_inflight_requests)
still bounds what it has in flight. After a broken stream every attached run resends all it has
pending, in seq order, on the next one (reconnect with backoff, as a run's own stream does); the
server stores each (client_id, seq) once. With nothing attached for IDLE_CLOSE_S the call ends,
and the next run to attach opens a new one.
"""

from __future__ import annotations

import asyncio
import logging
import random

import grpc

from runstream.v1 import ingest_pb2

from .wakeup import Wakeup

#: a packed message holds at most this many requests and bytes (a larger request goes alone).
#: Well under the server's message limit (max_message_bytes, 64 MiB by default; deployments may set
#: less): packing is for the many small requests; one request the limit takes alone still fits.
MAX_PACK_REQUESTS = 512
MAX_PACK_BYTES = 256 << 10
#: with no run attached for this long, the call is closed (the next attach opens one)
IDLE_CLOSE_S = 10.0

log = logging.getLogger("runstream")

_OK = ingest_pb2.IngestResponse(ok=True)
_PACKED_TAG = b"\xa2\x01"  # IngestRequest.packed: field 20, length-delimited


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def pack(seq: int, requests: list[bytes]) -> bytes:
    """IngestRequest(seq=seq, packed=requests), serialized without copying through protobuf."""
    parts = [b"\x08", _varint(seq)]  # field 1 (seq), varint
    for data in requests:
        parts += (_PACKED_TAG, _varint(len(data)), data)
    return b"".join(parts)


def _too_large(exc: grpc.aio.AioRpcError) -> bool:
    """The server's gRPC refused a message over its limit (gRPC core's wording; RESOURCE_EXHAUSTED
    alone also means, e.g., too many open streams)."""
    return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (exc.details() or "")


class SharedIngest:
    """The process's stream to one server (one per channel and credentials; see Worker)."""

    def __init__(
        self, channel: grpc.aio.Channel, metadata: tuple, reconnect_initial_s: float, reconnect_max_s: float
    ):
        from .stream import INGEST_METHOD

        self._method = channel.stream_stream(
            INGEST_METHOD,
            request_serializer=None,  # packed messages are built as bytes (pack)
            response_deserializer=ingest_pb2.IngestResponse.FromString,
        )
        self._metadata = metadata
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self.streams: list = []  # attached IngestStreams, in attach order
        self.changed = Wakeup()  # a request to send, an ack, an attach or a detach
        # message seq -> (stream, seq) of each request in it, until the message is answered
        self._inflight: dict[int, list[tuple[object, int]]] = {}
        self._seq = 0
        self._next = 0  # the attached stream the next message starts with (round robin)
        self._task: asyncio.Task | None = None
        self.max_pack_bytes = MAX_PACK_BYTES  # 0: one request per message (see _run)

    # ---- runs attach and detach (worker loop) ---------------------------------------------

    def attach(self, stream) -> None:
        self.streams.append(stream)
        self.changed.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def detach(self, stream) -> None:
        """The run is done with the stream: what it still has in flight is no longer routed to it."""
        if stream in self.streams:
            self.streams.remove(stream)
        stream.detached = True
        self.changed.set()

    # ---- the call -------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self.reconnect_initial_s
        while self.streams:
            acked_before = sum(s.stats.acked for s in self.streams)
            try:
                if await self._session():
                    return  # idle: nothing attached for IDLE_CLOSE_S
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                self._failed(f"{exc.code().name}: {exc.details()}")
                if _too_large(exc) and self.max_pack_bytes:
                    # a server with a smaller message limit refused a packed message: from now on
                    # each request goes alone (as on a stream of its own, it fits or never did)
                    log.warning(
                        "runstream: the server refused a packed message (%s); sending one request per message",
                        exc.details(),
                    )
                    self.max_pack_bytes = 0
            except Exception as exc:
                self._failed(f"{type(exc).__name__}: {exc}")
            if sum(s.stats.acked for s in self.streams) > acked_before:
                delay = self.reconnect_initial_s
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.reconnect_max_s)

    def _failed(self, error: str) -> None:
        for stream in self.streams:
            stream.connected = False
            stream.stats.reconnects += 1
            stream.stats.last_error = error

    async def _session(self) -> bool:
        """One call: resends what every attached run has pending, then sends as it comes.
        Returns True when it ended because nothing was attached for IDLE_CLOSE_S."""
        call = self._method(metadata=self._metadata)
        self._inflight = {}
        for stream in self.streams:
            stream.new_call()
        reader = asyncio.ensure_future(self._read(call))
        reader.add_done_callback(lambda _: self.changed.set())  # a broken call wakes the loop
        loop = asyncio.get_running_loop()
        idle_since = None
        try:
            while True:
                if reader.done():
                    reader.result()
                    raise ConnectionError("the server closed the ingest stream")
                members, data = self._gather()
                if members:
                    self._seq += 1
                    self._inflight[self._seq] = members
                    await call.write(pack(self._seq, data))
                    continue
                if not self.streams and not self._inflight:
                    idle_since = idle_since or loop.time()
                    if loop.time() - idle_since >= IDLE_CLOSE_S:
                        return True
                else:
                    idle_since = None
                self.changed.clear()
                await self.changed.wait(IDLE_CLOSE_S if idle_since is not None else None)
        finally:
            reader.cancel()
            call.cancel()

    def _gather(self) -> tuple[list[tuple[object, int]], list[bytes]]:
        """The next message: ready requests of the attached runs, round robin, each run within
        its window, up to MAX_PACK_REQUESTS / MAX_PACK_BYTES (one larger request goes alone)."""
        members: list[tuple[object, int]] = []
        data: list[bytes] = []
        size = 0
        streams = self.streams
        count = len(streams)
        start = self._next % count if count else 0
        for i in range(count):
            stream = streams[(start + i) % count]
            while (seq := stream.next_seq_to_send()) is not None:
                body = stream.entry_bytes(stream.pending[seq])
                if members and (len(members) >= MAX_PACK_REQUESTS or size + len(body) > self.max_pack_bytes):
                    self._next = (start + i) % count
                    return members, data
                stream.take_seq(seq)
                members.append((stream, seq))
                data.append(body)
                size += len(body)
        self._next = start + 1
        return members, data

    async def _read(self, call) -> None:
        async for resp in call:
            self._answer(resp.seq, resp)
            for seq in resp.also_ok:
                self._answer(seq, resp)
            self.changed.set()

    def _answer(self, message_seq: int, resp: ingest_pb2.IngestResponse) -> None:
        members = self._inflight.pop(message_seq, None)
        if not members:
            return
        refused = {r.index: r for r in resp.packed_refused} if not resp.ok else {}
        touched = set()
        for index, (stream, seq) in enumerate(members):
            if stream.detached:
                continue
            if resp.ok:
                answer = _OK
            else:
                why = refused.get(index)
                if refused and why is None:
                    answer = _OK  # the others of a message with refusals are durable
                elif why is not None:
                    answer = ingest_pb2.IngestResponse(seq=seq, ok=False, code=why.code, message=why.message)
                else:  # the message as a whole was refused: each of its requests is
                    answer = ingest_pb2.IngestResponse(
                        seq=seq, ok=False, code=resp.code, message=resp.message
                    )
            stream.answered(seq, answer)
            touched.add(stream)
        for stream in touched:
            stream.connected = stream.ever_connected = True
            stream.acked_event.set()
