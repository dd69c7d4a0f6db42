"""Three Kafka writer processes in one consumer group, storing on one ClickHouse server store, under
a many-run load: one writer is killed -9 and later restarted under its static member id, another
is frozen (SIGSTOP) past the session timeout and thawed. Afterwards every point is stored exactly
once (raw rows = rows FINAL = distinct points = summary counts), finished runs stay finished, and
the artifact versions of one name are 1..N, each once.

The store is tests/clickhouse_standin.py, a STAND-IN for a ClickHouse server (the real chDB engine
in its own process behind ClickHouse's HTTP interface): no ClickHouse server can be installed on
the test machines, and chDB's own folder cannot be shared by three processes. Kafka is the real
shared broker (scripts/services.sh)."""

from __future__ import annotations

import hashlib
import os
import signal
import time
import uuid

import pytest

from runstream.v1 import ingest_pb2 as pb
from runstream.v1 import types_pb2
from tests.clickhouse_standin import StandinProcess
from tests.deployments import drop_topics, kafka_env, migrated_database, new_prefix
from tests.ingest_client import PROJECT, ingest, metric_batch, run_start, stub_for
from tests.server_process import ServerProcess, WriterProcess

pytest.importorskip("chdb")

RUNS, BATCHES, PER_BATCH = 12, 12, 2_000
WRITERS = 3


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> StandinProcess:
    """The ClickHouse STAND-IN (chDB behind ClickHouse's HTTP interface)."""
    process = StandinProcess(tmp_path_factory.mktemp("standin")).start()
    yield process
    process.stop()


def run_requests(run_id: str, finish: bool) -> list[pb.IngestRequest]:
    """One SDK process's run: start, metric batches, an artifact "model", and maybe a finish."""
    cid = uuid.uuid4().hex
    out = [run_start(1, cid, run_id)]
    out += [
        pb.IngestRequest(seq=2 + i, client_id=cid, metrics=metric_batch(run_id, i * PER_BATCH, PER_BATCH))
        for i in range(BATCHES)
    ]
    data = f"weights of {run_id}".encode()
    out.append(
        pb.IngestRequest(
            seq=len(out) + 1, client_id=cid,
            artifact=pb.ArtifactEvent(project=PROJECT, run_id=run_id, name="model", path="model.bin",
                                      size=len(data), inline_data=data, sha256=hashlib.sha256(data).hexdigest()),
        )
    )  # fmt: skip
    if finish:
        out.append(
            pb.IngestRequest(
                seq=len(out) + 1, client_id=cid,
                run_finish=pb.RunFinish(project=PROJECT, run_id=run_id, state=types_pb2.RUN_STATE_FINISHED, end_ms=1),
            )
        )  # fmt: skip
    return out


def group_caught_up(writers: list[WriterProcess], partitions: int) -> bool:
    """Every partition of both topics is held by one of the writers, and none has records left
    (each writer's own lag: stored and committed up to the end it knows)."""
    assigned = lag_known = 0
    for w in writers:
        m = w.metrics()
        assigned += m.get('runstream_kafka_writer_partitions{state="assigned"}', 0)
        lag_known += m.get('runstream_kafka_writer_partitions{state="lag_known"}', 0)
        if m.get("runstream_kafka_writer_lag_records_total", -1) != 0:
            return False
    return assigned == lag_known == partitions


