"""What every bus promises, run once per bus mode (`bus_server`: [embedded] one process, [kafka]
ingest + writer processes on the real Kafka), through the raw gRPC client of tests/ingest_client.py:
acks and per-request refusals on a live stream, every point stored exactly once after resends on a
new stream, after a restart, after kill -9 of ingest mid-stream, after kill -9 of the writing
process under a many-writer load, and a graceful drain on SIGTERM.
Stored rows are read from the stopped writer's chDB folder."""

from __future__ import annotations

import hashlib
import math
import threading
import uuid

import grpc
import numpy as np
import pytest

from runstream.v1 import ingest_pb2 as pb
from runstream.v1 import types_pb2
from tests.chdb_inspect import StoredCounts
from tests.ingest_client import OpenStream, ingest, metric_batch, run_start, status_code, stub_for, workload


def test_metrics_are_stored_once_with_summaries_and_the_stream_survives_bad_requests(bus_server):
    stub = stub_for(bus_server)
    cid = uuid.uuid4().hex
    bad_values = metric_batch("r1", 0, 4)
    bad_values.values = b"\x00" * 12
    hostile = pb.ArtifactEvent(project="proj", run_id="r1", name="m", path="../../etc/passwd",
                               sha256=hashlib.sha256(b"x").hexdigest(), size=1, inline_data=b"x")  # fmt: skip
    nan_batch = pb.MetricBatch(project="proj", run_id="r1", keys=["odd"],
                               steps=np.arange(3, dtype="<i8").tobytes(),
                               values=np.array([math.nan, math.inf, 2.0], "<f8").tobytes())  # fmt: skip
    system = metric_batch("r1", 0, 10, keys=("cpu",), kind=types_pb2.METRIC_KIND_SYSTEM)
    requests = [
        pb.IngestRequest(seq=1, client_id=cid, metrics=metric_batch("r1", 0, 10)),  # before its run_start
        run_start(2, cid, "r1", name="first", config={"lr": types_pb2.Value(number=0.1)}),
        *[pb.IngestRequest(seq=3 + i, client_id=cid, metrics=metric_batch("r1", i * 5000, 5000)) for i in range(6)],
        pb.IngestRequest(seq=20, client_id=cid, metrics=bad_values),
        pb.IngestRequest(seq=21, client_id=cid, artifact=hostile),
        pb.IngestRequest(seq=22, client_id=cid, metrics=metric_batch("r1", 0, 4, project="bad project")),
        pb.IngestRequest(seq=23, client_id=cid, metrics=nan_batch),
        pb.IngestRequest(seq=24, client_id=cid, metrics=system),
        pb.IngestRequest(seq=25, client_id=cid, run_finish=pb.RunFinish(project="proj", run_id="r1",
                                                                         state=types_pb2.RUN_STATE_FINISHED)),
        run_start(26, cid, "r1"),
    ]  # fmt: skip
    answers = ingest(stub, requests)
    code = {seq: grpc.StatusCode.OK if a.ok else status_code(a.code) for seq, a in answers.items()}
    assert code[1] == grpc.StatusCode.NOT_FOUND and "run_start first" in answers[1].message
    assert code[20] == grpc.StatusCode.INVALID_ARGUMENT and "multiple of 8" in answers[20].message
    assert code[21] == grpc.StatusCode.INVALID_ARGUMENT and ".." in answers[21].message
    assert code[22] == grpc.StatusCode.INVALID_ARGUMENT and "project" in answers[22].message
    assert code[26] == grpc.StatusCode.ALREADY_EXISTS and "resume" in answers[26].message
    assert all(code[s] == grpc.StatusCode.OK for s in [2, 3, 4, 5, 6, 7, 8, 23, 24, 25])
    assert sum(a.points_accepted for a in answers.values() if a.ok) == 30_000 + 3 + 10

    metrics = bus_server.ingest.metrics()
    assert metrics["runstream_ingest_points_total"] == 30_013
    assert metrics['runstream_ingest_requests_total{status="INVALID_ARGUMENT"}'] == 3

    bus_server.stop_after_stored()
    assert bus_server.stored("SELECT count() FROM DB.metrics FINAL") == [[30_013 + 0]]
    assert bus_server.stored("SELECT count() FROM DB.metrics") == [[30_013]]
    summaries = bus_server.stored(
        "SELECT kind, key, argMaxMerge(last), min(min), max(max), sum(count), max(last_step) "
        "FROM DB.metric_summaries GROUP BY kind, key ORDER BY kind, key",
    )
    assert summaries == [
        ["user", "acc", 29999.0, 1.0, 29999.0, 15000, 14999],
        ["user", "loss", 29998.0, 0.0, 29998.0, 15000, 14999],
        ["user", "odd", 2.0, 2.0, 2.0, 3, 2],  # NaN/inf stored, left out of min/max
        ["system", "cpu", 9.0, 0.0, 9.0, 10, 9],
    ]
    odd = bus_server.stored("SELECT toString(value) FROM DB.metrics WHERE key = 'odd' ORDER BY step")
    assert odd == [["nan"], ["inf"], ["2"]]
    assert bus_server.stored("SELECT state, name FROM DB.runs FINAL") == [["finished", "first"]]
    assert bus_server.stored("SELECT key, num FROM DB.params FINAL") == [["lr", 0.1]]


