"""The registry's statements (registry/sql.py) on in-process chDB after migration 0006, and the
`runstream models` / `runstream artifact` command line (parsing and --help, no server)."""

from __future__ import annotations

import json

import pytest

from runstream_services.cli import build_parser
from runstream_services.registry import sql
from runstream_services.storage import migrations
from runstream_services.storage.clickhouse import connect


@pytest.fixture
def db(chdb_dsn, database):
    client = connect(chdb_dsn)
    migrations.migrate(client, database)
    return client, database


def _insert(client, db, table, columns, rows):
    client.insert(f"{db}.{table}", rows, column_names=list(columns))


def _rows(client, query):
    return client.query(query.sql, parameters=query.params).result_rows


def _version(project, model, version, run="r1"):
    return [project, model, version, run, "model", 1, "a" * 64, "[]", "[]", "abc", 0, "key:x", 1, "", "[]"]


def test_models_with_latest_version_and_project_scope(db):
    client, d = db
    models = [["p", "clf", "", ["production"], "key:x", 1, 1], ["p", "empty", "", [], "key:x", 2, 1]]
    models.append(["other", "clf", "", [], "key:y", 3, 1])
    _insert(client, d, "registered_models", sql.MODEL_COLUMNS, models)
    versions = [_version("p", "clf", 1), _version("p", "clf", 2), _version("other", "clf", 7)]
    _insert(client, d, "model_versions", sql.VERSION_COLUMNS, versions)
    rows = _rows(client, sql.models(d, "p"))
    assert [(r[0], list(r[2]), r[5]) for r in rows] == [("clf", ["production"], 2), ("empty", [], 0)]
    assert [r[0] for r in _rows(client, sql.models(d, "p", "empty"))] == ["empty"]
    assert _rows(client, sql.models(d, "p", "missing")) == []
    # a newer revision of the model row replaces the older one
    _insert(client, d, "registered_models", sql.MODEL_COLUMNS, [["p", "clf", "new", ["prod"], "key:x", 1, 2]])
    (clf,) = _rows(client, sql.models(d, "p", "clf"))
    assert clf[1] == "new" and list(clf[2]) == ["prod"]


def test_versions_newest_first_each_once(db):
    client, d = db
    rows = [_version("p", "m", 1), _version("p", "m", 2), _version("p", "m", 2), _version("p", "n", 5)]
    _insert(client, d, "model_versions", sql.VERSION_COLUMNS, rows)
    assert [r[0] for r in _rows(client, sql.versions(d, "p", "m"))] == [2, 1]
    assert [r[0] for r in _rows(client, sql.versions(d, "p", "m", 1))] == [1]
    assert _rows(client, sql.latest_version(d, "p", "m"))[0][0] == 2
    assert _rows(client, sql.latest_version(d, "p", "none"))[0][0] == 0


def test_alias_history_and_edits_in_revision_order(db):
    client, d = db
    moves = [["p", "m", "prod", 2, 1, "key:a", "", 20, 200], ["p", "m", "prod", 1, 0, "key:a", "", 10, 100]]
    _insert(client, d, "model_alias_moves", sql.MOVE_COLUMNS, moves)
    assert [r[2] for r in _rows(client, sql.alias_moves(d, "p", "m"))] == [1, 2]
    edits = [["p", "m", 1, "b", {"t": "2"}, "key:a", 20, 200], ["p", "m", 1, "a", {}, "key:a", 10, 100]]
    _insert(client, d, "model_version_edits", sql.EDIT_COLUMNS, edits)
    assert [(r[1], dict(r[2])) for r in _rows(client, sql.edits(d, "p", "m", 1))] == [
        ("a", {}),
        ("b", {"t": "2"}),
    ]


def test_events_are_the_registry_actions_of_one_model(db):
    client, d = db
    audit = [
        [1, "p", "key:a", "model.created", "clf", "{}"],
        [2, "p", "key:a", "model_version.created", "clf:1", json.dumps({"run_id": "r"})],
        [3, "p", "key:a", "alias.moved", "clf@prod", json.dumps({"from": 1, "to": 2})],
        [4, "p", "key:a", "model.created", "clf-2", "{}"],
        [5, "p", "key:a", "alias.created", "clf-2@prod", "{}"],
        [6, "p", "client:c", "run.created", "clf", "{}"],  # a run named like the model: not registry
        [7, "q", "key:b", "model.created", "clf", "{}"],
    ]
    _insert(client, d, "audit_log", sql.AUDIT_COLUMNS, audit)
    assert [r[0] for r in _rows(client, sql.events(d, "p", "clf", 100))] == [3, 2, 1]
    assert [r[0] for r in _rows(client, sql.events(d, "p", "", 100))] == [5, 4, 3, 2, 1]
    assert [r[0] for r in _rows(client, sql.events(d, "p", "", 2))] == [5, 4]


def test_event_pages_continue_past_rows_of_one_millisecond(db):
    """Keyset paging on (time_ms, row hash): rows sharing a millisecond are neither lost nor
    repeated at a page edge."""
    client, d = db
    rows = [[7, "p", "key:x", "alias.moved", f"m@a{i}", "{}"] for i in range(5)] + [
        [9, "p", "key:x", "model.created", "m", "{}"]
    ]
    _insert(client, d, "audit_log", sql.AUDIT_COLUMNS, rows)
    seen, before = [], None
    while True:
        page = _rows(client, sql.events(d, "p", "", 2, before))
        seen += [(r[0], r[3]) for r in page]
        if len(page) < 2:
            break
        before = (page[-1][0], page[-1][5])
    assert seen[0] == (9, "m") and sorted(seen[1:]) == [(7, f"m@a{i}") for i in range(5)]


@pytest.mark.parametrize(
    "argv, handler",
    [
        (["models", "ls", "--project", "p"], "models_ls"),
        (["models", "show", "--project", "p", "clf@production", "--json"], "models_show"),
        (["models", "alias", "--project", "p", "clf", "staging", "3", "--reason", "x"], "models_alias"),
        (["models", "alias", "--project", "p", "clf", "staging", "--delete"], "models_alias"),
        (["artifact", "get", "--project", "p", "run1", "model", "--dest", "out"], "artifact_get"),
        (["models", "lineage", "--project", "p", "clf:3", "--direction", "upstream"], "models_lineage"),
        (["models", "lineage", "--project", "p", "--run", "r1", "--depth", "3"], "models_lineage"),
    ],
)
def test_cli_parses_registry_commands(argv, handler):
    from runstream_services.registry.commands import HANDLERS

    args = build_parser().parse_args(argv)
    assert args.handler == handler and handler in HANDLERS


def test_cli_help_says_what_each_command_does(capsys):
    parser = build_parser()
    for argv, words in (
        (["models", "--help"], ["ls", "show", "alias", "protected", "audit log"]),
        (["artifact", "--help"], ["get", "sha256"]),
        (["models", "alias", "--help"], ["--delete", "--reason"]),
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        text = " ".join(capsys.readouterr().out.split())
        for word in words:
            assert word in text, (argv, word)


def test_cli_models_needs_an_action_and_a_project():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["models"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["models", "ls"])
