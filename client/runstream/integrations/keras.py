"""Keras 3 (any backend: JAX, TensorFlow, PyTorch): a callback that logs batch and epoch metrics,
the optimizer and training parameters, a summary and (optionally) the saved model into a run.

    from runstream.integrations.keras import RunstreamCallback
    with runstream.init(project="mnist") as run:
        model.fit(x, y, epochs=10, validation_split=0.1, callbacks=[RunstreamCallback(log_model=True)])

Steps count batches over the whole training (the global step, from 0), so batch and epoch
metrics share one x axis. Every `log_every_n_batches` batches, Keras' running values of the epoch
are logged as "train/<metric>" (e.g. "train/loss"); at each epoch's end its logs are logged under
their Keras names ("loss", "val_loss", "mae", ...) with "epoch" (1-based) and "learning_rate" at the
step of that epoch's last batch. Config: the optimizer's settings ("optimizer.<key>", float32
values rounded to 7 significant digits), the model name, its parameter count, epochs and
steps per epoch, the loss; under `config_prefix`. Summary at the end: the last epoch's logs,
epochs trained, and per monitored metric the best value and its epoch ("best/val_loss",
"best/val_loss_epoch"). The model, when asked for, is the artifact `model_name` (type "model",
Keras' .keras format).
"""

from __future__ import annotations

import math
from typing import Any

from runstream.run import Run

from ._common import log_written_file, missing, numeric, plain, resolve_run

try:
    import keras
except ImportError as exc:
    raise missing(
        "keras",
        "keras",
        exc,
        " and a backend, named by KERAS_BACKEND before keras is imported (jax, tensorflow, torch)",
    ) from None


WHO = "runstream.integrations.keras"


class RunstreamCallback(keras.callbacks.Callback):
    """Logs a Keras fit into `run` (default: the current run when training starts). `monitor`:
    metrics whose best epoch goes into the summary (lower is better unless the name holds "acc",
    "auc", "precision", "recall" or "f1", as for keras.callbacks.EarlyStopping's mode="auto")."""

    def __init__(
        self,
        run: Run | None = None,
        *,
        log_every_n_batches: int = 1,
        log_config: bool = True,
        config_prefix: str = "keras.",
        monitor: tuple[str, ...] = ("val_loss", "loss"),
        log_model: bool = False,
        model_name: str = "model",
    ):
        super().__init__()
        if log_every_n_batches < 0:
            raise ValueError(f"log_every_n_batches={log_every_n_batches}: use 0 (epochs only) or more")
        self.run = run
        self.log_every_n_batches = log_every_n_batches
        self.log_config = log_config
        self.config_prefix = config_prefix
        self.monitor = tuple(monitor)
        self.log_model = log_model
        self.model_name = model_name
        self._target: Run | None = None
        self._step = 0  # batches trained in this fit
        self._epochs = 0
        self._last: dict[str, float] = {}
        self._best: dict[str, tuple[float, int]] = {}

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._target = resolve_run(self.run, WHO)
        self._step, self._epochs, self._last, self._best = 0, 0, {}, {}
        if self.log_config:
            self._target.config.update(self._config())

    def _config(self) -> dict[str, Any]:
        p = self.config_prefix
        config: dict[str, Any] = {f"{p}model": self.model.name, f"{p}params": int(self.model.count_params())}
        for key in ("epochs", "steps"):
            if self.params.get(key) is not None:
                config[f"{p}{key}"] = int(self.params[key])
        loss = getattr(self.model, "loss", None)  # set by compile; absent on an uncompiled model
        if loss is not None:
            config[f"{p}loss"] = loss if isinstance(loss, str) else getattr(loss, "name", repr(loss))
        optimizer = self.model.optimizer
        if optimizer is not None:
            for key, value in optimizer.get_config().items():
                value = plain(value)
                if isinstance(value, float):
                    value = float(f"{value:.7g}")  # float32 settings: 0.009999999776 -> 0.01
                config[f"{p}optimizer.{key}"] = value
        return config

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        n = self.log_every_n_batches
        if n and logs and self._step % n == 0:
            values = numeric(logs)
            if values:
                self._target.log({f"train/{k}": v for k, v in values.items()}, step=self._step)
        self._step += 1

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        values = numeric(logs or {})
        self._epochs = epoch + 1
        values["epoch"] = epoch + 1
        optimizer = self.model.optimizer
        if optimizer is not None and "learning_rate" not in values:
            try:
                values["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
            except (TypeError, ValueError):  # a schedule object that is not a number
                pass
        self._target.log(values, step=max(self._step - 1, 0))
        self._last = values
        for key in self.monitor:
            value = values.get(key)
            if value is None or math.isnan(value):
                continue
            best = self._best.get(key)
            higher = any(word in key for word in ("acc", "auc", "precision", "recall", "f1"))
            if best is None or (value > best[0] if higher else value < best[0]):
                self._best[key] = (value, epoch + 1)

    def on_train_end(self, logs: dict | None = None) -> None:
        run = self._target
        summary: dict[str, Any] = {k: v for k, v in self._last.items() if k != "epoch"}
        summary["epochs_trained"] = self._epochs
        summary["steps_trained"] = self._step
        for key, (value, epoch) in self._best.items():
            summary[f"best/{key}"] = value
            summary[f"best/{key}_epoch"] = epoch
        run.summary.update(summary)
        if self.log_model:
            log_written_file(run, lambda path: self.model.save(str(path)), "model.keras", self.model_name)
