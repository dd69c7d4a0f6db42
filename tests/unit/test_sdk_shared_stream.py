"""The runs of one process share one Ingest stream (client/runstream/_internal/shared_stream.py):
packed messages carry the requests of several runs, each keeping its own client_id and seq; an
answer is routed back to the run of each request (an ok to all, `packed_refused` to the ones it
names); after a broken stream every run resends what it has pending; with no run attached the
call ends and the next run opens one. Against the stand-in IngestService of sdk_fake_ingest.py
(the unit suite runs without the real server; tests/integration/test_sdk_shared_stream.py runs
the same against `runstream server`), plus the packing and routing logic on its own."""

from __future__ import annotations

import threading
import time
from collections import deque
from types import SimpleNamespace

import pytest

import runstream
from runstream._internal import shared_stream
from runstream._internal.shared_stream import SharedIngest, pack
from runstream._internal.stream import IngestStream
from runstream.v1 import ingest_pb2
from tests.sdk_options import quick_sdk_options, wait_for
from tests.unit.sdk_fake_ingest import FakeIngest


def _init(fake, tmp_path, **kw):
    options = quick_sdk_options(fake.endpoint, tmp_path, console="off", reconnect_max_s=0.3)
    return runstream.init("unit", **{**options, **kw})


def _steps(fake: FakeIngest, run_id: str, key: str = "x") -> list[int]:
    return sorted(s for k, s, _, _ in fake.points(run_id) if k == key)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "own-streams"])
def test_the_runs_of_a_process_share_one_call_and_each_request_is_stored_once(fake, tmp_path, shared):
    runs = []

    def one(i: int) -> None:
        run = _init(fake, tmp_path, name=f"r{i}", shared_stream=shared)
        for step in range(300):
            run.log({"x": float(step)}, step=step)
        assert run.finish() is True
        runs.append(run)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(runs) == 6
    for run in runs:
        assert _steps(fake, run.id) == list(range(300)), "every point once"
        assert run.stats["acked"] == run.stats["submitted"] and run.stats["pending"] == 0
    assert fake.calls == (1 if shared else 6), "one Ingest call for all the runs, or one each"
    if shared:
        assert fake.packed_clients and all(clients for clients in fake.packed_clients)


def test_after_a_broken_shared_stream_every_run_resends_and_nothing_is_doubled(fake, tmp_path):
    runs = [_init(fake, tmp_path, name=f"r{i}") for i in range(3)]
    for run in runs:
        for step in range(100):
            run.log({"x": float(step)}, step=step)
    assert wait_for(lambda: all(len(_steps(fake, r.id)) == 100 for r in runs))
    fake.stop()
    for run in runs:
        for step in range(100, 200):
            run.log({"x": float(step)}, step=step)
    time.sleep(0.3)  # the runs send into a stream that is gone
    fake.start()
    for run in runs:
        assert run.finish() is True
        assert _steps(fake, run.id) == list(range(200))
        assert run.stats["reconnects"] >= 1
    assert fake.calls >= 2


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "own-stream"])
def test_a_call_broken_with_requests_in_flight_is_resent_with_nothing_new_to_send(tmp_path, shared):
    """The server goes away while the run's last requests wait for their acks, and the run logs
    nothing more: the sender learns of the broken call by itself (the reader's end wakes it, see
    wakeup.py), reconnects and resends, so a flush delivers them; nothing is doubled."""
    break_next = threading.Event()

    def break_the_call(req):  # the request is not stored: the call ends (UNKNOWN), unanswered
        if break_next.is_set():
            break_next.clear()
            raise ConnectionResetError("the server went away mid-call")
        return None

    fake = FakeIngest(refuse=break_the_call).start()
    try:
        run = _init(fake, tmp_path, name="in-flight", shared_stream=shared)
        run.log({"x": 0.0}, step=0)
        assert run.flush(10) is True
        break_next.set()
        for step in range(1, 11):
            run.log({"x": float(step)}, step=step)
        assert run.flush(10) is True, run.stats
        assert _steps(fake, run.id) == list(range(11))
        assert run.stats["reconnects"] >= 1 and fake.calls == 2
        assert run.finish() is True
    finally:
        fake.stop()


def test_a_refused_request_in_a_packed_message_is_refused_for_its_run_alone(tmp_path):
    def refuse(req):
        if req.WhichOneof("body") == "metrics" and req.metrics.run_id == "bad-run":
            return "bad metrics for this test"
        return None

    fake = FakeIngest(refuse=refuse)
    try:
        good = _init(fake, tmp_path, id="good-run")
        bad = _init(fake, tmp_path, id="bad-run")
        for step in range(50):
            good.log({"x": float(step)}, step=step)
            bad.log({"x": float(step)}, step=step)
        with pytest.warns(runstream.RefusedWarning, match="bad metrics for this test"):
            bad.finish()
        assert good.finish() is True
        assert good.stats["refused"] == 0 and _steps(fake, "good-run") == list(range(50))
        assert bad.refused_count >= 1 and _steps(fake, "bad-run") == []
        assert (tmp_path / "spool" / "bad-run" / f"{bad.client_id}.refused").stat().st_size > 0
        assert [b.run_id for b in fake.bodies("run_finish")].count("bad-run") == 1, "its finish went through"
    finally:
        fake.stop()


