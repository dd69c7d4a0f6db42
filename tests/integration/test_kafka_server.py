"""`runstream server` on the Kafka bus end to end (real Kafka, MinIO, chDB), through a raw gRPC
client: exactly once in ClickHouse, also after kill -9 of the writer process or of the ingest
process mid-stream; artifacts land in MinIO with their manifest. Stored rows are read from the
stopped writer's chDB folder."""

from __future__ import annotations

import asyncio
import hashlib
import queue
import re
import time
import urllib.request
import uuid

import grpc
import numpy as np
import pytest
from minio import Minio

from runstream.v1 import ingest_pb2 as pb
from runstream.v1 import ingest_pb2_grpc
from runstream_services.bus.kafka import delete_topics
from tests.chdb_inspect import query_folder
from tests.server_process import ServerProcess

DB = "runstream"
OPTIONS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


def stub_for(server) -> ingest_pb2_grpc.IngestServiceStub:
    return ingest_pb2_grpc.IngestServiceStub(grpc.insecure_channel(server.endpoint, options=OPTIONS))


def batch(run_id: str, start: int, n: int, keys=("loss", "acc")) -> pb.MetricBatch:
    idx = np.arange(start, start + n)
    return pb.MetricBatch(
        project="proj",
        run_id=run_id,
        keys=list(keys),
        key_index=(idx % len(keys)).astype("<u2").tobytes(),
        steps=(idx // len(keys)).astype("<i8").tobytes(),
        values=idx.astype("<f8").tobytes(),
        times_ms=np.full(n, 1_700_000_000_000, "<i8").tobytes(),
    )


def workload(run_id: str, n_batches: int, per_batch: int) -> list[pb.IngestRequest]:
    cid = uuid.uuid4().hex
    out = [pb.IngestRequest(seq=1, client_id=cid, run_start=pb.RunStart(project="proj", run_id=run_id))]
    out += [
        pb.IngestRequest(seq=2 + i, client_id=cid, metrics=batch(run_id, i * per_batch, per_batch))
        for i in range(n_batches)
    ]
    return out


def ingest(stub, requests, timeout: float = 120) -> dict[int, pb.IngestResponse]:
    answers = {r.seq: r for r in stub.Ingest(iter(requests), timeout=timeout)}
    assert set(answers) == {r.seq for r in requests}
    return answers


def scrape(metrics_port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def wait_writer_caught_up(writer: ServerProcess, timeout_s: float = 120) -> None:
    """Until the writer has every partition assigned, knows their ends, and has stored and
    committed up to them (twice in a row: the high watermark comes with the fetches)."""
    deadline = time.monotonic() + timeout_s
    streak = 0
    while time.monotonic() < deadline:
        m = scrape(writer.metrics_port)
        assigned = m.get('runstream_kafka_writer_partitions{state="assigned"}', 0)
        known = m.get('runstream_kafka_writer_partitions{state="lag_known"}', -1)
        lag = m.get("runstream_kafka_writer_lag_records_total", -1)
        streak = streak + 1 if assigned > 0 and known == assigned and lag == 0 else 0
        if streak >= 3:
            return
        time.sleep(0.5)
    raise TimeoutError(f"writer did not catch up: {m}\n{writer.log_tail()}")


class WriterProcess(ServerProcess):
    """A `runstream server` without ingest (no Health RPC): healthy once /metrics answers."""

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"writer exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                scrape(self.metrics_port)
                return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"writer not up after {timeout_s}s:\n{self.log_tail()}")


def kafka_args(services) -> list[str]:
    return ["--bus", "kafka", "--kafka-bootstrap", services.kafka_bootstrap]


def kafka_env(prefix: str, **extra: str) -> dict[str, str]:
    return {"RUNSTREAM_KAFKA_TOPIC_PREFIX": prefix, "RUNSTREAM_KAFKA_GROUP_ID": f"{prefix}-writers", **extra}


def drop_topics(services, prefix: str) -> None:
    try:
        asyncio.run(delete_topics(services.kafka_bootstrap, prefix))
    except Exception:
        pass  # best effort: topics of a failed test do no harm


@pytest.fixture
def split(tmp_path, services):
    """A writer process (writer,query: owns chDB) and an ingest process, on one Kafka prefix."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    writer = WriterProcess(
        tmp_path / "writer",
        extra_args=[*kafka_args(services), "--components", "writer,query"],
        env=kafka_env(
            prefix, RUNSTREAM_WRITER_MAX_BLOCK_POINTS="60000", RUNSTREAM_WRITER_FLUSH_INTERVAL_S="0.1"
        ),
    ).start()
    ingest_proc = ServerProcess(
        tmp_path / "ingest",
        extra_args=[*kafka_args(services), "--components", "ingest"],
        env=kafka_env(prefix),
    ).start()
    yield writer, ingest_proc
    ingest_proc.stop()
    writer.stop()
    drop_topics(services, prefix)


def stored(writer: ServerProcess, sql: str):
    return query_folder(writer.data_dir / "chdb", sql.replace("DB.", f"{DB}."))


def test_metrics_and_artifacts_through_kafka_are_stored_once(kafka_server, services):
    prefix = kafka_server.env["RUNSTREAM_KAFKA_TOPIC_PREFIX"]
    requests = workload("r1", n_batches=10, per_batch=10_000)
    again = requests[3:6]  # a reconnecting SDK resends requests whose acks it lost
    small = b"lr: 0.1\n"
    big = np.random.default_rng(1).bytes(2 * 1024 * 1024 + 5)
    cid = requests[0].client_id
    stub = stub_for(kafka_server)
    big_sha = hashlib.sha256(big).hexdigest()
    header = pb.UploadArtifactRequest(
        header=pb.UploadHeader(project="proj", run_id="r1", sha256=big_sha, size=len(big))
    )
    chunks = [pb.UploadArtifactRequest(chunk=big[i : i + (1 << 20)]) for i in range(0, len(big), 1 << 20)]
    artifacts = [
        pb.IngestRequest(seq=100, client_id=cid, artifact=pb.ArtifactEvent(
            project="proj", run_id="r1", name="model", type="model", path="config.yaml", version_tag="v1",
            sha256=hashlib.sha256(small).hexdigest(), size=len(small), inline_data=small)),
        pb.IngestRequest(seq=101, client_id=cid, artifact=pb.ArtifactEvent(
            project="proj", run_id="r1", name="model", type="model", path="weights.bin", version_tag="v1",
            sha256=big_sha, size=len(big))),
    ]  # fmt: skip

    answers = ingest(stub, requests)
    uploaded = stub.UploadArtifact(iter([header, *chunks]), timeout=60)
    answers.update(ingest(stub_for(kafka_server), again + artifacts))

    assert all(a.ok for a in answers.values()), [a.message for a in answers.values() if not a.ok]
    assert uploaded.uri == f"s3://{prefix}/sha256/{big_sha[:2]}/{big_sha}"
    wait_writer_caught_up(kafka_server)
    assert kafka_server.stop() == 0, kafka_server.log_tail()
    drop_topics(services, prefix)

    assert stored(kafka_server, "SELECT count(), uniqExact(key, step) FROM DB.metrics") == [
        [100_000, 100_000]
    ]
    assert stored(kafka_server, "SELECT sum(count) FROM DB.metric_summaries") == [[100_000]]
    assert stored(kafka_server, "SELECT count() FROM DB.ingested_requests FINAL") == [[13]]
    manifest = stored(
        kafka_server,
        "SELECT path, version, size, toString(sha256), uri FROM DB.artifacts FINAL ORDER BY path",
    )
    small_sha = hashlib.sha256(small).hexdigest()
    assert manifest == [
        ["config.yaml", 1, len(small), small_sha, f"s3://{prefix}/sha256/{small_sha[:2]}/{small_sha}"],
        ["weights.bin", 1, len(big), big_sha, uploaded.uri],
    ]
    s3 = Minio(services.s3_endpoint, services.s3_access_key, services.s3_secret_key, secure=False)
    for sha, data in ((small_sha, small), (big_sha, big)):
        response = s3.get_object(prefix, f"sha256/{sha[:2]}/{sha}")
        try:
            assert response.read() == data
        finally:
            response.close()
            response.release_conn()


class _Sender:
    """A stream fed from a queue, so a process can be killed while it is open."""

    def __init__(self, stub):
        self.outbox: queue.Queue = queue.Queue()
        self.responses = stub.Ingest(iter(self.outbox.get, None), timeout=180)

    def close(self):
        self.outbox.put(None)


def send_all(server, requests) -> set[int]:
    sender = _Sender(stub_for(server))
    for r in requests:
        sender.outbox.put(r)
    acked = set()
    for answer in sender.responses:
        assert answer.ok, answer.message
        acked.add(answer.seq)
        if len(acked) == len(requests):
            break
    sender.close()
    return acked


def test_sigkill_of_the_writer_mid_stream_stores_every_point_once(split):
    writer, ingest_proc = split
    n_batches, per_batch = 60, 20_000
    requests = workload("r2", n_batches, per_batch)
    sender = _Sender(stub_for(ingest_proc))
    for r in requests:
        sender.outbox.put(r)
    acked: set[int] = set()
    killed_after_blocks = None
    for answer in sender.responses:
        assert answer.ok, answer.message
        acked.add(answer.seq)
        if killed_after_blocks is None:
            blocks = scrape(writer.metrics_port).get("runstream_kafka_writer_blocks_total", 0)
            if blocks >= 2:
                writer.kill()  # mid-stream: some blocks stored and committed, more on the way
                killed_after_blocks = blocks
        if len(acked) == len(requests):
            break
    sender.close()
    assert killed_after_blocks is not None, "the writer was killed while the stream ran"

    writer.start()
    wait_writer_caught_up(writer)
    assert writer.stop() == 0, writer.log_tail()

    total = n_batches * per_batch
    assert stored(writer, "SELECT count(), uniqExact(key, step) FROM DB.metrics") == [[total, total]]
    assert stored(writer, "SELECT sum(count), max(last_step) FROM DB.metric_summaries") == [
        [total, total // 2 - 1]
    ]
    assert stored(writer, "SELECT count() FROM DB.ingested_requests FINAL") == [[len(requests)]]


def test_sigkill_of_ingest_mid_stream_then_resend_stores_every_point_once(split):
    writer, ingest_proc = split
    n_batches, per_batch = 60, 20_000
    requests = workload("r3", n_batches, per_batch)
    sender = _Sender(stub_for(ingest_proc))
    for r in requests:
        sender.outbox.put(r)
    acked: set[int] = set()
    with pytest.raises(grpc.RpcError):  # the kill ends the stream
        for answer in sender.responses:
            assert answer.ok, answer.message
            acked.add(answer.seq)
            if len(acked) == 15:
                ingest_proc.kill()
    sender.close()
    assert 15 <= len(acked) < len(requests), "the kill happened mid-stream"

    ingest_proc.start()  # a new process: it knows run r3 only from the bus's run directory
    unacked = [r for r in requests if r.seq not in acked]
    assert send_all(ingest_proc, unacked) == {r.seq for r in unacked}
    wait_writer_caught_up(writer)
    assert ingest_proc.stop() == 0
    assert writer.stop() == 0, writer.log_tail()

    total = n_batches * per_batch
    assert stored(writer, "SELECT count(), uniqExact(key, step) FROM DB.metrics") == [[total, total]]
    assert stored(writer, "SELECT sum(count) FROM DB.metric_summaries") == [[total]]
    assert stored(writer, "SELECT count() FROM DB.ingested_requests FINAL") == [[len(requests)]]
