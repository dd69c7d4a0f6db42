"""Keras 3 into Runstream: batch and epoch metrics, the optimizer's settings, the best epoch and
the saved model of a small classifier on scikit-learn's digits (shipped with it: no downloads).

    runstream server &                        # or RUNSTREAM_ENDPOINT=host:port
    KERAS_BACKEND=jax python client/examples/keras_train.py --project keras-example --epochs 10

Needs: pip install "runstream[keras]" jax (or another Keras backend: tensorflow, torch), and
scikit-learn for the data set.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported; the caller's choice wins

import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import runstream  # noqa: E402
from runstream.integrations.keras import RunstreamCallback  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="keras-example")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=64)
    args = parser.parse_args()

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype("float32")
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(args.hidden, activation="relu"), keras.layers.Dense(10)],
        name="digits-mlp",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(args.lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    with runstream.init(project=args.project, config={"batch_size": args.batch_size}) as run:
        model.fit(
            X, y, epochs=args.epochs, batch_size=args.batch_size, validation_split=0.2, verbose=0,
            callbacks=[RunstreamCallback(log_every_n_batches=5, log_model=True)],
        )  # fmt: skip
        print(f"run {run.id}: best val_loss {run.summary['best/val_loss']:.4f}")


if __name__ == "__main__":
    main()
