"""The public time and system-metric hooks: `timestamp=` on log / log_arrays / log_system,
`times=` on log_arrays, init's `start_time=` and finish's `end_time=`, and `run.log_system`.
Values are checked on the caller's thread and must reach the wire as given, against the stand-in
IngestService of tests/unit/sdk_fake_ingest.py."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

import numpy as np
import pytest

import runstream
from runstream.v1 import types_pb2

SYSTEM = types_pb2.METRIC_KIND_SYSTEM
T0 = 1_700_000_000.25  # 2023-11-14, a time well in the past
T0_MS = 1_700_000_000_250


def _init(fake, tmp_path, **kw):
    opts = dict(
        endpoint=fake.endpoint,
        spool_dir=str(tmp_path / "spool"),
        flush_interval_s=0.05,
        system_metrics_interval_s=0,
        capture_packages=False,
    )
    opts.update(kw)
    return runstream.init("unit", **opts)


def _timed_points(
    fake, run_id: str, kind: int = types_pb2.METRIC_KIND_USER
) -> list[tuple[str, int, float, int]]:
    """(key, step, value, time_ms) of every stored point of one kind."""
    out = []
    for b in fake.bodies("metrics"):
        if b.run_id != run_id or (b.kind or types_pb2.METRIC_KIND_USER) != kind:
            continue
        n = len(b.values) // 8
        idx = np.frombuffer(b.key_index, "<u2") if b.key_index else np.zeros(n, dtype=np.uint16)
        steps, values = np.frombuffer(b.steps, "<i8"), np.frombuffer(b.values, "<f8")
        times = np.frombuffer(b.times_ms, "<i8")
        out.extend(
            (b.keys[i], int(s), float(v), int(t))
            for i, s, v, t in zip(idx, steps, values, times, strict=True)
        )
    return out


def test_log_timestamps_reach_the_wire(fake, tmp_path):
    run = _init(fake, tmp_path)
    before_ms = int(time.time() * 1000)
    run.log({"a": 1.0}, step=0)  # default: now
    run.log({"a": 2.0}, step=1, timestamp=T0)
    run.log({"a": 3.0}, step=2, timestamp=datetime.fromtimestamp(T0 + 1, tz=UTC))
    run.log({"a": 4.0}, step=3, timestamp=np.float64(T0 + 2))
    runstream.log({"a": 5.0}, step=4, timestamp=int(T0) + 3)  # the module-level shortcut passes it on
    assert run.finish()
    times = {step: t for _, step, _, t in _timed_points(fake, run.id)}
    assert before_ms <= times[0] <= int(time.time() * 1000)
    assert [times[s] for s in (1, 2, 3, 4)] == [T0_MS, T0_MS + 1000, T0_MS + 2000, T0_MS + 2750]


@pytest.mark.parametrize(
    ("timestamp", "message"),
    [
        ("2024-01-01", "is a str: give unix time in seconds"),
        (True, "is a bool"),
        (math.nan, "give unix time in seconds, >= 0"),
        (-1.0, "give unix time in seconds, >= 0"),
        (T0 * 1000, "looks like milliseconds; give seconds"),
    ],
)
def test_bad_timestamps_raise_on_the_callers_thread(tmp_path, timestamp, message):
    run = runstream.init("unit", mode="disabled", spool_dir=str(tmp_path))
    with pytest.raises(runstream.InvalidValueError, match=f"run.log timestamp=.*{message}"):
        run.log({"x": 1.0}, timestamp=timestamp)
    assert run._next_step == 0  # a refused call leaves the run as it was
    with pytest.raises(runstream.InvalidValueError, match="run.log_system timestamp"):
        run.log_system({"cpu_percent": 1.0}, timestamp=timestamp)
    with pytest.raises(runstream.InvalidValueError, match="run.log_arrays timestamp"):
        run.log_arrays("x", [0], [1.0], timestamp=timestamp)
    with pytest.raises(runstream.InvalidValueError, match="run.finish end_time"):
        run.finish(end_time=timestamp)
    with pytest.raises(runstream.InvalidValueError, match="runstream.init start_time"):
        runstream.init("unit", mode="disabled", spool_dir=str(tmp_path), start_time=timestamp)
    run.finish()


def test_log_arrays_one_timestamp_or_one_time_per_step(fake, tmp_path):
    run = _init(fake, tmp_path, max_batch_points=3)  # per-step times are split across batches too
    run.log_arrays("one", np.arange(4), np.ones(4), timestamp=T0)
    run.log_arrays("per_step", np.arange(4), np.ones(4), times=T0 + np.arange(4) * 0.5)
    run.log_arrays(
        "datetime64",
        [0, 1],
        [1.0, 2.0],
        times=np.array(["2023-11-14T22:13:20.250", "2023-11-14T22:13:21.250"], "M8[ms]"),
    )
    run.log_arrays(
        "datetimes", [0, 1], [1.0, 2.0], times=[datetime.fromtimestamp(T0 + i, tz=UTC) for i in (0, 1)]
    )
    assert run.finish()
    times: dict[str, list[int]] = {}
    for key, _, _, t in sorted(_timed_points(fake, run.id)):
        times.setdefault(key, []).append(t)
    assert times["one"] == [T0_MS] * 4
    assert times["per_step"] == [T0_MS, T0_MS + 500, T0_MS + 1000, T0_MS + 1500]
    assert times["datetime64"] == times["datetimes"] == [T0_MS, T0_MS + 1000]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(timestamp=T0, times=[T0, T0]), "timestamp= .* or times= .*, not both"),
        (dict(times=[T0]), "1 times for 2 steps"),
        (dict(times=np.array([T0, math.inf])), "finite and >= 0"),
        (dict(times=np.array([T0, T0]) * 1000), "look like milliseconds"),
        (dict(times=np.zeros((2, 1))), "times must be 1-D"),
        (dict(times=["x", "y"]), "times item='x' is a str"),
        (dict(times=3.0), "times must be a sequence"),
    ],
)
def test_log_arrays_bad_times(tmp_path, kwargs, message):
    run = runstream.init("unit", mode="disabled", spool_dir=str(tmp_path))
    with pytest.raises(runstream.InvalidValueError, match=message):
        run.log_arrays("x", [0, 1], [1.0, 2.0], **kwargs)
    run.finish()


def test_log_system_is_system_kind_of_this_rank_numbered_like_the_sampler(fake, tmp_path):
    run = _init(fake, tmp_path, rank=3, world_size=4, id="sys-run")
    run.log({"loss": 1.0})
    run.log_system({"cpu_percent": 12.0, "system/gpu0/util_percent": np.float32(50)}, timestamp=T0)
    run.log_system({"cpu_percent": 13}, timestamp=datetime.fromtimestamp(T0 + 1, tz=UTC))
    run.log_system({})  # nothing to record: no sample number is used
    run.log_system({"cpu_percent": True})
    assert run.finish()
    points = sorted(_timed_points(fake, run.id, SYSTEM), key=lambda p: (p[1], p[0]))
    assert [p[:3] for p in points] == [
        ("system/cpu_percent", 0, 12.0),
        ("system/gpu0/util_percent", 0, 50.0),
        ("system/cpu_percent", 1, 13.0),
        ("system/cpu_percent", 2, 1.0),
    ]
    assert [p[3] for p in points[:3]] == [T0_MS, T0_MS, T0_MS + 1000]
    assert {b.rank for b in fake.bodies("metrics") if b.kind == SYSTEM} == {3}
    assert [k for k, *_ in fake.points(run.id)] == ["loss"]  # user metrics stay user metrics


def test_log_system_shares_the_samplers_numbering(fake, tmp_path):
    run = _init(fake, tmp_path, system_metrics_interval_s=0.05)
    time.sleep(0.3)
    run.log_system({"custom": 1.0})
    assert run.finish()
    steps = [s for _, s, _, _ in _timed_points(fake, run.id, SYSTEM)]
    custom = [s for k, s, _, _ in _timed_points(fake, run.id, SYSTEM) if k == "system/custom"]
    sampled = set(steps) - set(custom)
    assert len(custom) == 1 and custom[0] not in sampled  # one counter, so no sample number twice
    assert sorted(sampled | set(custom)) == list(range(len(sampled) + 1))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([("cpu", 1.0)], "run.log_system takes a dict"),
        ({"cpu": "high"}, "'cpu' = 'high' is a str"),
        ({1: 1.0}, "key 1 is a int; keys must be str"),
        ({"k" * 250: 1.0}, "characters; the limit is 256"),  # too long once "system/" is added
    ],
)
def test_log_system_bad_values(tmp_path, data, message):
    run = runstream.init("unit", mode="disabled", spool_dir=str(tmp_path))
    with pytest.raises(runstream.InvalidValueError, match=message):
        run.log_system(data)
    run.finish()
    with pytest.raises(runstream.RunFinishedError):
        run.log_system({"cpu": 1.0})


def test_start_and_end_time_reach_the_wire(fake, tmp_path):
    run = _init(fake, tmp_path, start_time=T0)
    run.log({"x": 1.0}, timestamp=T0 + 5)
    assert run.finish("failed", end_time=datetime.fromtimestamp(T0 + 10, tz=UTC))
    assert fake.bodies("run_start")[0].start_ms == T0_MS
    finish = fake.bodies("run_finish")[0]
    assert finish.end_ms == T0_MS + 10_000 and finish.state == types_pb2.RUN_STATE_FAILED


def test_finish_states_come_from_runstream_states(tmp_path):
    run = runstream.init("unit", mode="disabled", spool_dir=str(tmp_path))
    with pytest.raises(runstream.InvalidValueError, match="use one of failed, finished, killed"):
        run.finish("crashed")  # the server's verdict, never sent by a client
    assert run.finish("KILLED")
