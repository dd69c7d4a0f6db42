"""PyTorch Lightning into Runstream: hyperparameters, train and validation metrics at every
optimizer step, the best checkpoint as the model artifact, and the state the fit ended in.

    runstream server &                        # or RUNSTREAM_ENDPOINT=host:port
    python client/examples/lightning_train.py --project lightning-example --epochs 5
    python client/examples/lightning_train.py --devices 2 --all-ranks   # DDP on CPU, every rank logs

Needs: pip install "runstream[lightning]". A small MLP on a synthetic regression task: no downloads.
"""

from __future__ import annotations

import argparse

import lightning
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from runstream.integrations.lightning import RunstreamLogger


class Regressor(lightning.LightningModule):
    def __init__(self, hidden: int = 16, lr: float = 0.01):
        super().__init__()
        self.save_hyperparameters()  # -> the run's config
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x).squeeze(-1), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x).squeeze(-1), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def loaders(batch_size: int) -> tuple[DataLoader, DataLoader]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=gen)
    y = x @ torch.linspace(-1, 1, 8) + 0.1 * torch.randn(256, generator=gen)
    train, valid = TensorDataset(x[:192], y[:192]), TensorDataset(x[192:], y[192:])
    return DataLoader(train, batch_size=batch_size), DataLoader(valid, batch_size=batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="lightning-example")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--devices", type=int, default=1, help="CPU processes; over 1 trains with DDP (gloo)")
    parser.add_argument("--all-ranks", action="store_true", help="every rank logs its own points")
    parser.add_argument("--root-dir", default=".", help="where Lightning writes checkpoints")
    args = parser.parse_args()

    lightning.seed_everything(0, verbose=False)
    logger = RunstreamLogger(
        project=args.project, name=f"mlp-{args.hidden}", tags={"example": "lightning"},
        log_model=True, all_ranks=args.all_ranks,
    )  # fmt: skip
    trainer = lightning.Trainer(
        accelerator="cpu", devices=args.devices, strategy="ddp" if args.devices > 1 else "auto",
        max_epochs=args.epochs, logger=logger, log_every_n_steps=1, default_root_dir=args.root_dir,
        callbacks=[lightning.pytorch.callbacks.ModelCheckpoint(monitor="val_loss")],
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    train, valid = loaders(args.batch_size)
    trainer.fit(Regressor(args.hidden, args.lr), train, valid)
    if trainer.is_global_zero:
        print(f"run {logger.version}: val_loss {trainer.callback_metrics['val_loss']:.4f}")


if __name__ == "__main__":
    main()
