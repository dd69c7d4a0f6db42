"""Run inputs and lineage on a real embedded `runstream server` (a child process, auth required),
fed through the public SDK: run.use_artifact resolves a reference when it is called and stores
it before it returns (a run killed right after still has it); lineage walks a chain of runs,
artifacts, model versions and datasets both ways, ends on a cycle, bounds its depth, and shows a
run that never existed as a missing node; a key of another project sees nothing; model metadata
edits keep their history; list RPCs page. The Kafka bus's part (an artifact stored a moment
after its ack) is the last test, on both buses."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest

import runstream
from runstream.errors import ServerError
from runstream.registry_client import RegistryClient
from tests.sdk_options import quick_sdk_options
from tests.server_process import ServerProcess

A, B = "lin-a", "lin-b"
KEYS = {
    "write-a": {"project": A, "role": "write"},
    "read-a": {"project": A, "role": "read"},
    "write-b": {"project": B, "role": "write"},
    "admin": {"project": "*", "role": "admin"},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lineage")
    keys = tmp / "keys.json"
    keys.write_text(json.dumps(KEYS))
    env = {"RUNSTREAM_AUTH_REQUIRED": "true", "RUNSTREAM_API_KEYS_FILE": str(keys)}
    process = ServerProcess(tmp / "server", env=env).start()
    try:
        yield process
    finally:
        process.stop()


def _run(server, tmp, name: str, key: str = "write-a", project: str = A):
    return runstream.init(
        project=project, name=name, **quick_sdk_options(server.endpoint, tmp / name, api_key=key)
    )


def _artifact(run, tmp, name: str, data: bytes) -> None:
    path = tmp / f"{name}.bin"
    path.write_bytes(data)
    run.log_artifact(path, name=name)
    assert run.flush(60)


class Chain:
    """prep -> features -> train -> model -> clf:1 -> finetune -> ft -> clf-ft:1 -> evaluate."""

    def __init__(self):
        self.ids: dict[str, str] = {}
        self.inputs: dict[str, dict] = {}


@pytest.fixture(scope="module")
def chain(server, tmp_path_factory) -> Chain:
    tmp = tmp_path_factory.mktemp("chain")
    out = Chain()
    prep = _run(server, tmp, "prep")
    prep.use_dataset("raw", "v1", uri="s3://data/raw")
    _artifact(prep, tmp, "features", b"features v1")
    prep.finish()

    train = _run(server, tmp, "train")
    train.use_dataset("train", "v2.1")
    out.inputs["train"] = train.use_artifact("features")
    train.log({"f1": 0.9}, step=0)
    _artifact(train, tmp, "model", b"weights")
    train.register_model("model", "clf", aliases=["staging"])
    train.finish()

    finetune = _run(server, tmp, "finetune")
    out.inputs["finetune"] = finetune.use_artifact("clf@staging")
    _artifact(finetune, tmp, "ft", b"tuned weights")
    finetune.register_model("ft", "clf-ft")
    finetune.finish()

    evaluate = _run(server, tmp, "evaluate")
    out.inputs["evaluate"] = evaluate.use_artifact("clf-ft:1", kind="model")
    evaluate.finish()
    out.ids = {"prep": prep.id, "train": train.id, "finetune": finetune.id, "evaluate": evaluate.id}
    return out


def _client(server, key="write-a") -> RegistryClient:
    return RegistryClient(server.endpoint, key)


def test_use_artifact_resolves_references_when_called(server, chain):
    ids = chain.ids
    train, finetune, evaluate = (chain.inputs[k] for k in ("train", "finetune", "evaluate"))
    assert (train["kind"], train["name"], train["source_run_id"]) == ("artifact", "features", ids["prep"])
    assert train["version"] >= 1 and train["sha256"] == hashlib.sha256(b"features v1").hexdigest()
    assert (finetune["kind"], finetune["name"], finetune["version"]) == ("model_version", "clf", 1)
    assert finetune["alias"] == "staging" and finetune["ref"] == "clf@staging"
    assert finetune["source_run_id"] == ids["train"]
    assert (evaluate["kind"], evaluate["name"], evaluate["version"]) == ("model_version", "clf-ft", 1)
    with _client(server) as c:
        # the alias moves on; what the run consumed stays the version it resolved to then
        v2 = c.create_model_version(A, "clf", ids["train"], "model")
        c.set_alias(A, "clf", "staging", v2.version)
        (stored,) = c.run_inputs(A, ids["finetune"])
        assert (stored["version"], stored["alias"]) == (1, "staging")
        # recording the same input again stores nothing new
        c.use_artifact(A, ids["finetune"], "clf:1")
        assert [(i["name"], i["version"]) for i in c.run_inputs(A, ids["finetune"])] == [("clf", 1)]
        with pytest.raises(ServerError) as err:
            c.use_artifact(A, ids["finetune"], "no-such-thing")
        assert err.value.code == "NOT_FOUND" and "log_artifact" in err.value.details
        with pytest.raises(ServerError) as err:
            c.use_artifact(A, ids["finetune"], "clf@nowhere")
        assert err.value.code == "NOT_FOUND"
        with pytest.raises(ServerError) as err:
            c.use_artifact(A, ids["finetune"], "features@prod", kind="artifact")
        assert err.value.code == "INVALID_ARGUMENT"
        events = c.registry_events(A, "clf")
    recorded = [e for e in events if e["action"] == "input.recorded"]
    assert (
        recorded and recorded[-1]["target"] == "clf:1" and recorded[-1]["detail"]["run_id"] == ids["finetune"]
    )


def test_lineage_walks_a_model_version_back_to_its_data_and_forward_to_its_consumers(server, chain):
    ids = chain.ids
    fv = chain.inputs["train"]["version"]
    with _client(server, "read-a") as c:
        g = c.lineage(A, "clf-ft:1")
    assert g.start == "model_version/clf-ft:1" and not g.truncated and not g.missing
    depth = {n.id: n.depth for n in g.nodes}
    assert depth["artifact/ft:1"] == -1 and depth["artifact/model:1"] == -4
    assert depth[f"run/{ids['finetune']}"] == -2
    assert depth["model_version/clf:1"] == -3
    assert depth[f"run/{ids['train']}"] == -5
    assert depth["dataset/train@v2.1"] == -6 and depth[f"artifact/features:{fv}"] == -6
    assert depth[f"run/{ids['prep']}"] == -7 and depth["dataset/raw@v1"] == -8
    assert depth[f"run/{ids['evaluate']}"] == 1
    edges = {(e.source, e.target, e.relation) for e in g.edges}
    assert ("model_version/clf:1", f"run/{ids['finetune']}", "input") in edges
    assert (f"artifact/features:{fv}", f"run/{ids['train']}", "input") in edges
    assert (f"run/{ids['prep']}", f"artifact/features:{fv}", "produced") in edges
    assert ("dataset/raw@v1", f"run/{ids['prep']}", "input") in edges
    assert g.node("dataset/raw@v1").properties["uri"] == "s3://data/raw"
    assert g.node(f"run/{ids['train']}").label == "train"
    assert g.node("model_version/clf:1").properties["run_id"] == ids["train"]
    assert [n.label for n in g.upstream_runs()] == ["finetune", "train", "prep"]
    # clf:2 (made from the same run, not upstream of clf-ft) is not in an upstream-only walk
    with _client(server, "read-a") as c:
        up = c.lineage(A, "clf-ft:1", direction="upstream")
        down = c.lineage(A, run_id=ids["prep"], direction="downstream")
    assert "model_version/clf:2" not in {n.id for n in up.nodes}
    assert {n.label for n in down.downstream_runs()} == {"train", "finetune", "evaluate"}
    assert {"model_version/clf:1", "model_version/clf-ft:1"} <= {n.id for n in down.nodes}
    assert all(n.depth >= 0 for n in down.nodes)
    with _client(server, "read-a") as c:
        used = c.lineage(A, dataset="raw@v1", direction="downstream")
    assert used.start == "dataset/raw@v1" and used.node(f"run/{ids['prep']}").depth == 1
    assert {"model_version/clf:1", f"run/{ids['evaluate']}"} <= {n.id for n in used.nodes}
    assert "dataset/train@v2.1" not in {n.id for n in used.nodes}  # a sibling input, not derived
    nodes, frame_edges = g.to_pandas()
    assert len(nodes) == len(g.nodes) and set(frame_edges.columns) == {"source", "target", "relation"}
    assert nodes.set_index("id").loc[f"run/{ids['prep']}", "depth"] == -7


def test_lineage_depth_bound_and_reference_errors(server, chain):
    with _client(server, "read-a") as c:
        g = c.lineage(A, "clf-ft:1", max_depth=2)
        assert g.truncated and min(n.depth for n in g.nodes) == -2
        with pytest.raises(ServerError) as err:
            c.lineage(A, "clf-ft@nowhere")
        assert err.value.code == "NOT_FOUND"
        ghost = c.lineage(A, "clf-ft:99")  # a version that does not exist: a missing start node
        assert [n.id for n in ghost.missing] == ["model_version/clf-ft:99"] and not ghost.edges


def test_a_cycle_ends_the_walk_and_a_run_that_never_existed_is_missing(server, tmp_path):
    x = _run(server, tmp_path, "x")
    _artifact(x, tmp_path, "cx", b"from x")
    y = _run(server, tmp_path, "y")
    y.use_artifact("cx")
    _artifact(y, tmp_path, "cy", b"from y")
    x.use_artifact("cy")  # x consumes what was made from its own output
    x.finish()
    y.finish()
    with _client(server) as c:
        c.use_artifact(A, "ghost-run", "cy")  # a consumer that was never logged
        g = c.lineage(A, run_id=x.id, max_depth=50)
    ids = {n.id for n in g.nodes}
    assert {f"run/{x.id}", f"run/{y.id}", "run/ghost-run"} <= ids
    assert len(ids) == len(g.nodes)  # each node once
    assert [n.id for n in g.missing] == ["run/ghost-run"]
    assert g.node(f"run/{y.id}").depth in (-2, 2)
    cx = next(i for i in ids if i.startswith("artifact/cx:"))
    cy = next(i for i in ids if i.startswith("artifact/cy:"))
    edges = {(e.source, e.target) for e in g.edges}
    assert {(f"run/{x.id}", cx), (cx, f"run/{y.id}"), (f"run/{y.id}", cy), (cy, f"run/{x.id}")} <= edges
    assert (cy, "run/ghost-run") in edges


def test_an_input_is_kept_when_the_run_is_killed_right_after_the_call(server, chain, tmp_path):
    script = textwrap.dedent(
        f"""
        import os, signal, runstream
        run = runstream.init(project={A!r}, name="killed", endpoint={server.endpoint!r}, api_key="write-a",
                             spool_dir={str(tmp_path / "spool")!r}, system_metrics_interval_s=0,
                             capture_packages=False)
        run.use_artifact("clf:1")
        print(run.id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    run_id = proc.stdout.split()[0]
    with _client(server, "read-a") as c:
        (recorded,) = c.run_inputs(A, run_id)
        down = c.lineage(A, "clf:1", direction="downstream")
    assert (recorded["name"], recorded["version"]) == ("clf", 1)
    assert f"run/{run_id}" in {n.id for n in down.nodes}


def test_a_key_of_another_project_sees_nothing_and_a_read_key_records_nothing(server, chain):
    with _client(server, "write-b") as c:
        for call in (
            lambda: c.lineage(A, "clf:1"),
            lambda: c.lineage(A, run_id=chain.ids["train"]),
            lambda: c.run_inputs(A, chain.ids["finetune"]),
            lambda: c.use_artifact(A, chain.ids["train"], "clf:1"),
        ):
            with pytest.raises(ServerError) as err:
                call()
            assert err.value.code == "PERMISSION_DENIED"
        # in its own project, A's names do not exist
        with pytest.raises(ServerError) as err:
            c.use_artifact(B, "some-run", "features")
        assert err.value.code == "NOT_FOUND"
        assert c.lineage(B, run_id=chain.ids["train"]).missing[0].id == f"run/{chain.ids['train']}"
    with _client(server, "read-a") as c, pytest.raises(ServerError) as err:
        c.use_artifact(A, chain.ids["train"], "clf:1")
    assert err.value.code == "PERMISSION_DENIED"


def test_model_metadata_edits_keep_history_and_lists_page(server, chain):
    with _client(server) as c:
        edited = c.update_model(A, "clf", description="the classifier", set_tags={"team": "vision"})
        edited = c.update_model(A, "clf", set_tags={"task": "mnist"}, remove_tags=["team"], reason="moved")
        assert edited["description"] == "the classifier" and edited["tags"] == {"task": "mnist"}
        assert [h["tags"] for h in edited["history"]] == [{}, {"team": "vision"}, {"task": "mnist"}]
        listed = {m["name"]: m for m in c.models(A)}
        assert listed["clf"]["tags"] == {"task": "mnist"} and listed["clf"]["description"] == "the classifier"
        for i in range(3):
            c.create_model(A, f"paged-{i}")
        first = c.models_page(A, limit=2)
        assert len(first.models) == 2 and first.next_page_token
        names, token = [m.name for m in first.models], first.next_page_token
        while token:
            page = c.models_page(A, token, limit=2)
            names += [m.name for m in page.models]
            token = page.next_page_token
        assert names == sorted(listed.keys() | {"paged-0", "paged-1", "paged-2"})
        every = [v["version"] for v in c.model_versions(A, "clf")]
        assert len(every) >= 2 and every == sorted(every, reverse=True)
        paged, token = [], ""
        while True:
            page = c.model_versions_page(A, "clf", token, limit=1)
            paged += [v.version for v in page.versions]
            token = page.next_page_token
            if not token:
                break
        assert paged == every and c.model_versions(A, "clf", limit=1)[0]["version"] == every[0]
        events, token = c.registry_events_page(A, limit=3)
        more, _ = c.registry_events_page(A, limit=3, page_token=token)
        assert len(events) == 3 and more and events[-1]["time_ms"] >= more[0]["time_ms"]
        assert {json.dumps(e, sort_keys=True) for e in events}.isdisjoint(
            json.dumps(e, sort_keys=True) for e in more
        )
        assert [e["action"] for e in c.registry_events(A, "clf") if e["action"] == "model.updated"] == [
            "model.updated",
            "model.updated",
        ]
        with pytest.raises(ServerError) as err:
            c.models_page(A, "not-a-token")
        assert err.value.code == "INVALID_ARGUMENT"


def test_use_artifact_of_a_just_logged_artifact_on_each_bus(bus_server, tmp_path):
    """On the Kafka bus the producing run's flush means "on the brokers"; the artifact is stored
    by the writer a moment later, so use_artifact asks again for up to wait_s."""
    producer = runstream.init(
        project="bus-lin", name="p", **quick_sdk_options(bus_server.endpoint, tmp_path / "p")
    )
    (tmp_path / "d.bin").write_bytes(b"data")
    producer.log_artifact(tmp_path / "d.bin", name="data")
    assert producer.flush(60)
    consumer = runstream.init(
        project="bus-lin", name="c", **quick_sdk_options(bus_server.endpoint, tmp_path / "c")
    )
    got = consumer.use_artifact("data", endpoint=bus_server.writer.endpoint, wait_s=30)
    producer.finish()
    consumer.finish()
    assert (got["kind"], got["source_run_id"]) == ("artifact", producer.id)
    with RegistryClient(bus_server.writer.endpoint) as c:
        g = c.lineage("bus-lin", run_id=consumer.id, direction="upstream")
    assert f"run/{producer.id}" in {n.id for n in g.nodes}


def test_cli_models_lineage(server, chain):
    ids = chain.ids
    cmd = [sys.executable, "-m", "runstream_services.cli", "models", "lineage", "--project", A]
    env = {**os.environ, "RUNSTREAM_ENDPOINT": server.endpoint, "RUNSTREAM_API_KEY": "read-a"}
    out = subprocess.run(
        [*cmd, "clf-ft:1", "--direction", "upstream"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("lineage of model_version clf-ft:1")
    assert "run prep  --produced-->  artifact features:" in out.stdout
    assert "model_version clf:1  --input-->  run finetune" in out.stdout
    as_json = subprocess.run(
        [*cmd, "--run", ids["evaluate"], "--json"], capture_output=True, text=True, env=env
    )
    assert as_json.returncode == 0, as_json.stderr
    graph = json.loads(as_json.stdout)
    assert graph["start"] == f"run/{ids['evaluate']}" and not graph["truncated"]
    assert {
        "source": "model_version/clf-ft:1",
        "target": f"run/{ids['evaluate']}",
        "relation": "input",
    } in graph["edges"]
    both = subprocess.run([*cmd, "clf:1", "--run", ids["train"]], capture_output=True, text=True, env=env)
    assert both.returncode == 2 and "give one of REF" in both.stderr
