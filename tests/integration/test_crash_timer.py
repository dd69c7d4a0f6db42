"""Crash marking through the server's own timer (crash_after_s), not a direct mark_crashed call: an
SDK process that logs and is then SIGKILLed leaves its run "running" with a stale heartbeat, and the
server marks it "crashed" on its own; a later run_update (a heartbeat) revives it to "running", as
run_state.merge_run_update documents (the server declared it dead too early).

Nothing here asserts timing: the states are polled with generous deadlines. While the SDK process
lives, its heartbeats (every HEARTBEAT_S, far below CRASH_AFTER_S) keep the run running, so the
crash comes from the kill, not from a crash_after_s shorter than the heartbeat."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest

import runstream
from runstream.v1 import ingest_pb2 as pb
from tests.ingest_client import stub_for
from tests.server_process import ServerProcess

PROJECT = "crash-timer"
CRASH_AFTER_S = 4.0  # the server checks every crash_after_s / 4
HEARTBEAT_S = 0.2
POINTS = 5
WAIT_S = 90.0  # a generous bound for any state change; never a measured time

SDK_CHILD = """
import sys, time
import runstream
run = runstream.init(project=sys.argv[1], id=sys.argv[2], endpoint=sys.argv[3], spool_dir=sys.argv[4],
                     heartbeat_interval_s=float(sys.argv[5]))
for step in range(int(sys.argv[6])):
    run.log({"loss": 1.0 / (step + 1)}, step=step)
assert run.flush(60), "points not acked"
print("logged", flush=True)
time.sleep(3600)  # alive (heartbeating) until the test kills it
"""


@pytest.fixture
def server(tmp_path):
    process = ServerProcess(tmp_path / "server", env={"RUNSTREAM_CRASH_AFTER_S": str(CRASH_AFTER_S)}).start()
    yield process
    process.stop()


def start_sdk_process(server: ServerProcess, run_id: str, spool_dir) -> subprocess.Popen:
    """A training process that logs POINTS points, waits for their acks, says "logged", then idles."""
    args = [PROJECT, run_id, server.endpoint, str(spool_dir), str(HEARTBEAT_S), str(POINTS)]
    child = subprocess.Popen([sys.executable, "-c", SDK_CHILD, *args], stdout=subprocess.PIPE, text=True)
    line = child.stdout.readline().strip()  # blocks until the child logged (or died)
    assert line == "logged", f"the SDK process did not log (exit {child.poll()})"
    return child


def wait_for_state(api: runstream.Api, run_id: str, state: str) -> dict:
    """The run once it is in `state`; fails after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    run = api.run(PROJECT, run_id)
    while run["state"] != state and time.monotonic() < deadline:
        time.sleep(0.2)
        run = api.run(PROJECT, run_id)
    assert run["state"] == state, f"still {run['state']} after {WAIT_S}s, waiting for {state}"
    return run


def heartbeat(server: ServerProcess, run_id: str) -> None:
    """A run_update carrying only a heartbeat, from a new client (a restarted process)."""
    update = pb.RunUpdate(project=PROJECT, run_id=run_id, heartbeat_ms=int(time.time() * 1000))
    request = pb.IngestRequest(seq=1, client_id=uuid.uuid4().hex, run_update=update)
    (ack,) = stub_for(server).Ingest(iter([request]), timeout=60)
    assert ack.ok, ack.message


def test_a_killed_sdk_process_is_marked_crashed_by_the_timer_and_a_heartbeat_revives_it(server, tmp_path):
    api = runstream.Api(server.endpoint)
    run_id = uuid.uuid4().hex[:16]
    child = start_sdk_process(server, run_id, tmp_path / "spool")
    try:
        first = api.run(PROJECT, run_id)
        assert first["state"] == "running"
        # alive for two crash windows: its heartbeats keep it running (and move its heartbeat)
        deadline = time.monotonic() + 2 * CRASH_AFTER_S
        while time.monotonic() < deadline:
            assert api.run(PROJECT, run_id)["state"] == "running", "a heartbeating run was marked crashed"
            time.sleep(0.5)
        assert api.run(PROJECT, run_id)["heartbeat_ms"] > first["heartbeat_ms"]
    finally:
        child.kill()  # SIGKILL: no finish, no goodbye
        child.wait()

    crashed = wait_for_state(api, run_id, "crashed")
    assert crashed["end_ms"] == crashed["heartbeat_ms"] > 0  # ended at its last sign of life
    assert crashed["metrics"]["loss"]["count"] == POINTS  # what it logged stays

    heartbeat(server, run_id)
    revived = wait_for_state(api, run_id, "running")
    assert revived["end_ms"] == 0
    assert revived["heartbeat_ms"] > crashed["heartbeat_ms"]


def test_a_finished_run_is_never_marked_crashed(server, tmp_path):
    """The timer marks only running runs: a run finished and silent since stays finished."""
    api = runstream.Api(server.endpoint)
    sdk = {"endpoint": server.endpoint, "spool_dir": str(tmp_path / "spool")}
    with runstream.init(project=PROJECT, heartbeat_interval_s=HEARTBEAT_S, **sdk) as run:
        run.log({"loss": 1.0}, step=0)
    silent_run = runstream.init(project=PROJECT, heartbeat_interval_s=3600, **sdk)
    silent_run.log({"loss": 1.0}, step=0)
    assert silent_run.flush(60)
    try:
        # the silent running run is the witness that the timer ran since the finish
        wait_for_state(api, silent_run.id, "crashed")
        assert api.run(PROJECT, run.id)["state"] == "finished"
    finally:
        silent_run.finish()
