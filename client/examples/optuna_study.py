"""Optuna into Runstream: each trial of a study becomes a run (its params, objective value,
per-epoch curves logged live from the objective, and state), the study being the group; pruned
trials show where they stopped.

    runstream server &                        # or RUNSTREAM_ENDPOINT=host:port
    python client/examples/optuna_study.py --project optuna-example --trials 30
    # then: runstream.Api().runs("optuna-example", filter='group = "sgd-sweep"', order_by="-metrics.value")

Needs: pip install "runstream[optuna,sklearn]".
"""

from __future__ import annotations

import argparse

import numpy as np
import optuna
from sklearn.datasets import load_digits
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import train_test_split

import runstream
from runstream.integrations.optuna import RunstreamCallback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="optuna-example")
    parser.add_argument("--study", default="sgd-sweep")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()

    X, y = load_digits(return_X_y=True)
    X_train, X_valid, y_train, y_valid = train_test_split(X / 16.0, y, test_size=0.3, random_state=0)
    classes = np.unique(y)

    callback = RunstreamCallback(project=args.project)

    @callback.track  # the trial's run is current while the objective runs: runstream.log lands in it
    def objective(trial: optuna.Trial) -> float:
        model = SGDClassifier(
            alpha=trial.suggest_float("alpha", 1e-6, 1e-1, log=True),
            loss=trial.suggest_categorical("loss", ["hinge", "log_loss", "modified_huber"]),
            random_state=0,
        )
        accuracy = 0.0
        for epoch in range(args.epochs):  # one pass per epoch; the pruner may stop a poor trial
            model.partial_fit(X_train, y_train, classes=classes)
            accuracy = model.score(X_valid, y_valid)
            runstream.log(
                {"val_accuracy": accuracy, "train_accuracy": model.score(X_train, y_train)}, step=epoch
            )
            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return accuracy

    study = optuna.create_study(
        study_name=args.study, direction="maximize", pruner=optuna.pruners.MedianPruner(n_warmup_steps=2)
    )
    study.optimize(objective, n_trials=args.trials, callbacks=[callback])
    best = study.best_trial
    print(
        f"{len(callback.run_ids)} trials logged; best: trial {best.number} ({best.value:.4f}), run {callback.run_ids[best.number]}"
    )


if __name__ == "__main__":
    main()
