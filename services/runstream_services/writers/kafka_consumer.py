"""The Kafka writer: a consumer-group member that turns bus records into ClickHouse inserts.

Exactly-once visible, even after kill -9:
- records are grouped per partition into blocks of consecutive offsets [first, last];
- before a block is inserted, an intent row (topic, partition, first, last) goes to
  `writer_intents`; the block is written with the token `topic:partition:first:last`
  (the Sink, StoreWriter, passes it on as insert_deduplication_token);
- the offset last+1 is committed only after the insert succeeded, and a partition's next block is
  formed only after that commit;
- when a partition is assigned (start-up, rebalance), an intent whose first offset is at or past
  the committed offset names a block that may be half-written: the writer re-forms exactly that
  block first, so the same token reaches ClickHouse and the duplicate insert is dropped.
StoreWriter additionally skips requests whose (client_id, seq) is already stored, which removes
duplicates the SDK or ingest created by resending (different offsets, same request).

A record no writer can ever store (bus/kafka/dead_letter.py says which) goes to the dead-letter
topic before the offset past it is committed, so its partition keeps flowing: records that fail
the shape check, records the store writer refuses, and - when a whole block fails with a
deterministic error - the one record found guilty by writing the block again record by record.
Transient failures (store or Kafka unreachable) are retried with backoff, as before.

(Over 400 lines on purpose: the block / intent / commit state machine and its dead-letter branch
must be read together; the dead-letter policy itself lives in bus/kafka/dead_letter.py.)
"""

from __future__ import annotations

import asyncio
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


def block_token(topic: str, partition: int, first: int, last: int) -> str:
    return f"{topic}:{partition}:{first}:{last}"


@dataclass
class _Block:
    """Consecutive records of one partition, written and committed together."""

    first: int
    last: int = -1
    envelopes: list[Envelope] = field(default_factory=list)
    records: list = field(default_factory=list)  # the ConsumerRecords, for the dead-letter topic
    points: int = 0
    nbytes: int = 0
    opened: float = field(default_factory=time.monotonic)
    replay_of: tuple[int, int] | None = None  # (first, last) of the intent this block re-forms
    refusal: str = ""  # set on a one-record block whose record cannot even be read: dead-letter it

    def add(self, record, envelope: Envelope) -> None:
        self.envelopes.append(envelope)
        self.records.append(record)
        self.last = record.offset
        self.points += max(1, envelope.points)  # run events count toward a block too
        self.nbytes += len(envelope.payload)

    def singles(self) -> list[_Block]:
        """This block as one block per record (to find the record a deterministic error is about)."""
        return [
            _Block(first=r.offset, last=r.offset, envelopes=[e], records=[r], points=max(1, e.points))
            for r, e in zip(self.records, self.envelopes, strict=True)
        ]


