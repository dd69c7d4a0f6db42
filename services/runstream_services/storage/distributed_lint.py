"""Checks a SELECT for subqueries a Distributed table refuses or answers wrongly on a cluster.

A query over a Distributed table is sent to every shard. A subquery of it that reads another
Distributed table (`x IN (SELECT ... FROM dist)`, `JOIN dist` / `JOIN (SELECT ... FROM dist)`)
would run on each shard against the whole cluster: ClickHouse refuses that by default
(distributed_product_mode = 'deny'). It is right only when

- it is GLOBAL (GLOBAL IN / GLOBAL JOIN: the initiator runs the subquery once and ships the result
  to the shards), or
- it is co-sharded: both tables are sharded by (project, run_id), the subquery and the outer query
  fix the same project, and the subquery's rows are matched on run_id - every row it needs is
  on the shard that evaluates it, so each shard may read its local table
  (distributed_product_mode = 'local', which storage.cluster_schema.READER_SETTINGS sets).

`problems(sql, sharding)` lists the subqueries that are neither. It reads the SQL the store
generates (placeholders, quoted strings, nested parentheses), not arbitrary SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(r"'(?:\\.|[^'\\])*'|\{[^{}]*\}|`[^`]*`|\w+(?:\.\w+)*|\S")
_KEYWORDS_BEFORE_JOIN = {
    "LEFT",
    "RIGHT",
    "INNER",
    "FULL",
    "OUTER",
    "ANY",
    "ALL",
    "SEMI",
    "ANTI",
    "ASOF",
    "CROSS",
}


@dataclass
class Group:
    """A parenthesized part of the query (or the whole query)."""

    tokens: list = field(default_factory=list)  # str or Group

    @property
    def is_select(self) -> bool:
        return (
            bool(self.tokens)
            and isinstance(self.tokens[0], str)
            and self.tokens[0].upper() in ("SELECT", "WITH")
        )


def parse(sql: str) -> Group:
    root = Group()
    stack = [root]
    for tok in _TOKEN.findall(sql):
        if tok == "(":
            g = Group()
            stack[-1].tokens.append(g)
            stack.append(g)
        elif tok == ")":
            if len(stack) == 1:
                raise ValueError(f"unbalanced ')' in {sql[:80]!r}")
            stack.pop()
        else:
            stack[-1].tokens.append(tok)
    if len(stack) != 1:
        raise ValueError(f"unbalanced '(' in {sql[:80]!r}")
    return root


def _flat(tokens: list) -> list:
    """The scope's tokens with non-SELECT groups opened (their subqueries belong to this scope)."""
    out = []
    for t in tokens:
        if isinstance(t, Group) and not t.is_select:
            out.append("(")
            out.extend(_flat(t.tokens))
            out.append(")")
        else:
            out.append(t)
    return out


def _table(tok) -> str | None:
    if isinstance(tok, str) and re.fullmatch(r"\w+\.\w+", tok):
        return tok.split(".", 1)[1]
    return None


@dataclass
class Scope:
    source: str | Group | None  # the table name (without db) or subquery after FROM
    project: str | None  # the placeholder in `project = {..}`
    first_column: str | None
    tokens: list


def _scope(group: Group) -> Scope:
    toks = _flat(group.tokens)
    source = project = first = None
    for i, t in enumerate(toks):
        if isinstance(t, str) and t.upper() == "FROM" and source is None and i + 1 < len(toks):
            nxt = toks[i + 1]
            source = nxt if isinstance(nxt, Group) else _table(nxt)
        if (
            isinstance(t, str)
            and t.split(".")[-1] == "project"
            and i + 2 < len(toks)
            and toks[i + 1] == "="
            and isinstance(toks[i + 2], str)
        ):
            project = project or toks[i + 2]
    if len(toks) > 1 and isinstance(toks[1], str):
        first = toks[1].split(".")[-1]
    return Scope(source, project, first, toks)


def _tables_read(group: Group) -> set[str]:
    out = set()
    for t in group.tokens:
        if isinstance(t, Group):
            out |= _tables_read(t)
        elif _table(t):
            out.add(_table(t))
    return out


def problems(sql: str, sharding: dict[str, str | None], run_key: str) -> list[str]:
    """The Distributed-unsafe subqueries of `sql`. `sharding` maps a table to its sharding key
    (None: not sharded, a local table on every node); `run_key` is the (project, run_id) key."""
    found: list[str] = []
    _check(parse(sql), sharding, run_key, found)
    return found


def _sharded(table, sharding) -> bool:
    return isinstance(table, str) and bool(sharding.get(table))


def _check(group: Group, sharding, run_key, found: list[str]) -> None:
    scope = _scope(group)
    outer_distributed = _sharded(scope.source, sharding)
    toks = scope.tokens
    for i, t in enumerate(toks):
        if isinstance(t, Group):
            _check(t, sharding, run_key, found)
        kind, sub = None, None
        if isinstance(t, Group) and t.is_select and i > 0 and isinstance(toks[i - 1], str):
            prev = toks[i - 1].upper()
            if prev == "IN":
                kind, sub = "IN", t
            elif prev == "JOIN":
                kind, sub = "JOIN", t
        elif isinstance(t, str) and t.upper() == "JOIN" and i + 1 < len(toks) and _table(toks[i + 1]):
            kind, sub = "JOIN", toks[i + 1]
        if kind is None or not outer_distributed:
            continue
        reads = _tables_read(sub) if isinstance(sub, Group) else {_table(sub)}
        if not any(_sharded(r, sharding) for r in reads):
            continue
        if _is_global(toks, i if kind == "JOIN" and isinstance(t, str) else i - 1):
            continue
        if isinstance(sub, Group) and _co_sharded(
            kind, toks, i, scope, _scope(sub), reads, sharding, run_key
        ):
            continue
        text = " ".join(x if isinstance(x, str) else "(...)" for x in toks[max(0, i - 3) : i + 1])
        found.append(
            f"{kind} subquery reading {sorted(reads)} inside a query on Distributed {scope.source!r}: {text}"
        )


def _is_global(toks: list, at: int) -> bool:
    """Whether the IN/JOIN keyword at `at` is GLOBAL (GLOBAL [NOT] IN, GLOBAL [LEFT ...] JOIN)."""
    j = at - 1
    while j >= 0 and isinstance(toks[j], str) and toks[j].upper() in _KEYWORDS_BEFORE_JOIN | {"NOT"}:
        j -= 1
    return j >= 0 and isinstance(toks[j], str) and toks[j].upper() == "GLOBAL"


def _co_sharded(kind, toks, i, outer: Scope, inner: Scope, reads, sharding, run_key) -> bool:
    if sharding.get(outer.source) != run_key or any(sharding.get(r) not in (run_key, None) for r in reads):
        return False
    if not outer.project or inner.project != outer.project:
        return False
    if kind == "IN":
        j = i - 2
        while j >= 0 and isinstance(toks[j], str) and toks[j].upper() in ("NOT", "GLOBAL"):
            j -= 1
        left = toks[j] if j >= 0 else None
        return isinstance(left, str) and left.split(".")[-1] == "run_id" and inner.first_column == "run_id"
    on = [x for x in toks[i + 1 : i + 8] if isinstance(x, str)]
    if "ON" not in [x.upper() for x in on]:
        return False
    cond = on[[x.upper() for x in on].index("ON") + 1 :]
    return len(cond) >= 3 and cond[1] == "=" and cond[0].endswith("run_id") and cond[2].endswith("run_id")
