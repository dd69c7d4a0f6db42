"""Caller-thread packing for `run.log_arrays`: steps, values and per-step times given as numpy
arrays, tensors (CUDA included) or plain sequences become the little-endian byte columns of a
MetricBatch (see buffer.Bulk). Everything is checked here, so a bad series fails at the call and
not later in the worker. numpy is used only when the caller has already imported it."""

from __future__ import annotations

import sys
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runstream.errors import InvalidValueError

from .values import MAX_STEP, MAX_TIMESTAMP_S, check_metric_key, check_timestamp


@dataclass(frozen=True)
class Series:
    """The packed arguments of one log_arrays call: n steps, one value column per key, and the
    per-step times when given (else None: every point gets the call's time)."""

    steps: bytes
    n: int
    top_step: int  # -1 when n == 0
    columns: list[tuple[str, bytes]]
    times: bytes | None


def pack_series(key_or_dict: Any, steps: Any, values: Any, times: Any, known_keys: set) -> Series:
    """`log_arrays("loss", steps, values)` or `log_arrays({"loss": v1, "acc": v2}, steps)`, checked
    and packed; `known_keys` caches the metric keys already accepted."""
    if isinstance(key_or_dict, str):
        if values is None:
            raise InvalidValueError("run.log_arrays(key, steps, values): values are missing")
        series = {key_or_dict: values}
    elif isinstance(key_or_dict, Mapping):
        if values is not None:
            raise InvalidValueError(
                "run.log_arrays(dict, steps): give values inside the dict, not as a third argument"
            )
        series = dict(key_or_dict)
    else:
        raise InvalidValueError(
            f"run.log_arrays takes a key or a dict of key -> values, not {type(key_or_dict).__name__}"
        )
    for key in series:
        if key not in known_keys:
            check_metric_key(key, known_keys)
    step_bytes, n, top = pack_steps(steps)
    columns = []
    for key, vals in series.items():
        value_bytes, m = pack_values(key, vals)
        if m != n:
            raise InvalidValueError(
                f"run.log_arrays: {key!r} has {m} values for {n} steps; give one value per step"
            )
        columns.append((key, value_bytes))
    return Series(step_bytes, n, top, columns, pack_times(times, n) if times is not None else None)


def to_host(values: Any) -> Any:
    """Tensors (CUDA included) to host memory; without numpy, anything with .tolist() to a list."""
    if hasattr(values, "detach"):
        values = values.detach().cpu()
    if "numpy" not in sys.modules and hasattr(values, "tolist"):
        values = values.tolist()
    return values


def _little_endian(arr: array) -> bytes:
    if sys.byteorder != "little":
        arr.byteswap()
    return arr.tobytes()


def pack_steps(steps: Any) -> tuple[bytes, int, int]:
    """Steps -> (int64 column, count, largest step or -1)."""
    steps = to_host(steps)
    np = sys.modules.get("numpy")
    if np is not None and not isinstance(steps, (list, tuple, range)):
        arr = np.asarray(steps)
        if arr.ndim != 1:
            raise InvalidValueError(f"run.log_arrays: steps must be 1-D, got shape {arr.shape}")
        if arr.dtype.kind not in "iu":
            raise InvalidValueError(f"run.log_arrays: steps must be integers, got dtype {arr.dtype}")
        if arr.size and arr.min() < 0:
            raise InvalidValueError("run.log_arrays: steps must be >= 0")
        if arr.size and arr.dtype.kind == "u" and arr.max() > MAX_STEP:  # would wrap in int64
            raise InvalidValueError("run.log_arrays: steps must be at most 2**63 - 1 (stored as int64)")
        return arr.astype("<i8").tobytes(), int(arr.size), int(arr.max()) if arr.size else -1
    try:
        packed = array("q", steps)
    except (TypeError, OverflowError):
        raise InvalidValueError(
            "run.log_arrays: steps must be a sequence of integers from 0 to 2**63 - 1"
        ) from None
    if packed and min(packed) < 0:
        raise InvalidValueError("run.log_arrays: steps must be >= 0")
    top = max(packed) if packed else -1
    return _little_endian(packed), len(packed), top


def pack_values(key: str, values: Any) -> tuple[bytes, int]:
    """One series of numbers -> (float64 column, count)."""
    values = to_host(values)
    np = sys.modules.get("numpy")
    if np is not None and not isinstance(values, (list, tuple)):
        arr = np.asarray(values)
        if arr.ndim != 1:
            raise InvalidValueError(f"run.log_arrays: {key!r} values must be 1-D, got shape {arr.shape}")
        if arr.dtype.kind not in "fiub":
            raise InvalidValueError(f"run.log_arrays: {key!r} values must be numbers, got dtype {arr.dtype}")
        return arr.astype("<f8").tobytes(), int(arr.size)
    try:
        packed = array("d", values)
    except (TypeError, OverflowError):
        raise InvalidValueError(
            f"run.log_arrays: {key!r} values must be numbers (int, float, bool) within the float64 range"
        ) from None
    return _little_endian(packed), len(packed)


_ONE_TIME_PER_STEP = (
    "run.log_arrays: times must be a sequence with one time per step (unix seconds or datetimes); "
    "for one time for all steps give timestamp="
)


def pack_times(times: Any, n: int) -> bytes:
    """`times=` of run.log_arrays, one per step: unix seconds (numbers), numpy datetime64 or
    datetime objects -> int64 unix-ms column (truncated, as run.log's times are)."""
    times = to_host(times)
    np = sys.modules.get("numpy")
    if np is not None and not isinstance(times, (list, tuple)):
        arr = np.asarray(times)
        if arr.ndim == 0:
            raise InvalidValueError(_ONE_TIME_PER_STEP)
        if arr.ndim != 1:
            raise InvalidValueError(f"run.log_arrays: times must be 1-D, got shape {arr.shape}")
        if arr.dtype.kind in "fiu" or arr.dtype.kind == "M":
            if arr.size != n:
                raise InvalidValueError(
                    f"run.log_arrays: {arr.size} times for {n} steps; give one time per step"
                )
            if arr.dtype.kind == "M":
                seconds = arr.astype("datetime64[ms]").astype("<i8") / 1000.0  # NaT becomes negative
            else:
                seconds = arr.astype("<f8")
            if n and not (np.isfinite(seconds).all() and seconds.min() >= 0):
                raise InvalidValueError("run.log_arrays: times must be unix time in seconds, finite and >= 0")
            if n and seconds.max() > MAX_TIMESTAMP_S:
                raise InvalidValueError(
                    "run.log_arrays: times lie after the year 5000: they look like milliseconds; "
                    "give seconds (divide by 1000)"
                )
            return (seconds * 1000).astype("<i8").tobytes()
        times = arr.tolist()  # object arrays, e.g. of datetimes
    try:
        count = len(times)
    except TypeError:
        raise InvalidValueError(_ONE_TIME_PER_STEP) from None
    if count != n:
        raise InvalidValueError(f"run.log_arrays: {count} times for {n} steps; give one time per step")
    packed = array("q", (int(check_timestamp(t, "run.log_arrays times item") * 1000) for t in times))
    return _little_endian(packed)
