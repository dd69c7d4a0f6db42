"""The Kafka bus (cluster mode), one job per module:

- topics.py     topic names, sizes, ensure_topics / delete_topics (the admin side)
- headers.py    the record layout: Envelope <-> Kafka record (key, value, headers)
- directory.py  RunDirectory: run states shared by every ingest process (compacted topic)
- producer.py   KafkaBus: publish() with an idempotent acks=all producer
- dead_letter.py  records no writer can store: how they are told apart, and `<prefix>.dead-letter`

The writer side (a consumer-group member inserting into the store) is writers/kafka_consumer.py.
"""

from runstream_services.bus.kafka.dead_letter import DeadLetters, is_deterministic, screen
from runstream_services.bus.kafka.directory import RunDirectory
from runstream_services.bus.kafka.headers import envelope_from_record, record_headers
from runstream_services.bus.kafka.producer import KafkaBus, compression_type
from runstream_services.bus.kafka.topics import (
    DEFAULT_PARTITIONS,
    all_topics,
    artifacts_topic,
    dead_letter_topic,
    delete_topics,
    ensure_topics,
    max_record_bytes,
    run_states_topic,
    runs_topic,
    topic_for,
    topics,
)

__all__ = [
    "DEFAULT_PARTITIONS",
    "DeadLetters",
    "KafkaBus",
    "RunDirectory",
    "all_topics",
    "artifacts_topic",
    "compression_type",
    "dead_letter_topic",
    "delete_topics",
    "ensure_topics",
    "envelope_from_record",
    "is_deterministic",
    "max_record_bytes",
    "record_headers",
    "run_states_topic",
    "runs_topic",
    "screen",
    "topic_for",
    "topics",
]
