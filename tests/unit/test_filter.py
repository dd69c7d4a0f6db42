"""The filter language: parsing, SQL compilation with bound parameters, errors that point at the
mistake, and hostile input (never spliced into SQL; always a clear error or a parse)."""

from __future__ import annotations

import re

import pytest

from runstream_services.errors import InvalidArgument
from runstream_services.query import sql
from runstream_services.query.filter import (
    MAX_DEPTH,
    MAX_SORT_CHARS,
    MAX_SORT_KEYS,
    STATES,
    BoolOp,
    Compare,
    Field,
    Not,
    parse_filter,
    parse_order_by,
    parse_sort_field,
)
from runstream_services.query.filter_lexer import MAX_FILTER_CHARS, FilterError


def compile_(text: str) -> tuple[str, dict]:
    binder = sql.Binder()
    project = binder.bind("proj", "String")
    node = parse_filter(text)
    return sql.compile_filter(node, binder, "db", project), binder.params


def error_of(text: str) -> str:
    with pytest.raises(InvalidArgument) as err:
        compile_(text)
    return err.value.message


def test_issue_example_parses_to_three_terms():
    node = parse_filter('params.lr > 0.01 and metrics.val_f1 > 0.85 and tags.dataset = "v2.1"')
    assert isinstance(node, BoolOp) and node.op == "and"
    fields = [c.field for c in node.items]
    assert fields == [
        Field("param", "lr", pos=0),
        Field("metric", "val_f1", pos=21),
        Field("tag", "dataset", pos=47),
    ]
    assert [c.values[0].value for c in node.items] == [0.01, 0.85, "v2.1"]


def test_empty_filter_is_none():
    assert parse_filter("") is None and parse_filter("   \n ") is None


@pytest.mark.parametrize(
    ("text", "kind", "key", "agg"),
    [
        ("params.lr", "param", "lr", "last"),
        ("config.optimizer.lr", "param", "optimizer.lr", "last"),
        ("params.`learning rate`", "param", "learning rate", "last"),
        ("params.`a.b`.c", "param", "a.b.c", "last"),
        ("summary.best", "summary", "best", "last"),
        ("metrics.loss", "metric", "loss", "last"),
        ("metrics.loss.min", "metric", "loss", "min"),
        ("metrics.val/acc.MAX", "metric", "val/acc", "max"),
        ("metrics.train.loss.count", "metric", "train.loss", "count"),
        ("metrics.`loss.min`", "metric", "loss.min", "last"),
        ("metrics.min", "metric", "min", "last"),
        ("tags.dataset", "tag", "dataset", "last"),
        ("params.layers.0", "param", "layers.0", "last"),
        ("STATE", "column", "state", "last"),
        ("start", "column", "start", "last"),
    ],
)
def test_fields(text, kind, key, agg):
    if kind == "column" and key == "state":
        node = parse_filter(f'{text} = "running"')
    else:
        node = parse_filter(f'{text} = "1"' if kind in ("tag", "param", "summary") else f"{text} = 1")
    assert (node.field.kind, node.field.key, node.field.agg) == (kind, key, agg)


def test_operators_and_precedence():
    node = parse_filter('name = "a" or name = "b" and not state = "failed"')
    assert isinstance(node, BoolOp) and node.op == "or"
    assert isinstance(node.items[1], BoolOp) and node.items[1].op == "and"
    assert isinstance(node.items[1].items[1], Not)
    grouped = parse_filter('(name = "a" or name = "b") and params.x != 2')
    assert grouped.op == "and" and grouped.items[0].op == "or"
    for op in ("=", "!=", "<", "<=", ">", ">=", "~"):
        assert parse_filter(f'params.x {op} "v"').op == op
    assert parse_filter("params.x == 1").op == "=" and parse_filter("params.x <> 1").op == "!="
    node = parse_filter("params.bs not in (1, 2.5, -3e-2)")
    assert (
        isinstance(node, Compare) and node.negated_in and [v.value for v in node.values] == [1.0, 2.5, -0.03]
    )


