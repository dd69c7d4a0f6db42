"""The Kafka writer: a consumer-group member that turns bus records into ClickHouse inserts.

Group commit (issue 11): a block gathers the ready records of ALL the partitions this writer owns
(consecutive offsets per partition) for a short bounded window, and is written as one store write
(one insert per table, one dedup token); then the offsets of every partition in it are committed at
once. While a block is being written the next one gathers, so the window adapts to load: an idle
writer writes within GATHER_WINDOW_S, a busy one writes whatever arrived during the last insert
(a second block overlaps only in a backlog; fetching pauses while BACKLOG_BLOCKS blocks' worth
wait). A partition is in at most one block in flight; its next block is formed only after that
commit, so at most one intent per partition is uncommitted, and it is that partition's newest.

Exactly-once visible, even after kill -9 and a rebalance that hands the block's partitions to
DIFFERENT writers:
- before a block is inserted, one intent row per partition goes to `writer_intents`, each naming
  the whole block: `ranges` = every (topic, partition, first, last) (migration 0013). Its token is
  a digest of those ranges (`topic:partition:first:last` for a block of one partition, as before);
- the block's envelopes are ordered by (topic, partition, offset), so the same ranges always give
  the same envelopes in the same order, and StoreWriter the same per-table inserts and tokens;
- offsets are committed only after the insert and the record of its requests (Sink.flush), so an
  intent whose range of a partition is not committed names a block that may be half-written;
- on assignment, such a block is settled by ONE writer: the owner of its leader (lowest)
  partition re-forms the WHOLE block - it reads the block's ranges of every partition straight
  from Kafka (a group-less reader), writes them under the same token with replay=True (which
  recounts the summaries of every series the block touches from `metrics FINAL`), dead-letters
  the refused records of every partition, and commits the partitions it owns. The owners of the
  block's other partitions write nothing of it: they wait until some partition of the block is
  committed past it (done only after the whole block was stored), then commit theirs. Those
  partitions stay blocked meanwhile, so no one writes the runs whose summaries the leader
  recounts (a recount racing another writer's insert could count points twice). If the leader
  dies too, the next owner of the leader partition re-forms the block.
- Two writers re-forming one block cannot happen except with a zombie (below); then the same
  token makes ClickHouse keep one copy (inside its dedup window), and StoreWriter skips every
  request already recorded (client_seqs) - recorded only after all of a write's inserts, in one
  row set (a block holds at most MAX_BLOCK_CLIENTS clients, within StoreWriter's client cache),
  so a replay finds either all of a block's requests recorded or none of those it stored.
- Re-forming a part of a block under its token would be wrong (ClickHouse would drop the rest
  when the other part comes), and under a new token would double what landed, hence the whole.
- A zombie (a writer frozen past its session) checks, after its intent, that no newer generation
  claimed any partition it owns in the block (writer_claims, 0009), else it drops the block.
- A committed offset below an intent's first offset (not produced by this code) leaves a gap: it
  is written first as its own block, token `topic:partition:committed:first-1`, with no intent of
  its own (committed + the intent define it again after a crash).
Exactness rests on: the dedup tokens within ClickHouse's window (100,000 metric blocks, 10,000
for other tables), the client_seqs record for a re-form that runs late, and Kafka still holding
the block's records (retention): records deleted before a re-form cannot be re-formed.

StoreWriter additionally skips requests whose (client_id, seq) is already stored, which removes
duplicates the SDK or ingest created by resending (different offsets, same request).

A record no writer can ever store (bus/kafka/dead_letter.py says which) goes to the dead-letter
topic before the offsets past it are committed, so its partition keeps flowing: records whose
headers cannot be read, records that fail the shape check, records the store writer refuses, and
- when a whole block fails with a deterministic error - the one record found guilty by writing
the block again record by record (each under `topic:partition:offset:offset`, no intent: the
block's intent re-forms and splits the same way). Transient failures (store or Kafka unreachable)
are retried with backoff.

(Over 400 lines on purpose: the block / intent / commit state machine, its re-form and its
dead-letter branch must be read together; the dead-letter policy lives in bus/kafka/dead_letter.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from clickhouse_connect.driver.client import Client

from runstream_services.bus.base import Envelope, Sink, WriteResult
from runstream_services.bus.kafka.dead_letter import DeadLetters, is_deterministic, screen
from runstream_services.bus.kafka.headers import envelope_from_record
from runstream_services.bus.kafka.topics import (
    ensure_topics,
    max_record_bytes,
    partition_for,
    runs_topic,
    topics,
)
from runstream_services.bus.kafka.topics import (
    ping as kafka_ping,
)
from runstream_services.config import ServerSettings
from runstream_services.errors import Unavailable
from runstream_services.metrics_http import Metrics
from runstream_services.storage.clickhouse import READ_YOUR_WRITES, connect

log = logging.getLogger("runstream.kafka_writer")

RETRY_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
MAX_BLOCK_BYTES_FACTOR = 4  # a block holds at most this many max-size messages' worth of bytes
#: clients per block: StoreWriter records a write's seqs in one row set while its clients fit its
#: cache (store.MAX_CACHED_CLIENTS, 4096), which keeps "all recorded or none" for a re-form
MAX_BLOCK_CLIENTS = 4096
MAX_BLOCK_RECORDS = 16_384  # requests per block (bounds one write's Python work and memory)
GATHER_WINDOW_S = 0.02  # an idle writer waits this long for more records before it writes
#: a second block goes in while one is being written only when this many points (or a full block of
#: requests) wait: as on the embedded bus, small blocks are Python work, two at once only take twice
#: as long each; in a backlog two overlap (one's chDB insert, the GIL released, with the other's
#: Python work)
OVERLAP_MIN_POINTS = 100_000
REPLAY_READ_TIMEOUT_S = 30.0
BACKLOG_BLOCKS = 4  # fetching pauses while this many full blocks' worth of records wait

Ranges = dict[TopicPartition, tuple[int, int]]


def block_token(topic: str, partition: int, first: int, last: int) -> str:
    return f"{topic}:{partition}:{first}:{last}"


def ranges_text(ranges: Ranges) -> str:
    return ",".join(f"{tp.topic}:{tp.partition}:{f}:{la}" for tp, (f, la) in sorted(ranges.items()))


def parse_ranges(text: str) -> Ranges:
    out: Ranges = {}
    for item in text.split(","):
        topic, partition, first, last = item.rsplit(":", 3)
        out[TopicPartition(topic, int(partition))] = (int(first), int(last))
    return out


def ranges_token(ranges: Ranges) -> str:
    """The block's dedup token: `topic:partition:first:last` for one partition (as before blocks
    spanned partitions), else a digest of all its ranges."""
    if len(ranges) == 1:
        ((tp, (first, last)),) = ranges.items()
        return block_token(tp.topic, tp.partition, first, last)
    return "blk:" + hashlib.sha256(ranges_text(ranges).encode()).hexdigest()[:40]


_Item = tuple  # (ConsumerRecord, Envelope or None, why it cannot be read)


def decode(record) -> _Item:
    """The record with its envelope (headers only: the payload is parsed later), or why no writer
    can read it."""
    try:
        return record, envelope_from_record(record), ""
    except Exception as exc:  # headers missing or garbled
        return record, None, f"record headers are missing or unreadable ({type(exc).__name__}: {exc})"


@dataclass
class _Block:
    """Records of one or more partitions (consecutive offsets each), written and committed together."""

    ranges: Ranges
    envelopes: list[Envelope] = field(default_factory=list)
    records: list = field(default_factory=list)  # the ConsumerRecords of `envelopes`, same order
    unreadable: list = field(default_factory=list)  # (record, why): headers missing or garbled
    points: int = 0
    replay: bool = False  # re-formed from an intent after a crash or a rebalance
    intent: bool = True  # False: its boundaries are implied (singles of a split block, a gap)
    owned: frozenset = frozenset()  # the partitions this writer commits (a re-form reads others)
    token: str = ""

    def __post_init__(self):
        self.token = self.token or ranges_token(self.ranges)
        self.owned = self.owned or frozenset(self.ranges)

    @classmethod
    def of(cls, ranges: Ranges, items: Iterable[_Item], **kw) -> _Block:
        """The block of `items` (sorted by partition, then offset: a re-form gets the same order)."""
        block = cls(ranges=ranges, **kw)
        for record, envelope, why in sorted(items, key=lambda i: (i[0].topic, i[0].partition, i[0].offset)):
            if envelope is None:  # no writer can read this record
                block.unreadable.append((record, why))
                continue
            block.envelopes.append(envelope)
            block.records.append(record)
            block.points += max(1, envelope.points)  # run events count toward a block too
        return block

    def singles(self) -> list[_Block]:
        """This block as one block per record (to find the record a deterministic error is about)."""
        out = []
        for record in self.records:
            tp = TopicPartition(record.topic, record.partition)
            single = _Block.of({tp: (record.offset, record.offset)}, [decode(record)], replay=self.replay,
                               intent=False, owned=self.owned)  # fmt: skip
            out.append(single)
        return out


@dataclass
class _PartitionState:
    committed: int | None = None
    next: int = 0  # the offset the next fetched record must have at least
    generation: int = -1  # the group generation this writer claimed the partition with
    pending: list = field(default_factory=list)  # fetched records (decoded), in no block yet
    pending_points: int = 0
    since: float = 0.0  # when the oldest pending record arrived
    busy: bool = False  # in a block being written
    stalled: bool = False  # a block of it was given up (stopping, fenced): wait for a re-assignment
    replay: Ranges | None = None  # the intent to re-form before anything else


class Fenced(Exception):
    """This writer lost the partition to a newer group generation (see _fenced)."""


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, loop: KafkaWriterLoop):
        self.loop = loop

    async def on_partitions_revoked(self, revoked):
        await self.loop._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned):
        await self.loop._on_assigned(assigned)


class KafkaWriterLoop:
    """Consumes the bus topics in group `settings.kafka_group_id` and writes through
    `sink.write(envelopes, token=...)` (called in a worker thread). `client` (default: a new
    connection to the settings' store) holds the `writer_intents` table in
    `settings.clickhouse_database`; `metrics` receives the loop's samples."""

    def __init__(
        self,
        settings: ServerSettings,
        sink: Sink,
        *,
        client: Client | None = None,
        metrics: Metrics | None = None,
        partitions: int | None = None,
    ):
        if not settings.kafka_bootstrap:
            raise Unavailable(
                "the Kafka writer needs kafka_bootstrap (host:port) / RUNSTREAM_KAFKA_BOOTSTRAP"
            )
        self.settings = settings
        self.sink = sink
        self.client = client if client is not None else connect(settings.resolved_clickhouse_dsn)
        self.db = settings.clickhouse_database
        self.partitions = partitions or settings.kafka_partitions
        self.topics = topics(settings.kafka_topic_prefix)
        self.max_block_points = settings.writer_max_block_points
        self.max_block_bytes = MAX_BLOCK_BYTES_FACTOR * max_record_bytes(settings)
        self.max_blocks = max(1, settings.writer_blocks_in_flight)
        self.flush_interval_s = settings.writer_flush_interval_s
        self.gather_s = min(GATHER_WINDOW_S, self.flush_interval_s)
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()  # forming blocks vs. (re)assignment
        self._inflight: set[asyncio.Task] = set()
        self._revoking = False
        self._parts: dict[TopicPartition, _PartitionState] = {}
        # counters, also exported through `collect()`
        self.blocks_written = 0
        self.records_written = 0
        self.points_written = 0
        self.replayed_blocks = 0
        self.fenced_blocks = 0  # blocks a zombie of this writer dropped (a newer owner claimed them)
        self.errors = 0
        self.dead_letters = DeadLetters(settings)
        if metrics is not None:
            metrics.add_collector(self.collect)

    # ---- lifecycle ----------------------------------------------------------------------------

    def _consumer_options(self) -> dict:
        return dict(
            bootstrap_servers=self.settings.kafka_bootstrap,
            enable_auto_commit=False,
            max_partition_fetch_bytes=max(8 << 20, max_record_bytes(self.settings)),
            fetch_max_bytes=max(64 << 20, max_record_bytes(self.settings)),
        )

    async def start(self) -> None:
        await ensure_topics(self.settings, self.partitions)
        consumer = AIOKafkaConsumer(
            **self._consumer_options(),
            group_id=self.settings.kafka_group_id,
            client_id="runstream-writer",
            auto_offset_reset="earliest",
            fetch_max_wait_ms=max(10, int(self.flush_interval_s * 1000)),
            max_poll_interval_ms=600_000,  # a slow insert must not cost the partition
            # static membership: a restart under the same id keeps its partitions, no rebalance
            group_instance_id=self.settings.kafka_group_instance_id or None,
        )
        await self.dead_letters.start()
        consumer.subscribe(self.topics, listener=_Rebalance(self))
        self._consumer = consumer  # before start(): the first assignment may arrive during it
        try:
            await consumer.start()
        except KafkaError as exc:
            self._consumer = None
            await consumer.stop()
            await self.dead_letters.stop()
            raise Unavailable(f"cannot reach Kafka at {self.settings.kafka_bootstrap}: {exc}") from exc
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="runstream-kafka-writer")

    async def stop(self) -> None:
        """Writes and commits what was already read, then leaves the group. Idempotent."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await task
            except Exception:
                log.exception("Kafka writer loop ended with an error")
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
        await self.dead_letters.stop()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # ---- lag ----------------------------------------------------------------------------------

    def lag(self) -> dict[tuple[str, int], int]:
        """Records of each assigned partition not yet stored: high watermark - committed."""
        consumer = self._consumer
        out: dict[tuple[str, int], int] = {}
        if consumer is None:
            return out
        for tp, state in list(self._parts.items()):
            high = consumer.highwater(tp)
            if high is None:
                continue
            done = state.committed if state.committed is not None else 0
            out[(tp.topic, tp.partition)] = max(0, high - done)
        return out

    def total_lag(self) -> int:
        return sum(self.lag().values())

    def collect(self) -> Iterable[tuple[str, dict[str, str], float]]:
        """Prometheus samples (Metrics.add_collector)."""
        for (topic, partition), value in self.lag().items():
            yield "runstream_kafka_writer_lag_records", {"topic": topic, "partition": str(partition)}, value
        yield "runstream_kafka_writer_lag_records_total", {}, self.total_lag()
        yield "runstream_kafka_writer_partitions", {"state": "assigned"}, len(self._parts)
        yield "runstream_kafka_writer_partitions", {"state": "lag_known"}, len(self.lag())
        yield "runstream_kafka_writer_blocks_total", {}, self.blocks_written
        yield "runstream_kafka_writer_records_total", {}, self.records_written
        yield "runstream_kafka_writer_replayed_blocks_total", {}, self.replayed_blocks
        yield "runstream_kafka_writer_fenced_blocks_total", {}, self.fenced_blocks
        yield "runstream_kafka_writer_points_total", {}, self.points_written
        yield "runstream_kafka_writer_errors_total", {}, self.errors
        yield "runstream_dead_letters_total", {}, self.dead_letters.count

    # ---- rebalance ----------------------------------------------------------------------------

    async def ping(self) -> None:
        """Returns once Kafka answered a metadata request (readiness); raises when it did not."""
        consumer = self._consumer
        await kafka_ping(
            consumer._client if consumer is not None else None, self.settings.kafka_bootstrap, "writer"
        )

    def owns_run(self, project: str, run_id: str) -> bool:
        """Whether this writer holds the partition of the run's events now: it alone stores them,
        so it alone may judge the run silent (crash detection) without racing another writer."""
        consumer, topic = self._consumer, runs_topic(self.settings.kafka_topic_prefix)
        partitions = consumer.partitions_for_topic(topic) if consumer is not None else None
        if not partitions:
            return False
        tp = TopicPartition(topic, partition_for(run_id.encode(), len(partitions)))
        return tp in self._parts

    async def _on_revoked(self, revoked) -> None:
        # The group coordinator calls this from its own task: the blocks being written finish (and
        # commit) first; records in no block yet are read again by the next owner.
        async with self._lock:
            self._revoking = True  # a wait for another writer's re-form gives up (it may need this rebalance)
            try:
                if self._inflight:
                    await asyncio.wait(set(self._inflight))
            finally:
                self._revoking = False
            for tp in revoked:
                self._parts.pop(tp, None)

    async def _on_assigned(self, assigned) -> None:
        async with self._lock:
            await self._assign(assigned)

    async def _assign(self, assigned) -> None:
        consumer = self._consumer
        assigned = list(assigned)
        if not assigned or consumer is None:
            return
        generation = int(getattr(getattr(consumer, "_coordinator", None), "generation", -1) or -1)
        # claim first, then read the intents: a zombie's intent is seen here, or it sees this claim
        intents = await asyncio.to_thread(self._claim_and_read_intents, assigned, generation)
        # while a partition was away another writer may have stored its runs' requests (issue 10)
        await asyncio.to_thread(self.sink.forget)
        beginnings = None
        for tp in assigned:
            committed = await consumer.committed(tp)
            if committed is None:
                if beginnings is None:
                    beginnings = await consumer.beginning_offsets(assigned)
                committed = beginnings.get(tp, 0)
            state = self._parts[tp] = _PartitionState(
                committed=committed, next=committed, generation=generation
            )
            intent = intents.get((tp.topic, tp.partition))
            if intent is not None:
                first, last, text = intent
                if last >= committed and last >= first:
                    state.replay = parse_ranges(text) if text else {tp: (first, last)}
                    state.replay[tp] = (first, last)
                    state.next = last + 1  # the re-form reads its records itself
                    log.info("partition %s:%d: re-forming block %s (written before a crash?)",
                             tp.topic, tp.partition, ranges_text(state.replay))  # fmt: skip
            consumer.seek(tp, state.next)

    def _claim_and_read_intents(
        self, assigned, generation: int
    ) -> dict[tuple[str, int], tuple[int, int, str]]:
        now = int(time.time() * 1000)
        member = self.settings.kafka_group_instance_id or f"pid-{os.getpid()}"
        self.client.insert(
            f"{self.db}.writer_claims",
            [[tp.topic, tp.partition, generation, member, now] for tp in assigned],
            column_names=["topic", "partition", "generation", "member", "time_ms"],
        )
        topic_names = sorted({tp.topic for tp in assigned})
        rows = self.client.query(
            f"SELECT topic, partition, argMax((first_offset, last_offset, ranges), (last_offset, time_ms)) "
            f"FROM {self.db}.writer_intents WHERE topic IN %(t)s GROUP BY topic, partition",
            parameters={"t": topic_names},
            settings=READ_YOUR_WRITES,
        ).result_rows
        return {(t, int(p)): (int(i[0]), int(i[1]), str(i[2])) for t, p, i in rows}

    def _insert_intent(self, ranges: Ranges) -> None:
        """One intent row per partition of a block, each naming the whole block. One INSERT ...
        VALUES with the literals bound here: clickhouse-connect's insert() first asks for the
        column types (a DESCRIBE) and, on chDB, writes a Native file to insert from, two engine
        calls and a file where this is one call (4.4-6.1 -> 2.5 ms idle; 25.8 -> 8.4 ms while
        another thread holds the GIL, as ingest's does under load, and every block waits for its
        intent)."""
        now, text = int(time.time() * 1000), ranges_text(ranges) if len(ranges) > 1 else ""
        rows, parameters = [], {"now": now, "ranges": text}
        for i, (tp, (first, last)) in enumerate(ranges.items()):
            rows.append(f"(%(t{i})s, %(p{i})s, %(f{i})s, %(l{i})s, %(now)s, %(ranges)s)")
            parameters.update({f"t{i}": tp.topic, f"p{i}": tp.partition, f"f{i}": first, f"l{i}": last})
        self.client.command(
            f"INSERT INTO {self.db}.writer_intents "
            f"(topic, partition, first_offset, last_offset, time_ms, ranges) VALUES {', '.join(rows)}",
            parameters=parameters,
        )

    def _fenced(self, owned: Iterable[TopicPartition]) -> bool:
        """True when a newer group generation claimed one of `owned` than the one this writer holds
        it with: it lost the partition while frozen or cut off (a zombie) and must not insert."""
        owned = list(owned)
        states = {tp: self._parts.get(tp) for tp in owned}
        if any(s is None for s in states.values()):
            return True
        rows = self.client.query(
            f"SELECT topic, partition, max(generation) FROM {self.db}.writer_claims "
            f"WHERE (topic, partition) IN %(tps)s GROUP BY topic, partition",
            parameters={"tps": [(tp.topic, tp.partition) for tp in owned]},
            settings=READ_YOUR_WRITES,
        ).result_rows
        for topic, partition, newest in rows:
            state = states.get(TopicPartition(topic, int(partition)))
            if state is not None and newest is not None and int(newest) > state.generation:
                return True
        return False

    # ---- the loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        poll_ms = max(10, int(self.flush_interval_s * 1000))
        fetch: asyncio.Task | None = None
        try:
            while not self._stopping.is_set():
                if fetch is None and not self._backlogged():
                    fetch = asyncio.ensure_future(consumer.getmany(timeout_ms=poll_ms))
                waits = {fetch, *self._inflight} - {None}
                done: set = set()
                if waits:
                    done, _ = await asyncio.wait(
                        waits, timeout=self._gather_wait(), return_when=asyncio.FIRST_COMPLETED
                    )
                else:  # backlogged, nothing in flight: the next block is due within the window
                    await asyncio.sleep(self._gather_wait())
                if fetch in done:
                    batch, fetch = fetch, None
                    try:
                        self._take(batch.result())
                    except KafkaError as exc:
                        self.errors += 1
                        log.warning("Kafka poll failed (%s); retrying", exc)
                        await asyncio.sleep(1.0)
                await self._launch(force=False)
        finally:
            if fetch is not None:
                fetch.cancel()
                with contextlib.suppress(BaseException):
                    await fetch
        while True:  # stopping: write and commit what was read
            await self._launch(force=True)
            if not self._inflight:
                break
            await asyncio.wait(set(self._inflight))

    def _take(self, batch: dict) -> None:
        now = time.monotonic()
        for tp, records in batch.items():
            state = self._parts.get(tp)
            if state is None or state.stalled:  # revoked between fetch and now, or given up
                continue
            for record in records:
                if record.offset < state.next:
                    continue  # already stored or being re-formed (a fetch that raced a seek)
                if not state.pending:
                    state.since = now
                item = decode(record)
                state.pending.append(item)
                state.pending_points += max(1, item[1].points) if item[1] is not None else 1
                state.next = record.offset + 1

    def _backlogged(self) -> bool:
        """True when enough records wait for blocks: fetching more would only hold them in memory."""
        return sum(len(s.pending) for s in self._parts.values()) >= BACKLOG_BLOCKS * MAX_BLOCK_RECORDS

    def _gather_wait(self) -> float:
        """How long the loop may wait for records before a pending block is due (a block in
        flight wakes it when it ends)."""
        oldest = [s.since for s in self._parts.values() if s.pending and not s.busy and not s.stalled]
        if not oldest or self._inflight:
            return max(0.01, self.flush_interval_s)
        return max(0.0, min(oldest) + self.gather_s - time.monotonic())

    async def _launch(self, force: bool) -> None:
        """Starts the re-forms due, then as many new blocks as may be in flight."""
        async with self._lock:
            if self._consumer is None:
                return
            replays: dict[str, tuple[Ranges, set]] = {}
            for tp, state in sorted(self._parts.items()):
                if state.replay is not None and not state.busy and not state.stalled:
                    ranges = state.replay
                    replays.setdefault(ranges_token(ranges), (ranges, set()))[1].add(tp)
            for ranges, owned in replays.values():
                for tp in owned:
                    self._parts[tp].busy = True
                self._spawn(self._replay(ranges, frozenset(owned)))
            while len(self._inflight) < self.max_blocks:
                ready = [(tp, s) for tp, s in sorted(self._parts.items())
                         if s.pending and not s.busy and not s.stalled and s.replay is None]  # fmt: skip
                if not ready:
                    return
                if self._inflight and not force and not self._full_block_waits(ready):
                    return
                if not force and time.monotonic() - min(s.since for _, s in ready) < self.gather_s:
                    return
                self._spawn(self._write(self._form(ready)))

    def _full_block_waits(self, ready: list[tuple[TopicPartition, _PartitionState]]) -> bool:
        """A second block goes in only when a full one waits (a backlog): many points, or as
        many requests as a block of distinct clients takes."""
        return (
            sum(s.pending_points for _, s in ready) >= OVERLAP_MIN_POINTS
            or sum(len(s.pending) for _, s in ready) >= MAX_BLOCK_CLIENTS
        )

    def _form(self, ready: list[tuple[TopicPartition, _PartitionState]]) -> _Block:
        """A block of the pending records of `ready`, up to the block limits."""
        taken: list = []
        ranges: Ranges = {}
        clients: set[str] = set()
        nbytes = points = 0
        now = time.monotonic()
        for tp, state in ready:
            cut = 0
            for record, envelope, _ in state.pending:
                if (
                    len(taken) + cut >= MAX_BLOCK_RECORDS
                    or nbytes >= self.max_block_bytes
                    or points >= self.max_block_points
                    or (
                        envelope is not None
                        and envelope.client_id not in clients
                        and len(clients) >= MAX_BLOCK_CLIENTS
                    )
                ):
                    break
                if envelope is not None:
                    clients.add(envelope.client_id)
                cut += 1
                nbytes += record.serialized_value_size
                points += max(1, envelope.points) if envelope is not None else 1
            if not cut:
                break
            part, state.pending = state.pending[:cut], state.pending[cut:]
            state.pending_points = sum(max(1, e.points) if e is not None else 1 for _, e, _ in state.pending)
            state.since = now if state.pending else 0.0
            state.busy = True
            taken.extend(part)
            ranges[tp] = (part[0][0].offset, part[-1][0].offset)
        return _Block.of(ranges, taken)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._inflight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a Kafka writer block failed", exc_info=task.exception())

    # ---- one block: write, dead-letter, commit ------------------------------------------------

    async def _write(self, block: _Block) -> bool:
        """Writes, dead-letters and commits `block`; True when its offsets are committed. Frees its
        partitions either way (stalls them when it gave up: their next owner re-forms it)."""
        ok = False
        try:
            ok = await self._write_and_commit(block)
        finally:
            for tp in block.owned:
                state = self._parts.get(tp)
                if state is not None:
                    state.busy = False
                    if not ok:
                        state.stalled, state.pending = True, []
        return ok

    async def _write_and_commit(self, block: _Block) -> bool:
        outcome = await self._store(block)
        if outcome is None:
            return False  # gave up (stopping, revoked or fenced): it will be replayed
        if isinstance(outcome, str) and len(block.records) > 1:
            log.warning("block %s failed deterministically (%s): writing it record by record",
                        ranges_text(block.ranges), outcome)  # fmt: skip
            dead = []
            for single in block.singles():
                result = await self._store(single)
                if result is None:
                    return False
                dead += self._refused_records(single, result)
        else:
            dead = self._refused_records(block, outcome)
        dead = block.unreadable + dead  # a re-form's leader dead-letters those of every partition
        if dead and not await self._dead_letter(dead, block.owned):
            return False  # stopping or revoked: the next owner reads these records again
        offsets = {tp: block.ranges[tp][1] + 1 for tp in block.owned}
        if not await self._commit(offsets):
            return False  # lost the partitions: the next owner replays from the intent
        for tp, offset in offsets.items():
            state = self._parts.get(tp)
            if state is not None:
                state.committed = offset
        return True

    async def _replay(self, ranges: Ranges, owned: frozenset) -> None:
        """Settles the possibly half-written block of `ranges` for the partitions of it this
        writer owns. The owner of its leader (lowest) partition re-forms it whole (every
        partition's records, read from Kafka) and commits its own partitions; the owners of its
        other partitions wait until the leader is committed past the block, then commit theirs
        without writing. So one writer re-forms a block, while no other writes the runs of its
        partitions, and the summaries it recounts (replay=True) race with no one. A gap before an
        owned range is written first."""
        ok = False
        try:
            if not await self._write_gaps(ranges, owned):
                return
            if min(ranges) in owned:
                records = await self._read_ranges(ranges, owned)
                if records is None:
                    return
                block = _Block.of(
                    ranges, [decode(r) for rs in records.values() for r in rs], replay=True, owned=owned
                )
                ok = await self._write_and_commit(block)
                if ok:
                    self.replayed_blocks += 1
            elif await self._block_done(ranges, owned):
                ok = await self._commit({tp: ranges[tp][1] + 1 for tp in owned})
                if ok:
                    for tp in owned:
                        self._parts[tp].committed = ranges[tp][1] + 1
        finally:
            for tp in owned:
                state = self._parts.get(tp)
                if state is not None:
                    state.busy, state.replay = False, None
                    if not ok:
                        state.stalled, state.pending = True, []

    async def _block_done(self, ranges: Ranges, owned: frozenset) -> bool:
        """Waits until a partition of the block is committed past it (only after the whole block
        was stored); False when it gave up (stopping, or a rebalance began: the leader partition
        may be waiting for it to be assigned)."""
        others = [tp for tp in sorted(ranges) if tp not in owned]
        while not self._stopping.is_set() and not self._revoking and all(tp in self._parts for tp in owned):
            consumer = self._consumer
            try:
                for tp in others:
                    committed = await consumer.committed(tp) if consumer is not None else None
                    if committed is not None and committed > ranges[tp][1]:
                        return True
            except KafkaError as exc:
                self.errors += 1
                log.warning("reading the group's offsets failed (%s); retrying", exc)
            await asyncio.sleep(0.2)
        return False

    async def _write_gaps(self, ranges: Ranges, owned: frozenset) -> bool:
        """Writes the records between an owned partition's committed offset and its range of the
        block (not produced by this writer; an older one's commit failure could leave one)."""
        gaps = {}
        for tp in owned:
            state = self._parts.get(tp)
            if state is not None and state.committed is not None and state.committed < ranges[tp][0]:
                gaps[tp] = (state.committed, ranges[tp][0] - 1)
        if not gaps:
            return True
        records = await self._read_ranges(gaps, owned)
        if records is None:
            return False
        for tp, (first, last) in gaps.items():
            log.warning("partition %s:%d: offsets %d..%d were committed past no intent: writing them first",
                        tp.topic, tp.partition, first, last)  # fmt: skip
            gap = _Block.of({tp: (first, last)}, [decode(r) for r in records[tp]], replay=True, intent=False)
            if not await self._write_and_commit(gap):
                return False
        return True

    async def _read_ranges(self, ranges: Ranges, owned: frozenset) -> dict | None:
        """The records of `ranges`, read by a reader outside the group (it commits nothing); None
        when it gave up (stopping or revoked). Retries while Kafka is unreachable."""
        for attempt in range(1_000_000):
            if self._stopping.is_set() or any(tp not in self._parts for tp in owned):
                return None
            reader = AIOKafkaConsumer(**self._consumer_options(), group_id=None,
                                      client_id="runstream-writer-replay", auto_offset_reset="earliest")  # fmt: skip
            try:
                await reader.start()
                reader.assign(list(ranges))
                for tp, (first, _) in ranges.items():
                    reader.seek(tp, first)
                out: dict = {tp: [] for tp in ranges}
                todo = set(ranges)
                deadline = time.monotonic() + REPLAY_READ_TIMEOUT_S
                while todo:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"records of {ranges_text(ranges)} not read within {REPLAY_READ_TIMEOUT_S} s"
                        )
                    batch = await reader.getmany(*todo, timeout_ms=500)
                    for tp, records in batch.items():
                        first, last = ranges[tp]
                        out[tp] += [r for r in records if first <= r.offset <= last]
                    for tp in list(todo):
                        if await reader.position(tp) > ranges[tp][1]:
                            todo.discard(tp)
                            reader.pause(tp)
                got = sum(len(v) for v in out.values())
                want = sum(last - first + 1 for first, last in ranges.values())
                if got < want:  # offsets are consecutive on these topics; fewer: deleted (retention)
                    log.error("re-forming %s: %d of its %d records are gone from Kafka (retention?)",
                              ranges_text(ranges), want - got, want)  # fmt: skip
                return out
            except (KafkaError, TimeoutError, OSError) as exc:
                self.errors += 1
                delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                log.warning(
                    "reading %s to re-form it failed (%s); retry in %.1f s", ranges_text(ranges), exc, delay
                )
                await asyncio.sleep(delay)
            finally:
                await reader.stop()
        return None

    async def _store(self, block: _Block) -> WriteResult | str | None:
        """The sink's result once the block is written; a str when it failed deterministically
        (why); None when it gave up (stopping, revoked or fenced)."""
        for attempt in range(1_000_000):
            try:
                result = await asyncio.to_thread(self._write_intent_and_block, block)
                break
            except Fenced as exc:
                self.fenced_blocks += 1
                log.warning("block %s dropped: %s (the new owner stores it)", block.token, exc)
                return None
            except Exception as exc:
                self.errors += 1
                if is_deterministic(exc):
                    return f"{type(exc).__name__}: {exc}"
                if self._stopping.is_set() or any(tp not in self._parts for tp in block.owned):
                    log.warning("block %s not written (%s); it will be replayed", block.token, exc)
                    return None
                delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                log.warning("writing block %s failed (%s); retry in %.1f s", block.token, exc, delay)
                await asyncio.sleep(delay)
        self.blocks_written += 1
        self.records_written += len(block.envelopes)
        self.points_written += block.points
        return result

    def _write_intent_and_block(self, block: _Block) -> WriteResult:
        """Writes the intent (one row per partition, each naming the whole block), then the
        envelopes that pass the shape check (a replay of the token screens the same records the
        same way); the others come back in `refused`."""
        if block.intent and not block.replay:
            self._insert_intent(block.ranges)
        if self._fenced(block.owned):  # after the intent: see 0009_writer_claims.sql
            raise Fenced(f"{ranges_text(block.ranges)} was claimed by a newer generation of the group")
        writable, refused = [], {}
        for envelope in block.envelopes:
            screened, why = screen(envelope)
            if why:
                refused[envelope.idempotency_key] = why
            else:
                writable.append(screened)
        # logged: past the intent and the fence, a crash re-forms this block from Kafka (a split
        # block's singles and a gap too: module docstring), so its rows may be shown before their
        # inserts, as the embedded bus shows a block from its log (server.sole_writer says where a
        # read cache listens)
        result = (
            self.sink.write(writable, token=block.token, replay=block.replay, logged=True)
            if writable
            else WriteResult()
        )
        # The offset commit that follows ends replays of this block: its request keys must be
        # recorded first (the writer otherwise records them in the background).
        self.sink.flush()
        result.refused.update(refused)
        return result

    @staticmethod
    def _refused_records(block: _Block, outcome: WriteResult | str) -> list[tuple[object, str]]:
        """The block's records to dead-letter, each with its refusal."""
        if isinstance(outcome, str):  # a one-record block failed deterministically
            return [(record, outcome) for record in block.records]
        refused = outcome.refused
        return [
            (record, refused[env.idempotency_key])
            for record, env in zip(block.records, block.envelopes, strict=True)
            if env.idempotency_key in refused
        ]

    async def _dead_letter(self, dead: list[tuple[object, str]], owned: Iterable[TopicPartition]) -> bool:
        """Writes the records to the dead-letter topic, retrying while Kafka is unreachable;
        False when it gave up (stopping or revoked)."""
        for record, refusal in dead:
            tp = TopicPartition(record.topic, record.partition)
            for attempt in range(1_000_000):
                try:
                    await self.dead_letters.send(tp.topic, tp.partition, record, refusal)
                    break
                except Exception as exc:
                    self.errors += 1
                    if self._stopping.is_set() or any(t not in self._parts for t in owned):
                        return False
                    delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                    log.warning("dead-lettering %s:%d@%d failed (%s); retry in %.1f s",
                                tp.topic, tp.partition, record.offset, exc, delay)  # fmt: skip
                    await asyncio.sleep(delay)
        return True

    async def _commit(self, offsets: dict[TopicPartition, int]) -> bool:
        """Commits every partition of a block at once; retries while Kafka is unreachable and the
        partitions are still this writer's (a later block must not be formed past an uncommitted
        one); False when they were reassigned or the writer is stopping."""
        for attempt in range(1_000_000):
            consumer = self._consumer
            if consumer is None or any(tp not in self._parts for tp in offsets):
                return False
            try:
                await consumer.commit(offsets)
                return True
            except (CommitFailedError, IllegalStateError) as exc:
                log.warning("commit of %s refused (%s): partitions reassigned",
                            ", ".join(f"{tp.topic}:{tp.partition}@{o}" for tp, o in offsets.items()), exc)  # fmt: skip
                return False
            except KafkaError as exc:
                self.errors += 1
                if self._stopping.is_set() and attempt >= len(RETRY_BACKOFF_S):
                    return False
                log.warning("commit of %d partitions failed (%s); retrying", len(offsets), exc)
                await asyncio.sleep(RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)])
        return False


__all__ = ["KafkaWriterLoop", "block_token", "parse_ranges", "ranges_text", "ranges_token"]
