"""The model registry on a real embedded `runstream server` (a child process, auth required, an
api_keys_file), fed through the public SDK: a version made from a logged artifact records the run,
the artifact's digest, datasets, commit and a metrics snapshot, and stays as it was while the run
goes on and its metadata is edited; aliases move one at a time (concurrent moves form one chain)
and every registry action is in the audit log; a write key cannot move a protected alias, an
admin key can; a key of project A sees nothing of project B's registry; downloads check sha256;
and the `runstream models` / `runstream artifact` commands work against the same server."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import runstream
from runstream.errors import ServerError
from runstream.registry_client import ChecksumError, RegistryClient
from tests.sdk_options import quick_sdk_options
from tests.server_process import ServerProcess

A, B = "reg-a", "reg-b"
KEYS = {
    "write-a": {"project": A, "role": "write"},
    "read-a": {"project": A, "role": "read"},
    "write-b": {"project": B, "role": "write"},
    "admin": {"project": "*", "role": "admin"},
}
WEIGHTS = b"model weights " * 5000  # 70 kB: uploaded, not inline
CONFIG = b'{"layers": 3}'


def key_id(key: str) -> str:
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Logged:
    """What the module's runs logged."""

    def __init__(self):
        self.run_a = ""
        self.run_b = ""
        self.dir_run = ""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("registry")
    keys = tmp / "keys.json"
    keys.write_text(json.dumps(KEYS))
    env = {"RUNSTREAM_AUTH_REQUIRED": "true", "RUNSTREAM_API_KEYS_FILE": str(keys)}
    process = ServerProcess(tmp / "server", env=env).start()
    try:
        yield process
    finally:
        process.stop()


def _log_run(
    server, tmp: Path, project: str, key: str, artifact: Path, loss: list[float], name="model"
) -> str:
    run = runstream.init(
        project=project, name="train", **quick_sdk_options(server.endpoint, tmp, api_key=key)
    )
    run.use_dataset("train", "v2.1")
    run.use_dataset("eval", "v1.0", uri="s3://data/eval")
    for step, value in enumerate(loss):
        run.log({"loss": value, "acc": 1 - value}, step=step)
    run.log_artifact(artifact, name=name, type="model")
    assert run.flush(60)
    run.finish()
    return run.id


@pytest.fixture(scope="module")
def logged(server, tmp_path_factory) -> Logged:
    tmp = tmp_path_factory.mktemp("runs")
    (tmp / "model.bin").write_bytes(WEIGHTS)
    (tmp / "ckpt").mkdir()
    (tmp / "ckpt" / "weights.bin").write_bytes(WEIGHTS[::-1])
    (tmp / "ckpt" / "config.json").write_bytes(CONFIG)
    out = Logged()
    out.run_a = _log_run(server, tmp / "a", A, "write-a", tmp / "model.bin", [0.9, 0.5, 0.3])
    out.run_b = _log_run(server, tmp / "b", B, "write-b", tmp / "model.bin", [0.8, 0.4])
    out.dir_run = _log_run(server, tmp / "d", A, "write-a", tmp / "ckpt", [0.7, 0.2], name="ckpt")
    return out


def client(server, key: str) -> RegistryClient:
    return RegistryClient(server.endpoint, key)


def test_version_from_a_logged_artifact_records_its_lineage(server, logged, tmp_path):
    run = runstream.init(
        project=A, name="register", **quick_sdk_options(server.endpoint, tmp_path, api_key="write-a")
    )
    run.use_dataset("train", "v3")
    run.log({"val_f1": 0.91}, step=0)
    (tmp_path / "m.bin").write_bytes(b"registered from the SDK")
    run.log_artifact(tmp_path / "m.bin", name="weights")
    v = run.register_model(
        "weights", "sdk-model", aliases=["candidate"], description="from run.register_model"
    )
    run.finish()
    assert v["version"] == 1 and v["run_id"] == run.id and v["aliases"] == ["candidate"]
    assert v["artifact_sha256"] == sha(b"registered from the SDK")
    assert v["datasets"] == [{"name": "train", "version": "v3", "uri": ""}]
    assert v["metrics"]["val_f1"]["last"] == pytest.approx(0.91)
    assert v["creator"] == key_id("write-a") and v["description"] == "from run.register_model"

    with runstream.Api(endpoint=server.endpoint, api_key="write-a") as api:
        version = api.create_model_version(
            A,
            "clf",
            logged.run_a,
            "model",
            metric_keys=["loss"],
            description="first",
            tags={"team": "vision"},
        )
        stored_run = api.run(A, logged.run_a)
        got = api.model_version(A, "clf", version=version.version)
    assert got["run_id"] == logged.run_a and got["artifact_name"] == "model" and got["artifact_version"] >= 1
    assert got["artifact_sha256"] == sha(WEIGHTS)
    assert got["files"] == [{"path": "model.bin", "sha256": sha(WEIGHTS), "size": len(WEIGHTS)}]
    assert got["datasets"] == stored_run["datasets"] and len(got["datasets"]) == 2
    assert got["git_commit"] == stored_run["git_commit"] and got["git_dirty"] == stored_run["git_dirty"]
    assert list(got["metrics"]) == ["loss"]  # only the chosen metrics
    assert got["metrics"]["loss"] == stored_run["metrics"]["loss"]
    assert got["tags"] == {"team": "vision"} and got["creator"] == key_id("write-a")
    assert got["history"][0]["description"] == "first"


