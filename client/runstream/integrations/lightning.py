"""PyTorch Lightning: a Logger that records hyperparameters, every metric Lightning logs (at its
global step), a summary, the state the fit ended in and (optionally) the best checkpoint.

    from runstream.integrations.lightning import RunstreamLogger
    logger = RunstreamLogger(project="mnist", name="baseline", log_model=True)
    trainer = lightning.Trainer(max_epochs=10, logger=logger)
    trainer.fit(model, datamodule)

The logger starts its own run (project, name, tags, group, id and any runstream.init keyword)
when Lightning first asks for it, and finishes it when the fit or test ends: "success" becomes
finished, "failed" failed, any other status killed. A later trainer.fit / test / validate with the
same logger resumes that run. `RunstreamLogger(run=run)` (or no project while a run is current)
logs into a run of yours instead and leaves finishing it to you.

Metrics: Lightning's keys as they are ("train_loss", "val/acc", "epoch"), at Lightning's step
(optimizer steps, the x axis of every Lightning logger). Config: save_hyperparameters() of the
module and datamodule, under `config_prefix`. Summary at the end: the last value of each metric,
and with a ModelCheckpoint its best score and path. log_model=True logs the best (else last)
checkpoint as the artifact `model_name` (type "model") when the run finishes.

Ranks: like Lightning's own loggers, only global rank 0 logs (the other ranks get a no-op
experiment). all_ranks=True makes every rank log its own points into the same run (Runstream
keeps points per rank; rank 0 owns the config and summary): the ranks agree on the run id through
`id`, the launcher (torchrun, SLURM, MPI; see runstream.init) or, under Lightning's own launcher,
a broadcast from rank 0 when the trainer sets the run up.
"""

from __future__ import annotations

import uuid
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from runstream import states
from runstream._internal import distributed
from runstream._internal.start import init
from runstream.run import Run

from ._common import missing, numeric, plain_dict, resolve_run

try:
    import torch.distributed as torch_dist
    from lightning.pytorch.loggers.logger import DummyExperiment, Logger
    from lightning.pytorch.utilities.rank_zero import rank_zero_only
except ImportError as exc:
    raise missing("lightning", "lightning", exc) from None


WHO = "runstream.integrations.lightning"
#: Lightning's finalize statuses (Trainer: "success", "failed"; SLURM requeue: "finished")
FINISH_STATES = {"success": states.FINISHED, "finished": states.FINISHED, "failed": states.FAILED}


class RunstreamLogger(Logger):
    """A Lightning logger writing into a Runstream run; see the module's docstring."""

    def __init__(
        self,
        project: str | None = None,
        *,
        run: Run | None = None,
        name: str | None = None,
        id: str | None = None,
        tags: Any = None,
        group: str | None = None,
        config: Mapping[str, Any] | None = None,
        config_prefix: str = "",
        log_model: bool = False,
        model_name: str = "model",
        all_ranks: bool = False,
        **init_kwargs: Any,
    ):
        super().__init__()
        if run is not None and project is not None:
            raise ValueError(f"{WHO}: pass run= (log into your run) or project= (a run of its own), not both")
        self._project = project
        self._run = run
        self._owns = run is None and project is not None
        self._init = {"name": name, "tags": tags, "group": group, "config": config, **init_kwargs}
        self._id = id
        self.config_prefix = config_prefix
        self.log_model = log_model
        self.model_name = model_name
        self.all_ranks = all_ranks
        self._last: dict[str, float] = {}
        self._checkpoint_callback = None

    # ---- what Lightning asks of a logger ---------------------------------------------------

    @property
    def name(self) -> str:
        """The project (Lightning puts checkpoints under <default_root_dir>/<name>/<version>)."""
        if self._run is not None:
            return self._run.project
        return self._project or "runstream"

    @property
    def version(self) -> str:
        """The run id; asking for it on rank 0 starts the run."""
        if self._run is not None:
            return self._run.id
        if self._id is not None:
            return self._id
        if rank_zero_only.rank == 0 or self.all_ranks:
            return self.experiment.id
        return ""

    @property
    def experiment(self) -> Run | DummyExperiment:
        """The Runstream run (a no-op object on ranks that do not log)."""
        if not self._logs_here():
            return DummyExperiment()
        if self._run is None or (self._owns and self._run._finished):
            self._run = self._start()
        return self._run

    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        if not self._logs_here():
            return
        if isinstance(params, Namespace):
            params = vars(params)
        if params:
            self.experiment.config.update(plain_dict(params, self.config_prefix))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self._logs_here():
            return
        values = numeric(metrics)
        if values:
            self.experiment.log(values, step=step)
            self._last.update(values)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self._checkpoint_callback = checkpoint_callback

    def finalize(self, status: str) -> None:
        """The end of a fit, validate or test: summary, model, and (when the logger started the
        run) its final state."""
        if not self._logs_here() or self._run is None or self._run._finished:
            return
        run = self._run
        summary: dict[str, Any] = dict(self._last)
        checkpoint = self._checkpoint_callback
        path = ""
        if checkpoint is not None:
            path = checkpoint.best_model_path or checkpoint.last_model_path
            score = checkpoint.best_model_score
            if score is not None:
                summary["best_model_score"] = float(score)
            if checkpoint.best_model_path:
                summary["best_model_path"] = checkpoint.best_model_path
        if summary:
            run.summary.update(summary)
        if self.log_model and path and status in FINISH_STATES:
            run.log_artifact(path, name=self.model_name, type="model")
        if self._owns:
            run.finish(FINISH_STATES.get(status, states.KILLED))

    # ---- the run ---------------------------------------------------------------------------

    def _logs_here(self) -> bool:
        return self.all_ranks or rank_zero_only.rank == 0

    def _start(self) -> Run:
        """The logger's own run (or the current one when it was given no project). A resumed run
        when this logger finished it before (a test after the fit)."""
        if not self._owns:
            return resolve_run(None, WHO)
        rank = rank_zero_only.rank
        world = torch_dist.get_world_size() if _dist_ready() else 1
        resume = self._id is not None
        if self._id is None:
            self._id = self._agree_id(rank, world)
            resume = rank != 0
        kwargs = {k: v for k, v in self._init.items() if v is not None}
        return init(
            self._project, id=self._id, resume=resume, rank=rank if self.all_ranks else 0,
            world_size=world, **kwargs,
        )  # fmt: skip

    def _agree_id(self, rank: int, world: int) -> str:
        """A run id all logging ranks share: the launcher's, or rank 0's sent to the others (only
        with all_ranks, where every rank reaches here together: Lightning opens the experiment on
        every rank while setting up, before its pre-setup barrier)."""
        launched = distributed.launcher_run_id()
        if launched is not None:
            return launched
        new = uuid.uuid4().hex[:16]
        if self.all_ranks and world > 1:
            box = [new if rank == 0 else None]
            torch_dist.broadcast_object_list(box, src=0)
            return box[0]
        return new


def _dist_ready() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()
