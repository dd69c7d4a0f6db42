"""runstream.integrations.sklearn against a real embedded server: a fitted estimator's params,
test metrics, summary and pickled model, and a GridSearchCV / RandomizedSearchCV as one run per
candidate in one group, read back through runstream.Api."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.datasets import load_diabetes, load_iris  # noqa: E402
from sklearn.linear_model import LogisticRegression, Ridge  # noqa: E402
from sklearn.metrics import accuracy_score, r2_score  # noqa: E402
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import runstream  # noqa: E402
from runstream.integrations import sklearn as rs_sklearn  # noqa: E402
from tests.framework_reads import artifact_bytes, curves, read_run  # noqa: E402
from tests.sdk_options import quick_sdk_options  # noqa: E402


def test_fitted_classifier_params_metrics_summary_and_model(module_embedded_server, tmp_path):
    X, y = load_iris(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=200)).fit(X_train, y_train)
    endpoint = module_embedded_server.endpoint
    with runstream.init("sk", name="logreg", **quick_sdk_options(endpoint, tmp_path)) as run:
        logged = rs_sklearn.log_estimator(model, X_test, y_test)
    accuracy = accuracy_score(y_test, model.predict(X_test))
    assert logged["metrics"]["test/accuracy"] == accuracy

    record = read_run(endpoint, "sk", run.id)
    config = record["config"]
    assert config["logisticregression__C"] == 0.5 and config["logisticregression__max_iter"] == 200
    assert config["estimator"] == "Pipeline" and config["standardscaler__with_mean"] is True
    assert config["logisticregression"].startswith("LogisticRegression(")  # an object: its repr
    assert record["summary"]["test/accuracy"] == accuracy
    assert 0 < record["summary"]["test/log_loss"] < 1 and record["summary"]["test/roc_auc"] > 0.9
    assert record["state"] == "finished"
    points = curves(endpoint, "sk", run.id)
    assert points["test/accuracy"] == {0: accuracy}
    assert set(points) == {f"test/{k}" for k in (
        "accuracy", "balanced_accuracy", "f1", "precision", "recall", "log_loss", "roc_auc")}  # fmt: skip

    manifest, data = artifact_bytes(endpoint, "sk", run.id, "model")
    assert manifest["type"] == "model" and manifest["path"] == "model.pkl"
    restored = pickle.loads(data)
    np.testing.assert_array_equal(restored.predict(X_test), model.predict(X_test))


def test_regressor_metrics_at_a_given_step_into_an_explicit_run(module_embedded_server, tmp_path):
    X, y = load_diabetes(return_X_y=True)
    endpoint = module_embedded_server.endpoint
    run = runstream.init("sk", **quick_sdk_options(endpoint, tmp_path))
    for step, alpha in enumerate([0.01, 1.0]):
        model = Ridge(alpha=alpha).fit(X[:300], y[:300])
        rs_sklearn.log_metrics(model, X[300:], y[300:], run=run, prefix="val/", step=step * 10)
    rs_sklearn.log_params(model, run=run)
    assert run.finish(timeout_s=30)
    points = curves(endpoint, "sk", run.id)
    assert sorted(points["val/r2"]) == [0, 10]
    assert points["val/r2"][10] == pytest.approx(r2_score(y[300:], model.predict(X[300:])))
    assert points["val/rmse"][10] == pytest.approx(np.sqrt(points["val/mse"][10]))
    record = read_run(endpoint, "sk", run.id)
    assert record["config"]["alpha"] == 1.0 and record["config"]["estimator"] == "Ridge"
    assert record["summary"]["val/r2"] == points["val/r2"][10]  # the summary holds the latest


def test_grid_search_logs_one_run_per_candidate_in_one_group(module_embedded_server, tmp_path):
    X, y = load_iris(return_X_y=True)
    search = GridSearchCV(
        LogisticRegression(max_iter=300), {"C": [0.01, 1.0], "fit_intercept": [True, False]},
        cv=3, scoring=["accuracy", "f1_macro"], refit="accuracy", return_train_score=True,
    ).fit(X, y)  # fmt: skip
    endpoint = module_embedded_server.endpoint
    with runstream.init("sk", name="outer", **quick_sdk_options(endpoint, tmp_path)) as outer:
        run_ids = rs_sklearn.log_search(
            search, "sk", group="grid-1", progress=False, tags={"sweep": "iris"},
            **quick_sdk_options(endpoint, tmp_path),
        )  # fmt: skip
        assert runstream.current_run() is outer  # the user's run is current again
    results = search.cv_results_
    assert len(run_ids) == len(results["params"]) == 4 and len(set(run_ids)) == 4

    with runstream.Api(endpoint=endpoint) as api:
        table = api.runs("sk", filter='group = "grid-1"')
        best = api.runs("sk", filter='group = "grid-1"', order_by="-metrics.`cv/mean_test_accuracy`", limit=1)
    assert sorted(table.run_id) == sorted(run_ids)
    assert set(table.job_type) == {"cv-candidate"} and set(table.state) == {"finished"}
    assert best.run_id[0] == run_ids[int(np.argmin(results["rank_test_accuracy"]))]
    for i, run_id in enumerate(run_ids):
        record = read_run(endpoint, "sk", run_id)
        params = results["params"][i]
        assert (
            record["config"]["C"] == params["C"]
            and record["config"]["fit_intercept"] == params["fit_intercept"]
        )
        assert record["config"]["search.class"] == "GridSearchCV" and record["config"]["search.n_splits"] == 3
        assert record["name"] == f"candidate-{i:03d}" and record["tags"]["sweep"] == "iris"
        assert ("best" in record["tags"]) == (results["rank_test_accuracy"][i] == 1)
        summary = record["summary"]
        assert summary["cv/mean_test_accuracy"] == pytest.approx(results["mean_test_accuracy"][i])
        assert summary["cv/rank_test_f1_macro"] == results["rank_test_f1_macro"][i]
        assert summary["cv/mean_train_accuracy"] == pytest.approx(results["mean_train_accuracy"][i])
        assert summary["cv/candidate"] == i
        points = curves(endpoint, "sk", run_id)
        assert points["cv/split_test_accuracy"] == pytest.approx(
            {fold: results[f"split{fold}_test_accuracy"][i] for fold in range(3)}
        )
        assert points["cv/split_train_f1_macro"][2] == pytest.approx(results["split2_train_f1_macro"][i])
        assert points["cv/mean_test_accuracy"] == pytest.approx({3: results["mean_test_accuracy"][i]})


def test_randomized_search_with_a_single_score_and_a_generated_group(module_embedded_server, tmp_path):
    X, y = load_diabetes(return_X_y=True)
    search = RandomizedSearchCV(Ridge(), {"alpha": [0.001, 0.1, 10.0, 100.0]}, n_iter=3, cv=2, random_state=0)
    with pytest.raises(ValueError, match="call fit first"):
        rs_sklearn.log_search(search, "sk-rand")
    search.fit(X, y)
    endpoint = module_embedded_server.endpoint
    run_ids = rs_sklearn.log_search(
        search, "sk-rand", progress=False, **quick_sdk_options(endpoint, tmp_path)
    )
    assert runstream.current_run() is None
    with runstream.Api(endpoint=endpoint) as api:
        table = api.runs("sk-rand")
    assert sorted(table.run_id) == sorted(run_ids) and len(run_ids) == 3
    groups = set(table.group)
    assert len(groups) == 1 and groups.pop().startswith("randomizedsearchcv-")
    by_id = dict(zip(table.run_id, table["config.alpha"], strict=True))
    assert [by_id[r] for r in run_ids] == [p["alpha"] for p in search.cv_results_["params"]]
    points = curves(endpoint, "sk-rand", run_ids[0])
    assert set(points) >= {
        "cv/split_test_score",
        "cv/mean_test_score",
        "cv/rank_test_score",
        "cv/mean_fit_time",
    }
    assert sorted(points["cv/split_test_score"]) == [0, 1]
