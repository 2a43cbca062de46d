"""Under torch.distributed (gloo, 2 CPU processes) half batches per rank equal one full batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from synaprune import PerExampleGradStats, SynaPrune

STEPS = 20
CASES = {
    "mean": dict(aggregation="mean"),
    "rms": dict(aggregation="rms"),
    "blend": dict(aggregation="blend", blend=0.4),
}


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 6, generator=g, dtype=torch.float64)
    y = torch.randn(32, 3, generator=g, dtype=torch.float64)
    return model, x, y


def _train(model, probe_target, x, y, options):
    stats = PerExampleGradStats(probe_target)
    opt = SynaPrune(model.parameters(), lr=0.05, momentum=0.9, **options)
    for _ in range(STEPS):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    stats.remove()


def _worker(rank: int, world: int, init_file: str, out_file: str, options: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        model, x, y = _setup()
        half = x.shape[0] // world
        ddp = DistributedDataParallel(model)
        _train(ddp, model, x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half],
               options)
        if rank == 0:
            torch.save([p.detach() for p in model.parameters()], out_file)
        # Both ranks leave together: a rank that tears gloo down while its peer still talks
        # makes the peer abort.
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
def test_two_ranks_equal_one_process(options, tmp_path):
    init_file, out_file = str(tmp_path / "init"), str(tmp_path / "params.pt")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_worker, args=(2, init_file, out_file, options), nprocs=2, join=True)
    distributed = torch.load(out_file, weights_only=True)

    model, x, y = _setup()
    _train(model, model, x, y, options)
    for a, b in zip(distributed, model.parameters(), strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-12)
    # The run moved: the comparison is not between two untouched initialisations.
    assert not torch.allclose(distributed[0], _setup()[0][0].weight)
