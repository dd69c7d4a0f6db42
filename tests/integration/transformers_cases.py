"""Child script of test_integrations_transformers.py, run in the PyTorch venv (tests/torch_venv.py):
the RunstreamCallback cases beside the example, on the example's data and a 1-layer BERT.

    python transformers_cases.py PROJECT

1. one RunstreamCallback(project=...) over two trainer.train() calls (as a hyperparameter search
   runs its trials): two runs, each finished;
2. RunstreamCallback() while a run of the caller's is current: it logs there and leaves it open.
Prints {"yours": id, "yours_open_after_train": bool}."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "client" / "examples"))
from transformers_train import LENGTH, VOCAB, Sequences  # noqa: E402

import runstream  # noqa: E402
from runstream.integrations.transformers import RunstreamCallback  # noqa: E402

CONFIG = BertConfig(
    vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
    max_position_embeddings=LENGTH,
)  # fmt: skip


def train(callback: RunstreamCallback, run_name: str, steps: int) -> None:
    args = TrainingArguments(
        output_dir=f"out-{run_name}", run_name=run_name, max_steps=steps, logging_steps=1, report_to="none",
        save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
    )  # fmt: skip
    Trainer(
        BertForSequenceClassification(CONFIG), args, train_dataset=Sequences(64, 1), callbacks=[callback]
    ).train()


def main() -> None:
    project = sys.argv[1]
    callback = RunstreamCallback(project=project)
    train(callback, "trial-0", 2)
    train(callback, "trial-1", 3)

    with runstream.init(project=project, name="yours", config={"mine": 1}) as run:
        train(RunstreamCallback(), "ignored", 2)  # the current run: its name stays
        out = {"yours": run.id, "yours_open_after_train": not run._finished}
        run.log({"after_train": 1.0}, step=100)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
