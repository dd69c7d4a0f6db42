"""Hugging Face Transformers into Runstream: a Trainer's arguments and model configuration, its
train and eval metrics at every global step, each checkpoint and the trained model.

    runstream server &                        # or RUNSTREAM_ENDPOINT=host:port
    python client/examples/transformers_train.py --project transformers-example --steps 40
    RUNSTREAM_PROJECT=transformers-example python client/examples/transformers_train.py --report-to

The model is a tiny BERT (2 layers, hidden size 32) initialized at random from its configuration,
trained to classify random token sequences by whether token 7 occurs: no downloads. --report-to
uses TrainingArguments(report_to="runstream") (register_report_to) instead of callbacks=[...].

Needs: pip install "runstream[transformers]".
"""

from __future__ import annotations

import argparse
import json

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from runstream.integrations.transformers import RunstreamCallback, register_report_to

VOCAB, LENGTH = 64, 12


class Sequences(torch.utils.data.Dataset):
    """Random token sequences labelled 1 when token 7 occurs."""

    def __init__(self, n: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(8, VOCAB, (n, LENGTH), generator=gen)
        positive = torch.rand(n, generator=gen) < 0.5
        where = torch.randint(0, LENGTH, (n,), generator=gen)
        self.ids[positive, where[positive]] = 7
        self.labels = positive.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones(LENGTH, dtype=torch.long),
            "labels": self.labels[i],
        }


def accuracy(prediction) -> dict:
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="transformers-example")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument(
        "--eval-every", type=int, default=10, help="evaluate and save a checkpoint every N steps"
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--output-dir", default="transformers-output")
    parser.add_argument(
        "--report-to", action="store_true", help='report_to="runstream" (project: $RUNSTREAM_PROJECT)'
    )
    args = parser.parse_args()

    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=LENGTH, num_labels=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    if args.report_to:
        register_report_to()
        callbacks = []
    else:
        callbacks = [
            RunstreamCallback(
                project=args.project, log_checkpoints=True, log_model=True, tags={"example": "transformers"}
            )
        ]
    training = TrainingArguments(
        output_dir=args.output_dir, run_name="tiny-bert", max_steps=args.steps, learning_rate=args.lr,
        per_device_train_batch_size=16, per_device_eval_batch_size=64, logging_steps=1,
        eval_strategy="steps", eval_steps=args.eval_every, save_strategy="steps", save_steps=args.eval_every,
        save_total_limit=2, load_best_model_at_end=True, metric_for_best_model="accuracy",
        report_to="runstream" if args.report_to else "none", use_cpu=True, disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=training, train_dataset=Sequences(512, seed=1), eval_dataset=Sequences(128, seed=2),
        compute_metrics=accuracy, callbacks=callbacks,
    )  # fmt: skip
    trainer.train()  # finishes the callback's run; the evaluate below resumes it (finished at exit)
    final = trainer.evaluate()  # the best checkpoint, loaded at the end (load_best_model_at_end)
    print(json.dumps({"best_checkpoint": trainer.state.best_model_checkpoint, "final_eval": final}))


if __name__ == "__main__":
    main()
