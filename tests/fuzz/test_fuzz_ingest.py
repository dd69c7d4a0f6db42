"""Fuzzes the Ingest stream of a real server: every request gets exactly one answer (an ack, or a
refusal with a gRPC code), bytes that do not decode get a refusal or end the stream with a proper
non-OK status (never silence, never OK without answers), the server stays up, and nothing acked in
the seeded run changes (checked by the `fuzz` fixture after each test)."""

from __future__ import annotations

import struct
import uuid
from collections import Counter

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from runstream.v1 import ingest_pb2 as ipb
from runstream.v1 import types_pb2
from runstream_services.config import ServerSettings
from tests.fuzz import strategies as s
from tests.fuzz.fuzz_settings import FUZZ_SETTINGS, SNAPSHOT_SETTINGS
from tests.fuzz.harness import NEVER, SEED_CLIENT, SEED_KEYS, FuzzTarget, StreamOutcome

# A real server process and chDB: not what `-m "not integration and not e2e"` (unit) selects.
pytestmark = pytest.mark.integration


def assert_answered_each(requests: list[ipb.IngestRequest], outcome: StreamOutcome) -> None:
    """Decodable requests: the stream ends OK with one answer per request, matched by seq; a
    refusal carries a code and a message, an ack none."""
    assert outcome.code == grpc.StatusCode.OK, f"a decodable request ended the stream: {outcome.describe()}"
    assert Counter(a.seq for a in outcome.answers) == Counter(r.seq for r in requests), outcome.describe()
    for answer in outcome.answers:
        if answer.ok:
            assert answer.code == 0, answer
        else:
            assert answer.code not in (0, grpc.StatusCode.UNKNOWN.value[0]) and answer.message, answer


def test_valid_shaped_streams(fuzz: FuzzTarget):
    @FUZZ_SETTINGS
    @given(s.ingest_streams())
    def one_stream(requests):
        assert_answered_each(requests, fuzz.send(requests))
        assert fuzz.server.proc.poll() is None, fuzz.server.log_tail()

    one_stream()


def _decodes(frame: bytes) -> ipb.IngestRequest | None:
    try:
        return ipb.IngestRequest.FromString(frame)
    except DecodeError:
        return None


def test_raw_frames(fuzz: FuzzTarget):
    @FUZZ_SETTINGS
    @given(st.lists(s.raw_frames(), min_size=1, max_size=16))
    def one_stream(frames):
        outcome = fuzz.send_frames(frames)
        decoded = [_decodes(f) for f in frames]
        if all(d is not None for d in decoded):
            assert_answered_each(decoded, outcome)
        elif outcome.code == grpc.StatusCode.OK:  # answered per request: all of them
            assert len(outcome.answers) == len(frames), f"OK without every answer: {outcome.describe()}"
            got = Counter(a.seq for a in outcome.answers)
            assert not Counter(d.seq for d in decoded if d is not None) - got, outcome.describe()
        else:  # ended with a status: a proper one, and only answers for what was sent
            assert outcome.code not in NEVER, outcome.describe()
            assert len(outcome.answers) <= len(frames), outcome.describe()
        assert fuzz.server.proc.poll() is None, fuzz.server.log_tail()

    one_stream()


def _poison(draw_batch: ipb.MetricBatch, how: str) -> ipb.IngestRequest:
    """A request aimed at the seeded run that validation must refuse."""
    p, r = s.SEEDED_PROJECT, s.SEEDED_RUN
    batch = ipb.MetricBatch(project=p, run_id=r, keys=["loss"], steps=struct.pack("<2q", 0, 1),
                            values=struct.pack("<2d", 9.0, 9.0))  # fmt: skip
    if how == "mismatch":
        batch.values = draw_batch.values + b"\x00" * 8
        batch.steps = draw_batch.values
    elif how == "key_index":
        batch.keys[:] = ["loss", "acc"]
        batch.key_index = struct.pack("<2H", 0, 2)
    elif how == "no_keys":
        del batch.keys[:]
    elif how == "odd_bytes":
        batch.values += b"\x01"
    elif how == "kind":
        batch.kind = 77
    elif how == "rank":
        batch.rank = 70_000
    elif how == "bad_key":
        batch.keys[:] = ["lo\x00ss"]
    if how == "deep_config":
        return ipb.IngestRequest(run_update=ipb.RunUpdate(
            project=p, run_id=r, config={"lr": types_pb2.Value(json="[" * 100_000 + "]" * 100_000)}))  # fmt: skip
    if how == "bad_json":
        return ipb.IngestRequest(run_update=ipb.RunUpdate(
            project=p, run_id=r, config={"lr": types_pb2.Value(json="{")}))  # fmt: skip
    if how == "finish_state":
        return ipb.IngestRequest(
            run_finish=ipb.RunFinish(project=p, run_id=r, state=types_pb2.RUN_STATE_RUNNING)
        )
    if how == "restart":
        return ipb.IngestRequest(run_start=ipb.RunStart(project=p, run_id=r, name="hijack"))
    return ipb.IngestRequest(metrics=batch)


