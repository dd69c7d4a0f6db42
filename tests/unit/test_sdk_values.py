"""Checks on the caller's thread: keys, values, steps, config values; and the columnar packing."""

from __future__ import annotations

import math
from array import array

import numpy as np
import pytest

import runstream
from runstream._internal.buffer import SYSTEM, USER, Bulk, Control, MetricBuffer
from runstream._internal.values import check_name, to_value, value_map


@pytest.fixture
def run(tmp_path):
    r = runstream.init("unit", mode="disabled", spool_dir=str(tmp_path))
    yield r
    r.finish()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"acc": "0.9"}, "'acc' = '0.9' is a str; log numbers only"),
        ({"acc": None}, "'acc' = None is a NoneType"),
        ({"v": np.ones(3)}, "array/tensor of shape \\(3,\\)"),
        ({"v": [1, 2]}, "is a list"),
        ({1: 1.0}, "key 1 is a int; keys must be str"),
        ({"": 1.0}, "key '' is empty"),
        ({"a\nb": 1.0}, "control characters"),
        ({"k" * 300: 1.0}, "300 characters; the limit is 256"),
    ],
)
def test_bad_metrics_raise_clear_errors(run, data, message):
    with pytest.raises(runstream.InvalidValueError, match=message):
        run.log(data)


def test_accepted_values(run):
    run.log(
        {
            "nan": math.nan,
            "inf": -math.inf,
            "b": True,
            "np": np.float16(1.5),
            "i": np.int64(3),
            "t": np.array(2.0),
        }
    )
    with pytest.raises(runstream.InvalidValueError, match="step"):
        run.log({"x": 1}, step=-1)
    with pytest.raises(runstream.InvalidValueError, match="step"):
        run.log({"x": 1}, step=1.5)
    run.log({"x": 1}, step=np.int64(7))
    with pytest.raises(runstream.InvalidValueError, match="dict"):
        run.log([("x", 1)])


def test_log_arrays_checks(run):
    with pytest.raises(runstream.InvalidValueError, match="3 values for 2 steps"):
        run.log_arrays("x", [0, 1], [1.0, 2.0, 3.0])
    with pytest.raises(runstream.InvalidValueError, match="integers"):
        run.log_arrays("x", np.array([0.5, 1.0]), [1.0, 2.0])
    with pytest.raises(runstream.InvalidValueError, match="numbers"):
        run.log_arrays("x", [0, 1], np.array(["a", "b"]))
    with pytest.raises(runstream.InvalidValueError, match=">= 0"):
        run.log_arrays("x", [-1, 1], [1.0, 2.0])


def test_names_and_config_values():
    check_name("project", "a.b-c_1")
    for bad in ("", "a/b", "x" * 65, "..", "sp ace"):
        with pytest.raises(runstream.InvalidValueError, match="not allowed"):
            check_name("project", bad)
    assert to_value(True).flag is True
    assert to_value(3).number == 3.0 and to_value(np.float32(0.5)).number == 0.5
    assert to_value("adam").text == "adam"
    assert to_value([1, 2]).json == "[1, 2]"
    assert set(value_map({"opt": {"lr": 1, "betas": [0.9, 0.99]}, "bs": 32})) == {"opt.lr", "opt.betas", "bs"}
    with pytest.raises(runstream.InvalidValueError):
        value_map({"": 1})


def test_accepted_keys_are_remembered_and_a_bad_key_is_refused_every_time(monkeypatch):
    """check_key remembers keys that passed (a sweep repeats its config keys); the cache never
    lets a bad key through, is bounded, and a str subclass is checked each time."""
    from runstream._internal import values

    monkeypatch.setattr(values, "_ACCEPTED_KEYS", set())
    monkeypatch.setattr(values, "MAX_ACCEPTED_KEYS", 3)
    assert values.check_key("config", "lr") == "lr" and "lr" in values._ACCEPTED_KEYS
    for _ in range(2):
        for bad, message in (("", "is empty"), ("a\0b", "control characters"), ("x\ud800", "lone surrogate")):
            with pytest.raises(runstream.InvalidValueError, match=message):
                values.check_key("config", bad)
    assert sorted(values._ACCEPTED_KEYS) == ["lr"]
    for key in ("a", "b", "c"):
        values.check_key("tag", key)
    assert len(values._ACCEPTED_KEYS) <= 3 and "c" in values._ACCEPTED_KEYS  # cleared when full

    class Key(str):
        pass

    assert values.check_key("config", Key("k")) == "k" and "k" not in values._ACCEPTED_KEYS
    assert value_map({"lr": 0.1, "opt": {"lr": 1}}) == value_map({"lr": 0.1, "opt": {"lr": 1}})


def _decode(batch):
    n = len(batch.values) // 8
    idx = np.frombuffer(batch.key_index, "<u2") if batch.key_index else np.zeros(n, dtype=int)
    return [
        (batch.keys[i], int(s), float(v), int(t))
        for i, s, v, t in zip(
            idx, np.frombuffer(batch.steps, "<i8"), np.frombuffer(batch.values, "<f8"), np.frombuffer(batch.times_ms, "<i8"), strict=True
        )
    ]  # fmt: skip


