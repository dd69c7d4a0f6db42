"""The SDK against a real embedded `runstream server` (child process): several ranks in one run,
a server outage during logging, offline + `runstream sync`, refusals, and a forked child.
What got stored is read from the stopped server's chDB folder, without FINAL: every point must be
there exactly once as stored."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest

import runstream
from tests import ROOT
from tests.chdb_inspect import STORED_SEQS, stored
from tests.sdk_options import quick_sdk_options

RANK_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, runstream
    steps = int(sys.argv[1])
    run = runstream.init("sdk-ranks", endpoint=sys.argv[2], spool_dir=sys.argv[3], config={"lr": 0.1, "bs": 64},
                         system_metrics_interval_s=0.2, capture_packages=False, flush_interval_s=0.05)
    for i in range(steps):
        run.log({"loss": 1.0 / (i + 1), "grad_norm": float(run.rank)}, step=i)
    run.log_arrays("tokens", np.arange(steps), np.full(steps, float(run.rank)))
    print("RUN", run.id, run.rank, run.owns_config)
    sys.exit(0 if run.finish(timeout_s=60) else 3)
    """
)


def test_ranks_as_processes_log_into_one_run_exactly_once(embedded_server, tmp_path):
    world, steps = 3, 3000
    env = {**os.environ, "WORLD_SIZE": str(world), "TORCHELASTIC_RUN_ID": "job42", "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                RANK_SCRIPT,
                str(steps),
                embedded_server.endpoint,
                str(tmp_path / f"spool{r}"),
            ],
            env={**env, "RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * world, outs
    run_ids = {line.split()[1] for out in outs for line in out.splitlines() if line.startswith("RUN")}
    assert run_ids == {"torch-job42"}
    embedded_server.stop()
    rows = stored(
        embedded_server,
        "SELECT rank, key, count(), uniqExact(step), min(step), max(step) FROM DB.metrics "
        "WHERE run_id = 'torch-job42' AND kind = 'user' GROUP BY rank, key ORDER BY rank, key",
    )
    expected = [
        [r, key, steps, steps, 0, steps - 1] for r in range(world) for key in ("grad_norm", "loss", "tokens")
    ]
    assert rows == expected
    wrong_rank = stored(
        embedded_server,
        "SELECT count() FROM DB.metrics WHERE run_id = 'torch-job42' AND key = 'grad_norm' AND value != rank",
    )
    assert wrong_rank == [[0]]
    system_ranks = stored(
        embedded_server,
        "SELECT DISTINCT rank FROM DB.metrics WHERE run_id = 'torch-job42' AND kind = 'system' ORDER BY rank",
    )
    assert system_ranks == [[r] for r in range(world)]
    state = stored(embedded_server, "SELECT state FROM DB.runs FINAL WHERE run_id = 'torch-job42'")
    assert state == [["finished"]]
    lr = stored(
        embedded_server,
        "SELECT num FROM DB.params FINAL WHERE run_id = 'torch-job42' AND scope = 'config' AND key = 'lr'",
    )
    assert lr == [[0.1]]


OUTAGE_CALLS = 20_000
"""run.log calls the test makes while the server is known to be down before it restarts it."""


def test_server_outage_loses_nothing_and_never_blocks_logging(embedded_server, tmp_path):
    """No clock decides the outcome: the server is restarted only after training code made
    OUTAGE_CALLS log calls while it was down (a log call that waited for the server would never
    let that happen; the bouncer's deadline only ends a test that is failing anyway), and the SDK
    shows those points held unacked. Then what the real server stored is counted four ways."""
    run = runstream.init("sdk-outage", **quick_sdk_options(embedded_server.endpoint, tmp_path))
    down, logged_while_down = threading.Event(), threading.Event()
    bouncer_saw = {}

    def bounce():
        poll_until(lambda: run.stats["acked"] > 0, "the first ack")
        embedded_server.stop()  # returns once the server process has exited
        down.set()
        bouncer_saw["calls"] = logged_while_down.wait(timeout=120)
        embedded_server.start()  # blocks until healthy again

    bouncer = threading.Thread(target=bounce, daemon=True)
    bouncer.start()
    step = calls_while_down = 0
    stats_while_down: dict = {}
    while bouncer.is_alive() or step < 2000:
        run.log({"x": float(step), "y": -float(step)}, step=step)
        step += 1
        if down.is_set() and not logged_while_down.is_set():
            calls_while_down += 1
            if calls_while_down == OUTAGE_CALLS:
                # the worker packs what was logged into requests, which stay pending (unacked)
                poll_until(lambda: run.stats["pending"] > 0 and run.stats["submitted"] > run.stats["acked"],
                           "requests pending while the server is down")  # fmt: skip
                stats_while_down = run.stats
                logged_while_down.set()
        if step % 200 == 0:
            time.sleep(0.01)  # a training step's worth of other work
    bouncer.join(timeout=120)
    assert bouncer_saw == {"calls": True}, (calls_while_down, "log() calls made while the server was down")
    assert stats_while_down["pending"] > 0 and stats_while_down["acked"] < stats_while_down["submitted"]
    assert run.finish(timeout_s=60) is True
    stats = run.stats
    assert stats["reconnects"] >= 1
    assert stats["acked"] == stats["submitted"] and stats["refused"] == stats["dropped"] == 0, stats
    embedded_server.stop()
    # doubling checked on the real store: rows as stored, after dedup, distinct points, requests
    ((rows, rows_final, points, requests),) = stored(
        embedded_server,
        f"SELECT (SELECT count() FROM DB.metrics WHERE run_id = '{run.id}'), "
        f"(SELECT count() FROM DB.metrics FINAL WHERE run_id = '{run.id}'), "
        f"(SELECT uniqExact(run_id, key, rank, step) FROM DB.metrics WHERE run_id = '{run.id}'), "
        f"(SELECT {STORED_SEQS} FROM DB.client_seqs FINAL WHERE client_id = '{run.client_id}')",
    )
    assert (rows, rows_final, points) == (2 * step, 2 * step, 2 * step)
    assert requests == stats["submitted"]  # every request the SDK numbered, recorded once
    per_key = stored(
        embedded_server,
        "SELECT key, count(), uniqExact(step), min(step), max(step) FROM DB.metrics "
        f"WHERE run_id = '{run.id}' GROUP BY key ORDER BY key",
    )
    assert per_key == [["x", step, step, 0, step - 1], ["y", step, step, 0, step - 1]]


def poll_until(condition, what: str, timeout_s: float = 60.0) -> None:
    """Waits for `condition()`; the deadline only ends a test that is failing anyway."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s}s"
        time.sleep(0.01)


def test_offline_run_then_sync_twice_stores_once(embedded_server, tmp_path):
    opts = quick_sdk_options(embedded_server.endpoint, tmp_path, mode="offline")
    run = runstream.init("sdk-offline", config={"epochs": 3}, **opts)
    for i in range(1000):
        run.log({"loss": 1 / (i + 1), "nan": float("nan"), "inf": float("inf")}, step=i)
    weights = tmp_path / "weights.bin"
    weights.write_bytes(np.random.default_rng(1).bytes(3 << 20))
    run.log_artifact(weights, name="model", type="model")
    run.use_dataset("train", "sha256:abc")
    assert run.finish()
    run_dir = tmp_path / "spool" / run.id

    def sync(check=True):
        out = subprocess.run(
            [sys.executable, "-m", "runstream_services.cli", "sync", str(run_dir), "--endpoint", embedded_server.endpoint, "--no-progress"],
            capture_output=True,
            text=True,
            timeout=120,
        )  # fmt: skip
        assert out.returncode == 0 or not check, out.stdout + out.stderr
        return out.stdout

    first = sync()
    assert "3000 points" in first
    second = sync()
    assert "nothing to upload" in second
    (run_dir / f"{run.client_id}.synced").unlink()  # force a full replay: same (client_id, seq)
    # The replayed run_start of the now finished run is recognised by its (client_id, seq) and
    # acked, not refused as "already ended"; every point is still stored once.
    assert "3000 points" in sync()
    embedded_server.stop()
    rows = stored(
        embedded_server,
        f"SELECT key, count(), countIf(isNaN(value)), countIf(isInfinite(value)) FROM DB.metrics "
        f"WHERE run_id = '{run.id}' GROUP BY key ORDER BY key",
    )
    assert rows == [["inf", 1000, 0, 1000], ["loss", 1000, 0, 0], ["nan", 1000, 1000, 0]]
    arts = stored(embedded_server, f"SELECT name, path, size FROM DB.artifacts WHERE run_id = '{run.id}'")
    assert arts == [["model", "weights.bin", 3 << 20]]
    state = stored(embedded_server, f"SELECT state FROM DB.runs FINAL WHERE run_id = '{run.id}'")
    assert state == [["finished"]]


def test_bad_values_rejected_on_the_caller_and_refusals_reported(embedded_server, tmp_path):
    run = runstream.init("sdk-bad", **quick_sdk_options(embedded_server.endpoint, tmp_path))
    run.log({"ok": 1.0}, step=0)
    with pytest.raises(runstream.InvalidValueError, match="'acc' = '0.9' is a str"):
        run.log({"acc": "0.9"})
    with pytest.raises(runstream.InvalidValueError, match="keys must be str"):
        run.log({3: 1.0})
    with pytest.raises(runstream.InvalidValueError, match="shape"):
        run.log({"vec": np.ones(3)})
    # something only the server checks: a tag value over its 64 KiB limit
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.tags = {"huge": "x" * (70 * 1024)}
        run.log({"ok": 2.0}, step=1)
        assert run.flush(30)
    assert run.refused_count == 1
    assert any(issubclass(w.category, runstream.RefusedWarning) and "tag" in str(w.message) for w in caught)
    assert run.finish() is True
    embedded_server.stop()
    rows = stored(
        embedded_server, f"SELECT key, step FROM DB.metrics WHERE run_id = '{run.id}' ORDER BY step"
    )
    assert rows == [["ok", 0], ["ok", 1]]


def test_forked_child_neither_corrupts_nor_duplicates_the_parent_stream(embedded_server, tmp_path):
    run = runstream.init("sdk-fork", **quick_sdk_options(embedded_server.endpoint, tmp_path))
    for i in range(500):
        run.log({"parent": float(i)}, step=i)
    pid = os.fork()
    if pid == 0:  # the child: log, flush to its spool file, leave without atexit
        code = 1
        try:
            for i in range(100):
                run.log({"child": float(i)}, step=i)
            runstream.flush(10)
            code = 0
        finally:
            os._exit(code)
    for i in range(500, 1000):
        run.log({"parent": float(i)}, step=i)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert run.finish(timeout_s=60) is True
    embedded_server.stop()
    rows = stored(
        embedded_server,
        f"SELECT key, count(), uniqExact(step) FROM DB.metrics WHERE run_id = '{run.id}' GROUP BY key ORDER BY key",
    )
    assert rows == [["child", 100, 100], ["parent", 1000, 1000]]
