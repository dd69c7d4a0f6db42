"""The embedded bus: publish() hands envelopes to the in-process sink (the StoreWriter) and returns
once they are durable: in the block log with their outcome decided (acked from the log), or, for
a bus without a log (tools, tests), inserted.

Group commit: the requests of all streams that arrive while an earlier block is being staged
are gathered into one block, and the blocks that arrive while an insert runs go in as one
insert (one insert per table, one dedup token, one record of what was stored), so the fixed
cost of an insert (~10 ms on chDB, a new part) is paid per insert, not per request. The window
adapts to load by itself: an idle server writes a request at once; a busy one gathers whatever
arrived meanwhile.

Acks from the log: each block is logged first (bus/block_log.py), so a crash re-forms it at the
next start. The writer then stages it (StoreWriter.stage: rows collected, run state decided,
refusals known, rows shown to the read cache) and the block's publishes are answered there,
before any insert. The log is as durable as chDB's own parts (neither is fsynced: both survive
the process, not the machine). The staged blocks wait in a queue; an insert takes all of them at
once (StoreWriter.insert_staged: one write, one insert per table) while the next blocks are
staged and answered. So:
- a client waiting on an ack waits for its block's staging (and the one before it), never for an
  insert: a closed loop of few clients (a sequential sweep, an SDK's finish) is no longer paced
  by the inserts, and more of them share one insert;
- several blocks that go in as one are noted in the log first (a group record under the insert's
  token), so a crash re-forms them as that one write and its tokens drop what landed;
- a failed insert of answered blocks is retried (the same rows under the same token, as a
  replay) until it lands; a bus stopped meanwhile leaves them logged for the next start;
- while the queue holds a block's worth (max_block_requests / max_block_points), no block is
  staged: acks wait, and the SDKs' windows slow the senders (backpressure);
- while an insert runs and stagings keep the bus busy, the next staging waits a share of an
  insert's time (STAGE_INSERT_SHARE, at most STAGE_WAIT_MAX_S) after the last one, so blocks
  stay large under load (staging each request alone held 1,000 ranks to 4.0k requests/s instead
  of 6.0k); a quiet bus stages at once;
- under load the inserts are spaced: the next starts no sooner than several of the recent inserts'
  durations after the last one ended (INSERT_GAP_SHARE, at most INSERT_GAP_MAX_S), so more
  blocks share each insert and its fixed CPU (a chDB insert into the metrics table and its two
  views costs ~15-25 ms of CPU however small); a quiet bus inserts at once;
- a read must still see every acked request: readers call `wait_applied` first (the server's
  ClientPools' `before_read`), which starts the queued insert at once and waits for the
  inserts of the blocks answered before it.
Tried before this (issue 11): taking the next block while the one before inserted, each block
inserted on its own: two chDB inserts side by side, each slower (with acks after the insert:
acks 2x slower; with acks from the log: ranks held 6.0k -> 4.0k requests/s in one round).

One client's requests are applied in the order they were published (`keeps_client_order`), so
ingest publishes a run event without waiting for the requests before it to be durable: a block
takes the waiting requests in order, and leaves a client's requests waiting while that client has
a run event in another block in flight (or, for a run event, anything in flight). When a run_start
is refused, the requests of its client and run that wait behind it are refused with it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runstream_services.bus.base import RUN_EVENTS, Envelope, Sink, WriteResult
from runstream_services.bus.block_log import BlockLog, LogEntry
from runstream_services.errors import Unavailable
from runstream_services.metrics_http import Metrics
from runstream_services.writers.store import StagedWrite

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
RECORD_EVERY_S = 1.0  # how often logged blocks are recorded as stored and dropped from the log
#: an idle bus waits this long before it takes a block, so that what a client sends together
#: (an SDK's last metrics and its run_finish, read off the stream as two messages) shares one
#: block instead of taking two insert rounds one after the other, and requests that many streams
#: send at once share blocks (1,000 ranks: 9.0k requests/s held with it, 4.0k without)
#: (ServerSettings.writer_gather_ms). Not while one ingest stream is open (EmbeddedBus.open_streams):
#: the SDK packs a run's last metrics and its run_finish into one message, and a lone stream's
#: requests only waited (1,000 runs by 4 threads of one process: 2.23-2.28 -> 2.06-2.15 ms per
#: run; by one thread: 4.31-4.58 -> 3.35-3.49 ms)
GATHER_S = 0.001
#: while an insert runs, a block is staged no sooner than this share of the recent inserts'
#: duration after the staging before it: a request that finds no staging in that span is staged
#: at once (a quiet bus, a few clients in a closed loop), while a busy bus stages (and acks) in
#: larger blocks, so the per-block cost (block record, collect, an ack message per stream) stays
#: small per request; an ack then waits a fraction of an insert, never the insert itself
STAGE_INSERT_SHARE = 0.5
STAGE_WAIT_MAX_S = 0.05  # ... and never longer than this (an insert that stalls stalls no ack)
#: ... and only while stagings keep the bus busy: the recent stagings took this share of the
#: time between them (below it, a staging costs little and goes at once)
STAGE_BUSY_SHARE = 0.3
#: a block this small is staged in the event loop when the store can decide it from memory
#: (Sink.can_stage_now): its logging and collecting take ~0.1-0.3 ms there, less than the two
#: thread hand-offs of a worker thread (800 runs through the SDK by 4 threads: 2.27-2.54 ->
#: 2.25-2.33 ms per run; 1,000 ranks at 4,000 requests/s: ack p50 4.4 -> 3.3 ms); larger blocks
#: (a busy bus) still go to a worker thread
INLINE_STAGE_MAX_REQUESTS = 32
INLINE_STAGE_MAX_POINTS = 5_000
#: the next insert of acked blocks starts no sooner than this many of the recent inserts' durations
#: after the last one ended (at most INSERT_GAP_MAX_S): each chDB insert costs ~10-30 ms of CPU
#: however small (parts of the table and its views), so under load fewer, larger inserts leave
#: the cores to the requests. A read waiting for them (wait_applied), a full queue, or a bus
#: stopping starts it at once; a quiet bus inserts at once (its last insert ended long ago).
#: 3x / 0.25 s before: 8x / 0.5 s halved the inserts of 1,000 runs by 4 threads (one per ~180 runs
#: -> one per ~375) and their merges, server CPU 1.14-1.21 -> 0.95-1.00 ms per run; the ranks row,
#: the 10,000-runs row and log -> visible at half load did not change (bench/many_writers.py)
INSERT_GAP_SHARE = 8.0
INSERT_GAP_MAX_S = 0.5


@dataclass
class _Publish:
    envelopes: list[Envelope]
    future: asyncio.Future
    nbytes: int = 0
    points: int = 0
    # envelopes taken out of a list while it waited (their run_start was refused), by key:
    # answered with the rest of the list
    refused: dict[str, str] = field(default_factory=dict)


class _NotStaged(Exception):
    """Staging a block failed: its publishes are written one by one, in a thread (write() inserts)."""

    def __init__(self, entry: LogEntry, cause: Exception):
        super().__init__(str(cause))
        self.entry, self.cause = entry, cause


@dataclass
class _Block:
    items: list[_Publish] = field(default_factory=list)
    nbytes: int = 0
    points: int = 0
    requests: int = 0  # envelopes of all items (a packed message's metrics come as one item)

    @property
    def envelopes(self) -> list[Envelope]:
        return [env for item in self.items for env in item.envelopes]


@dataclass
class _Staged:
    """A logged block, answered, whose rows wait in the insert queue."""

    number: int
    name: str
    entry: LogEntry  # its record in the block log
    write: StagedWrite


class EmbeddedBus:
    """Group-commits envelopes into the sink from a small thread pool (chDB releases the GIL
    while inserting, so `max_blocks` blocks may overlap). `log_dir`: where blocks are logged before
    they are inserted (None: no log, for tools and tests that need no crash safety).

    With a log, one block is staged at a time and one insert runs at a time (a second only for
    large requests): on 2 cores, two overlapping chDB inserts of small blocks each took about twice
    as long as one alone (issue 11, bench/many_writers.py ranks at 600 requests/s: 0.13 s per
    block instead of 0.23 s), so a second one added no throughput. Without a log (tools, tests)
    a block is written whole (inserted, then answered), one at a time for small requests."""

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
        #: how many ingest streams are open (the server sets it): the idle gather waits for other
        #: streams' requests, so a lone stream is not made to wait (see GATHER_S)
        self.open_streams: Callable[[], int] | None = None
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
        self._in_flight = 0  # blocks being written (no log) or staged (with a log)
        # with a log: answered blocks whose inserts wait, oldest first, and the inserts running
        self._queue: list[_Staged] = []
        self._queued_requests = 0
        self._queued_points = 0
        self._inserting = 0
        self._insert_s = 0.0  # recent inserts' duration (moving average)
        self._inserted_at = 0.0  # time.monotonic() when the last insert ended
        self._insert_timer: asyncio.TimerHandle | None = None
        self._readers = 0  # reads waiting in wait_applied (their inserts start at once)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._staged_at = 0.0  # time.monotonic() when the last staging began
        self._stage_s = 0.0  # recent stagings' duration and the time between their starts (moving averages)
        self._stage_every_s = 1.0
        self._stage_timer: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._committer: asyncio.Task | None = None
        self._recorder: asyncio.Task | None = None
        self._logged: list[LogEntry] = []  # logged blocks inserted, not yet recorded
        self._busy: dict[str, int] = {}  # client_id -> its envelopes in blocks in flight
        self._barriers: dict[str, int] = {}  # client_id -> its run events in blocks in flight
        self._tasks: set[asyncio.Task] = set()  # blocks being committed (the loop holds no other reference)
        # numbers of blocks answered before their inserts landed (wait_applied), in pool threads
        self._applied = threading.Condition()
        self._unapplied: set[int] = set()
        self._stopping = threading.Event()  # ends the retries of an answered block (stop)
        self._loop_thread = 0  # the event loop's thread (start)

    async def start(self) -> None:
        if self._pool is not None:
            return
        self._stopping.clear()
        if self._log is not None and self._log.closed:  # started again after stop: read the folder anew
            self._log = BlockLog(self._log.folder)
        self._loop_thread = threading.get_ident()
        self._loop = asyncio.get_running_loop()  # kept: on 3.11 asking for it is a getpid() system call
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self.max_blocks + 2, thread_name_prefix="runstream-writer"
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
        item = _Publish(envelopes, self._loop.create_future(), nbytes, points)
        self._waiting.append(item)
        self._waiting_points += item.points
        self._idle.clear()
        self._wake.set()
        return item.future

    def _queue_gauge(self):
        """runstream_writer_queue at scrape time (not set per request: it is on the hot path)."""
        yield "runstream_writer_queue", {}, float(len(self._waiting) + self._in_flight + len(self._queue))

    async def ping(self) -> None:
        """In-process: nothing to reach (the store has its own readiness probe)."""

    async def stop(self) -> None:
        """Writes what was published, records it, then shuts the pool down. Idempotent."""
        if self._pool is None:
            return
        self._stopping.set()  # an acked block whose inserts fail now stays in the log for the next start
        self._wake.set()  # queued inserts go in now (_insert_due)
        while not self._is_idle():
            self._idle.clear()
            await self._idle.wait()
        for task in (self._committer, self._recorder):
            if task is not None:
                task.cancel()
        for timer in (self._insert_timer, self._stage_timer):
            if timer is not None:
                timer.cancel()
        self._insert_timer = self._stage_timer = None
        pool, self._pool = self._pool, None
        await asyncio.get_running_loop().run_in_executor(pool, self._record)
        pool.shutdown(wait=True)
        if self._log is not None:
            self._log.close()
        self._committer = self._recorder = None

    # ---- group commit -------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if (
                not self._in_flight
                and not self._inserting
                and self.gather_s > 0
                and self._waiting_points < OVERLAP_MIN_POINTS
                and (self.open_streams is None or self.open_streams() > 1)
            ):
                await asyncio.sleep(self.gather_s)  # idle: what arrives with this request joins its block
                self._wake.clear()
            if self._log is None:
                self._take_writes()
            else:
                self._take_inserts()  # first: that may make room in the queue for a staging
                self._take_stagings()
                self._take_inserts()

    def _is_idle(self) -> bool:
        return not (self._waiting or self._in_flight or self._queue or self._inserting)

    def _large_waiting(self, points: int, requests: int) -> bool:
        """Enough points in large requests that a second insert beside one in flight pays."""
        return points >= OVERLAP_MIN_POINTS and points >= OVERLAP_MIN_REQUEST_POINTS * requests

    def _take_writes(self) -> None:
        """No log: each block is written whole (inserted, then answered)."""
        while self._waiting and self._in_flight < self.max_blocks:
            if self._in_flight and not self._large_waiting(self._waiting_points, len(self._waiting)):
                break  # small requests: the next block gathers more while this one is written
            block = self._take_block()
            if not block.items:
                break  # every waiting request waits for a block in flight
            self._in_flight += 1
            self._start(self._commit(block))

    def _take_stagings(self) -> None:
        """With a log: one block is staged (logged, collected, answered) at a time, while the
        insert queue has room; what waits meanwhile forms the next block."""
        if not self._waiting or self._in_flight:
            return
        if self._queued_requests >= self.max_block_requests or self._queued_points >= self.max_block_points:
            return  # the inserts are behind: acks wait (backpressure) until the queue drains
        if (
            self._inserting
            and len(self._waiting) < self.max_block_requests
            and self._stage_s > STAGE_BUSY_SHARE * self._stage_every_s
        ):
            wait = (
                self._staged_at
                + min(STAGE_WAIT_MAX_S, STAGE_INSERT_SHARE * self._insert_s)
                - time.monotonic()
            )
            if wait > 0:
                if self._stage_timer is None:
                    self._stage_timer = self._loop.call_later(wait, self._stage_due)
                return
        block = self._take_block()
        if block.items:
            now = time.monotonic()
            self._stage_every_s += 0.3 * (now - self._staged_at - self._stage_every_s)
            self._staged_at = now
            self._in_flight += 1
            self._start(self._stage(block))

    def _stage_due(self) -> None:
        self._stage_timer = None
        self._wake.set()

    def _take_inserts(self) -> None:
        """The queued blocks go in as one insert (up to the block limits); a second insert beside
        one in flight only for large requests (see OVERLAP_MIN_POINTS)."""
        while self._queue and self._inserting < self.max_blocks:
            if self._inserting and not self._large_waiting(self._queued_points, self._queued_requests):
                return
            if not self._insert_due():
                return
            group, requests, points = [], 0, 0
            for staged in self._queue:
                if group and (
                    requests + staged.write.requests > self.max_block_requests
                    or points + staged.write.points > self.max_block_points
                ):
                    break
                group.append(staged)
                requests += staged.write.requests
                points += staged.write.points
            del self._queue[: len(group)]
            self._queued_requests -= requests
            self._queued_points -= points
            self._inserting += 1
            self._start(self._insert(group))

    def _insert_due(self) -> bool:
        """Whether the queued blocks go in now (see INSERT_GAP_SHARE); if not, a timer wakes the
        loop when they are due."""
        if (
            self._readers
            or self._stopping.is_set()
            or self._queued_requests * 2 >= self.max_block_requests
            or self._queued_points * 2 >= self.max_block_points
        ):
            return True
        wait = self._inserted_at + min(INSERT_GAP_MAX_S, INSERT_GAP_SHARE * self._insert_s) - time.monotonic()
        if wait <= 0:
            return True
        if self._insert_timer is None:
            self._insert_timer = self._loop.call_later(wait, self._insert_due_now)
        return False

    def _insert_due_now(self) -> None:
        self._insert_timer = None
        self._wake.set()

    def _start(self, coro) -> None:
        task = self._loop.create_task(coro)
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

    def _next_name(self) -> tuple[int, str]:
        """Named in the loop thread: two pool threads must never share a name (= a dedup token)."""
        self._blocks_written += 1
        return self._blocks_written, f"blk:{self._name}:{self._blocks_written}"

    def _finished(self, block: _Block | None = None) -> None:
        """In the loop thread, when a write, staging or insert ends."""
        if block is not None:
            self._mark(block, -1)
            self._in_flight -= 1
        if self._is_idle():
            self._idle.set()
        self._wake.set()

    def _count_block(self, block: _Block, started: float) -> None:
        self.metrics.inc("runstream_writer_blocks_total")
        self.metrics.inc("runstream_writer_block_requests_total", block.requests)
        self.metrics.inc("runstream_writer_block_seconds_total", time.perf_counter() - started)

    async def _commit(self, block: _Block) -> None:
        """No log: writes the block whole, then answers it."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            _, name = self._next_name()
            try:
                results = await loop.run_in_executor(self._pool, self._write_block, block, name)
            except Exception as exc:
                results = [exc] * len(block.items)
            self._answer(block, results)
            self._count_block(block, started)
        finally:
            self._finished(block)

    async def _stage(self, block: _Block) -> None:
        """With a log: logs and stages the block (StoreWriter.stage), answers it, and queues its
        rows for the inserts."""
        started = time.perf_counter()
        try:
            number, name = self._next_name()
            try:
                results, staged = await self._staged(block, name, number)
            except Exception as exc:
                results, staged = [exc] * len(block.items), None
            if staged is not None:
                with self._applied:  # before the acks go out: a read after an ack waits for it
                    self._unapplied.add(number)
                self._queue.append(staged)
                self._queued_requests += staged.write.requests
                self._queued_points += staged.write.points
            self._answer(block, results)
            self._count_block(block, started)
            self._stage_s += 0.3 * (time.perf_counter() - started - self._stage_s)
        finally:
            self._finished(block)

    async def _insert(self, group: list[_Staged]) -> None:
        loop = self._loop
        started = time.monotonic()
        try:
            await loop.run_in_executor(self._pool, self._insert_group, group)
            self._inserted_at = time.monotonic()
            self._insert_s += 0.3 * (self._inserted_at - started - self._insert_s)
        except Exception:  # (_insert_group retries; only a bug lands here)
            log.exception("inserting blocks %s failed", [s.name for s in group])
        finally:
            self._inserting -= 1
            self._finished()

    def _answer(self, block: _Block, results: list) -> None:
        """In the loop thread: answers the block's publishes, and refuses the waiting requests
        behind a refused run_start."""
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

    def _write_block(self, block: _Block, name: str) -> list[WriteResult | BaseException]:
        """In a pool thread (no log): writes the block under its name and splits the result per
        publish. When the block fails as a whole, each publish is written on its own, so one
        request the store cannot take fails alone."""
        try:
            result = self.sink.write(block.envelopes, token=name)
        except Exception as exc:
            return self._write_singles(block, name, None, exc)
        return [_share(result, item) for item in block.items]

    async def _staged(
        self, block: _Block, name: str, number: int
    ) -> tuple[list[WriteResult | BaseException], _Staged | None]:
        """_stage_block in the loop (a small block, _stage_now) or in a thread; when staging
        fails, the publishes are written one by one, in a thread."""
        loop = self._loop
        try:
            if self._stage_now(block):
                self.metrics.inc("runstream_writer_inline_stagings_total")
                return self._stage_block(block, name, number)
            return await loop.run_in_executor(self._pool, self._stage_block, block, name, number)
        except _NotStaged as failed:
            singles = await loop.run_in_executor(
                self._pool, self._write_singles, block, name, failed.entry, failed.cause
            )
            return singles, None

    def _stage_now(self, block: _Block) -> bool:
        """Whether this block is staged in the event loop (see INLINE_STAGE_MAX_REQUESTS)."""
        if block.requests > INLINE_STAGE_MAX_REQUESTS or block.points > INLINE_STAGE_MAX_POINTS:
            return False
        can_stage_now = getattr(self.sink, "can_stage_now", None)
        return can_stage_now is not None and can_stage_now(block.envelopes)

    def _stage_block(
        self, block: _Block, name: str, number: int
    ) -> tuple[list[WriteResult | BaseException], _Staged | None]:
        """In a pool thread, or in the loop for a small block (_stage_now): logs the block and
        stages it; the results per publish, and what waits for the inserts (None: nothing to
        insert, or stored already). Raises _NotStaged when staging fails: _stage then writes the
        publishes one by one, in a thread."""
        envelopes = block.envelopes
        entry = self._log.write(name, envelopes)
        try:
            result, write = self.sink.stage(envelopes, name)
        except Exception as exc:
            raise _NotStaged(entry, exc) from exc
        shares = [_share(result, item) for item in block.items]
        if write is None:
            self._logged.append(entry)  # nothing left to insert: recorded (and removed) with the rest
            return shares, None
        return shares, _Staged(number, name, entry, write)

    def _insert_group(self, group: list[_Staged]) -> None:
        """In a pool thread: inserts queued blocks as one (StoreWriter.insert_staged). Several
        blocks go under a group token, noted in the log first (BlockLog.write_group), so a crash
        re-forms them as one write under the same token. A failure is retried (replay: the
        tokens drop what landed) until the inserts land: the requests are acked. A bus stopping
        meanwhile gives up; the blocks stay in the log, and the next start re-forms them."""
        writes = [staged.write for staged in group]
        blocks = [staged.entry for staged in group]
        if len(group) == 1:
            token, entries = group[0].name, blocks
        else:
            token = f"grp:{self._name}:{group[0].number}-{group[-1].number}"
            try:
                entries = [self._log.write_group(token, blocks), *blocks]  # the group is removed first
            except OSError as exc:  # (a full disk) no group record: each block goes in under its own name
                log.warning(
                    "could not log group %s (%s); inserting its %d blocks one by one", token, exc, len(group)
                )
                for staged in group:
                    self._insert_group([staged])
                return
        delay, replay = 0.1, False
        while True:
            try:
                self.sink.insert_staged(writes, token, replay=replay)
                break
            except Exception as exc:
                log.error(
                    "acked blocks %s (%d requests) not stored yet (%s); retrying in %.1fs",
                    token, sum(s.write.requests for s in group), exc, delay,
                )  # fmt: skip
                if self._stopping.wait(delay):
                    log.error(
                        "acked blocks %s stay in the block log; they are stored at the next start", token
                    )
                    self.sink.abandon_staged(writes)
                    entries = []
                    break
                delay, replay = min(5.0, delay * 2), True
        self._logged.extend(entries)
        with self._applied:
            self._unapplied.difference_update(staged.number for staged in group)
            self._applied.notify_all()

    def wait_applied(self, timeout_s: float = 30.0) -> None:
        """Returns once every block answered before this call is in the store's tables (reads
        call it first: a request acked from the log is then visible to any later read). Raises
        Unavailable after `timeout_s` (a block whose inserts keep failing)."""
        if not self._unapplied:
            return
        if threading.get_ident() == self._loop_thread:
            # the inserts are started from the loop: waiting here would stall them. Every reader
            # of the server reads in a worker thread; a caller on the loop reads without the wait
            log.warning("wait_applied called on the bus's event loop: not waiting (read in a thread)")
            return
        deadline = time.monotonic() + timeout_s
        with self._applied:
            if not self._unapplied:
                return
            last = max(self._unapplied)
            self._readers += 1
        try:
            with contextlib.suppress(RuntimeError):  # (a loop closed meanwhile: nothing to start)
                self._loop.call_soon_threadsafe(self._wake.set)  # a waiting read starts the insert now
            with self._applied:
                while self._unapplied and min(self._unapplied) <= last:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise Unavailable(
                            f"the store has not taken acked requests for {timeout_s:.0f}s (see the server "
                            "log); retry the read later"
                        )
                    self._applied.wait(left)
        finally:
            with self._applied:
                self._readers -= 1

    def _write_singles(self, block: _Block, name: str, entry: LogEntry | None, exc: Exception) -> list:
        """A block failed before it was answered: writes each publish on its own (its own
        tokens), so one request the store cannot take fails alone; a block of one re-raises."""
        self._forget_log(entry)
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

    def _forget_log(self, entry: LogEntry | None) -> None:
        """A block answered without being stored as one: its requests are resent or were written
        one by one under their own tokens, so its record must not re-form it after a crash."""
        if entry is not None and self._log is not None:
            try:
                self._log.remove([entry])
            except OSError as exc:  # re-formed after a restart it finds its requests stored: no harm
                log.warning("could not drop logged block %s (%s)", entry, exc)

    # ---- the block log ------------------------------------------------------------------------

    def _recover(self) -> None:
        """At start: writes every logged block again under its own name, and the blocks of a
        group as one write under the group's token (see block_log.py)."""
        assert self._log is not None
        blocks = list(self._log.pending())
        envelopes_of = {entry: envelopes for entry, _, envelopes in blocks}
        groups: dict[LogEntry, tuple[LogEntry, str, list[LogEntry]]] = {}  # first block -> its group
        grouped: set[LogEntry] = set()
        for group, token, members in self._log.groups():
            if all(m in envelopes_of for m in members):
                groups[members[0]] = (group, token, members)
                grouped.update(members)
            else:  # its removal was cut short, after the record was made durable: alone they are found stored
                self._log.remove([group])
        recovered: list[LogEntry] = []
        for entry, name, envelopes in blocks:
            if entry in groups:
                group, name, members = groups[entry]
                envelopes = [env for member in members for env in envelopes_of[member]]
                entries = [group, *members]
            elif entry in grouped:
                continue  # re-formed with the first block of its group
            else:
                entries = [entry]
            result = self.sink.write(envelopes, token=name, replay=True)
            log.info(
                "re-formed logged block %s: %d requests, %d stored now, %d stored before",
                name, len(envelopes), result.stored, result.duplicates,
            )  # fmt: skip
            recovered += entries
        if recovered:
            self._record_entries(recovered)

    async def _record_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(RECORD_EVERY_S)
            if self._logged and self._pool is not None:
                await loop.run_in_executor(self._pool, self._record)

    def _record(self) -> None:
        entries, self._logged = self._logged, []
        if entries:
            self._record_entries(entries)

    def _record_entries(self, entries: list[LogEntry]) -> None:
        """Makes the record of the blocks' requests durable, then drops them from the log."""
        if self.sink.flush() is False:  # the record could not be written: keep them
            self._logged[:0] = entries
            return
        assert self._log is not None
        try:
            self._log.remove(entries)
        except OSError as exc:  # (a full disk): they stay logged and are noted done at the next try
            log.warning("could not note %d logged blocks as recorded (%s); trying again", len(entries), exc)
            self._logged[:0] = entries


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
