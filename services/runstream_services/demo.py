"""The demo sweep `runstream up --demo` logs through the real SDK: a 24-run grid over learning
rate, batch size, optimizer and dropout of a fake but plausible image classifier. Curves depend
on the params (too high a learning rate with small batches diverges, low dropout overfits),
validation runs every 100 steps, system metrics every 20 steps, a nested config, tags, notes,
a confusion-matrix PNG and a checkpoint per finished run, two failed runs and one killed one.
A second small project gives the projects page something to list, and an optional live run
keeps logging in the background so the dashboard's live refresh has something to show.

The sweep is made to look like it ran over the last hours: while it is logged, the SDK's clock
(`runstream.run._time`) is replaced by a simulated one. System metrics go into the run's buffer
the way the SDK's own sampler puts them there (the SDK has no public call for them)."""

from __future__ import annotations

import contextlib
import itertools
import math
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROJECT = "demo"
SIDE_PROJECT = "mnist-baselines"
GROUP = "grid-1"
STEPS = 2000
VAL_EVERY = 100
SYSTEM_EVERY = 20
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


# ---------------------------------------------------------------- logging through the SDK


class _Clock:
    """A settable stand-in for time.time while the sweep is logged."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def _simulated_time(clock: _Clock) -> Iterator[None]:
    import runstream.run as run_module

    original = getattr(run_module, "_time", None)
    if original is None:  # the SDK changed: log at the real time instead
        yield
        return
    run_module._time = clock
    try:
        yield
    finally:
        run_module._time = original


def _log_system(run, step: int, when: float, data: dict[str, float]) -> None:
    """System metrics the way the SDK's sampler records them (kind SYSTEM)."""
    try:
        from runstream._internal.buffer import SYSTEM
    except ImportError:
        return
    entries = getattr(run, "_entries", None)
    if entries is not None:
        entries.append((step, when, data, SYSTEM))


def _system_sample(spec: TrialSpec, step: int, rng: np.random.Generator) -> dict[str, float]:
    busy = 92 if spec.batch_size == 128 else 71
    return {
        "system/gpu0/util_percent": float(np.clip(rng.normal(busy, 4), 0, 100)),
        "system/gpu0/mem_used_mb": 2900 + 38 * spec.batch_size + float(rng.normal(0, 40)),
        "system/cpu_percent": float(np.clip(rng.normal(38, 6), 0, 100)),
        "system/memory_used_mb": 6100 + 0.4 * step + float(rng.normal(0, 30)),
    }


def _init(endpoint: str, **kwargs):
    import runstream

    return runstream.init(endpoint=endpoint, system_metrics_interval_s=0, **kwargs)


