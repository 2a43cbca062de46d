"""SynaPrune ``rms`` under DistributedDataParallel: 2 CPU processes (gloo) on the digits.

    torchrun --nproc_per_node 2 examples/ddp_rms.py --steps 30 --out out/ddp_params.pt

Each step draws a batch of ``--batch-size`` training digits (the same on every rank, from one
seeded generator) and gives rank r the r-th contiguous slice. DDP averages the two half-batch
gradients into the full batch's mean gradient; SynaPrune, finding a process group, sums the
per-example statistics over the ranks before aggregating (``SynaPrune(distributed=None)``), so
the ``rms`` direction, sign(gbar) * sqrt(mean_i g_i**2), is the full batch's: two ranks take the
steps one process takes on the whole batch (tests/examples/test_ddp_rms.py checks it to 1e-10 in
float64). The statistics must be taken on the module inside DDP, and the batches of all ranks
must be equal in size (a mean-reduced loss).

Without torchrun (no ``RANK`` in the environment) it trains the same steps in one process.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from synaprune import PerExampleGradStats, SynaPrune
from synaprune.problems import get_problem

PROBLEM = "digits:hidden=16"


def train(model: nn.Module, *, steps: int, batch_size: int, rank: int = 0, world: int = 1,
          lr: float = 0.1, seed: int = 0) -> list[float]:
    """Train ``model`` (a DistributedDataParallel wrapper under a process group) with SynaPrune
    ``rms``; returns the loss of each step (the rank's half-batch loss averaged over ranks)."""
    if batch_size % world:
        raise ValueError(f"--batch-size {batch_size} must be divisible by the {world} ranks "
                         "(equal per-rank batches, a mean-reduced loss)")
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    x_all, y_all = get_problem(PROBLEM).data("train")  # float64 inputs, int64 labels
    stats = PerExampleGradStats(inner, reduction="mean")  # on the module inside DDP
    opt = SynaPrune(model.parameters(), lr=lr, momentum=0.9, aggregation="rms")
    order = torch.Generator().manual_seed(seed)
    shard = batch_size // world
    losses = []
    for _ in range(steps):
        idx = torch.randperm(x_all.shape[0], generator=order)[:batch_size]
        mine = idx[rank * shard:(rank + 1) * shard]
        opt.zero_grad()
        loss = F.cross_entropy(model(x_all[mine]), y_all[mine])
        loss.backward()  # DDP all-reduces (averages) the gradients here
        opt.step()  # ... and SynaPrune sums the per-example statistics over the ranks
        value = loss.detach().clone()
        if world > 1:
            dist.all_reduce(value)
            value /= world
        losses.append(float(value))
    stats.remove()
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--out", help="rank 0 saves the final parameters here (torch.save)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    distributed = "RANK" in os.environ  # set by torchrun
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    try:
        model = get_problem(PROBLEM).build_model(0)  # the same initialisation on every rank
        wrapped = DistributedDataParallel(model) if distributed else model
        losses = train(wrapped, steps=args.steps, batch_size=args.batch_size, rank=rank,
                       world=world, lr=args.lr)
        if rank == 0:
            print(f"{world} process(es), {args.steps} steps of rms: loss {losses[0]:.6f} -> "
                  f"{losses[-1]:.6f}")
            if args.out:
                os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
                torch.save({k: v.detach() for k, v in model.named_parameters()}, args.out)
        if distributed:
            dist.barrier()  # leave together: a rank tearing gloo down aborts its peer
    finally:
        if distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