def test_compiled_sql_binds_every_value_and_key():
    text = 'params.lr > 0.01 and metrics.val_f1.max >= 0.85 and tags.`data set` = "v2.1" and name ~ "bert"'
    where, params = compile_(text)
    assert "0.01" not in where and "v2.1" not in where and "data set" not in where and "bert" not in where
    assert set(params.values()) >= {0.01, 0.85, "v2.1", "data set", "bert", "lr", "val_f1"}
    for placeholder in re.findall(r"\{(p\d+):", where):
        assert placeholder in params
    assert "max(max)" in where and "FROM db.metric_summaries" in where and "FROM db.params" in where


def test_compiled_types():
    where, params = compile_('start >= "2024-05-01" and end < 1714521600000 and git_dirty = false')
    assert params["p1"] == 1714521600000 and params["p2"] == 1714521600000 and params["p3"] == 0
    where, params = compile_('state in ("RUNNING", "finished")')
    assert params["p1"] == ["running", "finished"]
    where, params = compile_("name = 123")
    assert params["p1"] == "123"  # a number against a text column keeps its spelling


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("params.lr >", "expected a value after '>'", 12),
        ("params.lr > 0.01 and", "expected a field", 21),
        ("params.lr 0.01", "expected an operator", 11),
        ("params.lr > 0.01 metrics.x > 1", "expected 'and', 'or' or the end", 18),
        ("(params.lr > 1", "unclosed '('", 1),
        ("params.lr > 1)", "unbalanced ')'", 14),
        ("()", "empty parentheses", 2),
        ('name = "abc', "unterminated string", 8),
        ("params.`abc = 1", "unterminated key", 8),
        ("params.lr > 1.2.3", "is not a number", 13),
        ("params. > 1", "expected a key after '.'", 9),
        ("params = 1", "params needs a key", 1),
        ("foo.bar = 1", "unknown field prefix 'foo'", 1),
        ("nonsense = 1", "unknown field 'nonsense'", 1),
        ('state > "running"', "can only be compared with = != or in", 7),
        ('state = "paused"', "state is one of", 9),
        ('metrics.loss = "low"', "compare it with a number", 16),
        ("metrics.loss ~ 1", "'~' (substring) works on text", 14),
        ('start > "yesterday"', "is not a time", 9),
        ("git_dirty = 2", "is true or false", 13),
        ("params.x in 1", "expected '(' after 'in'", 13),
        ("params.x in (1, ", "expected a value after ','", 17),
        ("params.x in (1 2)", "expected ',' or ')'", 16),
        ("params.x not 1", "expected 'in', 'like' or 'ilike' after 'not'", 14),
        ("name = adam", 'quote text values: "adam"', 8),
        ("name = `adam`", "backticks quote keys", 8),
        ('name = "a\\q"', "unknown escape", 10),
        ("params.x > 1e999", "out of range", 12),
        ("params.x = true and params.y < false", "true/false can only be compared", 30),
    ],
)
def test_errors_point_at_the_mistake(text, message, column):
    msg = error_of(text)
    assert message in msg
    assert f"at column {column}" in msg
    caret_line = msg.splitlines()[-1]
    assert caret_line.index("^") - 2 == column - 1  # the caret sits under the column


@pytest.mark.parametrize(
    "hostile",
    [
        "name = 'x' OR 1=1",
        'name = "x"; DROP TABLE runs',
        'name = "x" -- comment',
        'name = "x" /* c */',
        'name = "x" UNION SELECT * FROM system.tables',
        "params.lr > 1) OR (1=1",
        'tags.`a` = "b" `',
        'name = "\\"" or "',
        "state = 'running' or sleep(3)",
        "name = {p0:String}",
        "params.`x` = 1 format JSON",
        "\x00",
        "params.x > 1 \u2028 and",
    ],
)
def test_hostile_input_is_refused_with_an_error(hostile):
    with pytest.raises(InvalidArgument):
        compile_(hostile)


