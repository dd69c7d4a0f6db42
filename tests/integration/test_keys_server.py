"""Hashed API keys on a real `runstream server` (auth required): keys made with the `runstream
keys` command (a child process, as an operator runs it) log through the SDK and read through
runstream.Api; revoking a key refuses its next call on the running server, no restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import runstream
from runstream.errors import ServerError
from tests.sdk_options import quick_sdk_options
from tests.server_process import ServerProcess


def keys_cli(keys_file, *argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "runstream_services.cli", "keys", *argv],
        env={**os.environ, "RUNSTREAM_API_KEYS_FILE": str(keys_file)},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout


@pytest.fixture
def keyed_server(tmp_path):
    keys_file = tmp_path / "keys.json"
    writer = json.loads(keys_cli(keys_file, "create", "--project", "vision", "--role", "write", "--json"))
    reader = json.loads(keys_cli(keys_file, "create", "--project", "nlp", "--role", "read", "--json"))
    admin = json.loads(keys_cli(keys_file, "create", "--project", "*", "--role", "admin", "--json"))
    server = ServerProcess(
        tmp_path / "server",
        env={"RUNSTREAM_AUTH_REQUIRED": "true", "RUNSTREAM_API_KEYS_FILE": str(keys_file)},
    ).start()
    yield server, keys_file, writer, reader, admin
    server.stop()


def test_cli_made_keys_log_and_read_and_a_revoked_key_is_refused_without_a_restart(keyed_server, tmp_path):
    server, keys_file, writer, reader, _ = keyed_server
    assert writer["key"] not in keys_file.read_text()
    run = runstream.init(
        project="vision", api_key=writer["key"], **quick_sdk_options(server.endpoint, tmp_path)
    )
    run.log({"loss": 0.5}, step=1)
    assert run.finish(timeout_s=30)
    assert run.stats["refused"] == 0

    with runstream.Api(endpoint=server.endpoint, api_key=writer["key"]) as api:
        assert [p.name for p in api.list_projects()] == ["vision"]
        assert api.history(run.id, project="vision")["value"].tolist() == [0.5]
    with runstream.Api(endpoint=server.endpoint, api_key=reader["key"]) as api:
        assert api.list_projects() == []  # the nlp key sees no vision run
        with pytest.raises(ServerError) as info:
            api.history(run.id, project="vision")
        assert info.value.code == "PERMISSION_DENIED"

    keys_cli(keys_file, "revoke", writer["key_id"])
    with runstream.Api(endpoint=server.endpoint, api_key=writer["key"], timeout_s=10) as api:
        deadline = time.monotonic() + 10
        code = None
        while time.monotonic() < deadline:
            try:
                api.list_projects()
            except ServerError as exc:
                code = exc.code
                break
            time.sleep(0.2)
        assert code == "UNAUTHENTICATED"
    assert server.proc.poll() is None  # the same process, never restarted


def test_the_admin_role_of_a_cli_made_key_guards_protected_aliases(keyed_server, tmp_path):
    server, _, writer, _, admin = keyed_server
    run = runstream.init(
        project="vision", api_key=writer["key"], **quick_sdk_options(server.endpoint, tmp_path)
    )
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"weights" * 100)
    run.log_artifact(weights, name="model")
    version = run.register_model("model", "classifier", aliases=["staging"])["version"]
    assert run.finish(timeout_s=30)
    with runstream.Api(endpoint=server.endpoint, api_key=writer["key"]) as api:
        with pytest.raises(ServerError) as info:
            api.set_alias("vision", "classifier", "production", version)
        assert info.value.code == "PERMISSION_DENIED" and "admin" in info.value.details
    with runstream.Api(endpoint=server.endpoint, api_key=admin["key"]) as api:
        assert api.set_alias("vision", "classifier", "production", version, reason="release") == 0
        assert api.delete_alias("vision", "classifier", "production", reason="rollback") == version
