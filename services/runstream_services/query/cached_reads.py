"""Answers of the query service computed from a held project (read_cache.py) instead of SQL:
one run, a run's keys, a history, and run search (filter, sort, page) evaluated in Python with the
meaning sql.py gives the same filter in SQL (tests/integration/test_query_cache.py compares the
two on the same data). Each function returns None where the held copy cannot answer exactly (a
series too long to hold, a filter form kept to SQL): the caller then reads SQL.

Callers hold the cache's lock while calling these (the writer changes the project under it)."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import numpy as np
from google.protobuf import json_format

from runstream.states import STATE_NUMBERS
from runstream.v1 import types_pb2
from runstream_services.query.filter import COLUMNS, BoolOp, Compare, Field, Node, Not, to_ms
from runstream_services.query.read_cache import Project, RunEntry

log = logging.getLogger("runstream.query")

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_OPS = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}
_COLUMN_ATTR = {
    "run_id": "run_id", "name": "name", "group": "group", "job_type": "job_type", "user": "user",
    "host": "host", "git_commit": "git_commit", "notes": "notes", "state": "state",
    "start": "start_ms", "end": "end_ms", "heartbeat": "heartbeat_ms", "git_dirty": "git_dirty",
}  # fmt: skip


class Unsupported(Exception):
    """This read is answered from SQL (raised while planning, before any answer is built)."""


def value_proto(kind: str, num: float, text: str) -> types_pb2.Value:
    if kind == "number":
        return types_pb2.Value(number=num)
    if kind == "flag":
        return types_pb2.Value(flag=bool(num))
    if kind == "json":
        return types_pb2.Value(json=text)
    return types_pb2.Value(text=text)


def run_proto(project: str, entry: RunEntry) -> types_pb2.Run:
    r = entry.row
    return types_pb2.Run(
        run_id=r.run_id, project=project, name=r.name, group=r.group, job_type=r.job_type,
        state=STATE_NUMBERS.get(r.state, types_pb2.RUN_STATE_UNSPECIFIED), start_ms=r.start_ms,
        end_ms=r.end_ms, heartbeat_ms=r.heartbeat_ms, user=r.user, host=r.host, git_commit=r.git_commit,
        git_dirty=bool(r.git_dirty), notes=r.notes, tags=r.tags,
    )  # fmt: skip


def fill_details(
    runs: list[types_pb2.Run],
    entries: list[RunEntry],
    param_keys: list[str],
    metric_keys: list[str],
    include_config: bool,
) -> list[str]:
    """Adds config/summary values and metric summaries to the runs, as the SQL path does
    (service._fill_details). Returns the run ids whose wanted summaries include a series held
    only by key (big): the caller adds those runs' summaries from SQL."""
    wanted_params = set(param_keys)
    needs_sql: list[str] = []
    for run, entry in zip(runs, entries, strict=True):
        for (scope, key), (kind, num, text, _) in entry.params.items():
            if scope == "summary":
                run.summary[key].CopyFrom(value_proto(kind, num, text))
            elif include_config and (not wanted_params or key in wanted_params):
                run.config[key].CopyFrom(value_proto(kind, num, text))
        keys = sorted(k for (kind, k) in entry.series if kind == "user")
        if metric_keys:
            wanted = set(metric_keys)
            keys = [k for k in keys if k in wanted]
            big = any(("user", k) in entry.big for k in wanted)
        else:
            big = any(kind == "user" for kind, _ in entry.big)
        if big:
            needs_sql.append(run.run_id)
            continue
        for key in keys:
            s = entry.series[("user", key)].summary()
            run.metrics.add(
                key=key, last=s.last, min=math.nan if s.min is None else s.min,
                max=math.nan if s.max is None else s.max, count=s.count, last_step=s.last_step,
            )  # fmt: skip
    return needs_sql


def run_wire(p: Project, entry: RunEntry, include_config: bool) -> bytes | None:
    """The run as SearchRuns sends it without key lists (all summaries, config when asked),
    serialized once and kept until the run changes; None when a summary must come from SQL."""
    wire = entry.wire.get(include_config)
    if wire is None:
        if any(kind == "user" for kind, _ in entry.big):
            return None
        run = run_proto(p.name, entry)
        fill_details([run], [entry], [], [], include_config)
        wire = entry.wire[include_config] = run.SerializeToString()
    return wire


def runs_field(wires: list[bytes]) -> bytes:
    """The wire form of `repeated Run runs = 1` holding these serialized runs (field 1,
    length-delimited, in order), to merge into a SearchRunsResponse."""
    out = bytearray()
    for w in wires:
        out += b"\x0a"
        n = len(w)
        while n >= 0x80:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)
        out += w
    return bytes(out)


