"""`runstream server` on the Kafka bus end to end (real Kafka, MinIO, chDB), through the raw gRPC
client of tests/ingest_client.py, for what only the Kafka deployment has: artifacts in MinIO with
their manifest, and kill -9 of the separate writer process mid-stream. What both buses promise
(exactly once after resends and after kill -9 of ingest, refusals, drains) is tested once per bus
in test_exactly_once.py. Stored rows are read from the stopped writer's chDB folder."""

from __future__ import annotations

import hashlib
import time

import numpy as np
from minio import Minio

from runstream.v1 import ingest_pb2 as pb
from tests.chdb_inspect import STORED_SEQS, stored
from tests.ingest_client import OpenStream, ingest, stub_for, workload
from tests.server_process import wait_writer_caught_up


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
    assert uploaded.uri == f"s3://{prefix}/proj/sha256/{big_sha[:2]}/{big_sha}"
    wait_writer_caught_up(kafka_server)
    assert kafka_server.stop() == 0, kafka_server.log_tail()

    assert stored(kafka_server, "SELECT count(), uniqExact(key, step) FROM DB.metrics") == [
        [100_000, 100_000]
    ]
    assert stored(kafka_server, "SELECT sum(count) FROM DB.metric_summaries") == [[100_000]]
    assert stored(kafka_server, f"SELECT {STORED_SEQS} FROM DB.client_seqs FINAL") == [[13]]
    manifest = stored(
        kafka_server,
        "SELECT path, version, size, toString(sha256), uri FROM DB.artifacts FINAL ORDER BY path",
    )
    small_sha = hashlib.sha256(small).hexdigest()
    assert manifest == [
        ["config.yaml", 1, len(small), small_sha, f"s3://{prefix}/proj/sha256/{small_sha[:2]}/{small_sha}"],
        ["weights.bin", 1, len(big), big_sha, uploaded.uri],
    ]
    s3 = Minio(services.s3_endpoint, services.s3_access_key, services.s3_secret_key, secure=False)
    for sha, data in ((small_sha, small), (big_sha, big)):
        response = s3.get_object(prefix, f"proj/sha256/{sha[:2]}/{sha}")
        try:
            assert response.read() == data
        finally:
            response.close()
            response.release_conn()


def test_sigkill_of_the_writer_mid_stream_stores_every_point_once(kafka_split):
    """The stream stays open across the kill: its first half is acked (in Kafka), the writer is
    killed once it has stored and committed two blocks, and the second half goes out on the same
    stream while no writer runs. (Killing at whichever ack saw two blocks left the kill to chance:
    with zstd records every ack could come back before the writer had stored two blocks.)"""
    writer = kafka_split.writer
    n_batches, per_batch = 60, 20_000
    requests = workload("r2", n_batches, per_batch)
    half = len(requests) // 2
    stream = OpenStream(kafka_split.ingest, requests[:half])
    answers = iter(stream.responses)
    acked: set[int] = set()

    def acks_until(count: int) -> None:
        for answer in answers:
            assert answer.ok, answer.message
            acked.add(answer.seq)
            if len(acked) == count:
                return

    acks_until(half)
    deadline = time.monotonic() + 60
    while (blocks := writer.metrics().get("runstream_kafka_writer_blocks_total", 0)) < 2:
        assert time.monotonic() < deadline, f"the writer stored {blocks} blocks in 60 s"
        time.sleep(0.005)
    writer.kill()  # some blocks stored and committed, more on the way
    for request in requests[half:]:
        stream.outbox.put(request)
    acks_until(len(requests))
    stream.close()
    assert acked == {r.seq for r in requests}

    writer.start()
    wait_writer_caught_up(writer)
    assert writer.stop() == 0, writer.log_tail()

    total = n_batches * per_batch
    assert stored(writer, "SELECT count(), uniqExact(key, step) FROM DB.metrics") == [[total, total]]
    assert stored(writer, "SELECT sum(count), max(last_step) FROM DB.metric_summaries") == [
        [total, total // 2 - 1]
    ]
    assert stored(writer, f"SELECT {STORED_SEQS} FROM DB.client_seqs FINAL") == [[len(requests)]]
