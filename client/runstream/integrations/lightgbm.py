"""LightGBM: a callback that logs every iteration's evaluation results and the training
parameters into a run, and log_booster for what exists only after training (best iteration and
scores after early stopping, feature importance, the model file).

    from runstream.integrations.lightgbm import RunstreamCallback, log_booster
    with runstream.init(project="churn") as run:
        booster = lgb.train(params, train_set, 100, valid_sets=[valid_set], valid_names=["valid"],
                            callbacks=[RunstreamCallback(), lgb.early_stopping(10)])
        log_booster(booster)
    # also: LGBMClassifier().fit(X, y, eval_set=[...], callbacks=[RunstreamCallback()])

Metrics: "<data>/<metric>" at step = iteration (e.g. "valid/binary_logloss"); under lgb.cv, the
fold mean as "<data>/<metric>" and the standard deviation as "<data>/<metric>_std". Config: the
params LightGBM trains with, under `config_prefix`, written at the first iteration. The callback
runs before lgb.early_stopping (order 25 < 30), so the iteration that stops training is logged.
"""

from __future__ import annotations

import copy
from typing import Any

from runstream.run import Run

from ._common import log_written_file, missing, plain_dict, resolve_run

try:
    import lightgbm
except ImportError as exc:
    raise missing("lightgbm", "lightgbm", exc) from None


WHO = "runstream.integrations.lightgbm"


class RunstreamCallback:
    """Logs a LightGBM training into `run` (default: the current run at the first iteration)."""

    order = 25  # after lgb.record_evaluation (20), before lgb.early_stopping (30)
    before_iteration = False

    def __init__(self, run: Run | None = None, *, log_config: bool = True, config_prefix: str = "lightgbm."):
        self.run = run
        self.log_config = log_config
        self.config_prefix = config_prefix
        self._target: Run | None = None

    def __deepcopy__(self, memo):
        return copy.copy(self)  # shares the run, as in xgboost.RunstreamCallback

    def __call__(self, env: Any) -> None:
        if env.iteration == env.begin_iteration or self._target is None:
            self._target = resolve_run(self.run, WHO)
            if self.log_config:
                self._target.config.update(plain_dict(env.params, self.config_prefix))
        values: dict[str, float] = {}
        for result in env.evaluation_result_list or ():
            # (data, metric, value, is_higher_better[, stdv]): a tuple or, from 4.7, an EvalResult
            data, metric, value = result[0], result[1], result[2]
            values[f"{data}/{metric}"] = float(value)
            if len(result) > 4:  # lgb.cv
                values[f"{data}/{metric}_std"] = float(result[4])
        if values:
            self._target.log(values, step=int(env.iteration))


def log_booster(
    booster: lightgbm.Booster | lightgbm.LGBMModel,
    run: Run | None = None,
    *,
    model: bool = True,
    model_name: str = "model",
    importance: str | None = "gain",
) -> dict[str, Any]:
    """After training: puts best_iteration, the number of trees, best_score ("best/<data>/<metric>")
    and, when `importance` is "gain" or "split", each feature's importance ("importance/<feature>")
    in run.summary, and logs the model (LightGBM's text format, model.txt) as the artifact
    `model_name` when `model`. Returns the summary written."""
    run = resolve_run(run, WHO)
    if isinstance(booster, lightgbm.LGBMModel):  # the scikit-learn API: its fitted Booster
        booster = booster.booster_
    if not isinstance(booster, lightgbm.Booster):
        raise TypeError(
            f"{WHO}.log_booster takes the lightgbm.Booster lgb.train returns (or a fitted LGBMModel), "
            f"not {type(booster).__name__}"
        )
    summary: dict[str, Any] = {
        "best_iteration": int(booster.best_iteration),
        "num_trees": int(booster.num_trees()),
    }
    for data, by_metric in booster.best_score.items():
        for metric, value in by_metric.items():
            summary[f"best/{data}/{metric}"] = float(value)
    if importance:
        names = booster.feature_name()
        for name, value in zip(names, booster.feature_importance(importance), strict=True):
            summary[f"importance/{name}"] = float(value)
    run.summary.update(summary)
    if model:
        log_written_file(run, lambda path: booster.save_model(str(path)), "model.txt", model_name)
    return summary
