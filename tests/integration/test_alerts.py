"""Alerts on a real embedded server, delivered to a local webhook receiver (a tiny http.server in
this test process): a metric threshold fires once per episode, with a verified HMAC signature
and a retry after the receiver's first 500; NaN/inf points fire a nonfinite rule; a run that logs
nothing fires a no-points rule (N = a second) and, once the crash timer marks it, a crashed rule.
Rules are managed through runstream.Api and the CLI."""

from __future__ import annotations

import json
import math
import time
import uuid

import numpy as np
import pytest

import runstream
from runstream.v1 import ingest_pb2 as pb
from runstream_services.alerts.webhook import SIGNATURE_HEADER, verify
from runstream_services.cli import main as cli_main
from tests.ingest_client import stub_for
from tests.server_process import ServerProcess
from tests.webhook_receiver import WebhookReceiver

PROJECT = "alerts"
FAST = {
    "RUNSTREAM_ALERTS_CHECK_INTERVAL_S": "0.2",
    "RUNSTREAM_ALERT_WEBHOOK_BACKOFF_S": "0.2",
    "RUNSTREAM_ALERT_WEBHOOK_ATTEMPTS": "4",
}


@pytest.fixture
def receiver():
    r = WebhookReceiver(fail_first=1)
    yield r
    r.close()


def server_with(tmp_path, **env) -> ServerProcess:
    return ServerProcess(tmp_path / "server", env={**FAST, **env}).start()


def batch(run_id: str, key: str, steps, values) -> pb.MetricBatch:
    n = len(values)
    return pb.MetricBatch(
        project=PROJECT, run_id=run_id, keys=[key], key_index=np.zeros(n, "<u2").tobytes(),
        steps=np.asarray(steps, "<i8").tobytes(), values=np.asarray(values, "<f8").tobytes(),
        times_ms=np.full(n, int(time.time() * 1000), "<i8").tobytes(),
    )  # fmt: skip


class Client:
    """One SDK-like client: numbered requests, each stream waits for its acks."""

    def __init__(self, server):
        self.stub, self.cid, self.seq = stub_for(server), uuid.uuid4().hex, 0

    def send(self, **body) -> None:
        self.seq += 1
        answers = list(
            self.stub.Ingest(iter([pb.IngestRequest(seq=self.seq, client_id=self.cid, **body)]), timeout=60)
        )
        assert answers and answers[0].ok, answers