def test_the_call_ends_when_no_run_is_attached_and_the_next_run_opens_one(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(shared_stream, "IDLE_CLOSE_S", 0.2)
    first = _init(fake, tmp_path)
    first.log({"x": 1.0}, step=0)
    assert first.finish() is True
    assert wait_for(lambda: fake.open_calls == 0), "closed once idle"
    second = _init(fake, tmp_path)
    second.log({"x": 2.0}, step=0)
    assert second.finish() is True
    assert fake.calls == 2 and _steps(fake, second.id) == [0]


def test_a_server_with_a_smaller_message_limit_gets_one_request_per_message(tmp_path):
    """The server takes 64 KiB messages; the run's requests are ~40 KB each and a packed message
    of several is refused (RESOURCE_EXHAUSTED, larger than max): the shared stream then sends each
    request alone, and everything arrives once."""
    fake = FakeIngest(max_message_bytes=64 << 10)
    try:
        run = _init(fake, tmp_path, max_batch_points=2_000, flush_interval_s=5.0)
        for step in range(20_000):  # drained at finish: ten requests of 2,000 points at once
            run.log({"x": float(step)}, step=step)
        assert run.finish(timeout_s=60) is True
        assert _steps(fake, run.id) == list(range(20_000))
        assert run.stats["reconnects"] >= 1, "the packed message was refused first"
    finally:
        fake.stop()


# ---- the packing and routing on their own ----------------------------------------------------


class _Stream(SimpleNamespace):
    __hash__ = object.__hash__  # kept in sets, as IngestStreams are
    next_seq_to_send = IngestStream.next_seq_to_send  # the window, as the real stream keeps it
    take_seq = IngestStream.take_seq


def _stream(name: str, seqs, window: int = 64, size: int = 10):
    """An IngestStream stand-in: what SharedIngest reads and calls."""
    answers = []
    return _Stream(
        name=name,
        to_send=deque(seqs),
        pending={seq: f"{name}{seq}".encode().ljust(size, b".") for seq in seqs},
        sent_here=set(),
        max_inflight=window,
        entry_bytes=lambda entry: entry,
        detached=False,
        answers=answers,
        answered=lambda seq, resp: answers.append((seq, resp.ok, resp.message)),
        acked_event=threading.Event(),
        connected=False,
        ever_connected=False,
    )


def _shared(*streams) -> SharedIngest:
    channel = SimpleNamespace(stream_stream=lambda *a, **k: None)
    shared = SharedIngest.__new__(SharedIngest)
    SharedIngest.__init__(shared, channel, (), 0.1, 1.0)
    shared.streams = list(streams)
    return shared


def test_a_message_takes_the_runs_ready_requests_in_order_within_each_runs_window(monkeypatch):
    a, b = _stream("a", [1, 2, 3, 4], window=2), _stream("b", [1, 2])
    shared = _shared(a, b)
    members, data = shared._gather()
    assert [(s.name, q) for s, q in members] == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    assert data == [a.pending[1], a.pending[2], b.pending[1], b.pending[2]]
    assert shared._gather() == ([], []), "a's window is full until its acks come"
    del a.pending[1]  # acked
    assert [(s.name, q) for s, q in shared._gather()[0]] == [("a", 3)]

    monkeypatch.setattr(shared_stream, "MAX_PACK_REQUESTS", 2)
    c, d = _stream("c", [1, 2, 3]), _stream("d", [1])
    shared = _shared(c, d)
    assert [(s.name, q) for s, q in shared._gather()[0]] == [("c", 1), ("c", 2)]
    assert [(s.name, q) for s, q in shared._gather()[0]] == [("c", 3), ("d", 1)], "the rest next"

    monkeypatch.setattr(shared_stream, "MAX_PACK_BYTES", 25)
    big, small = _stream("big", [1], size=100), _stream("small", [1, 2])
    shared = _shared(big, small)
    assert [(s.name, q) for s, q in shared._gather()[0]] == [("big", 1)], "a large request goes alone"
    assert [(s.name, q) for s, q in shared._gather()[0]] == [("small", 1), ("small", 2)]


def test_an_answer_reaches_the_run_of_each_request_of_its_message():
    a, b, gone = _stream("a", []), _stream("b", []), _stream("gone", [])
    gone.detached = True
    shared = _shared(a, b)
    shared._inflight = {7: [(a, 1), (b, 1), (a, 2), (gone, 4)], 8: [(b, 2)], 9: [(a, 3), (b, 3)]}
    refusal = ingest_pb2.PackedRefusal(index=1, code=3, message="b's first is bad")
    shared._answer(7, ingest_pb2.IngestResponse(seq=7, ok=False, code=3, packed_refused=[refusal]))
    shared._answer(8, ingest_pb2.IngestResponse(seq=8, ok=True))
    shared._answer(9, ingest_pb2.IngestResponse(seq=9, ok=False, code=8, message="whole message"))
    shared._answer(7, ingest_pb2.IngestResponse(seq=7, ok=True))  # a second answer: nothing left
    assert a.answers == [(1, True, ""), (2, True, ""), (3, False, "whole message")]
    assert b.answers == [(1, False, "b's first is bad"), (2, True, ""), (3, False, "whole message")]
    assert gone.answers == [], "a run that detached is not answered"
    assert a.acked_event.is_set() and a.ever_connected


def test_pack_is_the_packed_ingest_request():
    requests = [b"x" * 300, b"", ingest_pb2.IngestRequest(seq=5, client_id="c").SerializeToString()]
    for seq in (1, 127, 128, 300_000, 2**40):
        assert ingest_pb2.IngestRequest.FromString(pack(seq, requests)) == ingest_pb2.IngestRequest(
            seq=seq, packed=requests
        )
