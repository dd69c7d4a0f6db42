"""The gRPC ingest service (grpc.aio).

`Ingest` is one bidirectional stream per SDK process. Each request is validated as it arrives;
a refusal is answered for that request alone and the stream goes on. Valid metric and artifact
requests are published concurrently (up to `ingest_inflight_requests` / `_bytes` per stream; the
embedded bus group-commits them with other streams' requests) and acked as each becomes durable,
so acks may come out of order (the SDK matches them by seq). A stream opened with the metadata
`x-runstream-acks: batched` gets the acks that are ready together (one group-commit block finishes
many requests in one event-loop turn) in one IngestResponse (seq + also_ok): what is queued when the
sender wakes goes out at once, nothing waits for more. A packed message (IngestRequest.packed:
many requests, e.g. a relay's ranks, in one gRPC message) is unpacked here and each request handled
as if it had come alone; the message is answered once, when all of them are. Run events are ordered, so a run's
lifecycle is applied in the order it was sent: on a bus that keeps each client's order (embedded)
they are published at once, and the requests behind them are admitted against the state they will
set (RunRegistry.expect); on the Kafka bus a run event waits for everything before it on the stream
and is durable before anything after it is published.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
import time
from importlib import metadata as importlib_metadata
from typing import NamedTuple

import grpc

from runstream.v1 import ingest_pb2
from runstream_services.artifacts.base import ArtifactStore
from runstream_services.auth.keys import ApiKeys, Principal
from runstream_services.bus.base import RUN_EVENTS, Bus, Envelope
from runstream_services.config import ServerSettings
from runstream_services.errors import (
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    RunstreamServiceError,
    Unavailable,
)
from runstream_services.ingest.validation import Accepted, check_name, check_sha256, validate_request
from runstream_services.metrics_http import Metrics
from runstream_services.run_state import RunRegistry
from runstream_services.storage.clickhouse import is_chdb

log = logging.getLogger("runstream.ingest")

SERVICE_NAME = "runstream.v1.IngestService"
_OK = Metrics.key("runstream_ingest_requests_total", status="OK")
_POINTS = Metrics.key("runstream_ingest_points_total")
_BATCHES = Metrics.key("runstream_ingest_batches_total")
#: call metadata by which a client opts in to batched acks (proto: IngestService.Ingest)
ACKS_METADATA_KEY, ACKS_BATCHED = "x-runstream-acks", "batched"
#: at most this many seqs in one batched ack (bounds one message at ~160 KB)
MAX_ACKS_PER_MESSAGE = 16384


def _now_ms() -> int:
    return int(time.time() * 1000)


def _server_version() -> str:
    try:
        return importlib_metadata.version("runstream")
    except importlib_metadata.PackageNotFoundError:
        return "0+unknown"


class IngestServicer:
    """runstream.v1.IngestService. Register it with `add_to_server(server)` (it receives the raw
    request bytes, so the bus payload is never re-serialized)."""

    def __init__(
        self,
        bus: Bus,
        settings: ServerSettings,
        *,
        artifact_store: ArtifactStore | None,
        runs: RunRegistry,
        auth: ApiKeys,
        metrics: Metrics,
    ):
        self.bus = bus
        self.settings = settings
        self.artifact_store = artifact_store
        self.runs = runs
        self.auth = auth
        self.metrics = metrics
        self._streams: set[_IngestStream] = set()
        self._draining = False
        metrics.add_collector(self._inflight_gauge)

    def _inflight_gauge(self):
        """runstream_ingest_inflight at scrape time (not counted per request: a hot path)."""
        yield "runstream_ingest_inflight", {}, float(sum(len(s.inflight) for s in list(self._streams)))

    def add_to_server(self, server: grpc.aio.Server) -> None:
        handlers = {
            "Ingest": grpc.stream_stream_rpc_method_handler(
                self.Ingest,
                request_deserializer=_decode_request,
                response_serializer=ingest_pb2.IngestResponse.SerializeToString,
            ),
            "UploadArtifact": grpc.stream_unary_rpc_method_handler(
                self.UploadArtifact,
                request_deserializer=ingest_pb2.UploadArtifactRequest.FromString,
                response_serializer=ingest_pb2.UploadArtifactResponse.SerializeToString,
            ),
            "Health": grpc.unary_unary_rpc_method_handler(
                self.Health,
                request_deserializer=ingest_pb2.HealthRequest.FromString,
                response_serializer=ingest_pb2.HealthResponse.SerializeToString,
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))

    # ---- Ingest -------------------------------------------------------------------------------

    async def Ingest(self, request_iterator, context):
        if self._draining:
            raise Unavailable("the server is shutting down: reconnect and resend what was not acked")
        if len(self._streams) >= self.settings.max_ingest_streams:
            self.metrics.inc("runstream_ingest_streams_refused_total")
            raise ResourceExhausted(
                f"this server has {len(self._streams)} open Ingest streams, its limit "
                f"(max_ingest_streams = {self.settings.max_ingest_streams}): retry later or on another replica"
            )
        metadata = context.invocation_metadata()
        stream = _IngestStream(self, self.auth.authenticate(metadata))
        batched = any(k == ACKS_METADATA_KEY and v == ACKS_BATCHED for k, v in metadata or ())
        self._streams.add(stream)
        self.metrics.set("runstream_ingest_streams", len(self._streams))
        stream.reader = asyncio.create_task(stream.read(request_iterator))
        responses = stream.responses
        Response = ingest_pb2.IngestResponse
        try:
            if not batched:  # one message per request
                while (item := await responses.get()) is not None:
                    yield (
                        item
                        if type(item) is Response
                        else Response(seq=item[0], ok=True, points_accepted=item[1])
                    )
                return
            while True:
                items = [await responses.get()]
                while not responses.empty():  # what became ready with it (e.g. the same block)
                    items.append(responses.get_nowait())
                for message in _coalesce(items):
                    yield message
                if items[-1] is None:
                    return
        finally:
            if not stream.reader.done():
                stream.reader.cancel()
            self._streams.discard(stream)
            self.metrics.set("runstream_ingest_streams", len(self._streams))

    def open_streams(self) -> int:
        """Ingest calls open now."""
        return len(self._streams)

    @property
    def draining(self) -> bool:
        """True once drain() began: readiness probes then answer NOT_SERVING."""
        return self._draining

    async def drain(self) -> None:
        """Stops reading new requests on every stream and waits until what was read is acked."""
        self._draining = True
        readers = [s.reader for s in self._streams if s.reader is not None]
        for reader in readers:
            reader.cancel()
        if readers:
            await asyncio.wait(readers)

    # ---- UploadArtifact -----------------------------------------------------------------------

    async def UploadArtifact(self, request_iterator, context) -> ingest_pb2.UploadArtifactResponse:
        if self.artifact_store is None:
            raise Unavailable("this server process has no artifact store configured")
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument(
                "the first UploadArtifact message must be the header (project, run_id, sha256, size)"
            )
        header = first.header
        check_name("project", header.project)
        check_name("run_id", header.run_id)
        check_sha256(header.sha256)
        limit = self.settings.max_artifact_bytes
        if header.size > limit:
            raise InvalidArgument(
                f"artifact of {header.size} bytes is over this server's {limit}-byte limit (max_artifact_bytes)"
            )
        self.auth.check_context(context, header.project, "write")
        # after the key check, so a key of another project cannot probe which runs exist
        if await self.runs.state(header.project, header.run_id) is None:
            raise NotFound(
                f"run {header.run_id!r} of project {header.project!r} is unknown: "
                "send its run_start first (runstream.init) on this server"
            )
        digest = header.sha256.lower()
        hasher = hashlib.sha256()
        received = 0
        with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
            async for part in request_iterator:
                if part.WhichOneof("part") != "chunk":
                    raise InvalidArgument(
                        "only the first UploadArtifact message may be a header; send chunks after it"
                    )
                received += len(part.chunk)
                if received > header.size:
                    raise InvalidArgument(
                        f"more than the declared {header.size} bytes arrived: fix the header's size"
                    )
                hasher.update(part.chunk)
                spool.write(part.chunk)
            if received != header.size:
                raise InvalidArgument(f"{received} bytes arrived but the header declared {header.size}")
            if hasher.hexdigest() != digest:
                raise InvalidArgument(
                    f"the bytes hash to {hasher.hexdigest()}, not the declared {digest}: the file changed while uploading?"
                )
            spool.seek(0)
            uri, present = await asyncio.to_thread(
                self.artifact_store.put, header.project, digest, spool, header.size
            )
        if not present:
            self.metrics.inc("runstream_artifact_bytes_total", header.size)
        return ingest_pb2.UploadArtifactResponse(uri=uri, already_present=present)

    # ---- Health -------------------------------------------------------------------------------

    async def Health(self, request, context) -> ingest_pb2.HealthResponse:
        dsn = self.settings.resolved_clickhouse_dsn
        return ingest_pb2.HealthResponse(
            status="draining" if self._draining else "ok",
            version=_server_version(),
            bus=self.settings.bus,
            store="chdb" if is_chdb(dsn) else "clickhouse",
            artifacts=self.settings.artifact_store,
        )


def _coalesce(items: list) -> list[ingest_pb2.IngestResponse]:
    """Batched acks: each run of acks between refusals becomes one message (seq + also_ok);
    refusals stay one message each, in their place; the end marker (None) is dropped."""
    out, seqs, points = [], [], 0
    for item in items:
        if type(item) is tuple:
            seqs.append(item[0])
            points += item[1]
            if len(seqs) < MAX_ACKS_PER_MESSAGE:
                continue
        if seqs:
            out.append(
                ingest_pb2.IngestResponse(seq=seqs[0], ok=True, points_accepted=points, also_ok=seqs[1:])
            )
            seqs, points = [], 0
        if item is not None and type(item) is not tuple:
            out.append(item)
    if seqs:
        out.append(ingest_pb2.IngestResponse(seq=seqs[0], ok=True, points_accepted=points, also_ok=seqs[1:]))
    return out


def _envelope(raw: bytes, req: ingest_pb2.IngestRequest, accepted: Accepted, received_ms: int) -> Envelope:
    """The envelope of an accepted request; `req` is parsed once, here: the embedded writer reuses it."""
    return Envelope(
        client_id=req.client_id,
        seq=req.seq,
        kind=accepted.kind,
        project=accepted.project,
        run_id=accepted.run_id,
        payload=raw,
        received_ms=received_ms,
        points=accepted.points,
        request=req,
    )


class _Received(NamedTuple):
    """One Ingest message as read off the wire: the request, or why it could not be decoded."""

    raw: bytes
    request: ingest_pb2.IngestRequest | None
    seq: int  # the request's seq; best effort (0 when unknown) when it could not be decoded
    why: str = ""


def _decode_request(data: bytes) -> _Received:
    """Never raises: a request gRPC could not hand over would end the whole stream unanswered."""
    try:
        request = ingest_pb2.IngestRequest.FromString(data)
    except Exception as exc:  # DecodeError (corrupt bytes, bad UTF-8, nesting), RecursionError
        seq = _best_effort_seq(data)
        what = (
            f"request {seq}" if seq else "a request (its seq could not be decoded either: answered as seq 0)"
        )
        return _Received(
            data, None, seq,
            f"{what} could not be decoded as a runstream.v1.IngestRequest ({exc}): send valid protobuf "
            "with UTF-8 strings",
        )  # fmt: skip
    return _Received(data, request, request.seq)


def _best_effort_seq(data: bytes) -> int:
    """Field 1 (seq, varint) of a serialized IngestRequest that does not parse as a whole."""
    pos = 0
    try:
        while pos < len(data):
            tag, pos = _varint(data, pos)
            field_no, wire_type = tag >> 3, tag & 7
            if wire_type == 0:
                value, pos = _varint(data, pos)
                if field_no == 1:
                    return value & 0xFFFF_FFFF_FFFF_FFFF
            elif wire_type == 2:
                length, pos = _varint(data, pos)
                pos += length
            elif wire_type in (1, 5):
                pos += 8 if wire_type == 1 else 4
            else:
                return 0
    except IndexError:
        return 0
    return 0


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80 or shift > 63:
            return value, pos
        shift += 7


class _InflightBudget:
    """Requests of one stream read and not yet answered: at most `requests` of them and `nbytes`
    of their bytes (one request larger than that still goes, alone). One reader per stream
    acquires; publishes release."""

    def __init__(self, requests: int, nbytes: int):
        self.max_requests, self.max_bytes = requests, nbytes
        self.count = self.nbytes = 0
        self._freed = asyncio.Event()

    def _fits(self, size: int, count: int) -> bool:
        return not self.count or (
            self.count + count <= self.max_requests and self.nbytes + size <= self.max_bytes
        )

    async def acquire(self, size: int, count: int = 1) -> None:
        """Waits until `count` more requests of `size` bytes in all fit (alone, they always do)."""
        while not self._fits(size, count):
            self._freed.clear()
            await self._freed.wait()
        self.count += count
        self.nbytes += size

    def release(self, size: int, count: int = 1) -> None:
        self.count -= count
        self.nbytes -= size
        self._freed.set()


class _Packed:
    """The answers gathered for one packed message. `left` starts at 1, for the hand-over itself,
    so the message cannot be answered before all its requests were handed over."""

    __slots__ = ("seq", "left", "points", "refused", "size")

    def __init__(self, seq: int, size: int):
        self.seq = seq
        self.size = size  # requests in the message
        self.left = 1
        self.points = 0
        self.refused: list[ingest_pb2.PackedRefusal] = []


_Slot = tuple[_Packed, int]  # a packed request: its message and its position in it


class _Bulk:
    """A packed message's metric requests staged to be published together (handle_packed)."""

    __slots__ = ("envelopes", "slots", "nbytes", "admitted", "received_ms")

    def __init__(self):
        self.envelopes: list[Envelope] = []
        self.slots: list[_Slot] = []
        self.nbytes = 0
        self.admitted: set[tuple[str, str]] = set()  # (project, run_id) admitted in this message
        self.received_ms = _now_ms()