def log_trial(spec: TrialSpec, endpoint: str, clock: _Clock, workdir: Path, project: str = PROJECT) -> str:
    """Logs one run of the sweep; returns its final state."""
    curves = simulate(spec)
    step_s = 0.12 * spec.batch_size / 32 + 0.08
    tags = {"dataset": "cifar10-v2.1", "sweep": GROUP}
    if (spec.lr, spec.batch_size, spec.optimizer, spec.dropout) == (1e-3, 128, "adam", 0.1):
        tags["baseline"] = ""
    run = _init(
        endpoint,
        project=project,
        name=spec.name,
        config=spec.config(),
        tags=tags,
        group=GROUP,
        job_type="train",
        notes=f"Grid sweep trial {spec.index + 1}: {spec.optimizer}, lr={spec.lr:g}, "
        f"batch size {spec.batch_size}, dropout {spec.dropout:g}.",
    )
    rng = np.random.default_rng(spec.index)
    last = STEPS if not spec.killed else int(STEPS * 0.4)
    val_at = {int(s): i for i, s in enumerate(curves.val_steps)}
    state = "finished"
    system = []  # buffered: interleaving kinds would split the SDK's batches into tiny ones
    for step in range(last):
        clock.now += step_s * float(rng.uniform(0.9, 1.1))
        if curves.diverged_at is not None and step >= curves.diverged_at:
            state = "failed"
            break
        run.log(
            {"loss": float(curves.loss[step]), "acc": float(curves.acc[step]), "lr": float(curves.lr[step])},
            step=step,
        )
        if step in val_at:
            i = val_at[step]
            clock.now += 6.0  # a validation pass
            run.log(
                {
                    "val_loss": float(curves.val_loss[i]),
                    "val_acc": float(curves.val_acc[i]),
                    "val_f1": float(curves.val_f1[i]),
                },
                step=step,
            )
        if step % SYSTEM_EVERY == 0:
            system.append((step // SYSTEM_EVERY, clock.now, _system_sample(spec, step, rng)))
    for sample in system:
        _log_system(run, *sample)
    if spec.killed:
        state = "killed"
        run.notes = run.notes + " Stopped by hand at 40%: clearly behind the adam runs."
    if state == "failed":
        run.notes = run.notes + f" Diverged: the loss became NaN at step {curves.diverged_at}."
        run.summary["error"] = f"FloatingPointError: loss is NaN at step {curves.diverged_at}"
    else:
        best = float(np.nanmax(curves.val_acc[: max(1, last // VAL_EVERY)]))
        run.summary.update(best_val_acc=best, epochs_completed=round(last / STEPS * 10, 1))
        if state == "finished":
            image = workdir / f"{spec.name}-confusion_matrix.png"
            image.write_bytes(confusion_matrix_png(best, spec.index))
            run.log_artifact(image, name="confusion_matrix", type="image")
            checkpoint = workdir / f"{spec.name}.ckpt"
            checkpoint.write_bytes(np.random.default_rng(spec.index).bytes(16 * 1024))
            run.log_artifact(checkpoint, name="model", type="model")
    clock.now += 2.0
    run.finish(state)
    return state


def _side_project(endpoint: str, clock: _Clock) -> None:
    """A few small runs in a second project, a week older."""
    for i, width in enumerate((32, 64, 128)):
        run = _init(
            endpoint,
            project=SIDE_PROJECT,
            name=f"mlp-w{width}",
            config={"model": {"arch": "mlp", "width": width}, "lr": 1e-3, "seed": i},
            tags={"dataset": "mnist"},
            job_type="train",
        )
        rng = np.random.default_rng(i)
        for step in range(300):
            clock.now += 0.05
            loss = 0.08 + 2.2 * math.exp(-step / (40 + width / 4)) + abs(rng.normal(0, 0.02))
            run.log({"loss": loss, "acc": 1 - loss / 2.5}, step=step)
        run.finish()
        clock.now += 60


def _progress(total: int):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc="demo sweep", unit="run")
    except ImportError:

        class Plain:
            n = 0

            def update(self, k: int = 1) -> None:
                self.n += k
                print(f"demo sweep: {self.n}/{total} runs", flush=True)

            def set_postfix_str(self, _text: str) -> None:
                pass

            def close(self) -> None:
                pass

        return Plain()


def log_demo_sweep(
    endpoint: str, *, hours_ago: float = 5.0, parallel_gpus: int = 4, progress: bool = True
) -> dict[str, int]:
    """Logs the sweep (24 runs) and the side project; returns run counts per final state."""
    specs = grid()
    counts: dict[str, int] = {}
    start = time.time() - hours_ago * 3600
    bar = _progress(len(specs) + 1) if progress else None
    with (
        tempfile.TemporaryDirectory(prefix="runstream-demo-") as tmp,
        _simulated_time(clock := _Clock(start - 7 * 86400)),
    ):
        _side_project(endpoint, clock)
        if bar:
            bar.update(1)
        for spec in specs:
            # `parallel_gpus` trials run side by side: trial i starts when trial i - parallel_gpus ended.
            clock.now = start + (spec.index // parallel_gpus) * 50 * 60 + (spec.index % parallel_gpus) * 20
            state = log_trial(spec, endpoint, clock, Path(tmp))
            counts[state] = counts.get(state, 0) + 1
            if bar:
                bar.set_postfix_str(f"{spec.name}: {state}")
                bar.update(1)
    if bar:
        bar.close()
    return counts


class LiveRun:
    """One more trial that keeps logging in real time (a step every `interval_s`) until stopped,
    so the dashboard has a running run to refresh live. Stopping finishes it as killed."""

    def __init__(self, endpoint: str, interval_s: float = 0.5):
        self.endpoint = endpoint
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="runstream-demo-live", daemon=True)
        self.run = None

    def start(self) -> LiveRun:
        self._thread.start()
        return self

    def _main(self) -> None:
        spec = TrialSpec(99, 1e-3, 64, "adam", 0.2)
        curves = simulate(spec, steps=20 * STEPS)
        self.run = _init(
            self.endpoint,
            project=PROJECT,
            name="live-adam-lr0.001-bs64",
            config=spec.config() | {"steps": 20 * STEPS},
            tags={"dataset": "cifar10-v2.1", "live": ""},
            group="live",
            job_type="train",
            notes="Logging right now: open it and turn on live refresh.",
        )
        rng = np.random.default_rng(99)
        step = 0
        while not self._stop.wait(self.interval_s) and step < len(curves.loss):
            self.run.log(
                {
                    "loss": float(curves.loss[step]),
                    "acc": float(curves.acc[step]),
                    "lr": float(curves.lr[step]),
                },
                step=step,
            )
            if step % 10 == 0:
                _log_system(self.run, step // 10, time.time(), _system_sample(spec, step, rng))
            step += 1

    def stop(self, timeout_s: float = 10) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        if self.run is not None:
            self.run.finish("killed", timeout_s=timeout_s)
