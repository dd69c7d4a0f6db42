"""LightGBM into Runstream: every iteration's validation metrics and the training parameters
through the callback, then log_booster for the best iteration, feature importance and the model.

    runstream server &                        # or RUNSTREAM_ENDPOINT=host:port
    python client/examples/lightgbm_train.py --project lightgbm-example

Needs: pip install "runstream[lightgbm]".
"""

from __future__ import annotations

import argparse

import lightgbm as lgb
import numpy as np

import runstream
from runstream.integrations.lightgbm import RunstreamCallback, log_booster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="lightgbm-example")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--num-leaves", type=int, default=15)
    args = parser.parse_args()

    rng = np.random.default_rng(0)  # a synthetic binary task: no downloads
    X = rng.normal(size=(5000, 8))
    y = (X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(scale=1.0, size=len(X)) > 0).astype(int)
    names = [f"f{i}" for i in range(X.shape[1])]
    train = lgb.Dataset(X[:4000], label=y[:4000], feature_name=names)
    valid = lgb.Dataset(X[4000:], label=y[4000:], reference=train)
    params = {"objective": "binary", "metric": ["binary_logloss", "auc"], "learning_rate": args.learning_rate,
              "num_leaves": args.num_leaves, "verbose": -1}  # fmt: skip

    with runstream.init(project=args.project) as run:
        booster = lgb.train(
            params, train, args.rounds, valid_sets=[valid], valid_names=["valid"],
            callbacks=[RunstreamCallback(), lgb.early_stopping(20, verbose=False)],
        )  # fmt: skip
        summary = log_booster(booster)
        print(
            f"run {run.id}: best iteration {summary['best_iteration']}, valid auc {summary['best/valid/auc']:.4f}"
        )


if __name__ == "__main__":
    main()
