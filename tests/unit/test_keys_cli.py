"""`runstream keys create|rotate|revoke|ls` and the hashed keys file: the CLI's output is checked
against a real ApiKeys reading the file it wrote (the server's own code path, without gRPC)."""

from __future__ import annotations

import json
import logging
import stat

import pytest

from runstream_services.auth import keyfile, keys
from runstream_services.auth.keys import ApiKeys
from runstream_services.cli import main
from runstream_services.config import ServerSettings
from runstream_services.errors import ConfigError, PermissionDenied, Unauthenticated


def bearer(key: str):
    return (("authorization", f"Bearer {key}"),)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def keys_path(tmp_path, monkeypatch):
    monkeypatch.setattr(keys, "RELOAD_CHECK_S", 0.0)  # re-read on every call (the server: 1 s)
    return tmp_path / "conf" / "keys.json"


def server_keys(path) -> ApiKeys:
    return ApiKeys.from_settings(ServerSettings(auth_required=True, api_keys_file=str(path)))


def test_created_keys_are_stored_hashed_and_reach_their_project_only(keys_path, capsys):
    code, out, err = run_cli(
        capsys,
        "keys",
        "create",
        "--keys-file",
        str(keys_path),
        "--project",
        "a",
        "--role",
        "write",
        "--name",
        "ci",
    )
    assert code == 0 and "shown only now" in err
    key = out.strip()
    assert key.startswith("rsk_") and len(key) > 50
    text = keys_path.read_text()
    secret = key[len(keyfile.key_id_of(key)) + 1 :]  # the secret may itself hold "_" (base64url)
    assert key not in text and secret not in text  # neither the key nor its secret part
    entry = json.loads(text)[keyfile.key_id_of(key)]
    assert entry["hash"].startswith("scrypt$") and entry["project"] == "a" and entry["role"] == "write"
    assert stat.S_IMODE(keys_path.stat().st_mode) == 0o600

    auth = server_keys(keys_path)
    principal = auth.authenticate(bearer(key))
    assert principal.key_id == keyfile.key_id_of(key) and principal.role == "write"
    auth.check(principal, "a", "write")
    with pytest.raises(PermissionDenied):
        auth.check(principal, "b", "read")
    with pytest.raises(PermissionDenied):
        auth.check(principal, "a", "admin")
    # a key with the right id and a wrong secret is refused
    forged = key[: len(keyfile.key_id_of(key)) + 1] + "x" * 43
    with pytest.raises(Unauthenticated):
        auth.authenticate(bearer(forged))


def test_rotate_and_revoke_take_effect_on_a_running_server_without_a_restart(keys_path, capsys):
    _, out, _ = run_cli(
        capsys, "keys", "create", "--keys-file", str(keys_path), "--project", "*", "--role", "admin"
    )
    old = out.strip()
    key_id = keyfile.key_id_of(old)
    auth = server_keys(keys_path)
    assert auth.authenticate(bearer(old)).project == "*"

    code, out, _ = run_cli(capsys, "keys", "rotate", "--keys-file", str(keys_path), key_id, "--json")
    rotated = json.loads(out)
    assert code == 0 and rotated["key_id"] == key_id and rotated["key"] != old and rotated["role"] == "admin"
    with pytest.raises(Unauthenticated):
        auth.authenticate(bearer(old))
    assert auth.authenticate(bearer(rotated["key"])).key_id == key_id

    code, out, _ = run_cli(capsys, "keys", "revoke", "--keys-file", str(keys_path), key_id)
    assert code == 0 and f"revoked {key_id}" in out
    with pytest.raises(Unauthenticated):
        auth.authenticate(bearer(rotated["key"]))
    code, _, err = run_cli(capsys, "keys", "revoke", "--keys-file", str(keys_path), key_id)
    assert code == 2 and "no key" in err and "keys ls" in err


def test_ls_lists_ids_and_roles_never_secrets_and_flags_plaintext_entries(keys_path, capsys):
    keys_path.parent.mkdir(parents=True)
    keys_path.write_text(json.dumps({"old-plain-key": {"project": "a", "role": "read"}}))
    _, out, _ = run_cli(
        capsys, "keys", "create", "--keys-file", str(keys_path), "--project", "b", "--role", "read"
    )
    new = out.strip()
    code, out, _ = run_cli(capsys, "keys", "ls", "--keys-file", str(keys_path))
    assert code == 0
    assert keyfile.key_id_of(new) in out and new not in out and "scrypt" not in out
    assert keyfile.plaintext_id("old-plain-key") in out and "PLAINTEXT" in out and "old-plain-key" not in out
    rows = json.loads(run_cli(capsys, "keys", "ls", "--keys-file", str(keys_path), "--json")[1])
    assert {r["stored"].split()[0] for r in rows} == {"hashed", "PLAINTEXT"}


def test_plaintext_entries_keep_working_with_a_warning_until_rotated(keys_path, capsys, caplog):
    keys_path.parent.mkdir(parents=True)
    keys_path.write_text(json.dumps({"old-plain-key": {"project": "a", "role": "write"}}))
    with caplog.at_level(logging.WARNING, logger=keys.__name__):
        auth = server_keys(keys_path)
    assert "1 plaintext key(s)" in caplog.text and "runstream keys rotate" in caplog.text
    principal = auth.authenticate(bearer("old-plain-key"))
    assert principal.key_id == keyfile.plaintext_id("old-plain-key")  # the id the audit log has used

    code, out, err = run_cli(
        capsys, "keys", "rotate", "--keys-file", str(keys_path), keyfile.plaintext_id("old-plain-key")
    )
    assert code == 0 and "replaced plaintext key" in err
    new = out.strip()
    assert "old-plain-key" not in keys_path.read_text()
    with pytest.raises(Unauthenticated):
        auth.authenticate(bearer("old-plain-key"))
    assert auth.authenticate(bearer(new)).role == "write"


def test_a_broken_edit_keeps_the_last_good_keys_and_bad_input_is_explained(keys_path, capsys):
    _, out, _ = run_cli(
        capsys, "keys", "create", "--keys-file", str(keys_path), "--project", "a", "--role", "read"
    )
    key = out.strip()
    auth = server_keys(keys_path)
    keys_path.write_text("{not json")
    assert auth.authenticate(bearer(key)).project == "a"  # kept, with a warning in the log
    with pytest.raises(ConfigError, match="cannot read api_keys_file"):
        server_keys(keys_path)
    code, _, err = run_cli(capsys, "keys", "ls")
    assert code == 2 and "--keys-file" in err and "RUNSTREAM_API_KEYS_FILE" in err
    with pytest.raises(SystemExit):
        main(["keys", "create", "--keys-file", str(keys_path), "--project", "a", "--role", "owner"])
    bad = keys_path.parent / "bad.json"
    bad.write_text(json.dumps({"rsk_zz": {"hash": "md5$x", "project": "a", "role": "read"}}))
    with pytest.raises(ConfigError, match="runstream keys create"):
        keyfile.load(bad)
