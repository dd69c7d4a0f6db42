"""scikit-learn: a fitted estimator's params, metrics and pickled model into a run, and a search's
(GridSearchCV, RandomizedSearchCV, HalvingGridSearchCV...) candidates as one run each.

    from runstream.integrations import sklearn as rs_sklearn
    with runstream.init(project="iris") as run:
        model = LogisticRegression(C=0.5).fit(X_train, y_train)
        rs_sklearn.log_estimator(model, X_test, y_test)      # config, test/* metrics, summary, model

    search = GridSearchCV(SVC(), {"C": [0.1, 1, 10]}, cv=5).fit(X, y)
    run_ids = rs_sklearn.log_search(search, project="iris")  # one run per candidate, one group

Metrics by estimator type: classifiers get accuracy, balanced_accuracy, f1/precision/recall
(macro averages), and log_loss and roc_auc when the estimator has predict_proba; regressors r2,
mse, rmse, mae; anything else its own `score` when it has one.
"""

from __future__ import annotations

import pickle
import re
import uuid
from collections.abc import Mapping
from typing import Any

from runstream.run import Run

from ._common import finite, log_written_file, missing, plain_dict, resolve_run, side_run, with_tag

try:
    import numpy as np
    from sklearn import metrics as skm
    from sklearn.base import is_classifier, is_regressor
except ImportError as exc:
    raise missing("scikit-learn", "sklearn", exc) from None


WHO = "runstream.integrations.sklearn"
_SPLIT = re.compile(r"^split(\d+)_(test|train)_(.+)$")  # cv_results_ per-fold columns


def log_params(estimator: Any, run: Run | None = None, prefix: str = "") -> dict[str, Any]:
    """Puts estimator.get_params(deep=True) into run.config (nested estimators' params under
    their sklearn names, e.g. "clf__C"; objects as their repr) plus `<prefix>estimator`, the class
    name. Returns what was recorded."""
    run = resolve_run(run, WHO)
    params = plain_dict(estimator.get_params(deep=True), prefix)
    params[f"{prefix}estimator"] = type(estimator).__name__
    run.config.update(params)
    return params


def compute_metrics(estimator: Any, X: Any, y: Any) -> dict[str, float]:
    """The standard metrics of a fitted estimator on (X, y), by its type (see the module doc)."""
    if is_classifier(estimator):
        predicted = estimator.predict(X)
        out = {
            "accuracy": skm.accuracy_score(y, predicted),
            "balanced_accuracy": skm.balanced_accuracy_score(y, predicted),
            "f1": skm.f1_score(y, predicted, average="macro", zero_division=0),
            "precision": skm.precision_score(y, predicted, average="macro", zero_division=0),
            "recall": skm.recall_score(y, predicted, average="macro", zero_division=0),
        }
        if hasattr(estimator, "predict_proba"):
            proba = estimator.predict_proba(X)
            labels = getattr(estimator, "classes_", None)
            out["log_loss"] = skm.log_loss(y, proba, labels=labels)
            if len(np.unique(y)) > 1:  # roc_auc needs both classes present
                if proba.shape[1] == 2:
                    out["roc_auc"] = skm.roc_auc_score(y, proba[:, 1])
                elif len(np.unique(y)) == proba.shape[1]:
                    out["roc_auc"] = skm.roc_auc_score(y, proba, multi_class="ovr", labels=labels)
    elif is_regressor(estimator):
        predicted = estimator.predict(X)
        mse = skm.mean_squared_error(y, predicted)
        out = {
            "r2": skm.r2_score(y, predicted),
            "mse": mse,
            "rmse": float(np.sqrt(mse)),
            "mae": skm.mean_absolute_error(y, predicted),
        }
    elif hasattr(estimator, "score"):
        out = {"score": estimator.score(X, y)}
    else:
        out = {}
    return {key: float(value) for key, value in out.items()}


def log_metrics(
    estimator: Any, X: Any, y: Any, run: Run | None = None, prefix: str = "test/", step: int | None = None
) -> dict[str, float]:
    """Computes the estimator's metrics on (X, y) (compute_metrics), logs them as
    `<prefix><metric>` at `step` (default: the run's next step) and puts them in run.summary.
    Returns them, keys prefixed."""
    run = resolve_run(run, WHO)
    values = {f"{prefix}{key}": value for key, value in compute_metrics(estimator, X, y).items()}
    if values:
        run.log(values, step=step)
        run.summary.update(values)
    return values


