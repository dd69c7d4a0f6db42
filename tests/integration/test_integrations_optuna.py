"""runstream.integrations.optuna against a real embedded server: a study whose objective trains a
Ridge model fold by fold (trial.report per fold), with one trial pruned and one failing, becomes
one run per trial in the study's group; a multi-objective study run from two threads names its
values after the study's metric names."""

from __future__ import annotations

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")

from sklearn.datasets import load_diabetes  # noqa: E402
from sklearn.linear_model import Ridge  # noqa: E402

import runstream  # noqa: E402
from runstream.integrations.optuna import RunstreamCallback  # noqa: E402
from tests.framework_reads import curves, read_run  # noqa: E402
from tests.sdk_options import quick_sdk_options  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
X, Y = load_diabetes(return_X_y=True)
FOLDS = np.array_split(np.arange(len(X)), 3)


def objective(trial):
    alpha = trial.suggest_float("alpha", 1e-3, 100.0, log=True)
    solver = trial.suggest_categorical("solver", ["auto", "svd"])
    trial.set_user_attr("folds", len(FOLDS))
    scores = []
    for fold, held_out in enumerate(FOLDS):
        train = np.setdiff1d(np.arange(len(X)), held_out)
        model = Ridge(alpha=alpha, solver=solver).fit(X[train], Y[train])
        scores.append(model.score(X[held_out], Y[held_out]))
        trial.report(scores[-1], fold)
        if alpha > 50 and fold == 1:
            raise optuna.TrialPruned()
    if solver == "svd" and alpha < 0.01:
        raise ValueError("pretend this one diverged")
    return float(np.mean(scores))


def test_one_run_per_trial_in_the_study_group_with_states_params_and_values(module_embedded_server, tmp_path):
    endpoint = module_embedded_server.endpoint
    study = optuna.create_study(study_name="ridge-sweep", direction="maximize")
    for params in ({"alpha": 0.1, "solver": "auto"}, {"alpha": 80.0, "solver": "auto"},
                   {"alpha": 0.005, "solver": "svd"}, {"alpha": 3.0, "solver": "svd"}):  # fmt: skip
        study.enqueue_trial(params)
    callback = RunstreamCallback("opt", tags=["sweep"], **quick_sdk_options(endpoint, tmp_path))
    with runstream.init("opt", name="driver", **quick_sdk_options(endpoint, tmp_path)) as driver:
        study.optimize(objective, n_trials=4, callbacks=[callback], catch=(ValueError,))
        assert runstream.current_run() is driver
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "FAIL", "COMPLETE"]
    assert sorted(callback.run_ids) == [0, 1, 2, 3]

    with runstream.Api(endpoint=endpoint) as api:
        table = api.runs("opt", filter='group = "ridge-sweep"', order_by="-metrics.value")
    assert sorted(table.run_id) == sorted(callback.run_ids.values())
    best = study.best_trial
    assert table.run_id[0] == callback.run_ids[best.number]  # sorting by the objective finds the best trial
    for trial in trials:
        run_id = callback.run_ids[trial.number]
        record = read_run(endpoint, "opt", run_id)
        assert record["name"] == f"trial-{trial.number}" and record["job_type"] == "optuna-trial"
        assert record["state"] == ("failed" if trial.state.name == "FAIL" else "finished")
        assert record["tags"] == {"sweep": "", "trial_state": trial.state.name}
        config = record["config"]
        assert config["alpha"] == trial.params["alpha"] and config["solver"] == trial.params["solver"]
        assert config["optuna.trial"] == trial.number and config["optuna.direction"] == "maximize"
        assert config["optuna.sampler"] == "TPESampler" and config["optuna.study"] == "ridge-sweep"
        assert record["start_ms"] == int(trial.datetime_start.timestamp() * 1000)
        assert record["end_ms"] == int(trial.datetime_complete.timestamp() * 1000)
        summary = record["summary"]
        assert summary["trial_state"] == trial.state.name and summary["user_attrs.folds"] == 3
        assert summary["duration_s"] == pytest.approx(trial.duration.total_seconds())
        points = curves(endpoint, "opt", run_id)
        assert points["intermediate_value"] == pytest.approx(trial.intermediate_values)
        if trial.value is None:
            assert "value" not in points and "value" not in summary
        else:
            assert points["value"] == {0: pytest.approx(trial.value)} and summary["value"] == pytest.approx(
                trial.value
            )
    pruned = read_run(endpoint, "opt", callback.run_ids[1])["summary"]  # stopped after two folds
    assert pruned["last_step"] == 1 and pruned["intermediate_value"] == pytest.approx(
        trials[1].intermediate_values[1]
    )


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # set_metric_names
def test_multi_objective_names_from_the_study_and_threads(module_embedded_server, tmp_path):
    endpoint = module_embedded_server.endpoint
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0)
    )
    study.set_metric_names(["r2", "alpha_cost"])

    def two_objectives(trial):
        alpha = trial.suggest_float("alpha", 0.01, 10.0)
        return Ridge(alpha=alpha).fit(X[:300], Y[:300]).score(X[300:], Y[300:]), alpha

    callback = RunstreamCallback("opt2", group="pareto", **quick_sdk_options(endpoint, tmp_path))
    study.optimize(two_objectives, n_trials=6, n_jobs=2, callbacks=[callback])
    with runstream.Api(endpoint=endpoint) as api:
        table = api.runs("opt2", filter='group = "pareto"')
    assert len(table) == 6 and set(table.state) == {"finished"}
    for trial in study.trials:
        record = read_run(endpoint, "opt2", callback.run_ids[trial.number])
        assert record["config"]["optuna.directions"] == ["maximize", "minimize"]
        assert record["summary"]["r2"] == pytest.approx(trial.values[0])
        assert (
            record["metrics"]["alpha_cost"]["last"]
            == pytest.approx(trial.values[1])
            == record["config"]["alpha"]
        )
    with pytest.raises(ValueError, match="2 objective"):
        RunstreamCallback("opt2", metric_name="only-one")(study, study.trials[0])


