"""The SDK's batching, acks, reconnects, spilling, refusals and sync, against the in-process stand-in
IngestService of tests/unit/sdk_fake_ingest.py (a fake, because the unit suite runs without the
real server; the same behaviours are checked against `runstream server` in
tests/integration/test_sdk_*.py)."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest

import runstream
from runstream.sync import sync_paths
from tests.sdk_options import wait_for
from tests.unit.sdk_fake_ingest import FakeIngest


def _init(fake, tmp_path, **kw):
    opts = dict(
        endpoint=fake.endpoint,
        spool_dir=str(tmp_path / "spool"),
        flush_interval_s=0.05,
        system_metrics_interval_s=0,
        capture_packages=False,
        reconnect_initial_s=0.05,
        reconnect_max_s=0.3,
    )
    opts.update(kw)
    return runstream.init("unit", **opts)


def test_points_arrive_once_with_columns_intact(fake, tmp_path):
    run = _init(fake, tmp_path, config={"lr": 0.1, "opt": {"name": "adam"}}, tags=["a"], name="n1")
    for i in range(2000):
        run.log({"loss": 1.0 / (i + 1), "acc": i, "flag": True, "np": np.float32(0.5), "nan": math.nan})
    run.log_arrays("bulk", np.arange(100, 200), np.linspace(0, 1, 100))
    run.summary["best"] = 0.5
    assert run.finish() is True
    pts = fake.points(run.id)
    assert len(pts) == 2000 * 5 + 100
    loss = {s: v for k, s, v, _ in pts if k == "loss"}
    assert loss[0] == 1.0 and loss[1999] == pytest.approx(1 / 2000)
    assert all(math.isnan(v) for k, _, v, _ in pts if k == "nan")
    assert sorted(s for k, s, _, _ in pts if k == "bulk") == list(range(100, 200))
    start = fake.bodies("run_start")[0]
    assert start.config["lr"].number == 0.1 and start.config["opt.name"].text == "adam"
    assert dict(start.tags) == {"a": ""} and start.name == "n1"
    assert fake.bodies("run_update")[-1].summary["best"].number == 0.5
    assert fake.bodies("run_finish")[0].state == runstream.v1.types_pb2.RUN_STATE_FINISHED
    assert not (tmp_path / "spool" / run.id).exists()  # nothing left behind


def test_size_trigger_sends_before_the_timer(fake, tmp_path):
    run = _init(fake, tmp_path, flush_interval_s=30.0, max_batch_points=1000)
    run._wake_step = run._wake_at = 100  # wake the worker after 100 log() calls
    for i in range(150):
        run.log({"a": i, "b": i}, step=i)
    assert wait_for(lambda: len(fake.points(run.id)) >= 150)  # the 30 s timer has not fired
    assert max(len(b.values) // 8 for b in fake.bodies("metrics")) <= 1000
    run.finish()
    assert len(fake.points(run.id)) == 300


def test_time_trigger_sends_without_flush(fake, tmp_path):
    run = _init(fake, tmp_path, flush_interval_s=0.05)
    run.log({"x": 1.0})
    assert wait_for(lambda: len(fake.points(run.id)) == 1)
    run.finish()


def test_a_quiet_run_sends_its_next_point_at_once_and_a_busy_one_keeps_batching(fake, tmp_path):
    """The timer is 60 s away throughout. Once a drain found nothing (the second flush), the next
    log call wakes the worker: its point arrives without a flush or a tick. The 99 calls right
    after it do not each send: they wait for the size trigger, the tick or finish."""
    run = _init(fake, tmp_path, flush_interval_s=60.0)
    run.log({"x": 0.0}, step=0)
    assert run.flush(10) and run.flush(10)  # the second one finds nothing to send: the run is quiet
    requests = len(fake.bodies("metrics"))
    run.log({"x": 1.0}, step=1)
    assert wait_for(lambda: len(fake.points(run.id)) == 2, timeout_s=10), "sent at once, not at the 60 s tick"
    for step in range(2, 101):
        run.log({"x": float(step)}, step=step)
    time.sleep(0.3)
    assert len(fake.bodies("metrics")) == requests + 1 and len(fake.points(run.id)) == 2, "batched"
    assert run.finish() is True
    assert sorted(s for _, s, _, _ in fake.points(run.id)) == list(range(101))


def test_server_down_then_up_nothing_lost_nothing_doubled(fake, tmp_path):
    run = _init(fake, tmp_path)
    for i in range(500):
        run.log({"x": i})
    assert run.flush(10)
    fake.stop()
    for i in range(500, 1500):
        run.log({"x": i})
    # synchronised on the SDK's counters, not a sleep: the stream broke and requests are unacked
    assert wait_for(lambda: run.stats["reconnects"] >= 1 and run.stats["pending"] > 0)
    assert not run.flush(0.2)
    fake.start()
    assert run.flush(20)
    # the fake stores each (client_id, seq) once by itself; doubles are counted in the real store
    # by integration/test_sdk_delivery.py::test_server_outage_loses_nothing_and_never_blocks_logging
    steps = sorted(s for _, s, _, _ in fake.points(run.id))
    assert steps == list(range(1500))
    assert run.stats["reconnects"] >= 1
    run.finish()


def test_memory_limit_spills_to_disk_and_recovers(fake, tmp_path):
    fake.stop()
    run = _init(fake, tmp_path, max_memory_bytes=1 << 20, max_batch_points=1000)
    for i in range(100_000):
        run.log({"x": float(i), "y": float(i)})
    spool_file = tmp_path / "spool" / run.id / f"{run.client_id}.spool"
    # the worker drains the hand-off into requests (the server is down): past 1 MiB they are spooled
    assert wait_for(
        lambda: run.stats["spilled"] > 0 and spool_file.exists() and spool_file.stat().st_size > 1 << 20
    )
    fake.start()
    assert run.finish(timeout_s=30)
    assert len(fake.points(run.id)) == 200_000
    assert not spool_file.exists()  # reclaimed once acked


def test_finish_with_server_down_spools_then_sync_uploads_once(fake, tmp_path):
    fake.stop()
    run = _init(fake, tmp_path)
    for i in range(300):
        run.log({"x": i})
    with pytest.warns(RuntimeWarning, match="runstream sync"):
        assert run.finish(timeout_s=0.5) is False
    run_dir = tmp_path / "spool" / run.id
    assert (run_dir / f"{run.client_id}.spool").exists()
    fake.start()
    totals = sync_paths([run_dir], endpoint=fake.endpoint, progress=False)
    assert totals["points"] == 300 and totals["incomplete"] == 0
    assert len(fake.points(run.id)) == 300
    assert len(fake.bodies("run_finish")) == 1
    again = sync_paths([run_dir], endpoint=fake.endpoint, progress=False)
    assert again["files"] == 0  # marked synced
    # even a forced replay (marker removed) carries the same (client_id, seq): stored once
    (run_dir / f"{run.client_id}.synced").unlink()
    received = fake.received
    sync_paths([run_dir], endpoint=fake.endpoint, progress=False)
    assert fake.received > received
    assert len(fake.points(run.id)) == 300


def test_offline_run_then_sync(fake, tmp_path):
    run = _init(fake, tmp_path, mode="offline")
    for i in range(100):
        run.log({"x": i, "y": -i})
    big = tmp_path / "model.bin"
    big.write_bytes(np.random.default_rng(0).bytes(3 << 20))
    small = tmp_path / "cfg.json"
    small.write_text('{"a": 1}')
    run.log_artifact(big, name="model", type="model")
    run.log_artifact(small)
    assert run.finish()
    assert fake.received == 0
    totals = sync_paths([tmp_path / "spool"], endpoint=fake.endpoint, progress=False)
    assert totals["points"] == 200
    arts = {a.path: a for a in fake.bodies("artifact")}
    assert arts["model.bin"].sha256 in fake.blobs and not arts["model.bin"].inline_data
    assert arts["cfg.json"].inline_data == b'{"a": 1}'


def test_refused_requests_are_warned_counted_and_kept(tmp_path):
    fake = FakeIngest(refuse=lambda r: "metric key 'bad' is banned" if "bad" in r.metrics.keys else None)
    try:
        run = _init(fake, tmp_path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run.log({"bad": 1.0})
            assert run.flush(10)
            run.log({"good": 1.0})
            run.finish()
        assert run.refused_count == 1
        assert any(
            issubclass(w.category, runstream.RefusedWarning) and "banned" in str(w.message) for w in caught
        )
        assert (tmp_path / "spool" / run.id / f"{run.client_id}.refused").stat().st_size > 0
        assert [k for k, *_ in fake.points(run.id)] == ["good"]
    finally:
        fake.stop()


def test_large_artifact_uploaded_online(fake, tmp_path):
    run = _init(fake, tmp_path)
    folder = tmp_path / "ckpt"
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"w" * (2 << 20))
    (folder / "sub" / "meta.txt").write_text("m")
    info = run.log_artifact(folder, type="model")
    assert run.finish()
    assert [f["path"] for f in info["files"]] == ["sub/meta.txt", "weights.bin"]
    events = {a.path: a for a in fake.bodies("artifact")}
    assert set(events) == {"sub/meta.txt", "weights.bin"}
    assert len(fake.blobs[events["weights.bin"].sha256]) == 2 << 20
    assert len({a.version_tag for a in events.values()}) == 1


def test_module_shortcuts_and_context_manager(fake, tmp_path):
    with pytest.raises(runstream.NotInitializedError):
        runstream.log({"x": 1})
    with pytest.raises(ValueError), _init(fake, tmp_path, config={"lr": 1}) as run:
        runstream.log({"x": 1})
        runstream.config["bs"] = 32
        assert runstream.config["lr"] == 1 and run.config.bs == 32
        runstream.flush(10)
        raise ValueError("boom")
    finish = fake.bodies("run_finish")[0]
    assert finish.state == runstream.v1.types_pb2.RUN_STATE_FAILED
    assert fake.bodies("run_update")[0].config["bs"].number == 32
    assert runstream.current_run() is None


def test_flush_timeout_raises_when_server_is_down(fake, tmp_path):
    fake.stop()
    run = _init(fake, tmp_path)
    run.log({"x": 1})
    with pytest.raises(runstream.FlushTimeoutError, match="pending"):
        runstream.flush(0.3)
    fake.start()
    runstream.flush(20)
    run.finish()


def _worker_logs(n):
    run = runstream.current_run()
    for i in range(n):
        run.log({"from_worker": float(i)}, step=i)  # no flush: multiprocessing leaves via os._exit


def test_multiprocessing_fork_worker_data_reaches_the_server_through_the_parent(fake, tmp_path):
    import multiprocessing

    run = _init(fake, tmp_path)
    for i in range(200):
        run.log({"main": float(i)}, step=i)
    proc = multiprocessing.get_context("fork").Process(target=_worker_logs, args=(50,))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    for i in range(200, 400):
        run.log({"main": float(i)}, step=i)
    assert run.finish()
    pts = fake.points(run.id)
    assert sorted(s for k, s, _, _ in pts if k == "main") == list(range(400))
    assert sorted(s for k, s, _, _ in pts if k == "from_worker") == list(range(50))
    clients = {cid for cid, _ in fake.requests}
    assert len(clients) == 2  # the child wrote under its own client id, never the parent's


def test_next_interval_stretches_for_busy_sends_and_comes_back_for_quiet_ones():
    from runstream._internal.pipeline import BUSY_SEND_POINTS, BUSY_STRETCH, next_interval

    base = 0.2
    stretched = next_interval(base, base, BUSY_SEND_POINTS)
    assert stretched == 2 * base
    assert next_interval(stretched, base, 10_000) == base * BUSY_STRETCH  # capped
    assert next_interval(base * BUSY_STRETCH, base, 10_000) == base * BUSY_STRETCH
    assert next_interval(base * BUSY_STRETCH, base, BUSY_SEND_POINTS - 1) == base
    assert next_interval(base, base, 0) == base


def test_a_busy_run_sends_fewer_larger_requests_than_one_per_interval(fake, tmp_path):
    """~600 points per 50 ms interval: the timed sends stretch to 2.5 intervals, so the run sends
    well under one request per interval (one per interval without the stretch); every point
    arrives once all the same."""
    run = _init(fake, tmp_path)  # flush_interval_s=0.05
    step, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < 1.5:
        for _ in range(12):
            run.log({f"m{k}": float(step) for k in range(10)}, step=step)
            step += 1
        time.sleep(0.01)
    elapsed = time.monotonic() - t0
    assert run.finish() is True
    requests = [b for b in fake.bodies("metrics") if b.run_id == run.id]
    assert len(fake.points(run.id)) == 10 * step
    assert 2 <= len(requests) < 0.75 * elapsed / 0.05, (len(requests), elapsed)
