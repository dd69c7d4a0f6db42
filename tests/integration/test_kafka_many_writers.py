"""Kafka writers under a many-small-writers load (issue 11 item 6): 96 ranks (each its own client,
one step of 10 metrics per request) of 24 runs spread over every partition, sent over 4 streams to
one ingest process, stored by three writer processes in one consumer group. Their blocks span the
partitions each writer owns. One writer is killed -9 mid-load: its partitions go to the two others
(dynamic members: the group rebalances after the session timeout), which re-form any block it
left half-written, then it comes back and the group rebalances again. Afterwards every point is
stored exactly once (raw rows = rows FINAL = distinct points = summary counts), every request is
recorded as stored and every partition is committed to its end.

The store is tests/clickhouse_standin.py (chDB behind ClickHouse's HTTP interface, one process
that all writers share), as in test_three_writers.py; Kafka is the real shared broker."""

from __future__ import annotations

import threading
import time

import pytest

from runstream.v1 import ingest_pb2 as pb
from tests.chdb_inspect import STORED_SEQS
from tests.clickhouse_standin import StandinProcess
from tests.deployments import drop_topics, kafka_env, migrated_database, new_prefix
from tests.ingest_client import PROJECT, RANK_KEYS, ingest, rank_step_batch, run_start, stub_for
from tests.integration.test_three_writers import group_caught_up
from tests.server_process import ServerProcess, WriterProcess

pytest.importorskip("chdb")

RUNS, RANKS_PER_RUN, STEPS, STREAMS, WRITERS = 24, 4, 30, 4, 3


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> StandinProcess:
    process = StandinProcess(tmp_path_factory.mktemp("standin")).start()
    yield process
    process.stop()


def rank_requests() -> list[pb.IngestRequest]:
    """Step-major, as ranks log: each request one step of one rank (its own client). Seqs are
    disjoint across clients (client c: c*1000+1, ...), so the acks of a shared stream name one."""
    out = []
    for step in range(STEPS):
        for run in range(RUNS):
            for rank in range(RANKS_PER_RUN):
                c = run * RANKS_PER_RUN + rank
                batch = rank_step_batch(PROJECT, f"run-{run}", rank, c, step)
                out.append(pb.IngestRequest(seq=c * 1000 + 1 + step, client_id=f"rank-{c}", metrics=batch))
    return out


def test_kill_9_of_a_writer_under_a_many_writer_load_over_partitions_stores_every_point_once(
    tmp_path, standin, services
):
    prefix = new_prefix()
    store_env = migrated_database(standin.dsn)
    database = store_env["RUNSTREAM_CLICKHOUSE_DATABASE"]
    bus = ["--bus", "kafka", "--kafka-bootstrap", services.kafka_bootstrap]

    def writer(i: int) -> WriterProcess:
        return WriterProcess(
            tmp_path / f"writer{i}",
            extra_args=[*bus, "--components", "writer", "--clickhouse-dsn", standin.dsn],
            env=kafka_env(prefix, **store_env, RUNSTREAM_WRITER_MAX_BLOCK_POINTS="2000"),
        )

    writers = [writer(i).start() for i in range(WRITERS)]
    ingest_server = ServerProcess(
        tmp_path / "ingest",
        extra_args=[*bus, "--components", "ingest", "--clickhouse-dsn", standin.dsn],
        env=kafka_env(prefix, **store_env),
    ).start()
    requests = rank_requests()
    try:
        starts = [run_start(1 + r, "starter", f"run-{r}") for r in range(RUNS)]
        assert all(a.ok for a in ingest(stub_for(ingest_server), starts).values())
        parts = [requests[i::STREAMS] for i in range(STREAMS)]
        answers: dict[tuple[str, int], bool] = {}
        lock = threading.Lock()

        def feed(part: list[pb.IngestRequest]) -> None:
            for i in range(0, len(part), 60):  # several streams in turn, as SDKs flush
                chunk = part[i : i + 60]
                by_seq = {r.seq: r.client_id for r in chunk}
                for seq, answer in ingest(stub_for(ingest_server), chunk).items():
                    with lock:
                        answers[(by_seq[seq], seq)] = answer.ok

        threads = [threading.Thread(target=feed, args=(part,)) for part in parts]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(answers) < len(requests) // 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        writers[0].kill()  # kill -9 mid-load: the others take its partitions after its session
        for t in threads:
            t.join(180)
        assert len(answers) == len(requests) and all(answers.values()), "every request acked"
        time.sleep(12)  # past the session timeout: the two others hold every partition now
        writers[0] = writer(0).start()  # back as a new member: the group rebalances again
        deadline, streak = time.monotonic() + 180, 0
        while streak < 3:  # three times in a row: the high watermarks come with the fetches
            streak = streak + 1 if group_caught_up(writers, partitions=12) else 0
            assert time.monotonic() < deadline, "\n".join(w.log_tail() for w in writers)
            time.sleep(0.5)
        for w in writers:
            assert w.stop() == 0, w.log_tail()
    finally:
        for w in writers:
            w.stop()
        ingest_server.stop()
        drop_topics(services.kafka_bootstrap, prefix)

    client = standin.client()
    try:

        def one(sql: str):
            return client.query(sql.replace("DB.", f"{database}.")).result_rows[0][0]

        total = len(requests) * len(RANK_KEYS)
        assert one("SELECT count() FROM DB.metrics") == total  # no raw row twice
        assert one("SELECT count() FROM DB.metrics FINAL") == total
        assert one("SELECT count() FROM (SELECT DISTINCT run_id, key, rank, step FROM DB.metrics)") == total
        assert one("SELECT sum(count) FROM DB.metric_summaries FINAL") == total
        assert one("SELECT max(last_step) FROM DB.metric_summaries FINAL") == STEPS - 1
        assert one(f"SELECT {STORED_SEQS} FROM DB.client_seqs FINAL") == len(requests) + RUNS
        assert one("SELECT uniqExact(run_id, rank) FROM DB.metrics") == RUNS * RANKS_PER_RUN
    finally:
        client.close()