@pytest.mark.parametrize(
    "value",
    [
        "x' OR '1'='1",
        'x" OR "1"="1',
        "\\",
        "'; DROP TABLE runs; --",
        "/* */",
        "{p0:String}",
        "ü🙂ß",
        "$$x$$",
        "%s",
    ],
)
def test_hostile_values_stay_parameters(value):
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    for text in (f'name = "{escaped}"', f'params.opt ~ "{escaped}"', f'tags.t in ("{escaped}", "b")'):
        where, params = compile_(text)
        assert value in params.values() or [value, "b"] in params.values()
        assert value not in re.sub(r"\{p\d+:[A-Za-z()]+\}", "", where)


def test_hostile_keys_stay_parameters():
    where, params = compile_('params.`lr") OR 1=1 --` = 1 and tags.`x]; DROP` = "y"')
    assert 'lr") OR 1=1 --' in params.values() and "x]; DROP" in params.values()
    assert "DROP" not in where and "OR 1=1" not in where


def test_single_quotes_and_escapes_in_strings():
    assert parse_filter("name = 'it\\'s'").values[0].value == "it's"
    assert parse_filter('name = "tab\\there"').values[0].value == "tab\there"
    assert parse_filter('tags.`we\\`ird` = ""').field.key == "we`ird"


def test_unicode_keys_and_values():
    node = parse_filter('tags.`Größe` = "überlang 🙂"')
    assert node.field.key == "Größe" and node.values[0].value == "überlang 🙂"


def test_very_long_input_is_refused_cleanly():
    assert "at most" in error_of('name = "' + "a" * (MAX_FILTER_CHARS + 1) + '"')
    # long but allowed: many terms
    text = " or ".join(f'name = "r{i}"' for i in range(400))
    where, params = compile_(text)
    assert len(params) == 401


def test_error_in_a_long_filter_shows_a_window():
    text = " and ".join(f"params.p{i} > {i}" for i in range(100)) + " and params.x > and params.y > 2" * 3
    msg = error_of(text)
    assert "at column 1992, found 'and'" in msg and "quote" not in msg
    caret = msg.splitlines()[-1]
    shown = msg.splitlines()[-2]
    assert len(shown) < 100 and shown[caret.index("^") :].startswith("and params.y")


def test_deep_nesting_is_refused_not_a_crash():
    deep = "(" * (MAX_DEPTH + 5) + 'name = "a"' + ")" * (MAX_DEPTH + 5)
    assert "nests deeper" in error_of(deep)
    nots = "not " * (MAX_DEPTH + 5) + 'name = "a"'
    assert "nests deeper" in error_of(nots)
    ok = "(" * 20 + 'name = "a"' + ")" * 20
    compile_(ok)
    huge = "(" * 100_000
    with pytest.raises(InvalidArgument):
        compile_(huge)


def test_too_many_terms():
    text = " or ".join(f'name = "{i}"' for i in range(600))
    assert "more than 500" in error_of(text)


def test_not_semantics_include_missing():
    where, _ = compile_('not params.opt = "adam"')
    assert where.startswith("(NOT run_id IN (SELECT run_id FROM db.params FINAL")


def test_sort_fields():
    assert parse_sort_field("-metrics.val_f1") == (Field("metric", "val_f1", pos=1), True)
    assert parse_sort_field("params.`learning rate`") == (Field("param", "learning rate", pos=0), False)
    assert parse_sort_field("+start")[0].key == "start"
    for bad in ("", "-", "metrics.x > 1", "nonsense", "-params."):
        with pytest.raises(InvalidArgument):
            parse_sort_field(bad)


def test_filter_error_is_invalid_argument_with_position():
    with pytest.raises(FilterError) as err:
        parse_filter("params.lr >")
    assert err.value.pos == 11 and isinstance(err.value, InvalidArgument)


def test_state_names_come_from_runstream_states():
    from runstream.states import STATE_NAMES

    assert tuple(STATE_NAMES.values()) == STATES
    message = error_of('state = "paused"')
    assert "state is one of unspecified, running, finished, failed, crashed, killed" in message
    for name in STATES:
        where, params = compile_(f'state = "{name.upper()}"')
        assert where == "toString(state) = {p1:String}" and params["p1"] == name


# ---------------------------------------------------------------- Int64 bounds of time fields (issue 10, item 15)


