"""The Kafka bus's topics: their names, sizes and creation.

A run's RunStart must reach the store before its metrics, and its updates in the order they were
sent. Kafka orders records only within one partition, so everything whose order matters for a run
travels on ONE topic keyed by run_id:

- `<prefix>.runs`        RunStart, RunUpdate, RunFinish and MetricBatch (the run's event stream)
- `<prefix>.artifacts`   ArtifactEvent (inline bytes up to 1 MiB go to the object store on the
                         writer side; kept apart so they never hold back a run's metrics), keyed
                         by project + artifact name: one writer numbers a name's versions
- `<prefix>.run-states`  compacted, one partition: the state each run event set (directory.py)
- `<prefix>.dead-letter` records a writer can never store, with why (dead_letter.py); not consumed

With separate run and metric topics no writer could know, without waiting, whether a metric
batch overtook its RunStart (they would sit in different partitions, maybe on different writers
of the group). Keying one topic by run keeps per-run order through retries (idempotent producer)
and through any number of writers. Artifact manifests do not depend on the run row.
"""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

from runstream_services.config import ServerSettings
from runstream_services.errors import Unavailable

log = logging.getLogger(__name__)

DEFAULT_PARTITIONS = ServerSettings.kafka_partitions
_RECORD_OVERHEAD_BYTES = 64 * 1024  # headers, key and batch framing on top of the payload


def runs_topic(prefix: str) -> str:
    return f"{prefix}.runs"


def artifacts_topic(prefix: str) -> str:
    return f"{prefix}.artifacts"


def run_states_topic(prefix: str) -> str:
    return f"{prefix}.run-states"


def dead_letter_topic(prefix: str) -> str:
    return f"{prefix}.dead-letter"


def topics(prefix: str) -> list[str]:
    """The topics writers consume."""
    return [runs_topic(prefix), artifacts_topic(prefix)]


def all_topics(prefix: str) -> list[str]:
    return [*topics(prefix), run_states_topic(prefix), dead_letter_topic(prefix)]


def topic_for(prefix: str, kind: str) -> str:
    """The topic an envelope of this body kind travels on."""
    return artifacts_topic(prefix) if kind == "artifact" else runs_topic(prefix)


def record_key(envelope) -> bytes:
    """The key an envelope is published under, which picks its partition and so its writer.
    Run events: the run id (a run's events stay in order, on one writer). Artifact events: the
    project and artifact name, so one writer allocates every version of a name, in order; with
    run keys, two runs logging "model" on two writers would both take the next version."""
    if envelope.kind == "artifact":
        request = envelope.request
        if request is None:
            from runstream.v1 import ingest_pb2

            request = ingest_pb2.IngestRequest.FromString(envelope.payload)
        return f"{envelope.project}\x00{request.artifact.name}".encode()
    return envelope.run_id.encode()


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as the Java client) gives `key`."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


async def ping(client, bootstrap: str, what: str) -> None:
    """Readiness of a producer's or consumer's Kafka connection (`client`: its aiokafka client, None
    when `what` is not started): returns once Kafka answered a metadata request, raises otherwise."""
    if client is None:
        raise Unavailable(f"the Kafka {what} is not started (or was stopped)")
    if not await client.fetch_all_metadata():
        raise Unavailable(f"Kafka at {bootstrap} sent no metadata")


def max_record_bytes(settings: ServerSettings) -> int:
    """The largest record the bus takes: the largest ingest request plus framing."""
    return settings.max_message_bytes + _RECORD_OVERHEAD_BYTES


def topic_plan(settings: ServerSettings, brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for new topics on a cluster of `brokers`.
    Refuses (Unavailable, saying what to change) a cluster too small for the configured factor,
    unless kafka_allow_under_replicated, which caps both at what the cluster has."""
    replication, min_isr = settings.kafka_replication_factor, settings.kafka_min_insync_replicas
    if brokers < replication:
        if not settings.kafka_allow_under_replicated:
            raise Unavailable(
                f"Kafka at {settings.kafka_bootstrap} has {brokers} broker(s); topics need replication "
                f"factor {replication} (kafka_replication_factor) so that acked records survive a lost "
                "broker. Add brokers, or for a development cluster set kafka_allow_under_replicated = true"
            )
        replication = max(1, brokers)
        log.warning(
            "Kafka has %d broker(s): topics get replication %d (under-replicated, dev only)",
            brokers,
            replication,
        )
    return replication, max(1, min(min_isr, replication))


def topic_configs(settings: ServerSettings, min_isr: int) -> dict[str, dict[str, str]]:
    """Per-topic configs: the record size limit, retention (dead letters are kept 4x as long, at
    least 30 days: someone has to look at them), min.insync.replicas."""
    prefix = settings.kafka_topic_prefix
    retention_ms = int(settings.kafka_retention_hours * 3600 * 1000)
    common = {"min.insync.replicas": str(min_isr), "max.message.bytes": str(max_record_bytes(settings))}
    return {
        runs_topic(prefix): {**common, "retention.ms": str(retention_ms)},
        artifacts_topic(prefix): {**common, "retention.ms": str(retention_ms)},
        run_states_topic(prefix): {"min.insync.replicas": str(min_isr), "cleanup.policy": "compact"},
        dead_letter_topic(prefix): {**common, "retention.ms": str(max(4 * retention_ms, 30 * 86_400_000))},
    }


async def ensure_topics(settings: ServerSettings, partitions: int | None = None) -> None:
    """Creates the bus topics that are missing (idempotent; safe when several processes race)
    with the configured partitions, replication, min ISR and retention. Existing topics are
    left as they are (change them with Kafka's tools)."""
    partitions = partitions or settings.kafka_partitions
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, client_id="runstream-admin", request_timeout_ms=30000
    )
    try:
        await admin.start()
    except KafkaError as exc:
        raise Unavailable(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in all_topics(settings.kafka_topic_prefix) if t not in existing]
        if not wanted:
            return
        cluster = await admin.describe_cluster()
        replication, min_isr = topic_plan(settings, len(cluster.get("brokers", [])))
        configs = topic_configs(settings, min_isr)
        states = run_states_topic(settings.kafka_topic_prefix)
        new = [
            NewTopic(t, 1 if t == states else partitions, replication, topic_configs=configs[t])
            for t in wanted
        ]
        response = await admin.create_topics(new)
        for topic, code, message in _topic_errors(response):
            if code and code != TopicAlreadyExistsError.errno:
                raise Unavailable(f"Kafka refused to create topic {topic!r}: error {code} {message or ''}")
        log.info(
            "created Kafka topics %s (%d partitions, replication %d, min ISR %d)",
            wanted, partitions, replication, min_isr,
        )  # fmt: skip
    except KafkaError as exc:
        raise Unavailable(f"cannot create Kafka topics at {settings.kafka_bootstrap}: {exc}") from exc
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, prefix: str) -> None:
    """Deletes every topic of the bus with this prefix (tests and benchmarks clean up with it)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(all_topics(prefix))
    finally:
        await admin.close()


def _topic_errors(response) -> list[tuple[str, int, str | None]]:
    out = []
    for item in response.topic_errors:
        topic, code = item[0], item[1]
        out.append((topic, code, item[2] if len(item) > 2 else None))
    return out
