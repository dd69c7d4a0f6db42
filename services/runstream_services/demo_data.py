"""The data of the demo sweep (demo.py logs it): the 24-trial grid over learning rate, batch size,
optimizer and dropout, plausible learning curves whose shape follows the params (too high a
learning rate with small batches diverges, low dropout overfits), system-metric samples, and a
confusion-matrix PNG. Pure numpy and seeded: the same trial always gives the same numbers."""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

GROUP = "grid-1"
STEPS = 2000
VAL_EVERY = 100
LRS = (3e-4, 1e-3, 3e-3)
BATCH_SIZES = (32, 128)
OPTIMIZERS = ("adam", "sgd")
DROPOUTS = (0.1, 0.3)
CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class TrialSpec:
    index: int
    lr: float
    batch_size: int
    optimizer: str
    dropout: float

    @property
    def name(self) -> str:
        return f"{self.optimizer}-lr{self.lr:g}-bs{self.batch_size}-do{self.dropout:g}"

    @property
    def diverges(self) -> bool:
        return self.lr >= 3e-3 and self.batch_size == 32 and self.optimizer == "adam"

    @property
    def killed(self) -> bool:
        return (self.lr, self.batch_size, self.optimizer, self.dropout) == (3e-4, 128, "sgd", 0.3)

    def config(self) -> dict:
        optimizer = {"name": self.optimizer, "lr": self.lr, "weight_decay": 5e-4}
        if self.optimizer == "sgd":
            optimizer["momentum"] = 0.9
        else:
            optimizer["betas"] = [0.9, 0.999]
        return {
            "model": {"arch": "resnet18", "width": 64, "dropout": self.dropout},
            "optimizer": optimizer,
            "data": {"dataset": "cifar10", "batch_size": self.batch_size, "augment": True},
            "schedule": {"type": "cosine", "warmup_steps": 100},
            "steps": STEPS,
            "seed": 1000 + self.index,
        }


def grid() -> list[TrialSpec]:
    combos = itertools.product(LRS, BATCH_SIZES, OPTIMIZERS, DROPOUTS)
    return [TrialSpec(i, *combo) for i, combo in enumerate(combos)]


@dataclass
class Curves:
    """Everything one fake training logs, as arrays over steps."""

    loss: np.ndarray
    acc: np.ndarray
    lr: np.ndarray
    val_steps: np.ndarray
    val_loss: np.ndarray
    val_acc: np.ndarray
    val_f1: np.ndarray
    diverged_at: int | None


def simulate(spec: TrialSpec, steps: int = STEPS) -> Curves:
    """Plausible learning curves whose shape follows the params, with seeded noise."""
    rng = np.random.default_rng(1000 + spec.index)
    t = np.arange(steps, dtype=float)
    best_lr = 1e-3 if spec.optimizer == "adam" else 3e-3
    miss = math.log10(spec.lr / best_lr) ** 2
    final_acc = (
        0.93 - 0.08 * miss - (0.025 if spec.optimizer == "sgd" else 0.0) - 0.01 * (spec.batch_size == 128)
    )
    final_acc -= 0.012 if spec.dropout == 0.3 else 0.0
    tau = 420 * math.sqrt(1e-3 / spec.lr) * (spec.batch_size / 128) ** 0.3
    floor = 0.05 + 1.5 * (0.95 - final_acc)
    warm = np.minimum(1.0, (t + 1) / 100)
    schedule = spec.lr * warm * 0.5 * (1 + np.cos(np.pi * t / steps))
    noise = rng.normal(0, 0.12 / math.sqrt(spec.batch_size / 32), steps)
    loss = (floor + (2.3 - floor) * np.exp(-t / tau)) * np.exp(noise)
    acc = np.clip(1 - loss / 2.45 + rng.normal(0, 0.015, steps), 0, 1)
    diverged_at = None
    if spec.diverges:
        diverged_at = int(rng.integers(500, 900))
        blow = np.exp(np.clip(t - diverged_at + 60, 0, None) / 18)
        loss = loss * blow
        loss[diverged_at:] = np.nan
        acc[diverged_at - 60 :] = np.clip(0.1 + rng.normal(0, 0.02, steps - diverged_at + 60), 0, 1)
    val_steps = np.arange(VAL_EVERY, steps + 1, VAL_EVERY) - 1
    progress = 1 - np.exp(-val_steps / tau)
    overfit = (0.25 if spec.dropout == 0.1 else 0.06) * np.clip((val_steps - 900) / steps, 0, None)
    val_loss = floor * 1.15 + (2.3 - floor) * (1 - progress) + overfit + rng.normal(0, 0.02, len(val_steps))
    val_acc = np.clip(
        0.1 + (final_acc - 0.1) * progress - overfit / 6 + rng.normal(0, 0.006, len(val_steps)), 0, 1
    )
    val_f1 = np.clip(val_acc - 0.012 + rng.normal(0, 0.004, len(val_steps)), 0, 1)
    if diverged_at is not None:  # the last evaluations before the NaN already show the blow-up
        bad = val_steps >= diverged_at - 150
        val_loss[bad] = 2.3 * np.exp((val_steps[bad] - diverged_at + 150) / 60)
        val_acc[bad] = 0.1 + rng.normal(0, 0.01, bad.sum())
        val_f1[bad] = val_acc[bad] - 0.02
    return Curves(loss, acc, schedule, val_steps, val_loss, val_acc, val_f1, diverged_at)


# ---------------------------------------------------------------- a tiny PNG writer


def png_bytes(pixels: np.ndarray) -> bytes:
    """Encodes an (h, w, 3) uint8 array as PNG (zlib + CRC chunks; no imaging library needed)."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[row].astype(np.uint8).tobytes() for row in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def confusion_matrix_png(accuracy: float, seed: int, cell: int = 24) -> bytes:
    """A 10-class confusion matrix heat map whose diagonal reflects `accuracy`."""
    rng = np.random.default_rng(seed)
    n = len(CLASSES)
    m = rng.dirichlet(np.ones(n) * 0.6, size=n) * (1 - accuracy)
    m[np.arange(n), np.arange(n)] = accuracy + rng.normal(0, 0.03, n)
    m = np.clip(m / m.sum(axis=1, keepdims=True), 0, 1)
    v = (m / m.max()) ** 0.5  # brighten the off-diagonal confusions
    colors = np.stack([255 - 200 * v, 255 - 120 * v, 255 - 30 * v], axis=-1)  # white -> blue
    img = np.repeat(np.repeat(colors, cell, axis=0), cell, axis=1)
    img[::cell, :, :] = 220
    img[:, ::cell, :] = 220
    return png_bytes(img.astype(np.uint8))


def system_sample(spec: TrialSpec, step: int, rng: np.random.Generator) -> dict[str, float]:
    busy = 92 if spec.batch_size == 128 else 71
    return {
        "system/gpu0/util_percent": float(np.clip(rng.normal(busy, 4), 0, 100)),
        "system/gpu0/mem_used_mb": 2900 + 38 * spec.batch_size + float(rng.normal(0, 40)),
        "system/cpu_percent": float(np.clip(rng.normal(38, 6), 0, 100)),
        "system/memory_used_mb": 6100 + 0.4 * step + float(rng.normal(0, 30)),
    }
