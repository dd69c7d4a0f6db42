"""Child script of test_integrations_lightning.py, run in the PyTorch venv (tests/torch_venv.py):
the RunstreamLogger cases beside the example's plain fit, on the example's model and data.

    python lightning_cases.py cases PROJECT ROOT_DIR

1. a fit whose training_step raises at batch 3: the logger's run ends "failed";
2. fit, then trainer.test with the same logger: the test resumes the run the fit finished;
3. RunstreamLogger(run=run) into the caller's run: the logger does not finish it.
Prints {"failed": id, "resumed": id, "yours": id, "yours_open_after_fit": bool}.

    python lightning_cases.py ddp PROJECT ROOT_DIR

One DDP fit on two CPU processes (gloo; Lightning's launcher runs this script again as rank 1)
with two loggers: rank 0 only (project PROJECT-rank0) and every rank (PROJECT-all)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "client" / "examples"))
from lightning_train import Regressor, loaders  # noqa: E402

import runstream  # noqa: E402
from runstream.integrations.lightning import RunstreamLogger  # noqa: E402


class Breaks(Regressor):
    def training_step(self, batch, batch_idx):
        if self.global_step == 3:
            raise RuntimeError("training broke at step 3 (on purpose)")
        return super().training_step(batch, batch_idx)


class Tested(Regressor):
    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", nn.functional.mse_loss(self.net(x).squeeze(-1), y))


def trainer(logger, root: str, epochs: int = 1) -> lightning.Trainer:
    return lightning.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, logger=logger, log_every_n_steps=1,
        default_root_dir=root, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False,
    )  # fmt: skip


def ddp(project: str, root: str) -> None:
    train, valid = loaders(32)
    loggers = [
        RunstreamLogger(project=f"{project}-rank0", log_model=True),
        RunstreamLogger(project=f"{project}-all", all_ranks=True, log_model=True),
    ]
    fit = lightning.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=loggers, log_every_n_steps=1,
        default_root_dir=root, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[lightning.pytorch.callbacks.ModelCheckpoint(monitor="val_loss")],
    )  # fmt: skip
    fit.fit(Regressor(), train, valid)
    if fit.is_global_zero:
        print(json.dumps({"rank0": loggers[0].version, "all": loggers[1].version}))


def cases(project: str, root: str) -> None:
    train, valid = loaders(32)
    out = {}

    logger = RunstreamLogger(project=project, name="breaks")
    try:
        trainer(logger, root).fit(Breaks(), train, valid)
    except RuntimeError:
        pass
    out["failed"] = logger.version

    logger = RunstreamLogger(project=project, name="fit-then-test")
    fit_and_test = trainer(logger, root)
    model = Tested()
    fit_and_test.fit(model, train, valid)
    fit_and_test.test(model, valid)
    out["resumed"] = logger.version

    with runstream.init(project=project, name="yours", config={"mine": 1}) as run:
        trainer(RunstreamLogger(run=run), root).fit(Regressor(hidden=4), train, valid)
        out["yours_open_after_fit"] = not run._finished
        run.log({"after_fit": 1.0}, step=1000)
    out["yours"] = run.id
    print(json.dumps(out))


if __name__ == "__main__":
    {"cases": cases, "ddp": ddp}[sys.argv[1]](sys.argv[2], sys.argv[3])