def test_a_tracked_objective_logs_live_into_its_trial_run_which_the_callback_completes(
    module_embedded_server, tmp_path
):
    endpoint = module_embedded_server.endpoint
    callback = RunstreamCallback("opt3", **quick_sdk_options(endpoint, tmp_path))

    @callback.track
    def tracked(trial):
        alpha = trial.suggest_float("alpha", 1e-3, 100.0, log=True)
        assert runstream.current_run() is callback.run_of(trial)  # runstream.log lands in the trial's run
        for epoch, rows in enumerate((150, 250, 350)):  # more data each "epoch"
            score = Ridge(alpha=alpha).fit(X[:rows], Y[:rows]).score(X[350:], Y[350:])
            runstream.log({"val_r2": score}, step=epoch)
            trial.report(score, epoch)
            if alpha > 50 and epoch == 1:
                raise optuna.TrialPruned()
        if alpha < 0.01:
            raise ValueError("pretend this one diverged")
        return score

    study = optuna.create_study(study_name="tracked", direction="maximize")
    for alpha in (1.0, 80.0, 0.005):
        study.enqueue_trial({"alpha": alpha})
    with runstream.init("opt3", name="driver", **quick_sdk_options(endpoint, tmp_path)) as driver:
        study.optimize(tracked, n_trials=3, callbacks=[callback], catch=(ValueError,))
        assert runstream.current_run() is driver
    with runstream.Api(endpoint=endpoint) as api:
        table = api.runs("opt3", filter='group = "tracked"')
    assert sorted(table.run_id) == sorted(callback.run_ids.values()) and len(table) == 3  # one run per trial
    complete, pruned, failed = (read_run(endpoint, "opt3", callback.run_ids[n]) for n in range(3))
    for number, record in enumerate((complete, pruned, failed)):
        trial = study.trials[number]
        assert record["name"] == f"trial-{number}" and record["config"]["alpha"] == trial.params["alpha"]
        assert record["config"]["optuna.trial"] == number and record["tags"] == {
            "trial_state": trial.state.name
        }
        live = curves(endpoint, "opt3", record["run_id"])["val_r2"]
        assert live == pytest.approx(trial.intermediate_values)  # logged by the objective as it ran
    assert complete["state"] == "finished" and complete["summary"]["value"] == pytest.approx(
        study.trials[0].value
    )
    assert complete["summary"]["user_attrs.runstream_run_id"] == complete["run_id"]
    assert complete["config"]["optuna.sampler"] == "TPESampler"  # the callback completed this run
    assert pruned["state"] == "finished" and pruned["summary"]["last_step"] == 1
    assert failed["state"] == "failed" and "pretend this one diverged" in failed["summary"]["error"]
    assert failed["summary"]["trial_state"] == "FAIL" and "value" not in failed["summary"]
