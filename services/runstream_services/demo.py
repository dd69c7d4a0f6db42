"""The demo sweep `runstream up --demo` logs through the real, public SDK: the 24-run grid of
demo_data.py with validation every 100 steps, system metrics every 20 steps, a nested config,
tags, notes, a confusion-matrix PNG and a checkpoint per finished run, two failed runs and one
killed one. A second small project gives the projects page something to list, and an optional
live run keeps logging in the background so the dashboard's live refresh has something to show.

The sweep is made to look like it ran over the last hours: a simulated Clock is advanced as the
trials "train", and every time the SDK records is given explicitly (init's start_time, log's and
log_system's timestamp, finish's end_time)."""

from __future__ import annotations

import math
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import runstream
from runstream_services.demo_data import (
    GROUP,
    STEPS,
    VAL_EVERY,
    TrialSpec,
    confusion_matrix_png,
    grid,
    simulate,
    system_sample,
)

PROJECT = "demo"
SIDE_PROJECT = "mnist-baselines"
SYSTEM_EVERY = 20


class Clock:
    """Simulated time (unix seconds) while the sweep is logged: trials advance `now` as they run."""

    def __init__(self, now: float):
        self.now = now


def _init(endpoint: str, **kwargs) -> runstream.Run:
    # console="off": these runs live inside `runstream up`, whose own output is not theirs
    return runstream.init(endpoint=endpoint, system_metrics_interval_s=0, console="off", **kwargs)


def log_trial(spec: TrialSpec, endpoint: str, clock: Clock, workdir: Path, project: str = PROJECT) -> str:
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
        start_time=clock.now,
    )
    rng = np.random.default_rng(spec.index)
    media_rng = np.random.default_rng(
        1000 + spec.index
    )  # apart from rng: the other logged values stay as they were
    last = STEPS if not spec.killed else int(STEPS * 0.4)
    val_at = {int(s): i for i, s in enumerate(curves.val_steps)}
    state = "finished"
    system = []  # logged after the loop: interleaving kinds would split the SDK's batches into tiny ones
    for step in range(last):
        clock.now += step_s * float(rng.uniform(0.9, 1.1))
        if curves.diverged_at is not None and step >= curves.diverged_at:
            state = "failed"
            break
        run.log(
            {"loss": float(curves.loss[step]), "acc": float(curves.acc[step]), "lr": float(curves.lr[step])},
            step=step,
            timestamp=clock.now,
        )
        if step in val_at:
            i = val_at[step]
            clock.now += 6.0  # a validation pass
            spread = 1.0 / (1.0 + 0.4 * i)  # the last layer's weights narrow as training goes on
            run.log(
                {
                    "val_loss": float(curves.val_loss[i]),
                    "val_acc": float(curves.val_acc[i]),
                    "val_f1": float(curves.val_f1[i]),
                    # media: the run page's Media tab draws it over steps (docs/media.md)
                    "weights/fc": runstream.Histogram(
                        media_rng.normal(0.1 * i * spread, spread, 2000), bins=40
                    ),
                },
                step=step,
                timestamp=clock.now,
            )
        if step % SYSTEM_EVERY == 0:
            system.append((clock.now, system_sample(spec, step, rng)))
    for when, sample in system:  # numbered 0, 1, 2, ... by the SDK, as its own sampler's are
        run.log_system(sample, timestamp=when)
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
    run.finish(state, end_time=clock.now)
    return state


def _side_project(endpoint: str, clock: Clock) -> None:
    """A few small runs in a second project, a week older."""
    for i, width in enumerate((32, 64, 128)):
        run = _init(
            endpoint,
            project=SIDE_PROJECT,
            name=f"mlp-w{width}",
            config={"model": {"arch": "mlp", "width": width}, "lr": 1e-3, "seed": i},
            tags={"dataset": "mnist"},
            job_type="train",
            start_time=clock.now,
        )
        rng = np.random.default_rng(i)
        for step in range(300):
            clock.now += 0.05
            loss = 0.08 + 2.2 * math.exp(-step / (40 + width / 4)) + abs(rng.normal(0, 0.02))
            run.log({"loss": loss, "acc": 1 - loss / 2.5}, step=step, timestamp=clock.now)
        run.finish(end_time=clock.now)
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
    clock = Clock(start - 7 * 86400)
    with tempfile.TemporaryDirectory(prefix="runstream-demo-") as tmp:
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
                self.run.log_system(system_sample(spec, step, rng))
            step += 1

    def stop(self, timeout_s: float = 10) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        if self.run is not None:
            self.run.finish("killed", timeout_s=timeout_s)
