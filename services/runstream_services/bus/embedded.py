"""The embedded bus: publish() hands envelopes to the in-process sink (the StoreWriter) and returns
once they are durable: in the block log with their outcome decided (acked from the log), or, for
a bus without a log (tools, tests), inserted.

Group commit: the requests of all streams that arrive while earlier blocks are being written are
gathered into one block (one insert per table, one dedup token, one record of what was stored),
so the fixed cost of an insert (~10 ms on chDB, a new part) is paid per block, not per request.
The window adapts to load by itself: an idle server writes a request at once; a busy one writes
whatever arrived while its `max_blocks` blocks in flight were being inserted.

Acks from the log: each block is logged first (bus/block_log.py), so a crash mid-block re-forms
the same block at the next start. The writer then collects its rows (run state decided, refusals
known), shows them to the read cache, and calls back (StoreWriter.write's `on_staged`): the block's
publishes are answered there, before the inserts. The log is as durable as chDB's own parts
(neither is fsynced: both survive the process, not the machine). What that changes:
- a client waiting on an ack waits for the insert in flight (if any) and its own block's
  collect, no longer for its own block's insert too;
- an answered block's inserts must land: a failure is retried (AnsweredWriteFailed.retry: the
  same rows under the same tokens) until they do; a bus stopped meanwhile leaves the block's file,
  and the next start re-forms it;
- a read must still see every acked request: readers call `wait_applied` first (the server's
  ClientPools' `before_read`), which waits for the inserts of the blocks answered before it.
The next small block still waits for the insert in flight. Taking it as soon as the block in
flight was answered (tried twice, issue 11) put two chDB inserts side by side, each slower: first
with acks after the insert (acks 2x slower), then with acks from the log (one interleaved round:
ranks held 6.0k -> 4.0k requests/s, ack-then-read p99 at 3,000 requests/s 126 -> 212 ms, 10,000
runs 9.8 -> 11.1 s, against answering from the log with one block in flight).

One client's requests are applied in the order they were published (`keeps_client_order`), so
ingest publishes a run event without waiting for the requests before it to be durable: a block
takes the waiting requests in order, and leaves a client's requests waiting while that client has
a run event in another block in flight (or, for a run event, anything in flight). When a run_start
is refused, the requests of its client and run that wait behind it are refused with it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from runstream_services.bus.base import RUN_EVENTS, Envelope, Sink, WriteResult
from runstream_services.bus.block_log import BlockLog
from runstream_services.errors import Unavailable
from runstream_services.metrics_http import Metrics

log = logging.getLogger("runstream.bus")

MAX_BLOCK_REQUESTS = 8192  # ~80,000 points of small requests; a block's fixed cost (~35 ms) is paid once
MAX_BLOCK_BYTES = 64 << 20
#: a second block goes in while one is being inserted only when this many points wait in large
#: requests: a large
#: insert is mostly chDB's own work (the GIL released), so two overlap on two cores (sustained
#: ingest of 200k-point batches: 0.96-1.28 M points/s one at a time, 1.36-1.64 M two); small
#: blocks are mostly Python work, and two at once each took twice as long (ack p50 447 -> 164 ms
#: one at a time, 1,000 ranks at 600 requests/s)
OVERLAP_MIN_POINTS = 100_000
OVERLAP_MIN_REQUEST_POINTS = 1_000  # ... and the waiting requests are large on average
RECORD_EVERY_S = 1.0  # how often logged blocks are recorded as stored and their files removed
#: an idle bus waits this long before it takes a block, so that what a client sends together
#: (an SDK's last metrics and its run_finish, read off the stream as two messages) shares one
#: block instead of taking two insert rounds one after the other (ServerSettings.writer_gather_ms)
GATHER_S = 0.001


@dataclass
class _Publish:
    envelopes: list[Envelope]
    future: asyncio.Future
    nbytes: int = 0
    points: int = 0
    # envelopes taken out of a list while it waited (their run_start was refused), by key:
    # answered with the rest of the list
    refused: dict[str, str] = field(default_factory=dict)


@dataclass
class _Block:
    items: list[_Publish] = field(default_factory=list)
    nbytes: int = 0
    points: int = 0
    requests: int = 0  # envelopes of all items (a packed message's metrics come as one item)
    answered: bool = False  # acked from the log; its inserts may still be running

    @property
    def envelopes(self) -> list[Envelope]:
        return [env for item in self.items for env in item.envelopes]


class EmbeddedBus:
    """Group-commits envelopes into the sink from a small thread pool (chDB releases the GIL
    while inserting, so `max_blocks` blocks may overlap). `log_dir`: where blocks are logged before
    they are inserted (None: no log, for tools and tests that need no crash safety).

    One block in flight by default: on 2 cores, two overlapping chDB inserts each took about twice
    as long as one alone (issue 11, bench/many_writers.py ranks at 600 requests/s: 0.13 s per
    block instead of 0.23 s, about the same requests per block and CPU per request), so a second
    block added no throughput and a request's wait to its ack grew."""

    kind = "embedded"
    keeps_client_order = True

    def __init__(
        self,
        sink: Sink,
        *,
        log_dir: Path | None = None,
        max_blocks: int = 2,
        max_block_points: int = 2_000_000,
        max_block_requests: int = MAX_BLOCK_REQUESTS,
        gather_s: float = GATHER_S,
        metrics: Metrics | None = None,
    ):
        self.sink = sink
        self.gather_s = gather_s
        self.max_blocks = max_blocks
        self.max_block_points = max_block_points
        self.max_block_requests = max_block_requests
        self.metrics = metrics or Metrics()
        self.metrics.add_collector(self._queue_gauge)
        self._log = BlockLog(log_dir) if log_dir is not None else None
        self._name = uuid.uuid4().hex[:12]  # block names stay unique across restarts
        self._blocks_written = 0
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._waiting: list[_Publish] = []
        self._waiting_points = 0  # points of the waiting publishes
        self._in_flight = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._committer: asyncio.Task | None = None
        self._recorder: asyncio.Task | None = None
        self._logged: list[Path] = []  # block files written and inserted, not yet recorded
        self._busy: dict[str, int] = {}  # client_id -> its envelopes in blocks in flight
        self._barriers: dict[str, int] = {}  # client_id -> its run events in blocks in flight
        self._tasks: set[asyncio.Task] = set()  # blocks being committed (the loop holds no other reference)
        # numbers of blocks answered before their inserts landed (wait_applied), in pool threads
        self._applied = threading.Condition()
        self._unapplied: set[int] = set()
        self._stopping = threading.Event()  # ends the retries of an answered block (stop)

    async def start(self) -> None:
        if self._pool is not None:
            return
        self._stopping.clear()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self.max_blocks + 1, thread_name_prefix="runstream-writer"
        )
        if self._log is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._recover)
        self._committer = asyncio.create_task(self._commit_loop())
        if self._log is not None:
            self._recorder = asyncio.create_task(self._record_loop())

    async def publish(self, envelopes: list[Envelope]) -> WriteResult:
        return await self.submit(envelopes)

    def submit(self, envelopes: list[Envelope]) -> asyncio.Future[WriteResult]:
        """publish() without a coroutine: the future of the envelopes' WriteResult. Ingest calls
        this once per request, so a request costs a future and a callback, not a task."""
        if self._pool is None or self._committer is None:
            raise Unavailable(
                "the embedded bus is stopped (server shutting down); retry against a running server"
            )
        if len(envelopes) == 1:
            nbytes, points = len(envelopes[0].payload), envelopes[0].points
        else:
            nbytes, points = sum(len(e.payload) for e in envelopes), sum(e.points for e in envelopes)
        item = _Publish(envelopes, asyncio.get_running_loop().create_future(), nbytes, points)
        self._waiting.append(item)
        self._waiting_points += item.points
        self._idle.clear()
        self._wake.set()
        return item.future

    def _queue_gauge(self):
        """runstream_writer_queue at scrape time (not set per request: it is on the hot path)."""
        yield "runstream_writer_queue", {}, float(len(self._waiting) + self._in_flight)

    async def ping(self) -> None:
        """In-process: nothing to reach (the store has its own readiness probe)."""

    async def stop(self) -> None:
        """Writes what was published, records it, then shuts the pool down. Idempotent."""
        if self._pool is None:
            return
        self._stopping.set()  # an acked block whose inserts fail now stays in the log for the next start
        while self._waiting or self._in_flight:
            self._idle.clear()
            await self._idle.wait()
        for task in (self._committer, self._recorder):
            if task is not None:
                task.cancel()
        pool, self._pool = self._pool, None
        await asyncio.get_running_loop().run_in_executor(pool, self._record)
        pool.shutdown(wait=True)
        self._committer = self._recorder = None

    # ---- group commit -------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._in_flight and self.gather_s > 0 and self._waiting_points < OVERLAP_MIN_POINTS:
                await asyncio.sleep(self.gather_s)  # idle: what arrives with this request joins its block
                self._wake.clear()
            while self._waiting and self._in_flight < self.max_blocks:
                if self._in_flight and (
                    self._waiting_points < OVERLAP_MIN_POINTS
                    or self._waiting_points < OVERLAP_MIN_REQUEST_POINTS * len(self._waiting)
                ):
                    break  # small requests: the next block gathers more while this one is written
                block = self._take_block()
                if not block.items:
                    break  # every waiting request waits for a block in flight
                self._in_flight += 1
                task = asyncio.create_task(self._commit(block))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _take_block(self) -> _Block:
        """The oldest waiting publishes that may go now (see the module docstring), up to the
        block limits; the others keep their place."""
        block, left = _Block(), []
        held: set[str] = set()  # clients with a request left waiting: their later ones wait too
        full = False
        barriers, busy = self._barriers, self._busy
        for item in self._waiting:
            envelopes = item.envelopes
            if len(envelopes) == 1:  # ingest's case: one request per publish
                client = envelopes[0].client_id
                if (
                    full
                    or client in held
                    or barriers.get(client)
                    or (envelopes[0].kind in RUN_EVENTS and busy.get(client))
                ):
                    held.add(client)
                    left.append(item)
                    continue
            else:
                clients = {env.client_id for env in envelopes}
                barrier = any(env.kind in RUN_EVENTS for env in envelopes)
                if (
                    full
                    or not clients.isdisjoint(held)
                    or any(barriers.get(c) or (barrier and busy.get(c)) for c in clients)
                ):
                    held |= clients
                    left.append(item)
                    continue
            if block.items and (
                block.requests + len(item.envelopes) > self.max_block_requests
                or block.points + item.points > self.max_block_points
                or block.nbytes + item.nbytes > MAX_BLOCK_BYTES
            ):
                full = True
                left.append(item)
                continue
            block.items.append(item)
            block.requests += len(item.envelopes)
            block.nbytes += item.nbytes
            block.points += item.points
        self._waiting = left
        self._waiting_points -= block.points
        self._mark(block, +1)
        return block

    def _mark(self, block: _Block, sign: int) -> None:
        busy, barriers = self._busy, self._barriers
        for item in block.items:
            for env in item.envelopes:
                client = env.client_id
                count = busy.get(client, 0) + sign
                if count:
                    busy[client] = count
                else:
                    del busy[client]
                if env.kind in RUN_EVENTS:
                    count = barriers.get(client, 0) + sign
                    if count:
                        barriers[client] = count
                    else:
                        del barriers[client]

    def _refuse_behind(self, block: _Block, results: list) -> None:
        """Refuses the waiting requests of a client and run whose run_start this block refused."""
        failed: dict[tuple[str, str, str], str] = {}
        for item, result in zip(block.items, results, strict=True):
            for env in item.envelopes:
                why = None
                if isinstance(result, BaseException):
                    why = f"its run_start {env.seq} was not stored ({result})"
                elif env.idempotency_key in result.refused:
                    why = f"its run_start {env.seq} was refused: {result.refused[env.idempotency_key]}"
                if env.kind == "run_start" and why:
                    failed[(env.client_id, env.project, env.run_id)] = why
        if not failed:
            return
        keep = []
        for item in self._waiting:
            left = []
            for env in item.envelopes:
                why = failed.get((env.client_id, env.project, env.run_id))
                if why is None:
                    left.append(env)
                else:
                    item.refused[env.idempotency_key] = f"request {env.seq} was not stored: {why}"
            if len(left) < len(item.envelopes):  # a list keeps its other clients' requests
                item.envelopes = left
                item.nbytes = sum(len(e.payload) for e in left)
                item.points = sum(e.points for e in left)
            if not left and not item.future.done():
                item.future.set_result(WriteResult(refused=item.refused))
            elif left:
                keep.append(item)
        self._waiting = keep
        self._waiting_points = sum(item.points for item in keep)

    async def _commit(self, block: _Block) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            self._blocks_written += 1  # named here, in the loop thread: two pool threads must
            number = self._blocks_written  # never share a name (= a dedup token)
            name = f"blk:{self._name}:{number}"
            try:
                results = await loop.run_in_executor(self._pool, self._write_block, block, name, number, loop)
            except Exception as exc:
                results = [exc] * len(block.items)
            self._answer(block, results)
            self.metrics.inc("runstream_writer_blocks_total")
            self.metrics.inc("runstream_writer_block_requests_total", block.requests)
            self.metrics.inc("runstream_writer_block_seconds_total", time.perf_counter() - started)
        finally:
            if not block.answered:  # (an answered block released its clients already)
                self._mark(block, -1)
            self._in_flight -= 1
            if not self._waiting and not self._in_flight:
                self._idle.set()
            self._wake.set()

    def _answer(self, block: _Block, results: list) -> None:
        """In the loop thread: answers the block's publishes not answered yet, and refuses the
        waiting requests behind a refused run_start (once: an answered block's refusals were
        known when it was answered)."""
        if not block.answered:
            self._refuse_behind(block, results)
        for item, result in zip(block.items, results, strict=True):
            if item.future.done():
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            elif item.refused:
                item.future.set_result(
                    WriteResult(
                        stored=result.stored,
                        duplicates=result.duplicates,
                        points=result.points,
                        refused={**result.refused, **item.refused},
                    )
                )
            else:
                item.future.set_result(result)

    def _answer_early(self, block: _Block, shares: list[WriteResult]) -> None:
        """In the loop thread: a block is decided and logged: answers it, and lets its clients'
        next requests go into the next block (its collect comes after this one's)."""
        self._answer(block, shares)
        block.answered = True
        self._mark(block, -1)

    def _write_block(
        self, block: _Block, name: str, number: int = 0, loop: asyncio.AbstractEventLoop | None = None
    ) -> list[WriteResult | BaseException]:
        """In a pool thread: logs the block, writes it under its name and splits the result per
        publish. A logged block is answered as soon as the writer has decided it (before its
        inserts: the log is where a crash re-forms it); its inserts are then retried until they
        land (_store_answered). A block that fails as a whole before it was answered is written
        publish by publish, so one request the store cannot take fails alone."""
        envelopes = block.envelopes
        path = self._log.write(name, envelopes) if self._log is not None else None
        answered = False

        def answer_now(result: WriteResult) -> None:
            nonlocal answered
            answered = True
            with self._applied:
                self._unapplied.add(number)
            shares = [_share(result, item) for item in block.items]
            loop.call_soon_threadsafe(self._answer_early, block, shares)

        # logged: a crash re-forms the block, so its rows may be shown (and it may be answered)
        # before they are inserted
        early = {"on_staged": answer_now} if path is not None and loop is not None else {}
        try:
            result = self.sink.write(envelopes, token=name, logged=path is not None, **early)
        except Exception as exc:
            if not answered:
                return self._write_singles(block, name, path, exc)
            result = self._store_answered(name, len(envelopes), exc)
            if result is None:  # stopping: the block file stays, the next start re-forms it
                self._done_applying(number)
                return [Unavailable("the server stopped before the block was stored")] * len(block.items)
        if path is not None:
            self._logged.append(path)
        if answered:
            self._done_applying(number)
        return [_share(result, item) for item in block.items]

    def _store_answered(self, name: str, requests: int, failure: Exception) -> WriteResult | None:
        """A block whose requests were acked failed in its inserts: stores it again through the
        writer's retry (writers/store.py AnsweredWriteFailed: the same rows under the same tokens)
        until it lands. Nothing else is taken meanwhile but what may overlap a block in flight.
        None when the bus stops first: the block's file is kept, so the next start re-forms it."""
        retry = getattr(failure, "retry", None)
        delay, exc = 0.1, failure
        while retry is not None:
            log.error(
                "acked block %s of %d requests not stored yet (%s); retrying in %.1fs",
                name,
                requests,
                exc,
                delay,
            )
            if self._stopping.wait(delay):
                break
            try:
                return retry()
            except Exception as again:
                exc, delay = again, min(5.0, delay * 2)
        log.error("acked block %s stays in the block log; it is stored at the next start", name)
        return None

    def _done_applying(self, number: int) -> None:
        with self._applied:
            self._unapplied.discard(number)
            self._applied.notify_all()

    def wait_applied(self, timeout_s: float = 30.0) -> None:
        """Returns once every block answered before this call is in the store's tables (reads
        call it first: a request acked from the log is then visible to any later read). Raises
        Unavailable after `timeout_s` (a block whose inserts keep failing)."""
        if not self._unapplied:
            return
        deadline = time.monotonic() + timeout_s
        with self._applied:
            if not self._unapplied:
                return
            last = max(self._unapplied)
            while self._unapplied and min(self._unapplied) <= last:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Unavailable(
                        f"the store has not taken acked requests for {timeout_s:.0f}s (see the server "
                        "log); retry the read later"
                    )
                self._applied.wait(left)

    def _write_singles(self, block: _Block, name: str, path: Path | None, exc: Exception) -> list:
        """A block failed before it was answered: writes each publish on its own (its own
        tokens), so one request the store cannot take fails alone; a block of one re-raises."""
        self._forget_log(path)
        if len(block.items) == 1:
            raise exc
        log.warning("block %s of %d requests failed (%s); writing them one by one", name, block.requests, exc)
        singles: list[WriteResult | BaseException] = []
        for item in block.items:
            try:
                singles.append(self.sink.write(item.envelopes))
            except Exception as single_exc:
                singles.append(single_exc)
        return singles

    def _forget_log(self, path: Path | None) -> None:
        """A block answered without being stored as one: its requests are resent or were written
        one by one under their own tokens, so its file must not re-form it after a crash."""
        if path is not None and self._log is not None:
            self._log.remove([path])

    # ---- the block log ------------------------------------------------------------------------

    def _recover(self) -> None:
        """At start: writes every logged block again under its own name (see block_log.py)."""
        assert self._log is not None
        recovered = []
        for path, name, envelopes in self._log.pending():
            result = self.sink.write(envelopes, token=name, replay=True)
            log.info(
                "re-formed logged block %s: %d requests, %d stored now, %d stored before",
                name, len(envelopes), result.stored, result.duplicates,
            )  # fmt: skip
            recovered.append(path)
        if recovered:
            self._record_paths(recovered)

    async def _record_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(RECORD_EVERY_S)
            if self._logged and self._pool is not None:
                await loop.run_in_executor(self._pool, self._record)

    def _record(self) -> None:
        paths, self._logged = self._logged, []
        if paths:
            self._record_paths(paths)

    def _record_paths(self, paths: list[Path]) -> None:
        """Makes the record of the blocks' requests durable, then drops their files."""
        if self.sink.flush() is False:  # the record could not be written: keep the files
            self._logged[:0] = paths
            return
        assert self._log is not None
        self._log.remove(paths)


def _share(result: WriteResult, item: _Publish) -> WriteResult:
    """One publish's part of a block's result: its refusals, its stored count and points."""
    if not result.refused:  # the usual block: every request stored
        return WriteResult(stored=len(item.envelopes), points=item.points)
    keys = {env.idempotency_key for env in item.envelopes}
    refused = {k: why for k, why in result.refused.items() if k in keys}
    return WriteResult(
        stored=len(item.envelopes) - len(refused),
        points=sum(e.points for e in item.envelopes if e.idempotency_key not in refused),
        refused=refused,
    )