POISONS = ("mismatch", "key_index", "no_keys", "odd_bytes", "kind", "rank", "bad_key", "deep_config",
           "bad_json", "finish_state", "restart")  # fmt: skip
REPLAYS = ("restart", "update", "finish", "metrics", "fuzzed_metrics")


def _replay_body(draw_batch: ipb.MetricBatch, how: str) -> ipb.IngestRequest:
    """A request for the seeded run that would change it if it were applied."""
    p, r = s.SEEDED_PROJECT, s.SEEDED_RUN
    if how == "restart":
        return ipb.IngestRequest(run_start=ipb.RunStart(project=p, run_id=r, name="hijack", resume=True))
    if how == "update":
        return ipb.IngestRequest(run_update=ipb.RunUpdate(
            project=p, run_id=r, name="hijack", config={"lr": types_pb2.Value(number=9)}))  # fmt: skip
    if how == "finish":
        return ipb.IngestRequest(
            run_finish=ipb.RunFinish(project=p, run_id=r, state=types_pb2.RUN_STATE_FAILED)
        )
    batch = ipb.MetricBatch(project=p, run_id=r, keys=list(SEED_KEYS), steps=struct.pack("<q", 0),
                            values=struct.pack("<d", 99.0), key_index=struct.pack("<H", 0))  # fmt: skip
    if how == "fuzzed_metrics":
        batch.CopyFrom(draw_batch)
        batch.project, batch.run_id = p, r
    return ipb.IngestRequest(metrics=batch)


def test_seeded_run_refuses_poison(fuzz: FuzzTarget):
    """Invalid requests aimed at the seeded run are refused one by one, and change nothing."""

    @SNAPSHOT_SETTINGS
    @given(
        st.lists(st.tuples(st.sampled_from(POISONS), s.metric_batches()), min_size=1, max_size=12), st.uuids()
    )
    def one_stream(poisons, client):
        requests = []
        for i, (how, batch) in enumerate(poisons):
            req = _poison(batch, how)
            req.seq, req.client_id = i + 1, f"poison-{client.hex}"  # never another test's client
            requests.append(req)
        outcome = fuzz.send(requests)
        assert_answered_each(requests, outcome)
        answers = {a.seq: a for a in outcome.answers}
        accepted = [(how, answers[i + 1]) for i, (how, _) in enumerate(poisons) if answers[i + 1].ok]
        assert not accepted, f"poison acked for the seeded run: {accepted}"
        fuzz.assert_seeded_unchanged()

    one_stream()


def test_seeded_run_ignores_replays(own_fuzz_target: FuzzTarget):
    """Resending the seed's own (client_id, seq) with another body is a replay of something stored:
    answered (ack or refusal) and never applied; afterwards the finished seeded run still refuses
    a new client's run_start without resume (a replayed run_start must not make ingest believe
    the run is running again)."""
    fuzz = own_fuzz_target

    @SNAPSHOT_SETTINGS
    @given(st.lists(st.tuples(st.integers(1, len(fuzz.seed_requests)), st.sampled_from(REPLAYS),
                              s.metric_batches()), min_size=1, max_size=8))  # fmt: skip
    def one_stream(replays):
        requests = []
        for seq, how, batch in replays:
            req = _replay_body(batch, how)
            req.seq, req.client_id = seq, SEED_CLIENT
            requests.append(req)
        assert_answered_each(requests, fuzz.send(requests))
        probe = _poison(ipb.MetricBatch(), "restart")
        probe.seq, probe.client_id = 1, uuid.uuid4().hex
        answer = fuzz.send([probe]).answers
        assert answer and answer[0].code == grpc.StatusCode.ALREADY_EXISTS.value[0], answer
        fuzz.assert_seeded_unchanged()

    one_stream()
    fuzz.assert_up()


def test_message_over_the_server_limit(fuzz: FuzzTarget):
    """One request above the server's max message size: refused on its own or the stream ends
    with RESOURCE_EXHAUSTED; the requests before it are answered and a new stream works."""
    limit = ServerSettings().max_message_bytes
    cid = "over-limit-client"
    good = ipb.IngestRequest(seq=1, client_id=cid, run_update=ipb.RunUpdate(
        project=s.FUZZ_PROJECT, run_id=s.LIVE_RUNS[0], notes="before"))  # fmt: skip
    huge = ipb.IngestRequest(seq=2, client_id=cid, run_update=ipb.RunUpdate(
        project=s.FUZZ_PROJECT, run_id=s.LIVE_RUNS[0], config={"big": types_pb2.Value(json="[" + "0," * (limit // 2) + "0]")}))  # fmt: skip
    outcome = fuzz.send([good, huge])
    if outcome.code == grpc.StatusCode.OK:
        assert sorted(a.seq for a in outcome.answers) == [1, 2], outcome.describe()
        assert not [a for a in outcome.answers if a.seq == 2][0].ok
    else:
        assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED, outcome.describe()
    after = ipb.IngestRequest(seq=3, client_id=cid, run_update=ipb.RunUpdate(
        project=s.FUZZ_PROJECT, run_id=s.LIVE_RUNS[0], notes="after"))  # fmt: skip
    assert_answered_each([after], fuzz.send([after]))