def get_run(p: Project, run_id: str) -> tuple[types_pb2.Run, bool] | None:
    """The run with config, summary, context, datasets, artifacts and (unless the second value is
    True: then the caller adds them from SQL) its metric summaries; None when unknown."""
    entry = p.runs.get(run_id)
    if entry is None or entry.row is None:
        return None
    run = run_proto(p.name, entry)
    row = entry.row
    if row.context:
        try:
            json_format.Parse(row.context, run.context, ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError) as exc:
            log.warning("run %s has an unreadable context: %s", run_id, exc)
    if row.datasets:
        try:
            for item in json.loads(row.datasets):
                run.datasets.add(
                    name=str(item.get("name", "")), version=str(item.get("version", "")),
                    uri=str(item.get("uri", "")),
                )  # fmt: skip
        except (ValueError, AttributeError, TypeError) as exc:
            log.warning("run %s has unreadable datasets: %s", run_id, exc)
    for a in sorted(entry.artifacts.values(), key=lambda a: (a[2], a[5], a[3])):  # name, version, path
        _, rid, name, path, typ, version, _, sha, size, uri, created = a
        run.artifacts.add(
            run_id=rid, name=name, path=path, type=typ, version=version,
            sha256=sha.decode() if isinstance(sha, bytes) else sha, size=size, uri=uri, created_ms=created,
        )  # fmt: skip
    needs_sql = fill_details([run], [entry], [], [], include_config=True)
    return run, bool(needs_sql)


def history_keys(entry: RunEntry, kind: str, wanted: list[str]) -> list[str] | None:
    """The run's keys of this kind (only `wanted` when given), sorted; None when one is big."""
    have = entry.series_keys(kind)
    keys = sorted(k for k in wanted if k in have) if wanted else sorted(have)
    if any((kind, k) in entry.big for k in keys):
        return None
    return keys


def history_columns(entry: RunEntry, kind: str, keys: list[str]) -> tuple[np.ndarray, ...]:
    """(key index, rank, step, value, time_ms) of every point of `keys`, ordered by key, rank, step
    (the order history pages have)."""
    parts = [entry.series[(kind, k)] for k in keys]
    ki = np.concatenate([np.full(len(s), i, np.uint16) for i, s in enumerate(parts)])
    cat = np.concatenate
    return (
        ki,
        cat([s.rank for s in parts]),
        cat([s.step for s in parts]),
        cat([s.value for s in parts]),
        cat([s.time for s in parts]),
    )


def list_keys(p: Project, run_ids: list[str]) -> tuple[list[str], list[str], list[str], list[str]]:
    """(user metric keys, system metric keys, config keys, tag keys), each sorted."""
    entries = [p.runs[r] for r in dict.fromkeys(run_ids) if r in p.runs] if run_ids else list(p.runs.values())
    user, system, config, tags = set(), set(), set(), set()
    for e in entries:
        user |= e.series_keys("user")
        system |= e.series_keys("system")
        config.update(key for scope, key in e.params if scope == "config")
        if e.row is not None:
            tags.update(e.row.tags)
    return sorted(user), sorted(system), sorted(config), sorted(tags)


# ---------------------------------------------------------------- run search


def search(
    p: Project, node: Node | None, order_by: list[tuple[Field, bool]], limit: int, offset: int
) -> tuple[list[RunEntry], int]:
    """The page of matching runs and the match count, as sql_runs.search_runs orders them.
    Raises Unsupported for forms kept to SQL."""
    _check_supported(p, node, order_by)
    runs = [e for e in p.runs.values() if e.row is not None]
    if node is not None:
        matches = _compile(node)
        runs = [e for e in runs if matches(e)]
    total = len(runs)
    runs.sort(key=lambda e: e.row.run_id)  # the last sort key: run_id ascending
    for f, desc in reversed(order_by):
        for extract in reversed(_sort_values(f)):
            present = [(v, e) for e in runs if (v := extract(e)) is not None]
            missing = [e for e in runs if extract(e) is None]
            present.sort(key=lambda pair: pair[0], reverse=desc)  # stable in either direction
            runs = [e for _, e in present] + missing  # NULLS LAST
    return runs[offset : offset + limit], total


def _check_supported(p: Project, node: Node | None, order_by: list[tuple[Field, bool]]) -> None:
    for f, _ in order_by:
        if f.kind == "metric" and p.big_keys.get(f.key):
            raise Unsupported(f"metric {f.key} has series too long to hold")
    stack = [node] if node is not None else []
    while stack:
        n = stack.pop()
        if isinstance(n, BoolOp):
            stack.extend(n.items)
        elif isinstance(n, Not):
            stack.append(n.item)
        else:
            f = n.field
            if f.kind == "metric" and p.big_keys.get(f.key):
                raise Unsupported(f"metric {f.key} has series too long to hold")
            if n.op == "~":
                needle = n.values[0].value
                if not isinstance(needle, str) or not needle.isascii():
                    raise Unsupported("substring match of a non-ASCII or non-text value")