def test_threshold_and_nan_fire_once_per_episode_signed(tmp_path, receiver, capsys):
    server = server_with(tmp_path)
    try:
        with runstream.Api(endpoint=server.endpoint) as api:
            high = api.add_alert_rule(PROJECT, "loss high", "threshold", key="loss", op=">", value=5,
                                      webhook_url=receiver.url)  # fmt: skip
            nan = api.add_alert_rule(PROJECT, "loss nan", "nonfinite", key="loss", webhook_url=receiver.url,
                                     secret="chosen-secret")  # fmt: skip
            mean = api.add_alert_rule(PROJECT, "acc low", "threshold", key="acc", op="<", value=0.5, last_n=3,
                                      webhook_url=receiver.url)  # fmt: skip
            assert len(high.secret) == 64 and nan.secret == "chosen-secret"
            assert {r.rule_id for r in api.alert_rules(PROJECT)} == {high.rule_id, nan.rule_id, mean.rule_id}
            assert all(not r.secret for r in api.alert_rules(PROJECT)), "listings never show secrets"

        run_id = "r-" + uuid.uuid4().hex[:6]
        c = Client(server)
        c.send(run_start=pb.RunStart(project=PROJECT, run_id=run_id))
        c.send(metrics=batch(run_id, "loss", [0, 1, 2, 3], [1, 2, 6, 7]))  # crosses: fires
        c.send(metrics=batch(run_id, "loss", [4, 5], [8, 9]))  # same episode: silent
        c.send(metrics=batch(run_id, "loss", [6], [1]))  # back below: the episode ends
        c.send(metrics=batch(run_id, "loss", [7], [10]))  # a second episode: fires again
        c.send(metrics=batch(run_id, "loss", [8], [math.nan]))  # nonfinite fires (threshold ignores NaN)
        c.send(metrics=batch(run_id, "loss", [9], [math.inf]))  # same nonfinite episode
        c.send(metrics=batch(run_id, "acc", [0, 1], [0.1, 0.2]))  # only 2 of 3 points: undecided
        c.send(metrics=batch(run_id, "acc", [2], [0.3]))  # mean 0.2 < 0.5: fires

        def by_rule(payloads, rule_id):
            return [p for p in payloads if p["rule"]["rule_id"] == rule_id]

        got = receiver.wait_for(
            lambda ps: (
                len(by_rule(ps, high.rule_id)) >= 2 and by_rule(ps, nan.rule_id) and by_rule(ps, mean.rule_id)
            )
        )
        time.sleep(1.0)  # anything extra would arrive now
        got = receiver.payloads()
        steps = sorted(p["detail"]["step"] for p in by_rule(got, high.rule_id))  # a retry may reorder
        assert steps == [2, 7]
        assert [p["detail"]["value"] for p in by_rule(got, nan.rule_id)] == ["nan"]
        [acc] = by_rule(got, mean.rule_id)
        assert acc["detail"]["value"] == pytest.approx(0.2) and acc["run_id"] == run_id
        assert acc["rule"]["condition"] == "mean of the last 3 points of acc < 0.5"

        secrets = {high.rule_id: high.secret, nan.rule_id: nan.secret, mean.rule_id: mean.secret}
        for headers, body in receiver.received:
            rule_id = json.loads(body)["rule"]["rule_id"]
            assert verify(secrets[rule_id], body, headers[SIGNATURE_HEADER.lower()])
            assert not verify("wrong", body, headers[SIGNATURE_HEADER.lower()])
        assert receiver.requests == len(receiver.received) + 1  # the first POST got a 500 and was retried

        with runstream.Api(endpoint=server.endpoint) as api:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                firings = api.alert_firings(PROJECT)
                if len(firings) == 4 and all(f.status == "delivered" for f in firings):
                    break
                time.sleep(0.2)
            assert len(firings) == 4 and {f.status for f in firings} == {"delivered"}, firings
            assert sorted(f.attempts for f in firings) == [1, 1, 1, 2]

        # the CLI over the same calls
        assert cli_main(["alerts", "ls", PROJECT, "--endpoint", server.endpoint]) == 0
        assert "loss high" in capsys.readouterr().out
        assert cli_main(["alerts", "rm", PROJECT, high.rule_id, "--endpoint", server.endpoint]) == 0
        assert cli_main(["alerts", "rm", PROJECT, high.rule_id, "--endpoint", server.endpoint]) == 2
        assert "no alert rule" in capsys.readouterr().err
        assert cli_main(["alerts", "add", PROJECT, "bad", "threshold", "--webhook", "ftp://x", "--key", "k",
                         "--op", ">", "--endpoint", server.endpoint]) == 2  # fmt: skip
        assert "http://" in capsys.readouterr().err
        with runstream.Api(endpoint=server.endpoint) as api:
            assert high.rule_id not in {r.rule_id for r in api.alert_rules(PROJECT)}
        # a deleted rule fires no more
        before = len(receiver.received)
        c.send(metrics=batch(run_id, "loss", [10], [1]))
        c.send(metrics=batch(run_id, "loss", [11], [50]))
        time.sleep(1.5)
        assert len(receiver.received) == before
    finally:
        server.stop()


def test_no_points_and_crashed(tmp_path):
    receiver = WebhookReceiver()
    server = server_with(tmp_path, RUNSTREAM_CRASH_AFTER_S="3")
    try:
        with runstream.Api(endpoint=server.endpoint) as api:
            quiet = api.add_alert_rule(
                PROJECT, "quiet", "no_points", minutes=1 / 60, webhook_url=receiver.url
            )
            crashed = api.add_alert_rule(PROJECT, "died", "crashed", webhook_url=receiver.url)
        run_id = "r-" + uuid.uuid4().hex[:6]
        Client(server).send(run_start=pb.RunStart(project=PROJECT, run_id=run_id))  # then nothing
        got = receiver.wait_for(
            lambda ps: {p["rule"]["rule_id"] for p in ps} >= {quiet.rule_id, crashed.rule_id}
        )
        time.sleep(1.0)
        got = receiver.payloads()
        assert [p["rule"]["rule_id"] for p in got] == [quiet.rule_id, crashed.rule_id], (
            "once each, in that order"
        )
        assert all(p["run_id"] == run_id for p in got)
        assert got[1]["detail"]["state"] == "crashed"
    finally:
        server.stop()
        receiver.close()
