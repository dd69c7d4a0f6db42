"""Media per step: images with captions, an audio clip, a histogram of weights, a table of
predictions and a text sample, logged with the loss in one run.log call at each step. The run
page's Media tab shows them with a step slider per key.

    runstream server &                        # or RUNSTREAM_ENDPOINT=host:port
    python client/examples/media_example.py --project media-example

Needs numpy and pandas (tables also pyarrow): pip install "runstream[dashboard]".
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

import runstream

LABELS = ["cat", "dog", "bird"]


def sample_image(rng: np.random.Generator, step: int, steps: int) -> np.ndarray:
    """A 64 x 64 RGB picture that gets less noisy as 'training' goes on (floats in [0, 1])."""
    y, x = np.mgrid[0:64, 0:64] / 63
    clean = np.dstack([x, y, 1 - x * y])
    noise = rng.normal(0, 0.5 * (1 - step / max(1, steps - 1)), clean.shape)
    return np.clip(clean + noise, 0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="media-example")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with runstream.init(project=args.project, name="media-demo", config={"steps": args.steps}) as run:
        weights = rng.normal(0, 1, 10_000)
        for step in range(args.steps):
            weights = weights * 0.8 + rng.normal(0.5, 0.1, weights.size) * 0.2  # drifts and narrows
            probs = rng.dirichlet(np.ones(len(LABELS)), size=8)
            preds = pd.DataFrame(
                {
                    "id": range(8),
                    "label": rng.choice(LABELS, 8),
                    "predicted": [LABELS[i] for i in probs.argmax(axis=1)],
                    "confidence": probs.max(axis=1).round(3),
                }
            )
            t = np.linspace(0, 0.5, 8000, endpoint=False)
            run.log(
                {
                    "loss": float(np.exp(-step / 2)),
                    "samples": [
                        runstream.Image(
                            sample_image(rng, step, args.steps), caption=f"sample {i}, step {step}"
                        )
                        for i in range(2)
                    ],
                    "tone": runstream.Audio(0.3 * np.sin(2 * np.pi * (220 + 55 * step) * t), 16000),
                    "weights": runstream.Histogram(weights, bins=40),
                    "predictions": runstream.Table(preds, caption=f"validation batch at step {step}"),
                    "generated": runstream.Text(f"step {step}: the model says {LABELS[step % 3]}"),
                },
                step=step,
            )
        print(f"logged run {run.id} of project {args.project}")


if __name__ == "__main__":
    main()
