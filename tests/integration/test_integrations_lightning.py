"""runstream.integrations.lightning against a real embedded server: client/examples/lightning_train.py
and tests/integration/lightning_cases.py train a tiny MLP through the real Lightning Trainer on
CPU, in the PyTorch venv of scripts/torch_venv.sh (skipped, naming the script, when it is absent);
what landed is read back through runstream.Api: metrics per step and rank, hyperparameters,
summary, the checkpoint artifact, the final state, and DDP's two ranks (gloo, two processes)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import runstream
from tests import ROOT
from tests.framework_reads import artifact_bytes, curves, read_run
from tests.torch_venv import last_json, needs_torch_venv, run_script

pytestmark = [pytest.mark.timeout(600), needs_torch_venv]
EXAMPLE = ROOT / "client" / "examples" / "lightning_train.py"
CASES = Path(__file__).with_name("lightning_cases.py")
BATCHES = 6  # 192 training rows / 32 per batch


def _runs(endpoint: str, project: str):
    with runstream.Api(endpoint=endpoint) as api:
        return api.runs(project)


def _history(endpoint: str, project: str, run_id: str):
    with runstream.Api(endpoint=endpoint) as api:
        return api.history(run_id, project=project)


def test_example_logs_steps_hyperparams_summary_and_best_checkpoint(embedded_server, tmp_path):
    endpoint = embedded_server.endpoint
    done = run_script(EXAMPLE, ["--project", "pl", "--epochs", "3", "--root-dir", "ckpt"], endpoint, tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    table = _runs(endpoint, "pl")
    assert len(table) == 1 and table.state[0] == "finished" and table.name[0] == "mlp-16"
    run_id = table.run_id[0]
    assert f"run {run_id}:" in done.stdout  # the run is the logger's version

    points = curves(endpoint, "pl", run_id)  # also asserts one point per step and rank 0 only
    steps = list(range(3 * BATCHES))
    assert sorted(points["train_loss"]) == steps  # every optimizer step (log_every_n_steps=1)
    assert points["epoch"] == {s: float(s // BATCHES) for s in steps}
    epoch_ends = [BATCHES - 1, 2 * BATCHES - 1, 3 * BATCHES - 1]
    assert sorted(points["val_loss"]) == epoch_ends
    assert points["val_loss"][epoch_ends[-1]] < points["val_loss"][epoch_ends[0]]  # it learned

    record = read_run(endpoint, "pl", run_id)
    assert record["config"] == {"hidden": 16, "lr": 0.01}  # save_hyperparameters()
    assert record["tags"] == {"example": "lightning"} and record["context"]["world_size"] == 1
    summary = record["summary"]
    assert summary["train_loss"] == pytest.approx(points["train_loss"][steps[-1]])
    assert summary["val_loss"] == pytest.approx(points["val_loss"][epoch_ends[-1]])
    best_step = min(points["val_loss"], key=points["val_loss"].get)
    assert summary["best_model_score"] == pytest.approx(points["val_loss"][best_step])
    best_path = tmp_path / summary["best_model_path"]  # relative to the example's working folder
    assert best_path.name == f"epoch={best_step // BATCHES}-step={best_step + 1}.ckpt"
    assert best_path.parent == tmp_path / "ckpt" / "pl" / run_id / "checkpoints"  # name / version

    manifest, data = artifact_bytes(endpoint, "pl", run_id, "model")
    assert manifest["type"] == "model" and manifest["path"] == best_path.name
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(best_path.read_bytes()).hexdigest()


def test_ddp_on_two_cpu_processes_logs_rank0_or_every_rank_into_one_run(embedded_server, tmp_path):
    endpoint = embedded_server.endpoint
    done = run_script(CASES, ["ddp", "ddp", "ckpt"], endpoint, tmp_path, timeout=400)
    ids = last_json(done)  # one fit, two loggers: rank 0 only, and all_ranks=True
    steps = BATCHES // 2  # DistributedSampler: each rank trains on half the batches
    for project, ranks in (("ddp-rank0", [0]), ("ddp-all", [0, 1])):
        table = _runs(endpoint, project)
        assert list(table.run_id) == [ids[project.split("-")[1]]] and table.state[0] == "finished", table
        run_id = table.run_id[0]
        history = _history(endpoint, project, run_id)
        train = history[history.key == "train_loss"]
        assert sorted(set(train["rank"])) == ranks, project
        for rank in ranks:
            assert sorted(train[train["rank"] == rank].step) == list(range(steps))
        record = read_run(endpoint, project, run_id)
        assert record["config"] == {"hidden": 16, "lr": 0.01} and record["context"]["world_size"] == 2
        assert [a["name"] for a in record["artifacts"]] == ["model"]  # rank 0's best checkpoint, once
    # every rank logs its own loss on its own shard, not a copy of rank 0's
    history = _history(endpoint, "ddp-all", ids["all"])
    train = history[history.key == "train_loss"].sort_values("step")
    assert list(train[train["rank"] == 0].value) != list(train[train["rank"] == 1].value)
    rank0 = _history(endpoint, "ddp-rank0", ids["rank0"])
    rank0 = rank0[rank0.key == "train_loss"].sort_values("step")
    assert list(rank0.value) == list(train[train["rank"] == 0].value)  # the same rank 0, two loggers


def test_failed_fit_resumed_test_and_a_run_of_yours(embedded_server, tmp_path):
    endpoint = embedded_server.endpoint
    out = last_json(run_script(CASES, ["cases", "cases", "ckpt"], endpoint, tmp_path))
    table = _runs(endpoint, "cases").set_index("run_id")
    assert len(table) == 3

    # the fit that raised at step 3: failed, its three steps stored
    assert table.state[out["failed"]] == "failed"
    assert sorted(curves(endpoint, "cases", out["failed"])["train_loss"]) == [0, 1, 2]

    # trainer.test after trainer.fit: one run, finished again after the test logged into it
    assert table.state[out["resumed"]] == "finished" and table.name[out["resumed"]] == "fit-then-test"
    points = curves(endpoint, "cases", out["resumed"])
    assert sorted(points["train_loss"]) == list(range(BATCHES)) and list(points["test_loss"]) == [BATCHES]
    summary = read_run(endpoint, "cases", out["resumed"])["summary"]
    assert summary["test_loss"] == pytest.approx(points["test_loss"][BATCHES])

    # RunstreamLogger(run=run): the caller's run stays open after the fit and keeps its config
    assert out["yours_open_after_fit"] is True and table.state[out["yours"]] == "finished"
    record = read_run(endpoint, "cases", out["yours"])
    assert record["config"] == {"mine": 1, "hidden": 4, "lr": 0.01}
    points = curves(endpoint, "cases", out["yours"])
    assert sorted(points["train_loss"]) == list(range(BATCHES)) and points["after_fit"] == {1000: 1.0}