@pytest.mark.parametrize(
    ("text", "column"),
    [
        ("start > 99999999999999999999", 9),
        ("end < -99999999999999999999", 7),
        ("heartbeat >= 9223372036854775808", 14),
        ("start > 1e19", 9),
        ("start in (1, 99999999999999999999)", 14),
    ],
)
def test_times_beyond_int64_are_refused_with_a_caret(text, column):
    """A time literal outside Int64 would wrap in the bound parameter and match everything."""
    msg = error_of(text)
    assert "out of range" in msg and "unix ms" in msg
    assert f"at column {column}" in msg
    assert msg.splitlines()[-1].index("^") - 2 == column - 1


def test_times_at_the_int64_bounds_are_exact():
    _, params = compile_("start <= 9223372036854775807 and end >= -9223372036854775808")
    assert params["p1"] == 2**63 - 1 and params["p2"] == -(2**63)
    _, params = compile_("start > 1_700_000_000_123")
    assert params["p1"] == 1_700_000_000_123


# ---------------------------------------------------------------- order_by bounds (issue 10, item 9)


def test_order_by_parses_every_key():
    assert parse_order_by(["-metrics.val_f1", "start"]) == [
        (Field("metric", "val_f1", pos=1), True),
        (Field("column", "start", pos=0), False),
    ]


def test_order_by_with_too_many_keys_is_refused_naming_the_limit():
    with pytest.raises(InvalidArgument) as err:
        parse_order_by([f"params.p{i}" for i in range(MAX_SORT_KEYS + 1)])
    assert f"{MAX_SORT_KEYS + 1} order_by keys is over the limit of {MAX_SORT_KEYS}" in err.value.message
    assert len(parse_order_by([f"params.p{i}" for i in range(MAX_SORT_KEYS)])) == MAX_SORT_KEYS


def test_order_by_too_long_in_total_is_refused_naming_the_limit():
    key = "params." + "k" * (MAX_SORT_CHARS // 2)
    with pytest.raises(InvalidArgument) as err:
        parse_order_by([key, key])
    assert f"over the limit of {MAX_SORT_CHARS} characters" in err.value.message


# ---------------------------------------------------------------- conventions users type (issue 15, item 3)


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        (["metrics.val_acc desc"], [("metric", "val_acc", True)]),
        (["metrics.val_acc DESC"], [("metric", "val_acc", True)]),
        (["metrics.val_acc Asc"], [("metric", "val_acc", False)]),
        (["-metrics.val_acc"], [("metric", "val_acc", True)]),
        (
            ["metrics.loss.min desc, -params.lr, name"],
            [("metric", "loss", True), ("param", "lr", True), ("column", "name", False)],
        ),  # fmt: skip
        (
            ["attributes.start_time DESC", "metrics.rmse ASC"],
            [("column", "start", True), ("metric", "rmse", False)],
        ),
        (["metrics.desc"], [("metric", "desc", False)]),  # a metric called desc is a key, not a direction
        (["metrics.`a, b` desc"], [("metric", "a, b", True)]),
        (["datasets.imagenet desc"], [("dataset", "imagenet", True)]),
        (["tags.mlflow.runName"], [("column", "name", False)]),
    ],
)
def test_order_by_directions_and_comma_separated_keys(entries, expected):
    got = parse_order_by(entries)
    assert [(f.kind, f.key, desc) for f, desc in got] == expected


@pytest.mark.parametrize(
    ("entry", "message", "column"),
    [
        ("-metrics.x desc", "the sort direction is given twice", 12),
        ("metrics.x desc desc", "unexpected 'desc' after the sort field", 16),
        ("metrics.x descending", "unexpected 'descending' after the sort field", 11),
        ("metrics.x,", "expected a sort field", 11),
        ("metrics.x,, name", "expected a sort field", 11),
        ("metrics.x name", "and ',' between fields", 11),
    ],
)
def test_order_by_mistakes_point_at_the_mistake(entry, message, column):
    with pytest.raises(FilterError) as err:
        parse_order_by([entry])
    assert message in err.value.message and f"at column {column}" in err.value.message
    assert err.value.message.splitlines()[-1].index("^") - 2 == column - 1


