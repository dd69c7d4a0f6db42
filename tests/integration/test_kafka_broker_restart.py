"""Exactly once across a Kafka broker restart (README, Guarantees): a `runstream server` on the Kafka
bus streams acked batches; the broker is stopped (SIGTERM) mid-stream and started again on the
same ports and data folder; the client resends whatever was not acked (then, as a client that lost
its acks, everything); every point is stored exactly once (count() = count() FINAL = the points
sent, and every request recorded once).

The broker is this test's own (tests/private_kafka.py: free ports, a data folder under tmp_path),
started the way scripts/services.sh starts the shared one: the shared broker is never restarted."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from tests.chdb_inspect import stored_counts
from tests.deployments import kafka_env, new_prefix
from tests.ingest_client import OpenStream, ingest, stub_for, workload
from tests.private_kafka import PrivateKafka
from tests.server_process import ServerProcess, wait_writer_caught_up

N_BATCHES, PER_BATCH = 40, 10_000
STOP_AT = 8  # acks before the broker is stopped
WINDOW = 4  # requests in flight on the stream
RESEND_DEADLINE_S = 240.0


@pytest.fixture
def private_kafka(tmp_path):
    try:
        broker = PrivateKafka(tmp_path / "kafka")
    except FileNotFoundError as exc:
        pytest.fail(str(exc))  # the jars come with the services every integration run needs
    broker.format()
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def kafka_bus_server(tmp_path, private_kafka):
    """Ingest and the Kafka writer in one `runstream server` process, on the private broker."""
    server = ServerProcess(
        tmp_path / "server",
        extra_args=["--bus", "kafka", "--kafka-bootstrap", private_kafka.bootstrap],
        env=kafka_env(new_prefix(), RUNSTREAM_WRITER_FLUSH_INTERVAL_S="0.1"),
    ).start()
    yield server
    server.stop()


def test_broker_restart_mid_stream_then_resend_unacked_stores_every_point_once(
    private_kafka, kafka_bus_server
):
    server = kafka_bus_server
    requests = workload("restart", N_BATCHES, PER_BATCH)
    by_seq = {r.seq: r for r in requests}
    acked: set[int] = set()
    refused: dict[int, str] = {}  # seq -> why (Kafka was away): resent below
    stream = OpenStream(server, requests[:WINDOW], timeout=180)
    sent = WINDOW
    restarter: threading.Thread | None = None
    acked_before_stop = 0
    try:
        for answer in stream.responses:
            if answer.ok:
                acked.add(answer.seq)
            else:
                refused[answer.seq] = answer.message
            if restarter is None and len(acked) == STOP_AT:
                acked_before_stop = len(acked)
                private_kafka.stop()  # SIGTERM; returns once the broker exited
                # the next requests reach ingest while no broker answers; it comes back meanwhile
                for r in requests[sent : sent + WINDOW]:
                    stream.outbox.put(r)
                sent = min(sent + WINDOW, len(requests))
                restarter = threading.Thread(target=private_kafka.start)
                restarter.start()
            elif sent < len(requests):
                stream.outbox.put(requests[sent])
                sent += 1
            if len(acked) + len(refused) == sent == len(requests):
                break
    except grpc.RpcError:
        pass  # the stream may end while Kafka is away: what it did not ack is resent below
    finally:
        stream.close()
    assert restarter is not None, "the broker was stopped mid-stream"
    restarter.join()
    assert STOP_AT <= acked_before_stop < len(requests)

    # A reconnecting client resends what was not acked, on a new stream, until everything is.
    deadline = time.monotonic() + RESEND_DEADLINE_S
    while len(acked) < len(requests):
        unacked = [by_seq[s] for s in sorted(set(by_seq) - acked)]
        try:
            answers = ingest(stub_for(server), unacked, timeout=120)
            acked |= {seq for seq, a in answers.items() if a.ok}
        except grpc.RpcError:
            pass
        assert time.monotonic() < deadline, (
            f"{len(requests) - len(acked)} requests never acked:\n{server.log_tail()}"
        )
        if len(acked) < len(requests):
            time.sleep(1)

    # a client that lost its acks resends everything, from before and after the restart: no-ops
    answers = ingest(stub_for(server), requests, timeout=120)
    assert all(a.ok for a in answers.values()), [a.message for a in answers.values() if not a.ok]

    wait_writer_caught_up(server, timeout_s=180)
    assert server.stop() == 0, server.log_tail()
    counts = stored_counts(server)
    total = N_BATCHES * PER_BATCH
    assert (counts.rows, counts.rows_final, counts.distinct_points, counts.summary_count) == (total,) * 4
    assert counts.requests_recorded == len(requests)
