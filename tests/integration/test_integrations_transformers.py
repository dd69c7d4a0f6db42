"""runstream.integrations.transformers against a real embedded server: client/examples/
transformers_train.py trains a tiny randomly initialized BERT (2 layers, hidden 32) through the
real Trainer on CPU, in the PyTorch venv of scripts/torch_venv.sh (skipped, naming the script,
when it is absent); what landed is read back through runstream.Api and compared with the
Trainer's own record of the training (trainer_state.json in its last checkpoint): metrics per
global step, arguments and model config, summary, checkpoints and model, and report_to; and
(tests/integration/transformers_cases.py) a run per train() call and a current run left open."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import runstream
from tests import ROOT
from tests.framework_reads import curves, read_run
from tests.torch_venv import last_json, needs_torch_venv, run_script

pytestmark = [pytest.mark.timeout(600), needs_torch_venv]
EXAMPLE = ROOT / "client" / "examples" / "transformers_train.py"
CASES = Path(__file__).with_name("transformers_cases.py")
STEPS, EVERY = 20, 10


def _runs(endpoint: str, project: str):
    with runstream.Api(endpoint=endpoint) as api:
        return api.runs(project)


def test_callback_logs_steps_config_summary_checkpoints_and_model(embedded_server, tmp_path):
    endpoint = embedded_server.endpoint
    args = ["--project", "hf", "--steps", str(STEPS), "--eval-every", str(EVERY), "--output-dir", "out"]
    done = run_script(EXAMPLE, args, endpoint, tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    table = _runs(endpoint, "hf")  # one run: the evaluate() after train() resumed it
    assert len(table) == 1 and table.state[0] == "finished" and table.name[0] == "tiny-bert"
    run_id = table.run_id[0]

    # the Trainer's own log of every step, as saved in its last checkpoint
    trainer_state = json.loads((tmp_path / "out" / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    train_logs = [e for e in trainer_state["log_history"] if "loss" in e]
    eval_logs = [e for e in trainer_state["log_history"] if "eval_loss" in e]
    assert [e["step"] for e in train_logs] == list(range(1, STEPS + 1))

    # the example's trainer.evaluate() after train(), at step STEPS too (the later point wins)
    final = last_json(done)["final_eval"]

    points = curves(endpoint, "hf", run_id)  # also asserts one point per step and rank 0 only
    for ours, theirs in (("train/loss", "loss"), ("train/learning_rate", "learning_rate")):
        assert points[ours] == pytest.approx({e["step"]: e[theirs] for e in train_logs}, rel=1e-6)
    assert sorted(points["train/grad_norm"]) == sorted(points["train/epoch"]) == list(range(1, STEPS + 1))
    for key in ("loss", "accuracy"):
        during = {e["step"]: e[f"eval_{key}"] for e in eval_logs}
        assert points[f"eval/{key}"] == pytest.approx({**during, STEPS: final[f"eval_{key}"]}, rel=1e-6)
    assert sorted(points["eval/loss"]) == [EVERY, STEPS]
    assert not {"train/train_runtime", "train/train_loss", "train/total_flos"} & set(points)  # summary

    record = read_run(endpoint, "hf", run_id)
    config = record["config"]
    assert config["learning_rate"] == 0.001 and config["max_steps"] == STEPS and config["seed"] == 0
    assert config["metric_for_best_model"] == "accuracy" and config["run_name"] == "tiny-bert"
    assert config["model.hidden_size"] == 32 and config["model.num_hidden_layers"] == 2
    assert config["model.model_type"] == "bert" and config["model.num_parameters"] > 10_000
    assert record["tags"] == {"example": "transformers"} and config["transformers_version"]

    summary = record["summary"]
    assert summary["global_step"] == STEPS and summary["train_runtime"] > 0
    mean_loss = (
        sum(e["loss"] for e in train_logs) / STEPS
    )  # the Trainer's train_loss: loss per step, averaged
    assert summary["train_loss"] == pytest.approx(mean_loss, abs=1e-3)
    assert summary["eval/accuracy"] == pytest.approx(final["eval_accuracy"])  # the latest evaluation
    during = {e["step"]: e["eval_accuracy"] for e in eval_logs}
    assert summary["best_metric"] == pytest.approx(max(during.values()))
    best = max(during, key=during.get)
    assert summary["best_model_checkpoint"].endswith(f"checkpoint-{best}")
    assert final["eval_accuracy"] == pytest.approx(during[best], rel=1e-6)  # the best model, reloaded

    # every checkpoint as it was saved (versions of "checkpoint"), and the final model
    checkpoints = [a for a in record["artifacts"] if a["name"] == "checkpoint"]
    assert sorted({a["version"] for a in checkpoints}) == [1, 2]
    saved = {}
    with runstream.Api(endpoint=endpoint) as api:
        for artifact in checkpoints:
            if artifact["path"] == "trainer_state.json":
                state = json.loads(api.download_artifact("hf", run_id, artifact["sha256"]))
                saved[artifact["version"]] = state["global_step"]
    assert saved == {1: EVERY, 2: STEPS}
    assert {a["path"] for a in checkpoints} >= {"model.safetensors", "optimizer.pt", "trainer_state.json"}
    model = {a["path"]: a for a in record["artifacts"] if a["name"] == "model"}
    assert set(model) == {"config.json", "model.safetensors"} and model["config.json"]["type"] == "model"
    with runstream.Api(endpoint=endpoint) as api:
        model_config = json.loads(api.download_artifact("hf", run_id, model["config.json"]["sha256"]))
    assert model_config["hidden_size"] == 32 and model_config["architectures"] == [
        "BertForSequenceClassification"
    ]


def test_report_to_runstream_and_no_project_is_an_error(embedded_server, tmp_path):
    endpoint = embedded_server.endpoint
    args = ["--report-to", "--steps", "4", "--eval-every", "2", "--output-dir", "out"]
    done = run_script(EXAMPLE, args, endpoint, tmp_path, RUNSTREAM_PROJECT="hf-report")
    assert done.returncode == 0, done.stderr[-4000:]
    table = _runs(endpoint, "hf-report")
    assert len(table) == 1 and table.state[0] == "finished" and table.name[0] == "tiny-bert"
    run_id = table.run_id[0]
    points = curves(endpoint, "hf-report", run_id)
    assert sorted(points["train/loss"]) == [1, 2, 3, 4] and sorted(points["eval/accuracy"]) == [2, 4]
    record = read_run(endpoint, "hf-report", run_id)
    assert record["config"]["max_steps"] == 4 and record["summary"]["global_step"] == 4
    assert record["artifacts"] == []  # report_to's callback takes no arguments: no checkpoints, no model

    refused = run_script(EXAMPLE, args, endpoint, tmp_path, RUNSTREAM_PROJECT="")  # no run, no project
    assert refused.returncode != 0
    assert "NotInitializedError" in refused.stderr and "RUNSTREAM_PROJECT" in refused.stderr


def test_a_run_per_train_call_and_a_current_run_left_open(embedded_server, tmp_path):
    endpoint = embedded_server.endpoint
    out = last_json(run_script(CASES, ["cases"], endpoint, tmp_path))
    table = _runs(endpoint, "cases").set_index("name")
    assert sorted(table.index) == ["trial-0", "trial-1", "yours"] and set(table.state) == {"finished"}
    for name, steps in (("trial-0", 2), ("trial-1", 3)):  # one callback, two train() calls: two runs
        points = curves(endpoint, "cases", table.run_id[name])
        assert sorted(points["train/loss"]) == list(range(1, steps + 1))
        record = read_run(endpoint, "cases", table.run_id[name])
        assert record["config"]["max_steps"] == steps and record["summary"]["global_step"] == steps

    # RunstreamCallback() with a current run: logs into it, keeps its name and config, leaves it open
    assert table.run_id["yours"] == out["yours"] and out["yours_open_after_train"] is True
    record = read_run(endpoint, "cases", out["yours"])
    assert record["config"]["mine"] == 1 and record["config"]["run_name"] == "ignored"
    points = curves(endpoint, "cases", out["yours"])
    assert sorted(points["train/loss"]) == [1, 2] and points["after_train"] == {100: 1.0}