class _IngestStream:
    """State of one Ingest call: the response queue and the publishes in flight."""

    def __init__(self, service: IngestServicer, principal: Principal | None):
        self.svc = service
        self.principal = principal
        # refusals as messages; acks as (seq, points), turned into messages by Ingest; None ends
        self.responses: asyncio.Queue[ingest_pb2.IngestResponse | tuple[int, int] | None] = asyncio.Queue()
        self.inflight: set[asyncio.Future] = set()
        self.budget = _InflightBudget(
            service.settings.ingest_inflight_requests, service.settings.ingest_inflight_bytes
        )
        self.reader: asyncio.Task | None = None

    async def read(self, requests) -> None:
        try:
            async for received in requests:
                if received.request is None:
                    self.refuse(received.seq, InvalidArgument(received.why))
                    continue
                try:
                    if received.request.packed:
                        await self.handle_packed(received.request)
                        continue
                    await self.handle(received.raw, received.request)
                except Exception:  # a bug, or input nothing checks for: this request alone fails
                    log.exception("ingest request %s failed unexpectedly", received.seq)
                    self.svc.metrics.inc("runstream_errors_total", component="ingest")
                    self.refuse(
                        received.seq,
                        RunstreamServiceError(
                            f"internal error on request {received.seq}; see the server log (it was not stored)"
                        ),
                    )
        except asyncio.CancelledError:
            pass  # drain: stop reading; what was read is still answered below
        except Exception as exc:  # the client went away mid-read
            log.info("ingest stream ended while reading: %s", exc)
        finally:
            if self.inflight:
                await asyncio.wait(set(self.inflight))
            self.responses.put_nowait(None)

    def refuse(self, seq: int, exc: RunstreamServiceError) -> None:
        self.svc.metrics.inc("runstream_ingest_requests_total", status=exc.grpc_code.name)
        self.responses.put_nowait(
            ingest_pb2.IngestResponse(seq=seq, ok=False, code=exc.grpc_code.value[0], message=exc.message)
        )

    async def accept(self, req: ingest_pb2.IngestRequest, wire_bytes: int | None = None) -> Accepted:
        svc = self.svc
        accepted = validate_request(req, svc.settings, wire_bytes)
        svc.auth.check(self.principal, accepted.project, "write")
        await svc.runs.admit(accepted.kind, accepted.project, accepted.run_id, req)
        if accepted.kind == "artifact" and not req.artifact.inline_data and req.artifact.size > 0:
            await self._require_uploaded(
                accepted.project,
                req.artifact.sha256,
                f"artifact bytes {req.artifact.sha256} are not in the store: upload them first "
                "(UploadArtifact), or send them inline when at most "
                f"{svc.settings.max_inline_artifact_bytes} bytes",
            )
        elif accepted.kind == "media" and req.media.sha256 and not req.media.inline_data:
            await self._require_uploaded(
                accepted.project,
                req.media.sha256,
                f"media bytes {req.media.sha256} are not in the store: upload them first (UploadArtifact)",
            )
        return accepted

    async def _require_uploaded(self, project: str, sha256: str, missing: str) -> None:
        """An event naming bytes by digest: they must be in the artifact store already."""
        store = self.svc.artifact_store
        if store is not None and not await asyncio.to_thread(store.exists, project, sha256.lower()):
            raise NotFound(missing)

    async def handle_packed(self, req: ingest_pb2.IngestRequest) -> None:
        """A packed message: each request in it is handled as if it had come alone; the message
        is answered once, by its own seq, when every one of them is durable or refused. On a bus
        that takes a list at once (embedded: `submit`), the message's metric requests between its
        run events are published together, as one publish (one future, one budget entry; admission
        checked once per run): a relay's ranks then cost the loop a fraction of what they cost one
        by one (issue 11)."""
        if req.WhichOneof("body") is not None:
            self.refuse(
                req.seq,
                InvalidArgument(
                    f"request {req.seq} has both a body and packed requests: send the body as one "
                    "of the packed requests (a packed message carries nothing of its own)"
                ),
            )
            return
        packed = _Packed(req.seq, len(req.packed))
        bulk = _Bulk() if getattr(self.svc.bus, "submit", None) is not None else None
        for index, raw in enumerate(req.packed):
            packed.left += 1
            slot = (packed, index)
            inner = _decode_request(raw)
            if inner.request is None:
                self._refused(inner.seq, InvalidArgument(inner.why), slot)
            elif inner.request.packed:
                why = f"packed request {index} is itself packed: packed messages cannot be nested"
                self._refused(inner.seq, InvalidArgument(why), slot)
            else:
                try:
                    if bulk is not None:
                        if inner.request.WhichOneof("body") == "metrics":
                            await self._stage(raw, inner.request, slot, bulk)
                            continue
                        await self._publish_bulk(bulk)  # what came before a run event goes first
                    await self.handle(raw, inner.request, slot)
                except Exception:  # as in read(): this request alone fails
                    log.exception("packed request %s of %s failed unexpectedly", index, req.seq)
                    self.svc.metrics.inc("runstream_errors_total", component="ingest")
                    why = f"internal error on packed request {index}; see the server log (it was not stored)"
                    self._refused(inner.seq, RunstreamServiceError(why), slot)
        if bulk is not None:
            await self._publish_bulk(bulk)
        self._settle(packed)  # the hand-over is done: the message is answered with its last request

    async def _stage(self, raw: bytes, req: ingest_pb2.IngestRequest, slot: _Slot, bulk: _Bulk) -> None:
        """A packed metrics request, checked as `accept` checks it (admission and the key check
        once per run and message: for metrics they depend on the run and project alone), then
        held in `bulk` to be published with the others."""
        svc = self.svc
        try:
            accepted = validate_request(req, svc.settings, len(raw))
            run = (accepted.project, accepted.run_id)
            if run not in bulk.admitted:
                svc.auth.check(self.principal, accepted.project, "write")
                await svc.runs.admit(accepted.kind, accepted.project, accepted.run_id, req)
                bulk.admitted.add(run)
        except RunstreamServiceError as exc:
            self._refused(req.seq, exc, slot)
            return
        bulk.envelopes.append(_envelope(raw, req, accepted, bulk.received_ms))
        bulk.slots.append(slot)
        bulk.nbytes += len(raw)

    async def _publish_bulk(self, bulk: _Bulk) -> None:
        """Publishes the staged requests as one list; each is answered in its slot from the one
        future (a refusal names its request by idempotency key)."""
        if not bulk.envelopes:
            return
        envelopes, slots, size = bulk.envelopes, bulk.slots, bulk.nbytes
        bulk.envelopes, bulk.slots, bulk.nbytes = [], [], 0
        await self.budget.acquire(size, len(envelopes))
        future = self._submit(envelopes)
        self.inflight.add(future)

        def done(f: asyncio.Future) -> None:
            self.inflight.discard(f)
            self.budget.release(size, len(envelopes))
            for env, slot in zip(envelopes, slots, strict=True):
                self._answer(env, f, slot)

        future.add_done_callback(done)

    async def handle(self, raw: bytes, req: ingest_pb2.IngestRequest, slot: _Slot | None = None) -> None:
        """One request; `slot`: its place in a packed message, which is answered instead of it."""
        try:
            accepted = await self.accept(req, len(raw))
        except RunstreamServiceError as exc:
            self._refused(req.seq, exc, slot)
            return
        env = _envelope(raw, req, accepted, _now_ms())
        if env.kind in RUN_EVENTS and not self.svc.bus.keeps_client_order:
            if self.inflight:  # a run event follows everything before it...
                await asyncio.wait(set(self.inflight))
            task = self._spawn(env, slot=slot)
            await asyncio.wait({task})  # ...and precedes everything after it
        else:
            if env.kind in RUN_EVENTS:  # the bus applies this client's requests in order
                self.svc.runs.expect(env.kind, req, env.project, env.run_id)
            size = len(raw)
            await self.budget.acquire(size)
            self._spawn(env, release=size, slot=slot)

    def _submit(self, envelopes: list[Envelope]) -> asyncio.Future:
        submit = getattr(self.svc.bus, "submit", None)
        if submit is None:
            return asyncio.create_task(self.svc.bus.publish(envelopes))
        try:
            return submit(envelopes)
        except Exception as exc:  # the bus is stopped: answered like a failed publish
            future = asyncio.get_running_loop().create_future()
            future.set_exception(exc)
            return future

    def _not_stored(self, env: Envelope) -> None:
        if env.kind in RUN_EVENTS:  # its expected state (RunRegistry.expect) did not happen
            self.svc.runs.withdraw(env.project, env.run_id)

    def _spawn(self, env: Envelope, release: int | None = None, slot: _Slot | None = None) -> asyncio.Future:
        """Publishes one request; it is answered from the publish's done callback. A bus with
        `submit` (embedded) hands back a future: no task and no coroutine per request."""
        future = self._submit([env])
        self.inflight.add(future)

        def done(f: asyncio.Future) -> None:
            self.inflight.discard(f)
            if release is not None:
                self.budget.release(release)
            self._answer(env, f, slot)

        future.add_done_callback(done)
        return future

    def _answer(self, env: Envelope, published: asyncio.Future, slot: _Slot | None = None) -> None:
        svc = self.svc
        exc = (
            Unavailable(f"request {env.seq} was not stored (cancelled): resend it")
            if (published.cancelled())
            else published.exception()
        )
        if isinstance(exc, RunstreamServiceError):
            self._not_stored(env)
            self._refused(env.seq, exc, slot)
            return
        if exc is not None:
            log.error("publishing request %s failed", env.idempotency_key, exc_info=exc)
            svc.metrics.inc("runstream_errors_total", component="ingest")
            self._not_stored(env)
            why = f"could not store request {env.seq} ({exc}); it was not acked: resend it"
            self._refused(env.seq, Unavailable(why), slot)
            return
        result = published.result()
        refused = result.refused.get(env.idempotency_key) if result.refused else None
        if refused is not None:
            self._not_stored(env)
            self._refused(env.seq, InvalidArgument(refused), slot)
            return
        if env.kind in RUN_EVENTS:
            assert env.request is not None  # set in handle()
            svc.runs.published(env.kind, env.request, env.project, env.run_id)
            svc.metrics.inc_many(((_OK, 1),))
        elif env.kind == "metrics":
            svc.metrics.inc_many(((_POINTS, env.points), (_BATCHES, 1), (_OK, 1)))
        else:
            svc.metrics.inc_many(((_OK, 1),))
        if slot is None:
            self.responses.put_nowait((env.seq, env.points))
        else:
            slot[0].points += env.points
            self._settle(slot[0])

    def _refused(self, seq: int, exc: RunstreamServiceError, slot: _Slot | None) -> None:
        """A refusal, answered alone or, for a packed request, in its packed message's answer."""
        if slot is None:
            self.refuse(seq, exc)
            return
        packed, index = slot
        self.svc.metrics.inc("runstream_ingest_requests_total", status=exc.grpc_code.name)
        packed.refused.append(
            ingest_pb2.PackedRefusal(index=index, code=exc.grpc_code.value[0], message=exc.message)
        )
        self._settle(packed)

    def _settle(self, packed: _Packed) -> None:
        """One request of a packed message answered; the last one answers the message: an ack
        like any other when none was refused (batched with others when the stream batches)."""
        packed.left -= 1
        if packed.left:
            return
        if not packed.refused:
            self.responses.put_nowait((packed.seq, packed.points))
            return
        refused = sorted(packed.refused, key=lambda r: r.index)
        self.responses.put_nowait(
            ingest_pb2.IngestResponse(
                seq=packed.seq,
                ok=False,
                code=refused[0].code,
                message=f"{len(refused)} of the {packed.size} packed requests were refused (packed_refused "
                f"says which and why); the others are durable. First: {refused[0].message}",
                points_accepted=packed.points,
                packed_refused=refused,
            )
        )
