"""Checks and conversions for what users log: metric keys and values (on the caller's thread),
timestamps, tags, config/summary values (to `runstream.v1.Value`), and run/project names."""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from runstream.errors import InvalidValueError
from runstream.v1 import types_pb2

MAX_KEY_CHARS = 256
NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: year 5138 in unix seconds: a larger timestamp is almost surely in milliseconds (or nanoseconds)
MAX_TIMESTAMP_S = 1e11
#: steps travel as int64
MAX_STEP = 2**63 - 1
#: a metric value travels as a float64: ints beyond this cannot be converted
MAX_FLOAT = 1.7976931348623157e308
#: config/summary ints beyond this are not exact as a double: they travel as JSON text instead
MAX_EXACT_INT = 2**53


def check_text(what: str, value: str) -> str:
    """Strings travel as UTF-8: a lone surrogate (e.g. "bad\\ud800", from a mis-decoded file name)
    cannot be encoded and would fail the whole request later, so it is refused here."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidValueError(
            f"{what} {value[:80]!r} holds a lone surrogate at position {exc.start}, which is not valid "
            "UTF-8: decode the text properly (e.g. errors='replace')"
        ) from None
    return value


def check_name(what: str, value: Any) -> str:
    """Project / run ids: 1 to 64 of A-Z a-z 0-9 . _ - (the server's rule)."""
    if not isinstance(value, str) or not NAME_RE.match(value) or set(value) == {"."}:
        raise InvalidValueError(
            f"{what} {value!r} is not allowed: use 1 to 64 of A-Z a-z 0-9 . _ - (not only dots)"
        )
    return value


def sanitize_name(value: str) -> str:
    """Turns a launcher's job id into a valid run id."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", value)[:64].strip("-") or "run"
    return cleaned if set(cleaned) != {"."} else "run"


#: keys that passed check_key: a sweep's runs repeat the same config and tag keys, and each check
#: costs a few microseconds (issue 11: ~50 per run of 20 params). Bounded: cleared when full.
_ACCEPTED_KEYS: set[str] = set()
MAX_ACCEPTED_KEYS = 65_536


def check_key(what: str, key: Any) -> str:
    if type(key) is str and key in _ACCEPTED_KEYS:
        return key
    if not isinstance(key, str):
        raise InvalidValueError(f"{what} key {key!r} is a {type(key).__name__}; keys must be str")
    if not key or key.isspace():
        raise InvalidValueError(f"{what} key {key!r} is empty: give every {what} a name")
    if len(key) > MAX_KEY_CHARS:
        raise InvalidValueError(
            f"{what} key {key[:40]!r}... has {len(key)} characters; the limit is {MAX_KEY_CHARS}"
        )
    if _CONTROL.search(key):
        raise InvalidValueError(
            f"{what} key {key[:80]!r} holds control characters (newline, NUL, ...): remove them"
        )
    check_text(f"{what} key", key)
    if type(key) is str:  # not a str subclass: its == and hash may not be str's
        if len(_ACCEPTED_KEYS) >= MAX_ACCEPTED_KEYS:
            _ACCEPTED_KEYS.clear()
        _ACCEPTED_KEYS.add(key)
    return key


def check_metric_key(key: Any, known: set) -> None:
    """Validates a metric key once; `known` caches keys already accepted."""
    check_key("metric", key)
    known.add(key)


def to_number(key: Any, value: Any) -> float:
    """Slow path of run.log: bools, numpy scalars, 0-d tensors (anything with .item())."""
    t = type(value)
    if t is float:
        return value
    if t is int:
        return check_metric_int(key, value)
    if t is bool:
        return float(value)
    if isinstance(value, (str, bytes)) or value is None:
        raise InvalidValueError(
            f"run.log: {key!r} = {value!r} is a {t.__name__}; log numbers only (int, float, bool, numpy "
            "scalar or 0-d tensor). Put text in run.summary or run.config"
        )
    item = getattr(value, "item", None)
    if item is not None:
        try:
            value = item()
        except (ValueError, RuntimeError, TypeError):
            shape = getattr(value, "shape", "?")
            raise InvalidValueError(
                f"run.log: {key!r} is an array/tensor of shape {shape}; log one number per key, or use "
                "run.log_arrays(key, steps, values) for whole series"
            ) from None
        if type(value) in (float, int, bool):
            return float(value) if type(value) is bool else to_number(key, value)
    if isinstance(value, int):  # int subclasses, e.g. IntEnum
        return float(check_metric_int(key, int(value)))
    if isinstance(value, float):
        return float(value)
    raise InvalidValueError(
        f"run.log: {key!r} = {value!r:.80} is a {t.__name__}; log numbers only (int, float, bool, numpy "
        "scalar or 0-d tensor)"
    )


def check_metric_int(key: Any, value: int) -> int:
    """An int metric must fit a float64 (10**400 does not)."""
    if -MAX_FLOAT <= value <= MAX_FLOAT:
        return value
    raise InvalidValueError(
        f"run.log: {key!r} = {str(value)[:40]}... ({value.bit_length()} bits) is beyond the float64 range "
        "metrics are stored in; log it as a float or put it in run.summary"
    )


def coerce_metrics(data: Mapping, known: set) -> dict:
    """A new dict of float/int values, or InvalidValueError naming the first bad key or value."""
    out = {}
    for key, value in data.items():
        if key not in known:
            check_metric_key(key, known)
        out[key] = to_number(key, value)
    return out


def check_step(step: Any) -> int:
    """A step: an int (or numpy integer) from 0 to 2**63 - 1 (steps are stored as int64)."""
    if type(step) is int and 0 <= step <= MAX_STEP:
        return step
    item = getattr(step, "item", None)
    if item is not None and not isinstance(step, (float, bool)):
        try:
            step = item()
        except (ValueError, RuntimeError, TypeError):
            pass
    if type(step) is not int or step < 0:
        raise InvalidValueError(f"step={step!r} is not allowed: steps are integers >= 0")
    if step > MAX_STEP:
        raise InvalidValueError(f"step={step} is not allowed: steps are stored as int64 (at most 2**63 - 1)")
    return step


def check_timestamp(value: Any, what: str) -> float:
    """A `timestamp=` argument -> unix seconds. Takes unix seconds (int, float, numpy number) or a
    datetime (a naive one is local time, as datetime.timestamp reads it); `what` names the argument
    in the error, e.g. "run.log timestamp"."""
    if isinstance(value, datetime):
        seconds = value.timestamp()
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise InvalidValueError(
            f"{what}={value!r:.80} is a {type(value).__name__}: give unix time in seconds (float) or a datetime"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidValueError(f"{what}={value!r} is not allowed: give unix time in seconds, >= 0")
    if seconds > MAX_TIMESTAMP_S:
        raise InvalidValueError(
            f"{what}={value!r} lies after the year 5000: it looks like milliseconds; give seconds (divide by 1000)"
        )
    return seconds


def tag_map(value: Any) -> dict[str, str]:
    """Tags as given to init or run.tags (None, one tag, a list of tags, or a dict tag -> value)
    -> {tag: value}; a tag without a value maps to ""."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = [value]
    if isinstance(value, Mapping):
        return {
            check_key("tag", k): "" if v is None else check_text(f"tag {k!r} value", str(v))
            for k, v in value.items()
        }
    return {check_key("tag", k): "" for k in value}


def flatten(data: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"opt": {"lr": 1}} -> {"opt.lr": 1}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        key = check_key("config", str(key) if not isinstance(key, str) else key)
        full = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, full + "."))
        else:
            out[full] = value
    return out


