"""The run filter language: its grammar, AST, recursive-descent parser and meaning checks.

    params.lr > 0.01 and metrics.val_f1 > 0.85 and tags.dataset = "v2.1"
    (state = "finished" or state = "running") and not name ~ "debug"
    metrics.`val/acc`.max >= 0.9 and config.model.depth in (12, 24)
    datasets.imagenet = "v2.1" and metrics.f1 > 0.85

Fields: params.<key> and config.<key> (the same), summary.<key>, metrics.<key> (last value) and
metrics.<key>.min/.max/.count/.last, tags.<key>, datasets.<name> (the version run.use_dataset
recorded: the content sha256 of a path, or the version given; .hash is the same value, .uri its
uri), and the run columns in `COLUMNS`. Keys may be written with backticks (`a key`.x,
`lr.decay`) to hold dots, spaces or operators; a backticked key is taken literally
(metrics.`a.min` is the key "a.min", its last value). After a dot, "double" or 'single' quotes
quote a key too (MLflow's spelling).
Operators: = (or ==) != (or <>) < <= > >= ~ (case-insensitive substring), like / ilike (SQL
patterns: % any text, _ one character, \\ escapes), in (...), not in (...), not like, not ilike,
is null / is not null (whether the run has the param, metric, tag or dataset), and, or, not,
parentheses. Values: numbers, "strings" or 'strings', true, false. Times (start,
end, heartbeat) are unix ms within Int64 or ISO dates.

MLflow's spellings are accepted where they mean one thing here (`ATTRIBUTE_ALIASES`,
`MLFLOW_TAGS`): attributes.status (also attribute., attr., run.), start_time, end_time, run_name,
user_id, created, param./parameter./metric./tag. prefixes, tags.mlflow.runName (the run's name),
datasets.name / datasets.digest (some dataset of the run has that name / version), IS [NOT] NULL;
W&B's display_name and created_at. Those that have no Runstream meaning (artifact_uri,
lifecycle_stage, experiment_id, datasets.context, W&B's summary_metrics.) are refused with a
message naming what to write instead.

A search sorts by at most MAX_SORT_KEYS fields (`parse_order_by`): "-field" or "field DESC" (ASC,
any case) for the direction, several keys comma-separated in one entry or as a list; each key
past a run column is a join.

The parser yields an AST; `sql.compile_filter` turns it into a SQL condition over the runs table
in which every value and key is a bound server-side parameter (see sql.Binder): no user text is
ever spliced into SQL; run_table.py evaluates the same AST over a held project with numpy.
Errors are FilterError (InvalidArgument) with the column and a caret under the mistake. The
tokenizer and FilterError live in filter_lexer.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from runstream.states import STATE_NAMES
from runstream_services.errors import InvalidArgument
from runstream_services.query.filter_lexer import FilterError, Token, tokenize

MAX_DEPTH = 64
MAX_TERMS = 500
MAX_IN_VALUES = 1_000
MAX_SORT_KEYS = 8  # each param/metric sort key is a join: 600 keys took 11.5 s on 19 runs
MAX_SORT_CHARS = 1_000  # all order_by entries together
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # the time columns (start_ms, ...) are Int64

# Run columns a filter or sort may name: field -> (SQL column, value type).
COLUMNS: dict[str, tuple[str, str]] = {
    "run_id": ("run_id", "text"),
    "name": ("name", "text"),
    "group": ("`group`", "text"),
    "job_type": ("job_type", "text"),
    "user": ("user", "text"),
    "host": ("host", "text"),
    "git_commit": ("git_commit", "text"),
    "notes": ("notes", "text"),
    "state": ("state", "state"),
    "start": ("start_ms", "time"),
    "end": ("end_ms", "time"),
    "heartbeat": ("heartbeat_ms", "time"),
    "git_dirty": ("git_dirty", "flag"),
}
STATES = tuple(STATE_NAMES.values())  # in wire order: unspecified, running, finished, ...
METRIC_AGGS = ("last", "min", "max", "count")
DATASET_ATTRS = {"version": "version", "hash": "version", "uri": "uri"}  # datasets.<name>.<attr>
_PREFIXES = {
    "params": "param", "config": "param", "summary": "summary", "metrics": "metric", "tags": "tag",
    "datasets": "dataset",
    # MLflow's spellings of the same prefixes
    "param": "param", "parameter": "param", "parameters": "param", "metric": "metric", "tag": "tag",
    "dataset": "dataset",
}  # fmt: skip
_ATTRIBUTE_PREFIXES = ("attributes", "attribute", "attr", "run")  # MLflow: attributes.status, ...
#: MLflow's (and W&B's) attribute names -> the run column they mean here
ATTRIBUTE_ALIASES = {
    "status": "state", "run_name": "name", "start_time": "start", "end_time": "end", "user_id": "user",
    "created": "start",
    # W&B's run attributes (its order= strings: "-created_at")
    "display_name": "name", "created_at": "start", "createdat": "start", "jobtype": "job_type",
}  # fmt: skip
#: MLflow attributes with no Runstream meaning -> what to write instead
_REFUSED_ATTRIBUTES = {
    "artifact_uri": "Runstream keeps artifacts per run, not under one URI: read them with "
    "Api.run(project, run_id)['artifacts']",
    "lifecycle_stage": "Runstream has no deleted runs to exclude: leave this term out",
    "experiment_id": "a search covers one project: pass the project to Api.runs / SearchRuns",
}
#: MLflow system tags that are run columns here (`runstream import mlflow` moves them there too);
#: a tag of that name is still reachable with backticks: tags.`mlflow.runName`. Other mlflow.*
#: tags (mlflow.user, mlflow.source.git.commit) stay tags: imported runs keep them as tags.
MLFLOW_TAGS = {"mlflow.runName": "name", "mlflow.note.content": "notes"}
TEXT_OPS = ("like", "ilike")
_KEYWORDS = {"and", "or", "not", "in", "true", "false", "like", "ilike", "is", "null"}


# ---------------------------------------------------------------- AST


@dataclass(frozen=True)
class Field:
    """What a filter term or sort key names. kind: column, param, summary, metric, tag or dataset.
    A dataset field names the dataset (key) and what of it (agg: version, uri, or name); key ""
    means any dataset of the run (MLflow's datasets.name / datasets.digest)."""

    kind: str
    key: str  # column field name, or the param/metric/tag key, or the dataset name
    agg: str = "last"  # metrics: last/min/max/count; datasets: version/uri/name
    pos: int = 0

    @property
    def label(self) -> str:
        if self.kind == "column":
            return self.key
        if self.kind == "dataset":
            if not self.key:
                return "datasets.name" if self.agg == "name" else "datasets.digest"
            return f"datasets.{self.key}" + (f".{self.agg}" if self.agg != "version" else "")
        prefix = {"param": "params", "summary": "summary", "metric": "metrics", "tag": "tags"}[self.kind]
        return f"{prefix}.{self.key}" + (
            f".{self.agg}" if self.kind == "metric" and self.agg != "last" else ""
        )


@dataclass(frozen=True)
class Literal:
    value: str | float | bool
    raw: str  # the text as written (numbers keep their spelling for text columns)
    pos: int


@dataclass(frozen=True)
class Compare:
    field: Field
    op: str  # = != < <= > >= ~ in like ilike, or "exists" (IS NOT NULL; IS NULL is it negated)
    values: tuple[Literal, ...]
    negated_in: bool = False  # `not in`, `not like`, `not ilike`, `is null`: the whole term negated
    pos: int = 0


@dataclass(frozen=True)
class BoolOp:
    op: str  # and, or
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    item: Node


Node = Compare | BoolOp | Not


# ---------------------------------------------------------------- parser


class _Parser:
    def __init__(self, source: str, signs: bool = False):
        self.source = source
        self.tokens = tokenize(source, signs)
        self.i = 0
        self.terms = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def fail(self, message: str, tok: Token | None = None, found: Token | None = None):
        raise FilterError(message, self.source, (tok or self.tok).pos, self.describe(found) if found else "")

    def is_word(self, *words: str) -> bool:
        return self.tok.kind == "word" and self.tok.text.lower() in words

    def describe(self, tok: Token) -> str:
        if tok.kind == "end":
            return "the end of the filter"
        if tok.kind == "string":
            return "a string"
        return repr(tok.text)

    def parse(self) -> Node | None:
        if self.tok.kind == "end":
            return None
        node = self.or_expr(0)
        if self.tok.kind != "end":
            if self.tok.kind == "rparen":
                self.fail("unbalanced ')'")
            self.fail("expected 'and', 'or' or the end of the filter", found=self.tok)
        return node

    def or_expr(self, depth: int) -> Node:
        items = [self.and_expr(depth)]
        while self.is_word("or"):
            self.i += 1
            items.append(self.and_expr(depth))
        return items[0] if len(items) == 1 else BoolOp("or", tuple(items))

    def and_expr(self, depth: int) -> Node:
        items = [self.not_expr(depth)]
        while self.is_word("and"):
            self.i += 1
            items.append(self.not_expr(depth))
        return items[0] if len(items) == 1 else BoolOp("and", tuple(items))

    def not_expr(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            self.fail(f"filter nests deeper than {MAX_DEPTH} levels")
        if self.is_word("not"):
            self.i += 1
            return Not(self.not_expr(depth + 1))
        if self.tok.kind == "lparen":
            open_tok = self.tok
            self.i += 1
            if self.tok.kind == "rparen":
                self.fail("empty parentheses")
            node = self.or_expr(depth + 1)
            if self.tok.kind != "rparen":
                if self.tok.kind == "end":
                    self.fail("unclosed '('", open_tok)
                self.fail("expected ')' or 'and'/'or'", found=self.tok)
            self.i += 1
            return node
        return self.comparison()

    def comparison(self) -> Compare:
        self.terms += 1
        if self.terms > MAX_TERMS:
            self.fail(f"filter has more than {MAX_TERMS} comparisons")
        start = self.tok
        field = self.field()
        if self.is_word("is"):  # MLflow's IS NULL / IS NOT NULL: whether the run has the field
            is_tok = self.tok
            self.i += 1
            present = self.is_word("not")
            if present:
                self.i += 1
            if not self.is_word("null"):
                self.fail("expected 'null' or 'not null' after 'is'", found=self.tok)
            self.i += 1
            return check(Compare(field, "exists", (), not present, is_tok.pos), self.source)
        negated = False
        if self.is_word("not"):
            self.i += 1
            if not self.is_word("in", *TEXT_OPS):
                self.fail(
                    f"expected 'in', 'like' or 'ilike' after 'not' (write `not {field.label} ...` to negate "
                    "a comparison)"
                )
            negated = True
        if self.is_word(*TEXT_OPS):
            op_tok = self.tok
            self.i += 1
            value = self.value(f"after '{op_tok.text}'")
            return check(Compare(field, op_tok.text.lower(), (value,), negated, op_tok.pos), self.source)
        if self.is_word("in"):
            op_tok = self.tok
            self.i += 1
            values = self.value_list(op_tok)
            return check(Compare(field, "in", values, negated, start.pos), self.source)
        if self.tok.kind != "op":
            self.fail(
                f"expected an operator (= != < <= > >= ~ in like ilike) after {field.label}", found=self.tok
            )
        op_tok = self.tok
        self.i += 1
        value = self.value(f"after '{op_tok.text}'")
        return check(Compare(field, op_tok.text, (value,), False, op_tok.pos), self.source)

    def value_list(self, op_tok: Token) -> tuple[Literal, ...]:
        if self.tok.kind != "lparen":
            self.fail("expected '(' after 'in', e.g. in (1, 2) or in (\"a\", \"b\")")
        open_tok = self.tok
        self.i += 1
        values = [self.value("in the list")]
        while self.tok.kind == "comma":
            self.i += 1
            values.append(self.value("after ','"))
            if len(values) > MAX_IN_VALUES:
                self.fail(f"an 'in' list holds at most {MAX_IN_VALUES} values")
        if self.tok.kind != "rparen":
            if self.tok.kind == "end":
                self.fail("unclosed '(' of the 'in' list", open_tok)
            self.fail("expected ',' or ')' in the 'in' list", found=self.tok)
        self.i += 1
        return tuple(values)

    def value(self, where: str) -> Literal:
        tok = self.tok
        if tok.kind == "number":
            self.i += 1
            return Literal(float(tok.text.replace("_", "")), tok.text, tok.pos)
        if tok.kind == "string":
            self.i += 1
            return Literal(tok.text, tok.text, tok.pos)
        if self.is_word("true", "false"):
            self.i += 1
            return Literal(tok.text.lower() == "true", tok.text.lower(), tok.pos)
        hint = ""
        if tok.kind == "word" and tok.text.lower() not in _KEYWORDS:
            hint = f' (quote text values: "{tok.text}")'
        elif tok.kind == "quoted_key":
            hint = " (backticks quote keys; use double quotes for text values)"
        raise FilterError(f"expected a value {where}", self.source, tok.pos, self.describe(tok) + hint)
        raise AssertionError  # unreachable

    def field(self) -> Field:
        tok = self.tok
        if tok.kind not in ("word", "quoted_key"):
            self.fail("expected a field (params.<key>, metrics.<key>, tags.<key>, state, ...)", found=tok)
        parts: list[tuple[str, bool]] = [(tok.text, tok.kind == "quoted_key")]
        self.i += 1
        while self.tok.kind == "dot":
            self.i += 1
            if self.tok.kind not in ("word", "quoted_key", "number", "string"):
                self.fail("expected a key after '.'", found=self.tok)
            if self.tok.kind == "string" and not self.tok.text:
                self.fail("empty quoted key")
            # "key" or 'key' after a dot quotes a key, as backticks do (MLflow's params."a b")
            parts.append((self.tok.text, self.tok.kind in ("quoted_key", "string")))
            self.i += 1
        return build_field(parts, tok.pos, self.source)


def build_field(parts: list[tuple[str, bool]], pos: int, source: str) -> Field:
    """Interprets dotted segments (text, was_quoted) as a Field."""
    head, head_quoted = parts[0]
    name = head.lower()
    if len(parts) == 1:
        if not head_quoted:
            column = _column_of(name, source, pos)
            if column:
                return Field("column", column, pos=pos)
            if name in _PREFIXES or name in _ATTRIBUTE_PREFIXES:
                example = {"dataset": "imagenet", "column": "status"}.get(_PREFIXES.get(name, "column"), "lr")
                raise FilterError(f"{name} needs a key, e.g. {name}.{example}", source, pos)
        raise FilterError(
            f"unknown field {head!r}; use params.<key>, config.<key>, summary.<key>, metrics.<key>, "
            f"tags.<key>, datasets.<name> or one of: {', '.join(COLUMNS)}",
            source,
            pos,
        )
    if not head_quoted and name in _ATTRIBUTE_PREFIXES:
        attr, attr_quoted = parts[1]
        column = None if attr_quoted or len(parts) > 2 else _column_of(attr.lower(), source, pos)
        if column is None:
            raise FilterError(
                f"unknown run attribute {'.'.join(p for p, _ in parts[1:])!r}; {head}. takes one of: "
                f"{', '.join([*COLUMNS, *ATTRIBUTE_ALIASES])}",
                source,
                pos,
            )
        return Field("column", column, pos=pos)
    if not head_quoted and name == "summary_metrics":
        raise FilterError(
            "summary_metrics. is W&B's; write metrics.<key> (the last value logged) or summary.<key> (a "
            "value set with run.summary)",
            source,
            pos,
        )
    if head_quoted or name not in _PREFIXES:
        raise FilterError(
            f"unknown field prefix {head!r}; use params., config., summary., metrics., tags., datasets. "
            "or attributes.",
            source,
            pos,
        )
    kind = _PREFIXES[name]
    rest = parts[1:]
    if kind == "dataset":
        return _dataset_field(rest, pos, source)
    if kind == "tag" and not any(quoted for _, quoted in rest):
        column = MLFLOW_TAGS.get(".".join(text for text, _ in rest))
        if column is not None:
            return Field("column", column, pos=pos)
    agg = "last"
    if kind == "metric" and len(rest) > 1 and not rest[-1][1] and rest[-1][0].lower() in METRIC_AGGS:
        agg = rest[-1][0].lower()
        rest = rest[:-1]
    key = ".".join(text for text, _ in rest)
    if not key:
        raise FilterError("empty key", source, pos)
    return Field(kind, key, agg, pos)


def _column_of(name: str, source: str, pos: int) -> str | None:
    """The run column a (lower-cased) attribute name means, None if none; FilterError for MLflow's
    attributes that mean nothing here."""
    if name in COLUMNS:
        return name
    if name in ATTRIBUTE_ALIASES:
        return ATTRIBUTE_ALIASES[name]
    if name in _REFUSED_ATTRIBUTES:
        raise FilterError(f"{name} is MLflow's; {_REFUSED_ATTRIBUTES[name]}", source, pos)
    return None


def _dataset_field(rest: list[tuple[str, bool]], pos: int, source: str) -> Field:
    """datasets.<name>[.version|.hash|.uri], or MLflow's datasets.name / datasets.digest."""
    if len(rest) == 1 and not rest[0][1]:
        word = rest[0][0].lower()
        if word == "name":
            return Field("dataset", "", "name", pos)
        if word == "digest":
            return Field("dataset", "", "version", pos)
        if word == "context":
            raise FilterError(
                "Runstream records no dataset context (training, eval, ...); compare the dataset "
                'itself: datasets.<name> = "<version>" (a dataset named context: datasets.`context`)',
                source,
                pos,
            )
    agg = "version"
    if len(rest) > 1 and not rest[-1][1] and rest[-1][0].lower() in DATASET_ATTRS:
        agg = DATASET_ATTRS[rest[-1][0].lower()]
        rest = rest[:-1]
    key = ".".join(text for text, _ in rest)
    if not key:
        raise FilterError("empty dataset name", source, pos)
    return Field("dataset", key, agg, pos)


def parse_filter(source: str) -> Node | None:
    """The AST of a filter; None for an empty filter."""
    return _Parser(source).parse()


def parse_sort_field(source: str) -> tuple[Field, bool]:
    """One sort key: a field, optionally prefixed by '-' (descending) or '+', or followed by ASC or
    DESC (any case): (field, descending)."""
    keys = _sort_keys(source)
    if len(keys) != 1:
        raise FilterError("expected one sort field, found a ','", source, keys[1][0].pos)
    return keys[0]


def _sort_keys(source: str) -> list[tuple[Field, bool]]:
    """The comma-separated sort keys of one order_by entry."""
    parser = _Parser(source, signs=True)
    if parser.tok.kind == "end":
        raise InvalidArgument("empty sort field in order_by")
    keys: list[tuple[Field, bool]] = []
    while True:
        sign = None
        if parser.tok.kind == "sign":
            sign = parser.tok
            parser.i += 1
        if parser.tok.kind in ("comma", "end"):
            parser.fail(
                "expected a sort field, e.g. metrics.val_acc DESC or -metrics.val_acc", found=parser.tok
            )
        field = parser.field()
        descending = sign is not None and sign.text == "-"
        if parser.is_word("asc", "desc"):
            if sign is not None:
                parser.fail(
                    f"the sort direction is given twice ('{sign.text}' and {parser.tok.text}); keep one"
                )
            descending = parser.tok.text.lower() == "desc"
            parser.i += 1
        keys.append((field, descending))
        if parser.tok.kind == "end":
            return keys
        if parser.tok.kind != "comma":
            parser.fail(
                f"unexpected {parser.describe(parser.tok)} after the sort field (write ASC or DESC, "
                "and ',' between fields)"
            )
        parser.i += 1


def parse_order_by(order_by: Sequence[str]) -> list[tuple[Field, bool]]:
    """The sort keys of a search: each entry one key or several comma-separated (see _sort_keys).
    InvalidArgument naming the limit when there are more than MAX_SORT_KEYS keys or the entries
    are longer than MAX_SORT_CHARS together."""
    if len(order_by) > MAX_SORT_KEYS:
        raise InvalidArgument(
            f"{len(order_by)} order_by keys is over the limit of {MAX_SORT_KEYS}; sort by fewer keys"
        )
    chars = sum(len(s) for s in order_by)
    if chars > MAX_SORT_CHARS:
        raise InvalidArgument(
            f"order_by is {chars} characters long, over the limit of {MAX_SORT_CHARS} characters"
        )
    keys = [key for entry in order_by for key in _sort_keys(entry)]
    if len(keys) > MAX_SORT_KEYS:
        raise InvalidArgument(
            f"{len(keys)} order_by keys is over the limit of {MAX_SORT_KEYS}; sort by fewer keys"
        )
    for f, _ in keys:
        if f.kind == "dataset" and not f.key:
            raise InvalidArgument(f"cannot sort by {f.label} (any dataset of a run); sort by datasets.<name>")
    return keys


# ---------------------------------------------------------------- checks


def check(node: Compare, source: str) -> Compare:
    """Refuses comparisons that cannot mean anything, before any SQL is built."""
    field, op = node.field, node.op
    kind = COLUMNS[field.key][1] if field.kind == "column" else field.kind

    def fail(message: str, pos: int) -> None:
        raise FilterError(message, source, pos)

    if op == "exists" and field.kind == "column":
        hint = (
            '; a run that has not ended has end = 0 (or write state = "running")'
            if field.key == "end"
            else ""
        )
        fail(
            f"every run has {field.label}: 'is null' / 'is not null' test params, metrics, tags and datasets{hint}",
            node.pos,
        )
    if op in TEXT_OPS:
        lit = node.values[0]
        if kind in ("metric", "state", "time", "flag"):
            instead = "in (...)" if kind in ("state", "flag") else "= != < <= > >= or in (...)"
            fail(f"'{op}' matches text; {field.label} is not text (compare it with {instead})", node.pos)
        if not isinstance(lit.value, str):
            fail(f"'{op}' takes a pattern in quotes, e.g. {field.label} {op} \"adam%\"", lit.pos)
        check_pattern(lit.value, source, lit.pos)
    for lit in node.values:
        if kind == "metric" and not isinstance(lit.value, float):
            fail(f"{field.label} is a number; compare it with a number", lit.pos)
        if kind == "state" and (not isinstance(lit.value, str) or lit.value.lower() not in STATES):
            fail(f"state is one of {', '.join(STATES)}", lit.pos)
        if kind == "flag" and not isinstance(lit.value, bool) and lit.value not in (0.0, 1.0):
            fail(f"{field.label} is true or false", lit.pos)
        if kind == "time":
            to_ms(lit, source)
    if op == "~" and (kind in ("metric", "state", "time", "flag") or isinstance(node.values[0].value, bool)):
        fail(f"'~' (substring) works on text; {field.label} is not text", node.pos)
    if op in ("<", "<=", ">", ">=") and kind in ("state", "flag"):
        fail(f"{field.label} can only be compared with = != or in", node.pos)
    if op in ("<", "<=", ">", ">=", "~") and isinstance(node.values[0].value, bool):
        fail("true/false can only be compared with = != or in", node.pos)
    return node


def check_pattern(pattern: str, source: str, pos: int) -> None:
    """A like/ilike pattern: % any text, _ one character, a backslash takes the next character
    literally (ClickHouse's rules); refused when it ends inside an escape."""
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\":
            if i + 1 == len(pattern):
                raise FilterError(
                    "a like pattern cannot end with a backslash (a backslash escapes the next character: "
                    '"100\\\\%" is a literal %; a literal backslash is four: "\\\\\\\\")',
                    source,
                    pos,
                )
            i += 2
        else:
            i += 1


def to_ms(lit: Literal, source: str) -> int:
    """A time value: unix ms as a number, or an ISO 8601 date/time string (UTC unless it says).
    Whole numbers are read exactly (not through a float) and must fit the Int64 time columns: a
    bound value beyond them would wrap and match everything."""
    if isinstance(lit.value, float):
        try:
            ms = int(lit.raw.replace("_", ""))
        except ValueError:  # 1.5e12, 1714521600000.5: not written as a whole number
            ms = int(lit.value)
        if not INT64_MIN <= ms <= INT64_MAX:
            raise FilterError(
                f"{lit.raw} is out of range for a time: unix ms between {INT64_MIN} and {INT64_MAX}",
                source,
                lit.pos,
            )
        return ms
    if isinstance(lit.value, str):
        try:
            moment = datetime.fromisoformat(lit.value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise FilterError(
                f'{lit.value!r} is not a time; use unix ms or an ISO date like "2024-05-01" or '
                '"2024-05-01T12:00:00Z"',
                source,
                lit.pos,
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)
    raise FilterError("a time is unix ms or an ISO date string", source, lit.pos)