def test_version_needs_a_real_run_and_artifact(server, logged):
    with client(server, "write-a") as c:
        with pytest.raises(ServerError) as err:
            c.create_model_version(A, "clf", "no-such-run", "model")
        assert err.value.code == "NOT_FOUND"
        with pytest.raises(ServerError) as err:
            c.create_model_version(A, "clf", logged.run_a, "no-such-artifact")
        assert err.value.code == "NOT_FOUND" and "no artifact named" in err.value.details
        with pytest.raises(ServerError) as err:
            c.create_model_version(A, "never-created", logged.run_a, "model", create_model=False)
        assert err.value.code == "NOT_FOUND"
        c.create_model(A, "taken")
        with pytest.raises(ServerError) as err:
            c.create_model(A, "taken")
        assert err.value.code == "ALREADY_EXISTS"
        with pytest.raises(ServerError) as err:
            c.create_model(A, "bad name!")
        assert err.value.code == "INVALID_ARGUMENT" and "model name" in err.value.details


def test_versions_are_immutable_while_the_run_goes_on_and_metadata_changes(server, logged, tmp_path):
    with client(server, "write-a") as c:
        v1 = c.create_model_version(A, "immutable", logged.run_a, "model", description="as created")
        before = c.get_model_version(A, "immutable", v1.version)
        # the run logs on (resumed) with a better loss: the snapshot stays as registered
        run = runstream.init(
            project=A, id=logged.run_a, resume=True,
            **quick_sdk_options(server.endpoint, tmp_path, api_key="write-a"),
        )  # fmt: skip
        run.log({"loss": 0.01}, step=10)
        assert run.flush(60)
        run.finish()
        c.update_model_version(A, "immutable", v1.version, description="edited", set_tags={"stage": "qa"})
        c.update_model_version(A, "immutable", v1.version, remove_tags=["stage"], reason="done")
        v2 = c.create_model_version(A, "immutable", logged.run_a, "model")
        after = c.get_model_version(A, "immutable", v1.version)
    assert v2.version == v1.version + 1
    loss = {m.key: m for m in before.metrics}["loss"]
    assert (
        {m.key: m for m in v2.metrics}["loss"].last == pytest.approx(0.01) != loss.last
    )  # the run did go on
    for field in (
        "run_id",
        "artifact_name",
        "artifact_version",
        "artifact_sha256",
        "git_commit",
        "created_ms",
    ):
        assert getattr(after, field) == getattr(before, field), field
    assert list(after.files) == list(before.files) and list(after.datasets) == list(before.datasets)
    assert list(after.metrics) == list(before.metrics)
    assert after.description == "edited" and dict(after.tags) == {}
    assert [(h.description, dict(h.tags)) for h in after.history] == [
        ("as created", {}),
        ("edited", {"stage": "qa"}),
        ("edited", {}),
    ]


def test_alias_moves_are_serialized_and_audited(server, logged):
    with client(server, "write-a") as c:
        versions = [c.create_model_version(A, "moving", logged.run_a, "model").version for _ in range(4)]
        errors = []

        def move(version: int) -> None:
            try:
                c.set_alias(A, "moving", "staging", version, reason=f"try v{version}")
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=move, args=(v,)) for v in versions]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        model = c.get_model(A, "moving")
        final = model.aliases["staging"]
        listed = {v["version"]: v["aliases"] for v in c.model_versions(A, "moving")}
        assert [v for v, aliases in listed.items() if "staging" in aliases] == [final]
        assert c.model_version(A, "moving@staging")["version"] == final
        events = c.registry_events(A, "moving")
    moves = [e for e in events if e["target"] == "moving@staging"]
    assert len(moves) == 4 and all(e["actor"] == key_id("write-a") for e in moves)
    assert sorted(e["action"] for e in moves) == ["alias.created"] + ["alias.moved"] * 3
    # one chain: each move started from where the one before it left the alias (no lost update)
    froms = sorted(e["detail"]["from"] for e in moves)
    tos = [e["detail"]["to"] for e in moves]
    assert froms == sorted([0] + [t for t in tos if t != final]) and sorted(tos) == versions
    assert {e["detail"]["reason"] for e in moves} == {f"try v{v}" for v in versions}
    created = [e for e in events if e["action"] == "model_version.created"]
    assert len(created) == 4 and created[0]["detail"]["sha256"] == sha(WEIGHTS)
    assert [e["action"] for e in events if e["target"] == "moving"] == ["model.created"]


