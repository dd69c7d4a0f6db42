"""The run directory: which runs exist, shared by every ingest process on the Kafka bus.

An ingest process refuses requests for runs it does not know, but with Kafka an SDK may reconnect
to another ingest process (or a restarted one) that never saw the run's RunStart, and the store
may lag behind the bus. So KafkaBus also writes the state each run event sets (run_state.py says
which) to the small compacted topic `<prefix>.run-states` (key project/run_id, value the state
name), after the run event is acknowledged and before publish() returns. Every RunDirectory reads
the topic whole at start and then tails it, and answers run_state() from memory: it is the
`directory` source of run_state.RunRegistry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from runstream_services.bus.kafka.topics import run_states_topic
from runstream_services.config import ServerSettings
from runstream_services.errors import Unavailable

log = logging.getLogger(__name__)


def run_key(project: str, run_id: str) -> bytes:
    return f"{project}/{run_id}".encode()


class RunDirectory:
    """Run states from the compacted `<prefix>.run-states` topic: read whole at start, then tailed."""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.topic = run_states_topic(settings.kafka_topic_prefix)
        self._states: dict[tuple[str, str], str] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None

    def run_state(self, project: str, run_id: str) -> str | None:
        """The last state any ingest process published for the run; None when unknown."""
        return self._states.get((project, run_id))

    def __len__(self) -> int:
        return len(self._states)

    async def publish(self, producer: AIOKafkaProducer, changes: list[tuple[str, str, str]]) -> None:
        """Writes (project, run_id, state) changes with `producer` and returns once they are
        acknowledged; this process knows them at once."""
        try:
            futures = [
                await producer.send(self.topic, value=state.encode(), key=run_key(project, run_id))
                for project, run_id, state in changes
            ]
            await asyncio.gather(*futures)
        except KafkaError as exc:
            raise Unavailable(f"Kafka did not take the run states: {exc}") from exc
        for project, run_id, state in changes:
            self._states[(project, run_id)] = state

    def _apply(self, records) -> None:
        for record in records:
            project, _, run_id = record.key.decode().partition("/")
            if record.value is None:
                self._states.pop((project, run_id), None)
            else:
                self._states[(project, run_id)] = record.value.decode()

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id="runstream-run-directory",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        try:
            await consumer.start()
            tp = TopicPartition(self.topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                self._apply(batch.get(tp, []))
        except KafkaError as exc:
            await consumer.stop()
            raise Unavailable(f"cannot read the run directory from Kafka: {exc}") from exc
        self._consumer = consumer
        self._task = asyncio.create_task(self._tail(), name="runstream-run-directory")

    async def _tail(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=1000)
            except KafkaError as exc:
                log.warning("run directory: Kafka read failed (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            for records in batch.values():
                self._apply(records)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
