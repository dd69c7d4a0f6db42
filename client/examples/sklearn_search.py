"""scikit-learn into Runstream: a grid search logged as one run per candidate (one group), then
the refitted best model with its params, test metrics and pickled file as a run of its own.

    runstream server &                        # or RUNSTREAM_ENDPOINT=host:port
    python client/examples/sklearn_search.py --project sklearn-example
    RUNSTREAM_MODE=offline python ...         # no server: spool, then `runstream sync`

Needs: pip install "runstream[sklearn]".
"""

from __future__ import annotations

import argparse
import uuid

from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import runstream
from runstream.integrations import sklearn as rs_sklearn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="sklearn-example")
    parser.add_argument("--folds", type=int, default=3)
    args = parser.parse_args()

    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    grid = {
        "logisticregression__C": [0.01, 0.1, 1.0, 10.0],
        "logisticregression__class_weight": [None, "balanced"],
    }
    search = GridSearchCV(pipeline, grid, cv=args.folds, scoring=["accuracy", "roc_auc"], refit="roc_auc")
    search.fit(X_train, y_train)

    group = f"grid-{uuid.uuid4().hex[:8]}"  # the candidates and the refit share it
    run_ids = rs_sklearn.log_search(search, args.project, group=group)
    print(f"logged {len(run_ids)} candidates in group {group}")
    with runstream.init(project=args.project, name="best-refit", group=group, job_type="refit") as run:
        logged = rs_sklearn.log_estimator(search.best_estimator_, X_test, y_test)
        print(f"run {run.id}: test accuracy {logged['metrics']['test/accuracy']:.3f}")


if __name__ == "__main__":
    main()