def test_protected_alias_needs_admin(server, logged):
    with client(server, "write-a") as w, client(server, "admin") as admin:
        v = w.create_model_version(A, "guarded", logged.run_a, "model", aliases=["staging"])
        latest = w.get_model(A, "guarded").latest_version
        assert list(w.get_model(A, "guarded").protected_aliases) == ["production"]
        with pytest.raises(ServerError) as err:
            w.set_alias(A, "guarded", "production", v.version)
        assert err.value.code == "PERMISSION_DENIED" and "admin" in err.value.details
        with pytest.raises(ServerError) as err:  # nor through a new version's aliases
            w.create_model_version(A, "guarded", logged.run_a, "model", aliases=["production"])
        assert err.value.code == "PERMISSION_DENIED"
        assert w.get_model(A, "guarded").latest_version == latest  # refused before anything was written
        assert admin.set_alias(A, "guarded", "production", v.version, reason="release 1") == 0
        with pytest.raises(ServerError) as err:
            w.delete_alias(A, "guarded", "production")
        assert err.value.code == "PERMISSION_DENIED"
        assert w.delete_alias(A, "guarded", "staging") == v.version  # unprotected: write is enough
        assert dict(w.get_model(A, "guarded").aliases) == {"production": v.version}
        assert admin.delete_alias(A, "guarded", "production", reason="rollback") == v.version
        assert dict(w.get_model(A, "guarded").aliases) == {}
        events = w.registry_events(A, "guarded")
        with client(server, "read-a") as r:
            with pytest.raises(ServerError) as err:
                r.set_alias(A, "guarded", "staging", v.version)
            assert err.value.code == "PERMISSION_DENIED"
    prod = [e for e in events if e["target"] == "guarded@production"]
    assert [
        (e["action"], e["actor"], e["detail"]["reason"]) for e in sorted(prod, key=lambda e: e["time_ms"])
    ] == [
        ("alias.created", key_id("admin"), "release 1"),
        ("alias.deleted", key_id("admin"), "rollback"),
    ]


def test_a_key_sees_no_model_of_another_project(server, logged):
    with client(server, "write-b") as b:
        b.create_model_version(B, "secret", logged.run_b, "model", aliases=["staging"])
        assert [m["name"] for m in b.models(B)] == ["secret"]
    with client(server, "write-a") as a:
        a.create_model_version(A, "clf-a", logged.run_a, "model")
        assert "secret" not in [m["name"] for m in a.models(A)]
        calls = [
            lambda: a.list_models(B),
            lambda: a.get_model(B, "secret"),
            lambda: a.get_model_version(B, "secret", 1),
            lambda: a.model_versions(B, "secret"),
            lambda: a.registry_events(B),
            lambda: a.set_alias(B, "secret", "staging", 1),
            lambda: a.create_model_version(B, "secret", logged.run_b, "model"),
            lambda: a.download_artifact(B, "secret:1", None, "/nonexistent"),
        ]
        for call in calls:
            with pytest.raises(ServerError) as err:
                call()
            assert err.value.code == "PERMISSION_DENIED", call
        # B's run cannot be registered into A either: runs are looked up in the model's project
        with pytest.raises(ServerError) as err:
            a.create_model_version(A, "clf-a", logged.run_b, "model")
        assert err.value.code == "NOT_FOUND"


