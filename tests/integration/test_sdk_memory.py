"""Memory stays bounded while the real `runstream server` cannot take data: the embedded server
child process is frozen with SIGSTOP (its socket stays open, nothing is read or acked), the SDK
logs many times `max_memory_bytes`, and the SDK's own accounting must stay within the limit while
the rest goes to the disk spool; after SIGCONT every point is stored exactly once.

The accounting is read from the SDK's internals (`stream.mem_bytes`: unacked requests held in
memory; `buffer.queued_bytes()`: the caller->worker hand-off), because `run.stats` does not expose
byte counts; `run.stats` gives the public counters (spilled, pending, acked)."""

from __future__ import annotations

import os
import signal
import threading
import time

import runstream
from runstream.run import HANDOFF_WAIT_S
from tests.chdb_inspect import STORED_SEQS, stored
from tests.integration.test_sdk_delivery import poll_until
from tests.sdk_options import quick_sdk_options

LIMIT = 1 << 20  # max_memory_bytes: the smallest the SDK accepts
BATCH_POINTS = 1_000
STEPS = 150_000  # 2 keys: 300k points, ~10x LIMIT once packed


class PeakSampler(threading.Thread):
    """Samples the SDK's accounted bytes until stopped; keeps the peaks."""

    def __init__(self, run: runstream.Run):
        super().__init__(daemon=True)
        self.stream = run._pipeline.ready()
        self.buffer = run._buffer
        self.peak_unacked = self.peak_handoff = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak_unacked = max(self.peak_unacked, self.stream.mem_bytes)
            self.peak_handoff = max(self.peak_handoff, self.buffer.queued_bytes())
            time.sleep(0.001)


def _settled_stats(run, timeout_s: float = 30) -> dict:
    """run.stats once two readings 50 ms apart agree (the worker is done with what it took)."""
    deadline = time.monotonic() + timeout_s
    last = run.stats
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = run.stats
        if now == last:
            return now
        last = now
    return last


def test_memory_stays_bounded_while_the_server_is_frozen_and_everything_arrives_once(
    embedded_server, tmp_path
):
    run = runstream.init(
        "sdk-memory",
        **quick_sdk_options(
            embedded_server.endpoint, tmp_path, max_memory_bytes=LIMIT, max_batch_points=BATCH_POINTS
        ),
    )
    run.log({"x": 0.0, "y": 0.0}, step=0)
    assert run.flush(30)  # connected and acked before the freeze
    pid = embedded_server.proc.pid
    sampler = PeakSampler(run)
    sampler.start()
    os.kill(pid, signal.SIGSTOP)
    try:
        for step in range(1, STEPS):
            run.log({"x": float(step), "y": -float(step)}, step=step)
        # the worker packs everything logged into requests, which the frozen server never acks
        poll_until(lambda: not run._entries, "empty hand-off while the server is frozen", timeout_s=120)
        # the hand-off empties when the worker takes the last entries, a moment before it has queued
        # them (submitted counts a request before its spool append returns): read settled counters
        frozen = _settled_stats(run)
        stream = run._pipeline.ready()
        unacked_in_memory = stream.mem_bytes
        spool_bytes = stream.spool.path.stat().st_size if stream.spool.path.exists() else 0
    finally:
        os.kill(pid, signal.SIGCONT)
        sampler.done.set()
        sampler.join()
    largest_request = 64 + BATCH_POINTS * (2 + 8 + 8 + 8)  # key index, step, value, time
    assert frozen["pending"] == frozen["submitted"] - frozen["acked"] > 0, frozen
    # bounded: unacked requests in memory never pass the limit; the hand-off stays within the limit
    # plus one wake of the worker; everything else went to the spool
    assert sampler.peak_unacked <= LIMIT, sampler.peak_unacked
    assert unacked_in_memory <= LIMIT
    # run.log checks the hand-off every ~LIMIT/4 bytes of entries and waits for the worker at most
    # HANDOFF_WAIT_S each time ("slowed, never stopped"): each wait that gave up allows LIMIT/4 more
    gave_up = int(frozen["handoff_wait_s"] // HANDOFF_WAIT_S)
    handoff_bound = LIMIT + (1 + gave_up) * (LIMIT // 4) + largest_request
    assert sampler.peak_handoff <= handoff_bound, (sampler.peak_handoff, handoff_bound, frozen)
    assert frozen["spilled"] > 0 and spool_bytes >= 4 * LIMIT, (frozen, spool_bytes)

    assert run.finish(timeout_s=120) is True
    stats = run.stats
    assert stats["acked"] == stats["submitted"] and stats["refused"] == stats["dropped"] == 0, stats
    assert not stream.spool.path.exists()  # reclaimed once everything spilled was acked
    embedded_server.stop()
    ((rows, rows_final, points, requests),) = stored(
        embedded_server,
        f"SELECT (SELECT count() FROM DB.metrics WHERE run_id = '{run.id}'), "
        f"(SELECT count() FROM DB.metrics FINAL WHERE run_id = '{run.id}'), "
        f"(SELECT uniqExact(run_id, key, rank, step) FROM DB.metrics WHERE run_id = '{run.id}'), "
        f"(SELECT {STORED_SEQS} FROM DB.client_seqs FINAL WHERE client_id = '{run.client_id}')",
    )
    assert (rows, rows_final, points) == (2 * STEPS,) * 3
    assert requests == stats["submitted"]
