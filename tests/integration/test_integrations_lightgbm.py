"""runstream.integrations.lightgbm against a real embedded server: lgb.train with a validation
set and early stopping, then log_booster (best iteration and scores, feature importance, the
model file), lgb.cv's means and standard deviations, and the scikit-learn API."""

from __future__ import annotations

import numpy as np
import pytest

lgb = pytest.importorskip("lightgbm")

import runstream  # noqa: E402
from runstream.integrations.lightgbm import RunstreamCallback, log_booster  # noqa: E402
from tests.framework_reads import artifact_bytes, curves, read_run  # noqa: E402
from tests.sdk_options import quick_sdk_options  # noqa: E402


def _data(n=600, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = (X[:, 0] + 0.5 * X[:, 1] + rng.normal(scale=0.8, size=n) > 0).astype(int)
    return X, y


PARAMS = {"objective": "binary", "metric": ["binary_logloss", "auc"], "learning_rate": 0.3, "num_leaves": 7,
          "verbose": -1, "seed": 3}  # fmt: skip


def test_train_with_early_stopping_then_log_booster(module_embedded_server, tmp_path):
    X, y = _data()
    train = lgb.Dataset(X[:400], label=y[:400], feature_name=["a", "b", "c", "d"])
    valid = lgb.Dataset(X[400:], label=y[400:], reference=train)
    recorded: dict = {}
    endpoint = module_embedded_server.endpoint
    with runstream.init("lgb", **quick_sdk_options(endpoint, tmp_path)) as run:
        booster = lgb.train(
            PARAMS, train, 200, valid_sets=[valid], valid_names=["valid"],
            callbacks=[lgb.early_stopping(3, verbose=False), RunstreamCallback(), lgb.record_evaluation(recorded)],
        )  # fmt: skip
        summary = log_booster(booster)
    assert booster.best_iteration < 200  # early stopping stopped it (so the test shows the last round logged)
    points = curves(endpoint, "lgb", run.id)
    assert set(points) == {"valid/binary_logloss", "valid/auc"}
    for metric in ("binary_logloss", "auc"):
        assert points[f"valid/{metric}"] == pytest.approx(dict(enumerate(recorded["valid"][metric])))

    record = read_run(endpoint, "lgb", run.id)
    config = record["config"]
    assert config["lightgbm.learning_rate"] == 0.3 and config["lightgbm.num_leaves"] == 7
    assert config["lightgbm.metric"] == ["binary_logloss", "auc"] and config["lightgbm.objective"] == "binary"
    stored = record["summary"]
    assert stored["best_iteration"] == booster.best_iteration and stored == pytest.approx(summary)
    assert stored["best/valid/auc"] == pytest.approx(booster.best_score["valid"]["auc"])
    assert stored["importance/a"] > stored["importance/d"]  # "a" decides the label, "d" is noise

    manifest, data = artifact_bytes(endpoint, "lgb", run.id, "model")
    assert manifest["type"] == "model" and manifest["path"] == "model.txt"
    restored = lgb.Booster(model_str=data.decode())
    np.testing.assert_allclose(restored.predict(X[400:]), booster.predict(X[400:]))


@pytest.mark.filterwarnings(
    "ignore:The argument 'eval_set' is deprecated"
)  # eval_X/eval_y: lightgbm 4.7+ only
def test_cv_means_and_stds_and_the_sklearn_api(module_embedded_server, tmp_path):
    X, y = _data(seed=1)
    endpoint = module_embedded_server.endpoint
    run = runstream.init("lgb", **quick_sdk_options(endpoint, tmp_path))
    results = lgb.cv(
        {**PARAMS, "metric": "binary_logloss"}, lgb.Dataset(X, label=y), num_boost_round=6, nfold=3,
        stratified=True, seed=0, callbacks=[RunstreamCallback(run)],
    )  # fmt: skip
    points = curves_after(run, endpoint)
    assert points["valid/binary_logloss"] == pytest.approx(
        dict(enumerate(results["valid binary_logloss-mean"]))
    )
    assert points["valid/binary_logloss_std"] == pytest.approx(
        dict(enumerate(results["valid binary_logloss-stdv"]))
    )

    second = runstream.init("lgb", **quick_sdk_options(endpoint, tmp_path))
    model = lgb.LGBMClassifier(n_estimators=5, num_leaves=5, verbose=-1).fit(
        X[:400],
        y[:400],
        eval_set=[(X[400:], y[400:])],
        eval_names=["holdout"],
        callbacks=[RunstreamCallback(second)],
    )
    log_booster(model, second, model=False, importance=None)
    points = curves_after(second, endpoint)
    assert points["holdout/binary_logloss"] == pytest.approx(
        dict(enumerate(model.evals_result_["holdout"]["binary_logloss"]))
    )
    record = read_run(endpoint, "lgb", second.id)
    assert record["config"]["lightgbm.num_leaves"] == 5 and record["summary"]["num_trees"] == 5
    assert not record["artifacts"] and not any(k.startswith("importance/") for k in record["summary"])
    with pytest.raises(TypeError, match="lightgbm.Booster"):
        log_booster({"not": "a booster"}, second)


def curves_after(run, endpoint):
    assert run.finish(timeout_s=30)
    return curves(endpoint, "lgb", run.id)