def to_value(value: Any) -> types_pb2.Value:
    """Config / summary value -> Value: numbers stay numbers so filters can compare them; ints a
    double cannot hold exactly (beyond 2**53, e.g. a 64-bit seed) travel as JSON text, exact."""
    item = getattr(value, "item", None)
    if item is not None and not isinstance(value, (int, float, str, bool)):
        try:
            value = item()
        except (ValueError, RuntimeError, TypeError):
            tolist = getattr(value, "tolist", None)
            value = tolist() if tolist else str(value)
    if isinstance(value, bool):
        return types_pb2.Value(flag=value)
    if isinstance(value, int):
        if -MAX_EXACT_INT <= value <= MAX_EXACT_INT:
            return types_pb2.Value(number=float(value))
        return types_pb2.Value(json=str(int(value)))  # JSON text of an int: its exact digits
    if isinstance(value, float):
        return types_pb2.Value(number=value)
    if isinstance(value, str):
        return types_pb2.Value(text=check_text("text value", value))
    try:
        text = json.dumps(value, default=str, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        text = None
    if text is None:
        return types_pb2.Value(text=check_text("value", str(value)))
    return types_pb2.Value(json=text)  # json.dumps escapes lone surrogates (ASCII output)


def value_map(data: Mapping) -> dict[str, types_pb2.Value]:
    """Checked on the caller's thread: a key or value that cannot travel raises InvalidValueError."""
    out = {}
    for key, value in flatten(data).items():
        try:
            out[key] = to_value(value)
        except InvalidValueError as exc:
            raise InvalidValueError(f"{key!r}: {exc}") from None
    return out


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