def test_download_by_model_reference_and_run_checks_sha256(server, logged, tmp_path):
    with client(server, "write-a") as c:
        c.create_model_version(A, "dl", logged.dir_run, "ckpt", aliases=["best"])
        v = c.get_model_version(A, "dl", alias="best")
        files = c.download_artifact(A, "dl@best", None, tmp_path / "by-alias", progress=False)
        assert sorted(p.name for p in files) == ["config.json", "weights.bin"]
        assert (tmp_path / "by-alias" / "weights.bin").read_bytes() == WEIGHTS[::-1]
        assert (tmp_path / "by-alias" / "config.json").read_bytes() == CONFIG
        listing = "".join(
            f"{p}\t{sha(d)}\n" for p, d in (("config.json", CONFIG), ("weights.bin", WEIGHTS[::-1]))
        )
        assert v.artifact_sha256 == sha(listing.encode())
        (single,) = c.download_artifact(A, logged.run_a, "model", tmp_path / "by-run", progress=True)
        assert single.read_bytes() == WEIGHTS
        # stored bytes that no longer match their digest are refused, and nothing is left behind
        stored = [p for p in Path(server.data_dir).rglob("*") if p.is_file() and sha(CONFIG) in p.name]
        assert stored, "the local artifact store names files by digest"
        for p in stored:
            p.write_bytes(b'{"layers": 4}')
        with pytest.raises(ChecksumError, match="sha256"):
            c.download_artifact(A, "dl:1", None, tmp_path / "corrupt", progress=False)
        assert not (tmp_path / "corrupt" / "config.json").exists()
        assert not list((tmp_path / "corrupt").glob("*.part"))


def _cli(server, *args: str, key: str = "write-a") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "runstream_services.cli", *args]
    env = {**os.environ, "RUNSTREAM_ENDPOINT": server.endpoint, "RUNSTREAM_API_KEY": key}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_cli_models_and_artifact_get(server, logged, tmp_path):
    with client(server, "write-a") as c:
        c.create_model_version(A, "cli-model", logged.run_a, "model", description="for the CLI")
    ls = _cli(server, "models", "ls", "--project", A)
    assert ls.returncode == 0, ls.stderr
    assert "cli-model" in ls.stdout and "latest v1" in ls.stdout
    show = _cli(server, "models", "show", "--project", A, "cli-model:1")
    assert show.returncode == 0, show.stderr
    assert logged.run_a in show.stdout and sha(WEIGHTS) in show.stdout and "train v2.1" in show.stdout
    moved = _cli(server, "models", "alias", "--project", A, "cli-model", "staging", "1", "--reason", "cli")
    assert moved.returncode == 0 and "cli-model@staging -> v1 (was new)" in moved.stdout
    refused = _cli(server, "models", "alias", "--project", A, "cli-model", "production", "1")
    assert refused.returncode == 2 and "admin" in refused.stderr
    as_json = json.loads(_cli(server, "models", "show", "--project", A, "cli-model@staging", "--json").stdout)
    assert as_json["version"] == 1 and as_json["aliases"] == ["staging"]
    got = _cli(
        server,
        "artifact",
        "get",
        "--project",
        A,
        "cli-model@staging",
        "--dest",
        str(tmp_path),
        "--no-progress",
    )
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "model.bin").read_bytes() == WEIGHTS
    missing = _cli(server, "models", "show", "--project", A, "no-such-model")
    assert missing.returncode == 2 and "no registered model" in missing.stderr
    for command in (["models", "--help"], ["artifact", "get", "--help"]):
        helped = _cli(server, *command)
        assert helped.returncode == 0 and "usage: runstream" in helped.stdout


def test_register_right_after_logging_on_each_bus(bus_server, tmp_path):
    """Run.register_model straight after log_artifact: on the Kafka bus the ack means "on the
    brokers" and the writer stores the artifact a moment later; the registry (served with the
    query service, by the writer process in a split deployment) waits for it to be visible. The
    bytes come back through the same process. Under the 1 MiB inline limit, so they travel in the
    Kafka record and the writer stores them (the split test deployment gives ingest and writer
    separate local artifact folders: an uploaded file would be in ingest's only)."""
    big = os.urandom(600 << 10)
    (tmp_path / "big.bin").write_bytes(big)
    run = runstream.init(project="bus-reg", name="r", **quick_sdk_options(bus_server.endpoint, tmp_path))
    run.use_dataset("train", "v9")
    run.log({"loss": 0.25}, step=0)
    run.log_artifact(tmp_path / "big.bin", name="big")
    v = run.register_model("big", "bus-model", aliases=["staging"], endpoint=bus_server.writer.endpoint)
    run.finish()
    assert v["version"] == 1 and v["artifact_sha256"] == sha(big) and v["datasets"][0]["version"] == "v9"
    with RegistryClient(bus_server.writer.endpoint) as c:
        (path,) = c.download_artifact("bus-reg", "bus-model@staging", None, tmp_path / "dl", progress=False)
    assert path.read_bytes() == big