def _compile(node: Node):
    """The filter as one function of a run (closures with the keys and values resolved once: the
    filter runs over every run of a project)."""
    if isinstance(node, BoolOp):
        parts = [_compile(i) for i in node.items]
        if node.op == "and":

            def all_of(e):
                for f in parts:  # noqa: SIM110 - a loop, not all(...): no generator per run
                    if not f(e):
                        return False
                return True

            return all_of

        def any_of(e):
            for f in parts:  # noqa: SIM110 - as above
                if f(e):
                    return True
            return False

        return any_of
    if isinstance(node, Not):
        inner = _compile(node.item)
        return lambda e: not inner(e)
    test = _compare(node)
    if node.negated_in:
        return lambda e: not test(e)
    return test


def _value_test(op: str, values: list):
    """A test of one value against the literal(s): membership for `in`, else the comparison."""
    if op == "in":
        return lambda v: v in values
    compare, lit = _OPS[op], values[0]
    return lambda v: compare(v, lit)


def _compare(node: Compare):
    f = node.field
    if f.kind == "column":
        kind = COLUMNS[f.key][1]
        attr = _COLUMN_ATTR[f.key]
        if kind == "text":
            test = _text_test(node)
        elif kind == "state":
            test = _value_test(node.op, [str(lit.value).lower() for lit in node.values])
        elif kind == "flag":
            flags = _value_test(node.op, [1 if lit.value in (True, 1.0) else 0 for lit in node.values])
            return lambda e: flags(int(e.row.git_dirty))
        else:
            test = _value_test(node.op, [to_ms(lit, "") for lit in node.values])
        return lambda e: test(getattr(e.row, attr))
    if f.kind == "tag":
        key, test = f.key, _text_test(node)

        def tag(e):
            v = e.row.tags.get(key)
            return v is not None and test(v)

        return tag
    if f.kind in ("param", "summary"):
        pkey = ("config" if f.kind == "param" else "summary", f.key)
        tests = [_param_test(node.op, lit.value) for lit in node.values]

        def param(e):
            found = e.params.get(pkey)
            if found is None:
                return False
            for t in tests:  # noqa: SIM110 - as above
                if t(found):
                    return True
            return False

        return param
    skey, agg = ("user", f.key), f.agg
    if node.op == "in":
        wanted = [float(lit.value) for lit in node.values]
        test = lambda v: any(v == w for w in wanted)  # noqa: E731 - NaN is in nothing
    else:
        test = _value_test(node.op, [float(node.values[0].value)])

    def metric(e):
        s = e.series.get(skey)
        if s is None:
            return False
        v = _agg(s, agg)
        return v is not None and test(v)

    return metric


def _text_test(node: Compare):
    texts = [lit.raw if isinstance(lit.value, float) else str(lit.value) for lit in node.values]
    if node.op == "~":
        needle = texts[0].translate(_ASCII_LOWER)
        return lambda v: needle in v.translate(_ASCII_LOWER)
    return _value_test(node.op, texts)


_NUMERIC_KINDS = ("number", "flag")


def _param_test(op: str, value: Any):
    """A test of one (newest) param row (kind, num, str, version) against one literal."""
    if op == "in":
        op = "="
    if isinstance(value, bool):
        flag = 1.0 if value else 0.0
        if op == "=":
            return lambda found: found[0] == "flag" and found[1] == flag
        return lambda found: found[0] == "flag" and found[1] != flag
    if isinstance(value, float):
        if op == "~":
            raise Unsupported("substring match of a number")
        compare = _OPS[op]
        return lambda found: found[0] in _NUMERIC_KINDS and compare(found[1], value)
    if op == "~":
        needle = value.translate(_ASCII_LOWER)
        return lambda found: needle in found[2].translate(_ASCII_LOWER)
    compare = _OPS[op]
    return lambda found: compare(found[2], value)


def _agg(s, agg: str) -> float | None:
    summary = s.summary()
    if agg == "last":
        return summary.last
    if agg == "min":
        return summary.min
    if agg == "max":
        return summary.max
    return float(summary.count)


def _sort_values(f: Field) -> list:
    """Functions giving each run's sort value(s) for the field (None: NULL, sorted last)."""
    if f.kind == "column":
        attr = _COLUMN_ATTR[f.key]
        return [lambda e: getattr(e.row, attr)]
    if f.kind == "tag":
        return [lambda e: e.row.tags.get(f.key)]
    if f.kind in ("param", "summary"):
        scope = "config" if f.kind == "param" else "summary"

        def number(e):
            found = e.params.get((scope, f.key))
            if found is None or found[0] not in ("number", "flag") or math.isnan(found[1]):
                return None
            return found[1]

        def text(e):
            found = e.params.get((scope, f.key))
            return None if found is None else found[2]

        return [number, text]

    def metric(e):
        s = e.series.get(("user", f.key))
        if s is None:
            return None
        v = _agg(s, f.agg)
        return None if v is None or math.isnan(v) else v

    return [metric]