def test_three_writers_with_kill_and_freeze_store_everything_once(tmp_path, standin, services):
    prefix = new_prefix()
    store_env = migrated_database(standin.dsn)
    database = store_env["RUNSTREAM_CLICKHOUSE_DATABASE"]
    bus = ["--bus", "kafka", "--kafka-bootstrap", services.kafka_bootstrap]

    def writer(i: int) -> WriterProcess:
        return WriterProcess(
            tmp_path / f"writer{i}",
            extra_args=[*bus, "--components", "writer", "--clickhouse-dsn", standin.dsn],
            env=kafka_env(
                prefix, **store_env, RUNSTREAM_KAFKA_GROUP_INSTANCE_ID=f"writer-{i}",
                RUNSTREAM_WRITER_FLUSH_INTERVAL_S="0.1", RUNSTREAM_WRITER_MAX_BLOCK_POINTS="20000",
            ),
        )  # fmt: skip

    writers = [writer(i).start() for i in range(WRITERS)]
    # ingest reads the store too (as the Helm chart's pods do): it recognises a resent run event
    # that was stored before (its ack lost) and answers it again instead of refusing it
    ingest_server = ServerProcess(
        tmp_path / "ingest",
        extra_args=[*bus, "--components", "ingest", "--clickhouse-dsn", standin.dsn],
        env=kafka_env(prefix, **store_env),
    ).start()
    try:
        runs = {f"run-{i}": run_requests(f"run-{i}", finish=i % 2 == 0) for i in range(RUNS)}
        first_half = [r for reqs in runs.values() for r in reqs[: len(reqs) // 2]]
        second_half = [r for reqs in runs.values() for r in reqs[len(reqs) // 2 :]]
        # the run_start of a client must precede its other requests on one stream: send per client
        answers = {}
        for reqs in runs.values():
            answers |= {
                (reqs[0].client_id, a.seq): a
                for a in ingest(stub_for(ingest_server), reqs[: len(reqs) // 2]).values()
            }
        assert all(a.ok for a in answers.values())
        time.sleep(1.0)  # the writers are storing the first half now
        writers[0].kill()  # kill -9 mid-load
        os.kill(writers[1].proc.pid, signal.SIGSTOP)  # frozen past the session timeout (10 s)
        try:
            for reqs in runs.values():
                got = ingest(stub_for(ingest_server), reqs[len(reqs) // 2 :])
                assert all(a.ok for a in got.values()), [a.message for a in got.values() if not a.ok]
            time.sleep(12)
        finally:
            os.kill(writers[1].proc.pid, signal.SIGCONT)
        writers[0] = writer(0).start()  # back under its static member id
        # a client that lost its acks resends everything: no-ops
        for reqs in runs.values():
            got = ingest(stub_for(ingest_server), reqs)
            assert all(a.ok for a in got.values()), [(a.seq, a.message) for a in got.values() if not a.ok]
        deadline, streak = time.monotonic() + 180, 0
        while streak < 3:  # three times in a row: the high watermarks come with the fetches
            streak = streak + 1 if group_caught_up(writers, partitions=12) else 0
            assert time.monotonic() < deadline, "\n".join(w.log_tail() for w in writers)
            time.sleep(0.5)
        for w in writers:
            assert w.stop() == 0, w.log_tail()
    finally:
        for w in writers:
            if w.proc and w.proc.poll() is None:
                try:
                    os.kill(w.proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            w.stop()
        ingest_server.stop()
        drop_topics(services.kafka_bootstrap, prefix)

    client = standin.client()
    try:

        def one(sql: str):
            return client.query(sql.replace("DB.", f"{database}.")).result_rows

        total = RUNS * BATCHES * PER_BATCH
        assert one("SELECT count() FROM DB.metrics")[0][0] == total  # no raw row twice
        assert one("SELECT count() FROM DB.metrics FINAL")[0][0] == total
        assert one("SELECT count() FROM (SELECT DISTINCT run_id, key, step FROM DB.metrics)")[0][0] == total
        assert one("SELECT sum(count) FROM DB.metric_summaries FINAL")[0][0] == total
        states = dict(one("SELECT run_id, state FROM DB.runs FINAL"))
        assert {r for r, s in states.items() if s == "finished"} == {f"run-{i}" for i in range(0, RUNS, 2)}
        assert len(states) == RUNS
        versions = sorted(v for (v,) in one("SELECT version FROM DB.artifacts WHERE name = 'model'"))
        assert versions == list(range(1, RUNS + 1))
    finally:
        client.close()
    assert first_half and second_half
