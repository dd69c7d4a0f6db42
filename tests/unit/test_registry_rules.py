"""The registry's pure rules (services/runstream_services/registry/rules.py): names, roles,
artifact choice and digest, alias state from move history, tag edits, revisions, and the SDK's
model references (runstream.registry_client.parse_model_ref)."""

from __future__ import annotations

import hashlib
import json
import math

import pytest

from runstream.errors import RunstreamError
from runstream.registry_client import _safe_join, parse_model_ref
from runstream_services.errors import InvalidArgument, NotFound
from runstream_services.registry import rules
from runstream_services.registry.rules import AliasMove, ArtifactFile


@pytest.mark.parametrize("name", ["clf", "team/resnet-50", "a.b_c", "9lives"])
def test_model_names_accepted(name):
    assert rules.model_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", "a b", "a/../b", "x" * 201, "é"])
def test_model_names_refused_with_what_is_allowed(name):
    with pytest.raises(InvalidArgument, match="model name"):
        rules.model_name(name)


@pytest.mark.parametrize("alias", ["", "3", "1abc", "a b", "prod@x"])
def test_aliases_never_read_as_versions(alias):
    with pytest.raises(InvalidArgument, match="alias"):
        rules.alias_name(alias)


def test_protected_aliases_default_given_or_none():
    assert rules.protected_aliases([], none=False) == ["production"]
    assert rules.protected_aliases(["prod", "champion", "prod"], none=False) == ["champion", "prod"]
    assert rules.protected_aliases([], none=True) == []
    with pytest.raises(InvalidArgument, match="not both"):
        rules.protected_aliases(["prod"], none=True)


def test_role_for_alias():
    assert rules.role_for_alias("production", ["production"]) == "admin"
    assert rules.role_for_alias("staging", ["production"]) == "write"
    assert rules.role_for_alias("production", []) == "write"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_artifact_digest_one_file_is_its_own_sha():
    f = ArtifactFile("model.pt", _sha(b"w"), 1)
    assert rules.artifact_digest([f]) == _sha(b"w")


def test_artifact_digest_of_several_files_names_every_path_and_byte():
    a, b = ArtifactFile("a.bin", _sha(b"a"), 1), ArtifactFile("b.bin", _sha(b"b"), 1)
    digest = rules.artifact_digest([b, a])
    assert digest == _sha(f"a.bin\t{a.sha256}\nb.bin\t{b.sha256}\n".encode())
    assert digest == rules.artifact_digest([a, b])  # order of the rows does not matter
    renamed = ArtifactFile("c.bin", a.sha256, 1)
    changed = ArtifactFile("a.bin", _sha(b"A"), 1)
    assert rules.artifact_digest([renamed, b]) != digest
    assert rules.artifact_digest([changed, b]) != digest


ROWS = [
    ("model", 1, "w.pt", _sha(b"1"), 10),
    ("model", 3, "w.pt", _sha(b"3"), 30),
    ("model", 3, "cfg.json", _sha(b"c").encode(), 5),  # FixedString columns may come as bytes
    ("other", 7, "x", _sha(b"x"), 1),
]


def test_choose_artifact_newest_or_given_version():
    newest = rules.choose_artifact(ROWS, "p", "r", "model", 0)
    assert newest.version == 3
    assert [f.path for f in newest.files] == ["cfg.json", "w.pt"]
    assert newest.files[0].sha256 == _sha(b"c")
    assert json.loads(newest.files_json())[1] == {"path": "w.pt", "sha256": _sha(b"3"), "size": 30}
    first = rules.choose_artifact(ROWS, "p", "r", "model", 1)
    assert first.sha256 == _sha(b"1") and first.version == 1


def test_choose_artifact_not_found_says_what_exists():
    with pytest.raises(NotFound, match="no artifact named 'nope'"):
        rules.choose_artifact(ROWS, "p", "r", "nope", 0)
    with pytest.raises(NotFound, match=r"version\(s\) \[1, 3\], not 2"):
        rules.choose_artifact(ROWS, "p", "r", "model", 2)


def test_metrics_snapshot_keeps_nan_and_infinities():
    text = rules.metrics_json([("loss", 0.5, math.nan, math.inf, 3, 9)])
    json.loads(text)  # valid JSON: no NaN literal
    (m,) = rules.metrics_from_json(text)
    assert m["key"] == "loss" and m["last"] == 0.5 and math.isnan(m["min"]) and m["max"] == math.inf
    assert m["count"] == 3 and m["last_step"] == 9


def _move(alias, to, rev, frm=0):
    return AliasMove(alias, to, frm, "key:x", "", rev, rev)


def test_current_aliases_highest_revision_wins_and_deletes_remove():
    moves = [_move("prod", 1, 10), _move("prod", 2, 30), _move("staging", 2, 20), _move("old", 1, 5)]
    moves.append(_move("old", 0, 6))
    assert rules.current_aliases(moves) == {"prod": 2, "staging": 2}
    assert rules.current_aliases(list(reversed(moves))) == {"prod": 2, "staging": 2}  # order-free
    assert rules.aliases_by_version({"prod": 2, "staging": 2, "x": 1}) == {1: ["x"], 2: ["prod", "staging"]}


def test_edited_tags():
    assert rules.edited_tags({"a": "1", "b": "2"}, {"c": "3", "b": "9"}, ["a"]) == {"b": "9", "c": "3"}
    assert rules.edited_tags({"a": "1"}, {"a": "2"}, ["a"]) == {"a": "2"}  # removed then set: set
    with pytest.raises(InvalidArgument, match="tag key"):
        rules.edited_tags({}, {"": "x"}, [])
    with pytest.raises(InvalidArgument, match="at most"):
        rules.edited_tags({}, {f"k{i}": "" for i in range(rules.MAX_TAGS + 1)}, [])


def test_revisions_increase_even_when_the_clock_does_not():
    r = rules.Revisions()
    assert r.next(now_us=100) == 100
    assert r.next(now_us=100) == 101
    assert r.next(now_us=50) == 102  # a clock step back never reorders changes
    assert r.next(now_us=500) == 500


def test_actor_names_the_key_id_only():
    class P:
        key_id = "abc123"

    assert rules.actor_of(P()) == "key:abc123"
    assert rules.actor_of(None) == "anonymous"


@pytest.mark.parametrize(
    "ref, parsed",
    [
        ("clf", ("clf", 0, "")),
        ("clf:3", ("clf", 3, "")),
        ("clf@production", ("clf", 0, "production")),
        ("team/clf:12", ("team/clf", 12, "")),
        ("clf:latest", ("clf:latest", 0, "")),
    ],
)
def test_model_references(ref, parsed):
    assert parse_model_ref(ref) == parsed


def test_bad_model_reference():
    with pytest.raises(RunstreamError, match="name@alias"):
        parse_model_ref("@prod")


@pytest.mark.parametrize("rel", ["../x", "/etc/passwd", "a/../../b", ""])
def test_download_paths_never_leave_the_destination(tmp_path, rel):
    with pytest.raises(RunstreamError, match="leave the destination"):
        _safe_join(tmp_path, rel)


def test_download_path_inside_destination(tmp_path):
    assert _safe_join(tmp_path, "sub/w.pt") == tmp_path / "sub" / "w.pt"
