"""Cost of the seed-batched teacher-student gradient: the kernel with and without autograd
through its [k, n, d] orthogonal component.

Exact command (from the repository root):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/teacher_student_kernel.py --k 8 16 --seeds 256

For each k, ``vmap(grad(loss))`` over ``--seeds`` stacked students is timed for the loss as the
problem computes it now (:mod:`synaprune.problems._teacher_student`: S^2's value from the
orthogonal component outside autograd, the teacher term by ``relu_kernel_basis``) and for the
reference formula (autograd through the orthogonal component, both terms), alternating the two
in each of ``--rounds`` rounds in this one process; the ratio is the median over rounds. The
gradients of the two are compared too.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import Tensor
from torch.func import grad, vmap

from synaprune.problems._teacher_student import _population_loss, relu_kernel


def reference_kernel(w: Tensor, v: Tensor) -> Tensor:
    """The kernel with autograd through the [k, n, d] orthogonal component (the old formula)."""
    dot = w @ v.T
    w_sq, v_sq = w.square().sum(1), v.square().sum(1)
    safe = torch.where(w_sq > 0, w_sq, torch.ones_like(w_sq))
    v_perp = v[None] - (dot / safe[:, None])[:, :, None] * w[:, None, :]
    s_sq = w_sq[:, None] * v_perp.square().sum(2)
    generic = s_sq > 1e-16 * w_sq[:, None] * v_sq[None, :]
    s = torch.where(generic, torch.sqrt(torch.where(generic, s_sq, torch.ones_like(s_sq))), 0.0)
    angle = torch.atan2(s, torch.where(~generic & (dot == 0), torch.ones_like(dot), dot))
    return (s + (math.pi - angle) * dot) / (2 * math.pi)


def main() -> None:
    """Print a Markdown table: k, ms per batched gradient (reference, now), ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--seeds", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=10, help="gradients timed per round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {args.seeds} seeds, float64")
    print()
    print("| k | reference (ms) | now (ms) | speed-up | max gradient difference |")
    print("|---:|---:|---:|---:|---:|")
    for k in args.k:
        print(_row(k, args.seeds, args.rounds, args.reps))


def _row(k: int, seeds: int, rounds: int, reps: int) -> str:
    """One table row: both gradients of ``seeds`` students at width k, alternated."""
    w = torch.randn(seeds, k, k, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64) / math.sqrt(k)
    ones, teacher = torch.ones(k, dtype=torch.float64), torch.eye(k, dtype=torch.float64)
    teacher_term = ones @ relu_kernel(teacher, teacher) @ ones

    def reference(x: Tensor) -> Tensor:
        student = ones @ reference_kernel(x, x) @ ones
        cross = ones @ reference_kernel(x, teacher) @ ones
        return 0.5 * (student - 2.0 * cross + teacher_term)

    def now(x: Tensor) -> Tensor:
        return _population_loss(x, ones, k, ones, teacher_term)

    old, new = vmap(grad(reference)), vmap(grad(now))
    diff = (old(w) - new(w)).abs().max().item()
    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(rounds):
        for name, f in (("old", old), ("new", new)):
            start = time.perf_counter()
            for _ in range(reps):
                f(w)
            times[name].append((time.perf_counter() - start) / reps)
    ratio = statistics.median(o / n for o, n in zip(times["old"], times["new"], strict=True))
    return (f"| {k} | {1e3 * statistics.median(times['old']):.1f} | "
            f"{1e3 * statistics.median(times['new']):.1f} | {ratio:.2f}x | {diff:.1e} |")

if __name__ == "__main__":
    main()
