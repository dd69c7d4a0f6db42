"""The embedded server end to end, through a raw gRPC client built from the runstream.v1 stubs
(not the SDK): acks, per-request errors on a live stream, exactly-once after replays and after
kill -9, artifacts, Prometheus metrics. Stored rows are read from the stopped server's chDB folder."""

from __future__ import annotations

import hashlib
import math
import queue
import threading
import urllib.request
import uuid

import grpc
import numpy as np
import pytest

from runstream.v1 import ingest_pb2 as pb
from runstream.v1 import ingest_pb2_grpc, types_pb2
from tests.chdb_inspect import query_folder

DB = "runstream"
OPTIONS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


def stub_for(server) -> ingest_pb2_grpc.IngestServiceStub:
    return ingest_pb2_grpc.IngestServiceStub(grpc.insecure_channel(server.endpoint, options=OPTIONS))


def batch(run_id: str, start: int, n: int, keys=("loss", "acc"), project="proj", **over) -> pb.MetricBatch:
    """n points: step i // len(keys) for key i % len(keys), value = the point's global index."""
    idx = np.arange(start, start + n)
    return pb.MetricBatch(
        project=project,
        run_id=run_id,
        keys=list(keys),
        key_index=(idx % len(keys)).astype("<u2").tobytes(),
        steps=(idx // len(keys)).astype("<i8").tobytes(),
        values=idx.astype("<f8").tobytes(),
        times_ms=np.full(n, 1_700_000_000_000, "<i8").tobytes(),
        **over,
    )


def ingest(stub, requests: list[pb.IngestRequest], timeout: float = 60) -> dict[int, pb.IngestResponse]:
    """Sends the requests on one stream, half-closes, returns every answer by seq."""
    answers = {r.seq: r for r in stub.Ingest(iter(requests), timeout=timeout)}
    assert set(answers) == {r.seq for r in requests}, "every request gets exactly one answer"
    return answers


def query(server, sql: str) -> list[list]:
    return query_folder(server.data_dir / "chdb", sql.replace("DB.", f"{DB}."))


def test_metrics_are_stored_once_with_summaries_and_the_stream_survives_bad_requests(embedded_server):
    stub = stub_for(embedded_server)
    cid = uuid.uuid4().hex
    run_start = pb.RunStart(
        project="proj", run_id="r1", name="first", config={"lr": types_pb2.Value(number=0.1)}
    )
    bad_values = batch("r1", 0, 4)
    bad_values.values = b"\x00" * 12
    hostile = pb.ArtifactEvent(project="proj", run_id="r1", name="m", path="../../etc/passwd",
                               sha256=hashlib.sha256(b"x").hexdigest(), size=1, inline_data=b"x")  # fmt: skip
    nan_batch = pb.MetricBatch(project="proj", run_id="r1", keys=["odd"],
                               steps=np.arange(3, dtype="<i8").tobytes(),
                               values=np.array([math.nan, math.inf, 2.0], "<f8").tobytes())  # fmt: skip
    system = batch("r1", 0, 10, keys=("cpu",), kind=types_pb2.METRIC_KIND_SYSTEM)
    requests = [
        pb.IngestRequest(seq=1, client_id=cid, metrics=batch("r1", 0, 10)),  # before its run_start
        pb.IngestRequest(seq=2, client_id=cid, run_start=run_start),
        *[pb.IngestRequest(seq=3 + i, client_id=cid, metrics=batch("r1", i * 5000, 5000)) for i in range(6)],
        pb.IngestRequest(seq=20, client_id=cid, metrics=bad_values),
        pb.IngestRequest(seq=21, client_id=cid, artifact=hostile),
        pb.IngestRequest(seq=22, client_id=cid, metrics=batch("r1", 0, 4, project="bad project")),
        pb.IngestRequest(seq=23, client_id=cid, metrics=nan_batch),
        pb.IngestRequest(seq=24, client_id=cid, metrics=system),
        pb.IngestRequest(seq=25, client_id=cid, run_finish=pb.RunFinish(project="proj", run_id="r1",
                                                                         state=types_pb2.RUN_STATE_FINISHED)),
        pb.IngestRequest(seq=26, client_id=cid, run_start=pb.RunStart(project="proj", run_id="r1")),
    ]  # fmt: skip
    answers = ingest(stub, requests)
    code = {seq: grpc.StatusCode.OK if a.ok else _code(a.code) for seq, a in answers.items()}
    assert code[1] == grpc.StatusCode.NOT_FOUND and "run_start first" in answers[1].message
    assert code[20] == grpc.StatusCode.INVALID_ARGUMENT and "multiple of 8" in answers[20].message
    assert code[21] == grpc.StatusCode.INVALID_ARGUMENT and ".." in answers[21].message
    assert code[22] == grpc.StatusCode.INVALID_ARGUMENT and "project" in answers[22].message
    assert code[26] == grpc.StatusCode.ALREADY_EXISTS and "resume" in answers[26].message
    assert all(code[s] == grpc.StatusCode.OK for s in [2, 3, 4, 5, 6, 7, 8, 23, 24, 25])
    assert sum(a.points_accepted for a in answers.values() if a.ok) == 30_000 + 3 + 10

    metrics_text = (
        urllib.request.urlopen(f"http://127.0.0.1:{embedded_server.metrics_port}/metrics").read().decode()
    )
    assert "runstream_ingest_points_total 30013" in metrics_text
    assert 'runstream_ingest_requests_total{status="INVALID_ARGUMENT"} 3' in metrics_text

    assert embedded_server.stop() == 0, embedded_server.log_tail()
    assert query(embedded_server, "SELECT count() FROM DB.metrics FINAL") == [[30_013 + 0]]
    assert query(embedded_server, "SELECT count() FROM DB.metrics") == [[30_013]]
    summaries = query(
        embedded_server,
        "SELECT kind, key, argMaxMerge(last), min(min), max(max), sum(count), max(last_step) "
        "FROM DB.metric_summaries GROUP BY kind, key ORDER BY kind, key",
    )
    assert summaries == [
        ["user", "acc", 29999.0, 1.0, 29999.0, 15000, 14999],
        ["user", "loss", 29998.0, 0.0, 29998.0, 15000, 14999],
        ["user", "odd", 2.0, 2.0, 2.0, 3, 2],  # NaN/inf stored, left out of min/max
        ["system", "cpu", 9.0, 0.0, 9.0, 10, 9],
    ]
    odd = query(embedded_server, "SELECT toString(value) FROM DB.metrics WHERE key = 'odd' ORDER BY step")
    assert odd == [["nan"], ["inf"], ["2"]]
    assert query(embedded_server, "SELECT state, name FROM DB.runs FINAL") == [["finished", "first"]]
    assert query(embedded_server, "SELECT key, num FROM DB.params FINAL") == [["lr", 0.1]]


def _code(value: int) -> grpc.StatusCode:
    return next(c for c in grpc.StatusCode if c.value[0] == value)


def test_replayed_requests_are_acked_and_stored_once(embedded_server):
    stub = stub_for(embedded_server)
    cid = uuid.uuid4().hex
    requests = [
        pb.IngestRequest(seq=1, client_id=cid, run_start=pb.RunStart(project="proj", run_id="r2")),
        *[pb.IngestRequest(seq=2 + i, client_id=cid, metrics=batch("r2", i * 1000, 1000)) for i in range(5)],
    ]
    assert all(a.ok for a in ingest(stub, requests).values())
    again = ingest(stub_for(embedded_server), requests)  # a reconnecting SDK resends everything
    assert all(a.ok for a in again.values())
    # A restarted server still knows them (ingested_requests), not only the process cache.
    embedded_server.restart()
    assert all(a.ok for a in ingest(stub_for(embedded_server), requests[1:]).values())
    assert embedded_server.stop() == 0
    assert query(embedded_server, "SELECT count(), uniqExact(key, step) FROM DB.metrics") == [[5000, 5000]]
    assert query(embedded_server, "SELECT sum(count) FROM DB.metric_summaries") == [[5000]]


class _Sender:
    """A stream that keeps sending from a queue until closed (so the server can be killed mid-stream)."""

    def __init__(self, stub):
        self.outbox: queue.Queue = queue.Queue()
        self.responses = stub.Ingest(iter(self.outbox.get, None), timeout=120)

    def close(self):
        self.outbox.put(None)


def test_sigkill_mid_stream_then_resend_unacked_gives_every_point_once(embedded_server):
    cid = uuid.uuid4().hex
    n_batches, per_batch = 60, 20_000
    requests = [pb.IngestRequest(seq=1, client_id=cid, run_start=pb.RunStart(project="proj", run_id="r3"))]
    requests += [
        pb.IngestRequest(seq=2 + i, client_id=cid, metrics=batch("r3", i * per_batch, per_batch))
        for i in range(n_batches)
    ]
    sender = _Sender(stub_for(embedded_server))
    for r in requests:
        sender.outbox.put(r)
    acked: set[int] = set()
    with pytest.raises(grpc.RpcError):  # the kill ends the stream
        for answer in sender.responses:
            assert answer.ok, answer.message
            acked.add(answer.seq)
            if len(acked) == 12:
                embedded_server.kill()
    sender.close()
    assert 12 <= len(acked) < len(requests), "the kill happened mid-stream"

    embedded_server.start()
    unacked = [r for r in requests if r.seq not in acked]
    answers = ingest(stub_for(embedded_server), unacked, timeout=120)
    assert all(a.ok for a in answers.values()), [a.message for a in answers.values() if not a.ok]
    assert embedded_server.stop() == 0

    total = n_batches * per_batch
    assert query(embedded_server, "SELECT count() FROM DB.metrics") == [[total]]
    assert query(embedded_server, "SELECT count() FROM DB.metrics FINAL") == [[total]]
    assert query(embedded_server, "SELECT sum(count), max(last_step) FROM DB.metric_summaries") == [
        [total, total // 2 - 1]
    ]


def test_artifact_upload_manifest_and_refusals(embedded_server):
    stub = stub_for(embedded_server)
    cid = uuid.uuid4().hex
    data = np.random.default_rng(0).bytes(3 * 1024 * 1024 + 17)
    sha = hashlib.sha256(data).hexdigest()

    def upload(payload: bytes, declared_sha: str, size: int):
        header = pb.UploadArtifactRequest(
            header=pb.UploadHeader(project="proj", run_id="r4", sha256=declared_sha, size=size)
        )
        chunks = [
            pb.UploadArtifactRequest(chunk=payload[i : i + (1 << 20)])
            for i in range(0, len(payload), 1 << 20)
        ]
        return stub.UploadArtifact(iter([header, *chunks]), timeout=60)

    with pytest.raises(grpc.RpcError) as bad:
        upload(data, "0" * 64, len(data))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "hash" in bad.value.details()
    first = upload(data, sha, len(data))
    assert not first.already_present and first.uri.startswith("file://")
    assert upload(data, sha, len(data)).already_present

    def event(seq, path, **over):
        fields = {"project": "proj", "run_id": "r4", "name": "model", "type": "model", "path": path,
                  "sha256": sha, "size": len(data), "version_tag": "v-a"}  # fmt: skip
        fields.update(over)
        return pb.IngestRequest(seq=seq, client_id=cid, artifact=pb.ArtifactEvent(**fields))

    small = b"config: 1\n"
    answers = ingest(
        stub,
        [
            pb.IngestRequest(seq=1, client_id=cid, run_start=pb.RunStart(project="proj", run_id="r4")),
            event(2, "weights/model.bin"),
            event(
                3, "config.yaml", sha256=hashlib.sha256(small).hexdigest(), size=len(small), inline_data=small
            ),
            event(4, "/etc/shadow"),
            event(5, "a\\b"),
            event(6, "other.bin", sha256="ab" * 32, size=10),  # bytes never uploaded
        ],
    )
    assert [answers[s].ok for s in (1, 2, 3)] == [True, True, True]
    assert _code(answers[4].code) == grpc.StatusCode.INVALID_ARGUMENT and "absolute" in answers[4].message
    assert _code(answers[5].code) == grpc.StatusCode.INVALID_ARGUMENT and "backslash" in answers[5].message
    assert _code(answers[6].code) == grpc.StatusCode.NOT_FOUND and "UploadArtifact" in answers[6].message
    assert embedded_server.stop() == 0
    rows = query(
        embedded_server, "SELECT path, version, size, sha256, uri FROM DB.artifacts FINAL ORDER BY path"
    )
    assert [r[:3] for r in rows] == [["config.yaml", 1, len(small)], ["weights/model.bin", 1, len(data)]]
    stored = embedded_server.data_dir / "artifacts" / sha[:2] / sha[2:]
    assert rows[1][4] == stored.as_uri() and hashlib.sha256(stored.read_bytes()).hexdigest() == sha


def test_sigterm_drains_in_flight_batches(embedded_server):
    """Requests the server read before SIGTERM are acked (durable) before the stream ends."""
    cid = uuid.uuid4().hex
    requests = [pb.IngestRequest(seq=1, client_id=cid, run_start=pb.RunStart(project="proj", run_id="r5"))]
    requests += [
        pb.IngestRequest(seq=2 + i, client_id=cid, metrics=batch("r5", i * 20_000, 20_000)) for i in range(20)
    ]
    sender = _Sender(stub_for(embedded_server))
    for r in requests:
        sender.outbox.put(r)
    acked: set[int] = set()
    stopper = None
    try:
        for answer in sender.responses:
            assert answer.ok
            acked.add(answer.seq)
            if len(acked) == 3 and stopper is None:
                stopper = threading.Thread(target=embedded_server.stop)
                stopper.start()
    except grpc.RpcError:
        pass  # the stream may also end with UNAVAILABLE once the server is gone
    sender.close()
    stopper.join()
    assert embedded_server.proc.returncode == 0, embedded_server.log_tail()
    assert "draining in-flight requests" in embedded_server.log_tail(200)
    stored = query(embedded_server, "SELECT count() FROM DB.metrics")[0][0]
    acked_points = 20_000 * len(acked - {1})
    # Everything acked is stored; anything stored beyond that was read but its ack was lost with
    # the stream - the SDK resends it and dedup keeps it once.
    assert stored >= acked_points