def log_model(estimator: Any, run: Run | None = None, name: str = "model") -> dict | None:
    """Pickles the estimator and logs the file (model.pkl) as the artifact `name`, type "model";
    waits until it is acknowledged. Returns log_artifact's description (None: not acknowledged in
    time, see _common.log_written_file)."""
    run = resolve_run(run, WHO)

    def write(path):
        with open(path, "wb") as f:
            pickle.dump(estimator, f, protocol=pickle.HIGHEST_PROTOCOL)

    return log_written_file(run, write, "model.pkl", name)


def log_estimator(
    estimator: Any,
    X: Any = None,
    y: Any = None,
    *,
    run: Run | None = None,
    prefix: str = "test/",
    model: bool = True,
) -> dict[str, Any]:
    """Everything about a fitted estimator: log_params, log_metrics on (X, y) when given, and
    log_model when `model`. Returns {"params": ..., "metrics": ..., "artifact": ...}."""
    run = resolve_run(run, WHO)
    params = log_params(estimator, run)
    values = log_metrics(estimator, X, y, run, prefix) if X is not None and y is not None else {}
    artifact = log_model(estimator, run) if model else None
    return {"params": params, "metrics": values, "artifact": artifact}


def log_search(
    search: Any,
    project: str,
    *,
    group: str | None = None,
    prefix: str = "cv/",
    progress: bool = True,
    **init_kwargs: Any,
) -> list[str]:
    """One run per candidate of a fitted search (anything with `cv_results_`: GridSearchCV,
    RandomizedSearchCV, the Halving searches), all in one group (default: "<search class>-<8 hex>").
    Each run's config holds the candidate's params and search.class, .estimator, .n_splits; its
    metrics are the per-fold scores as steps (`<prefix>split_test_<scorer>`, step = fold, and
    split_train_ with return_train_score) and the means, stds and ranks (`<prefix>mean_test_<scorer>`
    ..., one point each), which are also its summary, with the fit and score times. The best
    candidate (rank 1 of the refit scorer) is tagged "best". `init_kwargs` go to runstream.init
    (endpoint, tags, settings...). Returns the run ids in candidate order."""
    if not hasattr(search, "cv_results_"):
        raise ValueError(f"{WHO}.log_search: {type(search).__name__} has no cv_results_: call fit first")
    results: Mapping[str, Any] = search.cv_results_
    params_list = results["params"]
    group = group or f"{type(search).__name__.lower()}-{uuid.uuid4().hex[:8]}"
    scorers = sorted(k.removeprefix("mean_test_") for k in results if k.startswith("mean_test_"))
    if not scorers:
        raise ValueError(f"{WHO}.log_search: {type(search).__name__}.cv_results_ has no mean_test_ column")
    refit = search.refit if isinstance(search.refit, str) else "score"
    rank_key = f"rank_test_{refit}" if f"rank_test_{refit}" in results else f"rank_test_{scorers[0]}"
    n_splits = getattr(search, "n_splits_", None)
    estimator = getattr(search, "estimator", None)
    base_tags = init_kwargs.pop("tags", None)
    splits = sorted(
        (key, int(m[1]), m[2], m[3]) for key in results if (m := _SPLIT.match(key))
    )  # (column, fold, "test"/"train", scorer)
    n_folds = max((fold for _, fold, _, _ in splits), default=-1) + 1
    run_ids = []
    for i in _progress(range(len(params_list)), progress, f"logging {len(params_list)} candidates"):
        config = plain_dict(params_list[i])
        config["search.class"] = type(search).__name__
        if estimator is not None:
            config["search.estimator"] = type(estimator).__name__
        if n_splits is not None:
            config["search.n_splits"] = int(n_splits)
        best = int(results[rank_key][i]) == 1
        tags = with_tag(base_tags, "best") if best else base_tags
        with side_run(
            project, init_kwargs, name=f"candidate-{i:03d}", group=group, job_type="cv-candidate",
            config=config, tags=tags,
        ) as run:  # fmt: skip
            for key, fold, part, scorer in splits:
                value = float(results[key][i])
                if finite(value):  # a fold that failed to fit scores NaN: no point
                    run.log({f"{prefix}split_{part}_{scorer}": value}, step=fold)
            summary: dict[str, Any] = {
                f"{prefix}{key}": int(column[i]) if key.startswith("rank_") else float(column[i])
                for key, column in results.items()
                if key.startswith(("mean_", "std_", "rank_"))
            }
            run.log(summary, step=n_folds)  # after the folds; filterable and sortable as metrics.<key>
            run.summary.update({**summary, f"{prefix}candidate": i})
        run_ids.append(run.id)
    return run_ids


def _progress(items, enabled: bool, what: str):
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=what, leave=False)