def test_resent_requests_on_a_new_stream_and_after_a_restart_are_acked_and_stored_once(bus_server):
    requests = workload("r2", n_batches=5, per_batch=1000)
    assert all(a.ok for a in ingest(stub_for(bus_server), requests).values())
    again = ingest(stub_for(bus_server), requests)  # a reconnecting SDK resends everything
    assert all(a.ok for a in again.values())
    # A restarted ingest still knows them (client_seqs, or the Kafka writer's dedup), not
    # only from its process cache.
    bus_server.ingest.restart()
    assert all(a.ok for a in ingest(stub_for(bus_server), requests[1:]).values())
    bus_server.stop_after_stored()
    assert bus_server.stored("SELECT count(), uniqExact(key, step) FROM DB.metrics") == [[5000, 5000]]
    assert bus_server.stored("SELECT sum(count) FROM DB.metric_summaries") == [[5000]]
    assert bus_server.stored_counts().requests_recorded == len(requests)


def test_kill_9_of_ingest_mid_stream_then_resend_unacked_stores_every_point_once(bus_server):
    n_batches, per_batch = 60, 20_000
    requests = workload("r3", n_batches, per_batch)
    stream = OpenStream(bus_server, requests)
    acked: set[int] = set()
    with pytest.raises(grpc.RpcError):  # the kill ends the stream
        for answer in stream.responses:
            assert answer.ok, answer.message
            acked.add(answer.seq)
            if len(acked) == 15:
                bus_server.ingest.kill()
    stream.close()
    assert 15 <= len(acked) < len(requests), "the kill happened mid-stream"

    # A new process: on Kafka it knows run r3 only from the bus's run directory.
    bus_server.ingest.start()
    unacked = [r for r in requests if r.seq not in acked]
    answers = ingest(stub_for(bus_server), unacked, timeout=120)
    assert all(a.ok for a in answers.values()), [a.message for a in answers.values() if not a.ok]
    bus_server.stop_after_stored()

    total = n_batches * per_batch
    counts = bus_server.stored_counts()
    assert counts == StoredCounts(
        rows=total,
        rows_final=total,
        distinct_points=total,
        summary_count=total,
        summary_last_step=total // 2 - 1,
        requests_recorded=counts.requests_recorded,  # checked below, per bus
    )
    if bus_server.mode == "kafka":
        # The Kafka writer records ingested requests before it commits (writers/bookkeeping.py).
        assert counts.requests_recorded == len(requests)
    else:
        # The embedded writer records them a moment after the ack: kill -9 may lose that record
        # (never the data, whose insert dedup tokens keep a resend out).
        assert len(unacked) <= counts.requests_recorded <= len(requests)


def test_sigterm_drains_in_flight_batches(bus_server):
    """Requests ingest read before SIGTERM are acked (durable) before the stream ends."""
    requests = workload("r5", n_batches=20, per_batch=20_000)
    stream = OpenStream(bus_server, requests, timeout=120)
    acked: set[int] = set()
    stopper = None
    try:
        for answer in stream.responses:
            assert answer.ok
            acked.add(answer.seq)
            if len(acked) == 3 and stopper is None:
                stopper = threading.Thread(target=bus_server.ingest.stop)
                stopper.start()
    except grpc.RpcError:
        pass  # the stream may also end with UNAVAILABLE once the server is gone
    stream.close()
    stopper.join()
    assert bus_server.ingest.proc.returncode == 0, bus_server.ingest.log_tail()
    assert "draining in-flight requests" in bus_server.ingest.log_tail(200)
    bus_server.stop_after_stored()
    stored = bus_server.stored("SELECT count() FROM DB.metrics")[0][0]
    acked_points = 20_000 * len(acked - {1})
    # Everything acked is stored; anything stored beyond that was read but its ack was lost with
    # the stream - the SDK resends it and dedup keeps it once.
    assert stored >= acked_points