def test_order_by_counts_comma_separated_keys_against_the_limit():
    entry = ", ".join(f"params.p{i}" for i in range(MAX_SORT_KEYS + 1))
    with pytest.raises(InvalidArgument) as err:
        parse_order_by([entry])
    assert f"{MAX_SORT_KEYS + 1} order_by keys is over the limit" in err.value.message
    with pytest.raises(InvalidArgument, match="sort by datasets.<name>"):
        parse_order_by(["datasets.name"])


@pytest.mark.parametrize(
    ("text", "kind", "key", "agg"),
    [
        ("attributes.status", "column", "state", "last"),
        ("attribute.STATUS", "column", "state", "last"),
        ("attr.run_name", "column", "name", "last"),
        ("run.start_time", "column", "start", "last"),
        ("attributes.end_time", "column", "end", "last"),
        ("attributes.user_id", "column", "user", "last"),
        ("attributes.created", "column", "start", "last"),
        ("created_at", "column", "start", "last"),
        ("display_name", "column", "name", "last"),
        ("attributes.run_id", "column", "run_id", "last"),
        ("status", "column", "state", "last"),
        ("start_time", "column", "start", "last"),
        ("param.lr", "param", "lr", "last"),
        ("parameter.lr", "param", "lr", "last"),
        ("metric.loss.min", "metric", "loss", "min"),
        ("tag.team", "tag", "team", "last"),
        ('params."learning rate"', "param", "learning rate", "last"),
        ("params.'a.b'.c", "param", "a.b.c", "last"),
        ("tags.mlflow.runName", "column", "name", "last"),
        ("tags.mlflow.note.content", "column", "notes", "last"),
        ("tags.mlflow.user", "tag", "mlflow.user", "last"),  # imported runs keep it as a tag
        ("tags.`mlflow.runName`", "tag", "mlflow.runName", "last"),  # quoted: the tag itself
        ("tags.mlflow.other", "tag", "mlflow.other", "last"),
        ("datasets.imagenet", "dataset", "imagenet", "version"),
        ("datasets.imagenet.hash", "dataset", "imagenet", "version"),
        ("datasets.imagenet.version", "dataset", "imagenet", "version"),
        ("datasets.imagenet.uri", "dataset", "imagenet", "uri"),
        ("datasets.coco.2017", "dataset", "coco.2017", "version"),
        ("datasets.`a.hash`", "dataset", "a.hash", "version"),
        ("datasets.name", "dataset", "", "name"),  # MLflow: some dataset of the run has this name
        ("datasets.digest", "dataset", "", "version"),
        ("datasets.`name`", "dataset", "name", "version"),
    ],
)
def test_mlflow_spellings_and_datasets_map_to_fields(text, kind, key, agg):
    value = '"finished"' if key == "state" else "1" if kind == "metric" or key in ("start", "end") else '"x"'
    node = parse_filter(f"{text} = {value}")
    assert (node.field.kind, node.field.key, node.field.agg) == (kind, key, agg)


