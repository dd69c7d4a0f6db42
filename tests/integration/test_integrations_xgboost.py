"""runstream.integrations.xgboost against a real embedded server: xgb.train with two eval sets
and early stopping, xgb.cv, and the scikit-learn API (through sklearn's clone, which deep-copies
the callback), each read back through runstream.Api."""

from __future__ import annotations

import numpy as np
import pytest

xgb = pytest.importorskip("xgboost")

import runstream  # noqa: E402
from runstream.integrations.xgboost import RunstreamCallback  # noqa: E402
from tests.framework_reads import artifact_bytes, curves, read_run  # noqa: E402
from tests.sdk_options import quick_sdk_options  # noqa: E402


def _data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    y = X[:, 0] * 2.0 - X[:, 1] + rng.normal(scale=0.3, size=n)
    return X, y


def test_train_logs_every_round_config_summary_and_model(module_embedded_server, tmp_path):
    X, y = _data()
    dtrain, dvalid = xgb.DMatrix(X[:300], label=y[:300]), xgb.DMatrix(X[300:], label=y[300:])
    params = {
        "max_depth": 3,
        "eta": 0.3,
        "objective": "reg:squarederror",
        "eval_metric": ["rmse", "mae"],
        "seed": 7,
    }
    recorded: dict = {}
    endpoint = module_embedded_server.endpoint
    with runstream.init("xgb", **quick_sdk_options(endpoint, tmp_path)) as run:
        booster = xgb.train(
            params, dtrain, 30, evals=[(dtrain, "train"), (dvalid, "valid")], evals_result=recorded,
            early_stopping_rounds=3, callbacks=[RunstreamCallback(log_model=True)], verbose_eval=False,
        )  # fmt: skip
    rounds = booster.num_boosted_rounds()
    points = curves(endpoint, "xgb", run.id)
    assert set(points) == {"train/rmse", "train/mae", "valid/rmse", "valid/mae"}
    for key, values in points.items():
        data, metric = key.split("/")
        assert values == pytest.approx(dict(enumerate(recorded[data][metric])))
        assert sorted(values) == list(range(rounds))

    record = read_run(endpoint, "xgb", run.id)
    config = record["config"]
    assert config["xgboost.max_depth"] == 3 and config["xgboost.eta"] == 0.3 and config["xgboost.seed"] == 7
    assert config["xgboost.objective"] == "reg:squarederror" and config["xgboost.eval_metric"] == [
        "rmse",
        "mae",
    ]
    summary = record["summary"]
    assert summary["best_iteration"] == booster.best_iteration and summary["num_boosted_rounds"] == rounds
    assert summary["best_score"] == pytest.approx(min(recorded["valid"]["mae"]))  # the last metric decides
    assert summary["valid/rmse"] == pytest.approx(recorded["valid"]["rmse"][-1])

    manifest, data = artifact_bytes(endpoint, "xgb", run.id, "model")
    assert manifest["type"] == "model" and manifest["path"] == "model.json"
    restored = xgb.Booster()
    restored.load_model(bytearray(data))
    np.testing.assert_allclose(restored.predict(dvalid), booster.predict(dvalid))


def test_cv_means_and_stds_and_the_sklearn_api_through_clone(module_embedded_server, tmp_path):
    from sklearn.base import clone

    X, y = _data(seed=1)
    endpoint = module_embedded_server.endpoint
    run = runstream.init("xgb", **quick_sdk_options(endpoint, tmp_path))
    frame = xgb.cv(
        {"max_depth": 2, "objective": "reg:squarederror"}, xgb.DMatrix(X, label=y), num_boost_round=5, nfold=3,
        seed=0, callbacks=[RunstreamCallback(run, config_prefix="cv.")],
    )  # fmt: skip
    assert run.finish(timeout_s=30)
    points = curves(endpoint, "xgb", run.id)
    assert points["test/rmse"] == pytest.approx(dict(enumerate(frame["test-rmse-mean"])))
    assert points["test/rmse_std"] == pytest.approx(dict(enumerate(frame["test-rmse-std"])))
    assert points["train/rmse"] == pytest.approx(dict(enumerate(frame["train-rmse-mean"])))

    second = runstream.init("xgb", **quick_sdk_options(endpoint, tmp_path))
    template = xgb.XGBRegressor(n_estimators=4, max_depth=2, callbacks=[RunstreamCallback(second)])
    model = clone(template).fit(X[:300], y[:300], eval_set=[(X[300:], y[300:])], verbose=False)
    assert second.finish(timeout_s=30)
    points = curves(endpoint, "xgb", second.id)
    assert points["validation_0/rmse"] == pytest.approx(
        dict(enumerate(model.evals_result()["validation_0"]["rmse"]))
    )
    record = read_run(endpoint, "xgb", second.id)
    assert record["config"]["xgboost.max_depth"] == 2 and record["summary"]["num_boosted_rounds"] == 4
    assert "model" not in {a["name"] for a in record["artifacts"]}  # log_model defaults to off


def test_two_ranks_of_one_job_log_their_rounds_into_one_run_each_with_its_rank(
    module_embedded_server, tmp_path
):
    """As a distributed job does (the launcher gives both ranks one run id): each rank trains on
    its shard with its own callback; every point carries its rank, rank 0 owns config and summary."""
    X, y = _data(seed=2)
    options = quick_sdk_options(module_embedded_server.endpoint, tmp_path)
    ranks = [runstream.init("xgb", id="job-7", rank=r, world_size=2, **options) for r in (0, 1)]
    recorded = [{}, {}]
    for r, run in enumerate(ranks):
        shard = xgb.DMatrix(X[r::2], label=y[r::2])
        xgb.train(
            {"max_depth": 2 + r, "objective": "reg:squarederror"}, shard, 4, evals=[(shard, "train")],
            evals_result=recorded[r], callbacks=[RunstreamCallback(run)], verbose_eval=False,
        )  # fmt: skip
    assert all(run.finish(timeout_s=30) for run in ranks)
    with runstream.Api(endpoint=module_embedded_server.endpoint) as api:
        history = api.history("job-7", keys=["train/rmse"], project="xgb")
    for r in (0, 1):
        mine = history[history["rank"] == r].sort_values("step")
        assert list(mine.step) == [0, 1, 2, 3]
        assert list(mine.value) == pytest.approx(recorded[r]["train"]["rmse"])
    record = read_run(module_embedded_server.endpoint, "xgb", "job-7")
    assert record["config"]["xgboost.max_depth"] == 2  # rank 0's; rank 1 keeps its config local
