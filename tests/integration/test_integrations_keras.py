"""runstream.integrations.keras against a real embedded server: a tiny Keras 3 model (JAX backend
on CPU) trained for three epochs with a validation split; batch and epoch metrics, the
optimizer's settings, the summary and the saved .keras model read back through runstream.Api."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")  # read when keras is first imported
pytest.importorskip("jax")
keras = pytest.importorskip("keras")

import runstream  # noqa: E402
from runstream.integrations.keras import RunstreamCallback  # noqa: E402
from tests.framework_reads import artifact_bytes, curves, read_run  # noqa: E402
from tests.sdk_options import quick_sdk_options  # noqa: E402

# keras' own optimizer.get_config() calls np.array on a variable (keras 3.15 with numpy 2.4)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)], name="tiny"
    )
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), loss="mse", metrics=["mae"])
    return model


def test_fit_logs_batches_epochs_config_summary_and_model(module_embedded_server, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(256, 4)).astype("float32")
    y = X @ np.array([1.0, -2.0, 0.5, 0.0], dtype="float32")
    model = _model()
    endpoint = module_embedded_server.endpoint
    with runstream.init("keras", **quick_sdk_options(endpoint, tmp_path)) as run:
        history = model.fit(
            X, y, epochs=3, batch_size=32, validation_split=0.25, verbose=0,
            callbacks=[RunstreamCallback(log_every_n_batches=2, log_model=True)],
        )  # fmt: skip
    batches = 6  # 192 training rows / 32 per epoch
    points = curves(endpoint, "keras", run.id)
    assert sorted(points["train/loss"]) == list(range(0, 3 * batches, 2))  # every second batch
    assert set(points["train/mae"]) == set(points["train/loss"])
    epoch_ends = [batches - 1, 2 * batches - 1, 3 * batches - 1]
    for key in ("loss", "mae", "val_loss", "val_mae"):
        assert points[key] == pytest.approx(
            dict(zip(epoch_ends, history.history[key], strict=True)), rel=1e-6
        )
    assert points["epoch"] == {5: 1.0, 11: 2.0, 17: 3.0}
    assert points["learning_rate"] == pytest.approx(dict.fromkeys(epoch_ends, 0.01))

    record = read_run(endpoint, "keras", run.id)
    config = record["config"]
    assert config["keras.optimizer.learning_rate"] == 0.01 and config["keras.optimizer.name"] == "adam"
    assert (
        config["keras.model"] == "tiny"
        and config["keras.params"] == model.count_params() == 4 * 8 + 8 + 8 + 1
    )
    assert config["keras.epochs"] == 3 and config["keras.steps"] == batches and config["keras.loss"] == "mse"
    summary = record["summary"]
    best_epoch = int(np.argmin(history.history["val_loss"])) + 1
    assert summary["best/val_loss"] == pytest.approx(min(history.history["val_loss"]), rel=1e-6)
    assert summary["best/val_loss_epoch"] == best_epoch and summary["epochs_trained"] == 3
    assert summary["steps_trained"] == 3 * batches
    assert summary["val_mae"] == pytest.approx(history.history["val_mae"][-1], rel=1e-6)

    manifest, data = artifact_bytes(endpoint, "keras", run.id, "model")
    assert manifest["type"] == "model" and manifest["path"] == "model.keras"
    (tmp_path / "restored.keras").write_bytes(data)
    restored = keras.saving.load_model(tmp_path / "restored.keras")
    np.testing.assert_allclose(restored.predict(X[:8], verbose=0), model.predict(X[:8], verbose=0), rtol=1e-6)


def test_epochs_only_into_an_explicit_run_and_no_run_is_an_error(module_embedded_server, tmp_path):
    X = np.random.default_rng(1).normal(size=(64, 4)).astype("float32")
    model = _model()
    with pytest.raises(runstream.NotInitializedError, match="runstream.init"):
        model.fit(X, X[:, 0], epochs=1, verbose=0, callbacks=[RunstreamCallback()])
    run = runstream.init("keras", **quick_sdk_options(module_embedded_server.endpoint, tmp_path))
    model.fit(
        X,
        X[:, 0],
        epochs=2,
        batch_size=16,
        verbose=0,
        callbacks=[RunstreamCallback(run, log_every_n_batches=0)],
    )
    assert run.finish(timeout_s=30)
    points = curves(module_embedded_server.endpoint, "keras", run.id)
    assert set(points) == {"loss", "mae", "epoch", "learning_rate"}  # no train/ batch keys
    assert sorted(points["loss"]) == [3, 7]
