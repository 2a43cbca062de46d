"""Benchmark: a 51 x 51 loss slice, synaprune.landscape.slice_2d against a per-point loop.

Run from the repository root:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/landscape.py                # 64-100-32-10
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/landscape.py --hidden 133   # 64-133-10

Problem: an MLP with ReLU (``--hidden`` widths; 64-100-32-10 has 10,062 parameters, 64-133-10
has 9,985), cross-entropy (``--loss mse``: squared error to one-hot labels), the first 1,000
of scikit-learn's digits scaled to [0, 1], float32 (``--dtype float64`` for double), at its
seeded random initialisation; two filter-normalised
random directions (Li et al. 2018), alpha and beta on 51 evenly spaced values in [-1, 1]:
2,601 points, each a full-batch loss on 1,000 examples.

Variants, timed interleaved in ``--rounds`` rounds (median kept) in this one process:

* loop (the usual way, as in tomgoldstein/loss-landscape): for every point build the state dict
  ``center + alpha * d1 + beta * d2``, ``model.load_state_dict``, forward under ``no_grad``,
  ``loss.item()``;
* loop in-place: the same with the weights written in place (``copy_``, ``add_``: no new
  tensors, no state-dict machinery), the fastest loop we know; speed-ups are quoted against the
  faster of the two loops;
* :func:`synaprune.landscape.slice_2d` with ``method="vmap"`` and ``method="affine"`` (the
  first layer's products shared by all points) at each ``--chunk`` (``auto``: the library's
  default memory bound).

The largest difference between the loop's and each variant's 2,601 losses is printed, so a
speed-up cannot come from computing something else. The work of one point's forward pass is
printed too, split by layer: the affine method removes the first layer's product, so
``1 / (1 - first layer's share)`` bounds its speed-up at equal arithmetic efficiency.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from synaprune.landscape import random_directions, slice_2d
from synaprune.problems._digits import load_digits_scaled


def _setup(dtype: torch.dtype, hidden: list[int]):
    g = torch.Generator().manual_seed(0)
    widths = [64, *hidden, 10]
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(widths):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    model = nn.Sequential(*layers[:-1]).to(dtype)
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


def _mse_one_hot(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared error to one-hot labels (mean over examples and outputs)."""
    return F.mse_loss(output, F.one_hot(labels, output.shape[-1]).to(output.dtype))


LOSSES = {"cross-entropy": F.cross_entropy, "mse": _mse_one_hot}


def _loop(model, loss_fn, data, center, d1, d2, alphas, betas) -> torch.Tensor:
    x, y = data
    out = torch.empty(alphas.numel(), betas.numel(), dtype=torch.float64)
    with torch.no_grad():
        for i, a in enumerate(alphas.tolist()):
            for j, b in enumerate(betas.tolist()):
                model.load_state_dict({n: center[n] + a * d1[n] + b * d2[n] for n in center})
                out[i, j] = loss_fn(model(x), y).item()
        model.load_state_dict(center)
    return out


def _loop_inplace(model, loss_fn, data, center, d1, d2, alphas, betas) -> torch.Tensor:
    x, y = data
    params = dict(model.named_parameters())
    out = torch.empty(alphas.numel(), betas.numel(), dtype=torch.float64)
    with torch.no_grad():
        for i, a in enumerate(alphas.tolist()):
            for j, b in enumerate(betas.tolist()):
                for n, p in params.items():
                    p.copy_(center[n]).add_(d1[n], alpha=a).add_(d2[n], alpha=b)
                out[i, j] = loss_fn(model(x), y).item()
        model.load_state_dict(center)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--grid", type=int, default=51)
    parser.add_argument("--chunk", nargs="+", default=["auto", "8", "64"])
    parser.add_argument("--hidden", type=int, nargs="+", default=[100, 32],
                        help="hidden widths (default 100 32: MLP 64-100-32-10)")
    parser.add_argument("--methods", nargs="+", default=["vmap", "affine"])
    parser.add_argument("--loss", choices=sorted(LOSSES), default="cross-entropy")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model, data, center, d1, d2 = _setup(dtype, args.hidden)
    n_params = sum(p.numel() for p in model.parameters())
    alphas = torch.linspace(-1, 1, args.grid, dtype=torch.float64)
    betas = alphas.clone()
    loss_fn = LOSSES[args.loss]
    variants = {"loop": lambda: _loop(model, loss_fn, data, center, d1, d2, alphas, betas),
                "loop in-place": lambda: _loop_inplace(model, loss_fn, data, center, d1, d2,
                                                       alphas, betas)}
    for method in args.methods:
        for chunk in args.chunk:
            size = None if chunk == "auto" else int(chunk)
            variants[f"slice_2d {method} chunk={chunk}"] = (
                lambda size=size, method=method: slice_2d(
                    model, loss_fn, data, center, d1, d2, alphas, betas,
                    chunk_size=size, method=method))
    times: dict[str, list[float]] = {name: [] for name in variants}
    results: dict[str, torch.Tensor] = {}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    points = args.grid**2
    # Multiply-adds of one forward pass: N * (sum of weight sizes), times 2 for FLOPs.
    weights = [p.numel() for p in model.parameters() if p.dim() > 1]
    flops = 2 * data[0].shape[0] * sum(weights)
    loop_median = min(statistics.median(times["loop"]), statistics.median(times["loop in-place"]))
    arch = "-".join(str(w) for w in [64, *args.hidden, 10])
    print(f"MLP {arch} ({n_params:,} parameters), {data[0].shape[0]} examples, "
          f"{args.grid} x {args.grid} grid, {args.loss}, {args.dtype}, {args.threads} thread(s), "
          f"{args.rounds} interleaved rounds, torch {torch.__version__}, "
          f"{platform.machine()}")
    print(f"multiply-adds per example by layer: {weights}; first layer's share "
          f"{weights[0] / sum(weights):.1%}, so removing it bounds the speed-up at "
          f"{sum(weights) / (sum(weights) - weights[0]):.2f}x at equal efficiency")
    print()
    print("| variant | median (s) | ms per point | loop-equivalent GFLOP/s | "
          "speed-up over the faster loop | "
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