def test_drain_packs_columns_splits_by_size_and_kind_and_keeps_order():
    buf = MetricBuffer("p", "r", 3, max_batch_points=5)
    buf.entries.extend(
        [
            (0, 1.0, {"a": 1.0, "b": 2}),
            (1, 2.0, {"b": 3.0, "a": 4.0}),
            (2, 3.0, {"c": 5.0, "a": 6.0}),  # 6 points > 5: a new batch
            Control("run_update", "U"),
            (0, 4.0, {"cpu": 50.0}, SYSTEM),
            (3, 5.0, {"a": 7.0}),
            Bulk("bulk", array("q", range(7)).tobytes(), array("d", [0.5] * 7).tobytes(), 7, 99),
        ]
    )
    out = list(buf.drain())
    assert [f for f, _ in out] == [
        "metrics",
        "metrics",
        "run_update",
        "metrics",
        "metrics",
        "metrics",
        "metrics",
    ]
    first, second = out[0][1], out[1][1]
    assert _decode(first) == [
        ("a", 0, 1.0, 1000),
        ("b", 0, 2.0, 1000),
        ("b", 1, 3.0, 2000),
        ("a", 1, 4.0, 2000),
    ]
    assert first.rank == 3 and first.kind == USER and first.project == "p" and first.run_id == "r"
    assert _decode(second) == [("c", 2, 5.0, 3000), ("a", 2, 6.0, 3000)]
    assert out[3][1].kind == SYSTEM and _decode(out[3][1]) == [("cpu", 0, 50.0, 4000)]
    assert out[4][1].kind == USER and not out[4][1].key_index  # one key: no index column needed
    bulk = [_decode(b) for _, b in out[5:]]
    assert [len(b) for b in bulk] == [5, 2] and bulk[1][-1] == ("bulk", 6, 0.5, 99)
    assert not buf.entries


def _points_of(entries) -> list[tuple[str, int, float, int]]:
    """What the entries hold, point by point, in log order: (key, step, value, time ms)."""
    return [(k, step, float(v), int(t * 1000)) for step, t, data in entries for k, v in data.items()]


@pytest.mark.parametrize(
    "shape",
    ["uniform", "uniform one key", "uniform then other keys", "other order", "mixed from the start"],
)
def test_a_batch_packs_every_point_in_log_order_whatever_the_keys_of_its_calls(shape):
    """Calls with the same keys are packed without per-point lists (steps and times repeated per
    call, one index pattern); a call with other keys mid-batch turns the batch per point. Either
    way the batch holds each point once, with its own key, step and time."""
    keys = [f"m{k}" for k in range(7)]
    calls = {
        "uniform": [{k: s + i / 10 for i, k in enumerate(keys)} for s in range(40)],
        "uniform one key": [{"loss": 1.0 / (s + 1)} for s in range(40)],
        "uniform then other keys": [{k: s + i / 10 for i, k in enumerate(keys)} for s in range(25)]
        + [{"m3": -1.0, "lr": 0.5}]
        + [{k: s * 2.0 for k in keys[:4]} for s in range(26, 40)],
        "other order": [{"a": 1.0, "b": 2.0}] * 3 + [{"b": 3.0, "a": 4.0}] + [{"a": 5.0, "b": 6.0}] * 2,
        "mixed from the start": [{"a": float(s)} if s % 2 else {"b": float(s), "a": 0.5} for s in range(30)],
    }[shape]
    entries = [(step, 1000.0 + step * 0.25, data) for step, data in enumerate(calls)]
    buf = MetricBuffer("p", "r", 0, max_batch_points=65_536)
    buf.entries.extend(entries)
    out = list(buf.drain())
    assert [f for f, _ in out] == ["metrics"]
    assert _decode(out[0][1]) == _points_of(entries)


def test_a_point_that_cannot_be_packed_is_refused_alone_in_a_uniform_batch():
    buf = MetricBuffer("p", "r", 0, max_batch_points=65_536)
    refused = []
    buf.on_refused = lambda count, why: refused.append((count, why))
    entries = [(s, 10.0 + s, {"a": float(s), "b": -float(s)}) for s in range(5)]
    buf.entries.extend(
        entries[:2] + [(2**63, 12.0, {"a": 2.0, "b": -2.0})] + entries[3:]
    )  # step beyond int64
    ((field, batch),) = buf.drain()
    assert field == "metrics" and _decode(batch) == _points_of(entries[:2] + entries[3:])
    assert refused and refused[0][0] == 2 and "step" in refused[0][1]


def test_auto_step_follows_explicit_steps(run):
    run.log({"x": 1})
    run.log({"x": 1}, step=10)
    assert run._next_step == 11
    run.log_arrays("y", np.arange(20, 30), np.zeros(10))
    assert run._next_step == 30
