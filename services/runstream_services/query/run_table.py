"""Run search over a held project (read_cache.Project) with numpy: the filter becomes boolean
masks over per-field columns and the order one lexsort, with the meaning sql.py gives the same
filter and order in SQL (tests/integration/test_query_cache.py compares the two).

Columns are built on first use per field and kept while the project does not change
(Project.version), so repeated searches of a quiet project read only arrays; a project being
written rebuilds the few columns a search names (one pass over its runs per field)."""

from __future__ import annotations

import json
import operator
import re
from functools import lru_cache
from typing import Any

import numpy as np

from runstream.states import STATE_NUMBERS
from runstream_services.query.filter import COLUMNS, BoolOp, Compare, Field, Node, Not, to_ms
from runstream_services.query.read_cache import Project, RunEntry

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_OPS = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_COLUMN_ATTR = {
    "run_id": "run_id", "name": "name", "group": "group", "job_type": "job_type", "user": "user",
    "host": "host", "git_commit": "git_commit", "notes": "notes", "state": "state",
    "start": "start_ms", "end": "end_ms", "heartbeat": "heartbeat_ms", "git_dirty": "git_dirty",
}  # fmt: skip


class Unsupported(Exception):
    """This read is answered from SQL (raised while planning or evaluating a search, before any
    answer is built): cached_reads.Unsupported."""


