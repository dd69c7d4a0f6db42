"""Kafka topic settings: replication 3 / min ISR 2 by default, a cluster too small for them is
refused with what to change, under-replication only when asked for; per-topic retention and
limits. (The 3-broker behaviour itself: tests/integration/test_kafka_three_brokers.py.)"""

from __future__ import annotations

import pytest

from runstream_services.bus.kafka.producer import compression_type
from runstream_services.bus.kafka.topics import (
    all_topics,
    dead_letter_topic,
    runs_topic,
    topic_configs,
    topic_plan,
)
from runstream_services.config import ServerSettings, load_settings
from runstream_services.errors import ConfigError, Unavailable

KAFKA = {"bus": "kafka", "kafka_bootstrap": "k:9092"}


def test_defaults_are_a_durable_cluster():
    s = load_settings(KAFKA, env={})
    assert (s.kafka_partitions, s.kafka_replication_factor, s.kafka_min_insync_replicas) == (6, 3, 2)
    assert topic_plan(s, brokers=3) == (3, 2)
    assert topic_plan(s, brokers=5) == (3, 2)


def test_a_cluster_smaller_than_the_replication_factor_is_refused():
    s = load_settings(KAFKA, env={})
    with pytest.raises(
        Unavailable, match=r"has 1 broker\(s\).*replication factor 3.*kafka_allow_under_replicated"
    ):
        topic_plan(s, brokers=1)


def test_under_replication_only_when_allowed_and_capped_at_the_cluster():
    s = load_settings(KAFKA, env={"RUNSTREAM_KAFKA_ALLOW_UNDER_REPLICATED": "1"})
    assert topic_plan(s, brokers=1) == (1, 1)
    assert topic_plan(s, brokers=2) == (2, 2)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"RUNSTREAM_KAFKA_REPLICATION_FACTOR": "1", "RUNSTREAM_KAFKA_MIN_INSYNC_REPLICAS": "1"},
            "cannot survive the loss of a broker",
        ),
        ({"RUNSTREAM_KAFKA_MIN_INSYNC_REPLICAS": "4"}, "must be between 1 and kafka_replication_factor"),
        ({"RUNSTREAM_KAFKA_PARTITIONS": "0"}, "kafka_partitions must be at least 1"),
        ({"RUNSTREAM_KAFKA_COMPRESSION": "snappy"}, "kafka_compression must be"),
        ({"RUNSTREAM_KAFKA_RETENTION_HOURS": "0"}, "kafka_retention_hours must be positive"),
    ],
)
def test_bad_kafka_settings_are_refused(env, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(KAFKA, env=env)


def test_replication_below_three_is_accepted_when_told_so():
    env = {"RUNSTREAM_KAFKA_REPLICATION_FACTOR": "1", "RUNSTREAM_KAFKA_MIN_INSYNC_REPLICAS": "1",
           "RUNSTREAM_KAFKA_ALLOW_UNDER_REPLICATED": "true"}  # fmt: skip
    assert load_settings(KAFKA, env=env).kafka_replication_factor == 1


def test_topic_configs_carry_retention_min_isr_and_size_limit():
    s = ServerSettings(**KAFKA, kafka_retention_hours=24)
    configs = topic_configs(s, min_isr=2)
    assert set(configs) == set(all_topics(s.kafka_topic_prefix))
    runs = configs[runs_topic(s.kafka_topic_prefix)]
    assert runs["retention.ms"] == str(24 * 3600 * 1000)
    assert runs["min.insync.replicas"] == "2"
    assert int(runs["max.message.bytes"]) > s.max_message_bytes
    # dead letters wait for a person: at least 30 days
    assert int(configs[dead_letter_topic(s.kafka_topic_prefix)]["retention.ms"]) == 30 * 86_400_000


def test_compression_setting():
    assert compression_type("none") is None
    assert compression_type("gzip") == "gzip"
    # zstd: cramjam is a dependency, and aiokafka's lz4 (level 9) cost 30x the CPU (producer.py)
    assert compression_type("auto") == "zstd"