def test_single_quoted_values_and_mlflow_status_values():
    node = parse_filter("params.x = 'a' and attributes.status = 'FINISHED'")
    assert [c.values[0].value for c in node.items] == ["a", "FINISHED"]
    where, params = compile_("attributes.status = 'FINISHED'")
    assert where == "toString(state) = {p1:String}" and params["p1"] == "finished"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('attributes.artifact_uri = "s3://x"', "Api.run(project, run_id)['artifacts']"),
        ('attributes.lifecycle_stage = "active"', "leave this term out"),
        ('experiment_id = "1"', "pass the project"),
        ('attributes.nonsense = "1"', "attributes. takes one of: run_id, name"),
        ('datasets.context = "training"', 'datasets.<name> = "<version>"'),
        ('attributes = "x"', "attributes needs a key, e.g. attributes.status"),
        ('datasets = "x"', "datasets needs a key, e.g. datasets.imagenet"),
        ("attributes.status = 'SCHEDULED'", "state is one of"),
        ('params."" = 1', "empty quoted key"),
        ('metrics.loss like "a%"', "'like' matches text; metrics.loss is not text"),
        ('status ilike "fin%"', "'ilike' matches text; state is not text (compare it with in (...))"),
        ("params.x like 5", "'like' takes a pattern in quotes"),
        ('params.x like "50\\\\"', "cannot end with a backslash"),
        ("params.x not = 1", "expected 'in', 'like' or 'ilike' after 'not'"),
        ("params.x is 1", "expected 'null' or 'not null' after 'is'"),
        ("summary_metrics.acc > 1", "write metrics.<key> (the last value logged) or summary.<key>"),
        ("params.x is not", "expected 'null' or 'not null' after 'is'"),
        ("end_time is null", "every run has end: 'is null' / 'is not null' test params"),
    ],
)
def test_unsupported_spellings_name_the_runstream_spelling(text, message):
    with pytest.raises(FilterError) as err:
        parse_filter(text)
    assert message in err.value.message, err.value.message
    assert "^" in err.value.message.splitlines()[-1]


def test_like_and_dataset_terms_compile_to_bound_sql():
    where, params = compile_("params.opt LIKE 'ad%' and tags.t not ilike \"%X_\" and name like 'a\\\\%'")
    assert "AND key = {p2:String} AND (like(str, {p1:String}))" in where and params["p1"] == "ad%"
    assert "(NOT (mapContains(tags, {p3:String}) AND ilike(tags[{p3:String}], {p4:String})))" in where
    assert params["p4"] == "%X_" and params["p5"] == "a\\%"
    where, params = compile_('datasets.imagenet = "v2.1" and metrics.f1 > 0.85')
    assert where.startswith(
        "(arrayExists(ds_ -> if(JSONType(ds_, 'name') = 'String', JSONExtractString(ds_, 'name'), '') = "
        "{p2:String} AND if(JSONType(ds_, 'version') = 'String', JSONExtractString(ds_, 'version'), '') = "
        "{p1:String}, JSONExtractArrayRaw(datasets))"
    )
    assert params["p2"] == "imagenet" and params["p1"] == "v2.1"
    where, params = compile_('datasets.name in ("a", "b\') OR 1=1 --")')
    name = "if(JSONType(ds_, 'name') = 'String', JSONExtractString(ds_, 'name'), '')"
    assert where == f"arrayExists(ds_ -> {name} IN {{p1:Array(String)}}, JSONExtractArrayRaw(datasets))"
    assert params["p1"] == ["a", "b') OR 1=1 --"]


def test_dataset_sort_reads_the_first_reference():
    binder = sql.Binder()
    plan = sql.sort_plan(parse_order_by(["datasets.imagenet.uri DESC"]), binder, "db", "{p0:String}")
    name = "if(JSONType(ds_, 'name') = 'String', JSONExtractString(ds_, 'name'), '')"
    first = f"arrayFirst(ds_ -> {name} = {{p0:String}}, JSONExtractArrayRaw(r.datasets))"
    assert plan.order[0] == (
        f"if(arrayExists(ds_ -> {name} = {{p0:String}}, JSONExtractArrayRaw(r.datasets)), "
        f"if(JSONType({first}, 'uri') = 'String', JSONExtractString({first}, 'uri'), ''), NULL) DESC NULLS LAST"
    )


def test_is_null_tests_whether_the_run_has_the_field():
    node = parse_filter("params.x IS NULL and tags.t is not null")
    assert [(c.op, c.negated_in, c.values) for c in node.items] == [
        ("exists", True, ()),
        ("exists", False, ()),
    ]
    where, params = compile_("params.x IS NULL and tags.t is not null and datasets.name is not null")
    assert where == (
        "((NOT run_id IN (SELECT run_id FROM db.params FINAL WHERE project = {p0:String} AND scope = 'config' "
        "AND key = {p1:String})) AND mapContains(tags, {p2:String}) AND arrayExists(ds_ -> 1, "
        "JSONExtractArrayRaw(datasets)))"
    )
    assert params == {"p0": "proj", "p1": "x", "p2": "t"}