def _rank_requests(run_id: str, ranks: range, per_rank: int) -> list[pb.IngestRequest]:
    """Many small writers: each rank its own client, one step of 10 metrics per request. Seqs
    are disjoint across the ranks (rank r: r*1000+1...), so acks on a shared stream name one."""
    keys = [f"m{k}" for k in range(10)]
    out = []
    for step in range(per_rank):
        for r in ranks:
            batch = pb.MetricBatch(
                project="proj", run_id=run_id, rank=r, keys=keys,
                key_index=np.arange(10, dtype="<u2").tobytes(), steps=np.full(10, step, "<i8").tobytes(),
                values=np.full(10, r + step / 1000, "<f8").tobytes(),
                times_ms=np.full(10, 1_700_000_000_000 + step, "<i8").tobytes(),
            )  # fmt: skip
            out.append(pb.IngestRequest(seq=r * 1000 + 1 + step, client_id=f"rank-{r}", metrics=batch))
    return out


def test_kill_9_under_a_many_writer_load_stores_every_point_once(bus_server):
    """48 ranks multiplexed over 4 streams, small requests (group commit forms blocks of many
    clients): the process that writes (embedded: the server; Kafka: the writer) is killed -9
    mid-load. After a restart and a resend of everything not acked, every point is stored once,
    summaries count each once, and every request is recorded as stored."""
    run_id, ranks, per_rank, streams = "many-ranks", 48, 25, 4
    assert all(a.ok for a in ingest(stub_for(bus_server), [run_start(1, "rank-0-start", run_id)]).values())
    requests = _rank_requests(run_id, range(ranks), per_rank)
    parts = [requests[i::streams] for i in range(streams)]
    acked: set[tuple[str, int]] = set()
    lock = threading.Lock()
    killed = threading.Event()

    def feed(part: list[pb.IngestRequest]) -> None:
        by_seq = {r.seq: r.client_id for r in part}
        stream = OpenStream(bus_server, part)
        answered = 0
        try:
            for answer in stream.responses:
                assert answer.ok, answer.message
                with lock:
                    acked.add((by_seq[answer.seq], answer.seq))
                    if len(acked) >= len(requests) // 3 and not killed.is_set():
                        killed.set()
                        bus_server.writer.kill()
                answered += 1
                if answered == len(part):
                    break  # Kafka: ingest answered all while the writer is down
        except grpc.RpcError:
            pass  # embedded: the kill ends the stream
        finally:
            stream.close()

    threads = [threading.Thread(target=feed, args=(part,)) for part in parts]
    for t in threads:
        t.start()
    if bus_server.mode == "kafka":  # ingest lives on: its streams finish while the writer is down
        killed.wait(120)
        for t in threads:
            t.join(120)
        bus_server.writer.start()
    else:
        for t in threads:
            t.join(120)
        bus_server.ingest.start()
    assert killed.is_set()
    if bus_server.mode == "embedded":
        assert len(acked) < len(requests), "the kill happened mid-load"
    unacked = [r for r in requests if (r.client_id, r.seq) not in acked]
    for i in range(streams):  # each resend on a new stream, as reconnecting SDKs do
        answers = ingest(stub_for(bus_server), unacked[i::streams], timeout=120)
        assert all(a.ok for a in answers.values()), [a.message for a in answers.values() if not a.ok]
    bus_server.stop_after_stored()

    total = ranks * per_rank * 10
    counts = bus_server.stored_counts()
    assert (counts.rows_final, counts.summary_count, counts.summary_last_step) == (total, total, per_rank - 1)
    assert counts.rows == total  # no raw row twice: replays re-formed their block or were known
    assert counts.requests_recorded == len(requests) + 1  # + the run_start
    ranks_seen = bus_server.stored(f"SELECT uniqExact(rank) FROM DB.metrics WHERE run_id = '{run_id}'")
    assert ranks_seen == [[ranks]]
