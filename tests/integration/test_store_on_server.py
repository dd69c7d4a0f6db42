"""The store on a ClickHouse server over HTTP (an http:// DSN), through tests/clickhouse_standin.py.

STAND-IN, labelled as such: no ClickHouse server can be installed on the test machines, so the
"server" here is the real chDB engine in a process of its own behind ClickHouse's HTTP interface
(the subset clickhouse-connect uses). The SQL, parts and insert dedup are real; the HTTP layer is
the stand-in's. What runs through it is the store code's server path: clickhouse-connect's HTTP
client, insert_arrow for metric points (the chDB Python() fast path does not apply), the
migrations applied once by `runstream migrate` and checked by servers with migrate_on_start off.

Two suites written for chDB run here unchanged on an http:// DSN, collected again under this
module's fixtures: three exactly-once cases of test_exactly_once.py (an embedded `runstream server`
whose store is the stand-in: stored once with summaries, resends and a restart, kill -9 under a
many-writer load; the first again with the Kafka writer process on it) and every test of
test_query_service.py (the QueryService on a store seeded over HTTP)."""

from __future__ import annotations

import uuid

import pytest

from runstream_services.artifacts.local import LocalArtifactStore
from runstream_services.storage.clickhouse import connect
from runstream_services.storage.migrations import migrate
from tests.clickhouse_standin import StandinProcess, server_deployment
from tests.integration import test_exactly_once as exactly_once
from tests.integration import test_media as media_suite
from tests.integration import test_query_service as query_suite
from tests.integration.test_query_service import Seeded, query_server, seed, stub  # noqa: F401 - fixtures

pytest.importorskip("chdb")


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> StandinProcess:
    """The ClickHouse STAND-IN (chDB behind ClickHouse's HTTP interface), one per module."""
    process = StandinProcess(tmp_path_factory.mktemp("standin")).start()
    yield process
    process.stop()


# ------------------------------------------------------ exactly once, on a server store (stand-in)


@pytest.fixture
def bus_server(tmp_path, standin):
    """An embedded `runstream server` whose store is the STAND-IN over http:// (see module doc)."""
    deployment = server_deployment(tmp_path, standin)
    yield deployment
    deployment.close()


@pytest.fixture
def kafka_bus_server(tmp_path, standin, services):
    """Ingest + a Kafka writer process on the real Kafka; the writer's store is the STAND-IN."""
    deployment = server_deployment(tmp_path, standin, "kafka", services)
    yield deployment
    deployment.close()


test_exactly_once_stored_once_with_summaries = (
    exactly_once.test_metrics_are_stored_once_with_summaries_and_the_stream_survives_bad_requests
)
test_exactly_once_resends_and_restart = (
    exactly_once.test_resent_requests_on_a_new_stream_and_after_a_restart_are_acked_and_stored_once
)
test_exactly_once_kill_9_under_many_writers = (
    exactly_once.test_kill_9_under_a_many_writer_load_stores_every_point_once
)
test_media_stored_once = media_suite.test_media_through_each_bus_is_stored_once  # media rows over HTTP


def test_exactly_once_stored_once_by_the_kafka_writer(kafka_bus_server):
    """The first case again with the Kafka writer process storing on the STAND-IN."""
    exactly_once.test_metrics_are_stored_once_with_summaries_and_the_stream_survives_bad_requests(
        kafka_bus_server
    )


def test_server_store_uses_insert_arrow_and_its_dedup_token(standin):
    """The writer's insert path on a server client is insert_arrow with the dedup token: the same
    block twice is stored once (STAND-IN server)."""
    import pyarrow as pa

    from runstream_services.writers.arrow_insert import ArrowInserter

    client = connect(standin.dsn)
    db = f"ins_{uuid.uuid4().hex[:8]}"
    client.command(f"CREATE DATABASE {db}")
    client.command(
        f"CREATE TABLE {db}.t (k String, v Float64) ENGINE = MergeTree ORDER BY k "
        "SETTINGS non_replicated_deduplication_window = 100"
    )
    inserter = ArrowInserter(client)
    assert inserter.mode == "insert_arrow"
    table = pa.table({"k": ["a", "b", "c"], "v": [1.0, 2.0, 3.0]})
    inserter.insert(f"{db}.t", table, "block-1")
    inserter.insert(f"{db}.t", table, "block-1")  # a replay
    inserter.insert(f"{db}.t", table.slice(0, 1), "block-2")
    assert client.query(f"SELECT count(), sum(v) FROM {db}.t").result_rows == [(4, 7.0)]


def test_two_processes_migrating_together_apply_each_migration_once(standin):
    """Two servers starting at once (migrate_on_start) on one ClickHouse server (the STAND-IN):
    the migration lock lets one apply the migrations; the other finds them applied."""
    import threading

    from runstream_services.storage.migrations import available

    db = f"mig_{uuid.uuid4().hex[:8]}"
    results: list[list[int]] = []
    threads = [
        threading.Thread(target=lambda: results.append(migrate(connect(standin.dsn), db))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    every = [v for v, _, _ in available()]
    assert sorted(results, key=len) == [[], every]
    client = connect(standin.dsn)
    rows = client.query(
        f"SELECT version, count() FROM {db}.schema_migrations GROUP BY version ORDER BY version"
    )
    assert rows.result_rows == [(v, 1) for v in every]
    assert client.query(f"EXISTS TABLE {db}.schema_migrations_lock").result_rows == [(0,)]


def test_a_lock_left_by_a_crashed_migration_names_its_holder(standin):
    from runstream_services.errors import Unavailable
    from runstream_services.storage.migrations import MigrationLock

    client = connect(standin.dsn)
    db = f"mig_{uuid.uuid4().hex[:8]}"
    client.command(f"CREATE DATABASE {db}")
    crashed = MigrationLock(client, db)
    crashed.holder = "pod-a pid 7"
    crashed.__enter__()  # and never exits
    with pytest.raises(Unavailable, match=r"pod-a pid 7 since .* DROP TABLE mig_\w+\.schema_migrations_lock"):
        migrate(client, db, lock_wait_s=1)


# --------------------------------------------------- the query service, on a server store (stand-in)


@pytest.fixture(scope="module")
def seeded(standin, tmp_path_factory) -> Seeded:
    """test_query_service's store, seeded over HTTP into the STAND-IN (replaces its chDB one)."""
    database = f"t_query_{uuid.uuid4().hex[:8]}"
    client = connect(standin.dsn)
    migrate(client, database)
    store = LocalArtifactStore(tmp_path_factory.mktemp("query") / "artifacts")
    sha = seed(client, database, store)
    yield Seeded(client, database, sha, store)
    client.command(f"DROP DATABASE IF EXISTS {database}")


def test_a_request_naming_10000_runs_is_answered_on_a_server_store(stub):  # noqa: F811 - the fixture
    """10,000 run ids bound as one Array(String) are ~330 KiB: past what a server takes in a URL
    parameter or a form field (the STAND-IN enforces http_max_field_value_size, 128 KiB), so the
    store's server client sends such a value in the query body (storage/large_binds.py)."""
    from runstream.v1 import query_pb2

    ids = ["r02"] + [uuid.uuid4().hex for _ in range(9_999)]
    some = stub.ListKeys(query_pb2.ListKeysRequest(project="vision", run_ids=ids))
    assert list(some.metric_keys) == ["loss", "val_f1"]


for _name in dir(query_suite):
    if _name.startswith("test_"):
        globals()[f"{_name}_on_server"] = getattr(query_suite, _name)