@dataclass
class _PartitionState:
    open: _Block | None = None
    ready: list[_Block] = field(default_factory=list)
    replay: tuple[int, int] | None = None  # intent (first, last) still to re-form
    committed: int | None = None
    generation: int = -1  # the group generation this writer claimed the partition with


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
        self.flush_interval_s = settings.writer_flush_interval_s
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self._flush_lock = asyncio.Lock()
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

    async def start(self) -> None:
        await ensure_topics(self.settings, self.partitions)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=self.settings.kafka_group_id,
            client_id="runstream-writer",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=max(8 << 20, max_record_bytes(self.settings)),
            fetch_max_bytes=max(64 << 20, max_record_bytes(self.settings)),
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
        # The group coordinator calls this from its own task: wait for the blocks being written
        # (and committed) to finish; blocks not yet written are read again by the next owner.
        async with self._flush_lock:
            for tp in revoked:
                self._parts.pop(tp, None)

    async def _on_assigned(self, assigned) -> None:
        # Under the flush lock, like _on_revoked: a block of a partition being written must not
        # have its state reset underneath it.
        async with self._flush_lock:
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
            state = self._parts.setdefault(tp, _PartitionState())
            committed = await consumer.committed(tp)
            if committed is None:
                if beginnings is None:
                    beginnings = await consumer.beginning_offsets(assigned)
                committed = beginnings.get(tp, 0)
            state.committed = committed
            state.generation = generation
            state.open, state.ready, state.replay = None, [], None
            intent = intents.get((tp.topic, tp.partition))
            if intent is not None and intent[0] >= committed and intent[1] >= intent[0]:
                state.replay = intent
                log.info("partition %s:%d: re-forming block %d..%d (written before a crash?)",
                         tp.topic, tp.partition, intent[0], intent[1])  # fmt: skip
            consumer.seek(tp, committed)

    def _claim_and_read_intents(self, assigned, generation: int) -> dict[tuple[str, int], tuple[int, int]]:
        now = int(time.time() * 1000)
        member = self.settings.kafka_group_instance_id or f"pid-{os.getpid()}"
        self.client.insert(
            f"{self.db}.writer_claims",
            [[tp.topic, tp.partition, generation, member, now] for tp in assigned],
            column_names=["topic", "partition", "generation", "member", "time_ms"],
        )
        return self._read_intents(assigned)

    def _fenced(self, tp: TopicPartition) -> bool:
        """True when a newer group generation claimed `tp` than the one this writer holds it with:
        it lost the partition while frozen or cut off (a zombie) and must not insert."""
        state = self._parts.get(tp)
        if state is None:
            return True
        newest = self.client.query(
            f"SELECT max(generation) FROM {self.db}.writer_claims WHERE topic = %(t)s AND partition = %(p)s",
            parameters={"t": tp.topic, "p": tp.partition},
            settings=READ_YOUR_WRITES,
        ).result_rows
        return bool(newest) and newest[0][0] is not None and int(newest[0][0]) > state.generation

    def _read_intents(self, assigned) -> dict[tuple[str, int], tuple[int, int]]:
        topic_names = sorted({tp.topic for tp in assigned})
        rows = self.client.query(
            f"SELECT topic, partition, argMax(first_offset, (last_offset, time_ms)), max(last_offset) "
            f"FROM {self.db}.writer_intents WHERE topic IN %(t)s GROUP BY topic, partition",
            parameters={"t": topic_names},
            settings=READ_YOUR_WRITES,
        ).result_rows
        return {(t, int(p)): (int(first), int(last)) for t, p, first, last in rows}

    # ---- the loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        poll_ms = max(10, int(self.flush_interval_s * 1000))
        while not self._stopping.is_set():
            try:
                batch = await consumer.getmany(timeout_ms=poll_ms)
            except KafkaError as exc:
                self.errors += 1
                log.warning("Kafka poll failed (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            for tp, records in batch.items():
                state = self._parts.get(tp)
                if state is None:  # revoked between fetch and now
                    continue
                for record in records:
                    self._append(state, record)
            await self._flush(force=False)
        await self._flush(force=True)

    def _append(self, state: _PartitionState, record) -> None:
        if state.committed is not None and record.offset < state.committed:
            return  # already stored (a fetch that raced a seek)
        try:
            envelope = envelope_from_record(record)  # headers only: the payload is parsed later
        except Exception as exc:  # headers missing or garbled: no writer can read this record
            if state.replay is not None and record.offset >= state.replay[1]:
                state.replay = None
            self._close(state)
            state.ready.append(
                _Block(first=record.offset, last=record.offset, records=[record],
                       refusal=f"record headers are missing or unreadable ({type(exc).__name__}: {exc})")
            )  # fmt: skip
            return
        replay = state.replay
        if replay is not None and record.offset > replay[1]:  # the intent's block ended in a gap
            state.replay = None
            self._close(state)
        elif replay is not None:
            first, last = replay
            if record.offset >= first and (state.open is None or state.open.replay_of is None):
                self._close(state)  # records before the intent's block form their own block
                state.open = _Block(first=first, replay_of=replay)
            if state.open is None:
                state.open = _Block(first=record.offset)
            state.open.add(record, envelope)
            if record.offset == last:
                state.replay = None
                self._close(state)
            return
        if state.open is None:
            state.open = _Block(first=record.offset)
        state.open.add(record, envelope)
        if state.open.points >= self.max_block_points or state.open.nbytes >= self.max_block_bytes:
            self._close(state)

    @staticmethod
    def _close(state: _PartitionState) -> None:
        if state.open is not None and state.open.envelopes:
            state.ready.append(state.open)
        state.open = None

    async def _flush(self, force: bool) -> None:
        async with self._flush_lock:
            await self._flush_locked(force)

    async def _flush_locked(self, force: bool) -> None:
        now = time.monotonic()
        work = []
        for tp, state in list(self._parts.items()):
            block = state.open
            due = block is not None and (force or now - block.opened >= self.flush_interval_s)
            if due and block.replay_of is None:  # a re-formed block closes only at its last offset
                self._close(state)
            if state.ready:
                work.append(self._write_partition(tp, state))
        if work:
            await asyncio.gather(*work)

    async def _write_partition(self, tp: TopicPartition, state: _PartitionState) -> None:
        while state.ready:
            block = state.ready[0]
            if block.refusal:
                dead = [(record, block.refusal) for record in block.records]
            else:
                outcome = await self._write_block(tp, block)
                if outcome is None:
                    return  # gave up (stopping, or the partition was revoked): it will be replayed
                if isinstance(outcome, str) and len(block.records) > 1:
                    log.warning("block %s:%d@%d..%d failed deterministically (%s): writing it record by record",
                                tp.topic, tp.partition, block.first, block.last, outcome)  # fmt: skip
                    state.ready[0:1] = block.singles()
                    continue
                dead = self._refused_records(block, outcome)
            if dead and not await self._dead_letter(tp, dead):
                return  # stopping or revoked: the next owner reads these records again
            state.ready.pop(0)
            if not await self._commit(tp, block.last + 1):
                state.ready.clear()  # lost the partition: the next owner replays from the intent
                return
            state.committed = block.last + 1

    async def _write_block(self, tp: TopicPartition, block: _Block) -> WriteResult | str | None:
        """The sink's result once the block is written; a str when it failed deterministically
        (why); None when it gave up (stopping or revoked)."""
        first, last = block.replay_of or (block.first, block.last)
        token = block_token(tp.topic, tp.partition, first, last)
        for attempt in range(1_000_000):
            try:
                result = await asyncio.to_thread(
                    self._write_intent_and_block,
                    tp, first, last, block.envelopes, token, block.replay_of is not None,
                )  # fmt: skip
                break
            except Fenced as exc:
                self.fenced_blocks += 1
                log.warning("block %s dropped: %s (the new owner stores it)", token, exc)
                return None
            except Exception as exc:
                self.errors += 1
                if is_deterministic(exc):
                    return f"{type(exc).__name__}: {exc}"
                if self._stopping.is_set() or tp not in self._parts:
                    log.warning("block %s not written (%s); it will be replayed", token, exc)
                    return None
                delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                log.warning("writing block %s failed (%s); retry in %.1f s", token, exc, delay)
                await asyncio.sleep(delay)
        self.blocks_written += 1
        self.records_written += len(block.envelopes)
        self.points_written += block.points
        if block.replay_of is not None:
            self.replayed_blocks += 1
        return result

    def _write_intent_and_block(
        self,
        tp: TopicPartition,
        first: int,
        last: int,
        envelopes: list[Envelope],
        token: str,
        replay: bool = False,
    ) -> WriteResult:
        """Writes the intent, then the envelopes that pass the shape check (a replay of the token
        screens the same records the same way); the others come back in `refused`."""
        self.client.insert(
            f"{self.db}.writer_intents",
            [[tp.topic, tp.partition, first, last, int(time.time() * 1000)]],
            column_names=["topic", "partition", "first_offset", "last_offset", "time_ms"],
        )
        if self._fenced(tp):  # after the intent: see 0009_writer_claims.sql
            raise Fenced(f"{tp.topic}:{tp.partition} was claimed by a newer generation of the group")
        writable, refused = [], {}
        for envelope in envelopes:
            screened, why = screen(envelope)
            if why:
                refused[envelope.idempotency_key] = why
            else:
                writable.append(screened)
        result = self.sink.write(writable, token=token, replay=replay) if writable else WriteResult()
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

    async def _dead_letter(self, tp: TopicPartition, dead: list[tuple[object, str]]) -> bool:
        """Writes the records to the dead-letter topic, retrying while Kafka is unreachable;
        False when it gave up (stopping or revoked)."""
        for record, refusal in dead:
            for attempt in range(1_000_000):
                try:
                    await self.dead_letters.send(tp.topic, tp.partition, record, refusal)
                    break
                except Exception as exc:
                    self.errors += 1
                    if self._stopping.is_set() or tp not in self._parts:
                        return False
                    delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                    log.warning("dead-lettering %s:%d@%d failed (%s); retry in %.1f s",
                                tp.topic, tp.partition, record.offset, exc, delay)  # fmt: skip
                    await asyncio.sleep(delay)
        return True

    async def _commit(self, tp: TopicPartition, offset: int) -> bool:
        consumer = self._consumer
        if consumer is None:
            return False
        for attempt in range(len(RETRY_BACKOFF_S)):
            try:
                await consumer.commit({tp: offset})
                return True
            except (CommitFailedError, IllegalStateError) as exc:
                log.warning("commit of %s:%d at %d refused (%s): partition reassigned", tp.topic,
                            tp.partition, offset, exc)  # fmt: skip
                return False
            except KafkaError as exc:
                self.errors += 1
                log.warning("commit of %s:%d failed (%s); retrying", tp.topic, tp.partition, exc)
                await asyncio.sleep(RETRY_BACKOFF_S[attempt])
        return False


__all__ = ["KafkaWriterLoop", "block_token"]
