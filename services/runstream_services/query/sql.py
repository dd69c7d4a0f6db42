"""SQL building for the query service: the Binder, and the run filter and sort order compiled to SQL.
Every value and key goes through a Binder as a server-side parameter (`{p0:Float64}`;
clickhouse-connect hands them to ClickHouse / chDB apart from the SQL text); only the database
name (validated at start) and fixed identifiers are spliced in.

The statements themselves are in sql_runs.py (projects, keys, runs, params, artifacts) and
sql_series.py (metric points: series bounds, downsampled and raw points, history pages); they
return a Query, the SQL text with the values of its placeholders."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

from runstream_services.errors import InvalidArgument
from runstream_services.query.filter import COLUMNS, BoolOp, Compare, Field, Node, Not, to_ms

_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_NUMERIC_OPS = {"=": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


class Query(NamedTuple):
    """One statement: SQL text with `{name:Type}` placeholders and the values bound to them."""

    sql: str
    params: dict[str, object]


def checked_db(db: str) -> str:
    """The database name, refused unless it is a plain identifier (it is spliced into SQL text)."""
    if not _DB_NAME.match(db):
        raise InvalidArgument(f"database name {db!r} must match {_DB_NAME.pattern}")
    return db


@dataclass
class Binder:
    """Collects bound parameters; `bind` returns the placeholder to put in the SQL."""

    params: dict[str, object] = field(default_factory=dict)

    def bind(self, value: object, ch_type: str) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f"{{{name}:{ch_type}}}"


# ---------------------------------------------------------------- filter -> SQL


def compile_filter(node: Node, binder: Binder, db: str, project_ph: str) -> str:
    """A SQL condition over a row of `<db>.runs` for the filter AST `node`."""
    if isinstance(node, BoolOp):
        joiner = f" {node.op.upper()} "
        return "(" + joiner.join(compile_filter(i, binder, db, project_ph) for i in node.items) + ")"
    if isinstance(node, Not):
        return f"(NOT {compile_filter(node.item, binder, db, project_ph)})"
    return _compare(node, binder, db, project_ph)


def _compare(node: Compare, b: Binder, db: str, project_ph: str) -> str:
    f = node.field
    if node.op == "exists":
        cond = _exists(f, b, db, project_ph)
    elif f.kind == "column":
        cond = _column_cond(node, b)
    elif f.kind == "tag":
        key = b.bind(f.key, "String")
        cond = f"(mapContains(tags, {key}) AND {_text_cond('tags[' + key + ']', node, b)})"
    elif f.kind == "dataset":
        cond = _dataset_cond(node, b, "datasets")
    elif f.kind in ("param", "summary"):
        scope = "config" if f.kind == "param" else "summary"
        row_cond = " OR ".join(_param_cond(node.op, lit.value, b) for lit in node.values)
        # FINAL keeps the newest version of each (run, key) row; cheaper than argMax + GROUP BY
        cond = (
            f"run_id IN (SELECT run_id FROM {db}.params FINAL WHERE project = {project_ph} AND scope = '{scope}' "
            f"AND key = {b.bind(f.key, 'String')} AND ({row_cond}))"
        )
    else:  # metric
        agg = _METRIC_AGG_SQL[f.agg]
        if node.op == "in":
            having = f"{agg} IN {b.bind([float(v.value) for v in node.values], 'Array(Float64)')}"
        else:
            having = f"{agg} {_NUMERIC_OPS[node.op]} {b.bind(float(node.values[0].value), 'Float64')}"
        cond = (
            f"run_id IN (SELECT run_id FROM {db}.metric_summaries WHERE project = {project_ph} AND kind = 'user' "
            f"AND key = {b.bind(f.key, 'String')} GROUP BY run_id HAVING {having})"
        )
    return f"(NOT {cond})" if node.negated_in else cond


def _exists(f: Field, b: Binder, db: str, project_ph: str) -> str:
    """The run has the param/summary value, metric series, tag or dataset reference (IS NOT NULL)."""
    if f.kind == "tag":
        return f"mapContains(tags, {b.bind(f.key, 'String')})"
    if f.kind == "dataset":
        name = f"{_dataset_field('name')} = {b.bind(f.key, 'String')}" if f.key else "1"
        return f"arrayExists(ds_ -> {name}, JSONExtractArrayRaw(datasets))"
    if f.kind in ("param", "summary"):
        scope = "config" if f.kind == "param" else "summary"
        return (
            f"run_id IN (SELECT run_id FROM {db}.params FINAL WHERE project = {project_ph} AND scope = '{scope}' "
            f"AND key = {b.bind(f.key, 'String')})"
        )
    return (
        f"run_id IN (SELECT run_id FROM {db}.metric_summaries WHERE project = {project_ph} AND kind = 'user' "
        f"AND key = {b.bind(f.key, 'String')})"
    )


_METRIC_AGG_SQL = {
    "last": "argMaxMerge(last)",
    "min": "min(min)",
    "max": "max(max)",
    "count": "sum(count)",
}


def _param_cond(op: str, value: object, b: Binder) -> str:
    """Condition on one (newest, FINAL) param row: kind, num, str."""
    kind, num, text = "kind", "num", "str"
    if op == "in":
        op = "="
    if isinstance(value, bool):
        flag = b.bind(1.0 if value else 0.0, "Float64")
        sql_op = "=" if op == "=" else "!="
        return f"({kind} = 'flag' AND {num} {sql_op} {flag})"
    if isinstance(value, float):
        return f"({kind} IN ('number', 'flag') AND {num} {_NUMERIC_OPS[op]} {b.bind(value, 'Float64')})"
    if op == "~":
        return f"(positionCaseInsensitiveUTF8({text}, {b.bind(value, 'String')}) > 0)"
    if op in ("like", "ilike"):
        return f"{op}({text}, {b.bind(value, 'String')})"
    return f"({text} {_NUMERIC_OPS[op]} {b.bind(value, 'String')})"


def _text_cond(expr: str, node: Compare, b: Binder) -> str:
    texts = [lit.raw if isinstance(lit.value, float) else str(lit.value) for lit in node.values]
    if node.op == "in":
        return f"{expr} IN {b.bind(texts, 'Array(String)')}"
    if node.op == "~":
        return f"positionCaseInsensitiveUTF8({expr}, {b.bind(texts[0], 'String')}) > 0"
    if node.op in ("like", "ilike"):
        return f"{node.op}({expr}, {b.bind(texts[0], 'String')})"
    return f"{expr} {_NUMERIC_OPS[node.op]} {b.bind(texts[0], 'String')}"


def _dataset_cond(node: Compare, b: Binder, column: str) -> str:
    """Some dataset reference of the run (the `datasets` JSON list that run.use_dataset fills:
    [{"name", "version", "uri"}, ...]) has the field's name and its version/uri/name matches."""
    f = node.field
    terms = [_text_cond(_dataset_field(f.agg), node, b)]
    if f.key:
        terms.insert(0, f"{_dataset_field('name')} = {b.bind(f.key, 'String')}")
    return f"arrayExists(ds_ -> {' AND '.join(terms)}, JSONExtractArrayRaw({column}))"


