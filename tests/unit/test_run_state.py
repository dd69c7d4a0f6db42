"""run_state.py: transitions, run-row merges and the registry's lookup chain — and that no other
server module spells the run-state vocabulary again."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

import pytest

from runstream import states
from runstream.v1 import ingest_pb2 as pb
from runstream.v1 import types_pb2
from runstream_services import run_state
from runstream_services.errors import AlreadyExists, NotFound
from runstream_services.run_state import RunRegistry, RunRow

T0 = 1_700_000_000_000


def finish(rank: int = 0, state=types_pb2.RUN_STATE_FINISHED, end_ms: int = 0) -> pb.RunFinish:
    return pb.RunFinish(project="p", run_id="r", state=state, rank=rank, end_ms=end_ms)


# ---- transitions -------------------------------------------------------------------------------


def test_only_rank_0_finishing_finishes_the_run():
    assert run_state.state_set_by("run_start", pb.IngestRequest(run_start=pb.RunStart())) == states.RUNNING
    failed = pb.IngestRequest(run_finish=finish(state=types_pb2.RUN_STATE_FAILED))
    assert run_state.state_set_by("run_finish", failed) == states.FAILED
    assert run_state.state_set_by("run_finish", pb.IngestRequest(run_finish=finish(rank=1))) is None
    assert run_state.state_set_by("run_update", pb.IngestRequest(run_update=pb.RunUpdate())) is None
    assert run_state.state_set_by("metrics", pb.IngestRequest(metrics=pb.MetricBatch())) is None

    row, _ = run_state.merge_run_start(None, pb.RunStart(project="p", run_id="r"), T0)
    _, audit = run_state.merge_run_finish(row, finish(rank=3), T0 + 10)
    assert (row.state, row.end_ms, row.heartbeat_ms, audit) == (states.RUNNING, 0, T0 + 10, [])
    _, audit = run_state.merge_run_finish(row, finish(rank=0, end_ms=T0 + 20), T0 + 30)
    assert (row.state, row.end_ms) == (states.FINISHED, T0 + 20)
    assert audit == [("run.finished", {"state": "finished"})]


def test_first_start_creates_and_rank_0_describes_the_run():
    worker = pb.RunStart(project="p", run_id="r", name="from-rank-2", rank=2, start_ms=T0 + 5,
                         context=types_pb2.RunContext(host="node2"), tags={"a": "1"})  # fmt: skip
    row, audit = run_state.merge_run_start(None, worker, T0 + 50)
    assert (row.name, row.host, row.start_ms, row.state) == ("from-rank-2", "node2", T0 + 5, "running")
    assert audit == [("run.created", {"name": "from-rank-2", "rank": 2})]

    lead = pb.RunStart(project="p", run_id="r", name="the-run", group="g", rank=0, start_ms=T0,
                       context=types_pb2.RunContext(host="node0"), tags={"b": "2"})  # fmt: skip
    same, audit = run_state.merge_run_start(row, lead, T0 + 60)
    assert same is row and audit == []
    assert (row.name, row.group, row.host, row.start_ms) == ("the-run", "g", "node0", T0)
    assert row.tags == {"a": "1", "b": "2"} and row.heartbeat_ms == T0 + 60


def test_a_later_non_zero_rank_only_fills_gaps():
    row, _ = run_state.merge_run_start(None, pb.RunStart(project="p", run_id="r", name="the-run"), T0)
    other = pb.RunStart(project="p", run_id="r", name="rank-1", job_type="train", rank=1,
                        context=types_pb2.RunContext(host="node1", user="ann"))  # fmt: skip
    _, audit = run_state.merge_run_start(row, other, T0 + 1)
    assert (row.name, row.job_type, row.host, row.user) == ("the-run", "train", "node1", "ann")
    assert '"host": "node1"' in row.context and audit == []


def test_resume_reopens_an_ended_run_and_a_plain_start_does_not():
    row, _ = run_state.merge_run_start(None, pb.RunStart(project="p", run_id="r"), T0)
    run_state.merge_run_finish(row, finish(state=types_pb2.RUN_STATE_KILLED), T0 + 1)
    run_state.merge_run_start(row, pb.RunStart(project="p", run_id="r"), T0 + 2)
    assert row.state == states.KILLED  # ingest refuses this start; a replay changes nothing
    _, audit = run_state.merge_run_start(
        row, pb.RunStart(project="p", run_id="r", resume=True, rank=0), T0 + 3
    )
    assert (row.state, row.end_ms, audit) == (states.RUNNING, 0, [("run.resumed", {"rank": 0})])


def test_a_late_rank_joins_a_run_rank_0_ended_without_reopening_it():
    """Ranks resume by default (to join); one that starts after rank 0 finished (process start-up
    skew, a tiny job) must not make the run running again. A crashed run is revived by any rank."""
    row, _ = run_state.merge_run_start(None, pb.RunStart(project="p", run_id="r"), T0)
    run_state.merge_run_finish(row, finish(rank=0), T0 + 1)
    late = pb.RunStart(project="p", run_id="r", resume=True, rank=2)
    _, audit = run_state.merge_run_start(row, late, T0 + 2)
    assert (row.state, audit) == (states.FINISHED, [])
    assert run_state.state_set_by("run_start", pb.IngestRequest(run_start=late), states.FINISHED) is None
    row.state = states.CRASHED  # as crash_if_silent leaves it
    _, audit = run_state.merge_run_start(row, late, T0 + 3)
    assert (row.state, audit) == (states.RUNNING, [("run.resumed", {"rank": 2})])
    assert (
        run_state.state_set_by("run_start", pb.IngestRequest(run_start=late), states.CRASHED)
        == states.RUNNING
    )


def test_silent_runs_crash_and_an_update_revives_them():
    row, _ = run_state.merge_run_start(None, pb.RunStart(project="p", run_id="r"), T0)
    assert run_state.crash_if_silent(row, cutoff_ms=T0) is None  # heard from at the cutoff
    assert run_state.crash_if_silent(row, cutoff_ms=T0 + 1) == ("run.crashed", {"last_heartbeat_ms": T0})
    assert (row.state, row.end_ms) == (states.CRASHED, T0)
    assert run_state.crash_if_silent(row, cutoff_ms=T0 + 99) is None  # not running any more

    update = pb.RunUpdate(project="p", run_id="r", heartbeat_ms=T0 + 500, has_notes=True, notes="n")
    _, audit = run_state.merge_run_update(row, update, T0 + 400)
    assert (row.state, row.end_ms, row.heartbeat_ms, row.notes) == (states.RUNNING, 0, T0 + 500, "n")
    assert audit == [("run.revived", {})]

    finished, _ = run_state.merge_run_finish(None, finish(), T0)  # out of order: row made on the fly
    run_state.merge_run_update(finished, pb.RunUpdate(project="p", run_id="r"), T0 + 1)
    assert finished.state == states.FINISHED  # only a crashed run is revived


def test_metric_batches_refresh_the_heartbeat_sparingly():
    row = RunRow(project="p", run_id="r", heartbeat_ms=T0)
    assert not run_state.heartbeat_from_metrics(row, T0 + run_state.HEARTBEAT_EVERY_MS)
    assert run_state.heartbeat_from_metrics(row, T0 + run_state.HEARTBEAT_EVERY_MS + 1)
    assert row.heartbeat_ms == T0 + run_state.HEARTBEAT_EVERY_MS + 1


def test_run_row_round_trips_through_its_columns():
    row = RunRow(project="p", run_id="r", name="n", tags={"a": "b"}, version=7)
    assert run_state.RUN_COLUMNS[:3] == ("project", "run_id", "name")
    assert RunRow.from_db(tuple(row.values())) == row


# ---- the registry ------------------------------------------------------------------------------


class Source:
    def __init__(self, known: dict[tuple[str, str], str]):
        self.known = known
        self.asked: list[tuple[str, str, str]] = []

    def run_state(self, project: str, run_id: str) -> str | None:
        self.asked.append((project, run_id, threading.current_thread().name))
        return self.known.get((project, run_id))


def test_lookup_asks_memory_then_directory_then_store_and_remembers():
    directory = Source({("p", "fresh"): "running"})
    store = Source({("p", "fresh"): "finished", ("p", "old"): "failed"})
    runs = RunRegistry(directory=directory, store=store)

    async def scenario():
        assert await runs.state("p", "fresh") == "running"  # the directory answers first
        assert await runs.state("p", "old") == "failed"  # then the store
        assert await runs.state("p", "nope") is None
        directory.known[("p", "fresh")] = "killed"
        assert await runs.state("p", "fresh") == "running"  # remembered: memory comes first
        runs.published("run_finish", pb.IngestRequest(run_finish=finish(rank=1)), "p", "fresh")
        assert await runs.state("p", "fresh") == "running"  # rank 1 does not finish it
        runs.published("run_finish", pb.IngestRequest(run_finish=finish()), "p", "fresh")
        assert await runs.state("p", "fresh") == "finished"

    asyncio.run(scenario())
    assert [a[:2] for a in directory.asked] == [("p", "fresh"), ("p", "old"), ("p", "nope")]
    assert [a[:2] for a in store.asked] == [("p", "old"), ("p", "nope")]
    main = threading.main_thread().name
    assert all(t == main for *_, t in directory.asked)  # from memory, on the event loop
    assert all(t != main for *_, t in store.asked)  # may query: in a worker thread


def test_admission_follows_the_run_state():
    stored = {("client", 5)}
    runs = RunRegistry(
        store=Source({("p", "ended"): "crashed", ("p", "live"): "running"}),
        replays=lambda client_id, seq: (client_id, seq) in stored,
    )

    def request(seq=1, **body):
        return pb.IngestRequest(client_id="client", seq=seq, **body)

    async def scenario():
        start = request(run_start=pb.RunStart(project="p", run_id="ended"))
        with pytest.raises(AlreadyExists, match="already ended \\(crashed\\): set resume=True"):
            await runs.admit("run_start", "p", "ended", start)
        await runs.admit("run_start", "p", "ended", request(5, run_start=start.run_start))  # a replay
        resume = request(run_start=pb.RunStart(project="p", run_id="ended", resume=True))
        await runs.admit("run_start", "p", "ended", resume)
        await runs.admit("run_start", "p", "new", request(run_start=pb.RunStart(project="p", run_id="new")))
        await runs.admit("metrics", "p", "live", request(metrics=pb.MetricBatch()))
        with pytest.raises(NotFound, match="send its run_start first"):
            await runs.admit("metrics", "p", "new", request(metrics=pb.MetricBatch()))

    asyncio.run(scenario())


# ---- one vocabulary ----------------------------------------------------------------------------

SERVICES = Path(__file__).resolve().parents[2] / "services"
_NAME = r"""["'](?:unspecified|unknown|running|finished|failed|crashed|killed)["']"""
STATE_MAP_PATTERNS = [
    re.compile(r"RUN_STATE_[A-Z]+\s*:"),  # {RUN_STATE_X: "x", ...}
    re.compile(r":\s*types_pb2\.RUN_STATE_"),  # {"x": RUN_STATE_X, ...}
    re.compile(r"""removeprefix\(\s*["']RUN_STATE_"""),  # deriving the names again
    re.compile(rf"{_NAME}\s*,\s*{_NAME}\s*,\s*{_NAME}"),  # a list of three or more state names
]


def test_no_server_module_spells_the_state_names_again():
    """The names live in runstream/states.py; services import them (run_state.py builds on them)."""
    offenders = [
        f"{path.relative_to(SERVICES.parent)}:{n}: {line.strip()}"
        for path in sorted(SERVICES.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if any(p.search(line) for p in STATE_MAP_PATTERNS)
    ]
    assert not offenders, "import runstream.states instead of spelling state names:\n" + "\n".join(offenders)


def test_a_replayed_run_event_changes_no_state_whatever_its_body():
    """Found by tests/fuzz: a stored (client_id, seq) resent with a resuming run_start was acked
    (a replay), skipped by the writer, yet noted as running by ingest, which then let a new
    client's run_start without resume through for the finished run."""
    stored = {("c", 1)}
    runs = RunRegistry(replays=lambda client_id, seq: (client_id, seq) in stored)
    runs.note("p", "r", states.FINISHED)
    replay = pb.IngestRequest(
        client_id="c", seq=1, run_start=pb.RunStart(project="p", run_id="r", resume=True)
    )
    # The same replay twice on one stream, both admitted (and expected) before either is durable,
    # as the embedded bus pipelines run events (found by tests/fuzz again with group commit).
    for _ in range(2):
        asyncio.run(runs.admit("run_start", "p", "r", replay))
        runs.expect("run_start", replay, "p", "r")
    assert asyncio.run(runs.state("p", "r")) == states.FINISHED
    runs.published("run_start", replay, "p", "r")
    runs.published("run_start", replay, "p", "r")
    assert asyncio.run(runs.state("p", "r")) == states.FINISHED
    # One seq replayed with two bodies at once (fuzz, under load): the run_update's publish must
    # not use up the mark of the run_start beside it.
    update = pb.IngestRequest(client_id="c", seq=1, run_update=pb.RunUpdate(project="p", run_id="r"))
    asyncio.run(runs.admit("run_start", "p", "r", replay))
    asyncio.run(runs.admit("run_update", "p", "r", update))
    runs.published("run_update", update, "p", "r")
    runs.published("run_start", replay, "p", "r")
    assert asyncio.run(runs.state("p", "r")) == states.FINISHED
    fresh = pb.IngestRequest(client_id="new", seq=1, run_start=pb.RunStart(project="p", run_id="r"))
    with pytest.raises(AlreadyExists):
        asyncio.run(runs.admit("run_start", "p", "r", fresh))
    # a real resume (not stored before) still reopens the run
    resume = pb.IngestRequest(
        client_id="new", seq=2, run_start=pb.RunStart(project="p", run_id="r", resume=True)
    )
    asyncio.run(runs.admit("run_start", "p", "r", resume))
    runs.published("run_start", resume, "p", "r")
    assert asyncio.run(runs.state("p", "r")) == states.RUNNING
