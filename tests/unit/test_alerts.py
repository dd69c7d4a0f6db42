"""Alerts without a server: rule checks, the threshold decision, episodes, signatures, the
evaluator on stored blocks with a real AlertStore (chDB), and webhook retries against a real local
HTTP receiver."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from runstream.v1 import ingest_pb2
from runstream_services.alerts import rules
from runstream_services.alerts.evaluator import AlertEvaluator
from runstream_services.alerts.rules import Rule
from runstream_services.alerts.store import AlertStore
from runstream_services.alerts.webhook import Delivery, WebhookSender, sign, verify
from runstream_services.bus.base import Envelope
from runstream_services.config import ServerSettings
from runstream_services.errors import InvalidArgument
from runstream_services.run_state import RunRow
from runstream_services.storage.clickhouse import ClientPool
from runstream_services.storage.migrations import migrate
from runstream_services.writers.store import StoredBlock
from tests.webhook_receiver import WebhookReceiver

URL = "http://127.0.0.1:9/hook"


def rule(**over) -> Rule:
    fields = {"project": "p", "rule_id": "r1", "name": "n", "kind": "threshold", "key": "loss", "op": ">",
              "value": 5.0, "webhook_url": URL, "secret": "s"}  # fmt: skip
    return Rule(**{**fields, **over})


@pytest.mark.parametrize(
    "over, says",
    [
        ({"kind": "sometimes"}, "unknown"),
        ({"webhook_url": "file:///etc/passwd"}, "http"),
        ({"op": "~"}, "op"),
        ({"value": math.nan}, "finite"),
        ({"last_n": 0}, "last_n"),
        ({"kind": "no_points", "minutes": 0}, "minutes"),
        ({"key": ""}, "empty key"),
    ],
)
def test_bad_rules_are_refused_with_what_to_fix(over, says):
    with pytest.raises(InvalidArgument, match=says):
        rules.checked(rule(**over))


def test_window_means_cover_every_window_ending_in_the_batch():
    means, ends = rules.window_means([0.1], np.array([0.2, 0.3, 1.5]), 3)
    assert means.tolist() == pytest.approx([0.2, 2.0 / 3]) and ends.tolist() == [1, 2]
    means, ends = rules.window_means([], np.array([0.1, 0.2]), 3)
    assert len(means) == 0 and len(ends) == 0  # too few points: undecided
    assert rules.window_means([], np.array([4.0, 6.0]), 1)[0].tolist() == [4.0, 6.0]


def test_episodes_fire_once_until_the_condition_ends():
    e = rules.Episodes()
    assert e.enter("p", "r", "run") and not e.enter("p", "r", "run")
    e.leave("p", "r", "run")
    assert e.enter("p", "r", "run")


def test_signature_is_hmac_sha256_of_the_body():
    import hashlib
    import hmac

    body = b'{"a": 1}'
    assert sign("k", body) == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert verify("k", body, sign("k", body)) and not verify("k", body + b" ", sign("k", body))


def test_webhook_retries_with_backoff_then_delivers():
    receiver = WebhookReceiver(fail_first=2)
    outcomes = []
    sender = WebhookSender(
        lambda d, status, n, err: outcomes.append((status, n, err)), attempts=3, backoff_s=0.05
    )
    try:
        sender.send(Delivery(receiver.url, "secret", {"x": 1}, {"firing_id": "f1"}))
        deadline = time.monotonic() + 10
        while not outcomes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert outcomes == [("delivered", 3, "")]
        assert receiver.requests == 3 and receiver.payloads() == [{"x": 1}]
        headers, body = receiver.received[0]
        assert verify("secret", body, headers["x-runstream-signature"])
        assert headers["x-runstream-firing"] == "f1"
    finally:
        sender.close()
        receiver.close()


def test_webhook_gives_up_after_the_last_attempt():
    outcomes = []
    sender = WebhookSender(lambda d, status, n, err: outcomes.append((status, n)), attempts=2, backoff_s=0.01)
    try:
        sender.send(Delivery("http://127.0.0.1:1/nothing-listens", "s", {}, {"firing_id": "f"}))
        deadline = time.monotonic() + 10
        while not outcomes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert outcomes == [("failed", 2)]
    finally:
        sender.close()


def _block(run_id: str, key: str, steps, values, state: str | None = None) -> StoredBlock:
    n = len(values)
    batch = ingest_pb2.MetricBatch(
        project="p", run_id=run_id, keys=[key], steps=np.asarray(steps, "<i8").tobytes(),
        values=np.asarray(values, "<f8").tobytes(), times_ms=np.zeros(n, "<i8").tobytes(),
    )  # fmt: skip
    env = Envelope(
        project="p", run_id=run_id, client_id="c", seq=1, kind="metrics", payload=b"", received_ms=1
    )
    runs = [RunRow(project="p", run_id=run_id, state=state)] if state else []
    return StoredBlock(runs=runs, params=[], metrics=[(env, batch)] if n else [], artifacts=[])


def test_evaluator_fires_once_per_episode_and_records_firings(chdb_dsn, database):
    pool = ClientPool(chdb_dsn, size=1)
    with pool.client() as client:
        migrate(client, database)
    store = AlertStore(pool, database)
    store.add_rule(rule(webhook_url="http://127.0.0.1:1/x"))
    store.add_rule(rule(rule_id="r2", kind="nonfinite", key=""))
    store.add_rule(rule(rule_id="r3", kind="no_points", key="", op="", minutes=1.0))
    store.add_rule(rule(rule_id="r4", last_n=3))  # the mean of 3 points of loss > 5
    now = [1_000.0]
    ev = AlertEvaluator(store, ServerSettings(alert_webhook_attempts=1), clock=lambda: now[0])
    ev.sender.close()  # deliveries are webhook.py's tests: here they fail at once and are recorded
    try:
        ev.reload_rules()
        ev.evaluate_block(_block("run", "", [], [], state="running"))
        ev.evaluate_block(_block("run", "loss", [0, 1, 2], [1, 6, 7]))  # r4: mean 14/3 at step 2
        ev.evaluate_block(_block("run", "loss", [3], [8]))
        ev.evaluate_block(_block("run", "loss", [4], [math.nan]))
        ev.evaluate_block(_block("run", "loss", [5], [1]))
        ev.evaluate_block(_block("run", "loss", [6], [9]))
        ev.check_silence(now_ms=1_000 * 1_000 + 61_000)  # last point at received_ms=1: silent
        ev.check_silence(now_ms=1_000 * 1_000 + 62_000)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            firings = store.firings("p")  # every firing fails at once and is recorded so
            if len(firings) == 5 and all(f[7] == "failed" for f in firings):
                break
            time.sleep(0.05)
        assert len(firings) == 5 and {f[7] for f in firings} == {"failed"}, firings
        by_rule = {}
        for f in firings:
            by_rule.setdefault(f[1], []).append(json.loads(f[6]))
        assert sorted(d["step"] for d in by_rule["r1"]) == [1, 6]
        assert by_rule["r2"] == [{"key": "loss", "step": 4, "value": "nan"}]
        assert len(by_rule["r3"]) == 1
        # r4 windows: [1,6,7] 4.67 no; [6,7,8] 7 at step 3 fires; [7,8,1] 5.33 and [8,1,9] 6 hold
        # (NaN skipped): the same episode, no second firing
        assert [(d["step"], round(d["value"], 2)) for d in by_rule["r4"]] == [(3, 7.0)]
    finally:
        ev.close()


def test_firings_left_pending_are_delivered_at_start(chdb_dsn, database):
    """A server stopped before a delivery ended leaves the firing pending; the next start sends it
    (same firing id) and records the outcome."""
    pool = ClientPool(chdb_dsn, size=1)
    with pool.client() as client:
        migrate(client, database)
    store = AlertStore(pool, database)
    receiver = WebhookReceiver()
    store.add_rule(rule(webhook_url=receiver.url))
    pending = {"project": "p", "rule_id": "r1", "run_id": "run", "firing_id": "f-1", "fired_ms": int(time.time() * 1000),
               "message": "loss = 7 > 5", "detail": json.dumps({"step": 3}), "status": "pending", "attempts": 0,
               "last_error": ""}  # fmt: skip
    store.record_firing(pending)
    ev = AlertEvaluator(store, ServerSettings())
    try:
        ev.start()
        [payload] = receiver.wait_for(lambda ps: len(ps) == 1, timeout_s=10)
        assert payload["firing_id"] == "f-1" and payload["detail"] == {"step": 3}
        assert verify("s", receiver.received[0][1], receiver.received[0][0]["x-runstream-signature"])
        deadline = time.monotonic() + 10
        while store.firings("p")[0][7] != "delivered" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.firings("p")[0][7] == "delivered" and store.pending_firings(0) == []
    finally:
        ev.close()
        receiver.close()


def test_webhook_hosts_can_be_limited():
    allowed = ("hooks.example.com", ".corp.example")
    rules.checked(rule(webhook_url="https://hooks.example.com/x"), allowed)
    rules.checked(rule(webhook_url="https://a.corp.example:8443/x"), allowed)
    for url in ("http://169.254.169.254/latest", "http://127.0.0.1:9/x", "https://evilcorp.example/x"):
        with pytest.raises(InvalidArgument, match="alert_webhook_hosts"):
            rules.checked(rule(webhook_url=url), allowed)
    rules.checked(rule(webhook_url="http://127.0.0.1:9/x"))  # no list: any host


def test_an_edit_of_a_crashed_run_fires_no_crashed_alert(chdb_dsn, database):
    pool = ClientPool(chdb_dsn, size=1)
    with pool.client() as client:
        migrate(client, database)
    store = AlertStore(pool, database)
    store.add_rule(rule(kind="crashed", key="", op=""))
    ev = AlertEvaluator(store, ServerSettings(alert_webhook_attempts=1))
    ev.sender.close()
    try:
        ev.reload_rules()
        crashed = RunRow(project="p", run_id="run", state="crashed")
        ev.evaluate_block(StoredBlock(runs=[crashed], params=[], metrics=[], artifacts=[], edited=True))
        assert ev.fired == 0  # a person renamed a crashed run (e.g. after a restart): nothing new
        ev.evaluate_block(StoredBlock(runs=[crashed], params=[], metrics=[], artifacts=[]))
        assert ev.fired == 1
    finally:
        ev.close()
