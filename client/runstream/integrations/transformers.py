"""Hugging Face Transformers: a TrainerCallback that logs the training arguments and the model's
configuration, every metric the Trainer logs (at its global step), a summary and (optionally)
each checkpoint and the trained model into a run.

    from runstream.integrations.transformers import RunstreamCallback
    trainer = Trainer(model, args, train_dataset=..., eval_dataset=...,
                      callbacks=[RunstreamCallback(project="glue", log_model=True)])
    trainer.train()

or, like the Trainer's other trackers, by name (register_report_to() adds "runstream" to the
Trainer's table of integrations; the project comes from the current run or RUNSTREAM_PROJECT):

    from runstream.integrations.transformers import register_report_to
    register_report_to()
    TrainingArguments(..., report_to="runstream")

Which run: `run` when given; else a run of its own in `project` (named after args.run_name,
finished when training ends); else the current run (runstream.init before trainer.train); else a
run of its own in $RUNSTREAM_PROJECT. A run of its own that training finished is resumed by a
later trainer.evaluate() and finished at exit; a later train() starts a new one. A training that raises leaves its own run to the
SDK's exit hook, which marks it failed.

Metrics: the Trainer's logs at step = state.global_step, keys renamed as W&B's callback does:
"eval_loss" -> "eval/loss", "test_acc" -> "test/acc", any other -> "train/<key>" ("train/loss",
"train/learning_rate", "train/grad_norm", "train/epoch"). The end-of-training totals
(train_runtime, train_loss, total_flos, ...) go into the summary instead. Config: every
TrainingArguments field under `config_prefix` (default none: "learning_rate"), the model's
configuration under "model." and its parameter count as "model.num_parameters". Summary at the
end: the last value of each metric, global_step, epoch, best_metric and best_model_checkpoint
(with load_best_model_at_end / metric_for_best_model). log_checkpoints=True logs each checkpoint
folder when the Trainer saves it (artifact `checkpoint_name`, type "checkpoint"); log_model=True
logs the final model (and tokenizer / processor) as save_pretrained writes it (artifact
`model_name`, type "model").

Ranks: only the world's process zero logs (state.is_world_process_zero), as the Trainer's own
callbacks do.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

from runstream._internal import lifecycle
from runstream._internal.start import init
from runstream.errors import NotInitializedError, RefusedWarning
from runstream.run import Run

from ._common import ARTIFACT_FLUSH_S, log_written_file, missing, numeric, plain_dict

try:
    import transformers
    from transformers import TrainerCallback
except ImportError as exc:
    raise missing("transformers", "transformers", exc, " (and torch)") from None


WHO = "runstream.integrations.transformers"
PROJECT_ENV = "RUNSTREAM_PROJECT"
#: what the Trainer logs once, at the end of training: summary values, not curves
TOTALS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos")


def metric_key(key: str) -> str:
    """A Trainer log key as it is stored: eval_/test_ become eval/ and test/, others train/."""
    for prefix in ("eval_", "test_"):
        if key.startswith(prefix):
            return f"{prefix[:-1]}/{key[len(prefix) :]}"
    return f"train/{key}"


class RunstreamCallback(TrainerCallback):
    """Logs a Trainer's training into a run; see the module's docstring. `init_kwargs` go to
    runstream.init when the callback starts a run of its own (tags, group, id, endpoint...)."""

    def __init__(
        self,
        run: Run | None = None,
        *,
        project: str | None = None,
        log_config: bool = True,
        config_prefix: str = "",
        log_checkpoints: bool = False,
        checkpoint_name: str = "checkpoint",
        log_model: bool = False,
        model_name: str = "model",
        **init_kwargs: Any,
    ):
        if run is not None and project is not None:
            raise ValueError(f"{WHO}: pass run= (log into your run) or project= (a run of its own), not both")
        self.run = run
        self.project = project
        self.log_config = log_config
        self.config_prefix = config_prefix
        self.log_checkpoints = log_checkpoints
        self.checkpoint_name = checkpoint_name
        self.log_model = log_model
        self.model_name = model_name
        self.init_kwargs = init_kwargs
        self._target: Run | None = None
        self._owns = False
        self._last: dict[str, float] = {}

    # ---- the run ---------------------------------------------------------------------------

    def _open(self, args: Any) -> Run:
        """The run to log into, started (or resumed after training finished it) when needed."""
        target = self._target
        if target is not None and not target._finished:
            return target
        if target is not None and self._owns:  # an evaluate() after train(): the same run again
            kwargs = {**self._own_kwargs(args), "id": target.id, "resume": True}
            self._target = init(target.project, **kwargs)
            return self._target
        self._owns = False
        if self.run is not None:
            self._target = self.run
        elif self.project is not None:
            self._target, self._owns = self._start(self.project, args), True
        elif lifecycle.current_run() is not None:
            self._target = lifecycle.current_run()
        elif os.environ.get(PROJECT_ENV):
            self._target, self._owns = self._start(os.environ[PROJECT_ENV], args), True
        else:
            raise NotInitializedError(
                f"{WHO}: no run to log into: pass RunstreamCallback(project=...) or run=..., call "
                f"runstream.init before trainer.train(), or set {PROJECT_ENV} (report_to='runstream')"
            )
        return self._target

    def _own_kwargs(self, args: Any) -> dict[str, Any]:
        world = int(getattr(args, "world_size", 1) or 1)
        kwargs: dict[str, Any] = {"rank": 0, "world_size": world, "owns_config": True}
        return {**kwargs, **self.init_kwargs}

    def _start(self, project: str, args: Any) -> Run:
        kwargs = self._own_kwargs(args)
        run_name = getattr(args, "run_name", None)
        if run_name and "name" not in kwargs and run_name != getattr(args, "output_dir", None):
            kwargs["name"] = run_name  # older versions default run_name to output_dir
        kwargs.setdefault("resume", False)
        return init(project, **kwargs)

    # ---- the Trainer's events --------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        self._last = {}
        if self._owns and self._target is not None and self._target._finished:
            self._target = None  # a second train() (a hyperparameter search trial): a new run
        run = self._open(args)
        if self.log_config:
            run.config.update(self._config(args, model))

    def _config(self, args: Any, model: Any) -> dict[str, Any]:
        config = plain_dict(args.to_dict(), self.config_prefix)
        model_config = getattr(model, "config", None)
        if model_config is not None and hasattr(model_config, "to_dict"):
            config.update(plain_dict(model_config.to_dict(), "model."))
        if model is not None and hasattr(model, "num_parameters"):
            config["model.num_parameters"] = int(model.num_parameters())
        config["transformers_version"] = transformers.__version__
        return config

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        run = self._open(args)
        totals = {k: v for k, v in numeric(logs).items() if k in TOTALS}
        values = {metric_key(k): v for k, v in numeric(logs).items() if k not in TOTALS}
        if values:
            run.log(values, step=int(state.global_step))
            self._last.update(values)
        if totals:
            run.summary.update(totals)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        """The latest evaluation into the summary (its curve points come through on_log)."""
        if not state.is_world_process_zero or not metrics:
            return
        values = {metric_key(k): v for k, v in numeric(metrics).items()}
        if values:
            self._open(args).summary.update(values)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.log_checkpoints:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if not os.path.isdir(folder):
            warnings.warn(f"{WHO}: no checkpoint folder {folder} to log", RefusedWarning, stacklevel=2)
            return
        run = self._open(args)
        run.log_artifact(folder, name=self.checkpoint_name, type="checkpoint")
        # the Trainer may delete this folder at a later save (save_total_limit): read it now
        if not run.flush(ARTIFACT_FLUSH_S):
            warnings.warn(
                f"{WHO}: checkpoint {folder} not acknowledged within {ARTIFACT_FLUSH_S:.0f}s",
                RefusedWarning,
                stacklevel=2,
            )

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not state.is_world_process_zero:
            return
        run = self._open(args)
        summary: dict[str, Any] = dict(self._last)
        summary["global_step"] = int(state.global_step)
        if state.epoch is not None:
            summary["epoch"] = float(state.epoch)
        if state.best_metric is not None:
            summary["best_metric"] = float(state.best_metric)
        if state.best_model_checkpoint:
            summary["best_model_checkpoint"] = state.best_model_checkpoint
        run.summary.update(summary)
        if self.log_model and model is not None:
            log_written_file(
                run, lambda path: _save_pretrained(path, model, processing_class), "model", self.model_name
            )
        if self._owns:
            run.finish()


def _save_pretrained(path: Any, model: Any, processing_class: Any) -> None:
    model.save_pretrained(path)
    if processing_class is not None and hasattr(processing_class, "save_pretrained"):
        processing_class.save_pretrained(path)


def register_report_to(name: str = "runstream") -> None:
    """Makes TrainingArguments(report_to="runstream") add RunstreamCallback() ("all" keeps meaning
    the Trainer's own fixed list): puts it in transformers.integrations.integration_utils.INTEGRATION_TO_CALLBACK, the table the Trainer
    reads its report_to names from. Transformers has no public registry, so this edits that dict
    (for this process, from the call on); the callback it adds takes no arguments, so the run is
    the current one or a new one in $RUNSTREAM_PROJECT."""
    from transformers.integrations import integration_utils

    table: Mapping[str, Any] | None = getattr(integration_utils, "INTEGRATION_TO_CALLBACK", None)
    if not isinstance(table, dict):
        raise RuntimeError(
            f"{WHO}: transformers {transformers.__version__} has no INTEGRATION_TO_CALLBACK table to "
            "register in; pass callbacks=[RunstreamCallback(...)] to the Trainer instead"
        )
    table[name] = RunstreamCallback