def _dataset_field(attr: str, item: str = "ds_") -> str:
    """A text field of one dataset reference; "" where it is missing or not a string (as
    run_table._dataset_refs reads it: JSONExtractString alone would print a number)."""
    return f"if(JSONType({item}, '{attr}') = 'String', JSONExtractString({item}, '{attr}'), '')"


def dataset_value(f: Field, b: Binder, column: str) -> str:
    """The version (or uri) of the first reference to dataset `f.key` in the run, NULL if none."""
    name = b.bind(f.key, "String")
    items = f"JSONExtractArrayRaw({column})"
    pred = f"ds_ -> {_dataset_field('name')} = {name}"
    return f"if(arrayExists({pred}, {items}), {_dataset_field(f.agg, f'arrayFirst({pred}, {items})')}, NULL)"


def _column_cond(node: Compare, b: Binder) -> str:
    column, kind = COLUMNS[node.field.key]
    if kind == "text":
        return _text_cond(column, node, b)
    if kind == "state":
        states = [str(lit.value).lower() for lit in node.values]
        if node.op == "in":
            return f"toString(state) IN {b.bind(states, 'Array(String)')}"
        return f"toString(state) {_NUMERIC_OPS[node.op]} {b.bind(states[0], 'String')}"
    if kind == "flag":
        flags = [1 if lit.value in (True, 1.0) else 0 for lit in node.values]
        if node.op == "in":
            return f"{column} IN {b.bind(flags, 'Array(UInt8)')}"
        return f"{column} {_NUMERIC_OPS[node.op]} {b.bind(flags[0], 'UInt8')}"
    # time
    times = [to_ms(lit, "") for lit in node.values]
    if node.op == "in":
        return f"{column} IN {b.bind(times, 'Array(Int64)')}"
    return f"{column} {_NUMERIC_OPS[node.op]} {b.bind(times[0], 'Int64')}"


# ---------------------------------------------------------------- sorting


@dataclass(frozen=True)
class SortPlan:
    joins: list[str]  # LEFT JOIN clauses onto the filtered runs (alias r)
    order: list[str]  # ORDER BY items


def sort_plan(fields: list[tuple[Field, bool]], b: Binder, db: str, project_ph: str) -> SortPlan:
    """ORDER BY for run search. Missing values (NULL, NaN) sort last in either direction."""
    joins: list[str] = []
    order: list[str] = []
    for i, (f, desc) in enumerate(fields):
        direction = "DESC" if desc else "ASC"
        alias = f"s{i}"
        if f.kind == "column":
            column = COLUMNS[f.key][0]
            expr = "toString(r.state)" if f.key == "state" else f"r.{column}"
            order.append(f"{expr} {direction}")
        elif f.kind == "tag":
            key = b.bind(f.key, "String")
            order.append(f"if(mapContains(r.tags, {key}), r.tags[{key}], NULL) {direction} NULLS LAST")
        elif f.kind == "dataset":  # search_runs selects r.datasets when a key is one
            order.append(f"{dataset_value(f, b, 'r.datasets')} {direction} NULLS LAST")
        elif f.kind in ("param", "summary"):
            scope = "config" if f.kind == "param" else "summary"
            joins.append(
                f"LEFT JOIN (SELECT run_id, kind AS k, num AS n, str AS s FROM {db}.params FINAL "
                f"WHERE project = {project_ph} AND scope = '{scope}' AND key = {b.bind(f.key, 'String')}) "
                f"AS {alias} ON {alias}.run_id = r.run_id"
            )
            order.append(
                f"if({alias}.k IN ('number', 'flag') AND NOT isNaN({alias}.n), {alias}.n, NULL) "
                f"{direction} NULLS LAST"
            )
            order.append(f"{alias}.s {direction} NULLS LAST")
        else:
            joins.append(
                f"LEFT JOIN (SELECT run_id, {_METRIC_AGG_SQL[f.agg]} AS v FROM {db}.metric_summaries "
                f"WHERE project = {project_ph} AND kind = 'user' AND key = {b.bind(f.key, 'String')} "
                f"GROUP BY run_id) AS {alias} ON {alias}.run_id = r.run_id"
            )
            order.append(f"if(isNaN({alias}.v), NULL, {alias}.v) {direction} NULLS LAST")
    order.append("r.run_id ASC")  # a total order, so pages never overlap
    return SortPlan(joins, order)