class RunTable:
    """The runs of a project (those with a run row) as columns, built per field on demand."""

    def __init__(self, p: Project):
        self.version = p.version
        self.entries: list[RunEntry] = [e for e in p.runs.values() if e.row is not None]
        self.n = len(self.entries)
        self._cols: dict[tuple, Any] = {}

    @classmethod
    def of(cls, p: Project) -> RunTable:
        """The project's table, reused while the project has not changed since it was built."""
        table = p.table
        if table is None or table.version != p.version:
            table = p.table = cls(p)
        return table

    def _cached(self, key: tuple, build):
        col = self._cols.get(key)
        if col is None:
            col = self._cols[key] = build()
        return col

    def column(self, attr: str) -> np.ndarray:
        """A run-row attribute: object array of text, or int64 for times and git_dirty."""

        def build():
            values = [getattr(e.row, attr) for e in self.entries]
            if attr in ("start_ms", "end_ms", "heartbeat_ms", "git_dirty"):
                return np.array(values, dtype=np.int64) if values else np.empty(0, np.int64)
            return _objects(values)

        return self._cached(("col", attr), build)

    def tag(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(value with "" where absent, present)."""

        def build():
            values = [e.row.tags.get(key) for e in self.entries]
            present = np.array([v is not None for v in values], dtype=bool)
            return _objects(["" if v is None else v for v in values]), present

        return self._cached(("tag", key), build)

    def param(self, scope: str, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(kind, num, text, present) of the newest row of the param; kind "" / num NaN / text ""
        where the run has none."""

        def build():
            found = [e.params.get((scope, key)) for e in self.entries]
            present = np.array([f is not None for f in found], dtype=bool)
            kind = _objects(["" if f is None else f[0] for f in found])
            num = np.array([np.nan if f is None else f[1] for f in found], dtype=np.float64)
            text = _objects(["" if f is None else f[2] for f in found])
            return kind, num, text, present

        return self._cached(("param", scope, key), build)

    def datasets(self, name: str, attr: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """The run's references to dataset `name` ("": every dataset) as slots: slot j is
        (version/uri/name of the j-th such reference, "" where the run has fewer, present)."""

        def build():
            per_run = [[ref[attr] for ref in _dataset_refs(e.row.datasets) if not name or ref["name"] == name]
                       for e in self.entries]  # fmt: skip
            slots = []
            for j in range(max((len(v) for v in per_run), default=0)):
                present = np.array([len(v) > j for v in per_run], dtype=bool)
                slots.append((_objects([v[j] if len(v) > j else "" for v in per_run]), present))
            return slots

        return self._cached(("datasets", name, attr), build)

    def dataset_names(self) -> list[str]:
        """The names of the datasets the table's runs reference, sorted (a nameless one is none)."""

        def build():
            return sorted({ref["name"] for e in self.entries for ref in _dataset_refs(e.row.datasets)} - {""})

        return self._cached(("dataset_names",), build)

    def dataset_column(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(version of the run's first reference to the dataset, "" where none; present): the
        runs table's datasets.<name> column and its sort order."""
        slots = self.datasets(name, "version")
        return slots[0] if slots else (_objects([""] * self.n), np.zeros(self.n, dtype=bool))

    def metric(self, key: str, agg: str) -> tuple[np.ndarray, np.ndarray]:
        """(value, valid) of a user metric's summary: valid where the series exists and the
        aggregate is not NULL (min/max of a series without a finite value are NULL)."""

        def build():
            sk = ("user", key)
            values = np.full(self.n, np.nan)
            valid = np.zeros(self.n, dtype=bool)
            for i, e in enumerate(self.entries):
                s = e.series.get(sk)
                if s is None:
                    continue
                summary = s.summary()
                v = {"last": summary.last, "min": summary.min, "max": summary.max, "count": summary.count}[
                    agg
                ]
                if v is not None:
                    values[i] = v
                    valid[i] = True
            return values, valid

        return self._cached(("metric", key, agg), build)

    def keys(self) -> tuple[list[str], list[str], list[str], list[str]]:
        """(config keys, summary keys, user metric keys, tag keys) over the table's runs, sorted."""

        def build():
            config, summary, metrics, tags = set(), set(), set(), set()
            for e in self.entries:
                for scope, key in e.params:
                    (summary if scope == "summary" else config).add(key)
                metrics.update(k for kind, k in e.series if kind == "user")
                tags.update(e.row.tags)
            return sorted(config), sorted(summary), sorted(metrics), sorted(tags)

        return self._cached(("keys",), build)

    def state_codes(self) -> np.ndarray:
        """uint8 RunState number per run (unknown names: RUN_STATE_UNSPECIFIED, as run_proto)."""

        def build():
            numbers = [STATE_NUMBERS.get(s, 0) for s in self.column("state")]
            return np.array(numbers, dtype=np.uint8) if numbers else np.empty(0, np.uint8)

        return self._cached(("state_codes",), build)

    def value_codes(self, scope: str, key: str) -> np.ndarray:
        """uint8 per run: 0 absent, 1 number, 2 flag, 3 text, 4 json (query.proto ValueColumn)."""

        def build():
            kind, _, _, present = self.param(scope, key)
            codes = np.full(self.n, 3, np.uint8)
            codes[kind == "number"] = 1
            codes[kind == "flag"] = 2
            codes[kind == "json"] = 4
            codes[~present] = 0
            return codes

        return self._cached(("codes", scope, key), build)

    def run_id_codes(self) -> np.ndarray:
        return self._cached(("run_id_codes",), lambda: _codes(self.column("run_id")))


def search(p: Project, node: Node | None, order_by: list[tuple[Field, bool]], limit: int, offset: int):
    """(page of RunEntry, match count), ordered as sql_runs.search_runs orders them."""
    t, page, total = search_rows(p, node, order_by, limit, offset)
    return [t.entries[i] for i in page.tolist()], total


def search_rows(
    p: Project, node: Node | None, order_by: list[tuple[Field, bool]], limit: int, offset: int
) -> tuple[RunTable, np.ndarray, int]:
    """(the project's table, the page as row numbers of it, match count): `search` for callers
    that read the table's columns for the page (the columnar SearchRuns reply)."""
    t = RunTable.of(p)
    none = np.empty(0, np.int64)
    if t.n == 0:
        return t, none, 0
    mask = _mask(t, node) if node is not None else np.ones(t.n, dtype=bool)
    idx = np.flatnonzero(mask)
    total = len(idx)
    if total == 0 or offset >= total:
        return t, none, total
    keys = [t.run_id_codes()[idx]]  # least significant first (np.lexsort): run_id ascending last
    for f, desc in reversed(order_by):
        columns = [(values[idx], present[idx]) for values, present in _sort_columns(t, f)]
        if len(columns) == 2 and np.array_equal(columns[0][1], columns[1][1]):
            numbers = columns[0][0][columns[0][1]]
            if len(np.unique(numbers)) == len(numbers):
                columns = columns[:1]  # a param's text only orders runs its number ties (none here)
        for values, present in reversed(columns):
            codes = np.zeros(len(idx), dtype=np.int64)
            if present.any():
                codes[present] = _codes(values[present])
                if desc:
                    codes[present] = codes[present].max() - codes[present]
            keys.append(codes)
            keys.append(~present)  # NULLS LAST, in either direction
    order = np.lexsort(keys)
    return t, idx[order[offset : offset + limit]], total


def _sort_columns(t: RunTable, f: Field) -> list[tuple[np.ndarray, np.ndarray]]:
    """(values, present) per ORDER BY item of the field, as sql.sort_plan orders it."""
    if f.kind == "column":
        col = t.column(_COLUMN_ATTR[f.key])
        return [(col, np.ones(t.n, dtype=bool))]
    if f.kind == "tag":
        value, present = t.tag(f.key)
        return [(value, present)]
    if f.kind == "dataset":  # the first reference to the dataset, as sql.dataset_value
        slots = t.datasets(f.key, f.agg)
        return [slots[0] if slots else (_objects([""] * t.n), np.zeros(t.n, dtype=bool))]
    if f.kind in ("param", "summary"):
        kind, num, text, present = t.param("config" if f.kind == "param" else "summary", f.key)
        numeric = present & _is_numeric(kind) & ~np.isnan(num)
        return [(num, numeric), (text, present)]  # search() skips the text where it decides nothing
    value, valid = t.metric(f.key, f.agg)
    return [(value, valid & ~np.isnan(value))]


def _mask(t: RunTable, node: Node) -> np.ndarray:
    if isinstance(node, BoolOp):
        masks = [_mask(t, i) for i in node.items]
        out = masks[0].copy()
        for m in masks[1:]:
            if node.op == "and":
                out &= m
            else:
                out |= m
        return out
    if isinstance(node, Not):
        return ~_mask(t, node.item)
    hit = _compare(t, node)
    return ~hit if node.negated_in else hit


def _compare(t: RunTable, node: Compare) -> np.ndarray:
    f = node.field
    if node.op == "exists":  # sql._exists
        return _exists(t, f)
    if f.kind == "column":
        kind = COLUMNS[f.key][1]
        col = t.column(_COLUMN_ATTR[f.key])
        if kind == "text":
            return _text(col, node)
        if kind == "state":
            return _test(col, node.op, [str(lit.value).lower() for lit in node.values])
        if kind == "flag":
            return _test(col, node.op, [1 if lit.value in (True, 1.0) else 0 for lit in node.values])
        return _test(col, node.op, [to_ms(lit, "") for lit in node.values])
    if f.kind == "tag":
        value, present = t.tag(f.key)
        return present & _text(value, node)
    if f.kind == "dataset":  # some reference matches (sql._dataset_cond)
        out = np.zeros(t.n, dtype=bool)
        for value, present in t.datasets(f.key, f.agg):
            out |= present & _text(value, node)
        return out
    if f.kind in ("param", "summary"):
        kind, num, text, present = t.param("config" if f.kind == "param" else "summary", f.key)
        out = np.zeros(t.n, dtype=bool)
        for lit in node.values:
            out |= _param(node.op, lit.value, kind, num, text)
        return present & out
    value, valid = t.metric(f.key, f.agg)
    return valid & _test(value, node.op, [float(lit.value) for lit in node.values])


def _exists(t: RunTable, f: Field) -> np.ndarray:
    if f.kind == "tag":
        return t.tag(f.key)[1].copy()
    if f.kind == "dataset":
        slots = t.datasets(f.key, "name")
        return slots[0][1].copy() if slots else np.zeros(t.n, dtype=bool)
    if f.kind in ("param", "summary"):
        return t.param("config" if f.kind == "param" else "summary", f.key)[3].copy()
    return t.metric(f.key, "count")[1].copy()


def _test(col: np.ndarray, op: str, values: list) -> np.ndarray:
    if op == "in":
        out = np.zeros(len(col), dtype=bool)
        for v in values:
            out |= col == v
        return out
    return np.asarray(_OPS[op](col, values[0]), dtype=bool)


def _text(col: np.ndarray, node: Compare) -> np.ndarray:
    texts = [lit.raw if isinstance(lit.value, float) else str(lit.value) for lit in node.values]
    if node.op == "~":
        return _contains(col, texts[0])
    if node.op in ("like", "ilike"):
        return _like(col, texts[0], node.op == "ilike")
    return _test(col, node.op, texts)


def _contains(col: np.ndarray, needle: str) -> np.ndarray:
    """positionCaseInsensitiveUTF8(col, needle) > 0 for an ASCII needle (others go to SQL)."""
    needle = needle.translate(_ASCII_LOWER)
    return np.fromiter((needle in v.translate(_ASCII_LOWER) for v in col), dtype=bool, count=len(col))


def _like(col: np.ndarray, pattern: str, ignore_case: bool) -> np.ndarray:
    """ClickHouse's like/ilike: the whole text matches; % any text (newlines too), _ one
    character, a backslash takes the next character literally. ilike only over ASCII pattern and
    text (ASCII case folding): ClickHouse folds other letters differently by pattern shape ('K'
    ilike 'k' but not '%k%'), so anything else is answered from SQL (Unsupported)."""
    if ignore_case and not (pattern.isascii() and all(v.isascii() for v in col)):
        raise Unsupported("ilike over non-ASCII text")
    match = _like_regex(pattern, ignore_case).fullmatch
    return np.fromiter((match(v) is not None for v in col), dtype=bool, count=len(col))


@lru_cache(maxsize=256)
def _like_regex(pattern: str, ignore_case: bool) -> re.Pattern:
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):  # filter.check_pattern refused a trailing one
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL | (re.IGNORECASE | re.ASCII if ignore_case else 0))


def _dataset_refs(text: str) -> list[dict[str, str]]:
    """The run's dataset references as the SQL path reads them (JSONExtractArrayRaw and
    JSONExtractString): unreadable JSON is no reference, a field that is not a string is ""."""
    if not text or text == "[]":  # most runs: no dataset
        return []
    try:
        items = json.loads(text)
    except ValueError:
        return []
    if not isinstance(items, list):
        return []
    refs = []
    for item in items:
        item = item if isinstance(item, dict) else {}
        refs.append({k: v if isinstance(v := item.get(k), str) else "" for k in ("name", "version", "uri")})
    return refs


def _param(op: str, value: Any, kind: np.ndarray, num: np.ndarray, text: np.ndarray) -> np.ndarray:
    """sql._param_cond over the newest row of each run (callers AND it with `present`)."""
    if op == "in":
        op = "="
    if isinstance(value, bool):
        flag = 1.0 if value else 0.0
        return (kind == "flag") & ((num == flag) if op == "=" else (num != flag))
    if isinstance(value, float):
        return _is_numeric(kind) & np.asarray(_OPS[op](num, value), dtype=bool)
    if op == "~":
        return _contains(text, value)
    if op in ("like", "ilike"):
        return _like(text, value, op == "ilike")
    return np.asarray(_OPS[op](text, value), dtype=bool)


def _is_numeric(kind: np.ndarray) -> np.ndarray:
    return (kind == "number") | (kind == "flag")


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _codes(values: np.ndarray) -> np.ndarray:
    """Dense ranks of the values (equal values, equal ranks), in their sort order. Text is ranked
    as numpy unicode (compared in C, by code point as Python and ClickHouse's bytes order UTF-8)
    unless a value holds NUL, which numpy unicode would drop from the end."""
    if values.dtype == object and len(values) and not any("\0" in v for v in values):
        values = values.astype(str)
    return np.unique(values, return_inverse=True)[1].reshape(-1).astype(np.int64)
