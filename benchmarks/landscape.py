"""Benchmark: a 51 x 51 loss slice, vmap-ed chunks (synaprune.landscape) against a per-point loop.

Run from the repository root:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/landscape.py

Problem: MLP 64-100-32-10 with ReLU (10,062 parameters), cross-entropy, the first 1,000 of
scikit-learn's digits scaled to [0, 1], float32 (``--dtype float64`` for double), at its seeded
random initialisation; two filter-normalised random directions (Li et al. 2018), alpha and beta
on 51 evenly spaced values in [-1, 1]: 2,601 points, each a full-batch loss on 1,000 examples.

Variants, timed interleaved in ``--rounds`` rounds (median kept) in this one process:

* loop (the usual way, as in tomgoldstein/loss-landscape): for every point build the state dict
  ``center + alpha * d1 + beta * d2``, ``model.load_state_dict``, forward under ``no_grad``,
  ``loss.item()``;
* :func:`synaprune.landscape.slice_2d` at each ``--chunk`` (points per vmap call; ``auto`` is
  the library's default memory bound).

The largest difference between the loop's and each variant's 2,601 losses is printed, so a
speed-up cannot come from computing something else.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from synaprune.landscape import random_directions, slice_2d
from synaprune.problems._digits import load_digits_scaled


def _setup(dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 32), nn.ReLU(),
                          nn.Linear(32, 10)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():  # PyTorch's default bound 1/sqrt(fan_in), seeded
            bound = 1.0 / p.shape[-1] ** 0.5 if p.dim() > 1 else 0.1
            p.uniform_(-bound, bound, generator=g)
    x, y = load_digits_scaled()
    data = (x[:1000].to(dtype), y[:1000])
    center = {n: p.detach().clone() for n, p in model.named_parameters()}
    d1 = random_directions(model, g)
    d2 = random_directions(model, g)
    return model, data, center, d1, d2


def _loop(model, data, center, d1, d2, alphas, betas) -> torch.Tensor:
    x, y = data
    out = torch.empty(alphas.numel(), betas.numel(), dtype=torch.float64)
    with torch.no_grad():
        for i, a in enumerate(alphas.tolist()):
            for j, b in enumerate(betas.tolist()):
                model.load_state_dict({n: center[n] + a * d1[n] + b * d2[n] for n in center})
                out[i, j] = F.cross_entropy(model(x), y).item()
        model.load_state_dict(center)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--grid", type=int, default=51)
    parser.add_argument("--chunk", nargs="+", default=["auto", "8", "32"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model, data, center, d1, d2 = _setup(dtype)
    n_params = sum(p.numel() for p in model.parameters())
    alphas = torch.linspace(-1, 1, args.grid, dtype=torch.float64)
    betas = alphas.clone()
    variants = {"loop": lambda: _loop(model, data, center, d1, d2, alphas, betas)}
    for chunk in args.chunk:
        size = None if chunk == "auto" else int(chunk)
        variants[f"slice_2d chunk={chunk}"] = (
            lambda size=size: slice_2d(model, F.cross_entropy, data, center, d1, d2, alphas,
                                       betas, chunk_size=size))
    times: dict[str, list[float]] = {name: [] for name in variants}
    results: dict[str, torch.Tensor] = {}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    points = args.grid**2
    # Multiply-adds of one forward pass: N * (sum of weight sizes), times 2 for FLOPs.
    flops = 2 * data[0].shape[0] * sum(p.numel() for p in model.parameters() if p.dim() > 1)
    loop_median = statistics.median(times["loop"])
    print(f"MLP 64-100-32-10 ({n_params:,} parameters), {data[0].shape[0]} examples, "
          f"{args.grid} x {args.grid} grid, {args.dtype}, {args.threads} thread(s), "
          f"{args.rounds} interleaved rounds, torch {torch.__version__}, "
          f"{platform.machine()}")
    print()
    print("| variant | median (s) | ms per point | GFLOP/s | speed-up over loop | "
          "max abs diff to loop |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in variants:
        median = statistics.median(times[name])
        diff = (results[name] - results["loop"]).abs().max().item()
        print(f"| {name} | {median:.3f} | {1e3 * median / points:.3f} | "
              f"{flops * points / median / 1e9:.1f} | {loop_median / median:.2f}x | "
              f"{diff:.1e} |")


if __name__ == "__main__":
    main()
