"""A real distributed training job logging into one Runstream run.

Every rank trains a small MLP with DistributedDataParallel on a synthetic classification task
(no downloads), logs its loss and accuracy each step through the SDK, and samples system metrics
(CPU, memory, GPU) in the background. torchrun's rendezvous id becomes the shared run id, each point
carries its rank, and rank 0 owns the config and the summary.

    torchrun --nproc_per_node 2 --rdzv-id my-job-1 client/examples/ddp_train.py --steps 300
    RUNSTREAM_MODE=offline torchrun ...   # no server: spool, then `runstream sync`

Backend: NCCL when every rank has its own GPU, else gloo (gloo also reduces CUDA tensors, so several
ranks may share one GPU for a demonstration).
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import runstream


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="ddp-example")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hidden", type=int, default=1024)
    args = parser.parse_args()

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    use_cuda = torch.cuda.is_available()
    gpus = torch.cuda.device_count() if use_cuda else 0
    backend = "nccl" if use_cuda and gpus >= world else "gloo"
    dist.init_process_group(backend)
    device = torch.device(f"cuda:{rank % gpus}" if use_cuda else "cpu")

    runstream.set_seed(1234 + rank)
    run = runstream.init(
        project=args.project,
        name=f"ddp-{world}x-{'gpu' if use_cuda else 'cpu'}",
        config={**vars(args), "world_size": world, "backend": backend, "device": str(device)},
        tags={"example": "ddp", "backend": backend},
        group="ddp-example",
        system_metrics_interval_s=1.0,
    )

    gen = torch.Generator(device="cpu").manual_seed(7)  # same task on every rank
    teacher = torch.randn(64, 10, generator=gen)
    model = nn.Sequential(nn.Linear(64, args.hidden), nn.ReLU(), nn.Linear(args.hidden, 10)).to(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if backend == "nccl" else None)
    opt = torch.optim.AdamW(ddp.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()

    for step in range(args.steps):
        x = torch.randn(args.batch_size, 64, device=device)
        y = (x @ teacher.to(device)).argmax(dim=1)
        logits = ddp(x)
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc = (logits.argmax(dim=1) == y).float().mean()
        run.log({"train/loss": loss.detach(), "train/acc": acc}, step=step)  # 0-d tensors are fine

    if rank == 0:
        run.summary["final_loss"] = float(loss.detach())
        run.summary["final_acc"] = float(acc)
    run.finish()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
