"""Editable runs and alerts on the Kafka deployment (an ingest process and a writer,query process
on the real Kafka): an edit of a finished run through the query process keeps the state and is
kept against a later replay of the run's older events (the writer of this deployment is the
process that made the edit), and a threshold alert fires from the writer process's evaluator."""

from __future__ import annotations

import time
import uuid

import numpy as np

import runstream
from runstream.v1 import ingest_pb2 as pb
from runstream.v1 import types_pb2
from tests import deployments
from tests.ingest_client import stub_for
from tests.webhook_receiver import WebhookReceiver

PROJECT = "kafka-workflow"


def send(server, requests) -> None:
    answers = list(stub_for(server).Ingest(iter(requests), timeout=60))
    assert all(a.ok for a in answers), [a.message for a in answers]


def test_edit_and_alert_on_kafka(tmp_path, services):
    receiver = WebhookReceiver()
    deployment = deployments.kafka_split(
        tmp_path, services, writer_env={"RUNSTREAM_ALERTS_CHECK_INTERVAL_S": "0.2"}
    )
    try:
        query = deployment.writer.endpoint
        with runstream.Api(endpoint=query) as api:
            rule = api.add_alert_rule(
                PROJECT, "big", "threshold", key="loss", op=">", value=5, webhook_url=receiver.url
            )
        run_id, cid, made_ms = "r-" + uuid.uuid4().hex[:6], uuid.uuid4().hex, int(time.time() * 1000) - 60_000
        update = pb.RunUpdate(project=PROJECT, run_id=run_id, name="sdk-name", heartbeat_ms=made_ms)
        values = np.array([1.0, 7.0])
        send(deployment.ingest, [
            pb.IngestRequest(seq=1, client_id=cid, run_start=pb.RunStart(project=PROJECT, run_id=run_id, start_ms=made_ms)),
            pb.IngestRequest(seq=2, client_id=cid, run_update=update),
            pb.IngestRequest(seq=3, client_id=cid, metrics=pb.MetricBatch(
                project=PROJECT, run_id=run_id, keys=["loss"], steps=np.arange(2, dtype="<i8").tobytes(),
                values=values.astype("<f8").tobytes(), times_ms=np.zeros(2, "<i8").tobytes())),
            pb.IngestRequest(seq=4, client_id=cid, run_finish=pb.RunFinish(
                project=PROJECT, run_id=run_id, state=types_pb2.RUN_STATE_FINISHED)),
        ])  # fmt: skip
        [fired] = receiver.wait_for(lambda ps: len(ps) >= 1)
        assert fired["rule"]["rule_id"] == rule.rule_id and fired["detail"]["step"] == 1
        deployment.wait_stored()
        with runstream.Api(endpoint=query) as api:
            answer = api.update_run(PROJECT, run_id, name="edited", outcome="done")
            assert answer.state == "finished" and answer.name == "edited"
            send(deployment.ingest, [pb.IngestRequest(seq=1, client_id=uuid.uuid4().hex, run_update=update)])
            deployment.wait_stored()
            got = api.run(PROJECT, run_id)
            assert got["name"] == "edited" and got["state"] == "finished"
            assert [e.field for e in api.run_edits(PROJECT, run_id).edits] == ["name", "outcome"]
    finally:
        deployment.close()
        receiver.close()
