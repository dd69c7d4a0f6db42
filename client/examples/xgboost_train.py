"""XGBoost into Runstream: every boosting round's train/valid metrics, the booster's parameters,
a summary (best iteration and score after early stopping) and the model file.

    runstream server &                        # or RUNSTREAM_ENDPOINT=host:port
    python client/examples/xgboost_train.py --project xgboost-example --rounds 200

Needs: pip install "runstream[xgboost]" (or xgboost-cpu on machines without a GPU).
"""

from __future__ import annotations

import argparse

import numpy as np
import xgboost as xgb

import runstream
from runstream.integrations.xgboost import RunstreamCallback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="xgboost-example")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--eta", type=float, default=0.1)
    parser.add_argument("--max-depth", type=int, default=4)
    args = parser.parse_args()

    rng = np.random.default_rng(0)  # a synthetic regression task: no downloads
    X = rng.normal(size=(5000, 10))
    y = X[:, 0] * 3 + np.sin(X[:, 1] * 2) + X[:, 2] * X[:, 3] + rng.normal(scale=0.5, size=len(X))
    dtrain, dvalid = xgb.DMatrix(X[:4000], label=y[:4000]), xgb.DMatrix(X[4000:], label=y[4000:])
    params = {
        "objective": "reg:squarederror",
        "eta": args.eta,
        "max_depth": args.max_depth,
        "eval_metric": "rmse",
    }

    with runstream.init(project=args.project, config={"rounds": args.rounds}) as run:
        booster = xgb.train(
            params, dtrain, args.rounds, evals=[(dtrain, "train"), (dvalid, "valid")],
            early_stopping_rounds=20, callbacks=[RunstreamCallback(log_model=True)], verbose_eval=False,
        )  # fmt: skip
        print(f"run {run.id}: best round {booster.best_iteration}, valid rmse {booster.best_score:.4f}")


if __name__ == "__main__":
    main()
