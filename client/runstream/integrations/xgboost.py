"""XGBoost: a TrainingCallback that logs every boosting round's evaluation results, the booster's
training parameters, a summary and (optionally) the trained model into a run.

    from runstream.integrations.xgboost import RunstreamCallback
    with runstream.init(project="house-prices") as run:
        booster = xgb.train(params, dtrain, 200, evals=[(dtrain, "train"), (dvalid, "valid")],
                            callbacks=[RunstreamCallback(log_model=True)])
    # also: XGBRegressor(callbacks=[RunstreamCallback()]).fit(X, y, eval_set=[(X_valid, y_valid)])

Metrics: "<data>/<metric>" at step = boosting round (e.g. "valid/rmse"); under xgb.cv, the
fold mean as "<data>/<metric>" and the standard deviation as "<data>/<metric>_std". Config: every
parameter of the booster's configuration (Booster.save_config: eta, max_depth, objective, seed...)
under `config_prefix`, with numbers as numbers (float32 values rounded to 7 significant digits,
so eta is 0.3 rather than 0.300000012). Summary at the end: the last value of each metric, the
rounds boosted, and best_iteration / best_score when early stopping set them. The model, when
asked for, is the artifact `model_name` (type "model", XGBoost's JSON format).
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from runstream.run import Run

from ._common import log_written_file, missing, resolve_run

try:
    import xgboost
    from xgboost.callback import TrainingCallback
except ImportError as exc:
    raise missing("xgboost", "xgboost", exc, " (or xgboost-cpu)") from None


WHO = "runstream.integrations.xgboost"
_INT = re.compile(r"^-?\d+$")
_FLOAT = re.compile(r"^-?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?$|^-?(inf|nan)$")


class RunstreamCallback(TrainingCallback):
    """Logs an XGBoost training into `run` (default: the current run when training starts)."""

    def __init__(
        self,
        run: Run | None = None,
        *,
        log_config: bool = True,
        config_prefix: str = "xgboost.",
        log_model: bool = False,
        model_name: str = "model",
    ):
        super().__init__()
        self.run = run
        self.log_config = log_config
        self.config_prefix = config_prefix
        self.log_model = log_model
        self.model_name = model_name
        self._target: Run | None = None
        self._last: dict[str, float] = {}

    def __deepcopy__(self, memo):
        # sklearn's clone() deep-copies estimator params (XGBModel(callbacks=[...])): the copy
        # logs into the same run; a Run (threads, locks, a connection) is never copied
        return copy.copy(self)

    def before_training(self, model: Any) -> Any:
        self._target = resolve_run(self.run, WHO)
        self._last = {}
        if self.log_config and isinstance(model, xgboost.Booster):
            self._target.config.update(booster_params(model, self.config_prefix))
        return model

    def after_iteration(self, model: Any, epoch: int, evals_log: dict) -> bool:
        values: dict[str, float] = {}
        for data, by_metric in evals_log.items():
            for metric, history in by_metric.items():
                if not history:
                    continue
                last = history[-1]
                if isinstance(last, tuple):  # xgb.cv: (mean, std) over the folds
                    values[f"{data}/{metric}"] = float(last[0])
                    values[f"{data}/{metric}_std"] = float(last[1])
                else:
                    values[f"{data}/{metric}"] = float(last)
        if values:
            self._target.log(values, step=int(epoch))
            self._last = values
        return False  # never asks to stop

    def after_training(self, model: Any) -> Any:
        run = self._target
        summary: dict[str, Any] = dict(self._last)
        if isinstance(model, xgboost.Booster):
            summary["num_boosted_rounds"] = model.num_boosted_rounds()
            best_iteration, best_score = model.attr("best_iteration"), model.attr("best_score")
            if best_iteration is not None:
                summary["best_iteration"] = int(best_iteration)
            if best_score is not None:
                summary["best_score"] = float(best_score)
        if summary:
            run.summary.update(summary)
        if self.log_model and isinstance(model, xgboost.Booster):
            log_written_file(run, lambda path: model.save_model(str(path)), "model.json", self.model_name)
        return model


def booster_params(booster: xgboost.Booster, prefix: str = "xgboost.") -> dict[str, Any]:
    """The training parameters in a booster's configuration (every "*_param" section of
    Booster.save_config, plus the objective, the booster type and the eval metrics), one level,
    keys prefixed; the first section that names a parameter wins."""
    config = json.loads(booster.save_config())
    out: dict[str, Any] = {}

    def walk(node: Any, section: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if section.endswith("_param") and not isinstance(value, (dict, list)):
                    out.setdefault(f"{prefix}{key}", _number(value))
                else:
                    walk(value, key)
        elif isinstance(node, list):
            for item in node:
                walk(item, section)

    learner = config.get("learner", {})
    walk(learner, "")
    metrics = [m.get("name") for m in learner.get("metrics", []) if isinstance(m, dict)]
    if metrics:
        out[f"{prefix}eval_metric"] = metrics if len(metrics) > 1 else metrics[0]
    version = config.get("version")
    if version:
        out[f"{prefix}version"] = ".".join(str(v) for v in version)
    return out


def _number(text: Any) -> Any:
    """XGBoost's configuration holds every value as text: numbers become numbers again."""
    if not isinstance(text, str):
        return text
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        value = float(text)
        return float(f"{value:.7g}")  # float32 values printed at full precision: 0.300000012 -> 0.3
    return text
